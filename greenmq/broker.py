"""The GreenMQ broker process: flags, listeners, signals and wiring. `python3 broker.py`."""

import gc
import json
import logging
import os
import resource
import signal
import ssl
import sys

import gevent
import gevent.ssl
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from .amqp_protocol import AmqpConnection
from .config import ConfigError, load_settings
from .store import StoreError, open_store
from .node import VERSION, Node
from .logs import JsonFormatter, ReopenableFileHandler, reopen_log_files
from .management import management_server
from .protocol import JsonLinesProtocol
from .stats import RateSampler
from .transport import connection_handler

log = logging.getLogger("greenmq")

# CPython's collector walks every tracked object in a full collection: with a million
# messages waiting that is a quarter-second pause, and its own policy runs one every few
# hundred thousand publishes, so publishing got slower as queues grew. Messages form no
# reference cycles; young collections stay automatic and full ones run on this timer.
FULL_COLLECTION_INTERVAL_SECONDS = 60.0

# Connections the kernel completes before the broker accepts them. gevent's default, 128
# (RabbitMQ's too), overflows when hundreds of clients connect at once (all of them again
# after a restart), and each overflowing client waits a second or more for its SYN to be
# retried. Linux caps it at net.core.somaxconn (4096 by default since 5.4).
LISTEN_BACKLOG = 1024

# Each client holds a file descriptor, and many systems start processes with a soft limit
# of 1,024. The broker raises its own soft limit at start towards this many (never past
# the hard limit, which only the administrator can raise): room for 10,000 clients and more.
WANTED_OPEN_FILES = 65536


def raise_open_files_limit():
    """Raise the soft limit on open files towards WANTED_OPEN_FILES, and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(WANTED_OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit %d (at most about that many clients); cannot raise it: %s", soft, exc)
            return
        log.info("raised the open-file limit from %d to %d (hard limit %s)", soft, wanted,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard)


def collect_garbage_on_a_timer():
    gc.freeze()                       # what start-up created lives as long as the process
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)
    return gevent.spawn(_full_collections)


def _full_collections():
    while True:
        gevent.sleep(FULL_COLLECTION_INTERVAL_SECONDS)
        gc.collect()


def announce_ready(host, ports):
    """The one line the broker writes on stdout, once every listener accepts clients, so
    that whoever started it (a test fixture) can wait for it instead of polling:
    {"ready": true, "host": "127.0.0.1", "port": 5680, "amqp_port": 5672, "http_port": 15672},
    with "tls_port" and "amqps_port" when those listen."""
    print(json.dumps({"ready": True, "host": host, **ports}), flush=True)


def set_up_logging(settings):
    if settings.log_file:
        handler = ReopenableFileHandler(settings.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def tls_context(settings):
    """The listeners' TLS context; with tls_ca, clients must present a certificate it signed."""
    context = gevent.ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)   # gevent's: handshakes yield
    for name, load in (("tls_cert", lambda: context.load_cert_chain(settings.tls_cert, settings.tls_key)),
                       ("tls_ca", lambda: settings.tls_ca and context.load_verify_locations(settings.tls_ca))):
        try:
            load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{name}: cannot load {getattr(settings, name)}"
                              f"{' / ' + settings.tls_key if name == 'tls_cert' and settings.tls_key else ''}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if settings.tls_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def listeners(settings, node, context):
    """(name, port, protocol factory, TLS context or None, key in the ready line) per listener."""
    json_lines = lambda address: JsonLinesProtocol(node, address, settings.max_line_bytes, settings.max_message_bytes,
                                                   settings.hello_timeout)
    amqp = lambda address: AmqpConnection(node, address, settings.max_message_bytes)
    wanted = []
    if settings.plain:
        wanted.append(("JSON-lines", settings.port, json_lines, None, "port"))
        if settings.amqp:
            wanted.append(("AMQP", settings.amqp_port, amqp, None, "amqp_port"))
    if context is not None:
        wanted.append(("JSON-lines/TLS", settings.tls_port, json_lines, context, "tls_port"))
        if settings.amqp:
            wanted.append(("AMQP/TLS", settings.amqps_port, amqp, context, "amqps_port"))
    return wanted


def main(argv=None):
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
        set_up_logging(settings)
    except (ConfigError, OSError) as exc:
        print(f"broker.py: error: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    collect_garbage_on_a_timer()      # before recovery, which makes millions of objects
    try:
        context = tls_context(settings) if settings.tls_cert else None
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        store = open_store(None if settings.in_memory else os.path.abspath(settings.data_dir))
        if settings.in_memory:
            log.info("keeping messages in memory only (in_memory)")
        else:
            log.info("keeping durable entities and persistent messages in %s", store.path)
        node = Node(store=store, memory_limit=settings.memory_limit, queue_window=settings.queue_window,
                    queue_window_bytes=settings.queue_window_bytes, paging_ratio=settings.memory_paging_ratio,
                    scratch_dir=None if settings.in_memory else os.path.abspath(settings.data_dir))
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    log.info("memory limit %d bytes (%.1f MiB; memory_limit): publishers wait above it", settings.memory_limit,
             settings.memory_limit / 2**20)
    log.info("queues keep up to %d messages and %.1f MiB of bodies ahead in memory (queue_window, "
             "queue_window_bytes)", node.memory.queue_window, node.memory.queue_window_bytes / 2**20)
    node.memory.start_trimming()
    node.start_consumer_timeout(settings.consumer_timeout)
    servers = []
    ports = {"port": None, "amqp_port": None, "http_port": None}
    # (name, address, port, server, key in the ready line) per listener.
    wanted = [(name, settings.host, port,
               # Handlers in a pool, so that stopping the server kills them and each client is told why.
               StreamServer((settings.host, port), connection_handler(make_protocol, tls), spawn=Pool(),
                            backlog=LISTEN_BACKLOG), key)
              for name, port, make_protocol, tls, key in listeners(settings, node, context)]
    sampler = None
    if settings.http:
        sampler = RateSampler(node, settings.stats_interval).start()
        # HTTPS with the listeners' TLS when the broker has no plain listeners at all.
        wanted.append(("HTTP", settings.http_host, settings.http_port,
                       management_server(node, sampler, settings.http_host, settings.http_port,
                                         settings.per_queue_metrics, None if settings.plain else context,
                                         settings.http_allowed_hosts),
                       "http_port"))
    for name, host, port, server, key in wanted:
        try:
            server.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s for %s clients: %s", host, port, name, exc.strerror or exc)
            for started in servers:
                started.stop(timeout=0)
            node.close()
            return 1
        servers.append(server)
        ports[key] = server.server_port
        log.info("GreenMQ %s listening for %s clients on %s:%d", VERSION, name, host, server.server_port)

    stopping = Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    gevent.signal_handler(signal.SIGHUP, reopen_log_files)
    announce_ready(settings.host, ports)    # a SIGTERM now stops it cleanly
    stopping.wait()
    log.info("shutting down: closing %d connections", len(node.sessions))
    for server in servers:
        server.close()                      # no new clients while the others are told
    for server in servers:
        server.stop(timeout=0)              # each connection is closed with 320 and the reason
    if sampler is not None:
        sampler.stop()
    node.close()                            # the store's pending commits are finished
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
