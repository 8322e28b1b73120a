"""AMQP 0-9-1 through pika, unmodified: the seed programs in their pika form and what
pika's users rely on. Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL."""

import os
import threading
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, UnroutableError

WAIT = 10.0


def until(condition, *connections):
    """Serve `connections` until `condition()` holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for connection in connections:
            connection.process_data_events(0.02)


def consume(connection, channel, queue, count, auto_ack=True):
    """Receive `count` messages from `queue`; returns (method, properties, body) each."""
    got = []
    for method, properties, body in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=WAIT):
        assert method is not None, f"only {len(got)} of {count} arrived"
        got.append((method, properties, body))
        if len(got) == count:
            break
    channel.cancel()
    return got


def test_hello_world_producer_and_manual_ack_consumer(connections, name):
    producer = connections().channel()
    producer.queue_declare(queue=name)
    producer.basic_publish(exchange="", routing_key=name, body="Hello World!")
    connection = connections()
    channel = connection.channel()
    channel.queue_declare(queue=name)
    received = []

    def callback(ch, method, properties, body):
        received.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue=name, on_message_callback=callback)
    channel.start_consuming()
    assert received == [b"Hello World!"]
    assert channel.queue_declare(queue=name, passive=True).method.message_count == 0


def test_unacked_message_goes_to_another_consumer_when_the_first_dies(connections, name):
    first = connections()
    channel = first.channel()
    channel.queue_declare(queue=name)
    channel.basic_publish("", name, b"task")
    [(method, _, body)] = consume(first, channel, name, 1, auto_ack=False)
    assert not method.redelivered
    first.close()               # without acking
    second = connections().channel()
    method, _, body = second.basic_get(name, auto_ack=True)
    assert (body, method.redelivered) == (b"task", True)


def test_emit_log_and_receive_logs_with_server_named_exclusive_queues(connections, name):
    receivers = []
    for _ in range(2):
        connection = connections()
        channel = connection.channel()
        channel.exchange_declare(exchange=name, exchange_type="fanout")
        result = channel.queue_declare(queue="", exclusive=True)
        assert result.method.queue.startswith("amq.gen-")
        channel.queue_bind(exchange=name, queue=result.method.queue)
        receivers.append((connection, channel, result.method.queue))
    emitter = connections().channel()
    emitter.basic_publish(exchange=name, routing_key="", body="info: Hello World!")
    for connection, channel, queue in receivers:
        assert [b for _, _, b in consume(connection, channel, queue, 1)] == [b"info: Hello World!"]


def test_work_queue_with_prefetch_one_sends_work_to_the_free_worker(connections, name):
    workers = []
    for _ in range(2):
        connection = connections()
        channel = connection.channel()
        channel.queue_declare(queue=name, durable=True)
        channel.basic_qos(prefetch_count=1)
        workers.append((connection, channel))
    busy_got, free_got = [], []
    busy_connection, busy = workers[0]
    free_connection, free = workers[1]
    busy.basic_consume(name, lambda ch, m, p, b: busy_got.append(b))           # never acks

    def work(ch, method, properties, body):
        free_got.append(body)
        ch.basic_ack(method.delivery_tag)

    free.basic_consume(name, work)
    producer = connections().channel()
    for n in range(4):
        producer.basic_publish("", name, str(n), pika.BasicProperties(delivery_mode=2))
    until(lambda: len(busy_got) + len(free_got) == 4, busy_connection, free_connection)
    assert busy_got == [b"0"]                  # round-robin gave it the first, then nothing
    assert free_got == [b"1", b"2", b"3"]


def test_rpc_client_and_server(connections, name):
    server_connection = connections()
    server = server_connection.channel()
    server.queue_declare(queue=name)

    def on_request(ch, method, props, body):
        ch.basic_publish("", props.reply_to, str(int(body) * 2),
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    server.basic_qos(prefetch_count=1)
    server.basic_consume(queue=name, on_message_callback=on_request)
    client_connection = connections()
    client = client_connection.channel()
    callback_queue = client.queue_declare(queue="", exclusive=True).method.queue
    responses = {}
    client.basic_consume(callback_queue, lambda ch, m, p, b: responses.__setitem__(p.correlation_id, b),
                         auto_ack=True)
    for n in range(5):
        client.basic_publish("", name, str(n), pika.BasicProperties(reply_to=callback_queue, correlation_id=f"c{n}"))
    until(lambda: len(responses) == 5, server_connection, client_connection)
    assert responses == {f"c{n}": str(n * 2).encode() for n in range(5)}


def test_publisher_confirms(connections, name):
    channel = connections().channel()
    channel.queue_declare(name)
    channel.confirm_delivery()
    for n in range(100):
        channel.basic_publish("", name, str(n))
    assert channel.queue_declare(name, passive=True).method.message_count == 100
    with pytest.raises(UnroutableError):
        channel.basic_publish("", "no-queue-" + name, b"x", mandatory=True)
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.basic_publish("no-exchange-" + name, "", b"x")
    assert closed.value.reply_code == 404


def test_select_connection_publishes_and_consumes(params, name):
    received = []

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel):
        channel.queue_declare(name, callback=lambda frame: on_declared(channel))

    def on_declared(channel):
        channel.basic_consume(name, lambda ch, m, p, b: on_message(ch, b), auto_ack=True)
        for n in range(3):
            channel.basic_publish("", name, str(n))

    def on_message(channel, body):
        received.append(body)
        if len(received) == 3:
            channel.connection.close()

    connection = pika.SelectConnection(params, on_open_callback=on_open)
    timer = connection.ioloop.call_later(WAIT, connection.ioloop.stop)
    connection.add_on_close_callback(lambda *a: connection.ioloop.stop())
    connection.ioloop.start()
    connection.ioloop.remove_timeout(timer)
    assert received == [b"0", b"1", b"2"]


def test_channel_errors_close_only_the_channel(connections, name):
    connection = connections()
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_declare("missing-" + name, passive=True)
    assert closed.value.reply_code == 404
    assert f"no queue 'missing-{name}'" in closed.value.reply_text
    assert connection.is_open
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_declare(name, durable=False)
    assert closed.value.reply_code == 406
    channel = connection.channel()
    channel.queue_declare("x-" + name, exclusive=True)
    other = connections().channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        other.queue_declare("x-" + name, exclusive=True)
    assert closed.value.reply_code == 405
    other = connections().channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        other.exchange_declare("amq.custom-" + name, "direct")
    assert closed.value.reply_code == 403


def test_an_unknown_exchange_type_is_precondition_failed_on_the_channel(connections, name):
    """406 PRECONDITION_FAILED on the channel, as RabbitMQ from 3.11 on answers and pika's
    own tests expect; RabbitMQ 3.10 closes the whole connection with 503 COMMAND_INVALID."""
    connection = connections()
    with pytest.raises((ChannelClosedByBroker, ConnectionClosedByBroker)) as closed:
        connection.channel().exchange_declare(name, "no-such-type")
    assert "unknown exchange type 'no-such-type'" in closed.value.reply_text
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        assert closed.value.reply_code in (406, 503)
    else:
        assert closed.value.reply_code == 406 and isinstance(closed.value, ChannelClosedByBroker)
        connection.channel().exchange_declare(name, "direct")     # the connection goes on


def test_qos_raised_while_consuming_applies_at_once(against_greenmq, connections, name):
    """Unlike RabbitMQ, which applies a per-consumer basic.qos to later consumers only:
    Celery raises its prefetch at run time and expects the consumers it has to follow."""
    connection = connections()
    channel = connection.channel()
    channel.queue_declare(name)
    for n in range(5):
        channel.basic_publish("", name, str(n))
    channel.basic_qos(prefetch_count=1)
    got = []
    channel.basic_consume(name, lambda ch, m, p, b: got.append(m.delivery_tag))
    until(lambda: got, connection)
    channel.basic_qos(prefetch_count=5)
    until(lambda: len(got) == 5, connection)
    assert got == [1, 2, 3, 4, 5]


def test_deleting_a_queue_cancels_its_consumers(connections, name):
    connection = connections()
    channel = connection.channel()
    channel.queue_declare(name)
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = channel.basic_consume(name, lambda *a: None)
    connections().channel().queue_delete(name)
    until(lambda: cancelled, connection)
    assert cancelled == [tag]


def test_transactions_commit_and_roll_back(connections, name):
    channel = connections().channel()
    channel.queue_declare(name)
    channel.tx_select()
    channel.basic_publish("", name, b"rolled back")
    channel.tx_rollback()
    channel.basic_publish("", name, b"committed")
    assert channel.queue_declare(name, passive=True).method.message_count == 0
    channel.tx_commit()
    assert channel.queue_declare(name, passive=True).method.message_count == 1
    method, _, body = channel.basic_get(name)
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()               # the ack is undone: the message stays unacked
    channel.basic_recover(requeue=True)
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert (body, method.redelivered) == (b"committed", True)


def test_large_bodies_cross_in_many_frames(connections, name):
    connection = connections(frame_max=4096)
    channel = connection.channel()
    channel.queue_declare(name)
    body = bytes(range(256)) * 2000     # 512,000 bytes: 125 frames of 4 KiB each way
    channel.basic_publish("", name, body)
    method, _, received = channel.basic_get(name, auto_ack=True)
    assert received == body


def test_headers_of_every_table_type_pass_through_unchanged(connections, name):
    import datetime
    import decimal
    # Every type pika can write (it has no float encoder).
    headers = {"str": "s", "int": 7, "big": 2**40, "neg": -5, "bool": True, "none": None,
               "list": [1, "a", [2]], "table": {"nested": {"x": 1}}, "bytes": b"\x00\xff",
               "decimal": decimal.Decimal("1.23"),
               "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)}
    channel = connections().channel()
    channel.queue_declare(name)
    channel.basic_publish("", name, b"x", pika.BasicProperties(headers=headers, timestamp=1700000000,
                                                                content_type="text/plain", priority=3))
    _, properties, _ = channel.basic_get(name, auto_ack=True)
    assert properties.headers == headers
    assert (properties.timestamp, properties.content_type, properties.priority) == (1700000000, "text/plain", 3)


def test_heartbeats_keep_an_idle_connection_open(connections, name):
    connection = connections(heartbeat=1)
    channel = connection.channel()
    channel.queue_declare(name)
    done = threading.Event()
    connection.call_later(3.5, done.set)
    while not done.is_set():          # idle for longer than three heartbeats
        connection.process_data_events(0.2)
    channel.basic_publish("", name, b"still here")
    assert channel.basic_get(name, auto_ack=True)[2] == b"still here"
