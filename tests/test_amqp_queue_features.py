"""RabbitMQ's queue and exchange features through pika: dead-lettering and x-death, length
limits and overflow, priority queues, exchange-to-exchange bindings, alternate exchanges,
consumer priorities, single active consumer, update-secret, and the refusal of what is not
supported. Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (a RabbitMQ 3.10)."""

import datetime
import os
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

WAIT = 10.0
# How long a test waits to see that nothing more arrives (a copy going round a cycle
# arrives within milliseconds).
QUIET = 0.3


@pytest.fixture
def connection(amqp_url):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def channel(connection):
    """In confirm mode, so a publish has reached its queues when basic_publish returns
    (RabbitMQ hands publishes to its queues asynchronously)."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def declare(channel, queue, **arguments):
    """An exclusive queue (gone with the test's connection, on RabbitMQ too)."""
    return channel.queue_declare(queue, exclusive=True, arguments=arguments).method.queue


def get(channel, queue, auto_ack=True):
    """The next message of `queue`, waiting for it (dead-lettering may be asynchronous)."""
    deadline = time.monotonic() + WAIT
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        channel.connection.sleep(0.01)


def bodies(channel, queue):
    """Everything ready in `queue` now, in order."""
    got = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append(body)


def count(channel, queue):
    return channel.queue_declare(queue, passive=True).method.message_count


def quiet_count(channel, queue):
    """Messages in `queue` once nothing has arrived for QUIET seconds."""
    last = -1
    deadline = time.monotonic() + WAIT
    while True:
        now = count(channel, queue)
        if now == last:
            return now
        assert time.monotonic() < deadline, f"messages keep arriving in {queue}"
        last = now
        channel.connection.sleep(QUIET)


def refusal(channel, connection, queue, arguments):
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_declare(queue, exclusive=True, arguments=arguments)
    return closed.value.reply_code, closed.value.reply_text


def greenmq_only():
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        pytest.skip("GreenMQ's own behaviour, not RabbitMQ's")


# -- dead-lettering -------------------------------------------------------------------------

def test_a_rejected_message_is_dead_lettered_with_rabbitmqs_x_death(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.basic_publish("", work, b"poison", pika.BasicProperties(delivery_mode=2, headers={"a": 1}))
    method, _, _ = get(channel, work, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = get(channel, dead)
    assert body == b"poison" and properties.delivery_mode == 2
    assert (method.exchange, method.routing_key) == ("", dead)
    headers = properties.headers
    assert headers["a"] == 1
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"], headers["x-first-death-exchange"]) \
        == ("rejected", work, "")
    [death] = headers["x-death"]
    assert {key: death[key] for key in ("count", "reason", "queue", "exchange", "routing-keys")} == \
        {"count": 1, "reason": "rejected", "queue": work, "exchange": "", "routing-keys": [work]}
    assert isinstance(death["time"], datetime.datetime)
    assert abs(death["time"].timestamp() - time.time()) < 60
    assert count(channel, work) == 0


def test_nack_multiple_dead_letters_each_and_requeue_does_not(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    for n in range(4):
        channel.basic_publish("", work, str(n).encode())
    tags = [get(channel, work, auto_ack=False)[0].delivery_tag for _ in range(4)]
    channel.basic_nack(tags[0], requeue=True)
    channel.basic_nack(tags[2], multiple=True, requeue=False)      # 1 and 2
    channel.basic_ack(tags[3])
    assert [get(channel, dead)[2] for _ in range(2)] == [b"1", b"2"]
    assert bodies(channel, work) == [b"0"]
    assert quiet_count(channel, dead) == 0


def test_acked_purged_and_deleted_messages_are_not_dead_lettered(channel, name):
    dead = declare(channel, name + ".dead")
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    work = declare(channel, name, **arguments)
    for body in (b"acked", b"purged"):
        channel.basic_publish("", work, body)
    channel.basic_ack(get(channel, work, auto_ack=False)[0].delivery_tag)
    channel.queue_purge(work)
    channel.basic_publish("", work, b"deleted")
    channel.queue_delete(work)
    assert quiet_count(channel, dead) == 0


def test_expired_messages_are_dead_lettered_with_their_original_expiration(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
                                     "x-message-ttl": 60_000})
    channel.basic_publish("", work, b"short", pika.BasicProperties(expiration="20"))
    method, properties, body = get(channel, dead)
    assert body == b"short" and properties.expiration is None
    [death] = properties.headers["x-death"]
    assert (death["reason"], death["original-expiration"], death["queue"]) == ("expired", "20", work)


def test_a_message_expired_behind_one_without_ttl_is_dead_lettered_when_it_reaches_the_head(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.basic_publish("", work, b"lasting")
    channel.basic_publish("", work, b"brief", pika.BasicProperties(expiration="1"))
    channel.connection.sleep(0.02)                   # past its TTL, but not at the head
    assert get(channel, work)[2] == b"lasting"
    assert channel.basic_get(work, auto_ack=True)[0] is None
    _, properties, body = get(channel, dead)
    assert (body, properties.headers["x-death"][0]["reason"]) == (b"brief", "expired")


def test_queue_ttl_dead_letters_through_the_exchanges_routing_with_the_original_key(channel, name):
    channel.exchange_declare(name, "topic", auto_delete=True)
    dead = declare(channel, name + ".dead")
    channel.queue_bind(dead, name, "orders.#")
    work = declare(channel, name + ".work", **{"x-dead-letter-exchange": name, "x-message-ttl": 10})
    channel.basic_publish("", work, b"late")        # routing key: the work queue's name
    assert quiet_count(channel, dead) == 0           # the key does not match orders.#
    work2 = declare(channel, "orders." + name, **{"x-dead-letter-exchange": name, "x-message-ttl": 10})
    channel.basic_publish("", work2, b"late")
    method, properties, _ = get(channel, dead)
    assert (method.exchange, method.routing_key) == (name, work2)
    assert properties.headers["x-death"][0]["routing-keys"] == [work2]


def test_repeated_deaths_in_one_queue_count_up_one_entry(channel, name):
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name})
    channel.basic_publish("", work, b"again")
    for expected in (1, 2, 3):
        method, _, _ = get(channel, work, auto_ack=False)
        channel.basic_reject(method.delivery_tag, requeue=False)     # back into itself
        _, properties, _ = get(channel, work, auto_ack=False)
        [death] = properties.headers["x-death"]
        assert (death["count"], death["reason"]) == (expected, "rejected")
        channel.basic_recover(requeue=True)


def test_an_automatic_dead_letter_cycle_is_broken_but_a_rejection_goes_round(channel, name):
    channel.exchange_declare(name, "fanout", auto_delete=True)
    sink = declare(channel, name + ".sink")
    channel.queue_bind(sink, name)
    looping = declare(channel, name + ".loop", **{"x-dead-letter-exchange": name, "x-message-ttl": 10})
    channel.queue_bind(looping, name)
    channel.basic_publish("", looping, b"once")
    get(channel, sink)
    # The copy dead-lettered back into the queue it expired in is dropped: one copy in all.
    assert quiet_count(channel, sink) == 0 and count(channel, looping) == 0


def test_two_queues_expiring_into_each_other_stop_after_one_round(channel, name):
    first = declare(channel, name + ".a", **{"x-dead-letter-exchange": "",
                                             "x-dead-letter-routing-key": name + ".b", "x-message-ttl": 10})
    second = declare(channel, name + ".b", **{"x-dead-letter-exchange": "",
                                              "x-dead-letter-routing-key": name + ".a"})
    channel.basic_publish("", first, b"m")
    method, properties, _ = get(channel, second, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)    # a rejection: it may go round
    _, properties, _ = get(channel, second, auto_ack=False)
    assert [(d["queue"], d["reason"], d["count"]) for d in properties.headers["x-death"]] == \
        [(first, "expired", 2), (second, "rejected", 1)]


# -- length limits --------------------------------------------------------------------------

def test_max_length_drops_the_oldest_and_dead_letters_them_as_maxlen(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-max-length": 2, "x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": dead})
    for n in range(5):
        channel.basic_publish("", work, str(n).encode())
    assert count(channel, work) == 2
    assert bodies(channel, work) == [b"3", b"4"]
    dropped = [get(channel, dead) for _ in range(3)]
    assert [body for _, _, body in dropped] == [b"0", b"1", b"2"]
    assert {p.headers["x-death"][0]["reason"] for _, p, _ in dropped} == {"maxlen"}


def test_max_length_counts_ready_messages_only(channel, name):
    work = declare(channel, name, **{"x-max-length": 1})
    channel.basic_publish("", work, b"taken")
    method, _, _ = get(channel, work, auto_ack=False)
    channel.basic_publish("", work, b"waiting")
    assert count(channel, work) == 1
    channel.basic_nack(method.delivery_tag, requeue=True)    # back over the limit: the head goes
    assert bodies(channel, work) == [b"waiting"]


def test_max_length_bytes_bounds_the_bodies(channel, name):
    work = declare(channel, name, **{"x-max-length-bytes": 10})
    for body in (b"12345", b"678", b"abcdef"):
        channel.basic_publish("", work, body)
    assert bodies(channel, work) == [b"678", b"abcdef"]     # 5 + 3 + 6 > 10, 3 + 6 fits


def test_reject_publish_nacks_in_confirm_mode_and_drops_silently_otherwise(channel, connection, name):
    work = declare(channel, name, **{"x-max-length": 2, "x-overflow": "reject-publish"})
    plain = connection.channel()
    for body in (b"1", b"2", b"3"):
        plain.basic_publish("", work, body)
    assert quiet_count(channel, work) == 2 and plain.is_open
    with pytest.raises(NackError):
        channel.basic_publish("", work, b"4")
    with pytest.raises(NackError):
        channel.basic_publish("", work, b"persistent", pika.BasicProperties(delivery_mode=2))
    channel.basic_get(work, auto_ack=True)
    channel.basic_publish("", work, b"5")            # room again: acked
    assert bodies(channel, work) == [b"2", b"5"]


def test_reject_publish_dlx_nacks_and_dead_letters_the_refused_message(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                     "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.basic_publish("", work, b"kept")
    with pytest.raises(NackError):
        channel.basic_publish("", work, b"refused")
    _, properties, body = get(channel, dead)
    assert (body, properties.headers["x-death"][0]["reason"]) == (b"refused", "maxlen")
    assert bodies(channel, work) == [b"kept"]


# -- priority queues ------------------------------------------------------------------------

def publish_with_priorities(channel, queue, priorities):
    for n, priority in enumerate(priorities):
        channel.basic_publish("", queue, f"{n}:{priority}".encode(), pika.BasicProperties(priority=priority))


def test_a_priority_queue_delivers_higher_priorities_first_fifo_within_one(channel, name):
    work = declare(channel, name, **{"x-max-priority": 10})
    publish_with_priorities(channel, work, [1, 5, None, 5, 10, 3, 200])
    # 200 is above the maximum and counts as 10; no priority counts as 0.
    assert count(channel, work) == 7
    assert bodies(channel, work) == [b"4:10", b"6:200", b"1:5", b"3:5", b"5:3", b"0:1", b"2:None"]


def test_requeued_messages_return_to_their_place_within_their_priority(channel, name):
    work = declare(channel, name, **{"x-max-priority": 5})
    publish_with_priorities(channel, work, [2, 2, 2, 5, 0])
    taken = [get(channel, work, auto_ack=False) for _ in range(3)]     # 3:5, 0:2, 1:2
    assert [body for _, _, body in taken] == [b"3:5", b"0:2", b"1:2"]
    channel.basic_nack(taken[1][0].delivery_tag, requeue=True)         # 0:2 goes back first
    channel.basic_nack(taken[2][0].delivery_tag, multiple=True, requeue=True)
    assert bodies(channel, work) == [b"3:5", b"0:2", b"1:2", b"2:2", b"4:0"]


def test_a_priority_queue_dead_letters_on_expiry_and_keeps_its_length_limit(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-max-priority": 10, "x-message-ttl": 20, "x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": dead})
    publish_with_priorities(channel, work, [1, 9])
    got = sorted(get(channel, dead)[2] for _ in range(2))
    assert got == [b"0:1", b"1:9"]
    limited = declare(channel, name + ".limited", **{"x-max-priority": 10, "x-max-length": 2})
    publish_with_priorities(channel, limited, [1, 2, 3])
    # RabbitMQ's drop-head drops what would be delivered next: the highest priority.
    assert bodies(channel, limited) == [b"1:2", b"0:1"]


# -- exchange-to-exchange bindings and alternate exchanges -------------------------------------

def test_exchange_to_exchange_bindings_route_on_and_unbind(channel, name):
    channel.exchange_declare(name + ".in", "direct")
    channel.exchange_declare(name + ".out", "fanout")
    queue = declare(channel, name)
    channel.queue_bind(queue, name + ".out")
    channel.exchange_bind(name + ".out", name + ".in", "k")
    channel.basic_publish(name + ".in", "k", b"through")
    channel.basic_publish(name + ".in", "other", b"not routed")
    assert get(channel, queue)[2] == b"through"
    channel.exchange_unbind(name + ".out", name + ".in", "k")
    channel.basic_publish(name + ".in", "k", b"after unbind")
    assert quiet_count(channel, queue) == 0
    channel.exchange_delete(name + ".in")
    channel.exchange_delete(name + ".out")


def test_a_queue_reached_twice_or_through_a_cycle_gets_one_copy(channel, name):
    a, b = name + ".a", name + ".b"
    channel.exchange_declare(a, "fanout", auto_delete=True)
    channel.exchange_declare(b, "fanout", auto_delete=True)
    channel.exchange_bind(b, a)
    channel.exchange_bind(a, b)                      # a cycle
    queue = declare(channel, name)
    channel.queue_bind(queue, a)
    channel.queue_bind(queue, b)
    channel.basic_publish(a, "", b"once")
    assert get(channel, queue)[2] == b"once"
    assert quiet_count(channel, queue) == 0


def test_exchange_bind_to_a_missing_exchange_is_not_found(channel, connection, name):
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_bind(name + ".missing", "amq.direct", "k")
    assert closed.value.reply_code == 404
    assert f"no exchange '{name}.missing' in vhost '/'" in closed.value.reply_text


def test_unroutable_messages_go_to_the_alternate_exchange_and_mandatory_returns_only_after_it(
        channel, connection, name):
    channel.exchange_declare(name + ".ae", "direct", auto_delete=True)
    channel.exchange_declare(name, "direct", auto_delete=True, arguments={"alternate-exchange": name + ".ae"})
    caught = declare(channel, name + ".caught")
    channel.queue_bind(caught, name + ".ae", "lost")
    channel.basic_publish(name, "lost", b"to the alternate", mandatory=True)
    method, _, body = get(channel, caught)
    assert (body, method.exchange, method.routing_key) == (b"to the alternate", name, "lost")
    with pytest.raises(UnroutableError):
        channel.basic_publish(name, "nowhere", b"returned", mandatory=True)


def test_the_alternate_exchange_must_be_named_by_a_string_and_redeclared_alike(channel, connection, name):
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(name, "direct", auto_delete=True, arguments={"alternate-exchange": 1})
    assert closed.value.reply_code == 406
    assert f"invalid type 'signedint' for arg 'alternate-exchange' in exchange '{name}'" in closed.value.reply_text
    channel = connection.channel()
    channel.exchange_declare(name, "direct", auto_delete=True, arguments={"alternate-exchange": "x"})
    channel.queue_bind(declare(channel, name), name, "keep")     # keeps the auto-delete exchange
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(name, "direct", auto_delete=True, arguments={"alternate-exchange": "y"})
    assert closed.value.reply_code == 406 and "inequivalent arg 'alternate-exchange'" in closed.value.reply_text


# -- consumers ------------------------------------------------------------------------------

def test_consumer_priorities_serve_the_highest_with_room_first(connection, channel, name):
    queue = declare(channel, name)
    high, low = connection.channel(), connection.channel()
    high.basic_qos(prefetch_count=2)
    got = {"high": [], "low": []}
    high.basic_consume(queue, lambda ch, m, p, b: got["high"].append(b), arguments={"x-priority": 10})
    low.basic_consume(queue, lambda ch, m, p, b: got["low"].append(b), arguments={"x-priority": -1})
    for n in range(5):
        channel.basic_publish("", queue, str(n).encode())
    deadline = time.monotonic() + WAIT
    while len(got["high"]) + len(got["low"]) < 5:
        assert time.monotonic() < deadline
        connection.process_data_events(0.02)
    assert got == {"high": [b"0", b"1"], "low": [b"2", b"3", b"4"]}


def test_a_single_active_consumer_gets_everything_until_it_goes(connection, channel, name):
    queue = declare(channel, name, **{"x-single-active-consumer": True})
    got = []
    first = channel.basic_consume(queue, lambda ch, m, p, b: got.append(("first", b)), auto_ack=True)
    other = connection.channel()
    other.basic_consume(queue, lambda ch, m, p, b: got.append(("second", b)), auto_ack=True)
    for n in range(3):
        channel.basic_publish("", queue, str(n).encode())
    deadline = time.monotonic() + WAIT
    while len(got) < 3:
        assert time.monotonic() < deadline
        connection.process_data_events(0.02)
    channel.basic_cancel(first)
    channel.basic_publish("", queue, b"3")
    while len(got) < 4:
        assert time.monotonic() < deadline
        connection.process_data_events(0.02)
    assert got == [("first", b"0"), ("first", b"1"), ("first", b"2"), ("second", b"3")]


def test_the_next_single_active_consumer_takes_over_what_waits(connection, channel, name):
    """RabbitMQ 3.10 leaves the waiting messages waiting after the active consumer's
    cancel (until later publishes, and then not all of them); GreenMQ hands them to the
    consumer that became active."""
    greenmq_only()
    queue = declare(channel, name, **{"x-single-active-consumer": True})
    for n in range(3):
        channel.basic_publish("", queue, str(n).encode())
    first, second = connection.channel(), connection.channel()
    first.basic_qos(prefetch_count=1)
    got = []
    tag = first.basic_consume(queue, lambda ch, m, p, b: got.append(("first", b)))      # never acks
    second.basic_consume(queue, lambda ch, m, p, b: got.append(("second", b)), auto_ack=True)
    deadline = time.monotonic() + WAIT
    while len(got) < 1:
        assert time.monotonic() < deadline
        connection.process_data_events(0.02)
    first.basic_cancel(tag)
    while len(got) < 3:
        assert time.monotonic() < deadline
        connection.process_data_events(0.02)
    assert got == [("first", b"0"), ("second", b"1"), ("second", b"2")]


# -- protocol -------------------------------------------------------------------------------

def test_update_secret_is_answered_and_the_connection_goes_on(connection, channel, name):
    connection.update_secret("guest", "rotated")
    assert declare(channel, name) == name


# -- what is refused ------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, reason", [
    ({"x-max-length": -1}, "{value_negative,-1}"),
    ({"x-max-length": "a"}, '"expected integer, got longstr"'),
    ({"x-max-length-bytes": -1}, "{value_negative,-1}"),
    ({"x-overflow": "foo"}, "invalid_overflow"),
    ({"x-overflow": 1}, "{unacceptable_type,signedint}"),
    ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
    ({"x-max-priority": True}, '"expected integer, got bool"'),
    ({"x-dead-letter-routing-key": "k"}, "routing_key_but_no_dlx_defined"),
    ({"x-single-active-consumer": "true"}, "{unacceptable_type,longstr}"),
    ({"x-queue-mode": "foo"}, "\"unsupported queue mode 'foo'\""),
    ({"x-queue-type": "foo"}, "\"unsupported queue type 'foo'\""),
    ({"x-expires": 0}, "{value_zero,0}"),
])
def test_wrong_argument_values_are_refused_as_rabbitmq_refuses_them(channel, connection, name, arguments, reason):
    code, text = refusal(channel, connection, name, arguments)
    argument = next(iter(arguments))
    assert code == 406
    assert text == f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' in vhost '/': {reason}"


def test_a_dead_letter_exchange_must_be_a_string(channel, connection, name):
    code, text = refusal(channel, connection, name, {"x-dead-letter-exchange": 1})
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg "
                                 f"'x-dead-letter-exchange' in queue '{name}' in vhost '/'")


@pytest.mark.parametrize("argument, value", [("x-delivery-limit", 5), ("x-max-in-memory-length", 4),
                                             ("x-max-age", "1D"), ("x-dead-letter-strategy", "at-least-once")])
def test_arguments_of_other_queue_types_are_refused(channel, connection, name, argument, value):
    code, text = refusal(channel, connection, name, {argument: value})
    assert code == 406
    assert f"invalid arg '{argument}' for queue '{name}' in vhost '/' of queue type rabbit_classic_queue" in text


def test_tuning_arguments_are_accepted_and_a_redeclare_must_repeat_the_limits(channel, connection, name):
    declare(channel, name, **{"x-queue-mode": "lazy", "x-queue-master-locator": "min-masters",
                              "x-queue-type": "classic", "x-max-length": 3})
    with pytest.raises(ChannelClosedByBroker) as closed:
        declare(channel, name, **{"x-queue-mode": "lazy", "x-queue-master-locator": "min-masters",
                                  "x-queue-type": "classic", "x-max-length": 4})
    assert closed.value.reply_code == 406
    assert f"inequivalent arg 'x-max-length' for queue '{name}' in vhost '/'" in closed.value.reply_text


def test_a_consumer_priority_must_be_an_integer(channel, connection, name):
    queue = declare(channel, name)
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.basic_consume(queue, lambda *a: None, arguments={"x-priority": "high"})
    assert closed.value.reply_code == 406
    assert closed.value.reply_text == (f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{name}' "
                                       "in vhost '/': \"expected integer, got longstr\"")


def test_queue_and_exchange_names_outside_the_specs_pattern_work_as_in_rabbitmq(channel, connection, name):
    """RabbitMQ takes any name up to 255 bytes; the spec's pattern ("-_.:" and alphanumerics)
    is not a rule it keeps, and applications use names such as these."""
    queue, exchange = declare(channel, name + " orders! café/*"), name + " x!é"
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    channel.queue_bind(queue, exchange, "k")
    channel.basic_publish(exchange, "k", b"got")
    method, _, body = get(channel, queue)
    assert (method.exchange, body) == (exchange, b"got")
    delivered = []
    channel.basic_consume(queue, lambda ch, method, properties, body: delivered.append(method.exchange),
                          auto_ack=True)
    channel.basic_publish(exchange, "k", b"delivered")
    deadline = time.monotonic() + WAIT
    while not delivered and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    assert delivered == [exchange]
    channel.exchange_delete(exchange)
