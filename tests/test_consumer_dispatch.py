"""Which consumer a queue hands its next message to, through pika: consumers of equal
priority take turns, and prefetch windows hold back only deliveries that await an ack.
Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (a RabbitMQ 3.10)."""

import time

from tests.test_amqp_queue_features import channel, connection, declare  # noqa: F401  (fixtures)

WAIT = 10.0
MESSAGES = 6


def wait_for(connection, predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        connection.process_data_events(0.01)


def test_consumers_of_equal_priority_take_turns(connection, channel, name):
    """With consumer priorities in play, the highest-priority consumers share the queue in
    turn, as consumers without priorities do; a lower one gets nothing while they have room."""
    queue = declare(channel, name)
    got = []
    for consumer, priority in (("first", 5), ("second", 5), ("lower", 1)):
        channel.basic_consume(queue, lambda ch, m, p, body, consumer=consumer: got.append((consumer, body)),
                              auto_ack=True, arguments={"x-priority": priority})
    for number in range(MESSAGES):
        channel.basic_publish("", queue, str(number).encode())
    wait_for(connection, lambda: len(got) == MESSAGES, f"{MESSAGES} deliveries")
    owners = [consumer for consumer, _ in got]
    assert sorted(body for _, body in got) == [str(number).encode() for number in range(MESSAGES)]
    assert (owners.count("first"), owners.count("second"), owners.count("lower")) == (3, 3, 0)


def test_a_no_ack_consumer_is_not_held_back_by_a_full_prefetch_window(connection, channel, name):
    """RabbitMQ applies basic.qos to deliveries that await an ack only: on a channel whose
    shared (global) window is full, a no-ack consumer still gets everything."""
    acked, unacked = declare(channel, name + ".acked"), declare(channel, name + ".no-ack")
    for number in range(MESSAGES):
        channel.basic_publish("", acked, str(number).encode())
        channel.basic_publish("", unacked, str(number).encode())
    consumers = connection.channel()
    consumers.basic_qos(prefetch_count=1, global_qos=True)
    held, free = [], []
    consumers.basic_consume(acked, lambda ch, m, p, body: held.append(body))     # never acks
    wait_for(connection, lambda: held, "the acking consumer to fill the window")
    consumers.basic_consume(unacked, lambda ch, m, p, body: free.append(body), auto_ack=True)
    wait_for(connection, lambda: len(free) == MESSAGES, f"{MESSAGES} deliveries to the no-ack consumer")
    assert free == [str(number).encode() for number in range(MESSAGES)]
    assert held == [b"0"]       # the window itself still holds
