"""GreenMQ's blocking client, over the JSON-lines protocol (PROTOCOL.md) or AMQP 0-9-1.

Plain sockets and one helper thread, no gevent and no monkey-patching: use it from scripts
and ordinary threads (one connection per thread, like pika's BlockingConnection).

    conn = connection.Connection('localhost')
    conn = connection.Connection('amqp://guest:guest@localhost:5672/%2f')   # or RabbitMQ

A host name speaks GreenMQ's JSON lines; an `amqp://` or `amqps://` URL (or, for a host
name given without a port, the URL in $GREENMQ_URL) speaks AMQP 0-9-1 to GreenMQ's AMQP
port or to any AMQP broker, so programs move to a RabbitMQ cluster by changing a URL. Both
APIs, the errors and their reply codes are the same over either wire: the Channel code is
shared and speaks JSON-lines requests, which a wire turns into bytes and the bytes that
come back into replies and events. Each wire offers the same few calls: `request` and
`publish` (what to send), `received` (the replies and events that bytes complete), `join`,
`HEARTBEAT`, `opened` and `open_first_channel`.

    channel = conn.channel()
    channel.queue_declare('hello')
    channel.basic_publish('', 'hello', b'Hello World!')

Publishes, acks and other requests that need no answer are queued and written in batches
by a helper thread (or before the client waits for anything), so publishing never waits
for the broker; calls that need an answer wait for it. A program that ends without close()
has its connections closed at interpreter exit, so what it queued is still delivered. Callbacks of consumers run only
inside `start_consuming`, `process_data_events` or `consume`, in the calling thread.

This module is the API and the connection under it: sockets, the writer thread, replies
and events filed for the channels. The rest has rooms of its own, none of them the
broker's: the two wires (client_json_lines.py, client_amqp.py), the errors
(client_errors.py), and the brokers a connection goes round when one is lost
(client_failover.py).
"""

import atexit
import base64
import collections
import itertools
import os
import selectors
import signal
import socket
import threading
import time
import weakref

# The errors, ports, environment variables and limits that live beside the code they govern
# are importable from here too, where programs catch and read them (connection.NotFound,
# connection.DEFAULT_PORT); some of them this module only passes on.
from greenmq.client_amqp import AMQP_CHANNEL_MAX, AMQP_FRAME_MAX
from greenmq.client_errors import (
    AccessRefused, AuthenticationError, BrokerError, ConnectionBlockedTimeout, ConnectionClosed, GreenMQError,
    NackError, NotFound, PreconditionFailed, ResourceLocked, UnroutableError, broker_error, connection_closed)
from greenmq.client_failover import (
    AMQP_PORTS, DEFAULT_PORT, FAILOVER_CLOSE_CODE, FAILOVER_FIRST_WAIT, FAILOVER_GIVE_UP_SECONDS,
    FAILOVER_MAX_WAIT, PORT_ENVIRONMENT_VARIABLE, URL_ENVIRONMENT_VARIABLE, Backoff, Declarations, brokers,
    fails_over)
from greenmq.client_json_lines import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_MESSAGE_BYTES
from greenmq.properties import PROPERTY_NAMES

PROTOCOL_VERSION = 1

# The queue of the original API's `publish(msg)` and `subscribe(callback)` with no names.
DEFAULT_QUEUE = "default"

# A signal (Ctrl-C) that lands after CPython's last check for pending signals but before
# a blocking recv() starts is only acted on when recv returns: waiting in slices of this
# length bounds that delay for an idle consumer.
SIGNAL_CHECK_SECONDS = 0.5

# Queued lines past this count are written by the publishing thread itself, so a producer
# faster than the network waits for the socket instead of growing memory.
MAX_QUEUED_LINES = 4096
RECV_BYTES = 256 * 1024

# A program that ends without close() (off its end, sys.exit, an uncaught exception, Ctrl-C)
# has its open connections closed at interpreter exit, as close() would: what they queued is
# written and the broker's answer to the goodbye read, so every publish that returned was
# handled. All of them together get this long: ample for a live broker to take
# MAX_QUEUED_LINES of queued work, while a broker that is gone or reads nothing holds the
# program's exit no longer.
EXIT_CLOSE_SECONDS = 10.0

# The connections opened by this process and not yet closed, for the close at exit. A child
# made by os.fork starts with none: the parent's sockets are the parent's to close.
_open_connections = weakref.WeakSet()


_ASYNCHRONOUS_SIGNALS = {getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name)}


# -- what consumers receive ----------------------------------------------------------------

class BasicProperties:
    """Message properties, named as in AMQP and pika; unset ones read as None."""

    __slots__ = ("_values",)

    def __init__(self, **properties):
        unknown = set(properties) - set(PROPERTY_NAMES)
        if unknown:
            raise TypeError(f"unknown properties: {', '.join(sorted(unknown))}")
        self._values = {name: value for name, value in properties.items() if value is not None}

    @classmethod
    def _from_wire(cls, values):
        properties = cls.__new__(cls)
        object.__setattr__(properties, "_values", values)     # past __setattr__: once a delivery
        return properties

    def __getattr__(self, name):
        if name in PROPERTY_NAMES:
            return self._values.get(name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name == "_values":
            object.__setattr__(self, name, value)
        elif name in PROPERTY_NAMES:
            if value is None:
                self._values.pop(name, None)
            else:
                self._values[name] = value
        else:
            raise AttributeError(name)

    def __eq__(self, other):
        return isinstance(other, BasicProperties) and self._values == other._values

    def __repr__(self):
        return f"BasicProperties({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


class Delivery:
    """The method part of a delivered message (pika's `method` argument)."""

    __slots__ = ("consumer_tag", "delivery_tag", "redelivered", "exchange", "routing_key",
                 "message_count")

    def __init__(self, event):
        self.consumer_tag = event.get("consumer_tag")
        self.delivery_tag = event.get("delivery_tag")
        self.redelivered = event.get("redelivered", False)
        self.exchange = event.get("exchange", "")
        self.routing_key = event.get("routing_key", "")
        self.message_count = event.get("message_count")

    def __repr__(self):
        return (f"<Delivery tag={self.delivery_tag} exchange={self.exchange!r} "
                f"routing_key={self.routing_key!r} redelivered={self.redelivered}>")


class QueueDeclareOk:
    """queue_declare's answer. `.method` returns itself, so pika's
    `result.method.queue` works unchanged."""

    __slots__ = ("queue", "message_count", "consumer_count")

    def __init__(self, reply):
        self.queue = reply["queue"]
        self.message_count = reply["message_count"]
        self.consumer_count = reply["consumer_count"]

    @property
    def method(self):
        return self


def _body_of(event):
    body = event.get("body", "")
    if type(body) is bytes:             # as the AMQP wire receives it
        return body
    if event.get("body_encoding") == "base64":
        return base64.b64decode(body)
    return body.encode()


def _properties_of(event):
    values = event.get("properties")
    return BasicProperties._from_wire(values if values is not None else {})


# -- the connection ------------------------------------------------------------------------

class Connection:
    """A connection to a GreenMQ broker, or to any AMQP 0-9-1 broker given an `amqp://`
    or `amqps://` URL (user, password, host, port and virtual host from the URL, `ssl` a
    default context for amqps). A host name without a port connects to $GREENMQ_URL if
    set, else to the JSON-lines port: $GREENMQ_PORT, else 5680. With `heartbeat`
    (seconds), each side sends a heartbeat when it has been silent for half of it, and the
    broker is given up (ConnectionClosed) after two of silence. With `ssl` (an
    ssl.SSLContext) it speaks TLS to the broker's --tls-port (or amqps port).

    `host` may be a list of AMQP URLs (the nodes of a cluster, say): the connection opens
    to the first that answers and, when it is lost, fails over to the next (see
    `_fail_over`): at least once, as confirms allow."""

    def __init__(self, host="localhost", port=None, username="guest", password="guest",
                 virtual_host="/", connect_timeout=10.0, client_properties=None, ssl=None, heartbeat=0,
                 blocked_connection_timeout=None):
        hosts = list(host) if isinstance(host, (list, tuple)) else [host]
        self._brokers = brokers(hosts, port, username, password, virtual_host, ssl)
        self._connect_timeout = connect_timeout
        self._hello = {"protocol": PROTOCOL_VERSION, "heartbeat": heartbeat,
                       "client": client_properties or {"product": "greenmq-connection"}}
        self._send_lock = threading.Lock()
        self._next_id = 1
        self._next_channel = 2
        self._channels = {}
        self.blocked_connection_timeout = blocked_connection_timeout
        self._default_queue_declared = False
        self._declarations = Declarations()     # what a failover declares again
        self._failing_over = False
        self._closing = False           # closed by the program, or given up: no failover
        self._generation = 0            # connections opened so far: a request sent on an
                                        # earlier one is sent again after a failover
        for index in range(len(self._brokers)):
            try:
                self._open(index)
                break
            except (OSError, GreenMQError):
                if index == len(self._brokers) - 1:
                    raise
        _open_connections.add(self)

    def _open(self, index):
        """Connect to broker `index` of the list, shake hands and open channel 1."""
        broker = self._brokers[index]
        sock = socket.create_connection((broker.host, broker.port), timeout=self._connect_timeout)
        self._sock = sock
        self._readable = selectors.DefaultSelector()
        self._broker_index = index
        self.host, self.port = broker.host, broker.port
        self._wire = broker.wire(self)
        self._queued = collections.deque()
        self._wakeup = threading.Event()
        self._replies = {}
        self._heartbeat = 0
        self._closed = None            # the ConnectionClosed to raise, once closed
        # While the broker does not read this connection (its memory budget is exceeded), the
        # reason it gave; publishes wait, up to blocked_connection_timeout seconds (None: no
        # limit). A broker failed over to has blocked nothing yet.
        self.blocked = None
        self._blocked_since = None
        self._generation += 1
        try:
            if broker.ssl is not None:
                self._sock = broker.ssl.wrap_socket(self._sock, server_hostname=broker.host)
            self._sock.settimeout(None)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._readable.register(self._sock, selectors.EVENT_READ)
            # TLS: bytes already decrypted wait in the SSL object, where select() cannot see them.
            self._decrypted_waiting = getattr(self._sock, "pending", lambda: 0)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._last_received = self._last_sent = time.monotonic()
            self.server_properties = self._call(None, "hello", user=broker.username, password=broker.password,
                                                vhost=broker.virtual_host, **self._hello)
            self._heartbeat = self.server_properties.get("heartbeat", 0)
            self.max_message_bytes = self.server_properties.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
            self._wire.opened(self.server_properties)
            self._writer = threading.Thread(target=self._write_loop, args=(self._wakeup,),
                                            name="greenmq-writer", daemon=True)
            self._writer.start()
            if 1 not in self._channels:
                self._channels[1] = Channel(self, 1)
            self._wire.open_first_channel()
        except BaseException:
            self._shutdown()
            raise

    # -- the pika-like API --

    def channel(self, channel_number=None):
        """A new channel (its own delivery tags, prefetch and confirm mode)."""
        number = channel_number or self._next_channel
        self._next_channel = max(self._next_channel, number + 1)
        self._call(number, "channel.open")
        channel = self._channels[number] = Channel(self, number)
        return channel

    @property
    def default_channel(self):
        """Channel 1, open from the start; the original API's calls use it."""
        return self._channels[1]

    @property
    def is_open(self):
        return self._closed is None

    def process_data_events(self, time_limit=0):
        """Read what has arrived (waiting up to `time_limit` seconds, None for as long as
        it takes for something to arrive) and run the consumers' callbacks."""
        self._check_open()
        if not self._dispatch_pending():
            self._read(time_limit)
            self._dispatch_pending()

    def sleep(self, duration):
        """Wait `duration` seconds while still serving consumers."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.process_data_events(left)

    # -- listings, as `rabbitmqctl list_*` shows them (lists of dicts) --

    def list_exchanges(self):
        return self._call(None, "list_exchanges")["items"]

    def list_queues(self):
        return self._call(None, "list_queues")["items"]

    def list_bindings(self):
        return self._call(None, "list_bindings")["items"]

    def list_consumers(self):
        return self._call(None, "list_consumers")["items"]

    def list_connections(self):
        return self._call(None, "list_connections")["items"]

    # -- administration (an administrator's account) --

    def call(self, op, **fields):
        """Send any request of PROTOCOL.md on the connection and return the broker's answer
        (a dict); a refusal raises BrokerError with its code. greenmqctl speaks through this."""
        return self._call(None, op, **fields)

    def add_vhost(self, name):
        self._call(None, "vhost.add", vhost=name)

    def delete_vhost(self, name):
        """Delete a virtual host with everything in it; its connections are closed (320)."""
        self._call(None, "vhost.delete", vhost=name)

    def close(self):
        """Say goodbye (the answer means every request before it was handled) and hang up.
        A connection already broken (the broker gone, or a Ctrl-C that cut a read or a
        write short) is just hung up."""
        self._close(None)

    def _close(self, deadline):
        """close(), giving up at `deadline` (time.monotonic(); None: no limit)."""
        self._closing = True
        _open_connections.discard(self)
        if self._closed is not None:
            return
        try:
            self._say_goodbye(deadline)
        except (GreenMQError, ValueError, OSError):
            pass
        self._shutdown()

    def _say_goodbye(self, deadline):
        """Send `close` after everything queued and wait for its answer: the broker has then
        handled every request before it."""
        if deadline is not None:
            # The writer thread may be inside a sendall that no timeout bounds; once it is
            # out, this socket's sends (this one's too) give up at the deadline.
            if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return
            try:
                self._sock.settimeout(max(0.0, deadline - time.monotonic()))
            finally:
                self._send_lock.release()
        request_id = self._next_id
        self._next_id += 1
        self._queued.append(self._wire.request({"op": "close", "id": request_id}))
        self._flush()
        while request_id not in self._replies:
            if deadline is None:
                self._read_from_broker(None)
            elif (left := deadline - time.monotonic()) > 0:
                self._read_from_broker(left)
            else:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the original API (seed 000) --

    def create_exchange(self, name, type="direct", durable=False, auto_delete=False):
        """Declare an exchange; `type` is direct, fanout, topic or headers, in any case."""
        self.default_channel.exchange_declare(name, type.lower(), durable=durable, auto_delete=auto_delete)

    def create_queue(self, name="", exchange_name=None, routing_key=None, durable=False,
                     exclusive=False, auto_delete=False, exchane_name=None):
        """Declare a queue and, given an exchange, bind it with `routing_key` (default: the
        queue's name). Returns the queue's name. `exchane_name` is the original API's
        spelling of `exchange_name`."""
        exchange_name = exchange_name if exchange_name is not None else exchane_name
        queue = self.default_channel.queue_declare(name, durable=durable, exclusive=exclusive,
                                                   auto_delete=auto_delete).queue
        if exchange_name:
            self.default_channel.queue_bind(queue, exchange_name, routing_key if routing_key is not None else queue)
        return queue

    def publish(self, msg, name=None, exchange="", routing_key=None, properties=None):
        """Send `msg` (str or bytes) through `exchange` to the queue bound as `name`;
        with neither, to the default queue."""
        if routing_key is None:
            routing_key = name if name is not None else DEFAULT_QUEUE
        if not exchange and routing_key == DEFAULT_QUEUE:
            self._declare_default_queue()
        self.default_channel.basic_publish(exchange, routing_key, msg, properties)

    def subscribe(self, callback, name=None, auto_ack=True):
        """Call `callback(message)` for every message of queue `name` (default: the default
        queue), forever. Text arrives as str, other bodies as bytes."""
        if name is None:
            name = DEFAULT_QUEUE
            self._declare_default_queue()

        def on_message(channel, method, properties, body):
            try:
                message = body.decode()
            except UnicodeDecodeError:
                message = body
            callback(message)
            if not auto_ack:
                channel.basic_ack(method.delivery_tag)

        self.default_channel.basic_consume(name, on_message, auto_ack=auto_ack)
        self.default_channel.start_consuming()

    def _declare_default_queue(self):
        if not self._default_queue_declared:
            self.default_channel.queue_declare(DEFAULT_QUEUE)
            self._default_queue_declared = True

    # -- the wire --

    def _queue_line(self, request):
        """Send a request that gets no answer: batched by the writer thread."""
        self._check_open()
        self._queue(self._wire.request(request))

    def _queue(self, data):
        # The broker reads nothing from a blocked connection until it says `unblocked`: wait
        # for that (_read gives up after blocked_connection_timeout) rather than queue more.
        while self.blocked is not None:
            self._read(None)
        self._queue_answer(data)

    def _queue_answer(self, data):
        """Queue what the wire owes the broker while reading (AMQP's close-ok, cancel-ok,
        flow-ok, a refused channel reopened) without waiting out a block: that wait would
        read again inside this read, and the broker reads the few bytes once it reads again."""
        self._queued.append(data)
        if len(self._queued) > MAX_QUEUED_LINES:
            self._flush()
        elif not self._wakeup.is_set():
            self._wakeup.set()

    def _publish(self, channel, exchange, routing_key, body, properties, mandatory):
        self._check_open()
        try:
            self._queue(self._wire.publish(channel, exchange, routing_key, body, properties, mandatory))
        except ConnectionClosed:
            self._fail_over_or_raise()
            self._queue(self._wire.publish(channel, exchange, routing_key, body, properties, mandatory))

    def _call(self, channel, op, **fields):
        """Send a request (on `channel`, None for the connection) and wait for its answer;
        raises the broker's refusal."""
        fields["op"] = op
        if channel is not None and channel != 1:
            fields["channel"] = channel
        while True:
            self._check_open()
            generation = self._generation
            request_id = fields["id"] = self._next_id
            self._next_id += 1
            self._queued.append(self._wire.request(fields))
            try:
                self._flush()
            except ConnectionClosed:
                self._fail_over_or_raise()
                continue
            while request_id not in self._replies and generation == self._generation:
                self._read(None)
            if generation == self._generation:
                break
        reply = self._replies.pop(request_id)
        if not reply.get("ok"):
            raise broker_error(reply)
        if len(self._brokers) > 1:
            self._declarations.remember(channel or 1, op, fields, reply)
        return reply

    def _flush(self):
        with self._send_lock:
            queued = self._queued
            count = len(queued)
            if not count:
                return
            data = self._wire.join([queued.popleft() for _ in range(count)])
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._lost(exc)
            self._last_sent = time.monotonic()

    def _write_loop(self, wakeup):
        # The kernel may deliver a process signal to any thread that does not block it;
        # taken here, a Ctrl-C would never interrupt the main thread's blocking recv.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS_SIGNALS)
        heartbeat = self._heartbeat
        while True:
            woken = wakeup.wait(heartbeat / 2 if heartbeat else None)
            if self._closed is not None or wakeup is not self._wakeup:   # or failed over
                return
            if woken:
                wakeup.clear()
            elif time.monotonic() - self._last_sent >= heartbeat / 2:
                self._queued.append(self._wire.HEARTBEAT)
            try:
                self._flush()
            except ConnectionClosed:
                return

    def _read(self, timeout):
        """Wait up to `timeout` (None: no limit) for data and file what arrives; a lost
        connection fails over to the next broker of the list, if there is one."""
        try:
            self._read_from_broker(timeout)
        except ConnectionClosed:
            self._fail_over_or_raise()

    def _read_from_broker(self, timeout):
        self._flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # A wait with no limit of its own (a publish, a confirm, a call) does not outlast
            # the broker's block by more than blocked_connection_timeout.
            if timeout is None and self.blocked is not None and self.blocked_connection_timeout is not None and (
                    time.monotonic() - self._blocked_since > self.blocked_connection_timeout):
                raise ConnectionBlockedTimeout(
                    f"the broker has blocked this connection ({self.blocked}) for more than "
                    f"{self.blocked_connection_timeout:g} s; what was sent is kept, nothing more is sent")
            wait = SIGNAL_CHECK_SECONDS if deadline is None else min(
                SIGNAL_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))
            # Waiting is done here, not by a socket timeout: that would also bound the
            # writer thread's sendall, and a large message (or a broker busy for a moment)
            # would then cost the whole connection.
            try:
                if self._decrypted_waiting() or self._readable.select(wait):
                    data = self._sock.recv(RECV_BYTES)
                    break
            except (OSError, ValueError) as exc:      # ValueError: closed by the writer thread
                self._lost(exc)
            now = time.monotonic()
            if self._heartbeat and now - self._last_received > 2 * self._heartbeat:
                self._lost(f"missed heartbeats from the broker, timeout: {self._heartbeat}s")
            if deadline is not None and now >= deadline:
                return
        if not data:
            self._lost(None)
        self._data_received(data)

    def _data_received(self, data):
        """File the replies and events that `data` completes."""
        self._last_received = time.monotonic()
        channels = self._channels
        for event in self._wire.received(data):
            kind = event.get("event")
            if kind is None:
                if "id" in event:
                    self._replies[event["id"]] = event
                else:
                    channel = channels.get(event.get("channel", 1))
                    if channel is not None:
                        channel._errors.append(broker_error(event))
            elif kind == "deliver":
                channel = channels.get(event["channel"])
                if channel is not None:
                    channel._deliveries.append(event)
            elif kind == "close":
                self._closed = connection_closed(event.get("code"), event.get("text", ""))
            elif kind == "blocked":
                self.blocked = event.get("reason", "")
                self._blocked_since = time.monotonic()
            elif kind == "unblocked":
                self.blocked = None
            else:
                channel = channels.get(event.get("channel"))
                if channel is not None:
                    channel._event(kind, event)
        if self._closed is not None:
            self._shutdown()
            raise self._closed

    def _dispatch_pending(self):
        dispatched = False
        for channel in list(self._channels.values()):
            dispatched = channel._dispatch() or dispatched
        return dispatched

    def _check_open(self):
        if self._closed is not None:
            self._fail_over_or_raise()

    # -- failover --

    def _fail_over_or_raise(self):
        closed = self._closed
        if (len(self._brokers) == 1 or self._failing_over or self._closing
                or not fails_over(closed)):
            raise closed
        self._fail_over()

    def _fail_over(self):
        """The broker is gone: connect to the next of the list (waiting longer after each
        attempt that fails), declare again what was declared, reopen the channels with
        their prefetch, confirm mode and consumers, and publish again the messages that
        awaited a confirm, so a message may arrive twice (at least once)."""
        lost, lost_wire = self._closed, self._wire
        self._failing_over = True
        backoff = Backoff()
        index = self._broker_index
        try:
            while True:
                index = (index + 1) % len(self._brokers)
                try:
                    self._open(index)
                    self._wire.carry_delivery_tags(lost_wire)
                    self._declare_again()
                    return
                except (OSError, GreenMQError) as exc:
                    wait = backoff.next_wait()
                    if wait is None:
                        self._closing = True
                        self._closed = ConnectionClosed(
                            lost.code, f"{lost.text}; no broker of the list answered since: {exc}")
                        raise self._closed from exc
                    time.sleep(wait)
        finally:
            self._failing_over = False

    def _declare_again(self):
        """Reopen the channels, declare again what was declared (kept whole if this broker
        too is lost half-way) and publish again what awaited a confirm."""
        for number in sorted(self._channels):
            if number != 1:
                self._call(number, "channel.open")
        self._declarations.declare_again(self._call)
        for channel in self._channels.values():
            channel._publish_again()

    def _lost(self, exc):
        if self._closed is None:
            self._closed = ConnectionClosed(None, f"connection lost: {exc or 'closed by the broker'}")
        self._shutdown()
        raise self._closed

    def _shutdown(self):
        if self._closed is None:
            self._closed = ConnectionClosed(None, "connection closed")
        self._wakeup.set()
        try:
            self._readable.close()
            self._sock.close()
        except OSError:
            pass


def _close_at_exit():
    deadline = time.monotonic() + EXIT_CLOSE_SECONDS
    for connection in list(_open_connections):
        try:
            connection._close(deadline)
        except Exception:       # a stream that a Ctrl-C cut mid-frame reads as garbage: hang up
            connection._shutdown()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_open_connections.clear)


class Channel:
    """A channel, with pika BlockingChannel's method names and arguments."""

    def __init__(self, connection, number):
        self.connection = connection
        self.channel_number = number
        self._deliveries = collections.deque()
        self._errors = []
        self._consumers = {}            # consumer_tag -> callback
        self._returned = []
        self._on_return = None
        self._confirming = False
        self._confirm_window = 1        # publishes that may await their confirm at once
        self._publish_seq = 0
        self._unconfirmed = {}          # publish seq -> the message awaiting its confirm, in order
        self._nacked = []               # publish seqs the broker nacked, not yet reported
        self._consuming = False

    def __repr__(self):
        return f"<Channel {self.channel_number} of {self.connection.host}:{self.connection.port}>"

    @property
    def is_open(self):
        return self.connection.is_open and self.channel_number in self.connection._channels

    # -- declarations --

    def exchange_declare(self, exchange, exchange_type="direct", passive=False, durable=False,
                         auto_delete=False, internal=False, arguments=None):
        self._call("exchange.declare", exchange=exchange, type=exchange_type, passive=passive,
                   durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)

    def exchange_delete(self, exchange, if_unused=False):
        self._call("exchange.delete", exchange=exchange, if_unused=if_unused)

    def exchange_bind(self, destination, source, routing_key="", arguments=None):
        self._call("exchange.bind", destination=destination, source=source, routing_key=routing_key,
                   arguments=arguments)

    def exchange_unbind(self, destination, source, routing_key="", arguments=None):
        self._call("exchange.unbind", destination=destination, source=source, routing_key=routing_key,
                   arguments=arguments)

    def queue_declare(self, queue="", passive=False, durable=False, exclusive=False,
                      auto_delete=False, arguments=None):
        return QueueDeclareOk(self._call(
            "queue.declare", queue=queue, passive=passive, durable=durable, exclusive=exclusive,
            auto_delete=auto_delete, arguments=arguments))

    def queue_bind(self, queue, exchange, routing_key=None, arguments=None):
        self._call("queue.bind", queue=queue, exchange=exchange,
                   routing_key=queue if routing_key is None else routing_key, arguments=arguments)

    def queue_unbind(self, queue, exchange, routing_key=None, arguments=None):
        self._call("queue.unbind", queue=queue, exchange=exchange,
                   routing_key=queue if routing_key is None else routing_key, arguments=arguments)

    def queue_purge(self, queue):
        return self._call("queue.purge", queue=queue)["message_count"]

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        return self._call("queue.delete", queue=queue, if_unused=if_unused, if_empty=if_empty)["message_count"]

    # -- publishing --

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        """Publish without waiting, except in confirm mode, where this returns once the
        broker has confirmed the message (NackError or UnroutableError if it did not)."""
        self._raise_errors()
        if properties is not None and isinstance(properties, BasicProperties):
            properties = properties._values
        connection = self.connection
        if not self._confirming:
            connection._publish(self.channel_number, exchange, routing_key, body, properties, mandatory)
            return
        if self._confirm_window == 1:
            self._returned.clear()
        # Room in the window first: a publish that gives up waiting (a block past
        # blocked_connection_timeout) has then sent nothing, wherever it waited.
        while len(self._unconfirmed) >= self._confirm_window:
            self._raise_errors()
            connection._read(None)
        connection._publish(self.channel_number, exchange, routing_key, body, properties, mandatory)
        self._publish_seq += 1          # only once sent: a refused body takes no number
        self._unconfirmed[self._publish_seq] = (exchange, routing_key, body, properties, mandatory)
        if self._confirm_window == 1:
            self.wait_for_confirms()

    def confirm_delivery(self, window=1):
        """Publisher confirms from now on. With `window` 1, basic_publish returns once the
        broker has confirmed the message (raising NackError or UnroutableError if it did
        not); with a larger window it returns at once while fewer than `window` messages
        await their confirms, and `wait_for_confirms` reports them. A persistent message
        sent to a durable queue is confirmed once it is on the broker's disk, so a window
        lets many share one disk write."""
        if not isinstance(window, int) or window < 1:
            raise ValueError("window must be a positive integer")
        self._call("confirm.select")
        self._confirming = True
        self._confirm_window = window

    def wait_for_confirms(self, timeout=None):
        """Block until every message published so far is confirmed. Raises NackError if the
        broker nacked any since the last call, UnroutableError if a mandatory one came
        back, and TimeoutError if `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._unconfirmed:
            self._raise_errors()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(self._unconfirmed)} messages still await their confirms")
            self.connection._read(remaining)
        self._raise_errors()
        if self._nacked:
            nacked, self._nacked = self._nacked, []
            raise NackError(f"the broker nacked {len(nacked)} message(s): publish number(s) "
                            f"{', '.join(map(str, nacked[:10]))}{', ...' if len(nacked) > 10 else ''}")
        if self._returned:
            returned = self._returned.pop()
            self._returned.clear()
            raise UnroutableError(f"message returned: {returned['reply_code']} {returned['reply_text']}")

    def add_on_return_callback(self, callback):
        """`callback(channel, method, properties, body)` for mandatory messages returned
        outside confirm mode; method has reply_code, reply_text, exchange, routing_key."""
        self._on_return = callback

    # -- consuming --

    def basic_qos(self, prefetch_size=0, prefetch_count=0, global_qos=False):
        self._call("qos", prefetch_count=prefetch_count, **{"global": global_qos})

    def basic_consume(self, queue, on_message_callback, auto_ack=False, exclusive=False,
                      consumer_tag=None, arguments=None):
        """Subscribe: `on_message_callback(channel, method, properties, body)` runs for each
        message inside start_consuming / process_data_events. Returns the consumer tag."""
        reply = self._call("consume", queue=queue, no_ack=auto_ack, exclusive=exclusive,
                           consumer_tag=consumer_tag or "", arguments=arguments)
        self._consumers[reply["consumer_tag"]] = on_message_callback
        return reply["consumer_tag"]

    def basic_cancel(self, consumer_tag, requeue=True):
        """Stop a consumer; its unacknowledged messages go back to the queue unless
        `requeue` is False (then they stay ackable on this channel, as in AMQP)."""
        self._consumers.pop(consumer_tag, None)
        self._call("cancel", consumer_tag=consumer_tag, requeue=requeue)
        self._deliveries = collections.deque(
            d for d in self._deliveries if d.get("consumer_tag") != consumer_tag)

    def start_consuming(self):
        """Run consumer callbacks until stop_consuming() or no consumers are left."""
        self._consuming = True
        while self._consuming and self._consumers:
            self.connection.process_data_events(None)

    def stop_consuming(self):
        self._consuming = False

    def consume(self, queue, auto_ack=False, exclusive=False, arguments=None, inactivity_timeout=None):
        """A generator of (method, properties, body); yields (None, None, None) after
        `inactivity_timeout` seconds without a message. Cancels the consumer when closed."""
        inbox = collections.deque()
        tag = self.basic_consume(queue, lambda ch, method, props, body: inbox.append((method, props, body)),
                                 auto_ack=auto_ack, exclusive=exclusive, arguments=arguments)
        try:
            while tag in self._consumers:
                if not inbox:
                    self.connection.process_data_events(inactivity_timeout)
                if inbox:
                    yield inbox.popleft()
                elif inactivity_timeout is not None:
                    yield None, None, None
        finally:
            if self.is_open and tag in self._consumers:
                self.basic_cancel(tag)

    def basic_get(self, queue, auto_ack=False):
        """One message, or (None, None, None) if the queue is empty."""
        reply = self._call("get", queue=queue, no_ack=auto_ack)
        if reply["empty"]:
            return None, None, None
        return Delivery(reply), _properties_of(reply), _body_of(reply)

    def basic_ack(self, delivery_tag=0, multiple=False):
        self._settle({"op": "ack", "delivery_tag": delivery_tag, "multiple": multiple})

    def basic_nack(self, delivery_tag=0, multiple=False, requeue=True):
        self._settle({"op": "nack", "delivery_tag": delivery_tag, "multiple": multiple, "requeue": requeue})

    def basic_reject(self, delivery_tag, requeue=True):
        self._settle({"op": "reject", "delivery_tag": delivery_tag, "requeue": requeue})

    def basic_recover(self, requeue=True):
        self._call("recover")

    def close(self):
        if self.channel_number == 1:
            raise GreenMQError("channel 1 stays open for the connection's life; close the connection")
        if self.is_open:
            self.connection._call(self.channel_number, "channel.close")
            del self.connection._channels[self.channel_number]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.channel_number != 1:
            self.close()

    # -- the wire --

    def _call(self, op, **fields):
        self._raise_errors()
        return self.connection._call(self.channel_number, op, **fields)

    def _settle(self, request):
        self._raise_errors()
        if self.channel_number != 1:
            request["channel"] = self.channel_number
        self.connection._queue_line(request)

    def _raise_errors(self):
        if self._errors:
            raise self._errors.pop(0)

    def _event(self, kind, event):
        if kind == "ack" or kind == "nack":
            tag = event["delivery_tag"]
            unconfirmed = self._unconfirmed
            if event.get("multiple"):
                settled = list(itertools.takewhile(tag.__ge__, unconfirmed))
            else:
                settled = [tag] if tag in unconfirmed else []
            for seq in settled:
                del unconfirmed[seq]
            if kind == "nack":
                self._nacked += settled
        elif kind == "return":
            if self._confirming:
                self._returned.append(event)
            else:
                self._deliveries.append(event)
        elif kind == "cancel":
            self._consumers.pop(event.get("consumer_tag"), None)
        elif kind == "channel_reopened":
            # The broker closed the channel: its consumers and deliveries ended with it.
            self._consumers.clear()
            self._deliveries = collections.deque(d for d in self._deliveries if d.get("event") == "return")

    def _publish_again(self):
        """After a failover: the messages that awaited a confirm, again, in order."""
        unconfirmed = {}                # kept whole until all are sent, for the next broker
        for seq, message in enumerate(self._unconfirmed.values(), 1):
            self.connection._publish(self.channel_number, *message)
            unconfirmed[seq] = message
        self._unconfirmed, self._publish_seq = unconfirmed, len(unconfirmed)

    def _dispatch(self):
        """Run callbacks for deliveries received so far; True if there were any."""
        deliveries = self._deliveries
        if not deliveries:
            self._raise_errors()
            return False
        consumers = self._consumers
        while deliveries:
            event = deliveries.popleft()
            if event.get("event") == "return":
                if self._on_return is not None:
                    self._on_return(self, _Returned(event), _properties_of(event), _body_of(event))
                continue
            callback = consumers.get(event["consumer_tag"])
            if callback is not None:
                callback(self, Delivery(event), _properties_of(event), _body_of(event))
        self._raise_errors()
        return True


class _Returned:
    __slots__ = ("reply_code", "reply_text", "exchange", "routing_key")

    def __init__(self, event):
        self.reply_code = event.get("reply_code")
        self.reply_text = event.get("reply_text")
        self.exchange = event.get("exchange")
        self.routing_key = event.get("routing_key")
