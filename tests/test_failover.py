"""Failover: connection.py given a list of AMQP URLs goes on with the next broker when one
dies, declaring again what it declared, resuming its consumers and publishing again what
awaited a confirm (at least once)."""

import signal
import time

import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess

WAIT = 30.0     # seconds for a failover on a loaded machine


def amqp_url(broker):
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"


@pytest.fixture
def two_brokers(tmp_path):
    """Two brokers on loopback; the first's data directory outlives it, to be read after."""
    first = BrokerProcess(data_dir=str(tmp_path / "first")).start()
    second = BrokerProcess().start()
    yield first, second
    first.close()
    second.close()


def waiting_messages(broker, queue):
    with connection.Connection(amqp_url(broker)) as conn:
        bodies = []
        while True:
            method, _, body = conn.default_channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)


def test_a_confirmed_publisher_and_a_consumer_fail_over_when_the_broker_is_killed(two_brokers, name):
    first, second = two_brokers
    urls = [amqp_url(first), amqp_url(second)]
    consumer, producer = connection.Connection(urls), connection.Connection(urls)
    try:
        got = []

        def on_message(channel, method, properties, body):
            got.append(body)
            channel.basic_ack(method.delivery_tag)

        consumer.default_channel.queue_declare(name, durable=True)
        consumer.default_channel.basic_qos(prefetch_count=10)
        consumer.default_channel.basic_consume(name, on_message)
        channel = producer.channel()
        channel.queue_declare(name, durable=True)       # declared again on the second broker
        channel.confirm_delivery(window=50)
        sent = [str(n).encode() for n in range(200)]
        for n, body in enumerate(sent):
            channel.basic_publish("", name, body, connection.BasicProperties(delivery_mode=2))
            if n == 120:                # some awaiting their confirms, some unconsumed
                first.stop(signal.SIGKILL)
        channel.wait_for_confirms(timeout=WAIT)
        assert producer.port == second.amqp_port

        # What the first broker confirmed and kept is on its disk; all else reaches the
        # consumer through the second.
        with BrokerProcess(data_dir=first.data_dir) as restarted:
            kept = waiting_messages(restarted, name)
        deadline = time.monotonic() + WAIT
        while not set(sent) <= set(got) | set(kept):
            assert time.monotonic() < deadline, sorted(set(sent) - set(got) - set(kept))
            consumer.process_data_events(0.1)
        assert channel.queue_declare(name, passive=True).message_count == 0   # all acked there
    finally:
        consumer.close()
        producer.close()


def test_deliveries_are_numbered_on_so_an_ack_from_before_the_failover_is_dropped(two_brokers, name):
    first, second = two_brokers
    with connection.Connection([amqp_url(first), amqp_url(second)]) as conn:
        channel = conn.default_channel
        channel.queue_declare(name)
        channel.confirm_delivery()
        channel.basic_publish("", name, "on the first")
        before, _, _ = channel.basic_get(name)
        first.stop(signal.SIGKILL)
        channel.basic_publish("", name, "on the second")     # fails over, published again
        after, _, body = channel.basic_get(name)
        assert (conn.port, body, before.delivery_tag, after.delivery_tag) == (second.amqp_port, b"on the second", 1, 2)
        channel.basic_ack(before.delivery_tag)      # meant for the first broker: not sent
        channel.basic_ack(after.delivery_tag)
        assert channel.queue_declare(name, passive=True).message_count == 0
    assert waiting_messages(second, name) == []     # acked, not back in the queue


def test_a_list_connects_to_the_first_broker_that_answers(two_brokers):
    first, second = two_brokers
    first.stop()
    with connection.Connection([amqp_url(first), amqp_url(second)]) as conn:
        assert conn.port == second.amqp_port


def test_failover_needs_amqp_urls(broker):
    with pytest.raises(ValueError, match="amqp://"):
        connection.Connection(["127.0.0.1", f"amqp://127.0.0.1:{broker.amqp_port}"])
