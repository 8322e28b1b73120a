"""Bad input over raw sockets: each gets a clear error, the connection keeps working where
it can, other clients are not touched and no queued message is lost. The session broker
fixture also fails the run if anything here made the broker log a traceback."""

import json
import random
import socket
import time

import pytest

from greenmq import connection
from greenmq.lines import max_line_bytes_for
from tests.broker_process import BrokerProcess

TIMEOUT = 10.0


class RawClient:
    def __init__(self, port, hello=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""
        if hello:
            self.send({"op": "hello", "id": "hello"})
            assert self.read()["ok"] is True

    def send(self, *requests):
        self.send_raw(b"".join(json.dumps(r).encode() + b"\n" for r in requests))

    def send_raw(self, data):
        self.sock.sendall(data)

    def read(self):
        """The next line from the broker, decoded; None once it closed the connection."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, request):
        self.send(request)
        return self.read()

    def still_works(self):
        reply = self.call({"op": "queue.declare", "id": "check", "queue": "", "exclusive": True})
        return reply["ok"] is True and reply["id"] == "check"

    def close(self):
        self.sock.close()


@pytest.fixture
def raw(broker):
    client = RawClient(broker.port)
    yield client
    client.close()


def assert_error(reply, code, *words):
    assert reply["ok"] is False, reply
    assert reply["code"] == code, reply
    for word in words:
        assert word in reply["text"], reply


@pytest.mark.parametrize("line, words", [
    (b"not json", ["invalid JSON"]),
    (b"{\"op\": \"publish\"", ["invalid JSON"]),
    (b"{\"op\": \"publish\"} {}", ["invalid JSON", "Extra data"]),
    (b"{\"op\": \"publish\"}x", ["invalid JSON", "Extra data"]),
    # escaped in capitals, as other languages' JSON libraries do
    (b"{\"op\": \"publish\", \"routing_key\": \"\\uD800\"}", ["must be Unicode text", "lone surrogates"]),
    (b"[1, 2]", ["must be a JSON object"]),
    (b"42", ["must be a JSON object"]),
    (b"\"publish\"", ["must be a JSON object"]),
    (b"null", ["must be a JSON object"]),
    (b"\xff\xfe{}", ["not valid UTF-8"]),
    (b"{\"op\": \"publish\", \"body\": \"\xc3\x28\"}", ["not valid UTF-8"]),
])
def test_unparseable_lines_get_a_syntax_error_and_the_connection_goes_on(raw, line, words):
    raw.send_raw(line + b"\n")
    assert_error(raw.read(), 502, *words)
    assert raw.still_works()


@pytest.mark.parametrize("request_, code, words", [
    ({"op": "frobnicate"}, 540, ["unknown op 'frobnicate'"]),
    ({"op": 7}, 540, ["unknown op 7"]),
    ({"id": 1}, 540, ["unknown op None"]),
    ({"op": "queue.declare", "durable": "yes"}, 502, ["'durable' must be true or false"]),
    ({"op": "queue.bind", "queue": "q"}, 502, ["'exchange' is required"]),
    ({"op": "exchange.declare"}, 502, ["'exchange' is required"]),
    ({"op": "exchange.declare", "exchange": "x", "type": "fancy"}, 406, ["unknown exchange type 'fancy'"]),
    ({"op": "queue.declare", "queue": 5}, 502, ["'queue' must be a string"]),
    ({"op": "queue.declare", "queue": "q" * 256}, 406, ["longer than 255 bytes"]),
    ({"op": "queue.declare", "queue": "", "arguments": {"x-message-ttl": -1}}, 406, ["x-message-ttl"]),
    ({"op": "queue.declare", "queue": "", "arguments": {"x-expires": "soon"}}, 406, ["x-expires"]),
    ({"op": "queue.declare", "queue": "", "arguments": [1]}, 502, ["'arguments' must be an object"]),
    ({"op": "publish", "channel": "1"}, 502, ["'channel' must be an integer"]),
    ({"op": "publish", "channel": 9}, 504, ["channel 9"]),
    ({"op": "publish", "body": 5}, 502, ["'body' must be a string"]),
    ({"op": "publish", "body": "%%%", "body_encoding": "base64"}, 502, ["not valid base64"]),
    ({"op": "publish", "body": "x", "body_encoding": "rot13"}, 502, ["unknown body_encoding"]),
    ({"op": "publish", "body": "x", "properties": {"colour": "red"}}, 502, ["unknown property 'colour'"]),
    ({"op": "publish", "body": "x", "properties": {"delivery_mode": 3}}, 502, ["delivery_mode"]),
    ({"op": "publish", "body": "x", "properties": {"priority": 300}}, 502, ["priority"]),
    ({"op": "publish", "body": "x", "properties": {"headers": [1]}}, 502, ["headers"]),
    ({"op": "publish", "body": "x", "properties": {"expiration": "soon"}}, 406, ["invalid expiration 'soon'"]),
    ({"op": "publish", "body": "x", "properties": []}, 502, ["'properties' must be an object"]),
    ({"op": "publish", "body": "\ud800"}, 502, ["surrogate"]),
    ({"op": "publish", "exchange": None, "routing_key": 5}, 502, ["'routing_key' must be a string"]),
    ({"op": "publish", "mandatory": "yes"}, 502, ["'mandatory' must be true or false"]),
    ({"op": "publish", "exchange": "no-such-exchange"}, 404, ["no exchange 'no-such-exchange' in vhost '/'"]),
    ({"op": "ack", "delivery_tag": 99}, 406, ["unknown delivery tag 99"]),
    ({"op": "ack", "delivery_tag": -1}, 502, ["must not be negative"]),
    ({"op": "ack", "delivery_tag": 10**30}, 406, ["unknown delivery tag"]),
    ({"op": "nack", "delivery_tag": 3, "multiple": True}, 406, ["unknown delivery tag 3"]),
    ({"op": "reject", "delivery_tag": "1"}, 502, ["'delivery_tag' must be an integer"]),
    ({"op": "qos", "prefetch_count": 70000}, 502, ["prefetch_count"]),
    ({"op": "get", "queue": "no-such-queue"}, 404, ["no queue 'no-such-queue' in vhost '/'"]),
    ({"op": "consume", "queue": "no-such-queue"}, 404, ["no queue 'no-such-queue'"]),
    ({"op": "channel.open", "channel": 0}, 530, ["channel number 0"]),
    ({"op": "channel.open", "channel": 70000}, 530, ["channel number 70000"]),
    ({"op": "channel.open", "channel": 1}, 504, ["second 'channel.open'"]),
    ({"op": "exchange.delete", "exchange": "amq.direct"}, 403, ["deletion of system exchange"]),
    ({"op": "queue.bind", "queue": "q", "exchange": ""}, 403, ["default exchange"]),
    ({"op": "hello"}, 503, ["already received"]),
])
def test_bad_requests_are_refused_by_code_and_name_the_problem(raw, request_, code, words):
    request_ = dict(request_, id="bad")
    reply = raw.call(request_)
    assert_error(reply, code, *words)
    assert reply["id"] == "bad"
    assert raw.still_works()


@pytest.mark.parametrize("request_id", [None, 1.5, [1, 2], {"nested": True}, "x" * 1000, 10**40])
def test_any_json_value_works_as_a_request_id(raw, request_id):
    reply = raw.call({"op": "queue.declare", "queue": "", "exclusive": True, "id": request_id})
    assert reply["ok"] is True and reply["id"] == request_id


def test_odd_but_valid_input_is_accepted(raw):
    for request in (
        {"op": "exchange.declare", "exchange": "unicode-ëxçhånge-名前", "type": "topic", "id": 1},
        {"op": "queue.declare", "queue": "unicode-qüeue-名前", "id": 2,
         "arguments": {"x-nested": {"a": [1, {"b": None}]}, "x-list": [1, 2]}},
        {"op": "queue.bind", "queue": "unicode-qüeue-名前", "exchange": "unicode-ëxçhånge-名前",
         "routing_key": "#", "arguments": {"list": [1, [2, 3]], "table": {"k": "v"}}, "id": 3},
        {"op": "queue.bind", "queue": "unicode-qüeue-名前", "exchange": "amq.headers",
         "arguments": {"x-match": "any", "n": [1, 2]}, "id": 4},
    ):
        assert raw.call(request)["ok"] is True
    raw.send({"op": "publish", "exchange": "amq.headers", "body": "h", "properties": {"headers": {"n": [1, 2]}}},
             {"op": "publish", "exchange": "unicode-ëxçhånge-名前", "routing_key": "ü.名", "body": "名前"})
    reply = raw.call({"op": "queue.declare", "queue": "unicode-qüeue-名前", "passive": True, "id": 5})
    assert reply["message_count"] == 2
    got = raw.call({"op": "get", "queue": "unicode-qüeue-名前", "no_ack": True, "id": 6})
    assert got["body"] == "h"
    got = raw.call({"op": "get", "queue": "unicode-qüeue-名前", "no_ack": True, "id": 7})
    assert (got["body"], got["routing_key"]) == ("名前", "ü.名")


def test_blank_lines_are_ignored(raw):
    raw.send_raw(b"\n\r\n   \n")
    assert raw.still_works()


def test_whitespace_around_a_request_and_crlf_line_ends_are_accepted(raw):
    raw.send_raw(b'{"op": "queue.declare", "queue": "", "exclusive": true, "id": "crlf"}\r\n'
                 b'\t {"op": "queue.declare", "queue": "", "exclusive": true, "id": "around"} \r\n')
    assert [raw.read()["id"], raw.read()["id"]] == ["crlf", "around"]


def test_requests_before_hello_close_the_connection_with_a_reason(broker):
    client = RawClient(broker.port, hello=False)
    client.send({"op": "queue.declare", "queue": ""})
    closing = client.read()
    assert closing["event"] == "close" and closing["code"] == 503
    assert "expected 'hello'" in closing["text"]
    assert client.read() is None


@pytest.mark.parametrize("hello, code, words", [
    ({"user": "guest", "password": "wrong"}, 403, ["Login was refused"]),
    ({"user": "nobody", "password": "guest"}, 403, ["Login was refused"]),
    ({"vhost": "/nowhere"}, 530, ["vhost /nowhere not found"]),
    ({"protocol": 99}, 503, ["protocol version 99 is not supported"]),
    ({"user": 5}, 502, ["'user' must be a string"]),
])
def test_a_refused_hello_closes_the_connection_with_a_reason(broker, hello, code, words):
    client = RawClient(broker.port, hello=False)
    client.send(dict(hello, op="hello", id=1))
    reply = client.read()
    if reply.get("event") == "close":
        assert reply["code"] == code and all(w in reply["text"] for w in words), reply
        assert client.read() is None
    else:   # a malformed hello is an ordinary refused request: the client may try again
        assert_error(reply, code, *words)
        assert client.call({"op": "hello", "id": 2})["ok"] is True


def test_a_line_over_the_limit_closes_only_that_connection():
    limit = max_line_bytes_for(1024)
    with BrokerProcess("--max-message-bytes", "1024") as broker:
        bystander = connection.Connection("127.0.0.1", broker.port)
        bystander.default_channel.queue_declare("kept")
        bystander.default_channel.basic_publish("", "kept", "safe")
        offender = RawClient(broker.port)
        offender.send({"op": "publish", "routing_key": "kept", "body": "x" * (limit + 1)})
        closing = offender.read()
        assert closing["event"] == "close" and closing["code"] == 501
        assert f"longer than {limit} bytes" in closing["text"]
        assert offender.read() is None
        partial = RawClient(broker.port)   # over the limit before any newline arrives
        partial.send_raw(b"{" + b" " * (limit + 1))
        assert partial.read()["code"] == 501
        assert bystander.default_channel.queue_declare("kept", passive=True).message_count == 1
        bystander.close()
        assert "Traceback" not in broker.log()


def test_a_client_vanishing_mid_line_harms_no_one(broker, name):
    with connection.Connection("127.0.0.1", broker.port) as conn:
        conn.default_channel.queue_declare(name)
        for n in range(5):
            conn.default_channel.basic_publish("", name, str(n))
        vanishing = RawClient(broker.port)
        vanishing.send_raw(b'{"op": "publish", "routing_key": "' + name.encode() + b'", "bo')
        vanishing.close()
        holder = RawClient(broker.port)     # takes two messages unacked, then vanishes
        holder.send({"op": "consume", "queue": name, "id": 1},
                    {"op": "publish", "routing_key": name, "body": "late"})
        holder.close()
        got = []
        for method, _, body in conn.default_channel.consume(name, auto_ack=True, inactivity_timeout=TIMEOUT):
            assert method is not None, got
            got.append(body)
            if len(got) == 6:
                break
        assert sorted(got) == [b"0", b"1", b"2", b"3", b"4", b"late"]


def test_double_ack_is_refused_and_the_message_stays_settled(raw, name):
    for request in ({"op": "queue.declare", "queue": name, "id": 1},):
        assert raw.call(request)["ok"]
    raw.send({"op": "publish", "routing_key": name, "body": "once"})
    got = raw.call({"op": "get", "queue": name, "id": 2})
    raw.send({"op": "ack", "delivery_tag": got["delivery_tag"]},
             {"op": "ack", "delivery_tag": got["delivery_tag"]})
    assert_error(raw.read(), 406, f"unknown delivery tag {got['delivery_tag']}")
    assert raw.call({"op": "queue.declare", "queue": name, "passive": True, "id": 3})["message_count"] == 0


def test_garbage_and_a_vanishing_publisher_leave_other_clients_and_queued_messages_alone(broker, name):
    keeper = RawClient(broker.port)
    assert keeper.call({"op": "queue.declare", "queue": name, "id": 1})["ok"] is True
    keeper.send(*({"op": "publish", "routing_key": name, "body": f"m{n}"} for n in range(20)))
    assert keeper.call({"op": "queue.declare", "queue": name, "passive": True, "id": 2})["message_count"] == 20
    vandal = RawClient(broker.port)
    vandal.send_raw(b"\x00\xff garbage\n[]\n{\"op\": {}}\n{\"op\": \"queue.purge\"}\n")
    assert [vandal.read()["code"] for _ in range(4)] == [502, 502, 540, 502]
    # A batch of publishes whose last line is cut off by the client going away: the whole
    # lines are routed, the partial one is dropped, nothing already queued is touched.
    batch = b"".join(json.dumps({"op": "publish", "routing_key": name, "body": f"b{n}"}).encode() + b"\n"
                     for n in range(30))
    vandal.send_raw(batch + b'{"op": "publish", "routing_key": "' + name.encode() + b'", "body": "cut')
    vandal.close()
    assert keeper.still_works()
    deadline = time.monotonic() + TIMEOUT
    while True:       # the broker reads the vandal's bytes on its own schedule: poll to a deadline
        count = keeper.call({"op": "queue.declare", "queue": name, "passive": True, "id": 3})["message_count"]
        if count == 50 or time.monotonic() > deadline:
            break
    assert count == 50
    bodies = [keeper.call({"op": "get", "queue": name, "no_ack": True, "id": n})["body"] for n in range(50)]
    assert bodies == [f"m{n}" for n in range(20)] + [f"b{n}" for n in range(30)]
    keeper.close()


def test_a_request_id_of_every_json_type_is_echoed_on_errors_too(raw):
    for request_id in (None, True, 0, -1, 2.5, "s", [None], {"a": {"b": []}}, 10**50):
        reply = raw.call({"op": "get", "queue": "no-such-queue", "id": request_id})
        assert_error(reply, 404, "no-such-queue")
        assert reply["id"] == request_id and reply["op"] == "get"


@pytest.mark.parametrize("request_, words", [
    ({"op": "channel.close", "channel": "2"}, ["'channel' must be an integer"]),
    ({"op": "channel.open"}, ["'channel' is required"]),
    ({"op": "cancel"}, ["'consumer_tag' is required"]),
    ({"op": "cancel", "consumer_tag": "c", "requeue": "no"}, ["'requeue' must be true or false"]),
    ({"op": "get", "queue": "q", "no_ack": 1}, ["'no_ack' must be true or false"]),
    ({"op": "qos", "prefetch_count": -1}, ["prefetch_count"]),
    ({"op": "qos", "prefetch_count": True}, ["'prefetch_count' must be an integer"]),
    ({"op": "ack", "delivery_tag": 1.0}, ["'delivery_tag' must be an integer"]),
    ({"op": "ack", "delivery_tag": True}, ["'delivery_tag' must be an integer"]),
    ({"op": "publish", "channel": True}, ["'channel' must be an integer"]),
    ({"op": "publish", "body": "x", "properties": {"priority": True}}, ["priority"]),
    ({"op": "publish", "body": "x", "properties": {"delivery_mode": True}}, ["delivery_mode"]),
    ({"op": "publish", "body": "x", "properties": {"timestamp": -1}}, ["timestamp"]),
    ({"op": "publish", "body": "x", "properties": {"timestamp": 1.5}}, ["timestamp"]),
    ({"op": "publish", "body": "x", "properties": {"content_type": 5}}, ["content_type"]),
    ({"op": "publish", "body": "QQ", "body_encoding": "base64"}, ["not valid base64"]),
    ({"op": "hello", "client": "me"}, ["already received"]),
])
def test_more_malformed_fields_are_refused_with_502_or_503(raw, request_, words):
    reply = raw.call(dict(request_, id="bad"))
    assert reply["code"] in (502, 503) and reply["ok"] is False, reply
    assert all(word in reply["text"] for word in words), reply
    assert raw.still_works()


@pytest.mark.parametrize("number", [0, -1, 2048, 10**30])
def test_channel_numbers_out_of_range_are_refused_and_requests_on_them_too(raw, number):
    assert_error(raw.call({"op": "channel.open", "channel": number, "id": 1}), 530, f"channel number {number}")
    assert_error(raw.call({"op": "qos", "channel": number, "id": 2}), 504, f"channel {number}")
    assert raw.still_works()


def test_a_closed_channel_refuses_requests_until_reopened(raw):
    assert raw.call({"op": "channel.open", "channel": 5, "id": 1})["ok"] is True
    assert raw.call({"op": "channel.close", "channel": 5, "id": 2})["ok"] is True
    assert_error(raw.call({"op": "get", "channel": 5, "queue": "q", "id": 3}), 504, "channel 5")
    assert raw.call({"op": "channel.open", "channel": 5, "id": 4})["ok"] is True
    assert_error(raw.call({"op": "get", "channel": 5, "queue": "no-such-queue", "id": 5}), 404, "no-such-queue")


def test_nested_and_list_valued_arguments_and_headers_round_trip(raw, name):
    arguments = {"deep": {"a": [1, {"b": [None, True, 2.5, "ü"]}]}, "big": 10**30}
    assert raw.call({"op": "queue.declare", "queue": name, "arguments": arguments, "id": 1})["ok"] is True
    assert raw.call({"op": "queue.bind", "queue": name, "exchange": "amq.headers", "id": 2,
                     "arguments": {"x-match": "all", "k": {"a": [1, 2]}}})["ok"] is True
    headers = {"k": {"a": [1, 2]}, "n": 2**63 - 1, "x": [[], {}]}
    raw.send({"op": "publish", "exchange": "amq.headers", "body": "h", "properties": {"headers": headers}})
    got = raw.call({"op": "get", "queue": name, "no_ack": True, "id": 3})
    assert got["body"] == "h" and got["properties"] == {"headers": headers}
    # Headers are AMQP tables, whose widest integer is 64-bit: an AMQP consumer must be able to get it.
    reply = raw.call({"op": "publish", "exchange": "amq.headers", "body": "h", "id": 5,
                      "properties": {"headers": {"k": {"a": [1, 2]}, "n": 10**30}}})
    assert_error(reply, 502, "outside AMQP's 64-bit range")
    listed = [q for q in raw.call({"op": "list_queues", "id": 4})["items"] if q["name"] == name]
    assert listed[0]["arguments"] == arguments


# -- inputs that once broke the broker (found as strict xfails, now fixed) ------------------

HUGE = 10**400        # JSON allows any integer; Python parses it exactly


@pytest.fixture
def own_broker():
    """Inputs that make the broker log a traceback get a broker of their own, so the shared
    one's no-traceback check stays about the rest of the suite."""
    with BrokerProcess() as process:
        yield process


def test_a_huge_x_message_ttl_is_refused_at_declare_not_on_every_publish(own_broker):
    client = RawClient(own_broker.port)
    reply = client.call({"op": "queue.declare", "queue": "ttl", "arguments": {"x-message-ttl": HUGE}, "id": 1})
    if reply["ok"]:
        client.send({"op": "publish", "routing_key": "ttl", "body": "x", "id": 2})
        after = client.call({"op": "queue.declare", "queue": "ttl", "passive": True, "id": 3})
        assert after["id"] == 3 and after["message_count"] == 1, after
    else:
        assert_error(reply, 406, "x-message-ttl")
    assert "Traceback" not in own_broker.log()


def test_a_huge_x_expires_is_refused_with_406(own_broker):
    client = RawClient(own_broker.port)
    reply = client.call({"op": "queue.declare", "queue": "exp", "arguments": {"x-expires": HUGE}, "id": 1})
    assert reply["ok"] is True or reply["code"] == 406, reply
    assert client.still_works()
    assert "Traceback" not in own_broker.log()


def test_a_huge_expiration_property_is_refused_or_kept(own_broker):
    client = RawClient(own_broker.port)
    assert client.call({"op": "queue.declare", "queue": "q", "id": 1})["ok"] is True
    # Short enough for an AMQP short string, far over the 2^32 - 1 ms RabbitMQ allows.
    client.send({"op": "publish", "routing_key": "q", "body": "x", "properties": {"expiration": str(10**40)}})
    reply = client.call({"op": "queue.declare", "queue": "q", "passive": True, "id": 2})
    if reply.get("id") == 2:
        assert reply["message_count"] == 1, reply
    else:
        assert_error(reply, 406, "expiration")
    assert "Traceback" not in own_broker.log()


@pytest.mark.parametrize("request_", [
    {"op": "publish", "routing_key": "\ud800", "body": "x"},
    {"op": "publish", "routing_key": "q", "body": "x", "properties": {"headers": {"k": "\udc00"}}},
    {"op": "publish", "routing_key": "q", "body": "x", "properties": {"message_id": "\ud800"}},
    {"op": "queue.declare", "queue": "\udc00-bad-input"},
    {"op": "exchange.declare", "exchange": "\udc00-bad-input"},
])
def test_lone_surrogates_anywhere_are_refused_like_in_the_body(own_broker, request_):
    client = RawClient(own_broker.port)
    # publish answers only when refused: the list that follows it gets the next reply either way
    client.send(dict(request_, id="bad"), {"op": "list_connections", "id": "next"})
    assert_error(client.read(), 502, "surrogate")
    assert client.read()["id"] == "next"


def test_a_message_with_a_lone_surrogate_never_reaches_an_amqp_consumer(own_broker):
    """AMQP strings are UTF-8: a JSON-lines client must not be able to route a message that
    an AMQP consumer could not be sent (it used to close that consumer's connection, 541)."""
    pika = pytest.importorskip("pika")
    client = RawClient(own_broker.port)
    for request in ({"op": "queue.declare", "queue": "s", "id": 1},
                    {"op": "queue.bind", "queue": "s", "exchange": "amq.topic", "routing_key": "#", "id": 2}):
        assert client.call(request)["ok"] is True
    reply = client.call({"op": "publish", "exchange": "amq.topic", "routing_key": "\ud800", "body": "x", "id": 3})
    assert_error(reply, 502, "surrogate")
    client.send({"op": "publish", "exchange": "amq.topic", "routing_key": "ok", "body": "x",
                 "properties": {"headers": {"emoji": "\U0001f600"}}})
    amqp = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{own_broker.amqp_port}/%2f"))
    try:
        channel = amqp.channel()
        method, properties, body = channel.basic_get("s", auto_ack=True)
        assert (method.routing_key, properties.headers) == ("ok", {"emoji": "\U0001f600"})
        assert channel.basic_get("s", auto_ack=True) == (None, None, None)
        assert channel.is_open
    finally:
        amqp.close()
    assert "Traceback" not in own_broker.log()


# Each operation with the fields it takes; a request may leave some out or add others.
_FUZZ_OPS = {
    "channel.open": (), "channel.close": (),      # of channel 2: channel 1 stays open
    "exchange.declare": ("exchange", "type", "durable", "auto_delete", "internal", "passive", "arguments"),
    "exchange.delete": ("exchange", "if_unused"),
    "queue.declare": ("queue", "durable", "exclusive", "auto_delete", "passive", "arguments"),
    "queue.bind": ("queue", "exchange", "routing_key", "arguments"),
    "queue.unbind": ("queue", "exchange", "routing_key", "arguments"),
    "queue.purge": ("queue",), "queue.delete": ("queue", "if_unused", "if_empty"),
    "publish": ("exchange", "routing_key", "body", "properties", "mandatory"),
    "consume": ("queue", "consumer_tag", "no_ack", "exclusive"), "cancel": ("consumer_tag", "requeue"),
    "get": ("queue", "no_ack"), "ack": ("delivery_tag", "multiple"),
    "nack": ("delivery_tag", "multiple", "requeue"), "reject": ("delivery_tag", "requeue"),
    "recover": ("requeue",), "qos": ("prefetch_count", "global"), "confirm.select": (),
    "list_queues": (), "list_bindings": (), "list_consumers": (), "no.such.op": (),
}
_FUZZ_FLAGS = (True, False)
# Each field's plausible values, so requests often succeed and reach deep states; any field
# may instead get a value of the wrong kind.
_FUZZ_FIELDS = {
    "channel": (1, 1, 1, 2), "exchange": ("", "fuzz.x", "amq.topic"), "queue": ("fuzz.a", "fuzz.b", ""),
    "routing_key": ("fuzz.a", "fuzz.b", "#"), "type": ("direct", "fanout", "topic", "headers"),
    "durable": _FUZZ_FLAGS, "exclusive": _FUZZ_FLAGS, "auto_delete": _FUZZ_FLAGS, "passive": _FUZZ_FLAGS,
    "if_unused": _FUZZ_FLAGS, "if_empty": _FUZZ_FLAGS, "mandatory": _FUZZ_FLAGS, "no_ack": _FUZZ_FLAGS,
    "multiple": _FUZZ_FLAGS, "requeue": _FUZZ_FLAGS, "global": _FUZZ_FLAGS, "internal": _FUZZ_FLAGS,
    "arguments": ({}, {"x-message-ttl": 5}, {"x-expires": 50}, {"x-match": "any", "a": 1}),
    "body": ("x", "/w=="), "body_encoding": ("base64", "utf-8"), "consumer_tag": ("c1", "c2"),
    "properties": ({}, {"expiration": "0"}, {"expiration": "5"}, {"headers": {"a": 1}, "priority": 3}),
    "delivery_tag": (1, 2, 3), "prefetch_count": (0, 1, 2),
}
_FUZZ_WRONG = (None, -1, HUGE, 1.5, "", "é" * 300, [], [1], {}, {"x-match": 5}, {"x-expires": -1},
               {"x-message-ttl": "a"}, {"headers": {"a": {"$bytes": "!!"}}}, {"timestamp": "x"},
               {"delivery_mode": 9}, {"headers": [1]})


def _fuzz_request(rng, request_id):
    op = "publish" if rng.random() < 0.3 else rng.choice(sorted(_FUZZ_OPS))     # messages to work on
    fields = [f for f in _FUZZ_OPS[op] if rng.random() < 0.9] + rng.sample(sorted(_FUZZ_FIELDS), rng.randint(0, 1))
    request = {"op": op, "id": request_id}
    for field in fields:
        request[field] = rng.choice(_FUZZ_FIELDS[field] if rng.random() < 0.9 else _FUZZ_WRONG)
    if op.startswith("channel."):
        request["channel"] = 2
    return request


def test_random_requests_are_each_answered_and_never_crash_the_broker(own_broker):
    """Random ops with random fields of random types, each with an id: all are answered
    as PROTOCOL.md says, by id, in order, with success or a coded error, and the broker logs
    no traceback. Seeded, so a failure replays."""
    rng = random.Random(3)
    client = RawClient(own_broker.port)
    requests = [_fuzz_request(rng, i) for i in range(3000)]
    client.send(*requests)
    client.send({"op": "list_queues", "id": "last"})
    answered = []
    while True:
        reply = client.read()
        assert reply is not None, f"connection closed after {answered[-1:]}"
        if "event" in reply:
            continue            # a delivery, return or confirm
        if reply["id"] == "last":
            break
        assert reply["ok"] is True or (type(reply["code"]) is int and reply["text"]), reply
        answered.append(reply["id"])
    assert answered == sorted(set(answered))
    # publish, ack, nack and reject are answered only when refused; everything else always.
    assert set(answered) >= {r["id"] for r in requests if r["op"] not in ("publish", "ack", "nack", "reject")}
    assert "Traceback" not in own_broker.log()
    assert RawClient(own_broker.port).still_works()
