"""Quorum queues (x-queue-type: quorum) through the front door, as RabbitMQ 3.10 has them:
declaration rules and refusals, every message on disk, delivery counting and its limit,
dead-lettering at most and at least once, length limits, TTLs, consumers, listings.
Each test runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (a RabbitMQ 3.10) with the same
body; those marked GreenMQ-only say why."""

import os
import signal
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, NackError

from greenmq import connection as client
from greenmq.message import Message
from greenmq.node import Node
from greenmq.quorum_queue import DEAD_LETTER_RETRY_SECONDS
from tests import http_api
from tests.broker_process import BrokerProcess
from tests.greenmqctl_process import greenmqctl_json
from tests.test_amqp_queue_features import bodies, channel, connection, count, get, quiet_count  # noqa: F401 (fixtures)

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture
def quorum(amqp_url, name):
    """Declares durable quorum queues (and classic helpers) named after the test, deleted
    after it: a reference broker keeps durable queues between runs."""
    declared = []

    def declare(channel, suffix="", classic=False, durable=True, **arguments):
        queue = name + suffix
        declared.append(queue)
        channel.queue_declare(queue, durable=durable, arguments=arguments if classic else {**QUORUM, **arguments})
        return queue

    yield declare
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for queue in declared:
        ch.queue_delete(queue)
    conn.close()


def refused(connection, queue, **options):
    with pytest.raises(ChannelClosedByBroker) as closed:
        connection.channel().queue_declare(queue, **options)
    return closed.value.reply_code, closed.value.reply_text


def delivery_count(properties):
    return (properties.headers or {}).get("x-delivery-count")


# -- declaring -------------------------------------------------------------------------------

@pytest.mark.parametrize("options, prop", [
    ({"durable": False}, "non-durable"),
    ({"durable": True, "exclusive": True}, "exclusive-owner"),
    ({"durable": True, "auto_delete": True}, "auto-delete"),
])
def test_a_quorum_queue_is_durable_never_exclusive_or_auto_delete(connection, name, options, prop):
    assert refused(connection, name, arguments=QUORUM, **options) == (
        406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{name}' in vhost '/'")


@pytest.mark.parametrize("argument, value", [
    ("x-max-priority", 5),      # RabbitMQ 4 has priorities in quorum queues; 3.10 refuses them
    ("x-queue-mode", "lazy"), ("x-queue-version", 2), ("x-queue-master-locator", "client-local"),
    ("x-initial-cluster-size", 1), ("x-max-age", "1D"),
])
def test_what_a_quorum_queue_cannot_do_is_refused_naming_its_type(connection, name, argument, value):
    assert refused(connection, name, durable=True, arguments={**QUORUM, argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' in vhost '/' "
             "of queue type rabbit_quorum_queue")


@pytest.mark.parametrize("argument, value, reason", [
    ("x-dead-letter-strategy", "sometimes", "invalid_dlx_strategy"),
    ("x-dead-letter-strategy", 3, "{unacceptable_type,signedint}"),
    ("x-queue-leader-locator", "anywhere", "invalid_queue_locator_arg"),
    ("x-overflow", "drop-tail", "invalid_overflow"),
    ("x-message-ttl", -1, "{value_negative,-1}"),
])
def test_bad_values_of_quorum_arguments_are_refused(connection, name, argument, value, reason):
    assert refused(connection, name, durable=True, arguments={**QUORUM, argument: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' in vhost '/': {reason}")


def test_the_arguments_of_a_quorum_queue_are_accepted_and_a_redeclare_repeats_them(channel, connection, quorum):
    arguments = {"x-delivery-limit": 3, "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
                 "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "elsewhere", "x-max-length": 10,
                 "x-max-length-bytes": 1000, "x-message-ttl": 60000, "x-expires": 600000,
                 "x-single-active-consumer": True, "x-max-in-memory-length": 5, "x-max-in-memory-bytes": 500,
                 "x-quorum-initial-group-size": 3, "x-queue-leader-locator": "balanced", "x-unknown": 1}
    queue = quorum(channel, **arguments)
    channel.queue_declare(queue, durable=True, arguments={**QUORUM, **arguments, "x-unknown": 2})
    assert refused(connection, queue, durable=True, arguments={**QUORUM, **arguments, "x-delivery-limit": 4}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue '{queue}' in vhost '/': "
             "received '4' but current is '3'")
    without = {key: value for key, value in arguments.items() if key != "x-dead-letter-strategy"}
    assert refused(connection, queue, durable=True, arguments={**QUORUM, **without}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-strategy' for queue '{queue}' in vhost '/': "
             "received none but current is the value 'at-least-once' of type 'longstr'")


def test_a_queue_keeps_its_type_a_redeclare_of_the_other_type_is_inequivalent(channel, connection, quorum):
    queue = quorum(channel)
    classic = quorum(channel, ".classic", classic=True)
    what = f"for queue '{queue}' in vhost '/'"
    assert refused(connection, queue, durable=True) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' {what}: "
             "received none but current is the value 'quorum' of type 'longstr'")
    assert refused(connection, queue, durable=True, arguments={"x-queue-type": "classic"}) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' {what}: received 'classic' but current is 'quorum'")
    assert refused(connection, classic, durable=True, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{classic}' in vhost '/': "
             "received the value 'quorum' of type 'longstr' but current is none")
    # A classic queue declared without a type is one declared 'classic', either way round.
    channel.queue_declare(classic, durable=True, arguments={"x-queue-type": "classic"})
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


# -- delivery counting -----------------------------------------------------------------------

def test_every_return_counts_and_past_the_delivery_limit_the_message_is_dead_lettered(channel, connection, quorum):
    dead = quorum(channel, ".dead", classic=True)
    queue = quorum(channel, **{"x-delivery-limit": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.basic_publish("", queue, b"poison", pika.BasicProperties(headers={"h": 1}))
    # A consumer's first delivery has no count; a channel closed with it unacked returns it.
    consuming = connection.channel()
    consuming.basic_qos(prefetch_count=1)
    first = []
    consuming.basic_consume(queue, lambda ch, method, properties, body: first.append((method, properties)))
    deadline = time.monotonic() + 10
    while not first and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    assert not first[0][0].redelivered and first[0][1].headers == {"h": 1}
    consuming.close()
    method, properties, _ = get(channel, queue, auto_ack=False)
    assert method.redelivered and properties.headers == {"h": 1, "x-delivery-count": 1}
    channel.basic_nack(method.delivery_tag, requeue=True)
    method, properties, _ = get(channel, queue, auto_ack=False)
    assert delivery_count(properties) == 2
    channel.basic_reject(method.delivery_tag, requeue=True)       # the third return: past the limit
    method, properties, body = get(channel, dead)
    assert body == b"poison"
    death = properties.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
    assert properties.headers["x-first-death-reason"] == "delivery_limit"
    assert "x-delivery-count" not in properties.headers and properties.headers["h"] == 1
    assert count(channel, queue) == 0


def test_basic_get_counts_from_zero_and_without_a_dlx_the_message_past_the_limit_is_dropped(channel, quorum):
    queue = quorum(channel, **{"x-delivery-limit": 0})
    channel.basic_publish("", queue, b"once")
    method, properties, _ = get(channel, queue, auto_ack=False)
    assert not method.redelivered and delivery_count(properties) == 0
    channel.basic_nack(method.delivery_tag, requeue=True)
    assert quiet_count(channel, queue) == 0


def test_without_a_delivery_limit_returns_are_counted_and_never_end(channel, quorum):
    queue = quorum(channel, **{"x-delivery-limit": "none"})      # not an integer: no limit, as in 3.10
    channel.basic_publish("", queue, b"again")
    for expected in range(4):
        method, properties, _ = get(channel, queue, auto_ack=False)
        assert delivery_count(properties) == expected
        channel.basic_nack(method.delivery_tag, requeue=True)


# -- dead-letter strategies ----------------------------------------------------------------

def full_target(channel, quorum):
    """A classic queue holding one message at its limit of one, refusing the next."""
    target = quorum(channel, ".target", classic=True, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.basic_publish("", target, b"filler")
    return target


def test_at_least_once_keeps_a_message_the_target_refuses(channel, quorum):
    target = full_target(channel, quorum)
    queue = quorum(channel, **{"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
                               "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target})
    channel.basic_publish("", queue, b"kept")
    method, _, _ = get(channel, queue, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert quiet_count(channel, target) == 1
    assert count(channel, queue) == 0       # not ready: waiting to be dead-lettered
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        return      # RabbitMQ retries after its publisher-confirm timeout, minutes later
    assert bodies(channel, target) == [b"filler"]
    assert get(channel, target)[2] == b"kept"


def test_at_least_once_without_reject_publish_falls_back_to_at_most_once(channel, quorum):
    target = full_target(channel, quorum)
    queue = quorum(channel, **{"x-dead-letter-strategy": "at-least-once",
                               "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target})
    channel.basic_publish("", queue, b"lost")
    method, _, _ = get(channel, queue, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert quiet_count(channel, target) == 1
    assert bodies(channel, target) == [b"filler"]
    if not os.environ.get("GREENMQ_TEST_AMQP_URL"):
        time.sleep(2 * DEAD_LETTER_RETRY_SECONDS)      # long enough for an at-least-once retry to land
    assert quiet_count(channel, target) == 0 and count(channel, queue) == 0


def test_at_least_once_dead_letters_at_once_when_the_target_has_room(channel, quorum):
    target = quorum(channel, ".target", classic=True)
    queue = quorum(channel, **{"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
                               "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target,
                               "x-message-ttl": 50})
    channel.basic_publish("", queue, b"expiring")
    _, properties, body = get(channel, target)
    assert body == b"expiring" and properties.headers["x-death"][0]["reason"] == "expired"


# -- length limits and TTLs ------------------------------------------------------------------

def publish_all(channel, queue, n):
    """'a' for each publish confirmed, 'n' for each nacked."""
    outcome = ""
    for _ in range(n):
        try:
            channel.basic_publish("", queue, b"x")
            outcome += "a"
        except NackError:
            outcome += "n"
    return outcome


def test_reject_publish_goes_one_over_the_limit_and_takes_publishes_again_at_80_percent(channel, quorum):
    queue = quorum(channel, **{"x-max-length": 5, "x-overflow": "reject-publish"})
    assert publish_all(channel, queue, 8) == "aaaaaann" and count(channel, queue) == 6
    channel.basic_get(queue, auto_ack=True)
    assert publish_all(channel, queue, 1) == "n" and count(channel, queue) == 5
    channel.basic_get(queue, auto_ack=True)
    assert publish_all(channel, queue, 1) == "a" and count(channel, queue) == 5


def test_reject_publish_counts_bytes_the_same_way(channel, quorum):
    queue = quorum(channel, **{"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
    outcome = ""
    for _ in range(5):
        try:
            channel.basic_publish("", queue, b"fiveB")
            outcome += "a"
        except NackError:
            outcome += "n"
    assert outcome == "aaann"       # at 10 bytes it takes one more; at 15 it refuses until back at 8
    channel.basic_get(queue, auto_ack=True)
    assert publish_all(channel, queue, 1) == "n"
    channel.basic_get(queue, auto_ack=True)
    assert publish_all(channel, queue, 1) == "a"


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish-dlx"])
def test_drop_head_dead_letters_the_oldest_and_reject_publish_dlx_is_drop_head(channel, quorum, overflow):
    # 3.10 has no reject-publish-dlx for quorum queues: it warns and drops the head.
    dead = quorum(channel, ".dead", classic=True)
    queue = quorum(channel, **{"x-max-length": 1, "x-overflow": overflow, "x-dead-letter-exchange": "",
                               "x-dead-letter-routing-key": dead})
    for body in (b"1", b"2"):
        channel.basic_publish("", queue, body)
    _, properties, body = get(channel, dead)
    assert body == b"1" and properties.headers["x-death"][0]["reason"] == "maxlen"
    assert bodies(channel, queue) == [b"2"]


def test_message_ttls_expire_and_x_expires_deletes_the_idle_queue(channel, connection, quorum):
    dead = quorum(channel, ".dead", classic=True)
    queue = quorum(channel, **{"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.basic_publish("", queue, b"queue-ttl")
    _, properties, body = get(channel, dead)
    assert body == b"queue-ttl" and properties.headers["x-death"][0]["reason"] == "expired"
    own = quorum(channel, ".own")
    channel.basic_publish("", own, b"own-ttl", pika.BasicProperties(expiration="50"))
    channel.basic_publish("", own, b"kept")
    time.sleep(0.2)     # the expiration must pass; the answer below is the check
    assert bodies(channel, own) == [b"kept"]
    expiring = quorum(channel, ".expiring", **{"x-expires": 200})
    # Asked less often than x-expires (GreenMQ's passive declare restarts the clock); RabbitMQ
    # deletes an expired quorum queue on its next tick (5 s).
    deadline = time.monotonic() + 15
    while True:
        time.sleep(0.5)
        try:
            connection.channel().queue_declare(expiring, passive=True)
        except ChannelClosedByBroker as closed:
            assert closed.reply_code == 404
            break
        assert time.monotonic() < deadline, "the idle queue was not deleted"


def test_priorities_of_messages_are_ignored_first_in_first_out(channel, quorum):
    queue = quorum(channel)     # 3.10: no priorities in quorum queues (RabbitMQ 4 has two levels)
    channel.basic_publish("", queue, b"low", pika.BasicProperties(priority=1))
    channel.basic_publish("", queue, b"high", pika.BasicProperties(priority=9))
    assert bodies(channel, queue) == [b"low", b"high"]


# -- consumers -------------------------------------------------------------------------------

def consume_into(channel, queue, got, tag, **arguments):
    channel.basic_consume(queue, lambda ch, method, properties, body: (got.append((tag, body)),
                                                                        ch.basic_ack(method.delivery_tag)),
                          consumer_tag=tag, arguments=arguments or None)


def wait_for(connection, condition):
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        connection.process_data_events(0.05)


def test_single_active_consumer_and_consumer_priorities(channel, connection, quorum):
    single = quorum(channel, ".single", **{"x-single-active-consumer": True})
    ranked = quorum(channel, ".ranked")
    got = []
    consume_into(channel, single, got, "first")
    consume_into(channel, single, got, "second")
    consume_into(channel, ranked, got, "low", **{"x-priority": 1})
    consume_into(channel, ranked, got, "high", **{"x-priority": 5})
    for i in range(3):
        channel.basic_publish("", single, b"s%d" % i)
        channel.basic_publish("", ranked, b"r%d" % i)
    wait_for(connection, lambda: len(got) == 6)
    assert {tag for tag, body in got if body.startswith(b"s")} == {"first"}
    assert {tag for tag, body in got if body.startswith(b"r")} == {"high"}


def test_global_qos_is_refused_when_consuming_a_quorum_queue(amqp_url, channel, quorum):
    queue = quorum(channel)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=0, global_qos=True)        # no window shared: allowed
    ch.basic_consume(queue, lambda *args: None)
    ch.basic_qos(prefetch_count=10, global_qos=True)
    assert ch.basic_get(queue) == (None, None, None)       # basic.get is no consumer
    with pytest.raises(ConnectionClosedByBroker) as closed:
        ch.basic_consume(queue, lambda *args: None, auto_ack=True)
    assert (closed.value.reply_code, closed.value.reply_text) == (
        540, f"NOT_IMPLEMENTED - queue '{queue}' in vhost '/' does not support global qos")


# -- GreenMQ's own listings, JSON lines, disk ------------------------------------------------

def test_listings_definitions_and_json_lines_know_the_type(broker, against_greenmq, name):
    conn = client.Connection("127.0.0.1", broker.port)
    channel = conn.channel()
    channel.queue_declare(name, durable=True, arguments=QUORUM)
    channel.basic_publish("", name, b"over json lines")
    rows = {row["name"]: row for row in greenmqctl_json(broker.port, "list_queues", "name", "type", "messages")}
    assert rows[name] == {"name": name, "type": "quorum", "messages": 1}
    status, queue = http_api.call(broker.http_port, "GET", http_api.path("queues", "/", name))
    assert status == 200 and queue["type"] == "quorum" and queue["arguments"] == QUORUM
    status, definitions = http_api.call(broker.http_port, "GET", "/api/definitions")
    exported = [q for q in definitions["queues"] if q["name"] == name]
    assert exported[0]["type"] == "quorum"
    channel.queue_delete(name)
    imported = dict(exported[0], arguments={})      # the type field alone names it
    status, _ = http_api.call(broker.http_port, "POST", "/api/definitions",
                              {"queues": [imported], "bindings": [], "exchanges": []})
    assert status in (200, 201, 204)
    rows = {row["name"]: row for row in greenmqctl_json(broker.port, "list_queues", "name", "type")}
    assert rows[name]["type"] == "quorum"
    with pytest.raises(client.PreconditionFailed) as refusal:
        channel.queue_declare(name, durable=True)
    assert "inequivalent arg 'x-queue-type'" in str(refusal.value)
    conn.channel().queue_delete(name)
    conn.close()


def pika_on(broker):
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))
    return conn, conn.channel()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_confirmed_transient_messages_survive_a_restart_and_kill_9(tmp_path, sig):
    data_dir = str(tmp_path / "data")
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_on(broker)
        ch.queue_declare("orders", durable=True, arguments=QUORUM)
        ch.queue_declare("classic", durable=True)
        ch.confirm_delivery()
        for i in range(200):
            ch.basic_publish("", "orders", b"%d" % i, pika.BasicProperties(delivery_mode=1))
        ch.basic_publish("", "classic", b"transient")
        method, _, _ = ch.basic_get("orders")
        ch.basic_ack(method.delivery_tag)
        broker.stop(sig)
        broker.close()
        broker = BrokerProcess(data_dir=data_dir).start()
        conn, ch = pika_on(broker)
        got = []
        while True:
            method, properties, body = ch.basic_get("orders", auto_ack=True)
            if method is None:
                break
            got.append(body)
        # The ack is promised nothing: after kill -9 the acked message may come back.
        assert [body for body in got if body != b"0"] == [b"%d" % i for i in range(1, 200)]
        assert sig == signal.SIGKILL or got[0] == b"1"
        assert ch.queue_declare("classic", passive=True).method.message_count == 0    # transient, as always
        ch.queue_declare("orders", durable=True, arguments=QUORUM)      # still a quorum queue
        conn.close()
    finally:
        broker.close()


def test_transient_publishes_skip_the_store_again_once_the_last_quorum_queue_is_gone():
    """The store's path for every message costs each transient publish; it is taken only
    while some queue of the vhost needs it."""
    vhost = Node().vhosts["/"]
    vhost.declare_queue("q1", durable=True, arguments=QUORUM)
    vhost.declare_queue("q2", durable=True, arguments=QUORUM)
    vhost.declare_queue("classic", durable=True)
    assert vhost.queues_keeping_every_message == 2
    vhost.delete_queue("q1")
    vhost.delete_queue("classic")
    assert vhost.queues_keeping_every_message == 1
    vhost.delete_queue("q2")
    assert vhost.queues_keeping_every_message == 0


def test_messages_waiting_to_be_dead_lettered_go_with_their_queue():
    node = Node()
    vhost = node.vhosts["/"]
    vhost.declare_queue("q", durable=True, arguments={**QUORUM, "x-dead-letter-strategy": "at-least-once",
                                                      "x-overflow": "reject-publish", "x-dead-letter-exchange": "none"})
    vhost.publish("", Message("", "q", b"waits"))
    queue = vhost.queues["q"]
    message, delivery = queue.get(no_ack=False)
    queue.settle([delivery], requeue=False, rejected=True)
    assert queue.pending_dead_letters and node.memory.held_bytes > 0
    vhost.delete_queue("q")
    assert not queue.pending_dead_letters and node.memory.held_bytes == 0
