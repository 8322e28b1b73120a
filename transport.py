"""The socket side of both front ends: a reader greenlet feeding a sans-I/O protocol
object and a writer greenlet sending what it produces, in batches.

A protocol object has `data_received(bytes)`, `take_output() -> bytes`, `output_drained()`,
`close(exc)`, `connection_lost()`, a `closed` flag, an `on_output` callback attribute the
transport sets (called when output appears after none was waiting) and a `name`. It may
have `tick(now) -> seconds`: called again after that many seconds (heartbeats, timeouts),
or None when the peer is to be dropped without further ado.
"""

import logging
import socket
import time

import gevent
from gevent.event import Event

from errors import ConnectionForced

log = logging.getLogger("greenmq.transport")

RECV_BYTES = 256 * 1024

# A client that vanishes without closing (power loss, a cut network) holds its unacked
# messages until the broker notices. Linux's default keepalive notices after two hours;
# these settings after about two minutes, with no traffic while the peer is healthy.
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 6

# Once this much output waits for a client's socket, its consumers stop taking messages
# (they stay in their queues) until the socket drains: a slow reader cannot make the
# broker copy a whole queue into memory.
OUTBOX_HIGH_WATER = 1024 * 1024

# How long the last words of a closing connection may take to send.
FINAL_SEND_SECONDS = 5


def connection_handler(make_protocol):
    """A StreamServer handler serving each client with `make_protocol(address)`. Killing
    its greenlet (the server stopping) closes the connection with 320 CONNECTION_FORCED."""

    def handle(sock, address):
        configure_socket(sock)
        protocol = make_protocol(address)
        wakeup = Event()
        protocol.on_output = wakeup.set
        helpers = [gevent.spawn(_write_loop, sock, protocol, wakeup)]
        if hasattr(protocol, "tick"):
            helpers.append(gevent.spawn(_tick_loop, sock, protocol))
        log.info("accepted %s connection from %s:%s", protocol.name, *address[:2])
        try:
            while not protocol.closed:
                data = sock.recv(RECV_BYTES)
                if not data:
                    break
                protocol.data_received(data)
                # recv returns at once while data is waiting: yield so that writers and
                # other clients run between batches.
                gevent.sleep(0)
        except OSError as exc:
            log.info("%s connection from %s:%s failed: %s", protocol.name, address[0], address[1], exc)
        except gevent.GreenletExit:
            protocol.close(ConnectionForced("broker shutdown"))
        finally:
            protocol.connection_lost()
            gevent.killall(helpers)
            _send_rest(sock, protocol)
            log.info("closed %s connection from %s:%s", protocol.name, *address[:2])

    return handle


def configure_socket(sock):
    # Replies and deliveries are small and wanted now: no Nagle delay (RabbitMQ's default).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):   # Linux; elsewhere the system's timers apply
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def _write_loop(sock, protocol, wakeup):
    try:
        while True:
            wakeup.wait()
            wakeup.clear()
            data = protocol.take_output()
            if data:
                sock.sendall(data)
            protocol.output_drained()
    except OSError:
        sock.close()


def _tick_loop(sock, protocol):
    while True:
        delay = protocol.tick(time.monotonic())
        if delay is None:
            sock.close()      # the reader's recv fails and the connection ends
            return
        gevent.sleep(delay)


def _send_rest(sock, protocol):
    data = protocol.take_output()
    try:
        if data:
            with gevent.Timeout(FINAL_SEND_SECONDS):
                sock.sendall(data)
    except (OSError, gevent.Timeout):
        pass
    finally:
        sock.close()
