"""GreenMQ's blocking client, over the JSON-lines protocol (PROTOCOL.md) or AMQP 0-9-1.

Plain sockets and one helper thread, no gevent and no monkey-patching: use it from scripts
and ordinary threads (one connection per thread, like pika's BlockingConnection).

    conn = connection.Connection('localhost')
    conn = connection.Connection('amqp://guest:guest@localhost:5672/%2f')   # or RabbitMQ

A host name speaks GreenMQ's JSON lines; an `amqp://` or `amqps://` URL (or, for a host
name given without a port, the URL in $GREENMQ_URL) speaks AMQP 0-9-1 to GreenMQ's AMQP
port or to any AMQP broker, so programs move to a RabbitMQ cluster by changing a URL. Both
APIs, the errors and their reply codes are the same over either wire: the Channel code is
shared and speaks JSON-lines requests; `_AmqpWire` translates them into AMQP methods and
AMQP frames back into the same events. It is written on pamqp (GreenMQ's AMQP codec
already) rather than around pika: pika would bring a second connection, thread and
callback model under this one, and its own exceptions to translate back.
    channel = conn.channel()
    channel.queue_declare('hello')
    channel.basic_publish('', 'hello', b'Hello World!')

Publishes, acks and other requests that need no answer are queued and written in batches
by a helper thread (or before the client waits for anything), so publishing never waits
for the broker; calls that need an answer wait for it. Callbacks of consumers run only
inside `start_consuming`, `process_data_events` or `consume`, in the calling thread.
"""

import base64
import collections
import datetime
import itertools
import json
import os
import selectors
import signal
import socket
import ssl as ssl_module
import struct
import threading
import time
import urllib.parse

from pamqp import body as amqp_body
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp import heartbeat as amqp_heartbeat

DEFAULT_PORT = 5680
PORT_ENVIRONMENT_VARIABLE = "GREENMQ_PORT"
# An amqp:// or amqps:// URL that a host name given without a port gives way to, so the
# examples' `Connection('localhost')` runs unchanged against any AMQP broker.
URL_ENVIRONMENT_VARIABLE = "GREENMQ_URL"
AMQP_PORTS = {"amqp": 5672, "amqps": 5671}

# Failover (given a list of URLs): the waits between attempts to reach the next broker,
# doubling from the first to the last, so a cluster restarting is not hammered; a lost
# connection is given up once no broker answered for this long. A connection closed with
# 320 (CONNECTION_FORCED: the broker is shutting down) fails over too; other closes are
# the program's error and are raised.
FAILOVER_FIRST_WAIT = 0.1
FAILOVER_MAX_WAIT = 5.0
FAILOVER_GIVE_UP_SECONDS = 60.0
FAILOVER_CLOSE_CODE = 320
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

# What a broker that does not say otherwise in its `hello` reply accepts: RabbitMQ's default
# max_message_size, and the line that carries such a body in base64.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 4 * -(-DEFAULT_MAX_MESSAGE_BYTES // 3) + 1024 * 1024


_ASYNCHRONOUS_SIGNALS = {getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name)}

_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode
_quote = json.encoder.encode_basestring_ascii

PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
    "user_id", "app_id", "cluster_id",
)


# -- errors --------------------------------------------------------------------------------

class GreenMQError(Exception):
    """Base of everything this client raises."""


class BrokerError(GreenMQError):
    """The broker refused a request: `code` is its AMQP reply code, `text` its reason."""

    def __init__(self, code, text, op=None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.op = op


class AccessRefused(BrokerError):
    pass


class NotFound(BrokerError):
    pass


class ResourceLocked(BrokerError):
    pass


class PreconditionFailed(BrokerError):
    pass


class ConnectionClosed(BrokerError):
    """The connection is gone: closed by the broker (with its code and reason) or lost."""


class NackError(GreenMQError):
    """Confirm mode: the broker did not take responsibility for the message."""


class ConnectionBlockedTimeout(GreenMQError):
    """The broker kept this connection blocked (low on memory) for longer than the
    connection's `blocked_connection_timeout`. A basic_publish that raises it sent nothing,
    unless it was sent and then waited for its own confirm (confirm window 1)."""


class UnroutableError(GreenMQError):
    """Confirm mode: a mandatory message was returned because no queue was bound for it."""


_ERRORS_BY_CODE = {403: AccessRefused, 404: NotFound, 405: ResourceLocked, 406: PreconditionFailed}


def _broker_error(reply):
    return _ERRORS_BY_CODE.get(reply.get("code"), BrokerError)(
        reply.get("code"), reply.get("text", ""), reply.get("op"))


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
        if not hosts:
            raise ValueError("no broker to connect to")
        self._brokers = [_Broker(entry, port, username, password, virtual_host, ssl)
                         for entry in hosts]
        if len(self._brokers) > 1 and any(broker.wire is not _AmqpWire for broker in self._brokers):
            raise ValueError("failover takes amqp:// or amqps:// URLs only")
        self._connect_timeout = connect_timeout
        self._hello = {"protocol": PROTOCOL_VERSION, "heartbeat": heartbeat,
                       "client": client_properties or {"product": "greenmq-connection"}}
        self._send_lock = threading.Lock()
        self._next_id = 1
        self._next_channel = 2
        self._channels = {}
        self.blocked_connection_timeout = blocked_connection_timeout
        self._default_queue_declared = False
        self._declared = {}             # failover: what to declare again, in order
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
        self._closing = True
        if self._closed is not None:
            return
        try:
            self._call(None, "close")
        except (GreenMQError, ValueError, OSError):
            pass
        self._shutdown()

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
            raise _broker_error(reply)
        if len(self._brokers) > 1:
            self._remember(channel or 1, op, fields, reply)
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
                        channel._errors.append(_broker_error(event))
            elif kind == "deliver":
                channel = channels.get(event["channel"])
                if channel is not None:
                    channel._deliveries.append(event)
            elif kind == "close":
                self._closed = ConnectionClosed(event.get("code"), event.get("text", ""))
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
                or closed.code not in (None, FAILOVER_CLOSE_CODE)):
            raise closed
        self._fail_over()

    def _fail_over(self):
        """The broker is gone: connect to the next of the list (waiting longer after each
        attempt that fails), declare again what was declared, reopen the channels with
        their prefetch, confirm mode and consumers, and publish again the messages that
        awaited a confirm, so a message may arrive twice (at least once)."""
        lost, lost_wire = self._closed, self._wire
        self._failing_over = True
        wait, deadline = FAILOVER_FIRST_WAIT, time.monotonic() + FAILOVER_GIVE_UP_SECONDS
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
                    if time.monotonic() + wait > deadline:
                        self._closing = True
                        self._closed = ConnectionClosed(
                            lost.code, f"{lost.text}; no broker of the list answered since: {exc}")
                        raise self._closed from exc
                    time.sleep(wait)
                    wait = min(2 * wait, FAILOVER_MAX_WAIT)
        finally:
            self._failing_over = False

    def _remember(self, channel, op, fields, reply):
        """Keep what a failover declares again: exchanges, queues, bindings (on channel
        1), and each channel's prefetch, confirm mode and consumers."""
        declared = self._declared
        if fields.get("passive"):
            return
        if op == "exchange.declare":
            key, channel = ("exchange", fields["exchange"]), 1
        elif op == "queue.declare":
            key, channel = ("queue", reply["queue"]), 1
        elif op in ("queue.bind", "queue.unbind"):
            key, channel = ("binding", fields["queue"], fields["exchange"], fields["routing_key"],
                            repr(fields["arguments"])), 1
        elif op in ("qos", "confirm.select"):
            key = (op, channel)
        elif op == "consume":
            key = ("consumer", reply["consumer_tag"])
            fields["consumer_tag"] = reply["consumer_tag"]
        elif op == "exchange.delete":
            declared.pop(("exchange", fields["exchange"]), None)
            return
        elif op == "queue.delete":
            declared.pop(("queue", fields["queue"]), None)
            return
        elif op == "cancel":
            declared.pop(("consumer", fields["consumer_tag"]), None)
            return
        elif op == "channel.close":
            self._declared = {key: entry for key, entry in declared.items() if entry[0] != channel}
            return
        else:
            return
        if op == "queue.unbind":
            declared.pop(key, None)
        else:
            declared[key] = (channel, op, {name: value for name, value in fields.items()
                                           if name not in ("op", "id", "channel")})

    def _declare_again(self):
        """Replay what was declared; kept whole if this broker too is lost half-way."""
        declared, self._declared = self._declared, {}
        renamed = {}                    # server-named queues: the old name -> the new one
        try:
            for number in sorted(self._channels):
                if number != 1:
                    self._call(number, "channel.open")
            for key, (channel, op, fields) in declared.items():
                fields = dict(fields)
                if fields.get("queue") in renamed:
                    fields["queue"] = renamed[fields["queue"]]
                reply = self._call(channel, op, **fields)
                if op == "queue.declare" and not fields["queue"]:
                    renamed[key[1]] = reply["queue"]
        except BaseException:
            self._declared = declared
            raise
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


# -- the wires: JSON lines and AMQP 0-9-1 behind the same requests and events -------------

def _refuse_large_body(size, limit):
    """Refuse a body over the broker's maximum before sending it; the connection goes on."""
    if size > limit:
        raise PreconditionFailed(
            406, f"PRECONDITION_FAILED - message size {size} is larger than configured max size {limit}",
            "publish")


class _JsonLinesWire:
    """GreenMQ's own protocol (PROTOCOL.md): one request, reply or event a line of JSON."""

    # An empty line; either side gives the other up after two intervals of silence.
    HEARTBEAT = "\n"

    def __init__(self, connection):
        self._connection = connection
        self._received = b""           # the start of a line whose newline has not arrived
        self._measure_bodies_over = 0

    @staticmethod
    def join(lines):
        return "".join(lines).encode()

    @staticmethod
    def request(fields):
        return _encode(fields) + "\n"

    def opened(self, server_properties):
        max_line_bytes = server_properties.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES)
        # Bodies up to this long surely fit a line (escaped JSON text takes at most 12
        # bytes a character) and the maximum message size (4 bytes a character); longer
        # ones are measured before they are sent.
        self._measure_bodies_over = min(self._connection.max_message_bytes // 4, max_line_bytes // 16)

    def open_first_channel(self):
        """Channel 1 is open from `hello` on."""

    def publish(self, channel, exchange, routing_key, body, properties, mandatory):
        if type(body) is bytes and body.isascii():
            text = body.decode("ascii")
        else:
            text = body if type(body) is str else None
        if (text is not None and len(text) <= self._measure_bodies_over and type(exchange) is str
                and type(routing_key) is str and not properties and not mandatory and channel == 1):
            # The common publish, formatted directly: the line _encode makes of the request
            # below (tests/test_connection_unit.py holds them equal), at a quarter of the
            # cost (1 us against 4 us a publish here; the producer of bench/throughput.py).
            return (f'{{"op":"publish","exchange":{_quote(exchange)},"routing_key":{_quote(routing_key)},'
                    f'"body":{_quote(text)}}}\n')
        request = {"op": "publish", "exchange": exchange, "routing_key": routing_key}
        if isinstance(body, str):
            request["body"] = body
        else:
            body = bytes(body)
            try:
                request["body"] = body.decode()
            except UnicodeDecodeError:
                request["body"] = base64.b64encode(body).decode("ascii")
                request["body_encoding"] = "base64"
        if len(body) > self._measure_bodies_over:
            self._fit_large_body(request, body)
        if properties:
            request["properties"] = properties
        if mandatory:
            request["mandatory"] = True
        if channel != 1:
            request["channel"] = channel
        return _encode(request) + "\n"

    def _fit_large_body(self, request, body):
        """Refuse a body over the maximum, and send text as base64 where its JSON escapes
        would make it longer."""
        data = body.encode() if isinstance(body, str) else body
        _refuse_large_body(len(data), self._connection.max_message_bytes)
        if "body_encoding" not in request and len(_quote(request["body"])) > 4 * -(-len(data) // 3) + 2:
            request["body"] = base64.b64encode(data).decode("ascii")
            request["body_encoding"] = "base64"

    def received(self, data):
        """The replies and events of every whole line in `data`."""
        lines = data.split(b"\n")
        if self._received:
            # Only the new bytes were searched; the line grows in place (linear time).
            head = self._received
            if type(head) is bytes:
                head = bytearray(head)
            head += lines[0]
            lines[0] = head
        self._received = lines.pop()
        for line in lines:
            if line:                    # an empty line is a heartbeat
                yield _decode(line.decode())


# What this client offers when the broker tunes the connection: RabbitMQ's default frame
# size (a message body goes in frames of at most this), and its default channel_max.
AMQP_FRAME_MAX = 131072
AMQP_CHANNEL_MAX = 2047
_AMQP_FRAME_HEADER = struct.Struct(">BHI")      # type, channel, size; then the payload and 0xCE
_AMQP_FRAME_OVERHEAD = 8

# What the broker may tell this client (RabbitMQ's capability names).
_AMQP_CAPABILITIES = {"authentication_failure_close": True, "publisher_confirms": True,
                      "consumer_cancel_notify": True, "basic.nack": True, "connection.blocked": True}

# Each request of PROTOCOL.md that AMQP has, as its AMQP method.
_AMQP_REQUESTS = {
    "channel.open": lambda f: amqp.Channel.Open(),
    "channel.close": lambda f: amqp.Channel.Close(200, "Normal shutdown", 0, 0),
    "exchange.declare": lambda f: amqp.Exchange.Declare(
        exchange=f["exchange"], exchange_type=f["type"], passive=f["passive"], durable=f["durable"],
        auto_delete=f["auto_delete"], internal=f["internal"], arguments=f["arguments"]),
    "exchange.delete": lambda f: amqp.Exchange.Delete(exchange=f["exchange"], if_unused=f["if_unused"]),
    "queue.declare": lambda f: amqp.Queue.Declare(
        queue=f["queue"], passive=f["passive"], durable=f["durable"], exclusive=f["exclusive"],
        auto_delete=f["auto_delete"], arguments=f["arguments"]),
    "queue.bind": lambda f: amqp.Queue.Bind(
        queue=f["queue"], exchange=f["exchange"], routing_key=f["routing_key"], arguments=f["arguments"]),
    "queue.unbind": lambda f: amqp.Queue.Unbind(
        queue=f["queue"], exchange=f["exchange"], routing_key=f["routing_key"], arguments=f["arguments"]),
    "queue.purge": lambda f: amqp.Queue.Purge(queue=f["queue"]),
    "queue.delete": lambda f: amqp.Queue.Delete(queue=f["queue"], if_unused=f["if_unused"], if_empty=f["if_empty"]),
    "qos": lambda f: amqp.Basic.Qos(prefetch_count=f["prefetch_count"], global_=f["global"]),
    "consume": lambda f: amqp.Basic.Consume(
        queue=f["queue"], consumer_tag=f["consumer_tag"], no_ack=f["no_ack"], exclusive=f["exclusive"],
        arguments=f["arguments"]),
    "cancel": lambda f: amqp.Basic.Cancel(consumer_tag=f["consumer_tag"]),
    "get": lambda f: amqp.Basic.Get(queue=f["queue"], no_ack=f["no_ack"]),
    "recover": lambda f: amqp.Basic.Recover(requeue=True),
    "confirm.select": lambda f: amqp.Confirm.Select(),
    "ack": lambda f: amqp.Basic.Ack(delivery_tag=f["delivery_tag"], multiple=f["multiple"]),
    "nack": lambda f: amqp.Basic.Nack(delivery_tag=f["delivery_tag"], multiple=f["multiple"], requeue=f["requeue"]),
    "reject": lambda f: amqp.Basic.Reject(delivery_tag=f["delivery_tag"], requeue=f["requeue"]),
}

_AMQP_SETTLEMENTS = ("ack", "nack", "reject")

# Requests the broker's closing of a channel undoes, repeated when it is reopened.
_AMQP_CHANNEL_SETTINGS = ("confirm.select", "qos")


def _amqp_reply(method):
    """The fields of a JSON-lines reply that an AMQP answer carries."""
    name = method.name
    if name == "Queue.DeclareOk":
        return {"queue": method.queue, "message_count": method.message_count,
                "consumer_count": method.consumer_count}
    if name in ("Queue.PurgeOk", "Queue.DeleteOk"):
        return {"message_count": method.message_count}
    if name == "Basic.ConsumeOk":
        return {"consumer_tag": method.consumer_tag}
    if name == "Basic.GetEmpty":
        return {"empty": True}
    return {}


def _amqp_properties(values):
    if not values:
        return amqp.Basic.Properties()
    values = dict(values)
    if "type" in values:
        values["message_type"] = values.pop("type")
    if isinstance(values.get("timestamp"), int):
        values["timestamp"] = datetime.datetime.fromtimestamp(values["timestamp"], datetime.timezone.utc)
    cluster_id = values.pop("cluster_id", None)
    properties = amqp.Basic.Properties(**values)
    if cluster_id is not None:          # deprecated in 0-9-1 and refused by pamqp's constructor
        properties.cluster_id = cluster_id
    return properties


def _properties_from_amqp(properties):
    values = {}
    for name in PROPERTY_NAMES:
        value = getattr(properties, "message_type" if name == "type" else name)
        if value is None or (name == "cluster_id" and value == ""):   # pamqp's stand-in for none
            continue
        values[name] = int(value.timestamp()) if name == "timestamp" else value
    return values


class _AmqpWire:
    """AMQP 0-9-1 in PROTOCOL.md's terms: each request becomes its AMQP method, and the
    frames that arrive become the replies and events its lines would have carried. A
    channel the broker closes on an error is reopened at once (with its confirm mode and
    prefetch), so the Channel goes on as over JSON lines; as AMQP says, its consumers and
    unacknowledged deliveries end with it, and messages awaiting a confirm are reported
    as nacked."""

    HEARTBEAT = amqp_frame.marshal(amqp_heartbeat.Heartbeat(), 0)
    join = b"".join

    def __init__(self, connection):
        self._connection = connection
        self._buffer = bytearray()
        self._awaiting = collections.defaultdict(collections.deque)   # channel -> (request id, op)
        self._content = {}             # channel -> [event, properties, body size, body parts]
        self._login = None
        self._server_properties = {}
        self._frame_max = AMQP_FRAME_MAX
        self._settings = collections.defaultdict(dict)   # channel -> op -> request, to repeat
        self._published = collections.Counter()          # channel -> publishes in confirm mode
        self._tag_offset = collections.Counter()         # channel -> publishes of its earlier lives
        # Failover: deliveries are numbered on from those of the connection lost, so an
        # ack of a delivery made there is told apart (and dropped: it comes again).
        self._delivery_tag_offset = collections.Counter()
        self._last_delivery_tag = collections.Counter()
        self._events = []

    def request(self, fields):
        op = fields["op"]
        channel = fields.get("channel", 1)
        if op == "hello":
            self._login = fields
            self._awaiting[0].append((fields["id"], op))
            return amqp_header.ProtocolHeader().marshal()
        if op == "close":
            self._awaiting[0].append((fields["id"], op))
            return amqp_frame.marshal(amqp.Connection.Close(200, "Normal shutdown", 0, 0), 0)
        translate = _AMQP_REQUESTS.get(op)
        if translate is None:
            raise GreenMQError(f"'{op}' is a GreenMQ request without an AMQP method: "
                               f"use the JSON-lines port (or the management API) for it")
        if op in _AMQP_SETTLEMENTS and self._delivery_tag_offset[channel] and fields["delivery_tag"]:
            fields = dict(fields, delivery_tag=fields["delivery_tag"] - self._delivery_tag_offset[channel])
            if fields["delivery_tag"] <= 0:
                return b""
        method = translate(fields)
        if op in _AMQP_CHANNEL_SETTINGS:
            self._settings[channel][op] = fields
        if "id" in fields:
            self._awaiting[channel].append((fields["id"], op))
        return amqp_frame.marshal(method, channel)

    def opened(self, server_properties):
        """The handshake is over by now."""

    def carry_delivery_tags(self, lost):
        """Number deliveries on from where the wire of a connection lost left off."""
        for channel in set(lost._last_delivery_tag) | set(lost._delivery_tag_offset):
            self._delivery_tag_offset[channel] = lost._delivery_tag_offset[channel] + lost._last_delivery_tag[channel]

    def open_first_channel(self):
        self._connection._call(1, "channel.open")

    def publish(self, channel, exchange, routing_key, body, properties, mandatory):
        body = body.encode() if isinstance(body, str) else bytes(body)
        _refuse_large_body(len(body), self._connection.max_message_bytes)
        frames = [amqp_frame.marshal(amqp.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                        mandatory=mandatory), channel),
                  amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), _amqp_properties(properties)),
                                     channel)]
        step = self._frame_max - _AMQP_FRAME_OVERHEAD
        for start in range(0, len(body), step):
            frames.append(amqp_frame.marshal(amqp_body.ContentBody(body[start:start + step]), channel))
        if "confirm.select" in self._settings.get(channel, ()):
            self._published[channel] += 1
        return b"".join(frames)

    def received(self, data):
        """The replies and events that the frames completed by `data` carry."""
        buffer = self._buffer
        buffer += data
        self._events = []
        start, end = 0, len(buffer)
        while end - start >= _AMQP_FRAME_OVERHEAD:
            _, channel, size = _AMQP_FRAME_HEADER.unpack_from(buffer, start)
            frame_end = start + size + _AMQP_FRAME_OVERHEAD
            if frame_end > end:
                break
            _, _, frame = amqp_frame.unmarshal(bytes(buffer[start:frame_end]))
            start = frame_end
            self._frame(channel, frame)
        del buffer[:start]
        return self._events

    def _send(self, method, channel):
        self._connection._queue_answer(amqp_frame.marshal(method, channel))

    def _frame(self, channel, frame):
        if isinstance(frame, amqp_body.ContentBody):
            content = self._content[channel]
            content[3].append(frame.value)
            content[2] -= len(frame.value)
            if content[2] <= 0:
                self._content_received(channel)
        elif isinstance(frame, amqp_header.ContentHeader):
            content = self._content[channel]
            content[1], content[2] = frame.properties, frame.body_size
            if not frame.body_size:
                self._content_received(channel)
        elif isinstance(frame, amqp_heartbeat.Heartbeat):
            pass
        else:
            handler = self._METHODS.get(frame.name)
            if handler is not None:
                handler(self, channel, frame)
            elif frame.name.endswith("Ok") or frame.name == "Basic.GetEmpty":
                self._answer(channel, {"ok": True, **_amqp_reply(frame)})

    def _answer(self, channel, reply):
        request_id, op = self._awaiting[channel].popleft()
        if request_id is not None:       # None: a request of this wire's own
            reply["id"] = request_id
            reply["op"] = op
            self._events.append(reply)

    def _content_received(self, channel):
        event, properties, _, parts = self._content.pop(channel)
        event["properties"] = _properties_from_amqp(properties)
        event["body"] = b"".join(parts)
        if "event" in event:
            self._events.append(event)
        else:                           # basic.get's answer
            self._answer(channel, event)

    # -- methods from the broker --

    def _on_start(self, channel, start):
        login = self._login
        self._server_properties = start.server_properties
        client = dict(login["client"])
        client["capabilities"] = _AMQP_CAPABILITIES
        self._send(amqp.Connection.StartOk(
            client_properties=client, mechanism="PLAIN", locale="en_US",
            response=f"\0{login['user']}\0{login['password']}"), 0)

    def _on_tune(self, channel, tune):
        if tune.frame_max:
            self._frame_max = min(self._frame_max, tune.frame_max)
        self._send(amqp.Connection.TuneOk(channel_max=min(AMQP_CHANNEL_MAX, tune.channel_max or AMQP_CHANNEL_MAX),
                                          frame_max=self._frame_max, heartbeat=self._login["heartbeat"]), 0)
        self._send(amqp.Connection.Open(virtual_host=self._login["vhost"]), 0)

    def _on_open_ok(self, channel, open_ok):
        server = self._server_properties
        self._answer(0, {"ok": True, "server": server.get("product"), "version": server.get("version"),
                         "heartbeat": self._login["heartbeat"], "properties": server})

    def _on_connection_close(self, channel, close):
        self._send(amqp.Connection.CloseOk(), 0)
        if self._awaiting[0] and self._awaiting[0][0][1] == "hello":
            self._answer(0, {"ok": False, "code": close.reply_code, "text": close.reply_text})
        else:
            self._events.append({"event": "close", "code": close.reply_code, "text": close.reply_text})

    def _on_channel_close(self, channel, close):
        """A refusal: reported to the request it answers (or the channel), and the channel
        reopened as it was."""
        self._send(amqp.Channel.CloseOk(), channel)
        refusal = {"ok": False, "code": close.reply_code, "text": close.reply_text, "channel": channel}
        awaiting = self._awaiting[channel]
        if awaiting:
            self._answer(channel, refusal)
            awaiting.clear()
        else:
            del refusal["ok"]
            self._events.append(refusal)
        if channel not in self._connection._channels:
            return
        unconfirmed = self._published[channel]
        if unconfirmed > self._tag_offset[channel]:
            self._events.append({"event": "nack", "channel": channel, "delivery_tag": unconfirmed,
                                 "multiple": True})
        self._tag_offset[channel] = unconfirmed
        self._send(amqp.Channel.Open(), channel)
        awaiting.append((None, "channel.open"))
        for op, fields in self._settings[channel].items():
            self._send(_AMQP_REQUESTS[op](fields), channel)
            awaiting.append((None, op))

    def _delivery_tag(self, channel, tag):
        self._last_delivery_tag[channel] = tag
        return tag + self._delivery_tag_offset[channel]

    def _on_get_ok(self, channel, get_ok):
        self._content[channel] = [
            {"ok": True, "empty": False, "delivery_tag": self._delivery_tag(channel, get_ok.delivery_tag),
             "redelivered": get_ok.redelivered,
             "exchange": get_ok.exchange, "routing_key": get_ok.routing_key,
             "message_count": get_ok.message_count}, None, 0, []]

    def _on_deliver(self, channel, deliver):
        self._content[channel] = [
            {"event": "deliver", "channel": channel, "consumer_tag": deliver.consumer_tag,
             "delivery_tag": self._delivery_tag(channel, deliver.delivery_tag),
             "redelivered": deliver.redelivered,
             "exchange": deliver.exchange, "routing_key": deliver.routing_key}, None, 0, []]

    def _on_return(self, channel, returned):
        self._content[channel] = [
            {"event": "return", "channel": channel, "reply_code": returned.reply_code,
             "reply_text": returned.reply_text, "exchange": returned.exchange,
             "routing_key": returned.routing_key}, None, 0, []]

    def _on_confirm(self, channel, confirm):
        self._events.append({"event": "ack" if confirm.name == "Basic.Ack" else "nack", "channel": channel,
                             "delivery_tag": confirm.delivery_tag + self._tag_offset[channel],
                             "multiple": confirm.multiple})

    def _on_cancel(self, channel, cancel):
        self._events.append({"event": "cancel", "channel": channel, "consumer_tag": cancel.consumer_tag})
        if not cancel.nowait:
            self._send(amqp.Basic.CancelOk(consumer_tag=cancel.consumer_tag), channel)

    def _on_flow(self, channel, flow):
        self._send(amqp.Channel.FlowOk(active=flow.active), channel)

    def _on_blocked(self, channel, blocked):
        self._events.append({"event": "blocked", "reason": blocked.reason})

    def _on_unblocked(self, channel, unblocked):
        self._events.append({"event": "unblocked"})

    _METHODS = {
        "Connection.Start": _on_start,
        "Connection.Tune": _on_tune,
        "Connection.OpenOk": _on_open_ok,
        "Connection.Close": _on_connection_close,
        "Channel.Close": _on_channel_close,
        "Channel.Flow": _on_flow,
        "Basic.GetOk": _on_get_ok,
        "Basic.Deliver": _on_deliver,
        "Basic.Return": _on_return,
        "Basic.Ack": _on_confirm,
        "Basic.Nack": _on_confirm,
        "Basic.Cancel": _on_cancel,
        "Connection.Blocked": _on_blocked,
        "Connection.Unblocked": _on_unblocked,
    }


class _Broker:
    """One broker to connect to: a host name (JSON lines) or an amqp(s):// URL, with
    the keyword arguments for what it leaves out."""

    def __init__(self, host, port, username, password, virtual_host, ssl):
        if port is None and "://" not in host and os.environ.get(URL_ENVIRONMENT_VARIABLE):
            host = os.environ[URL_ENVIRONMENT_VARIABLE]
        if "://" in host:
            host, port, username, password, virtual_host, ssl = _parse_url(
                host, port, username, password, virtual_host, ssl)
            self.wire = _AmqpWire
        else:
            if port is None:
                port = int(os.environ.get(PORT_ENVIRONMENT_VARIABLE, DEFAULT_PORT))
            self.wire = _JsonLinesWire
        self.host, self.port, self.username, self.password = host, port, username, password
        self.virtual_host, self.ssl = virtual_host, ssl


def _parse_url(url, port, username, password, virtual_host, ssl):
    """host, port, username, password, virtual host and TLS context from an amqp:// or
    amqps:// URL (percent-escaped, as pika and RabbitMQ read them: %2f is the vhost '/');
    what the URL leaves out keeps the value given."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in AMQP_PORTS:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: use amqp:// or amqps://")
    if parts.scheme == "amqps" and ssl is None:
        ssl = ssl_module.create_default_context()
    if parts.username is not None:
        username = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        password = urllib.parse.unquote(parts.password)
    if parts.path not in ("", "/"):
        virtual_host = urllib.parse.unquote(parts.path[1:])
    return (parts.hostname or "localhost", port or parts.port or AMQP_PORTS[parts.scheme],
            username, password, virtual_host, ssl)
