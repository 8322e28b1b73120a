"""The same queue and exchange features over JSON lines, through connection.py: the same
arguments as AMQP's, in JSON."""

import time

import pytest

from greenmq import connection
from greenmq.connection import BasicProperties
from tests.test_amqp_queue_features import bodies   # the same for pika's channel and ours

WAIT = 5.0


def get(channel, queue):
    """The next message of `queue` (dead-lettering here is synchronous: it is there)."""
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, f"nothing in {queue}"
    return method, properties, body


def declare(channel, queue, **arguments):
    return channel.queue_declare(queue, exclusive=True, arguments=arguments).method.queue


def test_rejected_expired_and_dropped_messages_are_dead_lettered_with_x_death(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
                                     "x-max-length": 1})
    channel.basic_publish("", work, b"dropped", BasicProperties(delivery_mode=2, expiration="60000"))
    channel.basic_publish("", work, b"rejected")
    method, _, _ = channel.basic_get(work)
    channel.basic_reject(method.delivery_tag, requeue=False)
    channel.basic_publish("", work, b"expired", BasicProperties(expiration="0"))
    assert channel.queue_declare(work, passive=True).method.message_count == 0
    got = [get(channel, dead) for _ in range(3)]
    assert [body for _, _, body in got] == [b"dropped", b"rejected", b"expired"]
    assert [p.headers["x-death"][0]["reason"] for _, p, _ in got] == ["maxlen", "rejected", "expired"]
    dropped = got[0][1]
    assert dropped.delivery_mode == 2 and dropped.expiration is None
    [death] = dropped.headers["x-death"]
    assert {key: death[key] for key in ("count", "queue", "exchange", "routing-keys", "original-expiration")} \
        == {"count": 1, "queue": work, "exchange": "", "routing-keys": [work], "original-expiration": "60000"}
    assert set(death["time"]) == {"$timestamp"}      # an AMQP timestamp, tagged in JSON
    assert dropped.headers["x-first-death-reason"] == "maxlen"


def test_reject_publish_dlx_nacks_a_confirmed_publish(channel, name):
    dead = declare(channel, name + ".dead")
    work = declare(channel, name, **{"x-max-length-bytes": 4, "x-overflow": "reject-publish-dlx",
                                     "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    channel.confirm_delivery()
    channel.basic_publish("", work, b"1234")
    with pytest.raises(connection.NackError):
        channel.basic_publish("", work, b"5")
    assert bodies(channel, work) == [b"1234"]
    assert bodies(channel, dead) == [b"5"]


def test_priorities_order_a_priority_queue(channel, name):
    work = declare(channel, name, **{"x-max-priority": 3})
    for n, priority in enumerate([0, 3, None, 9, 1]):
        channel.basic_publish("", work, str(n).encode(), BasicProperties(priority=priority) if priority else None)
    assert bodies(channel, work) == [b"1", b"3", b"4", b"0", b"2"]


def test_exchange_bindings_alternate_exchanges_and_a_cycle(channel, name):
    channel.exchange_declare(name + ".ae", "fanout", auto_delete=True)
    channel.exchange_declare(name + ".a", "direct", arguments={"alternate-exchange": name + ".ae"})
    channel.exchange_declare(name + ".b", "fanout")
    channel.exchange_bind(name + ".b", name + ".a", "k")
    channel.exchange_bind(name + ".a", name + ".b", "k")
    routed, caught = declare(channel, name), declare(channel, name + ".caught")
    channel.queue_bind(routed, name + ".b")
    channel.queue_bind(routed, name + ".a", "k")
    channel.queue_bind(caught, name + ".ae")
    channel.basic_publish(name + ".a", "k", b"routed")
    channel.basic_publish(name + ".a", "other", b"caught")
    assert bodies(channel, routed) == [b"routed"]       # two paths and a cycle: one copy
    assert bodies(channel, caught) == [b"caught"]
    kinds = {(b["source"], b["destination"], b["destination_kind"]) for b in channel.connection.list_bindings()}
    assert (name + ".a", name + ".b", "exchange") in kinds
    channel.exchange_unbind(name + ".b", name + ".a", "k")
    channel.basic_publish(name + ".a", "k", b"direct only")
    assert bodies(channel, routed) == [b"direct only"]
    channel.exchange_delete(name + ".b")
    assert (name + ".b", name + ".a", "exchange") not in {
        (b["source"], b["destination"], b["destination_kind"]) for b in channel.connection.list_bindings()}
    channel.exchange_delete(name + ".a")


def test_consumer_priority_and_single_active_consumer(conn, channel, name):
    prioritised = declare(channel, name + ".p")
    got = []
    channel.basic_consume(prioritised, lambda ch, m, p, b: got.append(("low", b)), auto_ack=True)
    channel.basic_consume(prioritised, lambda ch, m, p, b: got.append(("high", b)), auto_ack=True,
                          arguments={"x-priority": 5})
    single = declare(channel, name + ".s", **{"x-single-active-consumer": True})
    first = channel.basic_consume(single, lambda ch, m, p, b: got.append(("first", b)), auto_ack=True)
    channel.basic_consume(single, lambda ch, m, p, b: got.append(("second", b)), auto_ack=True)
    for n in range(2):
        channel.basic_publish("", prioritised, str(n).encode())
        channel.basic_publish("", single, str(n).encode())
    deadline = time.monotonic() + WAIT
    while len(got) < 4 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    channel.basic_cancel(first)
    channel.basic_publish("", single, b"2")
    while len(got) < 5 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert sorted(got) == [("first", b"0"), ("first", b"1"), ("high", b"0"), ("high", b"1"), ("second", b"2")]


@pytest.mark.parametrize("arguments, text", [
    ({"x-queue-type": "stream"}, "invalid property 'non-durable'"),
    ({"x-queue-type": "lazy"}, "unsupported queue type 'lazy'"),
    ({"x-queue-type": "quorum"}, "invalid property 'non-durable'"),
    ({"x-delivery-limit": 3}, "of queue type rabbit_classic_queue"),
    ({"x-max-priority": 300}, "{max_value_exceeded,300}"),
    ({"x-overflow": "drop-tail"}, "invalid_overflow"),
])
def test_unsupported_or_wrong_arguments_are_refused(conn, name, arguments, text):
    with pytest.raises(connection.PreconditionFailed) as refused:
        conn.channel().queue_declare(name, arguments=arguments)
    assert text in str(refused.value)


def test_an_unknown_exchange_type_is_406(conn, name):
    with pytest.raises(connection.PreconditionFailed) as refused:
        conn.channel().exchange_declare(name, "no-such-type")
    assert refused.value.code == 406


def test_a_durable_exchange_binding_and_dead_letter_exchange_survive_a_restart(fresh_broker, name):
    client = connection.Connection("127.0.0.1", fresh_broker.port)
    channel = client.channel()
    channel.exchange_declare("src", "direct", durable=True)
    channel.exchange_declare("dst", "fanout", durable=True)
    channel.exchange_bind("dst", "src", "k")
    channel.queue_declare("dead", durable=True)
    channel.queue_bind("dead", "dst")
    channel.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "src",
                                                           "x-dead-letter-routing-key": "k"})
    channel.confirm_delivery()
    channel.basic_publish("", "work", b"persistent", BasicProperties(delivery_mode=2))
    method, _, _ = channel.basic_get("work")
    channel.basic_nack(method.delivery_tag, requeue=False)
    client.close()
    fresh_broker.stop()
    fresh_broker.start()
    client = connection.Connection("127.0.0.1", fresh_broker.port)
    channel = client.channel()
    _, properties, body = channel.basic_get("dead", auto_ack=True)
    assert body == b"persistent" and properties.headers["x-death"][0]["reason"] == "rejected"
    assert channel.basic_get("work")[0] is None
    channel.basic_publish("src", "k", b"routed after the restart")
    assert channel.basic_get("dead", auto_ack=True)[2] == b"routed after the restart"
    client.close()
