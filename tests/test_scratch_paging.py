"""Transient messages, and every message of a non-durable or exclusive queue, page to the
scratch store (store/scratch.py) while memory is short: a queue takes many times the memory
limit of them with its publisher going on, drains complete and in order, gives its memory
back to the last byte, and none of them comes back after a restart or a kill -9, while the
persistent messages of durable queues beside them all do. Through pika, against brokers of
their own with a small limit and window; the paged tail's order and the scratch store's
contract directly, as state machines."""

import os
import signal
import struct
import time

import gevent
import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmq import connection, queue_store
from greenmq.memory import MESSAGE_OVERHEAD_BYTES, MemoryBudget, MIN_MEMORY_LIMIT_BYTES
from greenmq.message import Message, new_message
from greenmq.node import Node
from greenmq.queue_store import PagedRun, ReadyList
from greenmq.store.scratch import ScratchStore
from tests.broker_process import BrokerProcess
from tests.test_core_queues import open_channel as open_core_channel, publish as publish_core

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
    """A publisher blocked for longer than the deadline is closed by pika: stopped for good."""
    conn = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f?blocked_connection_timeout={DEADLINE_SECONDS}"))
    return conn, conn.channel()


def body(number):
    return struct.pack(">I", number) + b"x" * (BODY_BYTES - 4)


def number_of(message_body):
    return struct.unpack(">I", message_body[:4])[0]


def publish(channel, queue, numbers, persistent_if=lambda number: False):
    """A flood, then a request answered once the broker has routed every one of them."""
    for number in numbers:
        channel.basic_publish("", queue, body(number), PERSISTENT if persistent_if(number) else TRANSIENT)
    channel.queue_declare(queue, passive=True)


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


def test_queues_whose_windows_together_pass_the_limit_page_within_them_and_their_publisher_goes_on(broker):
    """Twenty windows of 64 messages of 4 KiB are 5 MiB, more than the 4 MiB limit."""
    queues = [f"many-{number}" for number in range(20)]
    conn, channel = open_channel(broker)
    for queue in queues:
        channel.queue_declare(queue)
    for number in range(BACKLOG):
        channel.basic_publish("", queues[number % len(queues)], body(number))
    for queue in queues:
        assert channel.queue_declare(queue, passive=True).method.message_count == BACKLOG // len(queues)
    assert status(broker)["memory"]["held_bytes"] < LIMIT
    conn.close()
    conn, channel = open_channel(broker)
    for offset, queue in enumerate(queues):
        expected = list(range(offset, BACKLOG, len(queues)))
        assert consume(channel, queue, len(expected)) == expected
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")


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
    # Confirmed once committed, and the store commits in order: every persistent one is on disk.
    channel.queue_declare("sync", durable=True)
    channel.confirm_delivery()
    channel.basic_publish("", "sync", b"sync", PERSISTENT)
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


# -- the paged tail as a state machine -----------------------------------------------------

class ScratchModel:
    """The scratch store's contract: keys in the order messages are paged, a row gone once
    it is read back."""

    def __init__(self):
        self.rows = {}
        self.last_key = 0

    def page(self, message):
        self.last_key += 1
        self.rows[self.last_key] = message
        return self.last_key

    def read(self, after_key, limit):
        return [(key, self.rows.pop(key)) for key in sorted(key for key in self.rows if key > after_key)[:limit]]

    def remove_paged(self, after_key):
        for key in [key for key in self.rows if key > after_key]:
            del self.rows[key]


class DurableModel(ScratchModel):
    """The durable store's: rows stay until acked (never, here)."""

    def read(self, after_key, limit):
        return [(key, self.rows[key]) for key in sorted(key for key in self.rows if key > after_key)[:limit]]


steps = st.lists(st.one_of(
    st.tuples(st.just("in memory"), st.booleans()),     # True: with an expiry, never paged out
    st.tuples(st.just("to scratch")),
    st.tuples(st.just("to store")),
    st.tuples(st.just("page out"), st.integers(0, 4)),
    st.tuples(st.just("read back"), st.integers(1, 5)),
    st.tuples(st.just("take")),
), max_size=80)


@settings(max_examples=500, deadline=None)
@given(steps, st.booleans())
def test_a_tail_of_runs_in_two_stores_and_messages_in_memory_gives_them_back_in_publish_order(steps, purge):
    """Whatever the mix of messages kept in memory, paged to either store as they come, and
    paged out later in front of runs with lower keys: read back run by run as the queue
    does (Queue._page_in), they come in publish order, and a purge finds every row."""
    ready, scratch, durable = ReadyList(), ScratchModel(), DurableModel()
    published, taken = 0, []

    def take():
        taken.append(int(ready.popleft().body))

    def read_back(limit):
        run = ready.next_run()
        if run is None:
            return False
        rows = run.store.read(run.after_key, min(limit, run.count))
        ready.paged_in(run, [message for _, message in rows], rows[-1][0], len(rows))
        return True

    for step in steps:
        if step[0] in ("in memory", "to scratch", "to store"):
            message = Message("", "q", b"%d" % published)
            published += 1
            if step[0] == "in memory":
                ready.append(message.placed(False, 1.0) if step[1] else message)
            else:
                store = scratch if step[0] == "to scratch" else durable
                ready.page(store, store.page(message), message)
        elif step[0] == "page out":
            ready.page_out(step[1], step[1] * 2, scratch, lambda message: None if message.expires_at else scratch.page(message))
        elif step[0] == "read back":
            read_back(step[1])
        elif ready.fresh:
            take()
        assert len(ready) == published - len(taken)
        assert not ready.tail or type(ready.tail[0]) is PagedRun     # what leads the tail is read back
        assert ready.fresh_bytes == sum(len(message.body) for message in ready.fresh)
    if purge:
        for store, _, after_key in ready.first_paged_keys():
            store.remove_paged(after_key)
        assert not scratch.rows
        return
    while ready.fresh or read_back(3) or ready.fresh:     # reading back may find memory items alone
        while ready.fresh:
            take()
    assert taken == list(range(published))
    assert not ready.tail and not scratch.rows


class FakeQueue:
    """What the scratch store knows of a queue: an object it can name weakly."""


def test_the_scratch_store_does_not_write_zeros_over_the_pages_of_rows_read_back():
    """secure_delete FAST, as the message store's: a drain of transient 4 KiB messages ran a
    fifth slower zeroing each row read back (bench/paging.py --transient)."""
    scratch = ScratchStore(None, MemoryBudget(MIN_MEMORY_LIMIT_BYTES))
    assert scratch._db.execute("PRAGMA secure_delete").fetchone() == (2,)
    scratch.close()


def test_the_scratch_store_forgets_a_row_once_read_and_removes_only_what_was_paged_before():
    memory = MemoryBudget(MIN_MEMORY_LIMIT_BYTES)
    scratch = ScratchStore(None, memory)
    queue, other = FakeQueue(), FakeQueue()

    def read(after_key, limit):
        return [message.body for _, message, _, _ in scratch.read_queue(queue, after_key, limit)]

    try:
        keys = [scratch.page(queue, Message("", "q", b"%d" % number, {"delivery_mode": 1}), 0, None) for number in range(4)]
        scratch.page(other, Message("", "q", b"other"), 0, None)
        assert keys == sorted(keys)
        assert memory.held_bytes == 5 * MESSAGE_OVERHEAD_BYTES + 4 + len(b"other")   # until written
        assert read(keys[0] - 1, 2) == [b"0", b"1"]
        assert memory.held_bytes == 0
        assert read(keys[0] - 1, 10) == [b"2", b"3"]        # the first two were forgotten
        assert scratch.messages == 1
        scratch.page(queue, Message("", "q", b"later"), 0, None)
        scratch.remove_paged(queue, 0)      # a purge: what the queue pages next stays
        scratch.page(queue, Message("", "q", b"after"), 0, None)
        assert read(0, 10) == [b"after"]
        assert scratch.messages == 1 and memory.held_bytes == 0
    finally:
        scratch.close()


def test_the_scratch_store_reads_and_removes_a_priority_s_rows_only():
    memory = MemoryBudget(MIN_MEMORY_LIMIT_BYTES)
    scratch = ScratchStore(None, memory)
    queue = FakeQueue()
    try:
        for number in range(6):
            scratch.page(queue, Message("", "q", b"%d" % number), number % 2, None)
        scratch.remove_paged(queue, 0, 1)      # before they are written, then after
        scratch.page(queue, Message("", "q", b"6"), 1, None)
        assert [message.body for _, message, _, _ in scratch.read_queue(queue, 0, 10, 0)] == [b"0", b"2", b"4"]
        assert [message.body for _, message, _, _ in scratch.read_queue(queue, 0, 10, 1)] == [b"6"]
        scratch.page(queue, Message("", "q", b"7"), 0, None)
        scratch.page(queue, Message("", "q", b"8"), 1, None)
        assert scratch.read_queue(queue, 0, 10, 1) and scratch.messages == 1
        scratch.remove_paged(queue, 0, 1)
        assert [message.body for _, message, _, _ in scratch.read_queue(queue, 0, 10, 0)] == [b"7"]
    finally:
        scratch.close()


@pytest.mark.parametrize("lazy", [False, True], ids=["window", "lazy"])
def test_messages_with_a_ttl_page_and_expire_while_memory_is_short(lazy):
    """Memory is short here from the first publish, so they go to the scratch store (a lazy
    queue's every one, with no head in memory to time); with nobody consuming, the head is
    read back to end them."""
    with BrokerProcess("--queue-window", "2", "--memory-paging-ratio", "0", "--in-memory") as broker:
        conn, channel = open_channel(broker)
        channel.queue_declare("filler")
        publish(channel, "filler", range(1))
        wait_for(lambda: status(broker)["memory"]["paging"], "memory to be short")
        channel.queue_declare("ttl", arguments={"x-queue-mode": "lazy"} if lazy else {})
        for number in range(20):
            channel.basic_publish("", "ttl", body(number), pika.BasicProperties(expiration="300"))
        channel.queue_declare("ttl", passive=True)
        assert status(broker)["scratch"]["messages"] > 0
        wait_for(lambda: channel.queue_declare("ttl", passive=True).method.message_count == 0,
                 "the messages to expire")
        channel.queue_purge("filler")
        wait_for(lambda: status(broker)["scratch"]["messages"] == 0, "the scratch store to empty")
        conn.close()


# -- priority, bytes-limited and TTL queues, against what they do in memory ----------------

def declare_with_dead_letters(channel, queue, arguments):
    channel.queue_declare("dead")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead",
                                            **arguments})


def test_a_transient_priority_queue_pages_each_priority_and_delivers_highest_first_in_order(broker):
    conn, channel = open_channel(broker)
    channel.queue_declare("prioritised", arguments={"x-max-priority": 5})
    priority = {number: number % 8 for number in range(BACKLOG)}    # 6 and 7 count as 5
    for number in range(BACKLOG):
        channel.basic_publish("", "prioritised", body(number), pika.BasicProperties(priority=priority[number]))
    assert channel.queue_declare("prioritised", passive=True).method.message_count == BACKLOG
    assert status(broker)["scratch"]["messages"] > BACKLOG // 2
    expected = sorted(range(BACKLOG), key=lambda number: (-min(priority[number], 5), number))
    assert consume(channel, "prioritised", BACKLOG) == expected
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")
    assert status(broker)["scratch"]["messages"] == 0


def test_a_transient_queue_limited_in_bytes_drops_its_paged_head_dead_lettered_in_order(broker):
    kept = 2 * LIMIT // BODY_BYTES      # twice the memory limit: most of it paged
    conn, channel = open_channel(broker)
    declare_with_dead_letters(channel, "limited", {"x-max-length-bytes": kept * BODY_BYTES})
    publish(channel, "limited", range(BACKLOG))
    assert status(broker)["scratch"]["messages"] > kept // 2
    wait_for(lambda: channel.queue_declare("dead", passive=True).method.message_count == BACKLOG - kept,
             "the dropped heads to be dead-lettered")
    assert channel.queue_declare("limited", passive=True).method.message_count == kept
    assert consume(channel, "limited", kept) == list(range(BACKLOG - kept, BACKLOG))
    assert consume(channel, "dead", BACKLOG - kept) == list(range(BACKLOG - kept))
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")


def test_a_non_durable_queue_with_a_ttl_pages_and_dead_letters_every_message_in_order_unread(broker):
    """Expiring at the head, as in memory: one with a short TTL waits behind one with a
    longer one, so they are dead-lettered in publish order."""
    conn, channel = open_channel(broker)
    declare_with_dead_letters(channel, "expiring", {"x-message-ttl": 4000})
    for number in range(BACKLOG):
        properties = pika.BasicProperties(delivery_mode=1, expiration="1500" if number % 4 == 0 else None)
        channel.basic_publish("", "expiring", body(number), properties)
    channel.queue_declare("expiring", passive=True)
    assert status(broker)["scratch"]["messages"] > 0
    wait_for(lambda: channel.queue_declare("dead", passive=True).method.message_count == BACKLOG,
             "every message to be dead-lettered")
    assert channel.queue_declare("expiring", passive=True).method.message_count == 0
    channel.basic_qos(prefetch_count=50)
    numbers = []
    for method, properties, message_body in channel.consume("dead", inactivity_timeout=DEADLINE_SECONDS):
        assert properties.headers["x-death"][0]["reason"] == "expired"
        numbers.append(number_of(message_body))
        channel.basic_ack(method.delivery_tag)
        if len(numbers) == BACKLOG:
            break
    assert numbers == list(range(BACKLOG))
    conn.close()
    wait_for(lambda: status(broker)["memory"]["held_bytes"] == 0, "the accounted memory to return to 0")
    assert status(broker)["scratch"]["messages"] == 0


class Clock:
    """queue_store's `time`, moved on by hand: the two clocks a paged message's expiry is
    carried across."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return 1000.0 + self.now

    def time(self):
        return 5000.0 + self.now


def test_a_message_paged_out_comes_back_with_the_expiry_it_had_and_by_priority(monkeypatch):
    """In one process: a priority queue with a TTL pages all its ready messages out (as when
    many queues' windows fill memory), and reads them back later."""
    clock = Clock()
    monkeypatch.setattr(queue_store, "time", clock)
    node = Node(queue_window=4, paging_ratio=2)      # pages only when told here
    try:
        vhost = node.vhosts["/"]
        queue = vhost.declare_queue("q", arguments={"x-max-priority": 2, "x-message-ttl": 60000})
        for number in range(12):
            properties = {"priority": number % 3, "expiration": "30000" if number % 2 else None}
            vhost.publish("", new_message("", "q", b"%d" % number, {k: v for k, v in properties.items() if v}))
            clock.now += 0.25
        expiries = {message.body: message.expires_at for message in queue.ready}
        clock.now += 5      # in memory for a while, then paged
        assert queue.page_out(deep=True) > 0
        assert node.scratch.messages == 12 and len(queue.ready) == 12
        clock.now += 5      # and on disk for a while
        taken = []
        while True:
            got = queue.get(no_ack=True)
            if got is None:
                break
            taken.append(got[0])
        assert [int(message.body) for message in taken] == [2, 5, 8, 11, 1, 4, 7, 10, 0, 3, 6, 9]
        assert [message.expires_at for message in taken] == pytest.approx(
            [expiries[message.body] for message in taken], abs=1e-6)
    finally:
        node.close()


def test_a_consumer_whose_window_a_deep_page_out_took_is_fed_again_as_it_acks():
    """Acks bring more only when messages wait in memory (Queue.settle), so a page-out that
    empties the window reads it back at once for a queue with consumers."""
    node = Node(queue_window=4, paging_ratio=2)      # pages only when told here
    try:
        ch, sink = open_core_channel(node)
        queue = ch.vhost.declare_queue("q")
        ch.qos(2)
        ch.consume("q", "c")
        publish_core(ch, "q", *(b"%d" % number for number in range(10)))
        assert sink.bodies() == [b"0", b"1"]
        assert queue.page_out(deep=True) > 0 and node.scratch.messages == 8
        ch.ack(2, multiple=True)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(sink.bodies()) < 4:
            assert time.monotonic() < deadline, f"{sink.bodies()} arrived"
            gevent.sleep(0.01)
        assert sink.bodies() == [b"0", b"1", b"2", b"3"]
    finally:
        node.close()


@pytest.mark.parametrize("arguments, in_memory", [({"x-max-priority": 2}, 3), ({"x-max-length-bytes": 10 ** 6}, 3)],
                         ids=["priority", "bytes-limited"])
def test_while_memory_is_short_a_queue_of_levels_pages_what_it_takes_beyond_each_window(arguments, in_memory):
    """Straight to the scratch store, not held first for a page-out to write: a window of 3
    for the plain queue's one level, a third of it for each of three priorities; and so
    on behind what went there once memory is no longer short."""
    node = Node(queue_window=3, paging_ratio=2)
    try:
        vhost = node.vhosts["/"]
        queue = vhost.declare_queue("q", arguments=arguments)
        node.memory.paging = True       # as memory.py says when the paging mark is passed
        for number in range(12):
            vhost.publish("", new_message("", "q", b"%d" % number, {"priority": number % 3}))
        assert node.scratch.messages == 12 - in_memory and len(queue.ready) == 12
        assert sorted(int(message.body) for message in queue.ready) == list(range(in_memory))
        node.memory.paging = False      # each level's paged tail goes on, so the next page-out has less to write
        for number in range(12, 15):
            vhost.publish("", new_message("", "q", b"%d" % number, {"priority": number % 3}))
        assert node.scratch.messages == 15 - in_memory
    finally:
        node.close()


def test_a_page_out_keeps_no_more_bytes_in_memory_than_the_byte_window():
    """Big transient bodies held while memory was plentiful: when it is short, what goes
    beyond the window's bytes goes to the scratch store, though the count is far below it."""
    node = Node(queue_window_bytes=10_000, paging_ratio=2)      # pages only when told here
    try:
        vhost = node.vhosts["/"]
        queue = vhost.declare_queue("q")
        for number in range(30):
            vhost.publish("", new_message("", "q", b"%02d" % number + b"x" * 998))
        assert queue.page_out() > 0
        assert node.scratch.messages == 20 and queue.ready.fresh_bytes == 10_000 and len(queue.ready) == 30
        assert [queue.get(no_ack=True)[0].body[:2] for _ in range(30)] == [b"%02d" % n for n in range(30)]
    finally:
        node.close()
