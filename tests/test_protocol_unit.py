"""The JSON-lines protocol without a network: bytes in through data_received, lines out
through take_output, against a real core."""

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from greenmq.node import Node
from greenmq.protocol import JsonLinesProtocol, _decode_line
from greenmq.transport import OUTBOX_HIGH_WATER


def lines(*requests):
    return b"".join(json.dumps(r).encode() + b"\n" for r in requests)


def output(protocol):
    return [json.loads(line) for line in protocol.take_output().splitlines()]


@pytest.fixture
def node():
    return Node()


def client(node, port=1):
    protocol = JsonLinesProtocol(node, ("127.0.0.1", port))
    protocol.data_received(lines({"op": "hello"}))
    assert output(protocol)[0]["ok"] is True
    return protocol


def test_a_line_split_across_reads_is_handled_once(node):
    protocol = client(node)
    data = lines({"op": "queue.declare", "queue": "q", "id": 1})
    for i in range(len(data)):
        protocol.data_received(data[i:i + 1])
    assert output(protocol) == [{"queue": "q", "message_count": 0, "consumer_count": 0, "ok": True, "id": 1}]


def test_lines_of_one_read_are_handled_in_order(node):
    protocol = client(node)
    protocol.data_received(lines(*({"op": "queue.declare", "queue": f"q{n}", "id": n} for n in range(5))))
    assert [reply["id"] for reply in output(protocol)] == [0, 1, 2, 3, 4]


def test_confirms_of_one_read_are_coalesced_into_one_ack(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1}, {"op": "confirm.select", "id": 2}))
    output(protocol)
    protocol.data_received(lines(*({"op": "publish", "routing_key": "q", "body": str(n)} for n in range(10))))
    assert output(protocol) == [{"event": "ack", "channel": 1, "delivery_tag": 10, "multiple": True}]


def test_a_refused_publish_is_nacked_after_its_error_and_between_acks(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "confirm.select", "id": 1}))
    output(protocol)
    protocol.data_received(lines({"op": "publish", "routing_key": "x"}, {"op": "publish", "routing_key": "y"},
                                 {"op": "publish", "exchange": "missing"}, {"op": "publish"}))
    replies = output(protocol)
    assert replies[0]["code"] == 404
    assert [(r["event"], r["delivery_tag"], r["multiple"]) for r in replies[1:]] == [
        ("ack", 2, True), ("nack", 3, False), ("ack", 4, False)]


def test_consume_ok_comes_before_the_first_delivery(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1},
                                 {"op": "publish", "routing_key": "q", "body": "waiting"},
                                 {"op": "consume", "queue": "q", "consumer_tag": "c", "id": 2}))
    replies = output(protocol)
    assert replies[1] == {"ok": True, "consumer_tag": "c", "id": 2}
    assert replies[2]["event"] == "deliver" and replies[2]["body"] == "waiting"


def test_a_backed_up_client_stops_taking_messages_until_drained(node):
    producer, consumer = client(node, 1), client(node, 2)
    consumer.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1},
                                 {"op": "consume", "queue": "q", "no_ack": True, "id": 2}))
    output(consumer)
    body = "x" * 1000
    count = 2 * OUTBOX_HIGH_WATER // len(body)
    producer.data_received(lines(*({"op": "publish", "routing_key": "q", "body": body} for _ in range(count))))
    assert consumer.session.writable is False
    delivered = len(output(consumer))
    queue = node.vhosts["/"].queues["q"]
    assert delivered + queue.message_count == count and queue.message_count > 0
    waiting = queue.message_count
    while queue.message_count:            # the socket drains: delivery resumes each time
        consumer.output_drained()
        assert len(output(consumer)) > 0
        assert queue.message_count < waiting
        waiting = queue.message_count
    consumer.output_drained()
    assert consumer.session.writable is True


def test_client_leaving_requeues_its_unacked_deliveries(node):
    producer, consumer = client(node, 1), client(node, 2)
    consumer.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1},
                                 {"op": "consume", "queue": "q", "id": 2}))
    producer.data_received(lines({"op": "publish", "routing_key": "q", "body": "a"},
                                 {"op": "publish", "routing_key": "q", "body": "b"}))
    consumer.connection_lost()
    queue = node.vhosts["/"].queues["q"]
    assert [(m.body, m.redelivered) for m in queue.ready] == [(b"a", True), (b"b", True)]


def test_whole_lines_and_a_partial_one_in_one_read(node):
    protocol = client(node)
    data = lines({"op": "queue.declare", "queue": "a", "id": 1}, {"op": "queue.declare", "queue": "b", "id": 2})
    protocol.data_received(data[:-5] + b"\n" + data[:10])      # line 2 broken, then a partial line 3
    replies = output(protocol)
    assert [r.get("id") for r in replies] == [1, None] and replies[1]["code"] == 502
    protocol.data_received(data[10:])                          # the rest of line 3 and a whole line 4
    assert [r["id"] for r in output(protocol)] == [1, 2]


def test_a_line_over_the_limit_closes_with_501_and_reads_nothing_more(node):
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1), max_line_bytes=100)
    protocol.data_received(lines({"op": "hello"}))
    assert output(protocol)[0]["max_line_bytes"] == 100
    protocol.data_received(lines({"op": "publish", "body": "x" * 200}, {"op": "queue.declare", "queue": "", "id": 1}))
    assert output(protocol) == [{"event": "close", "code": 501, "error": "FRAME_ERROR",
                                 "text": "FRAME_ERROR - line longer than 100 bytes"}]
    assert protocol.closed and protocol.session is None and not node.sessions
    protocol.data_received(lines({"op": "queue.declare", "queue": "", "id": 2}))
    assert output(protocol) == []


def test_a_partial_line_over_the_limit_closes_before_its_newline(node):
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1), max_line_bytes=100)
    protocol.data_received(lines({"op": "hello"}))
    output(protocol)
    protocol.data_received(b"{" + b" " * 60)
    assert output(protocol) == [] and not protocol.closed
    protocol.data_received(b" " * 60)
    assert output(protocol)[0]["code"] == 501 and protocol.closed


def test_a_request_before_hello_closes_with_503(node):
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1))
    protocol.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1}, {"op": "hello", "id": 2}))
    assert output(protocol) == [{"event": "close", "code": 503, "error": "COMMAND_INVALID",
                                 "text": "COMMAND_INVALID - expected 'hello' as the first request"}]
    assert protocol.closed and not node.sessions


def test_bodies_that_are_not_utf8_travel_as_base64_both_ways(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1},
                                 {"op": "publish", "routing_key": "q", "body": "/wA=", "body_encoding": "base64"},
                                 {"op": "publish", "routing_key": "q", "body": "aGk=", "body_encoding": "base64"},
                                 {"op": "publish", "routing_key": "q", "body": "é"},
                                 {"op": "get", "queue": "q", "no_ack": True, "id": 2},
                                 {"op": "get", "queue": "q", "no_ack": True, "id": 3},
                                 {"op": "get", "queue": "q", "no_ack": True, "id": 4}))
    replies = output(protocol)[1:]
    assert [(r["body"], r.get("body_encoding")) for r in replies] == [("/wA=", "base64"), ("hi", None), ("é", None)]
    assert node.vhosts["/"].queues["q"].message_count == 0


def test_a_returned_mandatory_message_comes_before_its_ack(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "confirm.select", "id": 1}))
    output(protocol)
    protocol.data_received(lines({"op": "publish", "routing_key": "nowhere", "body": "b", "mandatory": True,
                                  "properties": {"message_id": "m"}}))
    assert output(protocol) == [
        {"event": "return", "channel": 1, "reply_code": 312, "reply_text": "NO_ROUTE", "exchange": "",
         "routing_key": "nowhere", "body": "b", "properties": {"message_id": "m"}},
        {"event": "ack", "channel": 1, "delivery_tag": 1, "multiple": False}]


def test_cancel_requeues_the_consumers_unacked_messages_by_default(node):
    protocol = client(node)
    protocol.data_received(lines({"op": "queue.declare", "queue": "q", "id": 1},
                                 {"op": "publish", "routing_key": "q", "body": "a"},
                                 {"op": "consume", "queue": "q", "consumer_tag": "c", "id": 2}))
    assert output(protocol)[2]["event"] == "deliver"
    protocol.data_received(lines({"op": "cancel", "consumer_tag": "c", "id": 3}, {"op": "ack", "delivery_tag": 1}))
    replies = output(protocol)
    assert replies[0] == {"ok": True, "id": 3}
    assert replies[1]["code"] == 406             # the tag went back with the message
    assert [(m.body, m.redelivered) for m in node.vhosts["/"].queues["q"].ready] == [(b"a", True)]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8)
_AROUND = st.sampled_from(["", " ", "\t", "\r", " \r", "x", "{}", " 1", "]", "\"", "\\"])


def _decoded_or_error(decode, text):
    """What `decode` makes of `text`, as a repr (JSON's NaN is not equal to itself)."""
    try:
        return repr(decode(text))
    except ValueError as exc:
        return f"error: {exc}"


@given(before=_AROUND, value=_JSON_VALUES, after=_AROUND, compact=st.booleans())
@example(before="", value={"op": "publish"}, after="\r", compact=True)
@example(before="", value={"op": "publish"}, after=" {}", compact=True)
@example(before=" ", value=float("inf"), after="", compact=True)
def test_a_line_decodes_exactly_as_the_json_decoder_decodes_it(before, value, after, compact):
    """The shortcut past JSONDecoder.decode gives its answer, or its error, for any line."""
    text = before + json.dumps(value, separators=(",", ":") if compact else None) + after
    assert _decoded_or_error(_decode_line, text) == _decoded_or_error(json.JSONDecoder().decode, text)


@given(st.text())
@example("NaN")
def test_any_text_decodes_exactly_as_the_json_decoder_decodes_it(text):
    assert _decoded_or_error(_decode_line, text) == _decoded_or_error(json.JSONDecoder().decode, text)
