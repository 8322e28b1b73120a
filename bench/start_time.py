"""How long a test waits for its broker: from greenmq_testing.start() (what the pytest
fixture calls) to an AMQP port that accepts a connection, and to a finished AMQP handshake.

    python bench/start_time.py              # 20 starts
    python bench/start_time.py --runs 50
    python bench/start_time.py --stored 10000000    # a broker holding 10,000,000 messages

For scale it also times the floor every start pays: a bare Python interpreter, and one that
imports what the broker imports (gevent, pamqp).

With --stored N it times instead the start of a broker whose data directory holds N
persistent 100-byte messages in one durable queue: time to the ready line (listening) and
the broker's RSS then, for several starts after a clean stop and as after a kill -9. The database is built directly rather than by
publishing N messages: a broker creates it and stores one message through AMQP, and
that message's row is copied N times with new keys, so every row is as the store writes it.
"""

import argparse
import os
import shutil
import socket
import sqlite3
import tempfile
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amqp  # noqa: E402

from greenmq import testing as greenmq_testing  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402

# Rows inserted per statement batch while building a large store.
BUILD_BATCH = 100_000


def one_start():
    """Seconds from start() to: start() returning, a TCP connect, an AMQP connection open."""
    began = time.perf_counter()
    broker = greenmq_testing.start()
    try:
        ready = time.perf_counter()
        socket.create_connection((broker.host, broker.amqp_port), timeout=5).close()
        connectable = time.perf_counter()
        client = amqp.Connection(f"{broker.host}:{broker.amqp_port}")
        client.connect()
        handshaken = time.perf_counter()
        client.close()
    finally:
        broker.stop()
    return ready - began, connectable - began, handshaken - began


def interpreter(code):
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - began


def describe(name, seconds):
    seconds = sorted(seconds)
    p90 = seconds[int(0.9 * (len(seconds) - 1))]
    print(f"{name:<44} median {statistics.median(seconds) * 1000:6.0f} ms   "
          f"p90 {p90 * 1000:6.0f} ms   max {seconds[-1] * 1000:6.0f} ms")


def build_store(data_dir, count):
    """A data directory holding `count` stored messages in the durable queue "backlog"."""
    with BrokerProcess(data_dir=data_dir) as broker:
        client = amqp.Connection(f"127.0.0.1:{broker.amqp_port}")
        client.connect()
        channel = client.channel()
        channel.queue_declare("backlog", durable=True, auto_delete=False)
        channel.confirm_select()
        channel.basic_publish(amqp.Message(b"x" * 100, delivery_mode=2), routing_key="backlog")
        client.close()
    db = sqlite3.connect(os.path.join(data_dir, "greenmq.sqlite3"))
    (seq, *row), = db.execute("SELECT * FROM messages")
    (queue_id, _, *place), = db.execute("SELECT * FROM queue_messages")
    insert_message = f"INSERT INTO messages VALUES (?{', ?' * len(row)})"
    insert_place = f"INSERT INTO queue_messages VALUES (?, ?{', ?' * len(place)})"
    db.execute("BEGIN")
    for start in range(seq + 1, seq + count, BUILD_BATCH):
        keys = range(start, min(start + BUILD_BATCH, seq + count))
        db.executemany(insert_message, ((key, *row) for key in keys))
        db.executemany(insert_place, ((queue_id, key, *place) for key in keys))
    db.execute("COMMIT")
    db.close()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def stored_starts(count, runs):
    data_dir = tempfile.mkdtemp(prefix="greenmq-start-")
    try:
        began = time.perf_counter()
        build_store(data_dir, count)
        size = os.path.getsize(os.path.join(data_dir, "greenmq.sqlite3")) / 2**30
        print(f"built {count:,} stored messages ({size:.1f} GiB) in {time.perf_counter() - began:.0f} s")
        for crashed in [False] * runs + [True] * runs:
            if crashed:     # as a kill -9 leaves it: the last run did not stop cleanly
                db = sqlite3.connect(os.path.join(data_dir, "greenmq.sqlite3"))
                db.execute("UPDATE meta SET value = 0 WHERE key = 'clean_stop'")
                db.commit()
                db.close()
            began = time.perf_counter()
            with BrokerProcess(data_dir=data_dir) as broker:
                listening = time.perf_counter() - began
                rss = rss_mib(broker.pid)
                client = amqp.Connection(f"127.0.0.1:{broker.amqp_port}")
                client.connect()
                declared = client.channel().queue_declare("backlog", durable=True, auto_delete=False, passive=True)
                client.close()
            print(f"{'after kill -9' if crashed else 'clean stop':<14} listening after {listening:.2f} s, "
                  f"RSS {rss:.0f} MiB, queue 'backlog' counts "
                  f"{declared.message_count:,} messages")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--stored", type=int, help="time starts of a broker holding this many stored messages")
    args = parser.parse_args()
    if args.stored:
        stored_starts(args.stored, min(args.runs, 3))
        return
    starts = [one_start() for _ in range(args.runs)]
    print(f"{args.runs} starts on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    describe("start() returned (broker said it is ready)", [s[0] for s in starts])
    describe("AMQP port accepted a TCP connection", [s[1] for s in starts])
    describe("AMQP handshake done (py-amqp)", [s[2] for s in starts])
    describe("floor: python -c pass", [interpreter("pass") for _ in range(args.runs)])
    describe("floor: python importing gevent and pamqp",
             [interpreter("import gevent, gevent.server, pamqp.frame") for _ in range(args.runs)])


if __name__ == "__main__":
    main()
