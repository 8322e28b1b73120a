"""The blocking client's AMQP 0-9-1 wire: the requests of PROTOCOL.md that connection.py's
Channel speaks, as AMQP methods, and the frames that come back as the replies and events
those requests' lines would have carried. So the Channel code, its errors and their reply
codes are the same whether a program talks to GreenMQ's JSON-lines port, GreenMQ's AMQP
port or any AMQP broker (RabbitMQ).

It is written on pamqp (GreenMQ's AMQP codec already) rather than around pika: pika would
bring a second connection, thread and callback model under this one, and its own
exceptions to translate back. It maps properties with helpers of its own: the client
imports nothing of the broker's modules (amqp_protocol.py included).
"""

import collections
import struct

from pamqp import body as amqp_body
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp import heartbeat as amqp_heartbeat

from greenmq.client_channels import ReopenedChannels
from greenmq.client_errors import GreenMQError, refuse_large_body
from greenmq.properties import from_amqp, to_amqp

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


class AmqpWire:
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
        self._channels = ReopenedChannels()
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
        self._channels.requested(channel, op, fields)
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
        refuse_large_body(len(body), self._connection.max_message_bytes)
        frames = [amqp_frame.marshal(amqp.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                        mandatory=mandatory), channel),
                  amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), to_amqp(properties)),
                                     channel)]
        step = self._frame_max - _AMQP_FRAME_OVERHEAD
        for start in range(0, len(body), step):
            frames.append(amqp_frame.marshal(amqp_body.ContentBody(body[start:start + step]), channel))
        self._channels.published(channel)
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
        event["properties"] = from_amqp(properties)
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
        """The broker's close, a refused login's included: an event, as over JSON lines."""
        self._send(amqp.Connection.CloseOk(), 0)
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
        events, settings = self._channels.closed(channel)
        self._events += events
        self._send(amqp.Channel.Open(), channel)
        awaiting.append((None, "channel.open"))
        for op, fields in settings:
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
                             "delivery_tag": confirm.delivery_tag + self._channels.tag_offset[channel],
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
