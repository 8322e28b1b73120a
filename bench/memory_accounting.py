"""Memory accounted against memory held (Linux only: /proc).

    python bench/memory_accounting.py [--scale 1.0] [--shapes 100B,4KiB,1MiB,fanout]

For each shape a fresh broker (--in-memory, a limit it never reaches) is sent messages
that stay queued: 100-byte, 4 KiB and 1 MiB bodies to one queue, and 4 KiB bodies through
amq.fanout to ten queues. Once every one is queued, the growth of the broker's accounted
figure (the JSON-lines status' memory `held_bytes`, what --memory-limit applies to) is
printed beside the growth of its resident memory, with their ratio, and what a queued
message cost beyond its body (RSS growth less the bodies, per queue entry): the figure
MESSAGE_OVERHEAD_BYTES in greenmq/memory.py stands for.
"""

import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from greenmq import connection  # noqa: E402
from memory_budget import rss_bytes  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402

# (name, body bytes, messages at --scale 1, queues each message is routed to). Each shape
# grows the broker by a few hundred MiB, far above the noise of the allocator and the
# interpreter's own growth, and well within the 24 GiB of the machine the README names.
FANOUT_QUEUES = 10
SHAPES = [
    ("100B", 100, 2_000_000, 1),
    ("4KiB", 4096, 100_000, 1),
    ("1MiB", 2**20, 400, 1),
    ("fanout", 4096, 40_000, FANOUT_QUEUES),
]
# Publishes are written this many lines at a time: the broker reads them as a client would
# send them, without a round trip per message.
LINES_PER_WRITE = 1000
SETTLE_SECONDS = 1.0
DEADLINE_SECONDS = 600


def held_bytes(admin):
    return admin.call("status")["memory"]["held_bytes"]


def publish(port, exchange, routing_key, body_bytes, count):
    """Raw JSON-lines publishes, without ids, so the broker sends nothing back."""
    line = json.dumps({"op": "publish", "exchange": exchange, "routing_key": routing_key,
                       "body": "x" * body_bytes}).encode() + b"\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b'{"op": "hello", "id": 1}\n')
        reply = b""
        while b"\n" not in reply:
            reply += sock.recv(4096)
        per_write = max(1, min(LINES_PER_WRITE, (4 * 2**20) // len(line)))
        sent = 0
        while sent < count:
            batch = min(per_write, count - sent)
            sock.sendall(line * batch)
            sent += batch


def measure(name, body_bytes, count, queues):
    with BrokerProcess("--in-memory", "--memory-limit", "20GiB") as broker, \
            connection.Connection(port=broker.port) as admin:
        channel = admin.channel()
        names = [f"bench.{name}.{number}" for number in range(queues)]
        for queue in names:
            channel.queue_declare(queue)
            if queues > 1:
                channel.queue_bind(queue, "amq.fanout", "")
        exchange, routing_key = ("amq.fanout", "") if queues > 1 else ("", names[0])
        publish(broker.port, exchange, routing_key, body_bytes, min(100, count))    # warm up: first allocations
        deadline = time.monotonic() + DEADLINE_SECONDS
        while channel.queue_declare(names[-1], passive=True).method.message_count < min(100, count):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(SETTLE_SECONDS)
        rss_before, held_before = rss_bytes(broker.pid), held_bytes(admin)
        started = time.monotonic()
        publish(broker.port, exchange, routing_key, body_bytes, count)
        while channel.queue_declare(names[-1], passive=True).method.message_count < min(100, count) + count:
            assert time.monotonic() < deadline, "the messages did not all arrive"
            time.sleep(0.2)
        seconds = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        rss_growth = rss_bytes(broker.pid) - rss_before
        held_growth = held_bytes(admin) - held_before
    entries = count * queues
    per_entry = (rss_growth - count * body_bytes) / entries
    mib = 2**20
    print(f"{name:>6}: {count:,} messages of {body_bytes:,} bytes to {queues} queue(s) in {seconds:.1f} s: "
          f"accounted {held_growth / mib:,.1f} MiB, RSS grew {rss_growth / mib:,.1f} MiB, "
          f"accounted/RSS {held_growth / rss_growth:.2f}; "
          f"RSS per queue entry beyond the body {per_entry:,.0f} bytes", flush=True)
    return held_growth / rss_growth


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each shape's message count")
    parser.add_argument("--shapes", default=",".join(shape[0] for shape in SHAPES))
    args = parser.parse_args()
    wanted = args.shapes.split(",")
    for name, body_bytes, count, queues in SHAPES:
        if name in wanted:
            measure(name, body_bytes, max(1, int(count * args.scale)), queues)


if __name__ == "__main__":
    main()
