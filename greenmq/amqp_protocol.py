"""The AMQP 0-9-1 front end: frames in, core calls out; core events in, frames out.

`AmqpConnection` never touches a socket (transport.py owns it) and marshals nothing itself
(amqp_codec.py does, with pamqp); this module is the connection and channel state machine
that RabbitMQ's clients (pika, py-amqp, kombu, Celery) expect, driving the same core as
protocol.py.
"""

import enum
import logging
import sys
import time

from pamqp import commands as spec

from .amqp_codec import (BARE_HEADER_END, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
                         HEARTBEAT_FRAME, NO_PROPERTY_FLAGS, PROPERTIES_AT, PROTOCOL_HEADER, UNDECODED,
                         MethodDecoder, amqplain_credentials, confirm_frame, content_frames, decode_content_header,
                         decode_properties, deliver_method, method_frame, method_ids, method_parts,
                         undecoded_method, unmarshal_content_header, unpack_frame_head, unpack_header_start)
from .errors import (AccessRefused, BrokerError, ChannelNotOpen, CommandInvalid,
                    FrameError, InternalError, NotAllowed, PreconditionFailed, UnexpectedFrame,
                    Unsupported)
from .message import DEFAULT_MAX_MESSAGE_BYTES, message_too_large
from .node import SERVER_NAME, VERSION
from .session import MAX_CHANNELS
from .transport import FrontEndConnection

log = logging.getLogger("greenmq.amqp")

# RabbitMQ's defaults, which clients are tuned for: 128 KiB frames, a heartbeat a minute.
FRAME_MAX = 131072
HEARTBEAT_SECONDS = 60
# The spec's floor for frame_max: every peer must accept frames this large.
FRAME_MIN = 4096
# A peer that has not answered our connection.close by then is simply dropped.
CLOSE_OK_TIMEOUT_SECONDS = 10.0
# How long a client may take to finish the handshake (RabbitMQ's handshake_timeout).
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class ConnectionState(enum.Enum):
    """Where an AMQP connection is in its life; TRANSITIONS says where each may go next."""

    HEADER = "header"          # waiting for the protocol header
    START_OK = "start-ok"      # connection.start sent: the client's login comes next
    TUNE_OK = "tune-ok"        # logged in, connection.tune sent
    OPEN = "open"              # tuned: connection.open (the virtual host) comes next
    RUNNING = "running"        # open: channels come and go
    CLOSING = "closing"        # we sent connection.close: only its close-ok (or a close) matters
    CLOSED = "closed"          # nothing more is read; the transport hangs up once output is sent


# The members as module names too: the checks made per frame compare a global by identity,
# as cheap as the strings they replaced (an enum member's lookup on its class took 80 ns).
HEADER, START_OK, TUNE_OK, OPEN, RUNNING, CLOSING, CLOSED = ConnectionState

# Every move the connection may make. Before tune a failure hangs up at once (CLOSED), as
# RabbitMQ does; from tune on it says why with connection.close and waits (CLOSING). A
# client's own connection.close ends any state at once.
TRANSITIONS = {
    HEADER: frozenset({START_OK, CLOSED}),
    START_OK: frozenset({TUNE_OK, CLOSED}),
    TUNE_OK: frozenset({OPEN, CLOSING, CLOSED}),
    OPEN: frozenset({RUNNING, CLOSING, CLOSED}),
    RUNNING: frozenset({CLOSING, CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}


class ForbiddenTransition(RuntimeError):
    """A move TRANSITIONS does not allow: a bug in the broker, never a client's doing (what
    a client sends wrongly is a BrokerError with a reply code), so it is not a BrokerError:
    met while a frame is handled, it is logged as any bug there and the connection closed
    with 541 INTERNAL_ERROR."""


# The handshake as a table: in each state, the method the client must send next and the
# handler that answers it and moves to the next state.
_HANDSHAKE = {
    START_OK: (spec.Connection.StartOk, "_start_ok"),     # -> TUNE_OK
    TUNE_OK: (spec.Connection.TuneOk, "_tune_ok"),        # -> OPEN
    OPEN: (spec.Connection.Open, "_open"),                # -> RUNNING
}

# Only what this broker really does: pika refuses confirm_delivery without the first two.
CAPABILITIES = {
    "publisher_confirms": True, "basic.nack": True, "consumer_cancel_notify": True,
    "authentication_failure_close": True, "per_consumer_qos": True,
    "exchange_exchange_bindings": True, "consumer_priorities": True, "connection.blocked": True,
}


class _Content:
    """A basic.publish whose header and body frames are still arriving."""

    __slots__ = ("method", "properties", "encoded_properties", "size", "parts", "received")

    def __init__(self, method):
        self.method = method
        self.properties = None
        self.encoded_properties = None
        self.size = None
        self.parts = []
        self.received = 0


class _Channel:
    """What AMQP adds to a core channel: content assembly, transactions, closing state."""

    __slots__ = ("core", "content", "tx", "tx_settled", "closing")

    def __init__(self, core):
        self.core = core
        self.content = None
        self.tx = None          # a list of deferred operations once tx.select was seen
        self.tx_settled = set()   # delivery tags acked, nacked or rejected in the open transaction
        self.closing = False    # we sent channel.close and wait for close-ok


class AmqpConnection(FrontEndConnection):
    """One client connection speaking AMQP 0-9-1."""

    name = "AMQP"

    def __init__(self, node, peer, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(node, peer)
        self.max_message_bytes = max_message_bytes
        self.state = HEADER
        self.frame_max = FRAME_MAX
        self.channel_max = MAX_CHANNELS
        self.heartbeat = 0
        self.client_properties = {}
        self.user = None            # once authenticated
        self.channels = {}
        self._buffer = b""
        self._content_bytes = 0     # bodies of publishes still arriving, frame by frame
        # A body frame longer than the reads so far is taken piece by piece as reads bring
        # it, never buffered whole: what of it is still to come (its end byte included),
        # and its channel.
        self._body_left = 0
        self._body_channel = 0
        self._decode_method = MethodDecoder().decode      # keeps this connection's last publish
        self._started = self._last_received = self._last_sent = time.monotonic()
        self._close_deadline = None

    # -- bytes in ----------------------------------------------------------------------

    def data_received(self, data):
        """`data` must be bytes its reader never changes (as socket.recv gives): the pieces
        of a body still arriving are memoryview slices of it, kept until the body is whole."""
        self._last_received = time.monotonic()
        offset = 0
        if self._body_left:
            offset = self._rest_of_body(data)
        buffer = self._buffer + data if self._buffer else data
        if self.state is HEADER:
            if len(buffer) < 8:
                self._buffer = buffer
                return
            if buffer[:8] != PROTOCOL_HEADER:
                # The spec's answer to a header it does not speak: its own, then close.
                self._write(PROTOCOL_HEADER)
                self._move_to(CLOSED)
                return
            offset = 8
            self._send_method(0, spec.Connection.Start(
                version_major=0, version_minor=9, server_properties=self._server_properties(),
                mechanisms="PLAIN AMQPLAIN", locales="en_US"))
            self._move_to(START_OK)
        end = len(buffer)
        while end - offset >= 7 and not self.closed:
            frame_type, channel, size = unpack_frame_head(buffer, offset)
            if size + 8 > self.frame_max:
                self._framing_lost(FrameError(f"frame size {size + 8} exceeds frame_max {self.frame_max}"))
                break
            frame_end = offset + 7 + size
            if frame_end >= end:
                if frame_type != FRAME_BODY:
                    break
                # The body frame's first piece now, the rest with the reads to come.
                self._body_left, self._body_channel = frame_end + 1 - end, channel
            elif buffer[frame_end] != FRAME_END:
                self._framing_lost(FrameError(f"frame end byte {buffer[frame_end]:#x} is not {FRAME_END:#x}"))
                break
            offset = self._frame(frame_type, channel, buffer, offset, frame_end, end)
        self._buffer = buffer[offset:] if offset < end else b""
        if self.session is not None:
            self.session.flush_confirms()

    def unfinished_input_bytes(self):
        return len(self._buffer) + self._content_bytes

    def _rest_of_body(self, data):
        """Takes from `data` what it holds of the body frame a read left unfinished; returns
        where the next frame starts in it (its length when the body frame goes on)."""
        left, number = self._body_left, self._body_channel
        if len(data) < left:
            self._body_left = left - len(data)
            self._body_piece(number, memoryview(data))
            return len(data)
        self._body_left = 0
        if left > 1:
            self._body_piece(number, memoryview(data)[:left - 1])
        if data[left - 1] != FRAME_END:
            self._framing_lost(FrameError(f"frame end byte {data[left - 1]:#x} is not {FRAME_END:#x}"))
            return len(data)
        try:
            self._body_frame_end(number)
        except MemoryError:
            raise
        except Exception:
            log.exception("error handling a content body from %s", self.peer)
            self._connection_error(InternalError("internal error"))
        return left

    def _frame(self, frame_type, channel, buffer, start, frame_end, end):
        """Handles the frame at buffer[start:frame_end + 1] of buffer[:end]; returns where the
        next frame starts, which is further on when a whole publish was taken at once."""
        if self.state is CLOSING and (frame_type != FRAME_METHOD or channel != 0):
            return frame_end + 1      # after our connection.close only its close-ok matters
        method = None
        try:
            if frame_type == FRAME_METHOD:
                method = self._decode_method(buffer, start, frame_end)
                if channel == 0:
                    self._connection_method(method)
                elif method.__class__ is spec.Basic.Publish:
                    next_frame = self._whole_publish(channel, method, buffer, frame_end, end)
                    if next_frame:
                        return next_frame
                    self._channel_method(channel, method)
                else:
                    self._channel_method(channel, method)
            elif frame_type == FRAME_HEADER:
                self._content_header(channel, buffer, start, frame_end)
            elif frame_type == FRAME_BODY:
                self._content_body(channel, buffer, start, frame_end, end)
            elif frame_type != FRAME_HEARTBEAT:
                raise FrameError(f"unknown frame type {frame_type}")
        except BrokerError as exc:
            if method is None and frame_type == FRAME_METHOD:
                method = undecoded_method(buffer, start, frame_end)
            self._fail(channel, exc, method)
        except MemoryError:
            raise       # the transport closes the connection with 541
        except Exception:
            log.exception("error handling %s from %s", method.name if method else f"frame {frame_type}", self.peer)
            self._connection_error(InternalError("internal error"), method)
        return frame_end + 1

    # -- the connection (channel 0) ------------------------------------------------------

    def _connection_method(self, method):
        if self.state is CLOSING:
            if isinstance(method, (spec.Connection.CloseOk, spec.Connection.Close)):
                if isinstance(method, spec.Connection.Close):
                    self._send_method(0, spec.Connection.CloseOk())
                self._move_to(CLOSED)
            return
        if isinstance(method, spec.Connection.Close):
            self.connection_lost()
            self._send_method(0, spec.Connection.CloseOk())
            self._move_to(CLOSED)
            return
        if isinstance(method, spec.Connection.UpdateSecret) and self.state is RUNNING:
            # For its own users RabbitMQ takes a new secret without checking it, and so do we.
            self._send_method(0, spec.Connection.UpdateSecretOk())
            return
        step = _HANDSHAKE.get(self.state)
        if step is None or not isinstance(method, step[0]):
            what = step[0].name if step else "a method on a channel"
            raise CommandInvalid(f"expected {what}, got {method.name} on channel 0")
        getattr(self, step[1])(method)

    def _server_properties(self):
        return {"product": SERVER_NAME, "version": VERSION,
                "platform": f"Python {sys.version.split()[0]}",
                "information": "A message broker in Python on gevent",
                "capabilities": CAPABILITIES}

    def _start_ok(self, method):
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        response = method.response.encode() if isinstance(method.response, str) else method.response
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                raise AccessRefused("PLAIN response is not \\0user\\0password")
            username, password = parts[1], parts[2]
        elif mechanism == "AMQPLAIN":
            try:
                username, password = amqplain_credentials(response)
            except ValueError:
                raise AccessRefused("AMQPLAIN response is not a field table") from None
        else:
            raise AccessRefused(f"unsupported authentication mechanism '{mechanism}'")
        username = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
        password = password.decode("utf-8", "replace") if isinstance(password, bytes) else str(password)
        self.user = self.node.authenticate(username, password, self.peer, mechanism)
        self._send_method(0, spec.Connection.Tune(channel_max=MAX_CHANNELS, frame_max=FRAME_MAX,
                                                  heartbeat=HEARTBEAT_SECONDS))
        self._move_to(TUNE_OK)

    def _tune_ok(self, method):
        if method.frame_max and method.frame_max < FRAME_MIN:
            raise NotAllowed(f"frame_max={method.frame_max} < {FRAME_MIN} min size")
        if method.frame_max > FRAME_MAX:
            raise NotAllowed(f"frame_max={method.frame_max} > {FRAME_MAX} max size")
        self.frame_max = method.frame_max or FRAME_MAX
        self.channel_max = min(method.channel_max or MAX_CHANNELS, MAX_CHANNELS)
        self.heartbeat = method.heartbeat
        self._move_to(OPEN)

    def _open(self, method):
        self.session = self.node.open_session(self.user, method.virtual_host, self.peer, "amqp", self,
                                              self.client_properties)
        self._send_method(0, spec.Connection.OpenOk())
        self._move_to(RUNNING)

    def _connection_error(self, exc, method=None):
        """Close the connection for `exc`; the client's close-ok (or a timeout) ends it."""
        if self.state is CLOSING or self.state is CLOSED:
            return
        if self.state is HEADER or self.state is START_OK:
            # Before tune, RabbitMQ hangs up without connection.close, except for a failed
            # login when the client asked to be told; then it hangs up right after.
            log.info("closing AMQP connection from %s: %s", self.peer, exc.text)
            if isinstance(exc, AccessRefused) and self._client_capability("authentication_failure_close"):
                self._send_method(0, spec.Connection.Close(reply_code=exc.code, reply_text=exc.text[:255],
                                                           class_id=10, method_id=11))
            self._move_to(CLOSED)
            return
        log.info("closing AMQP connection from %s: %s", self.peer, exc.text)
        class_id, method_id = method_ids(method)
        self._send_method(0, spec.Connection.Close(reply_code=exc.code, reply_text=exc.text[:255],
                                                   class_id=class_id, method_id=method_id))
        self.connection_lost()
        self.channels = {}
        self._move_to(CLOSING)
        self._close_deadline = time.monotonic() + CLOSE_OK_TIMEOUT_SECONDS

    def _framing_lost(self, exc):
        """After a malformed frame nothing more can be parsed: say why and hang up at once,
        without waiting for a close-ok that could not be found (as RabbitMQ does)."""
        self._connection_error(exc)
        self._hang_up()

    def close(self, exc):
        """The broker is stopping (320) or the transport drops the peer."""
        self._connection_error(exc)
        self._hang_up()

    def _hang_up(self):
        """Read no more, whatever the state: what was written is still sent."""
        if self.state is not CLOSED:
            self._move_to(CLOSED)

    def _move_to(self, state):
        """The one place the connection changes state, and only as TRANSITIONS allows."""
        if state not in TRANSITIONS[self.state]:
            raise ForbiddenTransition(f"an AMQP connection cannot go from {self.state.value} to {state.value}")
        self.state = state
        if state is CLOSED:
            self.closed = True          # the transport's sign to read no more

    def tick(self, now):
        """Heartbeats both ways and the close-ok and handshake timeouts; None drops the peer."""
        if self._close_deadline is not None:
            return None if now >= self._close_deadline else self._close_deadline - now
        if self.state is CLOSED:
            return None         # closed by the client or before tune: nothing more to wait for
        if self.state is not RUNNING:
            if now - self._started > HANDSHAKE_TIMEOUT_SECONDS:
                log.info("AMQP client %s did not finish the handshake in time", self.peer)
                return None
            return 1.0
        if not self.heartbeat:
            return HEARTBEAT_SECONDS
        if now - self._last_received > 2 * self.heartbeat and not self.paused:
            log.info("missed heartbeats from AMQP client %s, timeout: %ss", self.peer, self.heartbeat)
            self.connection_lost()
            return None
        if now - self._last_sent >= self.heartbeat / 2:
            self._write(HEARTBEAT_FRAME)
        return self.heartbeat / 2

    def reading_paused(self, reason):
        super().reading_paused(reason)
        if self._client_capability("connection.blocked"):
            self._send_method(0, spec.Connection.Blocked(reason))

    def reading_resumed(self):
        super().reading_resumed()
        if self._client_capability("connection.blocked"):
            self._send_method(0, spec.Connection.Unblocked())

    def _client_capability(self, name):
        capabilities = self.client_properties.get("capabilities") or {}
        return bool(capabilities.get(name))

    # -- channels ----------------------------------------------------------------------

    def _channel_method(self, number, method):
        if self.state is not RUNNING:
            raise CommandInvalid(f"{method.name} before the connection is open")
        if method.index >> 16 == spec.Connection.frame_id:
            raise CommandInvalid(f"{method.name} is only allowed on channel 0")
        channel = self.channels.get(number)
        if isinstance(method, spec.Channel.Open):
            if channel is not None:
                raise ChannelNotOpen(f"second 'channel.open' seen for channel {number}")
            if number > self.channel_max:
                raise NotAllowed(f"channel number {number} is over channel_max {self.channel_max}")
            self.channels[number] = _Channel(self.session.open_channel(number))
            self._send_method(number, spec.Channel.OpenOk())
            return
        if channel is None:
            raise ChannelNotOpen(f"expected 'channel.open' for channel {number}")
        if channel.closing:
            if isinstance(method, spec.Channel.CloseOk):
                del self.channels[number]
            elif isinstance(method, spec.Channel.Close):
                self._send_method(number, spec.Channel.CloseOk())
            return
        if channel.content is not None:
            # RabbitMQ names the basic.publish still waiting for its content, not the intruder.
            self._connection_error(UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead"),
                channel.content.method)
            return
        handler = _CHANNEL_METHODS.get(type(method))
        if handler is None:
            raise Unsupported(f"{method.name} is not supported")
        handler(self, channel, number, method)

    def _fail(self, number, exc, method):
        if exc.connection_level or number == 0:
            self._connection_error(exc, method)
        else:
            self._channel_error(number, exc, method)

    def _channel_error(self, number, exc, method):
        """Close one channel for `exc`, as RabbitMQ does for 403, 404, 405 and 406."""
        channel = self.channels.get(number)
        if channel is None or channel.closing:
            return
        self.session.close_channel(number)
        channel.closing = True
        if channel.content is not None:
            self._content_bytes -= channel.content.received
            channel.content = None
        class_id, method_id = method_ids(method)
        self._send_method(number, spec.Channel.Close(reply_code=exc.code, reply_text=exc.text[:255],
                                                     class_id=class_id, method_id=method_id))

    def on_channel_close(self, channel, number, method):
        self.session.close_channel(number)
        del self.channels[number]
        self._send_method(number, spec.Channel.CloseOk())

    def on_channel_flow(self, channel, number, method):
        # flow-ok first: resuming may deliver at once, and deliveries come after the answer.
        self._send_method(number, spec.Channel.FlowOk(active=method.active))
        channel.core.set_flow(method.active)

    # -- exchanges and queues --------------------------------------------------------------

    def on_exchange_declare(self, channel, number, method):
        self.session.vhost.declare_exchange(
            method.exchange, method.exchange_type, method.passive, method.durable,
            method.auto_delete, method.internal, method.arguments, self.session)
        self._reply(number, method, spec.Exchange.DeclareOk())

    def on_exchange_delete(self, channel, number, method):
        self.session.vhost.delete_exchange(method.exchange, method.if_unused, self.session)
        self._reply(number, method, spec.Exchange.DeleteOk())

    def on_exchange_bind(self, channel, number, method):
        self.session.vhost.bind_exchange(method.destination, method.source, method.routing_key, method.arguments,
                                         self.session)
        self._reply(number, method, spec.Exchange.BindOk())

    def on_exchange_unbind(self, channel, number, method):
        self.session.vhost.unbind_exchange(method.destination, method.source, method.routing_key, method.arguments,
                                           self.session)
        self._reply(number, method, spec.Exchange.UnbindOk())

    def on_queue_declare(self, channel, number, method):
        queue = self.session.vhost.declare_queue(
            method.queue, method.passive, method.durable, method.exclusive, method.auto_delete,
            method.arguments, self.session)
        self._reply(number, method, spec.Queue.DeclareOk(
            queue=queue.name, message_count=queue.message_count, consumer_count=len(queue.consumers)))

    def on_queue_bind(self, channel, number, method):
        self.session.vhost.bind(method.queue, method.exchange, method.routing_key, method.arguments,
                                self.session)
        self._reply(number, method, spec.Queue.BindOk())

    def on_queue_unbind(self, channel, number, method):
        self.session.vhost.unbind(method.queue, method.exchange, method.routing_key, method.arguments,
                                  self.session)
        self._send_method(number, spec.Queue.UnbindOk())

    def on_queue_purge(self, channel, number, method):
        count = self.session.vhost.purge_queue(method.queue, self.session)
        self._reply(number, method, spec.Queue.PurgeOk(message_count=count))

    def on_queue_delete(self, channel, number, method):
        count = self.session.vhost.delete_queue(method.queue, method.if_unused, method.if_empty, self.session)
        self._reply(number, method, spec.Queue.DeleteOk(message_count=count))

    # -- publishing --------------------------------------------------------------------

    def on_basic_publish(self, channel, number, method):
        if method.immediate:
            raise Unsupported("immediate=true")
        channel.content = _Content(method)

    def _content_header(self, number, buffer, start, frame_end):
        channel = self.channels.get(number)
        if channel is None or channel.closing:
            return self._ignore_content(number, "content header")
        content = channel.content
        if content is None or content.size is not None:
            raise UnexpectedFrame("content header frame without a basic.publish before it")
        content.size, content.properties, content.encoded_properties = (
            decode_content_header(buffer, start, frame_end) or unmarshal_content_header(buffer, start, frame_end))
        if content.size > self.max_message_bytes:
            # Refused before any of the body is held (RabbitMQ 3.10 refuses it once received).
            return self._fail(number, message_too_large(content.size, self.max_message_bytes), content.method)
        if content.size == 0:
            self._content_complete(channel, number)

    def _content_body(self, number, buffer, start, frame_end, end):
        """The body frame at buffer[start:frame_end + 1], of which buffer[:end] holds a
        first piece when frame_end >= end. Its payload is kept as a memoryview of the read
        buffer, and copied once, when the whole body is joined."""
        channel = self.channels.get(number)
        if channel is None or channel.closing:
            return self._ignore_content(number, "content body")
        content = channel.content
        if content is None or content.size is None:
            raise UnexpectedFrame("content body frame without a content header before it")
        if content.received + frame_end - start - 7 > content.size:
            raise FrameError(f"content body of {content.received + frame_end - start - 7} bytes exceeds "
                             f"the {content.size} announced")
        self._body_piece(number, memoryview(buffer)[start + 7:frame_end])
        if frame_end < end:
            self._body_frame_end(number)

    def _body_piece(self, number, payload):
        """Part of a body frame whose start was accepted; dropped if the channel has been
        closed since (by the broker, or the connection for an error)."""
        channel = self.channels.get(number)
        if channel is not None and channel.content is not None:
            channel.content.parts.append(payload)
            channel.content.received += len(payload)
            self._content_bytes += len(payload)

    def _body_frame_end(self, number):
        channel = self.channels.get(number)
        if channel is not None and channel.content is not None and channel.content.received == channel.content.size:
            self._content_complete(channel, number)

    def _ignore_content(self, number, what):
        """Content for a channel being closed is dropped; for one never opened it is an error."""
        if number not in self.channels:
            raise ChannelNotOpen(f"{what} for channel {number}, which is not open")

    def _whole_publish(self, number, method, buffer, method_end, end):
        """A basic.publish followed in the same read by its content header, without
        properties, and its one body frame, taken in one step: what a publisher sends for
        every message. Returns where the next frame starts, or 0 for anything else, which
        then takes the frame-by-frame path (and its errors)."""
        channel = self.channels.get(number)
        if (self.state is not RUNNING or channel is None or channel.closing or channel.content is not None
                or method.immediate):
            return 0
        header_start = method_end + 1
        if end - header_start < BARE_HEADER_END:
            return 0
        header_type, header_channel, header_size, _, _, size, flags = unpack_header_start(buffer, header_start)
        header_end = header_start + 7 + header_size
        body_start = header_end + 8
        if (header_type != FRAME_HEADER or header_channel != number or header_end < header_start + BARE_HEADER_END
                or body_start > end or header_size + 8 > self.frame_max or buffer[header_end] != FRAME_END):
            return 0
        if flags or header_end != header_start + BARE_HEADER_END:
            properties = decode_properties(buffer, header_start + PROPERTIES_AT, header_end)
            if properties is UNDECODED:
                return 0
            encoded_properties = buffer[header_start + PROPERTIES_AT:header_end]
        else:
            properties, encoded_properties = None, NO_PROPERTY_FLAGS
        body_type, body_channel, body_size = unpack_frame_head(buffer, header_end + 1)
        body_end = body_start + size
        if (body_type != FRAME_BODY or body_channel != number or body_size != size or not size or body_end >= end
                or size + 8 > self.frame_max or size > self.max_message_bytes or buffer[body_end] != FRAME_END):
            return 0
        self._publish(channel, number, method, buffer[body_start:body_end], properties, encoded_properties)
        return body_end + 1

    def _content_complete(self, channel, number):
        content, channel.content = channel.content, None
        self._content_bytes -= content.received
        body = b"".join(content.parts)       # the one copy: pieces of the reads into the message's body
        self._publish(channel, number, content.method, body, content.properties, content.encoded_properties)

    def _publish(self, channel, number, method, body, properties, encoded_properties):
        self.publisher = True
        try:
            if channel.tx is not None:
                channel.core.check_publish(method.exchange, properties)
                channel.tx.append((channel.core.publish, (method.exchange, method.routing_key, body, properties,
                                                          method.mandatory, encoded_properties)))
            else:
                channel.core.publish(method.exchange, method.routing_key, body, properties, method.mandatory,
                                     encoded_properties)
        except BrokerError as exc:
            self._fail(number, exc, method)   # reported against basic.publish, not the body frame

    # -- consuming ---------------------------------------------------------------------

    def on_basic_qos(self, channel, number, method):
        if method.prefetch_size:
            raise Unsupported(f"prefetch_size!=0 ({method.prefetch_size})")
        channel.core.qos(method.prefetch_count, method.global_)
        self._send_method(number, spec.Basic.QosOk())

    def on_basic_consume(self, channel, number, method):
        def announce(consumer_tag):
            if not method.nowait:
                self._send_method(number, spec.Basic.ConsumeOk(consumer_tag=consumer_tag))

        channel.core.consume(method.queue, method.consumer_tag, method.no_ack, method.exclusive,
                             method.arguments, announce)

    def on_basic_cancel(self, channel, number, method):
        channel.core.cancel(method.consumer_tag)
        self._reply(number, method, spec.Basic.CancelOk(consumer_tag=method.consumer_tag))

    def on_basic_get(self, channel, number, method):
        got = channel.core.get(method.queue, method.no_ack)
        if got is None:
            self._send_method(number, spec.Basic.GetEmpty())
            return
        delivery_tag, message, message_count = got
        self._write_content(content_frames(method_parts(spec.Basic.GetOk(
            delivery_tag=delivery_tag, redelivered=message.redelivered, exchange=message.exchange,
            routing_key=message.routing_key, message_count=message_count), number), number, message,
            self.frame_max))

    def on_basic_ack(self, channel, number, method):
        self._settle(channel, channel.core.ack, (method.delivery_tag, method.multiple), method.multiple)

    def on_basic_nack(self, channel, number, method):
        self._settle(channel, channel.core.nack, (method.delivery_tag, method.multiple, method.requeue),
                     method.multiple)

    def on_basic_reject(self, channel, number, method):
        self._settle(channel, channel.core.reject, (method.delivery_tag, method.requeue), False)

    def _settle(self, channel, operation, arguments, multiple):
        if channel.tx is None:
            operation(*arguments)
            return
        # As in RabbitMQ, an unknown (or already settled) tag is refused when it arrives,
        # not at commit.
        channel.tx_settled.update(channel.core.tags_settled_by(arguments[0], multiple, channel.tx_settled))
        channel.tx.append((operation, arguments))

    def on_basic_recover(self, channel, number, method):
        if not method.requeue:
            raise Unsupported("requeue=false")
        channel.core.recover()
        if isinstance(method, spec.Basic.Recover):
            self._send_method(number, spec.Basic.RecoverOk())

    # -- confirms and transactions ---------------------------------------------------------

    def on_confirm_select(self, channel, number, method):
        if channel.tx is not None:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        channel.core.confirm_select()
        self._reply(number, method, spec.Confirm.SelectOk())

    def on_tx_select(self, channel, number, method):
        if channel.core.confirming:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        if channel.tx is None:
            channel.tx = []
        self._send_method(number, spec.Tx.SelectOk())

    def on_tx_commit(self, channel, number, method):
        if channel.tx is None:
            raise PreconditionFailed("channel is not transactional")
        operations, channel.tx = channel.tx, []
        channel.tx_settled.clear()
        channel.core.commit(operations)
        if not channel.core.closed:     # else the broker closed it meanwhile, and said why
            self._send_method(number, spec.Tx.CommitOk())

    def on_tx_rollback(self, channel, number, method):
        if channel.tx is None:
            raise PreconditionFailed("channel is not transactional")
        channel.tx = []
        channel.tx_settled.clear()
        self._send_method(number, spec.Tx.RollbackOk())

    # -- the core's sink -----------------------------------------------------------------

    def deliver(self, channel_number, consumer_tag, delivery_tag, message):
        self._write_content(content_frames(deliver_method(
            channel_number, consumer_tag, delivery_tag, message.redelivered, message.exchange,
            message.routing_key), channel_number, message, self.frame_max))

    def consumer_cancelled(self, channel_number, consumer_tag):
        if self._client_capability("consumer_cancel_notify"):
            self._send_method(channel_number, spec.Basic.Cancel(consumer_tag=consumer_tag, nowait=True))

    def channel_closed(self, channel_number, exc):
        self._channel_error(channel_number, exc, None)

    def message_returned(self, channel_number, reply_code, reply_text, message):
        self._write_content(content_frames(method_parts(spec.Basic.Return(
            reply_code=reply_code, reply_text=reply_text, exchange=message.exchange,
            routing_key=message.routing_key), channel_number), channel_number, message, self.frame_max))

    def publish_confirmed(self, channel_number, delivery_tag, multiple, ack):
        channel = self.channels.get(channel_number)
        if channel is None or channel.closing:
            return      # the publish closed its channel: RabbitMQ confirms nothing more on it
        self._write(confirm_frame(channel_number, delivery_tag, multiple, ack))

    # -- frames out ----------------------------------------------------------------------

    def _reply(self, number, method, reply):
        if not getattr(method, "nowait", False):
            self._send_method(number, reply)

    def _send_method(self, number, method):
        self._write(method_frame(method, number))

    def _write_content(self, frames):
        """A message's frames as content_frames gives them: bytes, or a big body's buffers."""
        if frames.__class__ is bytes:
            self._write(frames)
        else:
            self._write_buffers(frames)

    def take_output_buffers(self):
        buffers = super().take_output_buffers()
        if buffers:
            self._last_sent = time.monotonic()
        return buffers


_CHANNEL_METHODS = {
    spec.Channel.Close: AmqpConnection.on_channel_close,
    spec.Channel.Flow: AmqpConnection.on_channel_flow,
    spec.Exchange.Declare: AmqpConnection.on_exchange_declare,
    spec.Exchange.Delete: AmqpConnection.on_exchange_delete,
    spec.Exchange.Bind: AmqpConnection.on_exchange_bind,
    spec.Exchange.Unbind: AmqpConnection.on_exchange_unbind,
    spec.Queue.Declare: AmqpConnection.on_queue_declare,
    spec.Queue.Bind: AmqpConnection.on_queue_bind,
    spec.Queue.Unbind: AmqpConnection.on_queue_unbind,
    spec.Queue.Purge: AmqpConnection.on_queue_purge,
    spec.Queue.Delete: AmqpConnection.on_queue_delete,
    spec.Basic.Publish: AmqpConnection.on_basic_publish,
    spec.Basic.Qos: AmqpConnection.on_basic_qos,
    spec.Basic.Consume: AmqpConnection.on_basic_consume,
    spec.Basic.Cancel: AmqpConnection.on_basic_cancel,
    spec.Basic.Get: AmqpConnection.on_basic_get,
    spec.Basic.Ack: AmqpConnection.on_basic_ack,
    spec.Basic.Nack: AmqpConnection.on_basic_nack,
    spec.Basic.Reject: AmqpConnection.on_basic_reject,
    spec.Basic.Recover: AmqpConnection.on_basic_recover,
    spec.Basic.RecoverAsync: AmqpConnection.on_basic_recover,
    spec.Confirm.Select: AmqpConnection.on_confirm_select,
    spec.Tx.Select: AmqpConnection.on_tx_select,
    spec.Tx.Commit: AmqpConnection.on_tx_commit,
    spec.Tx.Rollback: AmqpConnection.on_tx_rollback,
}
