"""Durable queues page to disk: beyond a small window (--queue-window) persistent messages
wait in the store only and are read back in order as their turn comes, with the counts
right at once, across a restart and a kill -9. Through pika, against brokers of their own
with a tiny window so that every backlog here is mostly paged."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pika
import pytest

from greenmq.memory import MESSAGE_OVERHEAD_BYTES
from tests import failing_disk_broker
from tests.broker_process import ROOT, BrokerProcess
from tests.greenmqctl_process import greenmqctl as ctl
from tests.http_api import call, path
from tests.test_scratch_paging import status, wait_for

WINDOW = 4
BACKLOG = 10 * WINDOW + 3       # ten windows and a part one


@pytest.fixture
def paging_broker():
    """Its log must end without a traceback."""
    with BrokerProcess("--queue-window", str(WINDOW)) as process:
        yield process
        log = process.log()
    assert "Traceback" not in log, log


def channel_of(broker):
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))
    channel = conn.channel()
    channel.confirm_delivery()
    return conn, channel


PERSISTENT = pika.BasicProperties(delivery_mode=2)


def publish(channel, queue, bodies, properties=PERSISTENT):
    for body in bodies:
        channel.basic_publish("", queue, body, properties)


def drain(channel, queue, ack=True):
    """Every ready message by basic.get, in the order the queue gives them."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=not ack)
        if method is None:
            return bodies
        bodies.append(body)
        if ack:
            channel.basic_ack(method.delivery_tag)


def consume(channel, queue, count, prefetch=3):
    """`count` messages through a consumer with a small window, acked as they come."""
    channel.basic_qos(prefetch_count=prefetch)
    bodies = []
    for method, _, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None, f"only {len(bodies)} of {count} arrived"
        bodies.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(bodies) == count:
            break
    channel.cancel()
    return bodies


def count(channel, queue):
    return channel.queue_declare(queue, durable=True, passive=True).method.message_count


def held_bytes(broker):
    return status(broker)["memory"]["held_bytes"]


def fanout_to(channel, exchange, queues):
    channel.exchange_declare(exchange, "fanout", durable=True)
    for queue in queues:
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange)


def stored_rows(broker, table):
    """Rows in the stopped broker's store."""
    database = sqlite3.connect(os.path.join(broker.data_dir, "greenmq.sqlite3"))
    try:
        return database.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        database.close()


def bodies_of(n, prefix=b"m"):
    return [prefix + b"%03d" % i for i in range(n)]


def test_a_backlog_ten_windows_long_is_counted_at_once_and_drains_in_order(paging_broker):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("backlog", durable=True)
    expected = bodies_of(BACKLOG)
    publish(channel, "backlog", expected)
    assert count(channel, "backlog") == BACKLOG
    assert consume(channel, "backlog", BACKLOG) == expected
    assert count(channel, "backlog") == 0
    conn.close()


def test_paged_messages_hold_no_memory_but_their_window(paging_broker):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("small", durable=True)
    before = held_bytes(paging_broker)
    publish(channel, "small", [b"x" * 10_000] * 50)
    # The window's four bodies are held, the other 46 wait on disk only.
    assert held_bytes(paging_broker) - before < 10 * 10_000
    assert len(drain(channel, "small")) == 50
    conn.close()


def test_lazy_queues_keep_nothing_ahead_in_memory(paging_broker):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("lazy", durable=True, arguments={"x-queue-mode": "lazy"})
    before = held_bytes(paging_broker)
    publish(channel, "lazy", [b"y" * 10_000] * 20)
    assert held_bytes(paging_broker) - before < 10_000
    assert drain(channel, "lazy") == [b"y" * 10_000] * 20
    conn.close()


def test_a_queue_mode_lazy_policy_makes_a_queue_lazy(paging_broker):
    assert ctl(paging_broker.port, "set_policy", "lazy-by-policy", "^by-policy$",
               '{"queue-mode": "lazy"}').returncode == 0
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("by-policy", durable=True)
    before = held_bytes(paging_broker)
    publish(channel, "by-policy", [b"z" * 10_000] * 20)
    assert held_bytes(paging_broker) - before < 10_000
    assert len(drain(channel, "by-policy")) == 20
    conn.close()


@pytest.mark.parametrize("limit", ["max-length", "max-length-bytes"])
def test_a_length_limit_by_policy_reads_the_paged_tail_back_and_drops_the_oldest(paging_broker, limit):
    conn, channel = channel_of(paging_broker)
    queue = "limited-" + limit
    channel.queue_declare(queue, durable=True)
    expected = bodies_of(BACKLOG)
    publish(channel, queue, expected)
    assert ctl(paging_broker.port, "set_policy", queue, f"^{queue}$", f'{{"{limit}": {5 * 4}}}').returncode == 0
    kept = 5 if limit == "max-length-bytes" else 20      # bodies are four bytes
    assert count(channel, queue) == kept
    assert drain(channel, queue) == expected[-kept:]
    conn.close()


def test_transient_messages_between_paged_ones_keep_their_place(paging_broker):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("mixed", durable=True)
    expected = []
    for i in range(BACKLOG):
        body = b"%03d" % i
        publish(channel, "mixed", [body], PERSISTENT if i % 3 else pika.BasicProperties(delivery_mode=1))
        expected.append(body)
    assert count(channel, "mixed") == BACKLOG
    assert drain(channel, "mixed") == expected
    conn.close()


def test_transient_messages_stored_for_a_quorum_queue_stay_in_memory_in_a_classic_one(paging_broker):
    conn, channel = channel_of(paging_broker)
    fanout_to(channel, "fan-q", ("classic",))
    channel.queue_declare("quorum", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind("quorum", "fan-q")
    expected = bodies_of(BACKLOG)
    for body in expected:
        channel.basic_publish("fan-q", "", body, pika.BasicProperties(delivery_mode=1))
    assert drain(channel, "classic") == expected
    assert drain(channel, "quorum") == expected
    conn.close()


def test_requeued_messages_return_to_the_head_before_paged_ones(paging_broker):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("requeue", durable=True)
    expected = bodies_of(BACKLOG)
    publish(channel, "requeue", expected)
    taken = [channel.basic_get("requeue")[0] for _ in range(3)]
    channel.basic_nack(taken[-1].delivery_tag, multiple=True, requeue=True)
    assert count(channel, "requeue") == BACKLOG
    assert drain(channel, "requeue") == expected
    conn.close()


def test_purge_and_delete_drop_paged_messages_from_the_store(paging_broker):
    conn, channel = channel_of(paging_broker)
    for queue in ("purged", "deleted"):
        channel.queue_declare(queue, durable=True)
        publish(channel, queue, bodies_of(BACKLOG))
    assert channel.queue_purge("purged").method.message_count == BACKLOG
    assert channel.queue_delete("deleted").method.message_count == BACKLOG
    publish(channel, "purged", [b"after"])
    conn.close()
    paging_broker.stop()
    assert stored_rows(paging_broker, "messages") == stored_rows(paging_broker, "queue_messages") == 1
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        assert drain(channel, "purged") == [b"after"]
        conn.close()


def test_a_message_paged_in_one_queue_and_acked_in_another_leaves_the_store_once_both_are_done(paging_broker):
    conn, channel = channel_of(paging_broker)
    fanout_to(channel, "fan", ("fast", "slow"))
    expected = bodies_of(BACKLOG)
    for body in expected:
        channel.basic_publish("fan", "", body, PERSISTENT)
    assert drain(channel, "fast") == expected      # acked there while paged in "slow"
    conn.close()
    paging_broker.stop()
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        assert count(channel, "fast") == 0
        assert drain(channel, "slow") == expected
        conn.close()
        again.stop()
    assert stored_rows(paging_broker, "messages") == 0


def test_a_message_held_in_memory_by_one_queue_and_paged_by_another_leaves_the_store_after_both(paging_broker):
    conn, channel = channel_of(paging_broker)
    fanout_to(channel, "fan2", ("in-memory", "paging"))
    publish(channel, "paging", bodies_of(BACKLOG))     # "paging" is past its window
    channel.basic_publish("fan2", "", b"shared", PERSISTENT)
    assert drain(channel, "paging")[-1] == b"shared"    # let go there first, while "in-memory" holds it
    channel.queue_declare("sync", durable=True)
    publish(channel, "sync", [b"s"])     # confirmed: that removal is committed before the next
    assert drain(channel, "in-memory") == [b"shared"]
    assert drain(channel, "sync") == [b"s"]
    conn.close()
    paging_broker.stop()
    assert stored_rows(paging_broker, "messages") == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "kill-9"])
def test_a_paged_backlog_keeps_its_order_and_count_across_a_restart(paging_broker, stop):
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("kept", durable=True)
    expected = bodies_of(BACKLOG)
    publish(channel, "kept", expected)
    assert consume(channel, "kept", 5) == expected[:5]
    conn.close()
    paging_broker.stop(stop)
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        left = count(channel, "kept")
        # Acks reach the disk with the next synced commit: after a kill -9 some of the five
        # acked may be back (at least once), never one more, and in order.
        assert left == BACKLOG - 5 if stop == signal.SIGTERM else BACKLOG - 5 <= left <= BACKLOG
        assert consume(channel, "kept", left) == expected[BACKLOG - left:]
        conn.close()


def test_paged_messages_the_store_cannot_read_wait_and_come_in_order_once_it_can(tmp_path):
    """While the message store's disk returns errors on reads, a queue's paged messages wait
    in it, counted; the broker serves everyone else, logs the failure and its end once
    each, and the messages then come, each once and in order (tests/failing_disk_broker.py)."""
    reads = str(tmp_path / "failing-store-reads")
    env = {**os.environ, failing_disk_broker.STORE_READS_VARIABLE: reads}
    with BrokerProcess("--queue-window", str(WINDOW), script="tests/failing_disk_broker.py", env=env) as broker:
        conn, channel = channel_of(broker)
        channel.queue_declare("q", durable=True)
        bodies = bodies_of(BACKLOG)
        publish(channel, "q", bodies)
        open(reads, "wb").close()
        taken = drain(channel, "q")             # the window held in memory, no more
        assert taken == bodies[:len(taken)] and len(taken) <= WINDOW
        wait_for(lambda: "cannot read the message store" in broker.log(), "the failed read to be logged")
        assert count(channel, "q") == BACKLOG - len(taken)
        channel.queue_declare("bystander", durable=True)
        publish(channel, "bystander", [b"other"])
        assert drain(channel, "bystander") == [b"other"]
        os.unlink(reads)
        assert consume(channel, "q", BACKLOG - len(taken)) == bodies[len(taken):]
        assert drain(channel, "q") == []
        conn.close()
        log = broker.log()
    assert "Traceback" not in log, log
    assert log.count("cannot read the message store") == 1 and log.count("is readable again") == 1, log


def test_the_queue_feature_and_durability_tests_pass_with_paging_forced_on():
    """The existing tests again, each queue with a window of two messages and memory short
    from the first publish on (a paging ratio of 0), so persistent messages of durable queues
    page to the store and all others to the scratch store: every feature (dead-lettering,
    limits, TTL, requeue, purge, recovery) on paged messages too."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_durability.py",
         "tests/test_queue_features.py", "tests/test_amqp_queue_features.py", "tests/test_core_queues.py"],
        cwd=ROOT, env={**os.environ, "GREENMQ_QUEUE_WINDOW": "2", "GREENMQ_MEMORY_PAGING_RATIO": "0"},
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:]


@pytest.mark.parametrize("arguments", [{}, {"x-max-priority": 3}], ids=["paged", "kept-in-memory"])
def test_messages_read_back_at_start_expire_on_their_timer_unread(paging_broker, arguments):
    """Their TTL counts from their publish, and they go (dead-lettered) with nobody reading
    the queue after the restart."""
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("dead", durable=True)
    channel.queue_declare("ttl", durable=True, arguments={
        "x-message-ttl": 1500, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead", **arguments})
    publish(channel, "ttl", bodies_of(BACKLOG))
    conn.close()
    paging_broker.stop()
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        deadline = time.monotonic() + 10
        while count(channel, "dead") < WINDOW and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(channel, "dead") >= WINDOW
        conn.close()


# -- queue features on paged messages: each scenario on a broker whose queues page beyond a
# window of two messages, and on one with the default window (nothing here pages), which
# must see the same --------------------------------------------------------------------------

SMALL_WINDOW = 2
BIG = b"b" * 2000       # a body whose memory shows in held_bytes
# Long enough for a backlog to be published and counted first; short enough to wait for.
SHORT_TTL_MS = 400


@pytest.fixture
def brokers():
    """(a broker paging beyond SMALL_WINDOW, one with the default window); neither log may
    hold a traceback."""
    with BrokerProcess("--queue-window", str(SMALL_WINDOW)) as paging, BrokerProcess() as plain:
        yield paging, plain
        logs = paging.log() + plain.log()
    assert "Traceback" not in logs, logs


def alike(brokers, scenario):
    """`scenario(broker, channel)` on both brokers, giving (whether most of its backlog was
    paged, what it saw); what they saw, the same on each, once the paging broker paged and
    the other did not."""
    seen = []
    for broker in brokers:
        conn, channel = channel_of(broker)
        seen.append(scenario(broker, channel))
        conn.close()
    assert [pages for pages, _ in seen] == [True, False]
    assert seen[0][1] == seen[1][1]
    return seen[0][1]


def wait_for_count(channel, queue, at_least):
    """The queue's count once it reaches `at_least` (dead-lettering a paged message waits
    for its read back), or what it is after ten seconds."""
    deadline = time.monotonic() + 10
    while count(channel, queue) < at_least and time.monotonic() < deadline:
        channel.connection.sleep(0.02)
    return count(channel, queue)


def publish_tagged(channel, queue, tags, **properties):
    """A persistent BIG message per tag (the tag leads the body)."""
    for tag in tags:
        channel.basic_publish("", queue, tag + b":" + BIG, pika.BasicProperties(delivery_mode=2, **properties))


def tags_of(bodies):
    return [body.split(b":")[0] for body in bodies]


def paged(broker, held_before, messages):
    """Whether the broker holds much less than `messages` BIG bodies: most wait on disk."""
    return held_bytes(broker) - held_before < messages * len(BIG) // 2


PRIORITIES = [None, 1, 5, 3, 9, 0, 2, 5, 1, None, 4, 5, 2, 3, 9, 1] * 4    # 9 counts as 5


def priority_tags(priorities):
    return [b"%03d-%s" % (n, str(priority).encode()) for n, priority in enumerate(priorities)]


def test_a_priority_queue_pages_each_priority_and_delivers_as_unpaged(brokers):
    def scenario(broker, channel):
        channel.queue_declare("prio", durable=True, arguments={"x-max-priority": 5})
        before = held_bytes(broker)
        for tag, priority in zip(priority_tags(PRIORITIES), PRIORITIES):
            publish_tagged(channel, "prio", [tag], priority=priority)
        pages = paged(broker, before, len(PRIORITIES))
        taken = [channel.basic_get("prio")[0] for _ in range(5)]
        channel.basic_nack(taken[1].delivery_tag, requeue=True)
        channel.basic_nack(taken[-1].delivery_tag, multiple=True, requeue=True)
        return pages, (count(channel, "prio"), tags_of(drain(channel, "prio")))

    counted, order = alike(brokers, scenario)
    level = [min(p or 0, 5) for p in PRIORITIES]
    assert counted == len(PRIORITIES)
    assert order == [priority_tags(PRIORITIES)[n] for n in sorted(range(len(PRIORITIES)), key=lambda n: (-level[n], n))]


def tags(n, prefix=b"t"):
    return [prefix + b"%03d" % i for i in range(n)]


def dead_letter_arguments(dead, **arguments):
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead, **arguments}


def test_drop_head_dead_letters_paged_heads_in_order_as_unpaged(brokers):
    def scenario(broker, channel):
        channel.queue_declare("dropped", durable=True)
        channel.queue_declare("limited", durable=True, arguments=dead_letter_arguments("dropped", **{"x-max-length": 10}))
        before = held_bytes(broker)
        publish_tagged(channel, "limited", tags(20))
        pages = paged(broker, before, 20)
        counted = count(channel, "limited")     # right at once, dead-lettered or not yet
        publish_tagged(channel, "limited", tags(30, b"u")[20:])
        return pages, (counted, count(channel, "limited"), tags_of(drain(channel, "limited")),
                       wait_for_count(channel, "dropped", 20), tags_of(drain(channel, "dropped")))

    assert alike(brokers, scenario) == (10, 10, tags(30, b"u")[20:], 20, tags(20))


def test_reject_publish_counts_paged_messages_as_unpaged(brokers):
    def scenario(broker, channel):
        channel.queue_declare("refusing", durable=True, arguments={"x-max-length": 10, "x-overflow": "reject-publish"})
        before = held_bytes(broker)
        refused = []
        for tag in tags(15):
            try:
                publish_tagged(channel, "refusing", [tag])
            except pika.exceptions.NackError:
                refused.append(tag)
        pages = paged(broker, before, 10)
        return pages, (refused, count(channel, "refusing"), tags_of(drain(channel, "refusing")))

    assert alike(brokers, scenario) == (tags(15)[10:], 10, tags(10))


def test_max_length_bytes_counts_paged_bodies_and_drops_paged_heads_as_unpaged(brokers):
    sizes = [100, 2500, 700, 4000, 10, 3000, 1200, 900, 5000, 60] * 3

    def scenario(broker, channel):
        channel.queue_declare("dropped", durable=True)
        channel.queue_declare("bytes", durable=True, arguments=dead_letter_arguments(
            "dropped", **{"x-max-length-bytes": 12_000}))
        before = held_bytes(broker)
        for n, size in enumerate(sizes):
            channel.basic_publish("", "bytes", b"%02d:" % n + b"x" * size, PERSISTENT)
        pages = held_bytes(broker) - before < 12_000 // 2
        kept = tags_of(drain(channel, "bytes"))
        return pages, (kept, wait_for_count(channel, "dropped", len(sizes) - len(kept)),
                       tags_of(drain(channel, "dropped")))

    kept, dropped, dead = alike(brokers, scenario)
    bodies = [3 + size for size in sizes]
    first = next(n for n in range(len(sizes)) if sum(bodies[n:]) <= 12_000)
    assert kept == [b"%02d" % n for n in range(first, len(sizes))]
    assert dead == [b"%02d" % n for n in range(first)] and dropped == first


def test_a_queue_ttl_expires_and_dead_letters_paged_messages_in_order_as_unpaged(brokers):
    def scenario(broker, channel):
        channel.queue_declare("expired", durable=True)
        channel.queue_declare("ttl", durable=True, arguments=dead_letter_arguments(
            "expired", **{"x-message-ttl": SHORT_TTL_MS}))
        before = held_bytes(broker)
        publish_tagged(channel, "ttl", tags(20))
        pages = paged(broker, before, 20)
        counted = count(channel, "ttl")     # paged ones count until they go
        return pages, (counted, wait_for_count(channel, "expired", 20), count(channel, "ttl"),
                       tags_of(drain(channel, "expired")))

    assert alike(brokers, scenario) == (20, 20, 0, tags(20))


def test_per_message_expiry_at_the_head_on_paged_messages_as_unpaged(brokers):
    """RabbitMQ expires a message at the head: those behind one that does not expire wait
    for it to go, then expire as they reach the head."""
    def scenario(broker, channel):
        channel.queue_declare("expired", durable=True)
        channel.queue_declare("expiring", durable=True, arguments=dead_letter_arguments("expired"))
        before = held_bytes(broker)
        publish_tagged(channel, "expiring", tags(12, b"a"), expiration=str(SHORT_TTL_MS))
        publish_tagged(channel, "expiring", tags(3, b"k"))
        publish_tagged(channel, "expiring", tags(12, b"b"), expiration="0")     # expired behind them
        pages = paged(broker, before, 27)
        first = wait_for_count(channel, "expired", 12)
        waiting = count(channel, "expiring")
        kept = tags_of(drain(channel, "expiring"))
        return pages, (first, waiting, kept, wait_for_count(channel, "expired", 24),
                       tags_of(drain(channel, "expired")))

    assert alike(brokers, scenario) == (12, 15, tags(3, b"k"), 24, tags(12, b"a") + tags(12, b"b"))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "kill-9"])
def test_paged_priority_limited_and_expiring_backlogs_keep_order_and_counts_across_a_restart(stop):
    """At start each queue reads back the head of each priority only (at least PAGE_IN_MIN
    messages), counted at once, bytes too; then they drain as before the stop."""
    backlog = 300
    priorities = PRIORITIES * 10
    queues = {"prio": {"x-max-priority": 5}, "bytes": {"x-max-length-bytes": 250 * len(b"t000:" + BIG)},
              "limited": {"x-max-length": 200}, "ttl": {"x-message-ttl": 600_000}}
    with BrokerProcess("--queue-window", str(SMALL_WINDOW)) as broker:
        conn, channel = channel_of(broker)
        for queue, arguments in queues.items():
            channel.queue_declare(queue, durable=True, arguments=arguments)
        for tag, priority in zip(priority_tags(priorities), priorities):
            publish_tagged(channel, "prio", [tag], priority=priority)
        for queue in ("bytes", "limited", "ttl"):
            publish_tagged(channel, queue, tags(backlog))
        conn.close()
        broker.stop(stop)
        with BrokerProcess("--queue-window", str(SMALL_WINDOW), data_dir=broker.data_dir) as again:
            assert held_bytes(again) < (len(priorities) + 3 * backlog) * len(BIG) // 2
            conn, channel = channel_of(again)
            assert [count(channel, queue) for queue in queues] == [len(priorities), 250, 200, backlog]
            publish_tagged(channel, "bytes", [b"new"])      # the recovered bytes count: the head goes
            assert count(channel, "bytes") == 250
            level = [min(p or 0, 5) for p in priorities]
            assert tags_of(drain(channel, "prio")) == [
                priority_tags(priorities)[n] for n in sorted(range(len(priorities)), key=lambda n: (-level[n], n))]
            assert tags_of(drain(channel, "bytes")) == tags(backlog)[51:] + [b"new"]
            assert tags_of(drain(channel, "limited")) == tags(backlog)[100:]
            assert tags_of(drain(channel, "ttl")) == tags(backlog)
            conn.close()
            log = again.log()
    assert "Traceback" not in log, log


def as_written_before(broker, column):
    """The stopped broker's store as a GreenMQ wrote it whose places had no `column`."""
    database = sqlite3.connect(os.path.join(broker.data_dir, "greenmq.sqlite3"))
    database.execute(f"ALTER TABLE queue_messages DROP COLUMN {column}")
    database.commit()
    database.close()


def test_a_store_from_before_priorities_were_kept_pages_its_priority_queues_in_order():
    """A store written before the places knew their priority gains them from the messages'
    properties when opened, so its priority backlog comes back in order."""
    with BrokerProcess("--queue-window", str(SMALL_WINDOW)) as broker:
        conn, channel = channel_of(broker)
        channel.queue_declare("prio", durable=True, arguments={"x-max-priority": 5})
        for tag, priority in zip(priority_tags(PRIORITIES), PRIORITIES):
            publish_tagged(channel, "prio", [tag], priority=priority)
        conn.close()
        broker.stop()
        as_written_before(broker, "priority")
        with BrokerProcess("--queue-window", str(SMALL_WINDOW), data_dir=broker.data_dir) as again:
            conn, channel = channel_of(again)
            level = [min(p or 0, 5) for p in PRIORITIES]
            assert tags_of(drain(channel, "prio")) == [
                priority_tags(PRIORITIES)[n] for n in sorted(range(len(PRIORITIES)), key=lambda n: (-level[n], n))]
            conn.close()


def test_a_store_from_before_expiries_were_kept_counts_them_from_the_publish_time(paging_broker):
    """A store written before each place kept its expiry gains the column when opened, its
    places marked as keeping none: their messages expire as they did then, the queue's TTL
    when read back (a policy's too) counted from their publish, paged or not."""
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("dead", durable=True)
    channel.queue_declare("lasting", durable=True, arguments=dead_letter_arguments(
        "dead", **{"x-message-ttl": LASTING_TTL_MS}))
    channel.queue_declare("expiring", durable=True, arguments=dead_letter_arguments("dead"))
    set_message_ttl(paging_broker, "expiring", EXPIRING_TTL_MS)
    publish_tagged(channel, "lasting", tags(BACKLOG))
    publish_tagged(channel, "expiring", tags(BACKLOG))
    conn.close()
    paging_broker.stop()
    as_written_before(paging_broker, "expires_at")
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        assert wait_for_count(channel, "dead", BACKLOG) == BACKLOG
        assert tags_of(drain(channel, "dead")) == tags(BACKLOG)
        assert count(channel, "expiring") == 0
        assert tags_of(drain(channel, "lasting")) == tags(BACKLOG)
        conn.close()
        log = again.log()
    assert "Traceback" not in log, log


def test_a_lazy_queue_reads_its_head_back_to_expire_it_unread(paging_broker):
    """Nothing of a lazy queue waits in memory, yet its messages expire on time with no
    consumer, and a TTL of 0 drops at once as in any queue."""
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("expired", durable=True)
    channel.queue_declare("lazy-ttl", durable=True, arguments=dead_letter_arguments(
        "expired", **{"x-queue-mode": "lazy", "x-message-ttl": SHORT_TTL_MS}))
    channel.queue_declare("lazy-now", durable=True, arguments={"x-queue-mode": "lazy", "x-message-ttl": 0})
    publish_tagged(channel, "lazy-ttl", tags(10))
    publish_tagged(channel, "lazy-now", tags(10))
    assert count(channel, "lazy-now") == 0
    assert wait_for_count(channel, "expired", 10) == 10
    assert tags_of(drain(channel, "expired")) == tags(10)
    conn.close()


def test_purging_a_paged_priority_leaves_another_prioritys_unacked_message_in_the_store(paging_broker):
    """A purge drops each priority's paged messages by key, that priority's only: an
    unacked message of a higher priority, published after them, is still kept."""
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("prio-purge", durable=True, arguments={"x-max-priority": 5})
    publish_tagged(channel, "prio-purge", tags(6))                          # mostly paged, priority 0
    publish_tagged(channel, "prio-purge", [b"high"], priority=5)
    method, _, body = channel.basic_get("prio-purge")
    assert tags_of([body]) == [b"high"]
    assert channel.queue_purge("prio-purge").method.message_count == 6
    channel.basic_nack(method.delivery_tag, requeue=True)
    conn.close()
    paging_broker.stop()
    with BrokerProcess("--queue-window", str(WINDOW), data_dir=paging_broker.data_dir) as again:
        conn, channel = channel_of(again)
        assert tags_of(drain(channel, "prio-purge")) == [b"high"]
        conn.close()


def test_the_management_api_estimates_a_paged_queues_memory_from_what_it_holds_in_memory(paging_broker):
    """Paged messages cost next to nothing, so a backlog mostly on disk is not reported as
    if every body were held."""
    conn, channel = channel_of(paging_broker)
    channel.queue_declare("estimated", durable=True)
    publish(channel, "estimated", [b"x" * 4096] * BACKLOG)
    assert count(channel, "estimated") == BACKLOG
    conn.close()
    status, queue = call(paging_broker.http_port, "GET", path("queues", "/", "estimated"), None, ("guest", "guest"))
    assert status == 200 and queue["messages"] == BACKLOG
    held_estimate = (MESSAGE_OVERHEAD_BYTES + 4096) * WINDOW
    assert held_estimate <= queue["memory"] < held_estimate + (MESSAGE_OVERHEAD_BYTES + 4096)


# -- a policy's message-ttl changed under a paged backlog ---------------------------------------

# A TTL that outlives any test, and one short enough to wait for.
LASTING_TTL_MS = 3_600_000
EXPIRING_TTL_MS = 1500


def set_message_ttl(broker, queue, ttl):
    """A policy giving `queue` the message TTL `ttl`; greenmqctl returns once it applies."""
    assert ctl(broker.port, "set_policy", queue, f"^{queue}$", f'{{"message-ttl": {ttl}}}').returncode == 0


@pytest.mark.parametrize("kind", ["persistent", "persistent-restarted", "persistent-in-memory", "transient"])
def test_a_policys_new_message_ttl_counts_for_new_messages_only_held_or_paged(kind):
    """As RabbitMQ's (lazy queues too, and across a restart): a message keeps the expiry it
    was given when queued, whether it waits in memory or on disk (the durable store for
    persistent messages, or the memory store of an --in-memory broker; the scratch store
    for transient ones while memory is short). "lengthened" goes from an expiring TTL to a
    lasting one, "shortened" the other way; each gets a backlog under the first TTL, mostly
    paged, then one under the second."""
    transient = kind == "transient"
    arguments = ("--queue-window", str(WINDOW)) + {
        "transient": ("--memory-paging-ratio", "0"), "persistent-in-memory": ("--in-memory",)}.get(kind, ())
    delivery_mode = 1 if transient else 2

    def publish_paged(broker, channel, queue, prefix):
        before, scratched = held_bytes(broker), status(broker)["scratch"]["messages"]
        for tag in tags(BACKLOG, prefix):
            channel.basic_publish("", queue, tag + b":" + BIG, pika.BasicProperties(delivery_mode=delivery_mode))
        if transient:
            assert status(broker)["scratch"]["messages"] - scratched > BACKLOG // 2
        else:
            assert paged(broker, before, BACKLOG)

    def expire_and_look(broker):
        """What expired and what is left, once the expiring TTL has passed for every message."""
        conn, channel = channel_of(broker)
        channel.queue_declare("dead-clock")
        channel.queue_declare("clock", arguments=dead_letter_arguments("dead-clock", **{"x-message-ttl": EXPIRING_TTL_MS}))
        channel.basic_publish("", "clock", b"tick")
        assert wait_for_count(channel, "dead-clock", 1) == 1
        wait_for_count(channel, "dead-lengthened", BACKLOG)
        seen = {"lengthened expired": tags_of(drain(channel, "dead-lengthened")),
                "lengthened left": count(channel, "lengthened"),
                "shortened taken": tags_of(drain(channel, "shortened")),
                "shortened expired at the head": wait_for_count(channel, "dead-shortened", BACKLOG)}
        conn.close()
        return seen

    with BrokerProcess(*arguments) as broker:
        conn, channel = channel_of(broker)
        if transient:
            channel.queue_declare("filler")
            channel.basic_publish("", "filler", b"filler")
            wait_for(lambda: status(broker)["memory"]["paging"], "memory to be short")
        for queue, first_ttl in (("lengthened", EXPIRING_TTL_MS), ("shortened", LASTING_TTL_MS)):
            channel.queue_declare("dead-" + queue, durable=not transient)
            channel.queue_declare(queue, durable=not transient, arguments=dead_letter_arguments("dead-" + queue))
            set_message_ttl(broker, queue, first_ttl)
            publish_paged(broker, channel, queue, b"a")
        set_message_ttl(broker, "lengthened", LASTING_TTL_MS)
        set_message_ttl(broker, "shortened", EXPIRING_TTL_MS)
        for queue in ("lengthened", "shortened"):
            publish_paged(broker, channel, queue, b"b")
        conn.close()
        if kind == "persistent-restarted":
            broker.stop()
            with BrokerProcess(*arguments, data_dir=broker.data_dir) as again:
                seen = expire_and_look(again)
                log = again.log()
        else:
            seen = expire_and_look(broker)
            log = broker.log()
    assert "Traceback" not in log, log
    assert seen == {"lengthened expired": tags(BACKLOG, b"a"), "lengthened left": BACKLOG,
                    "shortened taken": tags(BACKLOG, b"a"), "shortened expired at the head": BACKLOG}


# -- the window in bytes: big bodies -------------------------------------------------------

BIG_BODY_BYTES = 256 * 1024
BYTE_WINDOW = 2 * 2**20     # eight big bodies, in a window of 2,048 messages
# What the broker holds for a full window: the bodies and a message's overhead each.
AHEAD_BYTES = BYTE_WINDOW + BYTE_WINDOW // BIG_BODY_BYTES * MESSAGE_OVERHEAD_BYTES
# Held beside the window while a consumer with a prefetch of three drains: its unacked
# deliveries, the same written out, and a message's overhead each.
DRAINING_BYTES = 8 * (BIG_BODY_BYTES + MESSAGE_OVERHEAD_BYTES)


def consume_watching_memory(broker, channel, queue, count):
    """consume(), with the broker's held bytes after every tenth message: their highest."""
    channel.basic_qos(prefetch_count=3)
    bodies, highest = [], 0
    for method, _, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None, f"only {len(bodies)} of {count} arrived"
        bodies.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(bodies) % 10 == 0:
            highest = max(highest, held_bytes(broker))
        if len(bodies) == count:
            break
    channel.cancel()
    return bodies, highest


def test_big_bodies_keep_the_byte_window_ahead_and_drain_in_order_across_a_restart():
    """200 bodies of 256 KiB with a window of 2 MiB: what the broker holds stays near the
    window while they are published, drained, and read back after a restart."""
    arguments = ("--queue-window-bytes", "2MiB")
    bodies = [b"%03d" % number + b"x" * (BIG_BODY_BYTES - 3) for number in range(200)]
    with BrokerProcess(*arguments) as broker:
        conn, channel = channel_of(broker)
        channel.queue_declare("big", durable=True)
        publish(channel, "big", bodies)
        assert count(channel, "big") == 200
        assert held_bytes(broker) <= AHEAD_BYTES
        drained, highest = consume_watching_memory(broker, channel, "big", 100)
        assert drained == bodies[:100] and highest <= AHEAD_BYTES + DRAINING_BYTES
        conn.close()
        broker.stop()
        with BrokerProcess(*arguments, data_dir=broker.data_dir) as again:
            assert held_bytes(again) <= AHEAD_BYTES     # the first read at start, of bytes not known
            conn, channel = channel_of(again)
            drained, highest = consume_watching_memory(again, channel, "big", 100)
            assert drained == bodies[100:] and highest <= AHEAD_BYTES + DRAINING_BYTES
            assert count(channel, "big") == 0
            conn.close()
            log = broker.log() + again.log()
    assert "Traceback" not in log, log
