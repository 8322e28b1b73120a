"""What the queue features cost, through pika: a plain queue, a priority queue (10
priorities) and a queue with a dead-letter exchange and a length limit under overflow,
against this GreenMQ, optionally another GreenMQ (`--baseline DIR`, a checkout of an
earlier version: the plain figures must not move), and optionally a reference broker.

    python bench/queue_features.py --baseline /tmp/greenmq-main \\
        --url amqp://guest:guest@127.0.0.1:5682/%2f

First the core alone, in one process without sockets: CPU per message for publish and
delivery to a no-ack consumer on a plain queue (best of 7 rounds of 200,000), the figure
least disturbed by a busy machine. Then the JSON-lines end-to-end throughput of bench/throughput.py (one producer process to
one consumer process, 10 x N messages) on each GreenMQ: the cost of the features when
unused. Then each AMQP workload publishes N transient 100-byte messages from one connection, waits until
the broker holds them, then consumes what is left with auto-ack. Rates are messages per
second for each phase. For GreenMQ brokers started here it also prints the broker's CPU
time per message (utime + stime from /proc/PID/stat across the workload), which other
work on a shared machine disturbs far less than wall-clock rates.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import throughput  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = b"x" * 100
MAX_LENGTH = 1000


class GreenMQ:
    """A broker.py of some checkout, in memory, on free ports (the HTTP port through the
    environment, which a checkout from before the management API ignores)."""

    def __init__(self, root):
        self.root = root
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(root, "broker.py"), "--port", "0", "--amqp-port", "0", "--in-memory"],
            cwd=root, stdout=subprocess.PIPE, stderr=self.log, env={**os.environ, "GREENMQ_HTTP_PORT": "0"})
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.log.seek(0)
            raise RuntimeError(f"the broker of {root} did not start:\n{self.log.read().decode(errors='replace')}")
        ready = json.loads(line)
        self.url = f"amqp://guest:guest@127.0.0.1:{ready['amqp_port']}/%2f"
        self.port = ready["port"]

    def cpu_seconds(self):
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        self.process.wait()


# Run in a fresh interpreter per checkout, so each measures its own modules.
CORE_WORKLOAD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
if os.path.isdir(os.path.join(sys.argv[1], "greenmq")):
    from greenmq.node import Node
else:                       # a checkout from before the package (--baseline)
    from node import Node

class Sink:
    def deliver(self, *args):
        pass

node = Node()
channel = node.open_session(node.users["guest"], "/", None, "amqp", Sink()).open_channel(1)
channel.vhost.declare_queue("q")
channel.consume("q", "c", no_ack=True)
body, count, best = b"x" * 100, 200_000, float("inf")
for _ in range(7):
    started = time.process_time()
    for _ in range(count):
        channel.publish("", "q", body)
    best = min(best, (time.process_time() - started) / count)
print(best)
"""


def core_cost(root):
    """Seconds of CPU per message published and delivered, in the core of `root`."""
    return float(subprocess.run([sys.executable, "-c", CORE_WORKLOAD, root], capture_output=True, text=True,
                                check=True, cwd=root).stdout)


def wait_for_count(channel, queue, expected):
    deadline = time.monotonic() + 120
    while channel.queue_declare(queue, passive=True).method.message_count != expected:
        assert time.monotonic() < deadline, f"{queue} never held {expected}"
        channel.connection.sleep(0.01)       # rare polls: their cost is the broker's too


def workload(url, kind, count):
    """(publish rate, consume rate) for one workload."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    arguments, held = {}, count
    if kind == "priority":
        arguments = {"x-max-priority": 10}
    elif kind == "dlx-overflow":
        dead = channel.queue_declare(queue + ".dead", exclusive=True,
                                     arguments={"x-max-length": MAX_LENGTH}).method.queue
        arguments = {"x-max-length": MAX_LENGTH, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
        held = MAX_LENGTH
    channel.queue_declare(queue, exclusive=True, arguments=arguments)
    properties = [pika.BasicProperties(priority=p if kind == "priority" else None) for p in range(10)]
    started = time.monotonic()
    for n in range(count):
        channel.basic_publish("", queue, BODY, properties[n % 10])
    wait_for_count(channel, queue, held)
    published = time.monotonic()
    if kind == "dlx-overflow":
        wait_for_count(channel, dead, MAX_LENGTH)
    received = 0

    def on_message(ch, method, props, body):
        nonlocal received
        received += 1
        if received == held:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    consume_started = time.monotonic()
    channel.start_consuming()
    consumed = time.monotonic()
    connection.close()
    return count / (published - started), held / (consumed - consume_started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another GreenMQ checkout to measure beside this one")
    parser.add_argument("--url", action="append", default=[], help="a running broker to measure too")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    brokers = [("GreenMQ (this)", GreenMQ(HERE))]
    if args.baseline:
        brokers.append(("GreenMQ (baseline)", GreenMQ(args.baseline)))
    brokers += [(url, None) for url in args.url]
    try:
        greenmqs = [(label, broker) for label, broker in brokers if broker]
        for round_number in range(args.rounds):
            for label, broker in greenmqs:
                print(f"core          round {round_number + 1}  {label:22} publish + deliver "
                      f"{core_cost(broker.root) * 1e9:6.0f} ns/msg of CPU", flush=True)
        for round_number in range(args.rounds):
            for label, broker in greenmqs:
                cpu = broker.cpu_seconds()
                rate = throughput(broker.port, 10 * args.messages, len(BODY))
                print(f"JSON lines    round {round_number + 1}  {label:22} end to end {rate:8,.0f}/s  "
                      f"broker CPU {(broker.cpu_seconds() - cpu) / (10 * args.messages) * 1e6:5.1f} us/msg", flush=True)
        for kind in ("plain", "priority", "dlx-overflow"):
            for round_number in range(args.rounds):
                for label, broker in brokers:
                    if kind != "plain" and label == "GreenMQ (baseline)":
                        continue        # the baseline has no such features
                    url = broker.url if broker else label
                    cpu = broker.cpu_seconds() if broker else None
                    publish, consume = workload(url, kind, args.messages)
                    line = f"{kind:13} round {round_number + 1}  {label:22} publish {publish:8,.0f}/s  consume {consume:8,.0f}/s"
                    if broker:
                        line += f"  broker CPU {(broker.cpu_seconds() - cpu) / args.messages * 1e6:5.1f} us/msg"
                    print(line, flush=True)
    finally:
        for _, broker in brokers:
            if broker:
                broker.stop()


if __name__ == "__main__":
    main()
