"""Transient messages, and every message of a non-durable or exclusive queue, page to the
scratch store (store/scratch.py) while memory is short: a queue takes many times the memory
limit of them with its publisher going on, drains complete and in order, gives its memory
back to the last byte, and none of them comes back after a restart or a kill -9, while the
persistent messages of durable queues beside them all do. Through pika, against brokers of
their own with a small limit and window."""

import os
import signal
import struct
import time

import pika
import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess

LIMIT = 4 * 1024 * 1024
WINDOW = 64                 # 256 KiB of 4 KiB messages in memory per queue, a sixteenth of the limit
BODY_BYTES = 4096
BACKLOG = 5 * LIMIT // BODY_BYTES       # five times the limit
DEADLINE_SECONDS = 60
ARGUMENTS = ("--memory-limit", "4MiB", "--queue-window", str(WINDOW))

TRANSIENT = pika.BasicProperties(delivery_mode=1)
PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture
def broker():
    """Its log must end without a traceback."""
    with BrokerProcess(*ARGUMENTS) as process:
        yield process
        log = process.log()
    assert "Traceback" not in log, log


def open_channel(broker):
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))
    return conn, conn.channel()


def body(number):
    return struct.pack(">I", number) + b"x" * (BODY_BYTES - 4)


def number_of(message_body):
    return struct.unpack(">I", message_body[:4])[0]


def publish(channel, queue, numbers, persistent_if=lambda number: False):
    """Without confirms but the last's: confirms come in order, so all are routed then."""
    numbers = list(numbers)
    for number in numbers[:-1]:
        channel.basic_publish("", queue, body(number), PERSISTENT if persistent_if(number) else TRANSIENT)
    channel.confirm_delivery()
    channel.basic_publish("", queue, body(numbers[-1]), PERSISTENT if persistent_if(numbers[-1]) else TRANSIENT)


def consume(channel, queue, count):
    """The numbers of `count` messages through a consumer with a small prefetch, acked."""
    channel.basic_qos(prefetch_count=50)
    numbers = []
    for method, _, message_body in channel.consume(queue, inactivity_timeout=DEADLINE_SECONDS):
        assert method is not None, f"only {len(numbers)} of {count} arrived"
        numbers.append(number_of(message_body))
        channel.basic_ack(method.delivery_tag)
        if len(numbers) == count:
            break
    channel.cancel()
    return numbers


def status(broker):
    with connection.Connection(port=broker.port) as admin:
        return admin.call("status")


def wait_for(predicate, what):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def scratch_file(broker):
    return os.path.join(broker.data_dir, "scratch.sqlite3")


@pytest.mark.parametrize("durable, persistent_if", [
    (False, lambda number: False),
    (True, lambda number: False),
    (True, lambda number: number % 3 == 0),
    (False, lambda number: number % 3 == 0),
], ids=["non-durable", "transient-in-durable", "mixed-in-durable", "persistent-in-non-durable"])
def test_a_queue_takes_five_times_the_limit_and_drains_complete_and_in_order(broker, durable, persistent_if):
    conn, channel = open_channel(broker)
    channel.queue_declare("backlog", durable=durable)
    publish(channel, "backlog", range(BACKLOG), persistent_if)
    assert channel.queue_declare("backlog", passive=True).method.message_count == BACKLOG
    during = status(broker)
    assert during["scratch"]["messages"] > BACKLOG // 2
    assert during["memory"]["held_bytes"] < LIMIT
    conn.close()
    conn, channel = open_channel(broker)
    assert consume(channel, "backlog", BACKLOG) == list(range(BACKLOG))
    assert channel.queue_declare("backlog", passive=True).method.message_count == 0
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")
    assert status(broker)["scratch"]["messages"] == 0


def test_an_exclusive_queue_pages_too_and_basic_get_reads_back_with_requeue_to_the_head(broker):
    conn, channel = open_channel(broker)
    queue = channel.queue_declare("", exclusive=True).method.queue
    publish(channel, queue, range(BACKLOG))
    assert status(broker)["scratch"]["messages"] > BACKLOG // 2
    taken = [channel.basic_get(queue) for _ in range(3)]
    assert [number_of(message_body) for _, _, message_body in taken] == [0, 1, 2]
    channel.basic_nack(taken[-1][0].delivery_tag, multiple=True, requeue=True)
    numbers = []
    while True:
        method, _, message_body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        numbers.append(number_of(message_body))
    assert numbers == list(range(BACKLOG))
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")


@pytest.mark.parametrize("end", ["purge", "delete"])
def test_purge_and_delete_drop_scratch_paged_messages_and_their_memory(broker, end):
    conn, channel = open_channel(broker)
    channel.queue_declare("dropped")
    channel.queue_declare("kept")
    publish(channel, "kept", range(BACKLOG // 2))
    publish(channel, "dropped", range(BACKLOG))
    kept_on_disk = status(broker)["scratch"]["messages"]
    ended = channel.queue_purge("dropped") if end == "purge" else channel.queue_delete("dropped")
    assert ended.method.message_count == BACKLOG
    wait_for(lambda: status(broker)["scratch"]["messages"] <= kept_on_disk - (BACKLOG - WINDOW),
             "the purged messages to leave the scratch store")
    if end == "purge":      # the queue goes on paging, and what it pages now stays
        publish(channel, "dropped", range(BACKLOG, 2 * BACKLOG))
        assert consume(channel, "dropped", BACKLOG) == list(range(BACKLOG, 2 * BACKLOG))
    assert consume(channel, "kept", BACKLOG // 2) == list(range(BACKLOG // 2))
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")
    assert status(broker)["scratch"]["messages"] == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "kill-9"])
def test_after_a_restart_no_transient_message_is_back_and_every_persistent_one_is_in_order(broker, stop):
    conn, channel = open_channel(broker)
    channel.queue_declare("durable", durable=True)
    channel.queue_declare("transient-only", durable=True)
    channel.queue_declare("non-durable")
    publish(channel, "non-durable", range(BACKLOG))
    publish(channel, "transient-only", range(BACKLOG))
    publish(channel, "durable", range(BACKLOG), persistent_if=lambda number: number % 3 == 0)
    assert status(broker)["scratch"]["messages"] > BACKLOG
    scratch_bytes = os.path.getsize(scratch_file(broker))
    assert scratch_bytes > LIMIT
    conn.close()
    broker.stop(stop)
    with BrokerProcess(*ARGUMENTS, data_dir=broker.data_dir) as again:
        # Wiped at start: no transient message can come back from it, and it does not grow.
        assert os.path.getsize(scratch_file(again)) < scratch_bytes // 100
        conn, channel = open_channel(again)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("non-durable", passive=True)
        channel = conn.channel()
        assert channel.queue_declare("transient-only", passive=True).method.message_count == 0
        persistent = list(range(0, BACKLOG, 3))
        assert channel.queue_declare("durable", passive=True).method.message_count == len(persistent)
        assert consume(channel, "durable", len(persistent)) == persistent
        conn.close()
        again.stop()
    assert not os.path.exists(scratch_file(broker))     # a clean stop leaves nothing of it
