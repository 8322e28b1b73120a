"""The socket side of both front ends: a reader greenlet feeding a sans-I/O protocol
object and a writer greenlet sending what it produces, in batches.

A protocol is a `FrontEndConnection` with `data_received(bytes)`, `close(exc)` and a
`name`. It may have `tick(now) -> seconds`: called again after that many seconds
(heartbeats, timeouts), or None when the connection is to end once its last output is sent.

What a connection holds counts in its node's memory budget (memory.py): output waiting
for the socket, whether still in the protocol's outbox or taken for a send the socket has
not accepted yet, and input not yet whole (the protocol's `unfinished_input_bytes()`). A
publisher is not read while the budget is exceeded: a connection that has published, or
that is streaming a message (more than STREAMING_INPUT_BYTES of it unfinished). Its
protocol is told with `reading_paused(reason)` and `reading_resumed()`, which each front
end words for its client.

An allocation failing (MemoryError) while one connection is served ends that connection
alone, with 541 INTERNAL_ERROR: its buffers are given up, and every other connection and
the listeners go on.
"""

import logging
import os
import socket
import time

import gevent
from gevent.event import Event

from .errors import ConnectionForced, InternalError
from .memory import BLOCKED_REASON

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

# Unfinished input past this size is a message being streamed, and its connection a
# publisher from then on, paused like one above the memory limit even before its first
# publish is whole (so it cannot stream a whole maximum-size message past the limit). No
# other request comes near it: an ack or a consume is a few hundred bytes, and a read
# that ends within a run of them leaves less than one of them unfinished.
STREAMING_INPUT_BYTES = 64 * 1024

# How often a connection not read for the memory budget looks whether the broker closed it:
# an idle timer a second per blocked publisher costs nothing, and an operator's close
# takes effect about at once.
PAUSED_CHECK_SECONDS = 1.0

# A body this large is not copied into its delivery's output: what a front end puts around
# it goes to the socket in buffers of its own, with the body (or memoryview slices of it)
# between them, in one writev. Below it, one copy into a single buffer costs less than the
# kernel gathering more buffers, and the outbox of small deliveries stays one join.
SCATTERED_BODY_BYTES = 16 * 1024

# The most buffers one sendmsg (writev) may gather: the system's IOV_MAX (1024 on Linux).
MAX_WRITE_BUFFERS = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

# How long the last words of a closing connection may take to send.
FINAL_SEND_SECONDS = 5

# A TLS client has this long to finish its handshake: one that connects and says nothing
# must not hold a connection slot for ever. Ten seconds covers slow links and CPUs.
TLS_HANDSHAKE_SECONDS = 10


class FrontEndConnection:
    """What both front ends share: output waiting for the socket, the backpressure it puts
    on the session's consumers, the memory budget's pause of publishers, and the session's
    end with the connection's."""

    def __init__(self, node, peer):
        self.node = node
        self.budget = node.memory       # the node's MemoryBudget: what this connection holds counts there
        self.peer = peer
        self.on_output = None        # set by the transport: output appeared where none waited
        self.session = None
        self.closed = False          # no more input is read once set
        self.outbox = []
        self.outbox_bytes = 0
        self.outbox_scattered = False   # holds a big body's buffers: sent as they are, not joined
        self.publisher = False       # has published: not read while the memory budget is exceeded
        self.paused = False          # the broker stopped reading it: its silence is not the peer's

    def _write(self, data):
        if not self.outbox and self.on_output is not None:
            self.on_output()
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        self.budget.held_bytes += len(data)
        if self.outbox_bytes > OUTBOX_HIGH_WATER and self.session is not None:
            self.session.set_writable(False)

    def _write_buffers(self, buffers):
        """Output in several buffers (a big body between its frame heads), left as they
        are for one writev: the body is not copied on its way to the socket."""
        if len(buffers) > 1:
            self.outbox_scattered = True
        for buffer in buffers:
            self._write(buffer)

    def take_output_buffers(self):
        """Everything written since the last call, as a list of buffers for the socket, in
        order: small output joined into one, the buffers of a big body as they were written."""
        outbox = self.outbox
        if not outbox:
            return []
        self.outbox = []
        self.budget.held_bytes -= self.outbox_bytes
        self.outbox_bytes = 0
        if self.outbox_scattered:
            self.outbox_scattered = False
            return outbox
        return [b"".join(outbox)]

    def take_output(self):
        """Everything written since the last call, as bytes."""
        return b"".join(self.take_output_buffers())

    def out_of_memory(self):
        """An allocation failed serving this connection: drop its output (perhaps what
        could not be allocated) and close it with 541, the last output it gets."""
        log.error("out of memory serving %s connection from %s; closing it", self.name, self.peer)
        self.outbox = []
        self.outbox_scattered = False
        self.budget.held_bytes -= self.outbox_bytes
        self.outbox_bytes = 0
        self.close(InternalError("out of memory"))

    def unfinished_input_bytes(self):
        """How much input this connection holds that is not yet a whole request; asked after
        each batch of reads."""
        return 0

    def reading_paused(self, reason):
        """The memory budget stopped reading this connection; a front end that can tell
        its client does so."""
        self.paused = True

    def reading_resumed(self):
        self.paused = False
        self._last_received = time.monotonic()     # heartbeats unread meanwhile were not missed

    def output_drained(self):
        if self.session is not None and not self.outbox:
            self.session.set_writable(True)

    def connection_lost(self):
        if self.session is not None:
            self.session.close()
            self.session = None


def connection_handler(make_protocol, tls=None):
    """A StreamServer handler serving each client with `make_protocol(address)`, over TLS
    with `tls` (a gevent.ssl.SSLContext). Killing its greenlet (the server stopping) closes
    the connection with 320 CONNECTION_FORCED."""

    def handle(sock, address):
        configure_socket(sock)
        if tls is not None:
            sock = _tls_handshake(sock, address, tls)
            if sock is None:
                return
        protocol = make_protocol(address)
        output = _Output(sock, protocol, direct=tls is None)
        protocol.on_output = output.ready
        helpers = [gevent.spawn(output.write_loop)]
        if hasattr(protocol, "tick"):
            helpers.append(gevent.spawn(_tick_loop, sock, protocol))
        log.info("accepted %s connection from %s:%s", protocol.name, *address[:2])
        budget = protocol.budget
        unfinished = 0      # input not yet whole, as last counted in the budget
        hub = gevent.get_hub()
        loop = hub.loop
        # The reader's yield between reads (below); a TLS socket may hold decrypted input
        # its file descriptor does not show, so it yields with gevent.sleep(0) instead.
        readable = loop.io(sock.fileno(), 1) if tls is None else None
        try:
            read = False        # a read was handled since the last yield
            while not protocol.closed:
                if ((protocol.publisher or unfinished > STREAMING_INPUT_BYTES)
                        and not budget.admits_publishers()):
                    _pause_reading(protocol, budget)
                    continue
                if read:
                    # recv returns at once while data is waiting: yield so that writers and
                    # other clients run between batches, through the hub's poll of the
                    # sockets. gevent.sleep(0) alone runs the next reader at once, and the
                    # hub polls only every few milliseconds (sys.getswitchinterval) while
                    # readers are busy: a writer waiting for its socket to take more sat
                    # idle that long while its publisher's input piled up in the queues (at
                    # 1 MiB bodies, 5 MiB between two polls, memory the heap grew for).
                    read = False
                    if readable is None:
                        gevent.sleep(0)
                    else:
                        hub.wait(readable)
                    continue        # closed, or the budget exceeded, meanwhile?
                data = sock.recv(RECV_BYTES)
                if not data:
                    break
                protocol.data_received(data)
                held = protocol.unfinished_input_bytes()
                budget.held_bytes += held - unfinished
                unfinished = held
                if not loop.pendingcnt:
                    _send_ready()       # else the last reader of this poll sends for all
                read = True
        except OSError as exc:
            if not protocol.closed:   # else: drained() ended the read (gevent raises EBADF)
                log.info("%s connection from %s:%s failed: %s", protocol.name, address[0], address[1], exc)
        except gevent.GreenletExit:
            protocol.close(ConnectionForced(SHUTDOWN_REASON))
        except MemoryError:
            protocol.out_of_memory()
        finally:
            if readable is not None:
                readable.close()
            protocol.connection_lost()
            gevent.killall(helpers)
            budget.held_bytes -= unfinished + output.held
            output.held = 0
            try:
                rest = b"".join(output.pending + protocol.take_output_buffers())
            except MemoryError:
                rest = b""
            _send_rest(sock, rest)
            log.info("closed %s connection from %s:%s", protocol.name, *address[:2])

    return handle


def _pause_reading(protocol, budget):
    """Read nothing more from a publisher until the memory budget admits publishers again;
    its output (deliveries, heartbeats) still flows. A connection the broker closes
    meanwhile (an operator, its vhost deleted) ends within PAUSED_CHECK_SECONDS."""
    protocol.reading_paused(BLOCKED_REASON)
    _send_ready()
    while not budget.wait_until_admitted(PAUSED_CHECK_SECONDS):
        if protocol.closed:
            return
    protocol.reading_resumed()
    _send_ready()


# What RabbitMQ tells its clients when it stops.
SHUTDOWN_REASON = "broker forced connection closure with reason 'shutdown'"


def _tls_handshake(sock, address, tls):
    """The TLS socket, or None (logged, closed) when the client fails the handshake."""
    try:
        with gevent.Timeout(TLS_HANDSHAKE_SECONDS, OSError("handshake timed out")):
            return tls.wrap_socket(sock, server_side=True)
    except OSError as exc:          # ssl.SSLError is one
        log.info("TLS handshake with %s:%s failed: %s", address[0], address[1], exc)
        sock.close()
        return None


# Connections with output produced since the last send: after each batch of input the
# reader sends it straight away, one write per connection, without waiting for each
# connection's writer greenlet to be scheduled (a hub round trip per hop of a request).
# When the poll that woke the reader woke other sockets too (the hub has their callbacks
# pending), the reader leaves the sending to the last of them: sixteen publishers each
# waiting for its confirm then reach their consumer in one write, not sixteen (sendto
# calls a message 2.0 -> 1.1 and the broker's CPU 12-18% lower, bench/durable.py
# --publishers 16 --c-publishers under perf stat). Output of anything but a reader (timers,
# the store's commits) goes at the hub's next round of callbacks, before it polls again.
_ready = []


def _send_ready():
    while _ready:
        _ready.pop().send_now()


class _Output:
    """The sending side of one connection: direct non-blocking sends while the socket keeps
    up, and a writer greenlet for whatever has to wait for it."""

    __slots__ = ("sock", "protocol", "pending", "held", "writing", "wakeup", "direct")

    def __init__(self, sock, protocol, direct=True):
        self.sock = sock
        # A TLS socket cannot be asked not to wait (its send waits on a full socket
        # whatever the timeout): its writer greenlet sends everything.
        self.direct = direct
        self.protocol = protocol
        self.pending = []         # buffers taken from the protocol, not yet accepted by the socket
        self.held = 0             # bytes taken from the protocol and not yet sent, counted in the budget
        self.writing = False      # the writer greenlet owns the socket
        self.wakeup = Event()

    def ready(self):
        """The protocol has output where it had none. Output made outside a reader's batch
        (timers, heartbeats) is sent from the hub's next round of callbacks."""
        if not _ready:
            gevent.get_hub().loop.run_callback(_send_ready)
        _ready.append(self)

    def send_now(self):
        if self.writing or self.pending:
            return                # the writer is on it and will take the new output too
        try:
            buffers = self.protocol.take_output_buffers()
        except MemoryError:
            self.out_of_memory()
            return
        if not buffers:
            return
        try:
            sent = _send_without_waiting(self.sock, buffers) if self.direct else 0
        except OSError:
            # The reader's wait or recv fails (gevent wakes every watcher of a socket it
            # closes, the reader's own between reads too) and the connection ends.
            self.sock.close()
            return
        pending = _unsent(buffers, sent)
        if pending:
            self.pending = pending
            self.held = _size(pending)
            self.protocol.budget.held_bytes += self.held
            self.wakeup.set()
        else:
            self.drained()

    def write_loop(self):
        try:
            while True:
                self.wakeup.wait()
                self.wakeup.clear()
                self.writing = True
                try:
                    buffers, self.pending = self.pending + self.protocol.take_output_buffers(), []
                except MemoryError:
                    return self.out_of_memory()
                budget = self.protocol.budget       # counted until the socket has taken it all
                size = _size(buffers)
                budget.held_bytes += size - self.held
                self.held = size
                if buffers:
                    self._send_all(buffers)
                budget.held_bytes -= self.held
                self.held = 0
                self.writing = False
                self.drained()
                if self.protocol.outbox:
                    self.wakeup.set()
        except OSError:
            self.sock.close()

    def _send_all(self, buffers):
        """Send `buffers` in order, waiting for the socket as long as it takes: gathered by
        sendmsg, or joined for a TLS socket (which has none, and copies to encrypt anyway)."""
        if len(buffers) == 1 or not self.direct:
            self.sock.sendall(buffers[0] if len(buffers) == 1 else b"".join(buffers))
            return
        while buffers:
            buffers = _unsent(buffers, self.sock.sendmsg(buffers[:MAX_WRITE_BUFFERS]))

    def drained(self):
        """All output is sent. A protocol closed by the core (its vhost deleted) has said
        its last words: end reading, so the reader sees EOF and the connection ends."""
        if self.protocol.closed:
            end_reading(self.sock)
        else:
            self.protocol.output_drained()

    def out_of_memory(self):
        self.pending = []
        self.protocol.budget.held_bytes -= self.held
        self.held = 0
        self.protocol.out_of_memory()
        end_reading(self.sock)


def _send_without_waiting(sock, buffers):
    """How many bytes of `buffers` the socket takes at once, without waiting."""
    try:
        if len(buffers) == 1:
            return sock.send(buffers[0], 0, 0.0)      # gevent's timeout 0: never wait here
        return sock.sendmsg(buffers[:MAX_WRITE_BUFFERS], (), socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


def _unsent(buffers, sent):
    """What of `buffers` a send that took their first `sent` bytes left to send: the
    buffers after it, and a memoryview of the rest of the one it ended in (no copy)."""
    if not sent:
        return buffers
    for index, buffer in enumerate(buffers):
        size = len(buffer)
        if sent < size:
            return [memoryview(buffer)[sent:], *buffers[index + 1:]]
        sent -= size
    return []


def _size(buffers):
    size = 0
    for buffer in buffers:
        size += len(buffer)
    return size


def end_reading(sock):
    """Make the connection's reader see the end of input, so that it finishes the
    connection: sends the last output, then closes the socket."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        sock.close()      # already broken: the reader's recv fails


def configure_socket(sock):
    # Replies and deliveries are small and wanted now: no Nagle delay (RabbitMQ's default).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):   # Linux; elsewhere the system's timers apply
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def _tick_loop(sock, protocol):
    while True:
        delay = protocol.tick(time.monotonic())
        if delay is None:
            end_reading(sock)
            return
        gevent.sleep(delay)


def _send_rest(sock, data):
    try:
        if data:
            with gevent.Timeout(FINAL_SEND_SECONDS):
                sock.sendall(data)
    except (OSError, gevent.Timeout):
        pass
    finally:
        sock.close()
