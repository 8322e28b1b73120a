"""The blocking client's JSON-lines wire: GreenMQ's own protocol (PROTOCOL.md) under the
requests and events that connection.py's Channel speaks, which are that protocol's own
lines, so this wire mostly encodes and decodes them.

Apart from the connection so that each wire is read, and changed, on its own; the
other one is client_amqp.py. The publish line is on every message's path: its common
form is formatted directly (see `JsonLinesWire.publish`).
"""

import base64
import json

from greenmq.client_channels import ReopenedChannels
from greenmq.client_errors import refuse_large_body
from greenmq.lines import max_line_bytes_for, whole_lines


# What a broker that does not say otherwise in its `hello` reply accepts: RabbitMQ's default
# max_message_size, and the line that carries such a body in base64.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = max_line_bytes_for(DEFAULT_MAX_MESSAGE_BYTES)


_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode
_quote = json.encoder.encode_basestring_ascii

# The id of the requests this wire sends of its own (reopening a channel the broker closed),
# whose answers it keeps to itself.
_REOPENING = "greenmq-client-reopening"


class JsonLinesWire:
    """GreenMQ's own protocol (PROTOCOL.md): one request, reply or event a line of JSON."""

    # An empty line; either side gives the other up after two intervals of silence.
    HEARTBEAT = "\n"

    def __init__(self, connection):
        self._connection = connection
        self._received = b""           # the start of a line whose newline has not arrived
        self._measure_bodies_over = 0
        self._channels = ReopenedChannels()

    @staticmethod
    def join(lines):
        return "".join(lines).encode()

    def request(self, fields):
        self._channels.requested(fields.get("channel", 1), fields["op"], fields)
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
        self._channels.published(channel)
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
        refuse_large_body(len(data), self._connection.max_message_bytes)
        if "body_encoding" not in request and len(_quote(request["body"])) > 4 * -(-len(data) // 3) + 2:
            request["body"] = base64.b64encode(data).decode("ascii")
            request["body_encoding"] = "base64"

    def received(self, data):
        """The replies and events of every whole line in `data`."""
        lines, self._received = whole_lines(self._received, data)
        channels = self._channels
        for line in lines:
            if line:                    # an empty line is a heartbeat
                event = _decode(str(line, "utf-8"))
                kind = event.get("event")
                if kind == "ack" or kind == "nack":
                    if channels.tag_offset:
                        event["delivery_tag"] += channels.tag_offset[event.get("channel", 1)]
                elif kind == "channel_closed":
                    yield from self._channel_closed(event)
                    continue
                elif event.get("id") == _REOPENING and event.get("ok"):
                    continue
                yield event

    def _channel_closed(self, event):
        """The broker closed a channel (a consumer timeout): its error goes to the Channel,
        as a refusal closing an AMQP channel does, and the channel is reopened as it was."""
        channel = event["channel"]
        yield {"code": event["code"], "text": event["text"], "channel": channel}
        events, settings = self._channels.closed(channel)
        yield from events
        requests = [{"op": "channel.open", "channel": channel}] + [fields for _, fields in settings]
        self._connection._queue_answer("".join(_encode(dict(fields, id=_REOPENING)) + "\n" for fields in requests))
