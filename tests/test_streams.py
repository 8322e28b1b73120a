"""Streams (x-queue-type stream) over AMQP 0-9-1 with pika (and kombu and aio-pika), as
RabbitMQ 3.10 has them: the declaration and its refusals, offsets and the x-stream-offset
consume argument, acks that keep the log, retention by whole segments, what streams
refuse, and the log across restarts and kill -9. Each test body runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (a RabbitMQ
3.10); those marked `against_greenmq` look inside GreenMQ (its store, its listings)."""

import asyncio
import datetime
import os
import signal
import time

import aio_pika
import gevent
import kombu
import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from greenmq import connection as greenmq_connection
from greenmq.node import Node
from greenmq.store.memory import MemoryStore
from greenmq.stream import INDEX_INTERVAL, READ_BATCH, READ_BATCH_BYTES, TAIL_BYTES, TAIL_MESSAGES
from tests import failing_disk_broker
from tests.broker_process import BrokerProcess
from tests.greenmqctl_process import greenmqctl_json as ctl_json
from tests.test_core_queues import RecordingSink, login
from tests.http_api import call, path

WAIT = 10.0
# How long a test waits to see that nothing more arrives.
QUIET = 0.3
STREAM = {"x-queue-type": "stream"}


@pytest.fixture
def connect(params):
    """Opens pika connections to the broker under test; the streams a test declared
    (durable, so a reference broker would keep them) are deleted after it."""
    opened, declared = [], []

    def connect():
        opened.append(pika.BlockingConnection(params))
        return opened[-1]

    connect.declared = declared
    yield connect
    if declared:
        cleanup = pika.BlockingConnection(params)
        channel = cleanup.channel()
        for queue in declared:
            channel.queue_delete(queue)
        cleanup.close()
    for opened_connection in opened:
        if opened_connection.is_open:
            opened_connection.close()


@pytest.fixture
def stream(connect, name):
    """A function declaring a stream named after the test (with these arguments)."""
    def declare(suffix="", **arguments):
        channel = connect().channel()
        queue = name + suffix
        channel.queue_declare(queue, durable=True, arguments={**STREAM, **arguments})
        connect.declared.append(queue)
        return queue
    return declare


def publish(connection, queue, bodies, **properties):
    """Publish with confirms: on RabbitMQ too the stream has them when this returns."""
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(**properties))
    channel.close()


def read(connection, queue, offset, expected, prefetch=100, quiet=QUIET):
    """What a consumer starting at `offset` gets, as (x-stream-offset, body), acking each:
    `expected` messages (None: as many as come), then nothing more for `quiet` seconds;
    then the consumer ends."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    got = []

    def on_message(channel, method, properties, body):
        got.append((properties.headers["x-stream-offset"], body))
        channel.basic_ack(method.delivery_tag)

    arguments = None if offset is None else {"x-stream-offset": offset}
    tag = channel.basic_consume(queue, on_message, arguments=arguments)
    deadline = time.monotonic() + WAIT
    while expected is not None and len(got) < expected and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    settle, seen = time.monotonic() + quiet, -1
    while time.monotonic() < settle or (expected is None and len(got) != seen):
        seen = len(got)
        connection.process_data_events(0.05 if expected is not None else QUIET)
    channel.basic_cancel(tag)
    return got


def first_offset(connection, queue):
    """The offset a consumer from "first" starts at (one message in its window, unacked,
    so nothing more arrives)."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    got = []
    channel.basic_consume(queue, lambda ch, method, properties, body: got.append(properties.headers["x-stream-offset"]),
                          arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + WAIT
    while not got and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    return got[0]


def numbered(count, start=0):
    return [b"m%d" % n for n in range(start, start + count)]


def refused_declare(connection, queue, durable=True, exclusive=False, auto_delete=False, **arguments):
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_declare(queue, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
                              arguments={**STREAM, **arguments})
    return closed.value.reply_code, closed.value.reply_text


# -- declaring -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, refused", [
    ({"durable": False}, "non-durable"),
    ({"exclusive": True}, "exclusive-owner"),
    ({"auto_delete": True}, "auto-delete"),
])
def test_a_stream_is_durable_and_neither_exclusive_nor_auto_delete(connect, name, flags, refused):
    assert refused_declare(connect(), name, **flags) == (
        406, f"PRECONDITION_FAILED - invalid property '{refused}' for queue '{name}' in vhost '/'")


@pytest.mark.parametrize("argument, value", [
    ("x-message-ttl", 1000), ("x-max-length", 10), ("x-dead-letter-exchange", "dlx"),
    ("x-dead-letter-routing-key", "k"), ("x-overflow", "reject-publish"), ("x-max-priority", 5),
    ("x-expires", 10000), ("x-single-active-consumer", True), ("x-queue-mode", "lazy"),
    ("x-delivery-limit", 3), ("x-max-in-memory-length", 3), ("x-queue-version", 2),
])
def test_arguments_of_other_queue_types_are_refused_as_rabbitmq_refuses_them(connect, name, argument, value):
    assert refused_declare(connect(), name, **{argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' in vhost '/' "
        "of queue type rabbit_stream_queue")


@pytest.mark.parametrize("argument, value, reason", [
    ("x-max-age", "10x", "invalid_max_age"),
    ("x-max-age", 10, "{unacceptable_type,signedint}"),
    ("x-max-length-bytes", -1, "{value_negative,-1}"),
    ("x-max-length-bytes", "x", '"expected integer, got longstr"'),
    ("x-stream-max-segment-size-bytes", "x", '"expected integer, got longstr"'),
    ("x-queue-leader-locator", "bad", "invalid_queue_locator_arg"),
    ("x-initial-cluster-size", "x", '"expected integer, got longstr"'),
])
def test_wrong_stream_argument_values_are_refused_as_rabbitmq_refuses_them(connect, name, argument, value, reason):
    assert refused_declare(connect(), name, **{argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' in vhost '/': {reason}")


def test_stream_arguments_are_accepted_and_a_redeclare_must_repeat_them(connect, stream, name):
    arguments = {"x-max-age": "7D", "x-max-length-bytes": 10_000_000, "x-stream-max-segment-size-bytes": 1_000_000,
                 "x-queue-leader-locator": "client-local", "x-initial-cluster-size": 1}
    queue = stream(**arguments)
    channel = connect().channel()
    assert channel.queue_declare(queue, durable=True, arguments={**STREAM, **arguments}).method.queue == queue
    assert refused_declare(connect(), queue, **{**arguments, "x-max-age": "12h"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{queue}' in vhost '/': "
        "received '12h' but current is '7D'")
    channel = connect().channel()
    with pytest.raises(ChannelClosedByBroker) as closed:    # as a classic queue
        channel.queue_declare(queue, durable=True, arguments=arguments)
    assert closed.value.reply_code == 406
    assert closed.value.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{queue}' in vhost '/': received none")


# -- offsets and consumers -------------------------------------------------------------------

def test_every_message_gets_the_next_offset_and_consumers_start_where_x_stream_offset_says(connect, stream):
    queue = stream()
    publish(connect(), queue, numbered(3), delivery_mode=1)
    publish(connect(), queue, numbered(2, 3), delivery_mode=2)
    everything = [(n, b"m%d" % n) for n in range(5)]
    assert read(connect(), queue, "first", 5) == everything
    assert read(connect(), queue, 0, 5) == everything
    assert read(connect(), queue, -1, 5) == everything          # before the log: its start
    assert read(connect(), queue, 3, 2) == everything[3:]
    assert read(connect(), queue, "last", 1) == everything[4:]
    assert read(connect(), queue, "next", 0) == []
    assert read(connect(), queue, None, 0) == []                # no x-stream-offset: next
    assert read(connect(), queue, 100, 0) == []                 # past the end: next
    assert read(connect(), queue, "1h", 5) == everything
    assert read(connect(), queue, datetime.datetime(2020, 1, 1), 5) == everything
    assert read(connect(), queue, datetime.datetime(2100, 1, 1), 0) == []


def test_a_timestamp_starts_at_the_first_message_published_then(connect, stream):
    queue = stream()
    publish(connect(), queue, numbered(3))
    time.sleep(1.1)     # the AMQP timestamp has whole seconds: the two batches a second apart
    between = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    time.sleep(0.1)
    publish(connect(), queue, numbered(2, 3))
    assert [body for _, body in read(connect(), queue, between, 2)] == [b"m3", b"m4"]


def test_acks_keep_the_log_and_each_consumer_reads_it_from_where_it_asks(connect, stream):
    queue = stream()
    publish(connect(), queue, numbered(4))
    first = read(connect(), queue, "first", 4)
    second = read(connect(), queue, "first", 4)
    assert first == second == [(n, b"m%d" % n) for n in range(4)]
    channel = connect().channel()
    assert channel.queue_declare(queue, passive=True).method.message_count in (0, 4)   # RabbitMQ counts late


def test_a_consumer_waiting_at_next_gets_what_is_published_later(connect, stream):
    queue = stream()
    publish(connect(), queue, numbered(2))
    consumer = connect()
    channel = consumer.channel()
    channel.basic_qos(prefetch_count=10)
    got = []
    channel.basic_consume(queue, lambda ch, method, properties, body: (
        got.append((properties.headers["x-stream-offset"], body)), ch.basic_ack(method.delivery_tag)),
        arguments={"x-stream-offset": "next"})
    consumer.process_data_events(QUIET)
    publish(connect(), queue, numbered(3, 2))
    deadline = time.monotonic() + WAIT
    while len(got) < 3 and time.monotonic() < deadline:
        consumer.process_data_events(0.05)
    assert got == [(2, b"m2"), (3, b"m3"), (4, b"m4")]


def consuming_from_first(connect, queue, prefetch):
    """A connection, its channel consuming `queue` from `first`, and the delivery tags the
    consumer has had so far."""
    consumer = connect()
    channel = consumer.channel()
    channel.basic_qos(prefetch_count=prefetch)
    tags = []
    channel.basic_consume(queue, lambda ch, method, properties, body: tags.append(method.delivery_tag),
                          arguments={"x-stream-offset": "first"})
    return consumer, channel, tags


def test_the_prefetch_window_bounds_what_a_stream_consumer_has_unacked(connect, stream):
    queue = stream()
    publish(connect(), queue, numbered(5))
    consumer, channel, tags = consuming_from_first(connect, queue, 2)
    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        consumer.process_data_events(0.05)
    assert len(tags) == 2
    channel.basic_ack(tags[-1], multiple=True)
    deadline = time.monotonic() + WAIT
    while len(tags) < 4 and time.monotonic() < deadline:
        consumer.process_data_events(0.05)
    assert len(tags) == 4


# -- what streams refuse ------------------------------------------------------------------------

def consume_refusal(connection, queue, prefetch=None, global_prefetch=None, auto_ack=False, offset=None):
    """The broker's answer to a consume: (code, text) of the channel or connection it closed."""
    channel = connection.channel()
    if prefetch is not None:
        channel.basic_qos(prefetch_count=prefetch)
    if global_prefetch is not None:
        channel.basic_qos(prefetch_count=global_prefetch, global_qos=True)
    with pytest.raises((ChannelClosedByBroker, ConnectionClosedByBroker)) as closed:
        channel.basic_consume(queue, lambda *message: None, auto_ack=auto_ack,
                              arguments=None if offset is None else {"x-stream-offset": offset})
        connection.process_data_events(QUIET)
    kind = "connection" if isinstance(closed.value, ConnectionClosedByBroker) else "channel"
    return kind, closed.value.reply_code, closed.value.reply_text


def test_a_stream_consumer_needs_a_prefetch_of_its_own_and_manual_acks(connect, stream):
    queue = stream()
    what = f"queue '{queue}' in vhost '/'"
    assert consume_refusal(connect(), queue) == (
        "channel", 406, f"PRECONDITION_FAILED - consumer prefetch count is not set for '{what}'")
    assert consume_refusal(connect(), queue, global_prefetch=10) == (
        "channel", 406, f"PRECONDITION_FAILED - consumer prefetch count is not set for '{what}'")
    assert consume_refusal(connect(), queue, prefetch=10, global_prefetch=10) == (
        "connection", 540, f"NOT_IMPLEMENTED - {what} does not support global qos")
    assert consume_refusal(connect(), queue, prefetch=10, auto_ack=True) == (
        "connection", 540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues {what}")


def test_basic_get_and_purge_are_refused(connect, stream):
    queue = stream()
    what = f"queue '{queue}' in vhost '/'"
    publish(connect(), queue, numbered(1))
    for auto_ack in (False, True):
        with pytest.raises(ConnectionClosedByBroker) as closed:
            connect().channel().basic_get(queue, auto_ack=auto_ack)
        assert (closed.value.reply_code, closed.value.reply_text) == (
            540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues {what}")
    with pytest.raises(ConnectionClosedByBroker) as closed:
        connect().channel().queue_purge(queue)
    assert (closed.value.reply_code, closed.value.reply_text) == (
        540, f"NOT_IMPLEMENTED - queue.purge not supported by stream queues {what}")


@pytest.mark.parametrize("settle", ["nack-requeue", "nack", "reject-requeue", "reject"])
def test_nack_and_reject_are_refused(connect, stream, settle):
    queue = stream()
    publish(connect(), queue, numbered(1))
    consumer, channel, tags = consuming_from_first(connect, queue, 1)
    deadline = time.monotonic() + WAIT
    while not tags and time.monotonic() < deadline:
        consumer.process_data_events(0.05)
    with pytest.raises(ConnectionClosedByBroker) as closed:
        if settle.startswith("nack"):
            channel.basic_nack(tags[0], requeue=settle.endswith("requeue"))
        else:
            channel.basic_reject(tags[0], requeue=settle.endswith("requeue"))
        consumer.process_data_events(WAIT)
    assert (closed.value.reply_code, closed.value.reply_text) == (
        540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues "
        f"queue '{queue}' in vhost '/'")


def test_a_malformed_x_stream_offset_is_refused_with_a_sentence(connect, stream, against_greenmq):
    """RabbitMQ 3.10 fails with 541 INTERNAL_ERROR here; GreenMQ says what is wrong."""
    queue = stream()
    kind, code, text = consume_refusal(connect(), queue, prefetch=10, offset="soon")
    assert (kind, code) == ("channel", 406)
    assert text.startswith(f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{queue}' in vhost '/'")


# -- retention ----------------------------------------------------------------------------------

def test_max_length_bytes_drops_whole_old_segments_and_offsets_are_never_reused(connect, stream):
    queue = stream(**{"x-stream-max-segment-size-bytes": 1000, "x-max-length-bytes": 2000})
    body = b"x" * 100
    publish(connect(), queue, [body] * 100)
    first = first_offset(connect(), queue)
    assert first > 0
    left = [offset for offset, _ in read(connect(), queue, "first", None)]
    # RabbitMQ truncates in the background, so its log may start later by the time it is read.
    assert left[0] >= first and left == sorted(set(left)) and len(left) <= 80
    publish(connect(), queue, [b"after"])
    assert [(offset > left[-1], body) for offset, body in read(connect(), queue, "last", 1)] == [(True, b"after")]
    if not os.environ.get("GREENMQ_TEST_AMQP_URL"):
        # Dense offsets are GreenMQ's: RabbitMQ begins each segment with a chunk of its own
        # (its tracking snapshot), which takes an offset. GreenMQ truncates as it appends.
        assert left == list(range(first, 100))


def test_max_age_drops_segments_older_than_it_as_the_log_grows(connect, stream):
    queue = stream(**{"x-stream-max-segment-size-bytes": 500, "x-max-age": "1s"})
    publish(connect(), queue, [b"x" * 100] * 20)
    time.sleep(1.5)     # the age to pass, not a race: retention looks at publish times
    publish(connect(), queue, [b"y" * 100] * 20)
    assert first_offset(connect(), queue) >= 15


# -- the store, restarts, listings (GreenMQ's own) ---------------------------------------------

def pika_connection(broker):
    return pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_log_survives_a_restart_and_kill_9_with_the_same_offsets(tmp_path, sig):
    data_dir = str(tmp_path / "data")
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        connection = pika_connection(broker)
        connection.channel().queue_declare("log", durable=True, arguments=STREAM)
        publish(connection, "log", numbered(3), delivery_mode=1)     # transient: kept all the same
        publish(connection, "log", numbered(3, 3), delivery_mode=2)
        connection.close()
        assert broker.stop(sig) == (0 if sig == signal.SIGTERM else -sig)
        broker.close()
        broker = BrokerProcess(data_dir=data_dir).start()
        connection = pika_connection(broker)
        assert read(connection, "log", "first", 6) == [(n, b"m%d" % n) for n in range(6)]
        publish(connection, "log", [b"m6"])
        assert read(connection, "log", 5, 2) == [(5, b"m5"), (6, b"m6")]
        connection.close()
    finally:
        broker.close()


def test_truncation_survives_a_restart_with_the_same_offsets(tmp_path):
    data_dir = str(tmp_path / "data")
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        connection = pika_connection(broker)
        connection.channel().queue_declare("log", durable=True, arguments={
            **STREAM, "x-stream-max-segment-size-bytes": 1000, "x-max-length-bytes": 2000})
        publish(connection, "log", [b"x" * 100] * 100)
        first = first_offset(connection, "log")
        assert first > 0
        connection.close()
        assert broker.stop(signal.SIGKILL) == -signal.SIGKILL
        broker.close()
        broker = BrokerProcess(data_dir=data_dir).start()
        connection = pika_connection(broker)
        assert [offset for offset, _ in read(connection, "log", "first", 100 - first)] == list(range(first, 100))
        connection.close()
    finally:
        broker.close()


def test_a_consumer_from_first_reads_a_long_log_back_from_the_store_in_order(broker, against_greenmq):
    """Longer than the newest messages kept in memory and several read batches: the
    consumer's reads from the store must join up exactly."""
    count = TAIL_MESSAGES + 3 * READ_BATCH + 17
    connection = pika_connection(broker)
    queue = f"long-{time.monotonic_ns()}"
    connection.channel().queue_declare(queue, durable=True, arguments=STREAM)
    publish(connection, queue, [b"%d" % n for n in range(count)])
    got = read(connection, queue, "first", count, prefetch=300, quiet=0)
    assert got == [(n, b"%d" % n) for n in range(count)]
    middle = read(connection, queue, 1500, count - 1500, prefetch=300, quiet=0)
    assert middle[0] == (1500, b"1500") and len(middle) == count - 1500
    connection.close()


def test_a_consumer_whose_reads_of_the_store_fail_is_fed_in_order_once_they_work(tmp_path):
    """A consumer from "first" of a log longer than what is kept in memory, while the
    message store's disk returns errors on reads (tests/failing_disk_broker.py): nothing
    comes, the failure is logged once, and once the disk reads again every message comes,
    in order, with no crash."""
    reads = str(tmp_path / "failing-store-reads")
    env = {**os.environ, failing_disk_broker.STORE_READS_VARIABLE: reads}
    count = TAIL_MESSAGES + 50
    with BrokerProcess(script="tests/failing_disk_broker.py", env=env) as broker:
        connection = pika_connection(broker)
        connection.channel().queue_declare("log", durable=True, arguments=STREAM)
        publish(connection, "log", [b"%d" % n for n in range(count)])
        open(reads, "wb").close()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=300)
        got = []
        channel.basic_consume("log", lambda ch, method, properties, body: (
            got.append((properties.headers["x-stream-offset"], body)), ch.basic_ack(method.delivery_tag)),
            arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + WAIT
        while "cannot read the message store" not in broker.log() and time.monotonic() < deadline:
            connection.process_data_events(0.05)
        assert got == []
        os.unlink(reads)
        deadline = time.monotonic() + WAIT
        while len(got) < count and time.monotonic() < deadline:
            connection.process_data_events(0.05)
        assert got == [(n, b"%d" % n) for n in range(count)]
        connection.close()
        log = broker.log()
    assert "Traceback" not in log, log
    assert log.count("cannot read the message store") == 1 and log.count("is readable again") == 1, log


def test_listings_show_the_type_stream_and_the_messages_it_holds(broker, against_greenmq):
    connection = pika_connection(broker)
    queue = f"listed-{time.monotonic_ns()}"
    connection.channel().queue_declare(queue, durable=True, arguments=STREAM)
    publish(connection, queue, numbered(3))
    connection.close()
    status, rows = call(broker.http_port, "GET", path("queues", "/"))
    row = next(row for row in rows if row["name"] == queue)
    assert (status, row["type"], row["messages"]) == (200, "stream", 3)
    client = greenmq_connection.Connection("127.0.0.1", broker.port)
    row = next(row for row in client.list_queues() if row["name"] == queue)
    client.close()
    assert (row["type"], row["messages"]) == ("stream", 3)
    row = next(row for row in ctl_json(broker.port, "list_queues", "name", "type", "messages") if row["name"] == queue)
    assert row == {"name": queue, "type": "stream", "messages": 3}


def test_a_json_lines_consumer_passes_x_stream_offset(broker, against_greenmq):
    client = greenmq_connection.Connection("127.0.0.1", broker.port)
    queue = f"json-{time.monotonic_ns()}"
    channel = client.channel()
    channel.queue_declare(queue, durable=True, arguments=STREAM)
    for body in numbered(3):
        channel.basic_publish("", queue, body)
    channel.basic_qos(prefetch_count=10)
    got = []

    def on_message(ch, method, properties, body):
        got.append((properties.headers["x-stream-offset"], body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == 2:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, arguments={"x-stream-offset": 1})
    channel.start_consuming()
    client.close()
    assert got == [(1, b"m1"), (2, b"m2")]


def test_definitions_export_a_stream_and_bring_it_back(broker, against_greenmq):
    connection = pika_connection(broker)
    queue = f"defined-{time.monotonic_ns()}"
    connection.channel().queue_declare(queue, durable=True, arguments={**STREAM, "x-max-age": "7D"})
    status, definitions = call(broker.http_port, "GET", "/api/definitions")
    entry = next(entry for entry in definitions["queues"] if entry["name"] == queue)
    assert (status, entry["type"], entry["arguments"]) == (200, "stream", {**STREAM, "x-max-age": "7D"})
    connection.channel().queue_delete(queue)
    del entry["arguments"]["x-queue-type"]      # RabbitMQ's exports may say it with `type` alone
    assert call(broker.http_port, "POST", "/api/definitions", {"queues": [entry]})[0] == 204
    status, rows = call(broker.http_port, "GET", path("queues", "/"))
    assert next(row["type"] for row in rows if row["name"] == queue) == "stream"
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={**STREAM, "x-max-age": "7D"})    # equivalent
    channel.queue_delete(queue)
    connection.close()


class CountingStore(MemoryStore):
    """Counts the rows read back, and the most one read asked for."""

    def __init__(self):
        super().__init__()
        self.rows_read = self.largest_read = 0

    def read_queue(self, queue, after_key, limit):
        rows = super().read_queue(queue, after_key, limit)
        self.rows_read += len(rows)
        self.largest_read = max(self.largest_read, limit)
        return rows


def test_a_consumer_from_first_reads_each_stored_message_once_a_batch_at_a_time():
    store = CountingStore()
    node = Node(store=store)
    sink = RecordingSink()
    channel = login(node, sink).open_channel(1)
    channel.vhost.declare_queue("log", durable=True, arguments=STREAM)
    count = TAIL_MESSAGES + 4 * READ_BATCH + 3
    for n in range(count):
        channel.publish("", "log", b"%d" % n)
    channel.qos(100)
    channel.consume("log", "reader", arguments={"x-stream-offset": "first"})
    stream = channel.vhost.queues["log"]
    while len(sink.deliveries) < count:
        gevent.sleep(0)     # the reads from the store run in greenlets of their own
        assert len(stream.positions[channel.consumers["reader"]].read_ahead) <= READ_BATCH
        assert len(stream.tail) <= TAIL_MESSAGES
        if sink.deliveries:
            channel.ack(sink.deliveries[-1][2], multiple=True)
    assert sink.bodies() == [b"%d" % n for n in range(count)]
    assert store.rows_read <= count - TAIL_MESSAGES + READ_BATCH
    assert store.largest_read <= INDEX_INTERVAL + READ_BATCH


def test_large_messages_are_read_back_and_kept_in_fewer_to_a_batch_by_their_bytes():
    store = CountingStore()
    node = Node(store=store)
    sink = RecordingSink()
    channel = login(node, sink).open_channel(1)
    channel.vhost.declare_queue("log", durable=True, arguments=STREAM)
    body = b"x" * 100_000
    count = 300
    for _ in range(count):
        channel.publish("", "log", body)
    stream = channel.vhost.queues["log"]
    assert sum(len(message.body) for _, message, _ in stream.tail) <= TAIL_BYTES
    channel.qos(1000)
    channel.consume("log", "reader", arguments={"x-stream-offset": "first"})
    while len(sink.deliveries) < count:
        gevent.sleep(0)
        assert len(stream.positions[channel.consumers["reader"]].read_ahead) * len(body) <= READ_BATCH_BYTES
        if sink.deliveries:
            channel.ack(sink.deliveries[-1][2], multiple=True)
    assert store.largest_read * len(body) <= READ_BATCH_BYTES


# -- other clients ------------------------------------------------------------------------------

def test_kombu_declares_publishes_and_consumes_a_stream_from_an_offset(amqp_url, connect, name):
    exchange = kombu.Exchange("", type="direct")
    queue = kombu.Queue(name, exchange, routing_key=name, durable=True,
                        queue_arguments=STREAM, consumer_arguments={"x-stream-offset": 1})
    connect.declared.append(name)
    got = []

    def on_message(body, message):
        got.append((message.headers["x-stream-offset"], body))
        message.ack()

    with kombu.Connection(amqp_url) as client:
        producer = client.Producer()
        for n in range(3):
            producer.publish(f"m{n}", exchange=exchange, routing_key=name, declare=[queue], retry=True)
        client.default_channel.basic_qos(0, 10, False)
        with client.Consumer(queue, callbacks=[on_message]):
            deadline = time.monotonic() + WAIT
            while len(got) < 2 and time.monotonic() < deadline:
                try:
                    client.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
    assert got == [(1, "m1"), (2, "m2")]


def test_aio_pika_consumes_a_stream_from_first(amqp_url, connect, name):
    async def run():
        client = await aio_pika.connect(amqp_url)
        async with client:
            channel = await client.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=10)
            queue = await channel.declare_queue(name, durable=True, arguments=STREAM)
            connect.declared.append(name)
            for n in range(3):
                await channel.default_exchange.publish(aio_pika.Message(b"m%d" % n), routing_key=name)
            got = []
            async with queue.iterator(arguments={"x-stream-offset": "first"}) as messages:
                async for message in messages:
                    got.append((message.headers["x-stream-offset"], message.body))
                    await message.ack()
                    if len(got) == 3:
                        break
            return got

    assert asyncio.run(asyncio.wait_for(run(), WAIT)) == [(0, b"m0"), (1, b"m1"), (2, b"m2")]
