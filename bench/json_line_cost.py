"""The broker's own cost of one JSON-lines publish, without sockets: a front end fed 256 KiB
of publish lines (as connection.py writes them: 100-byte bodies, the default exchange) in
one call, delivering each to a no-ack consumer whose output is taken after each batch.
Steadier than end-to-end rates on a shared machine, which swing with the clients' share of
the cores.

    python bench/json_line_cost.py                  # this checkout
    python bench/json_line_cost.py --root DIR       # another checkout of GreenMQ, to compare

Prints the best of --rounds batches, in microseconds per publish line.
"""

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_BYTES = 256 * 1024        # what the transport reads at a time
QUEUE = "bench.throughput"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=HERE, help="the GreenMQ checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    # A checkout from before the package (--root) has its modules at the top.
    package = "greenmq." if os.path.isdir(os.path.join(args.root, "greenmq")) else ""
    try:
        JsonLinesWire = importlib.import_module(package + "client_json_lines").JsonLinesWire
    except ModuleNotFoundError:     # a checkout from before the client's wires had modules of their own
        JsonLinesWire = importlib.import_module(package + "connection")._JsonLinesWire
    Node = importlib.import_module(package + "node").Node
    JsonLinesProtocol = importlib.import_module(package + "protocol").JsonLinesProtocol

    node = Node()
    consumer, producer = (JsonLinesProtocol(node, ("127.0.0.1", port)) for port in (1, 2))
    for client in (consumer, producer):
        client.data_received(b'{"op":"hello"}\n')
    consumer.data_received(f'{{"op":"queue.declare","queue":"{QUEUE}","id":1}}\n'
                           f'{{"op":"consume","queue":"{QUEUE}","no_ack":true,"id":2}}\n'.encode())
    consumer.take_output()
    producer.take_output()
    wire = JsonLinesWire(None)
    wire._measure_bodies_over = args.size        # as a connection's `hello` sets it: no measuring
    line = wire.publish(1, "", QUEUE, b"x" * args.size, None, False).encode()
    lines = BATCH_BYTES // len(line)
    batch = line * lines
    best = float("inf")
    for _ in range(args.rounds):
        started = time.perf_counter()
        producer.data_received(batch)
        delivered = consumer.take_output()
        best = min(best, time.perf_counter() - started)
        consumer.output_drained()
        assert delivered.count(b"\n") == lines, "every publish delivered"
    print(f"JSON-lines publish -> deliver in memory ({os.path.abspath(args.root)}): {best / lines * 1e6:.2f} us "
          f"per publish line ({lines} lines of {len(line)} B a batch, best of {args.rounds})")


if __name__ == "__main__":
    main()
