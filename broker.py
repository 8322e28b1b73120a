"""The GreenMQ broker process: flags, listeners, signals and wiring. `python3 broker.py`."""

import argparse
import gc
import json
import logging
import os
import signal
import sys

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from amqp_protocol import AmqpConnection
from durable_store import StoreError, open_store
from node import VERSION, Node
from protocol import DEFAULT_MAX_LINE_BYTES, JsonLinesProtocol
from transport import connection_handler

log = logging.getLogger("greenmq")

# CPython's collector walks every tracked object in a full collection: with a million
# messages waiting that is a quarter-second pause, and its own policy runs one every few
# hundred thousand publishes, so publishing got slower as queues grew. Messages form no
# reference cycles; young collections stay automatic and full ones run on this timer.
FULL_COLLECTION_INTERVAL_SECONDS = 60.0

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5680          # JSON lines
DEFAULT_AMQP_PORT = 5672     # AMQP 0-9-1, where every AMQP client looks first
# Beside the broker's working directory, so `python3 broker.py` keeps its messages where
# the next `python3 broker.py` from the same place finds them.
DEFAULT_DATA_DIR = "greenmq-data"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="broker.py", description="GreenMQ: a message broker with RabbitMQ's model, on gevent.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"JSON-lines port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--amqp-port", type=int, default=DEFAULT_AMQP_PORT,
                        help=f"AMQP 0-9-1 port (default {DEFAULT_AMQP_PORT}; 0 picks a free one)")
    parser.add_argument("--no-amqp", action="store_true", help="do not listen for AMQP clients")
    parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                        help=f"longest JSON line accepted (default {DEFAULT_MAX_LINE_BYTES})")
    parser.add_argument("--data-dir", default=os.environ.get("GREENMQ_DATA_DIR") or DEFAULT_DATA_DIR,
                        help="where durable exchanges, queues, bindings and persistent messages are kept "
                             f"(default $GREENMQ_DATA_DIR or ./{DEFAULT_DATA_DIR}; created if missing)")
    parser.add_argument("--in-memory", action="store_true",
                        help="keep nothing on disk: durable entities and persistent messages last "
                             "only as long as the process")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for flag, port in (("--port", args.port), ("--amqp-port", args.amqp_port)):
        if not 0 <= port <= 65535:
            parser.error(f"{flag} must be between 0 and 65535, not {port}")
    if args.max_line_bytes < 1024:
        parser.error("--max-line-bytes must be at least 1024")
    return args


def collect_garbage_on_a_timer():
    gc.freeze()                       # what start-up created lives as long as the process
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)
    return gevent.spawn(_full_collections)


def _full_collections():
    while True:
        gevent.sleep(FULL_COLLECTION_INTERVAL_SECONDS)
        gc.collect()


def announce_ready(host, port, amqp_port=None):
    """The one line the broker writes on stdout, once every listener accepts clients, so
    that whoever started it (a test fixture) can wait for it instead of polling:
    {"ready": true, "host": "127.0.0.1", "port": 5680, "amqp_port": 5672}"""
    print(json.dumps({"ready": True, "host": host, "port": port, "amqp_port": amqp_port}), flush=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collect_garbage_on_a_timer()      # before recovery, which makes millions of objects
    try:
        store = open_store(None if args.in_memory else os.path.abspath(args.data_dir))
        if args.in_memory:
            log.info("keeping messages in memory only (--in-memory)")
        else:
            log.info("keeping durable entities and persistent messages in %s", store.path)
        node = Node(store=store)
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    listeners = [("JSON-lines", args.port, lambda address: JsonLinesProtocol(node, address, args.max_line_bytes))]
    if not args.no_amqp:
        listeners.append(("AMQP", args.amqp_port, lambda address: AmqpConnection(node, address)))
    servers = []
    for name, port, make_protocol in listeners:
        # Handlers in a pool, so that stopping the server kills them and each client is told why.
        server = StreamServer((args.host, port), connection_handler(make_protocol), spawn=Pool())
        try:
            server.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s for %s clients: %s", args.host, port, name, exc.strerror or exc)
            for started in servers:
                started.stop(timeout=0)
            node.close()
            return 1
        servers.append(server)
        log.info("GreenMQ %s listening for %s clients on %s:%d", VERSION, name, args.host, server.server_port)

    stopping = Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    announce_ready(args.host, *(server.server_port for server in servers))   # a SIGTERM now stops it cleanly
    stopping.wait()
    log.info("shutting down")
    for server in servers:
        server.stop(timeout=0)
    node.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
