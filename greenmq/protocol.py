"""The JSON-lines protocol (specified in PROTOCOL.md): one JSON object per line each way.

`JsonLinesProtocol` never touches a socket: `data_received(bytes)` parses lines and calls
the core; replies, deliveries and events collect as encoded lines until the owner of the
socket (transport.py) takes them with `take_output()`.
"""

import base64
import binascii
import json
import logging
import re
import time

from . import logs
from .access import MONITORING
from .config import HELLO_TIMEOUT_SECONDS
from .errors import (BadSyntax, BrokerError, CommandInvalid, ConnectionForced, FrameError,
                    InternalError, PreconditionFailed, Unsupported)
from .lines import max_line_bytes_for, whole_lines
from .message import (DEFAULT_MAX_MESSAGE_BYTES, json_value, message_too_large, properties_from_request,
                      properties_with_stream_offset)
from .node import SERVER_NAME, VERSION
from .policy import POLICY
from .request_fields import base64_bytes, field, flag, string_list
from .transport import SCATTERED_BODY_BYTES, FrontEndConnection

log = logging.getLogger("greenmq.protocol")

PROTOCOL_VERSION = 1

# JSON nests no deeper than this (a request is 1, its properties 2, their headers 3):
# .NET's System.Text.Json allows 64 by default and serde_json 128. Python's decoder would
# recurse until RecursionError on a line of 100,000 '['; the limit is checked first.
MAX_NESTING_DEPTH = 64

# A heartbeat is an empty line. Either side sends one when it has sent nothing for half
# the negotiated interval and gives the other up after two intervals of silence, as AMQP
# peers do. The interval is the client's choice, in AMQP's range of a short.
HEARTBEAT_LINE = b"\n"
MAX_HEARTBEAT_SECONDS = 65535


_encode = json.JSONEncoder(separators=(",", ":"), default=json_value).encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once
_quote = json.encoder.encode_basestring_ascii

# The strings of a JSON text, so brackets inside them are not counted as nesting.
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
# What bytes.strip() strips: a line of only these is a heartbeat, not an error.
_JSON_WHITESPACE = " \t\n\r\x0b\x0c"
# The ASCII bytes a JSON string (as encode_basestring_ascii writes it) cannot carry as they
# are. Looked for by deleting them (bytes.translate: 1 ms a MiB, where a regular expression
# took 6 ms and base64 takes 4).
_ESCAPED_ASCII = bytes(range(32)) + b'"\\\x7f'




class JsonLinesProtocol(FrontEndConnection):
    """One client connection speaking JSON lines."""

    name = "JSON-lines"

    def __init__(self, node, peer, max_line_bytes=None, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                 hello_timeout=HELLO_TIMEOUT_SECONDS):
        super().__init__(node, peer)
        self.hello_timeout = hello_timeout
        self.max_message_bytes = max_message_bytes
        self.max_line_bytes = max_line_bytes or max_line_bytes_for(max_message_bytes)
        self.heartbeat = 0
        self._hello_received = False
        self._partial = b""        # the start of a line whose newline has not arrived
        self._started = self._last_received = self._last_sent = time.monotonic()

    # -- bytes in ----------------------------------------------------------------------

    def data_received(self, data):
        if self.closed:
            return
        self._last_received = time.monotonic()
        lines, rest = whole_lines(self._partial, data)
        self._partial = rest
        limit = self.max_line_bytes
        for line in lines:
            if self.closed:
                return
            if len(line) > limit:
                return self._line_too_long()
            if line:
                self._handle_line(line)
        if len(rest) > limit:
            return self._line_too_long()
        if self.session is not None:
            self.session.flush_confirms()

    def unfinished_input_bytes(self):
        return len(self._partial)

    def _line_too_long(self):
        self.close(FrameError(f"line longer than {self.max_line_bytes} bytes"))

    def _handle_line(self, line):
        try:
            # bytes.decode costs half of str(line, "utf-8") (40 ns a line), which only a
            # memoryview of the read (a long line, lines.whole_lines) needs.
            text = line.decode() if line.__class__ is not memoryview else str(line, "utf-8")
        except UnicodeDecodeError as exc:
            self._send_error({}, BadSyntax(f"line is not valid UTF-8: {exc.reason} at byte {exc.start}"))
            return
        # Cheapest first: a plain publish has one '{', at its start, and no '['.
        if (("[" in text or "{" in text[1:]) and text.count("[") + text.count("{") > MAX_NESTING_DEPTH
                and _nesting_depth(text) > MAX_NESTING_DEPTH):
            self._send_error({}, BadSyntax(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels"))
            return
        try:
            request = _decode_line(text)
        except ValueError as exc:
            if text.strip(_JSON_WHITESPACE):
                self._send_error({}, BadSyntax(f"invalid JSON: {exc}"))
            return
        if type(request) is not dict:
            self._send_error({}, BadSyntax("a request must be a JSON object"))
            return
        if "\\" in text and ("\\ud" in text or "\\uD" in text):
            # Valid UTF-8 carries no lone surrogate; only a \u escape can make one, and no
            # other protocol (AMQP's strings are UTF-8) could carry it on. (A line without a
            # backslash, most of them, is passed by one search for a character, which is
            # several times cheaper than a search for a string.)
            try:
                json.dumps(request, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                self._send_error(request, BadSyntax("strings must be Unicode text: lone surrogates not allowed"))
                return
        op = request.get("op")
        handler = _HANDLERS.get(op) if type(op) is str else None
        try:
            if handler is None:
                raise Unsupported(f"unknown op {op!r}")
            if self.session is None and handler is not JsonLinesProtocol.op_hello:
                self.close(CommandInvalid("expected 'hello' as the first request"))
                return
            result = handler(self, request)
        except BrokerError as exc:
            self._send_error(request, exc)
        except ValueError as exc:
            self._send_error(request, BadSyntax(str(exc)))
        except MemoryError:
            raise       # the transport closes this connection, whose state is now in doubt
        except Exception:
            log.exception("error handling %r from %s", op, self.peer)
            self._send_error(request, InternalError(f"internal error handling '{op}'"))
        else:
            if result is not None:
                result["ok"] = True
                if "id" in request:
                    result["id"] = request["id"]
                self._send(result)

    # -- lines out ---------------------------------------------------------------------

    def _send(self, event):
        self._write((_encode(event) + "\n").encode())

    def take_output_buffers(self):
        buffers = super().take_output_buffers()
        if buffers:
            self._last_sent = time.monotonic()
        return buffers

    def tick(self, now):
        """The deadline for `hello`, then heartbeats both ways; None drops the peer."""
        if self.closed:
            return None
        if self.session is None:
            if self._hello_received:
                return 1.0      # its password is being checked (off the hub): no deadline now
            if now - self._started >= self.hello_timeout:
                log.info("JSON-lines client %s sent no 'hello' in %gs", self.peer, self.hello_timeout)
                self.close(ConnectionForced(f"no 'hello' within {self.hello_timeout:g} seconds"))
                return None
            # In short steps, so heartbeats that `hello` turns on start on time.
            return min(1.0, self._started + self.hello_timeout - now)
        if not self.heartbeat:
            return MAX_HEARTBEAT_SECONDS       # nothing more to watch on this connection
        if now - self._last_received > 2 * self.heartbeat and not self.paused:
            log.info("missed heartbeats from JSON-lines client %s, timeout: %ss", self.peer, self.heartbeat)
            self.close(ConnectionForced(f"missed heartbeats, timeout: {self.heartbeat}s"))
            return None
        if now - self._last_sent >= self.heartbeat / 2:
            self._write(HEARTBEAT_LINE)
        return self.heartbeat / 2

    def _send_error(self, request, exc):
        error = {"ok": False, "code": exc.code, "error": exc.name, "text": exc.text}
        if "id" in request:
            error["id"] = request["id"]
        if "op" in request:
            error["op"] = request["op"]
        if "channel" in request:
            error["channel"] = request["channel"]
        self._send(error)

    def close(self, exc=None):
        """End the connection; with a reason, sent as a close event, the last line.
        The transport calls this with 320 CONNECTION_FORCED when the broker stops."""
        if not self.closed:
            self.closed = True
            if exc is not None:
                self._send({"event": "close", "code": exc.code, "error": exc.name, "text": exc.text})
            self.connection_lost()

    # -- the core's sink -----------------------------------------------------------------

    def deliver(self, channel_number, consumer_tag, delivery_tag, message):
        # The hottest line the broker writes: formatted directly rather than through a dict.
        start = (f'{{"event":"deliver","channel":{channel_number},"consumer_tag":{_quote(consumer_tag)},'
                 f'"delivery_tag":{delivery_tag},"redelivered":{"true" if message.redelivered else "false"},')
        if len(message.body) < SCATTERED_BODY_BYTES:
            self._write(f'{start}{_message_json(message)}}}\n'.encode())
        else:
            self._write_buffers(_big_message_line(start, message))

    def reading_paused(self, reason):
        super().reading_paused(reason)
        self._send({"event": "blocked", "reason": reason})

    def reading_resumed(self):
        super().reading_resumed()
        self._send({"event": "unblocked"})

    def consumer_cancelled(self, channel_number, consumer_tag):
        self._send({"event": "cancel", "channel": channel_number, "consumer_tag": consumer_tag})

    def channel_closed(self, channel_number, exc):
        self.session.close_channel(channel_number)
        self._send({"event": "channel_closed", "channel": channel_number, "code": exc.code, "error": exc.name,
                    "text": exc.text})

    def message_returned(self, channel_number, reply_code, reply_text, message):
        self._write_buffers(_with_message({"event": "return", "channel": channel_number, "reply_code": reply_code,
                                   "reply_text": reply_text}, message))

    def publish_confirmed(self, channel_number, delivery_tag, multiple, ack):
        self._send({"event": "ack" if ack else "nack", "channel": channel_number,
                    "delivery_tag": delivery_tag, "multiple": multiple})

    # -- requests ----------------------------------------------------------------------

    def _channel(self, request):
        number = request.get("channel", 1)
        if type(number) is not int:
            raise BadSyntax("field 'channel' must be an integer")
        return self.session.channel(number)

    def op_hello(self, request):
        if self.session is not None:
            raise CommandInvalid("'hello' was already received on this connection")
        version = field(request, "protocol", int, PROTOCOL_VERSION)
        heartbeat = field(request, "heartbeat", int, 0)
        if not 0 <= heartbeat <= MAX_HEARTBEAT_SECONDS:
            raise BadSyntax(f"field 'heartbeat' must be between 0 and {MAX_HEARTBEAT_SECONDS}")
        if version != PROTOCOL_VERSION:
            self.close(CommandInvalid(f"protocol version {version} is not supported; this broker speaks {PROTOCOL_VERSION}"))
            return None
        self._hello_received = True
        try:
            user = self.node.authenticate(field(request, "user", str, "guest"),
                                          field(request, "password", str, "guest"), self.peer)
            if self.closed:
                return None     # closed (the broker stopping) while the password was checked
            self.session = self.node.open_session(user, field(request, "vhost", str, "/"), self.peer,
                                                  "json-lines", self, field(request, "client", dict, None))
            self.session.open_channel(1)
        except BrokerError as exc:
            self.close(exc)
            return None
        self.heartbeat = heartbeat
        return {"server": SERVER_NAME, "version": VERSION, "protocol": PROTOCOL_VERSION,
                "max_line_bytes": self.max_line_bytes, "max_message_bytes": self.max_message_bytes,
                "heartbeat": heartbeat}

    def op_close(self, request):
        """The client is done: answer, so it knows everything before was handled, and end."""
        self._send({"ok": True, "id": request["id"]} if "id" in request else {"ok": True})
        self.close()

    def op_channel_open(self, request):
        self.session.open_channel(field(request, "channel", int))
        return {}

    def op_channel_close(self, request):
        self.session.close_channel(field(request, "channel", int))
        return {}

    def op_exchange_declare(self, request):
        self.session.vhost.declare_exchange(
            field(request, "exchange", str), field(request, "type", str, "direct"),
            flag(request, "passive"), flag(request, "durable"), flag(request, "auto_delete"),
            flag(request, "internal"), field(request, "arguments", dict, None), self.session)
        return {}

    def op_exchange_delete(self, request):
        self.session.vhost.delete_exchange(field(request, "exchange", str), flag(request, "if_unused"),
                                           self.session)
        return {}

    def op_queue_declare(self, request):
        queue = self.session.vhost.declare_queue(
            field(request, "queue", str, ""), flag(request, "passive"), flag(request, "durable"),
            flag(request, "exclusive"), flag(request, "auto_delete"),
            field(request, "arguments", dict, None), self.session)
        return {"queue": queue.name, "message_count": queue.message_count,
                "consumer_count": len(queue.consumers)}

    def op_queue_bind(self, request):
        self.session.vhost.bind(*self._binding(request), owner=self.session)
        return {}

    def op_queue_unbind(self, request):
        self.session.vhost.unbind(*self._binding(request), owner=self.session)
        return {}

    def _binding(self, request):
        return (field(request, "queue", str), field(request, "exchange", str),
                field(request, "routing_key", str, ""), field(request, "arguments", dict, None))

    def op_exchange_bind(self, request):
        self.session.vhost.bind_exchange(*self._exchange_binding(request), owner=self.session)
        return {}

    def op_exchange_unbind(self, request):
        self.session.vhost.unbind_exchange(*self._exchange_binding(request), owner=self.session)
        return {}

    def _exchange_binding(self, request):
        return (field(request, "destination", str), field(request, "source", str),
                field(request, "routing_key", str, ""), field(request, "arguments", dict, None))

    def op_queue_purge(self, request):
        return {"message_count": self.session.vhost.purge_queue(field(request, "queue", str), self.session)}

    def op_queue_delete(self, request):
        count = self.session.vhost.delete_queue(
            field(request, "queue", str), flag(request, "if_unused"), flag(request, "if_empty"),
            self.session)
        return {"message_count": count}

    def op_publish(self, request):
        channel = self._channel(request)
        self.publisher = True
        body = request.get("body", "")
        if type(body) is not str:
            raise BadSyntax("field 'body' must be a string")
        encoding = request.get("body_encoding")
        if encoding is None:
            body = body.encode()
        elif encoding == "base64":
            body = base64_bytes(body, "body")
        else:
            raise BadSyntax(f"unknown body_encoding {encoding!r}; use \"base64\" or leave it out")
        if len(body) > self.max_message_bytes:
            raise message_too_large(len(body), self.max_message_bytes)
        properties = request.get("properties")
        if properties is not None:
            properties = properties_from_request(properties)
        exchange = request.get("exchange", "")
        routing_key = request.get("routing_key", "")
        mandatory = request.get("mandatory", False)
        if type(exchange) is not str or type(routing_key) is not str or type(mandatory) is not bool:
            # Not the common case checked inline above: the full checks, which name the field.
            exchange = field(request, "exchange", str, "")
            routing_key = field(request, "routing_key", str, "")
            mandatory = flag(request, "mandatory")
        channel.publish(exchange, routing_key, body, properties, mandatory)

    def op_consume(self, request):
        channel = self._channel(request)
        reply = {}

        def announce(consumer_tag):
            reply.update(ok=True, consumer_tag=consumer_tag)
            if "id" in request:
                reply["id"] = request["id"]
            self._send(reply)

        channel.consume(field(request, "queue", str), field(request, "consumer_tag", str, ""),
                        flag(request, "no_ack"), flag(request, "exclusive"),
                        field(request, "arguments", dict, None), announce)

    def op_cancel(self, request):
        self._channel(request).cancel(field(request, "consumer_tag", str),
                                      flag(request, "requeue", True))
        return {}

    def op_get(self, request):
        got = self._channel(request).get(field(request, "queue", str), flag(request, "no_ack"))
        if got is None:
            return {"empty": True}
        delivery_tag, message, message_count = got
        reply = {"empty": False, "delivery_tag": delivery_tag, "redelivered": message.redelivered,
                 "message_count": message_count, "ok": True}
        if "id" in request:
            reply["id"] = request["id"]
        self._write_buffers(_with_message(reply, message))

    def op_ack(self, request):
        self._channel(request).ack(_tag(request), flag(request, "multiple"))

    def op_nack(self, request):
        self._channel(request).nack(_tag(request), flag(request, "multiple"), flag(request, "requeue", True))

    def op_reject(self, request):
        self._channel(request).reject(_tag(request), flag(request, "requeue", True))

    def op_recover(self, request):
        self._channel(request).recover()
        return {}

    def op_qos(self, request):
        prefetch_count = field(request, "prefetch_count", int, 0)
        if not 0 <= prefetch_count <= 65535:
            raise BadSyntax("field 'prefetch_count' must be between 0 and 65535")
        self._channel(request).qos(prefetch_count, flag(request, "global"))
        return {}

    def op_confirm_select(self, request):
        self._channel(request).confirm_select()
        return {}

    def op_vhost_add(self, request):
        """As RabbitMQ's HTTP API does, the user who adds a vhost gets full rights on it."""
        self.node.check_tag(self.session.user)
        name = field(request, "vhost", str)
        self.node.add_vhost(name)
        self.node.set_permissions(self.session.user, name, ".*", ".*", ".*")
        return {}

    def op_vhost_delete(self, request):
        self.node.check_tag(self.session.user)
        name = field(request, "vhost", str)
        if name == self.session.vhost.name:
            # Deleting it would close this connection before its reply could be read.
            raise PreconditionFailed(f"cannot delete vhost '{name}' from a connection to it")
        self.node.delete_vhost(name)
        return {}

    # -- operators' requests (greenmqctl) --------------------------------------------------

    def _listed_vhost(self, request):
        """The vhost a listing is of: this connection's, or the one `vhost` names, which
        the user must have permissions in or be tagged monitoring to see."""
        name = field(request, "vhost", str, self.session.vhost.name)
        vhost = self.node.vhost(name)
        if (self.session.user, name) not in self.node.permissions:
            self.node.check_tag(self.session.user, MONITORING)
        return vhost

    def op_list_exchanges(self, request):
        return {"items": self._listed_vhost(request).list_exchanges()}

    def op_list_queues(self, request):
        return {"items": self._listed_vhost(request).list_queues()}

    def op_list_bindings(self, request):
        return {"items": self._listed_vhost(request).list_bindings()}

    def op_list_consumers(self, request):
        return {"items": self._listed_vhost(request).list_consumers()}

    def op_list_connections(self, request):
        self.node.check_tag(self.session.user, MONITORING)
        return {"items": self.node.list_connections()}

    def op_list_channels(self, request):
        self.node.check_tag(self.session.user, MONITORING)
        return {"items": self.node.list_channels()}

    def op_list_vhosts(self, request):
        self.node.check_tag(self.session.user, MONITORING)
        return {"items": self.node.list_vhosts()}

    def op_status(self, request):
        self.node.check_tag(self.session.user, MONITORING)
        return self.node.status()

    def op_list_users(self, request):
        self.node.check_tag(self.session.user)
        return {"items": self.node.list_users()}

    def op_list_permissions(self, request):
        self.node.check_tag(self.session.user)
        return {"items": self.node.list_permissions(vhost=field(request, "vhost", str, None),
                                                    user=field(request, "user", str, None))}

    def op_user_add(self, request):
        self.node.check_tag(self.session.user)
        self.node.add_user(field(request, "user", str), field(request, "password", str), string_list(request, "tags"))
        return {}

    def op_user_delete(self, request):
        self.node.check_tag(self.session.user)
        self.node.delete_user(field(request, "user", str))
        return {}

    def op_user_change_password(self, request):
        self.node.check_tag(self.session.user)
        self.node.change_password(field(request, "user", str), field(request, "password", str))
        return {}

    def op_user_clear_password(self, request):
        self.node.check_tag(self.session.user)
        self.node.clear_password(field(request, "user", str))
        return {}

    def op_user_set_tags(self, request):
        self.node.check_tag(self.session.user)
        self.node.set_user_tags(field(request, "user", str), string_list(request, "tags"))
        return {}

    def op_permissions_set(self, request):
        self.node.check_tag(self.session.user)
        self.node.set_permissions(field(request, "user", str), field(request, "vhost", str),
                                  field(request, "configure", str), field(request, "write", str),
                                  field(request, "read", str))
        return {}

    def op_permissions_clear(self, request):
        self.node.check_tag(self.session.user)
        self.node.clear_permissions(field(request, "user", str), field(request, "vhost", str))
        return {}

    def op_limits_set(self, request):
        self.node.check_tag(self.session.user)
        self.node.set_limits(field(request, "kind", str), field(request, "name", str), field(request, "limits", dict))
        return {}

    def op_list_limits(self, request):
        self.node.check_tag(self.session.user)
        return {"items": self.node.list_limits(field(request, "kind", str), field(request, "name", str, None))}

    def op_policy_set(self, request):
        """A policy (`kind` "policy", the default) or operator policy ("operator_policy")."""
        kind, vhost = field(request, "kind", str, POLICY), field(request, "vhost", str)
        self.node.check_policy_access(self.session.user, vhost, kind)
        self.node.vhost(vhost).set_policy(kind, field(request, "name", str), request.get("pattern"),
                                          request.get("definition"), request.get("priority", 0),
                                          request.get("apply_to", "all"))
        return {}

    def op_policy_clear(self, request):
        kind, vhost = field(request, "kind", str, POLICY), field(request, "vhost", str)
        self.node.check_policy_access(self.session.user, vhost, kind)
        self.node.vhost(vhost).clear_policy(kind, field(request, "name", str))
        return {}

    def op_list_policies(self, request):
        kind, vhost = field(request, "kind", str, POLICY), field(request, "vhost", str)
        self.node.check_policy_access(self.session.user, vhost, kind)
        return {"items": self.node.vhost(vhost).list_policies(kind)}

    def op_connection_close(self, request):
        self.node.check_tag(self.session.user)
        self.node.close_connection(field(request, "name", str),
                                   field(request, "reason", str, "closed by an operator"))
        return {}

    def op_definitions_export(self, request):
        self.node.check_tag(self.session.user)
        document = self.node.export_definitions(flag(request, "rabbitmq_hashes_only"))
        left_out = sorted(set(self.node.users) - {user["name"] for user in document["users"]})
        return {"definitions": document, "users_left_out": left_out}

    def op_definitions_import(self, request):
        self.node.check_tag(self.session.user)
        return {"imported": self.node.import_definitions(field(request, "definitions", dict))}

    def op_logs_reopen(self, request):
        self.node.check_tag(self.session.user)
        return {"files": logs.reopen_log_files()}


_HANDLERS = {
    "hello": JsonLinesProtocol.op_hello,
    "close": JsonLinesProtocol.op_close,
    "channel.open": JsonLinesProtocol.op_channel_open,
    "channel.close": JsonLinesProtocol.op_channel_close,
    "exchange.declare": JsonLinesProtocol.op_exchange_declare,
    "exchange.delete": JsonLinesProtocol.op_exchange_delete,
    "exchange.bind": JsonLinesProtocol.op_exchange_bind,
    "exchange.unbind": JsonLinesProtocol.op_exchange_unbind,
    "queue.declare": JsonLinesProtocol.op_queue_declare,
    "queue.bind": JsonLinesProtocol.op_queue_bind,
    "queue.unbind": JsonLinesProtocol.op_queue_unbind,
    "queue.purge": JsonLinesProtocol.op_queue_purge,
    "queue.delete": JsonLinesProtocol.op_queue_delete,
    "publish": JsonLinesProtocol.op_publish,
    "consume": JsonLinesProtocol.op_consume,
    "cancel": JsonLinesProtocol.op_cancel,
    "get": JsonLinesProtocol.op_get,
    "ack": JsonLinesProtocol.op_ack,
    "nack": JsonLinesProtocol.op_nack,
    "reject": JsonLinesProtocol.op_reject,
    "recover": JsonLinesProtocol.op_recover,
    "qos": JsonLinesProtocol.op_qos,
    "confirm.select": JsonLinesProtocol.op_confirm_select,
    "vhost.add": JsonLinesProtocol.op_vhost_add,
    "vhost.delete": JsonLinesProtocol.op_vhost_delete,
    "list_exchanges": JsonLinesProtocol.op_list_exchanges,
    "list_queues": JsonLinesProtocol.op_list_queues,
    "list_bindings": JsonLinesProtocol.op_list_bindings,
    "list_consumers": JsonLinesProtocol.op_list_consumers,
    "list_connections": JsonLinesProtocol.op_list_connections,
    "list_channels": JsonLinesProtocol.op_list_channels,
    "list_vhosts": JsonLinesProtocol.op_list_vhosts,
    "list_users": JsonLinesProtocol.op_list_users,
    "list_permissions": JsonLinesProtocol.op_list_permissions,
    "status": JsonLinesProtocol.op_status,
    "user.add": JsonLinesProtocol.op_user_add,
    "user.delete": JsonLinesProtocol.op_user_delete,
    "user.change_password": JsonLinesProtocol.op_user_change_password,
    "user.clear_password": JsonLinesProtocol.op_user_clear_password,
    "user.set_tags": JsonLinesProtocol.op_user_set_tags,
    "permissions.set": JsonLinesProtocol.op_permissions_set,
    "permissions.clear": JsonLinesProtocol.op_permissions_clear,
    "limits.set": JsonLinesProtocol.op_limits_set,
    "list_limits": JsonLinesProtocol.op_list_limits,
    "policy.set": JsonLinesProtocol.op_policy_set,
    "policy.clear": JsonLinesProtocol.op_policy_clear,
    "list_policies": JsonLinesProtocol.op_list_policies,
    "connection.close": JsonLinesProtocol.op_connection_close,
    "definitions.export": JsonLinesProtocol.op_definitions_export,
    "definitions.import": JsonLinesProtocol.op_definitions_import,
    "logs.reopen": JsonLinesProtocol.op_logs_reopen,
}


# -- fields ------------------------------------------------------------------------------

def _tag(request):
    tag = field(request, "delivery_tag", int, 0)
    if tag < 0:
        raise BadSyntax("field 'delivery_tag' must not be negative")
    return tag


def _decode_line(text):
    """`_decode(text)`, in one call of the C scanner under it when `text` is one JSON value
    with no whitespace around it, as client libraries write lines: `decode` adds two
    regular-expression matches and a Python frame, which cost as much as the scan of a
    small publish. Anything else gets `decode`'s own answer, or its error."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:       # no value at the start: whitespace first, or not JSON
        return _decode(text)
    return value if end == len(text) else _decode(text)


def _nesting_depth(text):
    """How deep JSON `text` nests, counting no bracket inside a string; stops where the
    decoder would (at the end of the first value, or past the limit)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING_DEPTH:
                    break
        else:
            depth -= 1
            if depth <= 0:
                break
    return deepest


def _message_json(message):
    """The JSON members carrying a message: exchange, routing_key, body (text, or base64
    with body_encoding) and properties when there are any."""
    body = message.body
    if body.isascii():
        text, encoding = body.decode("ascii"), ""
    else:
        try:
            text, encoding = body.decode("utf-8"), ""
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(body).decode("ascii"), ',"body_encoding":"base64"'
    properties = message.properties if message.stream_offset is None else properties_with_stream_offset(message)
    properties = f',"properties":{_encode(properties)}' if properties else ""
    return (f'"exchange":{_quote(message.exchange)},"routing_key":{_quote(message.routing_key)},'
            f'"body":{_quote(text)}{encoding}{properties}')


def _big_message_line(start, message):
    """The line `start` (the event's own members, then a comma) + the message's members,
    for a body of SCATTERED_BODY_BYTES or more, as buffers with the body in one of its own:
    the body itself when JSON can carry its bytes as they are, else its base64 (encoded
    once, straight to bytes); text that needs escapes is escaped as for small bodies."""
    body = message.body
    if body.isascii() and len(body.translate(None, _ESCAPED_ASCII)) == len(body):
        text, encoding = body, b""
    elif body.isascii():
        text, encoding = _quote(body.decode("ascii"))[1:-1].encode(), b""
    else:
        try:
            text, encoding = _quote(body.decode("utf-8"))[1:-1].encode(), b""
        except UnicodeDecodeError:
            text, encoding = binascii.b2a_base64(body, newline=False), b',"body_encoding":"base64"'
    properties = f',"properties":{_encode(message.properties)}' if message.properties else ""
    return [f'{start}"exchange":{_quote(message.exchange)},"routing_key":{_quote(message.routing_key)},"body":"'.encode(),
            text, b'"' + encoding + f'{properties}}}\n'.encode()]


def _with_message(event, message):
    """One line, as buffers: the members of `event`, then the message's."""
    if len(message.body) < SCATTERED_BODY_BYTES:
        return [f"{_encode(event)[:-1]},{_message_json(message)}}}\n".encode()]
    return _big_message_line(f"{_encode(event)[:-1]},", message)


