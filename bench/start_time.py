"""How long a test waits for its broker: from greenmq_testing.start() (what the pytest
fixture calls) to an AMQP port that accepts a connection, and to a finished AMQP handshake.

    python bench/start_time.py              # 20 starts
    python bench/start_time.py --runs 50

For scale it also times the floor every start pays: a bare Python interpreter, and one that
imports what the broker imports (gevent, pamqp).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amqp  # noqa: E402

from greenmq import testing as greenmq_testing  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
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
