"""One core, two protocols: what an AMQP client publishes a JSON-lines client receives
intact, and the other way round."""

import datetime
import decimal
import random

import pika

from greenmq import connection

WAIT = 10.0
AMQP_HEADERS = {"str": "s", "int": 7, "big": 2**40, "bool": True, "none": None, "list": [1, "a"],
                "table": {"x": {"y": 1}}, "bytes": b"\x00\xff",
                "decimal": decimal.Decimal("1.23"),
                "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)}
# The same headers as JSON carries them: types JSON lacks become tagged objects.
JSON_HEADERS = dict(AMQP_HEADERS, bytes={"$bytes": "AP8="}, decimal={"$decimal": "1.23"},
                    time={"$timestamp": 1704164645})


def amqp_channel(broker):
    return pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f")).channel()


def test_amqp_publish_reaches_a_json_lines_consumer_intact(against_greenmq, broker, conn, name):
    channel = amqp_channel(broker)
    channel.queue_declare(name)
    body = bytes(range(256))
    channel.basic_publish("", name, body, pika.BasicProperties(
        headers=AMQP_HEADERS, content_type="application/octet-stream", delivery_mode=2, priority=4,
        correlation_id="c", reply_to="r", expiration="60000", message_id="m", timestamp=1700000000,
        type="t", user_id="guest", app_id="a"))
    channel.connection.close()
    method, properties, received = conn.default_channel.basic_get(name, auto_ack=True)
    assert received == body
    assert properties == connection.BasicProperties(
        headers=JSON_HEADERS, content_type="application/octet-stream", delivery_mode=2, priority=4,
        correlation_id="c", reply_to="r", expiration="60000", message_id="m", timestamp=1700000000,
        type="t", user_id="guest", app_id="a")


def test_json_lines_publish_reaches_an_amqp_consumer_intact(against_greenmq, broker, conn, name):
    conn.default_channel.queue_declare(name)
    body = b"\xff\xfe binary \x00"
    conn.default_channel.basic_publish("", name, body, connection.BasicProperties(
        headers=JSON_HEADERS, content_type="text/plain", timestamp=1700000000, type="t", priority=9))
    channel = amqp_channel(broker)
    method, properties, received = channel.basic_get(name, auto_ack=True)
    channel.connection.close()
    assert received == body
    assert properties.headers == AMQP_HEADERS
    assert (properties.content_type, properties.timestamp, properties.type, properties.priority) == (
        "text/plain", 1700000000, "t", 9)


def test_confirmed_messages_survive_random_acks_nacks_rejects_and_consumers_leaving(against_greenmq, broker, conn,
                                                                                    name):
    """Every message a JSON-lines publisher had confirmed is acked exactly once in the end by
    AMQP consumers that ack (one or several), nack or reject with requeue, or leave with
    deliveries unsettled, at random prefetches. Seeded, so a failure replays."""
    count = 3000
    publisher = conn.default_channel
    publisher.queue_declare(name)
    publisher.confirm_delivery()
    for i in range(count):
        publisher.basic_publish("", name, str(i).encode())
    rng = random.Random(1)
    acked = []
    for _ in range(500):
        if len(acked) == count:
            break
        channel = amqp_channel(broker)
        prefetch = rng.randint(1, 50)
        channel.basic_qos(prefetch_count=prefetch)
        unsettled = {}
        for method, _, body in channel.consume(name, inactivity_timeout=WAIT):
            assert method is not None, f"nothing delivered with {count - len(acked)} messages unacked"
            tag = method.delivery_tag
            unsettled[tag] = int(body)
            action = rng.random()
            if action < 0.7:
                multiple = rng.random() < 0.2
                channel.basic_ack(tag, multiple=multiple)
                acked += [unsettled.pop(t) for t in sorted(unsettled) if t == tag or (multiple and t < tag)]
            elif action < 0.85:
                channel.basic_nack(tag, requeue=True)
                del unsettled[tag]
            elif action < 0.9:
                channel.basic_reject(tag, requeue=True)
                del unsettled[tag]
            if len(unsettled) == prefetch or rng.random() < 0.01 or len(acked) == count:
                break           # leave: what this consumer holds goes back to the queue
        channel.connection.close()
    assert sorted(acked) == list(range(count))
    assert publisher.queue_declare(name, passive=True).method.message_count == 0
