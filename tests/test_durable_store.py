"""The durable store's contract, held by both implementations, and the core's use of it:
confirms that wait for commits, and a requeue whose cost does not grow with depth."""

import _sqlite3
import ctypes
import gc
import os
import sqlite3
import subprocess
import sys
import threading
import time

import gevent
import pytest

from greenmq.errors import PreconditionFailed
from greenmq.message import Message
from greenmq.node import Node
from greenmq.store import sqlite as sqlite_store
from greenmq.store.memory import MemoryStore
from greenmq.store.sqlite import SqliteStore
from greenmq.store.writer import WriterThread
from tests.test_core_queues import RecordingSink, login


class FakeQueue:
    message_ttl = None      # its TTL for every message (ms), as a queue's x-message-ttl

    def __init__(self, vhost_name, name):
        self.vhost_name, self.name, self.deleted = vhost_name, name, False

    def level_of(self, message):
        return 0

    def effective_ttl(self, message):
        return self.message_ttl


def persistent(body, **properties):
    return Message("", "q", body, {"delivery_mode": 2, **properties})


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
    else:
        opened = SqliteStore(str(tmp_path))
        yield opened
        opened.close()


def reopened(store):
    """The store as the next start of the broker finds it."""
    if isinstance(store, MemoryStore):
        return store
    store.close()
    return SqliteStore(store.path.rsplit("/", 1)[0])


def rows_after_stop(store, table):
    """How many rows `table` holds once the store has stopped (it keeps the database to
    itself while open)."""
    store.close()
    db = sqlite3.connect(store.path)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def committed(store):
    results = []
    store.after_commit(lambda batch, ok: results.append(ok))
    if isinstance(store, SqliteStore):
        store.flush()
    return results


def held(store, recovered):
    """Each recovered queue's messages as the queue reads them back: {name: [message]}."""
    return {name: [message for _, message, _, _ in store.read_queue(FakeQueue(vhost, name), 0, 10_000)]
            for vhost, name, *_ in recovered.queues}


def test_definitions_come_back_after_a_restart(store):
    store.put_exchange("/", "logs", "fanout", False, False, {"alternate-exchange": "ae"})
    store.put_queue("/", "q1", False, {"x-message-ttl": 5})
    store.put_queue("/", "q2", True, {})
    store.put_binding("/", "logs", "q1", "", {}, "queue")
    store.put_binding("/", "logs", "q2", "k", {"x-match": "any", "b": bytearray(b"\x00")}, "queue")
    store.put_binding("/", "logs", "q1", "k", {}, "exchange")
    assert committed(store) == [True]
    recovered = reopened(store).load()
    assert recovered.exchanges == [("/", "logs", "fanout", False, False, {"alternate-exchange": "ae"})]
    assert sorted(q[:4] for q in recovered.queues) == [("/", "q1", False, {"x-message-ttl": 5}), ("/", "q2", True, {})]
    assert sorted(recovered.bindings, key=repr) == sorted([
        ("/", "logs", "q1", "", {}, "queue"), ("/", "logs", "q1", "k", {}, "exchange"),
        ("/", "logs", "q2", "k", {"x-match": "any", "b": bytearray(b"\x00")}, "queue")], key=repr)


def test_deleting_a_queue_or_exchange_takes_its_bindings_and_messages(store):
    store.put_exchange("/", "x", "direct", False, False, {})
    store.put_queue("/", "q", False, {})
    store.put_queue("/", "kept", False, {})
    store.put_binding("/", "x", "q", "a", {}, "queue")
    store.put_binding("/", "x", "kept", "a", {}, "queue")
    store.put_exchange("/", "upstream", "direct", False, False, {})
    store.put_binding("/", "upstream", "x", "a", {}, "exchange")
    store.put_binding("/", "upstream", "q", "a", {}, "exchange")
    store.add_message(persistent(b"m"), [FakeQueue("/", "q")])
    committed(store)
    store.delete_queue("/", "q")
    store.delete_exchange("/", "x")
    committed(store)
    recovered = reopened(store).load()
    assert [q[1] for q in recovered.queues] == ["kept"]
    assert [x[1] for x in recovered.exchanges] == ["upstream"]
    # The binding to the exchange named "q" stays: only the queue "q" went.
    assert recovered.bindings == [("/", "upstream", "q", "a", {}, "exchange")]


def test_messages_come_back_in_order_with_properties_and_one_body_for_several_queues(store):
    q1, q2 = FakeQueue("/", "q1"), FakeQueue("/", "q2")
    store.put_queue("/", "q1", False, {})
    store.put_queue("/", "q2", False, {})
    messages = [persistent(b"%d" % i, headers={"n": i, "raw": bytearray(b"\xff")}) for i in range(5)]
    for message in messages:
        store.add_message(message, [q1, q2])
    assert committed(store) == [True]
    store.remove_messages(q1, messages[:2])
    committed(store)
    store = reopened(store)
    recovered = store.load()
    assert sorted((name, count) for _, name, _, _, count in recovered.queues) == [("q1", 3), ("q2", 5)]
    back = held(store, recovered)
    assert [m.body for m in back["q1"]] == [b"2", b"3", b"4"]
    assert [m.body for m in back["q2"]] == [b"0", b"1", b"2", b"3", b"4"]
    assert back["q2"][3].properties == {"delivery_mode": 2, "headers": {"n": 3, "raw": bytearray(b"\xff")}}
    assert back["q1"][0].stored.key == back["q2"][2].stored.key
    assert store.last_key == messages[-1].stored.key     # new messages are keyed after them
    if isinstance(store, SqliteStore):
        assert rows_after_stop(store, "messages") == 5


def test_a_message_removed_from_every_queue_is_gone(store):
    q1, q2 = FakeQueue("/", "q1"), FakeQueue("/", "q2")
    store.put_queue("/", "q1", False, {})
    store.put_queue("/", "q2", False, {})
    message = persistent(b"m")
    store.add_message(message, [q1, q2])
    committed(store)
    store.remove_messages(q1, [message])
    store.remove_messages(q2, [message])
    committed(store)
    assert message.stored.refs == 0
    store = reopened(store)
    assert all(not count for *_, count in store.load().queues)
    if isinstance(store, SqliteStore):
        assert rows_after_stop(store, "messages") == 0


def test_redelivered_marks_survive_a_clean_stop(store):
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    first, second = persistent(b"1"), persistent(b"2")
    store.add_message(first, [queue])
    store.add_message(second, [queue])
    committed(store)
    store.mark_redelivered(queue, [first])
    store = reopened(store)
    recovered = store.load()
    assert recovered.clean
    assert [(m.body, m.redelivered) for m in held(store, recovered)["q"]] == [(b"1", True), (b"2", False)]


CRASHING_WRITER = """
import os, sys
sys.path.insert(0, {root!r})
from greenmq.store.sqlite import SqliteStore
from greenmq.errors import PreconditionFailed
from greenmq.message import Message
from tests.test_durable_store import FakeQueue, committed
store = SqliteStore({data_dir!r})
store.load()                        # as the broker does at start
store.put_queue("/", "q", False, {{}})
store.add_message(Message("", "q", b"1", {{"delivery_mode": 2}}), [FakeQueue("/", "q")])
assert committed(store) == [True]
os._exit(0)                         # no close: as if the process was killed here
"""


def test_after_a_crash_every_message_comes_back_redelivered(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", CRASHING_WRITER.format(root=root, data_dir=str(tmp_path))],
                   check=True, cwd=root)
    store = SqliteStore(str(tmp_path))
    recovered = store.load()
    messages = held(store, recovered)
    store.close()
    assert not recovered.clean
    assert [(m.body, m.redelivered) for m in messages["q"]] == [(b"1", True)]


def test_a_message_acked_before_its_commit_is_never_written(tmp_path):
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    committed(store)
    message = persistent(b"short-lived")
    store.add_message(message, [queue])
    store.remove_messages(queue, [message])
    assert committed(store) == [True]
    assert rows_after_stop(store, "messages") == 0
    assert rows_after_stop(store, "queue_messages") == 0


def test_a_commit_of_hundreds_of_messages_and_removals_writes_each_row_once(tmp_path):
    store = SqliteStore(str(tmp_path))
    q1, q2 = FakeQueue("/", "q1"), FakeQueue("/", "q2")
    store.put_queue("/", "q1", False, {})
    store.put_queue("/", "q2", False, {})
    count = sqlite_store.MAX_ROWS_PER_STATEMENT + 45       # a full run of rows, then 32 + 8 + 4 + 1
    messages = [persistent(b"%d" % i) for i in range(count)]
    for message in messages:
        store.add_message(message, [q1, q2])
    assert committed(store) == [True]
    store.remove_messages(q1, messages[:count - 3])
    store.remove_messages(q2, messages[1:])
    assert committed(store) == [True]
    store = reopened(store)
    messages = held(store, store.load())
    assert {name: [m.body for m in ms] for name, ms in messages.items()} == {
        "q1": [b"%d" % i for i in range(count - 3, count)], "q2": [b"0"]}
    assert rows_after_stop(store, "messages") == 4


def sqlite_memory_used():
    """Bytes SQLite has allocated in this process (its own counter), or a skip where the
    library's functions cannot be reached."""
    try:
        memory_used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (OSError, AttributeError):
        pytest.skip("SQLite's sqlite3_memory_used is not reachable from this Python")
    memory_used.restype = ctypes.c_int64
    return memory_used()


def test_a_commit_keeps_none_of_its_bodies(tmp_path):
    """Once written, the bodies leave the budget's count, so nothing of the store may hold
    them: not the batch, not the writer thread, and not SQLite's prepared statements, which
    keep their last parameters until they run again."""
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    assert committed(store) == [True]
    before = sqlite_memory_used()
    bodies = [bytes([number]) * 2**20 for number in range(40)] + [b"x" * 16 * 2**20]
    references = [sys.getrefcount(body) for body in bodies]
    for body in bodies:
        store.add_message(persistent(body), [queue])
    del body        # the loop's own reference
    assert committed(store) == [True]
    gc.collect()
    assert [sys.getrefcount(body) for body in bodies] == references
    assert sqlite_memory_used() - before < 8 * 2**20       # 56 MiB of bodies went through it
    assert rows_after_stop(store, "messages") == len(bodies)


def test_the_writer_thread_runs_calls_off_the_hub_and_raises_their_errors():
    writer = WriterThread()
    assert writer.run(threading.get_ident) != threading.get_ident()
    assert writer.run(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        writer.run(divmod, 1, 0)
    writer.stop()


def test_the_writer_thread_keeps_nothing_of_a_call_once_it_returns():
    writer = WriterThread()
    argument, result = bytearray(1), bytearray(1)
    references = sys.getrefcount(argument), sys.getrefcount(result)
    assert writer.run(lambda given: result, argument) is result
    assert (sys.getrefcount(argument), sys.getrefcount(result)) == references
    writer.stop()


def commits(store):
    """How many commits so far wrote something."""
    return store.commit_seconds.count


def stored_message(tmp_path):
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    message = persistent(b"acked")
    store.add_message(message, [queue])
    assert committed(store) == [True]
    return store, queue, message


def test_acks_go_with_the_next_confirmed_commit_rather_than_one_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "REMOVALS_DELAY_SECONDS", 60)     # no commit of their own here
    store, queue, acked = stored_message(tmp_path)
    before = commits(store)
    store.remove_messages(queue, [acked])
    gevent.sleep(0)                 # a committer woken by the ack would start its commit here
    store.add_message(persistent(b"next"), [queue])
    assert committed(store) == [True]
    assert commits(store) == before + 1
    assert rows_after_stop(store, "messages") == 1


def test_a_commit_of_acks_alone_is_not_synced_and_the_next_commit_of_a_message_is(tmp_path):
    store, queue, acked = stored_message(tmp_path)
    synchronous = lambda: store._db.execute("PRAGMA synchronous").fetchone()[0]     # noqa: E731
    store.remove_messages(queue, [acked])
    store.flush()
    assert synchronous() == 1       # NORMAL: no fsync at commit
    store.add_message(persistent(b"next"), [queue])
    assert committed(store) == [True]
    assert synchronous() == 2       # FULL: synced before its confirm
    store.close()


def test_acks_alone_are_committed_after_the_removals_delay_each_time(tmp_path):
    store, queue, first = stored_message(tmp_path)
    second = persistent(b"second")
    store.add_message(second, [queue])
    assert committed(store) == [True]
    for acked in (first, second):
        before = commits(store)
        store.remove_messages(queue, [acked])
        deadline = time.monotonic() + 10
        while commits(store) == before and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert commits(store) == before + 1
    assert rows_after_stop(store, "messages") == 0


def wait_for(condition, what):
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 10 s"
        gevent.sleep(0.001)


def test_what_arrives_during_a_commit_shares_the_next_commit_and_is_confirmed_only_after_it(tmp_path, monkeypatch):
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    assert committed(store) == [True]
    writes, may_finish = [], threading.Semaphore(0)
    write = store._write

    def held_write(statements, sync):
        """Each commit waits in the writer thread until the test lets it finish."""
        writes.append(statements)
        assert may_finish.acquire(timeout=10)
        return write(statements, sync)

    monkeypatch.setattr(store, "_write", held_write)
    confirmed = []                  # (publisher, ok), as the hub hears of commits

    def publish(publisher):
        store.add_message(persistent(b"%d" % publisher), [queue])
        store.after_commit(lambda batch, ok: confirmed.append((publisher, ok)))

    publish(0)
    wait_for(lambda: len(writes) == 1, "commit")
    for publisher in range(1, 6):   # five connections, each read in a round of the hub's loop of its own
        publish(publisher)
        gevent.sleep(0)
    gevent.sleep(0.05)
    assert confirmed == []          # the first commit is not done yet
    may_finish.release()
    wait_for(lambda: confirmed, "confirm")
    wait_for(lambda: len(writes) == 2, "second commit")
    gevent.sleep(0.05)
    assert confirmed == [(0, True)]         # the rest are in the second commit, which is not done
    assert sum(len(values) // 7 for sql, values in writes[1] if sql.startswith("INSERT INTO messages")) == 5
    may_finish.release()
    wait_for(lambda: len(confirmed) == 6, "confirms")
    assert confirmed == [(publisher, True) for publisher in range(6)]
    assert len(writes) == 2
    store.close()


# -- the core's use of the store -----------------------------------------------------------

class HeldCommitStore(MemoryStore):
    """Commits only when the test says so, and as it says."""

    def __init__(self):
        super().__init__()
        self.waiting = {}           # batch -> callbacks

    def after_commit(self, callback, again=False):
        self.waiting.setdefault(self.open_batch, {})[callback] = None

    def start_commit(self):
        batch, self.open_batch = self.open_batch, self.open_batch + 1
        return batch

    def finish_commit(self, batch, ok=True):
        for callback in self.waiting.pop(batch, {}):
            callback(batch, ok)

    def commit(self, ok=True):
        self.finish_commit(self.start_commit(), ok)


def confirming_channel(store):
    node = Node(store=store)
    sink = RecordingSink()
    session = login(node, sink)
    channel = session.open_channel(1)
    channel.confirm_select()
    channel.vhost.declare_queue("durable", durable=True)
    channel.vhost.declare_queue("transient")
    return channel, session, sink


def test_a_stored_message_is_confirmed_after_its_commit_and_nothing_overtakes_it():
    store = HeldCommitStore()
    channel, session, sink = confirming_channel(store)
    channel.publish("", "transient", b"1", {"delivery_mode": 2})    # not kept: confirmed at once
    session.flush_confirms()
    assert sink.confirms == [(1, False, True)]
    channel.publish("", "durable", b"2", {"delivery_mode": 2})
    channel.publish("", "transient", b"3")
    channel.publish("", "nowhere", b"4")                            # routed nowhere: no wait of its own
    session.flush_confirms()
    assert sink.confirms == [(1, False, True)]
    store.commit()
    assert sink.confirms == [(1, False, True), (4, True, True)]


def test_a_failed_commit_nacks_only_what_it_held():
    store = HeldCommitStore()
    channel, session, sink = confirming_channel(store)
    channel.publish("", "durable", b"1", {"delivery_mode": 2})
    channel.publish("", "transient", b"2")
    store.commit(ok=False)
    assert sink.confirms == [(1, False, False), (2, False, True)]


def test_a_confirm_waits_for_its_own_batch_not_an_earlier_one():
    store = HeldCommitStore()
    channel, session, sink = confirming_channel(store)
    channel.publish("", "durable", b"1", {"delivery_mode": 2})
    first = store.start_commit()                # in flight while the next one comes
    channel.publish("", "durable", b"2", {"delivery_mode": 2})
    store.finish_commit(first)
    assert sink.confirms == [(1, False, True)]
    store.commit()
    assert sink.confirms == [(1, False, True), (2, False, True)]


def test_an_unavailable_store_nacks_persistent_messages_and_takes_transient_ones():
    store = HeldCommitStore()
    channel, session, sink = confirming_channel(store)
    store.available = False
    channel.publish("", "durable", b"1", {"delivery_mode": 2})
    channel.publish("", "durable", b"2")
    session.flush_confirms()
    assert sink.confirms == [(1, False, False), (2, False, True)]
    assert [m.body for m in channel.vhost.queues["durable"].ready] == [b"2"]


def test_acks_and_expiry_remove_stored_messages_and_requeues_do_not():
    store = MemoryStore()
    channel, session, sink = confirming_channel(store)
    held = store.messages["/", "durable"]
    for body in (b"1", b"2", b"3"):
        channel.publish("", "durable", body, {"delivery_mode": 2})
    channel.consume("durable", "c")
    channel.nack(1, requeue=True)               # back, and out again as tag 4
    assert len(held) == 3
    channel.ack(2)
    assert len(held) == 2
    channel.ack(0, multiple=True)
    assert held == {}
    channel.cancel("c")
    channel.publish("", "durable", b"4", {"delivery_mode": 2, "expiration": "0"})
    assert len(held) == 1
    assert channel.vhost.queues["durable"].drop_expired() == 1
    assert held == {}


def transaction_channel(store):
    node = Node(store=store)
    channel = login(node, RecordingSink()).open_channel(1)
    channel.vhost.declare_queue("durable", durable=True)
    channel.vhost.declare_queue("transient")
    return channel


@pytest.mark.parametrize("operation", ["publish", "ack"])
def test_a_transaction_commit_returns_once_its_messages_and_acks_are_committed(operation):
    store = HeldCommitStore()
    channel = transaction_channel(store)
    channel.publish("", "durable", b"1", {"delivery_mode": 2})
    store.commit()
    if operation == "publish":
        operations = [(channel.publish, ("", "durable", b"2", {"delivery_mode": 2}))]
    else:
        operations = [(channel.ack, (channel.get("durable")[0],))]
    committing = gevent.spawn(channel.commit, operations)
    gevent.sleep(0)
    assert not committing.dead
    store.commit()
    committing.join(10)
    assert committing.successful()


def test_a_transaction_that_stores_nothing_does_not_wait_for_the_store():
    store = HeldCommitStore()
    channel = transaction_channel(store)
    channel.commit([(channel.publish, ("", "durable", b"transient", None)),
                    (channel.publish, ("", "transient", b"persistent", {"delivery_mode": 2}))])
    assert store.waiting == {}


def test_a_transaction_whose_commit_fails_is_refused_as_partly_completed():
    store = HeldCommitStore()
    channel = transaction_channel(store)
    committing = gevent.spawn(channel.commit, [(channel.publish, ("", "durable", b"1", {"delivery_mode": 2}))])
    gevent.sleep(0)
    store.commit(ok=False)
    committing.join(10)
    assert isinstance(committing.exception, PreconditionFailed)
    assert committing.exception.text == "PRECONDITION_FAILED - partial tx completion"


# -- requeue cost ------------------------------------------------------------------------

def calls_during(action):
    """Python and builtin calls made by `action`: a count that does not depend on the
    machine's speed."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return count


def nack_one_by_one(unacked, waiting):
    """A consumer holding `unacked` deliveries has them nacked one at a time, newest first
    (the order that made each requeue pop every message returned before it), while
    `waiting` messages published later sit in the queue."""
    node = Node()
    sink = RecordingSink()
    channel = login(node, sink).open_channel(1)
    channel.vhost.declare_queue("q")
    channel.consume("q", "c")
    for i in range(unacked):
        channel.publish("", "q", b"%d" % i)
    channel.set_flow(False)         # nothing more is delivered while requeued ones return
    for i in range(unacked, unacked + waiting):
        channel.publish("", "q", b"%d" % i)
    tags = list(channel.unacked)
    assert len(tags) == unacked
    count = calls_during(lambda: [channel.nack(tag) for tag in reversed(tags)])
    queue = channel.vhost.queues["q"]
    assert len(queue.ready) == unacked + waiting
    assert [int(m.body) for m in queue.ready] == list(range(unacked + waiting))
    return count


def test_requeueing_costs_the_same_at_any_depth_and_grows_with_the_requeued_alone():
    shallow = nack_one_by_one(1000, 0)
    deep = nack_one_by_one(1000, 20000)
    twice = nack_one_by_one(2000, 0)
    assert deep <= shallow * 1.05
    assert twice <= shallow * 2.5        # O(k log k); the old scan made this 4x


def test_read_queue_gives_a_queues_committed_messages_in_key_order_from_after_a_key(store):
    q1, q2 = FakeQueue("/", "q1"), FakeQueue("/", "q2")
    store.put_queue("/", "q1", False, {})
    store.put_queue("/", "q2", False, {})
    messages = [persistent(b"%d" % i, headers={"n": i}) for i in range(6)]
    for message in messages:
        store.add_message(message, [q1] if message.body != b"3" else [q2])
    committed(store)
    store.remove_messages(q1, messages[1:2])
    committed(store)
    keys = [message.stored.key for message in messages]
    rows = store.read_queue(q1, 0, 10)
    assert [(key, message.body) for key, message, _, _ in rows] == [
        (keys[0], b"0"), (keys[2], b"2"), (keys[4], b"4"), (keys[5], b"5")]
    assert rows[2][1].properties == {"delivery_mode": 2, "headers": {"n": 4}}
    assert all(abs(published_at - time.time()) < 60 and expires_at is None for _, _, published_at, expires_at in rows)
    assert [key for key, _, _, _ in store.read_queue(q1, keys[2], 2)] == [keys[4], keys[5]]
    assert store.read_queue(q1, keys[5], 10) == []
    assert [message.body for _, message, _, _ in store.read_queue(q2, 0, 10)] == [b"3"]


def test_each_place_keeps_the_expiry_its_queue_gave_the_message_whatever_its_ttl_later(store):
    queues = {name: FakeQueue("/", name) for name in ("lasting", "expiring", "plain")}
    for name in queues:
        store.put_queue("/", name, False, {})
    queues["lasting"].message_ttl, queues["expiring"].message_ttl = 60_000, 1_000
    before = time.time()
    store.add_message(persistent(b"m"), list(queues.values()))
    after = time.time()
    committed(store)
    queues["lasting"].message_ttl = queues["expiring"].message_ttl = None     # a policy changed them since
    queues["plain"].message_ttl = 5
    store = reopened(store)
    store.load()
    expiry = {name: store.read_queue(queue, 0, 10)[0][3] for name, queue in queues.items()}
    assert before + 60 <= expiry["lasting"] <= after + 60
    assert before + 1 <= expiry["expiring"] <= after + 1
    assert expiry["plain"] is None


def test_read_queue_sees_only_what_is_committed(tmp_path):
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    store.add_message(persistent(b"committed"), [queue])
    committed(store)
    wake, store._wake = store._wake, lambda: None       # the open batch stays open, unwritten
    store.add_message(persistent(b"open"), [queue])
    assert [message.body for _, message, _, _ in store.read_queue(queue, 0, 10)] == [b"committed"]
    store._wake = wake
    committed(store)
    assert [message.body for _, message, _, _ in store.read_queue(queue, 0, 10)] == [b"committed", b"open"]
    store.close()


def test_a_message_kept_after_a_purge_of_paged_messages_stays_when_both_share_a_commit(tmp_path):
    """A batch writes its new messages before its definitions (remove_paged is one): the
    purge drops only what was kept before it, not the message published after it."""
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    store.add_message(persistent(b"paged"), [queue])
    committed(store)
    wake, store._wake = store._wake, lambda: None       # one batch for both
    store.remove_paged(queue, 0)
    store.add_message(persistent(b"after"), [queue])
    store._wake = wake
    committed(store)
    assert [message.body for _, message, _, _ in store.read_queue(queue, 0, 10)] == [b"after"]
    store.close()


def test_publishers_one_commit_confirmed_share_the_next_as_they_publish_again(tmp_path, monkeypatch):
    """Once one of the publishers the last commit confirmed publishes again, the next commit
    waits for the others (the wait is made long here, so the test does not depend on the
    machine's speed) and starts as soon as they are all back."""
    monkeypatch.setattr(sqlite_store, "RETURNING_PUBLISHERS_WAIT_SECONDS", 60)
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    confirmed_in = {"a": [], "b": []}
    confirm = {name: (lambda batch, ok, name=name: confirmed_in[name].append(batch)) for name in confirmed_in}

    def publish(name):
        store.add_message(persistent(name.encode()), [queue])
        store.after_commit(confirm[name], again=True)
    publish("a")
    publish("b")
    store.flush()
    publish("a")
    gevent.sleep(0)         # the committer wakes with "a" alone in the open batch
    publish("b")
    with gevent.Timeout(10):
        store.flush()
    assert confirmed_in["a"][0] == confirmed_in["b"][0]
    assert confirmed_in["a"][1] == confirmed_in["b"][1]
    store.close()


def test_the_store_does_not_write_zeros_over_the_pages_of_consumed_bodies(tmp_path):
    """SQLite's secure_delete FAST (2), not on (1) as Debian builds it: a consumed body's
    freed pages are not overwritten, which doubled the writes of a big-body backlog's drain
    (bench/paging.py --size 1048576)."""
    store = SqliteStore(str(tmp_path))
    assert store._db.execute("PRAGMA secure_delete").fetchone() == (2,)
    store.close()


def test_a_publisher_that_did_not_come_back_is_not_waited_for_until_it_comes_back_promptly(tmp_path, monkeypatch):
    """"b" publishes now and then beside "a", who publishes again after each confirm: once
    the store has waited for "b" in vain, its later commits do not wait for it (the wait is
    made long then, so a wait would hold the test up to its timeout), until "b" publishes
    again within the wait of a confirm, when it is waited for as before."""
    store = SqliteStore(str(tmp_path))
    queue = FakeQueue("/", "q")
    store.put_queue("/", "q", False, {})
    confirmed_in = {"a": [], "b": []}
    confirm = {name: (lambda batch, ok, name=name: confirmed_in[name].append(batch)) for name in confirmed_in}

    def publish(*names):
        for name in names:
            store.add_message(persistent(name.encode()), [queue])
            store.after_commit(confirm[name], again=True)

    def flushed():
        with gevent.Timeout(10):
            store.flush()
    publish("a", "b")
    flushed()
    monkeypatch.setattr(sqlite_store, "RETURNING_PUBLISHERS_WAIT_SECONDS", 0.001)
    publish("a")            # "b" does not come back: the store waits for it once, in vain
    flushed()
    monkeypatch.setattr(sqlite_store, "RETURNING_PUBLISHERS_WAIT_SECONDS", 60)
    publish("a", "b")
    flushed()
    publish("a")            # "b" stays away, and the commit does not wait for it
    flushed()
    assert len(confirmed_in["a"]) == 4 and len(confirmed_in["b"]) == 2
    publish("a", "b")
    flushed()
    publish("b", "a")       # "b" back within the wait of its confirm: waited for again
    flushed()
    publish("a")
    gevent.sleep(0)         # the committer wakes with "a" alone in the open batch
    publish("b")
    flushed()
    assert confirmed_in["a"][-1] == confirmed_in["b"][-1]
    store.close()


def test_a_stream_comes_back_with_its_count_and_where_its_log_starts(store):
    stream = FakeQueue("/", "s")
    store.put_queue("/", "s", False, {"x-queue-type": "stream"})
    messages = [persistent(b"%d" % i) for i in range(3)]
    for message in messages:
        store.add_message(message, [stream])
    store.put_stream_start("/", "s", 7, messages[1].stored.key)
    committed(store)
    store = reopened(store)
    recovered = store.load()
    assert [(name, count) for _, name, _, _, count in recovered.queues] == [("s", 3)]
    assert recovered.stream_starts == {("/", "s"): (7, messages[1].stored.key)}
    assert store.last_key == messages[-1].stored.key
    assert [message.body for _, message, _, _ in store.read_queue(stream, 0, 10)] == [b"0", b"1", b"2"]


def test_a_transient_message_to_a_stream_is_confirmed_once_its_commit_is_done():
    store = HeldCommitStore()
    channel, session, sink = confirming_channel(store)
    channel.vhost.declare_queue("log", durable=True, arguments={"x-queue-type": "stream"})
    channel.publish("", "log", b"1")
    session.flush_confirms()
    assert sink.confirms == []
    store.commit()
    assert sink.confirms == [(1, False, True)]


def test_a_deleted_queues_messages_leave_the_store_with_it_unless_another_queue_holds_them(tmp_path):
    """Even with their deliveries still out: nothing outlives every queue, so a start after
    a crash has no leftovers to scan for."""
    store = SqliteStore(str(tmp_path))
    q1, q2 = FakeQueue("/", "q1"), FakeQueue("/", "q2")
    store.put_queue("/", "q1", False, {})
    store.put_queue("/", "q2", False, {})
    store.add_message(persistent(b"only-q1"), [q1])
    store.add_message(persistent(b"both"), [q1, q2])
    committed(store)
    store.delete_queue("/", "q1")
    committed(store)
    store = reopened(store)
    assert [m.body for m in held(store, store.load())["q2"]] == [b"both"]
    assert rows_after_stop(store, "messages") == 1


class FakePriorityQueue(FakeQueue):
    def level_of(self, message):
        return min(message.properties.get("priority") or 0, 3)


def test_a_queues_places_keep_its_priorities_sizes_and_leave_by_priority_or_by_count(store):
    """What paging a priority or length-limited queue asks of the store (queue_store.py)."""
    prio, plain = FakePriorityQueue("/", "prio"), FakeQueue("/", "plain")
    store.put_queue("/", "prio", False, {"x-max-priority": 3})
    store.put_queue("/", "plain", False, {})
    messages = [persistent(b"x" * (n + 1), priority=n % 5) for n in range(10)]   # priorities 0..4: 4 counts as 3
    for message in messages:
        store.add_message(message, [prio, plain])
    committed(store)
    keys = [message.stored.key for message in messages]
    assert store.paged_sizes(prio) == {0: (2, 1 + 6), 1: (2, 2 + 7), 2: (2, 3 + 8), 3: (4, 4 + 5 + 9 + 10)}
    assert [key for key, _, _, _ in store.read_queue(prio, 0, 10, 3)] == [keys[3], keys[4], keys[8], keys[9]]
    assert [key for key, _, _, _ in store.read_queue(prio, keys[3], 2, 3)] == [keys[4], keys[8]]
    assert store.paged_bytes(prio, keys[3], 2, 3) == 5 + 9
    assert store.paged_bytes(plain, keys[1], 3) == 3 + 4 + 5
    store.remove_paged(prio, keys[0], 3)        # priority 3's from the second on: all four
    store.remove_paged_head(plain, keys[1], 3)  # the third to the fifth
    committed(store)
    assert [key for key, _, _, _ in store.read_queue(prio, 0, 10)] == [keys[n] for n in (0, 1, 2, 5, 6, 7)]
    assert [key for key, _, _, _ in store.read_queue(plain, 0, 10)] == [keys[n] for n in (0, 1, 5, 6, 7, 8, 9)]
    store = reopened(store)
    store.load()
    assert store.paged_sizes(FakePriorityQueue("/", "prio")) == {0: (2, 1 + 6), 1: (2, 2 + 7), 2: (2, 3 + 8)}
