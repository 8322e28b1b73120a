"""The scratch store's disk failing under a broker (store/scratch.py): while it cannot write,
paged messages stay in memory, counted, so publishers meet the memory limit's flow control
instead of the disk; while it cannot read, the messages paged there wait in their queue,
counted, and the queue tries again; other clients are answered throughout, each failure is
logged once, and once the disk works again every message comes out exactly once and in
order. Through a broker whose scratch store fails on cue (tests/failing_disk_broker.py),
and through a real full disk (a small tmpfs)."""

import os
import subprocess
import threading
import time

import pika
import pytest

from tests import failing_disk_broker
from tests.broker_process import BrokerProcess
from tests.test_amqp_queue_features import bodies
from tests.test_durability import fill_up, small_disk  # noqa: F401  (small_disk: a fixture, a 2 MiB tmpfs remounted here)
from tests.test_scratch_paging import (ARGUMENTS, BACKLOG, BODY_BYTES, DEADLINE_SECONDS, LIMIT, WINDOW, consume,
                                       number_of, open_channel, publish, status, wait_for)

WRITE_FAILED = "cannot write the scratch store"
WRITABLE_AGAIN = "is writable again"
READ_FAILED = "cannot read the scratch store"
READABLE_AGAIN = "is readable again"


@pytest.fixture
def failing(tmp_path):
    """(the broker, the file whose presence fails its scratch writes, the one for reads).
    Its log must end without a traceback."""
    writes, reads = str(tmp_path / "failing-writes"), str(tmp_path / "failing-reads")
    env = {**os.environ, failing_disk_broker.WRITES_VARIABLE: writes,
           failing_disk_broker.READS_VARIABLE: reads}
    with BrokerProcess(*ARGUMENTS, script="tests/failing_disk_broker.py", env=env) as broker:
        yield broker, writes, reads
        log = broker.log()
    assert "Traceback" not in log, log


def fail(path):
    open(path, "wb").close()


class Publisher(threading.Thread):
    """Publishes `numbers` to `queue` on a connection of its own, which the memory limit may
    block for a while; `error` is what stopped it, if anything did."""

    def __init__(self, broker, queue, numbers):
        super().__init__(daemon=True)
        self.broker, self.queue, self.numbers, self.error = broker, queue, numbers, None
        self.start()

    def run(self):
        try:
            conn, channel = open_channel(self.broker)
            publish(channel, self.queue, self.numbers)
            conn.close()
        except Exception as exc:    # noqa: BLE001 - the test asserts there was none
            self.error = exc


def others_are_answered(broker):
    """A client that does not touch the failing queue (nor publish: the memory limit may
    block publishers) is answered: it declares a queue of its own and asks it for a message."""
    conn, channel = open_channel(broker)
    declared = channel.queue_declare("bystander").method.message_count == 0
    empty = channel.basic_get("bystander")[0] is None
    conn.close()
    return declared and empty and status(broker)["memory"]["limit_bytes"] == LIMIT


def wait_until_drained(broker):
    """Every message is out: nothing held, nothing left in the scratch store."""
    def drained():
        now = status(broker)
        return now["memory"]["held_bytes"] == 0 and now["scratch"]["messages"] == 0
    wait_for(drained, "the accounted memory and the scratch store to empty")


def test_while_scratch_writes_fail_paged_messages_stay_in_memory_and_none_is_lost_or_doubled(failing):
    broker, writes, _ = failing
    first, second = BACKLOG // 3, BACKLOG
    conn, channel = open_channel(broker)
    channel.queue_declare("backlog")
    publish(channel, "backlog", range(first))
    conn.close()
    conn, channel = open_channel(broker)        # a consumer's: the limit blocks only publishers
    assert status(broker)["scratch"]["messages"] > first // 2        # on disk before the failure
    fail(writes)
    publisher = Publisher(broker, "backlog", range(first, second))
    # Twice the limit cannot stay in memory: flow control stops the publisher.
    wait_for(lambda: status(broker)["memory"]["publishers_blocked"], "the publisher to be blocked")
    assert WRITE_FAILED in broker.log()
    # No more is paged than the batch the failure was met with (the input read while that
    # write was tried: a few reads, more on a loaded machine, far less than a quarter of the
    # limit): what would stay in memory anyway stays as it is.
    assert status(broker)["scratch"]["messages"] < first + LIMIT // BODY_BYTES // 4
    assert others_are_answered(broker)
    # Read back while the disk still fails: the rows on disk, then those kept in memory.
    reading = first + WINDOW * 4
    assert consume(channel, "backlog", reading) == list(range(reading))
    os.unlink(writes)
    wait_for(lambda: WRITABLE_AGAIN in broker.log(), "the scratch store to be written again")
    publisher.join()
    assert publisher.error is None
    during = status(broker)
    assert during["scratch"]["messages"] > (second - reading) // 2 and during["memory"]["held_bytes"] < LIMIT
    assert consume(channel, "backlog", second - reading) == list(range(reading, second))
    assert channel.basic_get("backlog")[0] is None
    conn.close()
    wait_until_drained(broker)
    log = broker.log()
    assert log.count(WRITE_FAILED) == 1 and log.count(WRITABLE_AGAIN) == 1, log


def get_all(channel, queue):
    """The numbers basic.get gives until it answers empty."""
    return [number_of(message_body) for message_body in bodies(channel, queue)]


class Waiting:
    """A consumer that stays registered while the test goes on, and takes its messages
    when asked (`take`)."""

    def __init__(self, broker, queue):
        self.conn, self.channel = open_channel(broker)
        self.channel.basic_qos(prefetch_count=50)
        self.numbers = []
        self.channel.basic_consume(queue, self._on_message)     # registered once this returns

    def _on_message(self, channel, method, properties, message_body):
        self.numbers.append(number_of(message_body))
        channel.basic_ack(method.delivery_tag)

    def take(self, count):
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(self.numbers) < count:
            assert time.monotonic() < deadline, f"only {len(self.numbers)} of {count} arrived"
            self.conn.process_data_events(time_limit=0.1)
        self.conn.close()
        return self.numbers


def test_while_scratch_reads_fail_the_paged_messages_wait_in_their_queue_and_come_in_order_after(failing):
    """basic.get answers empty once the paged head cannot be read, rather than waiting; a
    consumer waiting then is fed once the queue's next try reads the disk again."""
    broker, _, reads = failing
    conn, channel = open_channel(broker)
    channel.queue_declare("backlog")
    publish(channel, "backlog", range(BACKLOG))
    fail(reads)
    taken = get_all(channel, "backlog")         # what was in memory still, if anything
    assert taken == list(range(len(taken))) and len(taken) <= WINDOW
    assert READ_FAILED in broker.log()
    assert channel.queue_declare("backlog", passive=True).method.message_count == BACKLOG - len(taken)
    assert others_are_answered(broker)
    waiting = Waiting(broker, "backlog")
    os.unlink(reads)
    assert waiting.take(BACKLOG - len(taken)) == list(range(len(taken), BACKLOG))
    assert channel.basic_get("backlog")[0] is None
    conn.close()
    wait_until_drained(broker)
    log = broker.log()
    assert log.count(READ_FAILED) == 1 and log.count(READABLE_AGAIN) == 1, log


@pytest.mark.parametrize("end", ["purge", "delete"])
def test_messages_the_scratch_store_can_never_read_back_wait_until_purged_or_deleted(failing, end):
    """What a read that never succeeds leaves: the queue keeps counting them as ready and
    tries again (once a second) while a consumer waits; a purge or a delete ends them, and
    the broker stops cleanly."""
    broker, _, reads = failing
    conn, channel = open_channel(broker)
    channel.queue_declare("unreadable")
    publish(channel, "unreadable", range(BACKLOG))
    fail(reads)
    taken = get_all(channel, "unreadable")
    channel.basic_consume("unreadable", lambda *message: None)     # waits, and is never fed
    assert channel.queue_declare("unreadable", passive=True).method.message_count == BACKLOG - len(taken)
    ended = channel.queue_purge("unreadable") if end == "purge" else channel.queue_delete("unreadable")
    assert ended.method.message_count == BACKLOG - len(taken)
    conn.close()
    wait_until_drained(broker)
    assert broker.log().count(READ_FAILED) == 1
    assert broker.stop() == 0


def test_a_really_full_disk_under_the_scratch_store_loses_and_doubles_nothing(small_disk):  # noqa: F811
    """The disk fills while the store writes a batch: SQLite gives the whole batch back (the
    store keeps a rollback journal in memory: with none, a half-written batch leaves the file
    corrupt), and writes it once there is room again."""
    subprocess.run(["mount", "-o", "remount,size=16m", small_disk], check=True)    # room for the whole backlog
    filler = os.path.join(small_disk, "filler")
    first, second = 3 * LIMIT // 2 // BODY_BYTES, 3 * LIMIT // BODY_BYTES
    with BrokerProcess(*ARGUMENTS, data_dir=os.path.join(small_disk, "data")) as broker:
        conn, channel = open_channel(broker)
        channel.queue_declare("backlog")
        publish(channel, "backlog", range(first))
        conn.close()
        assert status(broker)["scratch"]["messages"] > first // 3
        fill_up(filler)
        publisher = Publisher(broker, "backlog", range(first, second))
        wait_for(lambda: WRITE_FAILED in broker.log(), "the full disk to be met")
        os.unlink(filler)
        publisher.join()
        assert publisher.error is None
        conn, channel = open_channel(broker)
        assert consume(channel, "backlog", second) == list(range(second))
        conn.close()
        wait_until_drained(broker)
        log = broker.log()
    assert "Traceback" not in log and READ_FAILED not in log, log
    assert f"{WRITE_FAILED} {os.path.join(small_disk, 'data', 'scratch.sqlite3')}: database or disk is full" in log
