"""The JSON-lines protocol without a network: bytes in through data_received, lines out
through take_output, against a real core."""

import json

import pytest

from node import Node
from protocol import JsonLinesProtocol
from transport import OUTBOX_HIGH_WATER


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
