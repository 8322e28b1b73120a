"""The messaging model over JSON lines, through connection.py against a live broker."""

import pytest

import connection
from connection import BasicProperties


def drain(channel, queue, count, auto_ack=True):
    """Consume exactly `count` messages from `queue`; returns (method, properties, body) each."""
    got = []
    for method, properties, body in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=5):
        assert method is not None, f"only {len(got)} of {count} messages arrived"
        got.append((method, properties, body))
        if len(got) == count:
            break
    return got


def test_default_exchange_routes_by_queue_name(channel, name):
    channel.queue_declare(name)
    channel.basic_publish("", name, b"Hello World!")
    [(method, _, body)] = drain(channel, name, 1)
    assert body == b"Hello World!"
    assert method.exchange == "" and method.routing_key == name


def test_fanout_copies_each_message_to_every_bound_queue(channel, name):
    channel.exchange_declare(name, "fanout")
    queues = [channel.queue_declare("", exclusive=True).method.queue for _ in range(3)]
    for queue in queues:
        channel.queue_bind(queue, name)
    channel.basic_publish(name, "ignored", b"log line")
    for queue in queues:
        assert [body for _, _, body in drain(channel, queue, 1)] == [b"log line"]


def test_direct_exchange_routes_only_matching_keys(channel, name):
    channel.exchange_declare(name, "direct")
    errors = channel.queue_declare("", exclusive=True).queue
    channel.queue_bind(errors, name, "error")
    channel.basic_publish(name, "info", b"skip")
    channel.basic_publish(name, "error", b"keep")
    assert channel.queue_declare(errors, passive=True).message_count == 1
    assert channel.basic_get(errors, auto_ack=True)[2] == b"keep"


def test_properties_and_binary_bodies_arrive_unchanged(channel, name):
    channel.queue_declare(name)
    properties = BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers={"a": 1, "b": [1, "x"], "c": {"d": None}},
        delivery_mode=2, priority=5, correlation_id="c-1", reply_to="r", expiration="60000",
        message_id="m-1", timestamp=1700000000, type="t", user_id="guest", app_id="app", cluster_id="cl")
    body = bytes(range(256))
    channel.basic_publish("", name, body, properties)
    [(method, received, received_body)] = drain(channel, name, 1)
    assert received_body == body
    assert received == properties


def test_server_named_queue_is_reported_by_declare(channel):
    result = channel.queue_declare("", exclusive=True)
    assert result.method.queue.startswith("amq.gen-")
    assert result.message_count == 0 and result.consumer_count == 0


def test_unknown_exchange_is_a_not_found_error(channel, name):
    with pytest.raises(connection.NotFound) as error:
        channel.queue_bind("nothing-" + name, "amq.direct")
    assert error.value.code == 404
    assert f"no queue 'nothing-{name}' in vhost '/'" in error.value.text
