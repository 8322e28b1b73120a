"""Many idle connections: the broker's resident memory per idle JSON-lines and AMQP
connection, and the time to open them.

    python bench/connections.py                   # 10,000 of each, each kind on a fresh broker
    python bench/connections.py --connections 2000

Each client connects and finishes the handshake (JSON lines: `hello`; AMQP: start-ok,
tune-ok, open, without heartbeats), then stays silent. Memory per connection is the growth
of the broker's resident set divided by the count. The broker raises its own open-file
limit; this program raises its own too.
"""

import argparse
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pamqp import commands as spec  # noqa: E402
from pamqp import frame as amqp_frame  # noqa: E402

from tests.broker_process import BrokerProcess  # noqa: E402
from throughput import rss_bytes  # noqa: E402     (bench/, this program's folder)

BATCH = 200
JSON_HELLO = b'{"op":"hello","id":1}\n'
AMQP_HANDSHAKE = (b"AMQP\x00\x00\x09\x01"
                  + amqp_frame.marshal(spec.Connection.StartOk(client_properties={"product": "bench"},
                                                               mechanism="PLAIN", response="\0guest\0guest"), 0)
                  + amqp_frame.marshal(spec.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0), 0)
                  + amqp_frame.marshal(spec.Connection.Open(virtual_host="/"), 0))
AMQP_OPEN_OK = b"\x00\x0a\x00\x29"      # connection.open-ok's class and method ids


def open_connections(port, count, handshake, answered):
    clients = []
    while len(clients) < count:
        batch = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(BATCH, count - len(clients)))]
        for sock in batch:
            sock.sendall(handshake)
        for sock in batch:
            received = b""
            while answered not in received:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"the broker closed connection {len(clients)}")
                received += data
        clients.extend(batch)
    return clients


def measure(kind, count, handshake, answered):
    with BrokerProcess() as broker:
        port = broker.port if kind == "JSON-lines" else broker.amqp_port
        open_connections(port, 10, handshake, answered)          # warm up the code paths
        time.sleep(1)
        before = rss_bytes(broker.pid)
        started = time.monotonic()
        clients = open_connections(port, count, handshake, answered)
        elapsed = time.monotonic() - started
        time.sleep(1)
        grown = rss_bytes(broker.pid) - before
        print(f"{kind:>10}: {count:,} idle connections opened in {elapsed:.1f} s "
              f"({count / elapsed:,.0f}/s); broker memory {grown / count / 1024:.1f} KiB per connection "
              f"({grown / 2**20:.0f} MiB in all)", flush=True)
        for sock in clients:
            sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 100
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            sys.exit(f"the hard limit on open files ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    measure("JSON-lines", args.connections, JSON_HELLO, b'"ok":true')
    measure("AMQP", args.connections, AMQP_HANDSHAKE, AMQP_OPEN_OK)


if __name__ == "__main__":
    main()
