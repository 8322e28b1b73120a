"""consumer_timeout, as RabbitMQ's: a channel holding a delivery unacknowledged for longer
than the timeout is closed with 406 and its deliveries requeued. The broker here times out
after one second, and checks once a second, so each test takes a few seconds."""

import contextlib
import json
import signal
import socket
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from greenmq.config import ConfigError, load_settings
from tests.broker_process import BrokerProcess

TIMEOUT_MS = 1000
WAIT = 10.0
TIMED_OUT_TEXT = (f"PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: "
                  f"{TIMEOUT_MS} ms. This timeout value can be configured, see consumers doc guide to learn more")


@pytest.fixture(scope="module")
def broker():
    with BrokerProcess("--consumer-timeout", str(TIMEOUT_MS), "--in-memory") as process:
        yield process


@pytest.fixture
def params(broker):
    """conftest's `connections` then reach this broker, not the session's."""
    return pika.ConnectionParameters("127.0.0.1", broker.ports["amqp_port"])


def until(condition, connection):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        connection.process_data_events(0.05)


def queue_with(channel, *bodies):
    name = channel.queue_declare("", exclusive=False, auto_delete=False).method.queue
    for body in bodies:
        channel.basic_publish("", name, body)
    return name


def timed_out_witness(connection, queue):
    """A channel that takes a message with basic.get and never acks it: once the broker has
    closed it, a check has run past the timeout."""
    witness = connection.channel()
    queue_with(witness)
    witness.basic_publish("", queue, b"witness")
    method, _, _ = witness.basic_get(queue)
    assert method is not None
    return witness


def test_unacked_delivery_past_the_timeout_closes_its_channel_and_is_redelivered(connections):
    connection = connections()
    channel = connection.channel()
    queue = queue_with(channel, b"slow")
    deliveries = channel.consume(queue, auto_ack=False, inactivity_timeout=0.05)
    method, _, body = next(deliveries)
    assert body == b"slow" and not method.redelivered
    deadline = time.monotonic() + WAIT
    with pytest.raises(ChannelClosedByBroker) as closed:
        while time.monotonic() < deadline:
            next(deliveries)
    assert (closed.value.reply_code, closed.value.reply_text) == (406, TIMED_OUT_TEXT)
    other = connections().channel()
    method, _, body = next(other.consume(queue, auto_ack=True, inactivity_timeout=WAIT))
    assert body == b"slow" and method.redelivered


def test_consumer_that_acks_in_time_keeps_its_channel(connections):
    connection = connections()
    channel = connection.channel()
    queue = queue_with(channel)
    held = []
    channel.basic_consume(queue, lambda ch, method, properties, body: held.append(method.delivery_tag))
    channel.basic_publish("", queue, b"0")
    until(lambda: held, connection)
    witness = timed_out_witness(connection, queue_with(channel))
    # Always one delivery unacked, but never for long: each new one settles the one before.
    while not witness.is_closed:
        channel.basic_publish("", queue, b"next")
        count = len(held)
        until(lambda: len(held) > count, connection)
        channel.basic_ack(held[-2])
    assert channel.is_open


def test_no_ack_consumer_is_never_timed_out(connections):
    connection = connections()
    channel = connection.channel()
    queue = queue_with(channel, b"a", b"b")
    received = []
    channel.basic_consume(queue, lambda ch, method, properties, body: received.append(body), auto_ack=True)
    until(lambda: len(received) == 2, connection)
    witness = timed_out_witness(connection, queue_with(channel))
    until(lambda: witness.is_closed, connection)
    assert channel.is_open
    channel.basic_publish("", queue, b"c")
    until(lambda: len(received) == 3, connection)


def test_basic_get_unacked_past_the_timeout_closes_its_channel_and_is_requeued(connections):
    connection = connections()
    channel = connection.channel()
    queue = queue_with(channel, b"got")
    method, _, body = channel.basic_get(queue)
    assert body == b"got"
    closed = []
    channel._impl.add_on_close_callback(lambda ch, reason: closed.append(reason))
    until(lambda: closed, connection)
    assert (closed[0].reply_code, closed[0].reply_text) == (406, TIMED_OUT_TEXT)
    method, _, body = connections().channel().basic_get(queue, auto_ack=True)
    assert body == b"got" and method.redelivered


def test_json_lines_client_is_told_its_channel_closed(broker):
    with socket.create_connection(("127.0.0.1", broker.ports["port"]), timeout=WAIT) as sock:
        lines = sock.makefile("rwb")

        def send(request):
            lines.write(json.dumps(request).encode() + b"\n")
            lines.flush()

        def call(request):
            send(request)
            return json.loads(lines.readline())

        assert call({"op": "hello"})["ok"]
        queue = call({"op": "queue.declare", "queue": ""})["queue"]
        send({"op": "publish", "routing_key": queue, "body": "held"})
        assert call({"op": "get", "queue": queue})["ok"]
        event = json.loads(lines.readline())
        assert event == {"event": "channel_closed", "channel": 1, "code": 406, "error": "PRECONDITION_FAILED",
                         "text": TIMED_OUT_TEXT}
        assert call({"op": "channel.open", "channel": 1})["ok"]
        got = call({"op": "get", "queue": queue, "no_ack": True})
        assert got["body"] == "held" and got["redelivered"] is True


def test_setting_is_thirty_minutes_by_default_and_zero_turns_it_off():
    assert load_settings([], environ={}).consumer_timeout == 1_800_000
    assert load_settings([], environ={"GREENMQ_CONSUMER_TIMEOUT": "0"}).consumer_timeout == 0
    assert load_settings(["--consumer-timeout", "5000"], environ={}).consumer_timeout == 5000


@pytest.mark.parametrize("value", ["-1", "2147483648", "1.5"])
def test_setting_refuses_what_rabbitmq_refuses(value):
    with pytest.raises(ConfigError, match="CONSUMER_TIMEOUT must be a whole number"):
        load_settings([], environ={"GREENMQ_CONSUMER_TIMEOUT": value})


@contextlib.contextmanager
def _within(seconds):
    """Fail, rather than hang, when the block takes longer than `seconds`."""
    def too_long(signum, frame):
        raise AssertionError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("wire", ["json-lines", "amqp"])
def test_connection_py_consumer_timed_out_gets_the_error_and_its_channel_back(broker, wire):
    """connection.py over either wire: start_consuming raises the broker's 406; the channel is
    open again with its confirm mode, its consumer gone, and the message is redelivered."""
    import connection

    if wire == "amqp":
        client = connection.Connection(f"amqp://guest:guest@127.0.0.1:{broker.ports['amqp_port']}/%2f")
    else:
        client = connection.Connection("127.0.0.1", broker.ports["port"])
    with contextlib.closing(client), _within(3 * WAIT):
        channel = client.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare("").method.queue
        channel.basic_publish("", queue, b"slow")
        received = []
        channel.basic_consume(queue, lambda ch, method, properties, body: received.append(body))
        with pytest.raises(connection.PreconditionFailed) as timed_out:
            channel.start_consuming()
        assert received == [b"slow"]
        assert timed_out.value.code == 406
        assert str(timed_out.value) == TIMED_OUT_TEXT.replace("channel 1", f"channel {channel.channel_number}")
        channel.start_consuming()       # returns at once: the channel has no consumers any more
        channel.basic_publish("", queue, b"after")      # confirmed on the reopened channel
        redelivered = []
        for method, _, body in channel.consume(queue, auto_ack=True, inactivity_timeout=WAIT):
            redelivered.append((body, method.redelivered))
            if len(redelivered) == 2:
                break
        assert redelivered == [(b"slow", True), (b"after", False)]
