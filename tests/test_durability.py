"""Durability through the front door: brokers stopped, killed and started again on the
same data directory, spoken to with pika and connection.py."""

import contextlib
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request

import pika
import pytest
from pika.exceptions import NackError

from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from greenmq import connection
from greenmq.store.sqlite import DATABASE_FILE
from tests import http_api
from tests import stalled_commit_broker
from tests.broker_process import BrokerProcess
from tests.test_amqp_wire import RawClient

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def pika_channel(broker):
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))
    return conn, conn.channel()


def filled_durable_queue(broker, queue, count):
    """A pika connection and its channel in confirm mode, with the durable `queue` holding
    `count` confirmed persistent messages, b"0" first."""
    conn, ch = pika_channel(broker)
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for i in range(count):
        ch.basic_publish("", queue, b"%d" % i, PERSISTENT)
    return conn, ch


def json_lines_channel(broker, durable_queue, confirm_window=1):
    """A connection.py channel over JSON lines in confirm mode, with `durable_queue` declared."""
    conn = connection.Connection("127.0.0.1", broker.port)
    channel = conn.channel()
    channel.queue_declare(durable_queue, durable=True)
    channel.confirm_delivery(window=confirm_window)
    return conn, channel


def drain(channel, queue):
    """Every message waiting in `queue`, as (body, redelivered), acked."""
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered))


def restarted(data_dir, broker, sig=signal.SIGTERM):
    assert broker.stop(sig) == (0 if sig == signal.SIGTERM else -sig)
    broker.close()
    return BrokerProcess(data_dir=data_dir).start()


def test_durable_entities_and_persistent_messages_survive_a_clean_restart(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_channel(broker)
        ch.exchange_declare("orders", "topic", durable=True)
        ch.queue_declare("task_queue", durable=True)
        ch.queue_bind("task_queue", "orders", "order.*")
        ch.queue_declare("transient_queue")
        ch.queue_declare("exclusive_durable", durable=True, exclusive=True)
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("orders", "order.new", b"task %d" % i, pika.BasicProperties(
                delivery_mode=2, headers={"n": i}, correlation_id=f"c{i}", expiration="600000"))
        ch.basic_publish("orders", "order.new", b"transient in a durable queue")
        ch.basic_publish("", "transient_queue", b"persistent in a transient queue", PERSISTENT)
        conn.close()

        broker = restarted(data_dir, broker)
        assert "recovered 1 exchanges, 1 queues, 1 bindings and 5 messages" in broker.log()
        conn, ch = pika_channel(broker)
        for queue in ("transient_queue", "exclusive_durable"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare(queue, passive=True)
            ch = conn.channel()
        ch.basic_publish("orders", "order.paid", b"routed by the recovered binding", PERSISTENT)
        got = []
        while True:
            method, properties, body = ch.basic_get("task_queue", auto_ack=True)
            if method is None:
                break
            got.append((body, method.redelivered, properties.headers, properties.correlation_id))
        assert got == [(b"task %d" % i, False, {"n": i}, f"c{i}") for i in range(5)] + [
            (b"routed by the recovered binding", False, None, None)]
        conn.close()
    finally:
        broker.close()


def test_a_partly_consumed_queue_comes_back_with_exactly_the_unacked_first(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = filled_durable_queue(broker, "work", 10)
        delivered = [ch.basic_get("work")[0].delivery_tag for _ in range(7)]
        ch.basic_ack(delivered[3], multiple=True)     # 0-3 done, 4-6 held when the broker stops
        ch.basic_qos(prefetch_count=7)                # a round trip: the acks were read
        broker = restarted(data_dir, broker)
        conn, ch = pika_channel(broker)
        assert drain(ch, "work") == [(b"4", True), (b"5", True), (b"6", True),
                                     (b"7", False), (b"8", False), (b"9", False)]
        conn.close()
    finally:
        broker.close()


def test_deleted_and_purged_things_stay_gone_after_a_restart(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_channel(broker)
        ch.exchange_declare("gone_exchange", "fanout", durable=True)
        ch.queue_declare("gone_queue", durable=True)
        ch.queue_declare("purged", durable=True)
        ch.queue_bind("purged", "gone_exchange")
        ch.queue_bind("gone_queue", "amq.direct", "k")
        ch.confirm_delivery()
        for queue in ("gone_queue", "purged"):
            ch.basic_publish("", queue, b"m", PERSISTENT)
        ch.queue_purge("purged")
        ch.queue_delete("gone_queue")
        ch.exchange_delete("gone_exchange")
        broker = restarted(data_dir, broker)
        conn, ch = pika_channel(broker)
        assert ch.queue_declare("purged", durable=True, passive=True).method.message_count == 0
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.exchange_declare("gone_exchange", passive=True)
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("gone_queue", passive=True)
        ch = conn.channel()
        ch.queue_declare("gone_queue", durable=True)
        ch.basic_publish("amq.direct", "k", b"no binding came back")
        assert ch.queue_declare("gone_queue", passive=True).method.message_count == 0
        conn.close()
    finally:
        broker.close()


def test_a_message_whose_ttl_ran_out_while_the_broker_was_down_is_not_delivered(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_channel(broker)
        ch.queue_declare("short", durable=True, arguments={"x-message-ttl": 2000})
        ch.confirm_delivery()
        ch.basic_publish("", "short", b"expires while down", PERSISTENT)
        ch.basic_publish("", "short", b"outlives the restart", pika.BasicProperties(delivery_mode=2, expiration="1500"))
        ch.basic_publish("", "short", b"keeps its own short ttl",
                         pika.BasicProperties(delivery_mode=2, expiration="1000"))
        published = time.monotonic()
        broker.stop()
        # Time passing while the broker is down is the point of this test.
        time.sleep(max(0.0, published + 2.2 - time.monotonic()))
        broker = restarted(data_dir, broker)
        conn, ch = pika_channel(broker)
        assert drain(ch, "short") == []
        assert "3 expired while the broker was down" in broker.log()
        conn.close()
    finally:
        broker.close()


def test_messages_persisted_by_one_protocol_are_recovered_for_the_other(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        json_conn = connection.Connection("127.0.0.1", broker.port)
        json_channel = json_conn.channel()
        json_channel.queue_declare("from_json", durable=True)
        json_channel.queue_declare("from_amqp", durable=True)
        json_channel.confirm_delivery()
        json_channel.basic_publish("", "from_json", b"\x00\xffbinary", connection.BasicProperties(
            delivery_mode=2, headers={"a": 1, "raw": {"$bytes": "AAE="}}, content_type="application/x"))
        json_conn.close()
        conn, ch = pika_channel(broker)
        ch.confirm_delivery()
        ch.basic_publish("", "from_amqp", "text ü".encode(), pika.BasicProperties(
            delivery_mode=2, headers={"b": 2}, message_id="m-1", priority=3))
        conn.close()

        broker = restarted(data_dir, broker)
        conn, ch = pika_channel(broker)
        method, properties, body = ch.basic_get("from_json", auto_ack=True)
        assert body == b"\x00\xffbinary"
        assert properties.headers == {"a": 1, "raw": b"\x00\x01"}
        assert (properties.content_type, properties.delivery_mode) == ("application/x", 2)
        conn.close()
        json_conn = connection.Connection("127.0.0.1", broker.port)
        json_channel = json_conn.channel()
        method, properties, body = json_channel.basic_get("from_amqp", auto_ack=True)
        assert body == "text ü".encode()
        assert (properties.headers, properties.message_id, properties.priority) == ({"b": 2}, "m-1", 3)
        json_conn.close()
    finally:
        broker.close()


def test_confirms_wait_for_the_disk_and_pipelined_publishers_share_commits(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, channel = json_lines_channel(broker, "pipelined", confirm_window=200)
        for i in range(2000):
            channel.basic_publish("", "pipelined", b"%d" % i, connection.BasicProperties(delivery_mode=2))
        channel.wait_for_confirms(timeout=30)
        # Killed the moment the last confirm arrived: every confirmed message was on disk.
        broker = restarted(data_dir, broker, signal.SIGKILL)
        assert "and 2000 messages" in broker.log()
    finally:
        broker.close()


def test_a_second_broker_on_the_same_data_directory_is_refused(data_dir):
    with BrokerProcess(data_dir=data_dir):
        second = BrokerProcess(data_dir=data_dir)
        with pytest.raises(RuntimeError) as failed:
            second.start()
        second.close()
    assert "is in use by another process (another GreenMQ with the same --data-dir?)" in str(failed.value)


def test_a_damaged_database_stops_the_start_with_one_sentence(data_dir):
    os.makedirs(data_dir)
    path = os.path.join(data_dir, DATABASE_FILE)
    with open(path, "wb") as damaged:
        damaged.write(b"this is not a database" * 100)
    broker = BrokerProcess(data_dir=data_dir)
    with pytest.raises(RuntimeError) as failed:
        broker.start()
    log = broker.log()
    broker.close()
    assert f"cannot open the message store {path}" in str(failed.value)
    assert "Traceback" not in log and "exited with 1" in str(failed.value)
    with open(path, "rb") as kept:
        assert kept.read().startswith(b"this is not a database")      # not started over


def test_a_database_of_a_newer_format_is_refused(data_dir):
    BrokerProcess(data_dir=data_dir).start().close()
    path = os.path.join(data_dir, DATABASE_FILE)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 99 WHERE key = 'format_version'")
    db.commit()
    db.close()
    broker = BrokerProcess(data_dir=data_dir)
    with pytest.raises(RuntimeError) as failed:
        broker.start()
    broker.close()
    assert "has format version 99, and this GreenMQ reads version 1" in str(failed.value)


# -- a disk that fails under the broker ----------------------------------------------------

@pytest.fixture
def small_disk():
    """A 2 MiB tmpfs of our own, to fill up or make read-only under a running broker."""
    mount_point = tempfile.mkdtemp(prefix="greenmq-disk-")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount_point],
                            capture_output=True, text=True)
    if result.returncode != 0:
        os.rmdir(mount_point)
        pytest.skip(f"cannot mount a tmpfs to simulate a failing disk: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)
        os.rmdir(mount_point)


def fill_up(filler):
    """Write `filler` until its disk is full."""
    with open(filler, "wb") as fill:
        try:
            while True:
                fill.write(b"\0" * 65536)
                fill.flush()
        except OSError:
            pass


def wait_until(condition, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def publishes_confirmed(ch, queue):
    try:
        ch.basic_publish("", queue, b"probe", PERSISTENT)
        return True
    except NackError:
        return False


@pytest.mark.parametrize("failure", ["full", "vanished"])
def test_a_failing_disk_nacks_persistent_messages_transient_traffic_goes_on_and_it_recovers(small_disk, failure):
    data_dir = os.path.join(small_disk, "data")
    broker = BrokerProcess(data_dir=data_dir).start()
    filler = os.path.join(small_disk, "filler")
    try:
        conn, ch = pika_channel(broker)
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "q", b"before", PERSISTENT)
        if failure == "full":
            fill_up(filler)
        else:
            os.rename(data_dir, data_dir + ".away")
        nacked = 0
        for i in range(20):
            try:
                ch.basic_publish("", "q", b"%d" % i, pika.BasicProperties(delivery_mode=2, headers={"pad": "x" * 4000}))
            except NackError:
                nacked += 1
        assert nacked >= 19          # the first may have been taken before the failure was seen
        ch.basic_publish("", "q", b"transient", pika.BasicProperties(delivery_mode=1))
        json_conn = connection.Connection("127.0.0.1", broker.port)
        json_channel = json_conn.channel()
        with pytest.raises(connection.BrokerError) as refused:
            json_channel.basic_publish("", "q", b"json", connection.BasicProperties(delivery_mode=2))
            for _ in range(2):      # the error has come back by the end of the first, raised by the second
                json_channel.queue_declare("q", durable=True, passive=True)
        assert refused.value.code == 506
        pipelined = json_conn.channel()
        pipelined.confirm_delivery(window=10)
        for i in range(5):
            pipelined.basic_publish("", "q", b"pipelined", connection.BasicProperties(delivery_mode=2))
        with pytest.raises(connection.NackError, match="nacked 5 message"):
            pipelined.wait_for_confirms(timeout=10)
        assert broker.log().count("cannot write the message store") == 1

        if failure == "full":
            os.unlink(filler)
        else:
            os.rename(data_dir + ".away", data_dir)
        wait_until(lambda: publishes_confirmed(ch, "q"), what="the store to take messages again")
        assert "is writable again" in broker.log()
        bodies = [body for body, _ in drain(ch, "q")]
        assert bodies[0] == b"before" and b"transient" in bodies and bodies[-1] == b"probe"
        conn.close()
        json_conn.close()
    finally:
        broker.close()


def test_a_read_only_data_directory_stops_the_start_with_one_sentence(small_disk):
    data_dir = os.path.join(small_disk, "data")
    BrokerProcess(data_dir=data_dir).start().close()
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    broker = BrokerProcess(data_dir=data_dir)
    with pytest.raises(RuntimeError) as failed:
        broker.start()
    broker.close()
    assert f"cannot open the message store {data_dir}/{DATABASE_FILE}" in str(failed.value)
    assert "Traceback" not in str(failed.value)


# -- crashes -------------------------------------------------------------------------------

class Traffic:
    """A confirming publisher and a consumer, each in a thread, that remember what the
    broker confirmed and what they acked until the broker is killed under them. The
    consumer acks one message in three and leaves the rest unacked, so most confirmed
    messages must come back after the kill."""

    def __init__(self, broker, queue, client):
        self.confirmed, self.acked, self.delivered = set(), set(), set()
        self.first_confirm = threading.Event()
        self.threads = [threading.Thread(target=self._publish, args=(broker, queue, client), daemon=True),
                        threading.Thread(target=self._consume, args=(broker, queue), daemon=True)]
        for thread in self.threads:
            thread.start()

    def _publish(self, broker, queue, client):
        try:
            if client == "pika":
                conn, ch = pika_channel(broker)
                ch.confirm_delivery()
                publish = lambda body: ch.basic_publish("", queue, body, PERSISTENT)   # noqa: E731
            else:
                conn = connection.Connection("127.0.0.1", broker.port)
                ch = conn.channel()
                ch.confirm_delivery()
                publish = lambda body: ch.basic_publish("", queue, body, connection.BasicProperties(delivery_mode=2))  # noqa: E731
            for i in range(100000):
                body = f"{client}-{os.getpid()}-{time.monotonic_ns()}-{i}".encode()
                publish(body)
                self.confirmed.add(body)
                self.first_confirm.set()
        except Exception:
            return      # the broker is gone

    def _consume(self, broker, queue):
        try:
            conn, ch = pika_channel(broker)
            for method, properties, body in ch.consume(queue, inactivity_timeout=0.5):
                if method is None:
                    continue
                self.delivered.add(body)
                if int(body.rsplit(b"-", 1)[1]) % 3 == 0:
                    ch.basic_ack(method.delivery_tag)
                    self.acked.add(body)
        except Exception:
            return

    def join(self):
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


@pytest.mark.parametrize("client", ["pika", "connection.py"])
def test_no_confirmed_message_is_lost_when_the_broker_is_killed(data_dir, client):
    rng = random.Random(f"kill-{client}")
    broker = BrokerProcess(data_dir=data_dir).start()
    conn, ch = pika_channel(broker)
    ch.queue_declare("crash", durable=True)
    conn.close()
    try:
        for round_number in range(3):
            traffic = Traffic(broker, "crash", client)
            assert traffic.first_confirm.wait(30), "the publisher got no confirm"
            time.sleep(rng.uniform(0.05, 0.8))        # a random kill point, by design
            broker.stop(signal.SIGKILL)
            traffic.join()
            broker.close()
            broker = BrokerProcess(data_dir=data_dir).start()
            conn, ch = pika_channel(broker)
            left = drain(ch, "crash")
            conn.close()
            bodies = [body for body, _ in left]
            assert len(bodies) == len(set(bodies)), "a message came back twice"
            lost = traffic.confirmed - traffic.acked - set(bodies)
            assert not lost, f"round {round_number}: {len(lost)} confirmed messages lost"
            assert all(redelivered for body, redelivered in left if body in traffic.delivered)
    finally:
        broker.close()


# -- what reaches the disk, and when -------------------------------------------------------

# The database file and its write-ahead log, as strace -yy names the descriptors synced
# (with -xx, in hex).
DATABASE_SYNC = re.compile(r"f(?:data)?sync\(\d+<[^>]*(?:%s|%s)" % (
    re.escape(DATABASE_FILE), re.escape("".join(f"\\x{byte:02x}" for byte in DATABASE_FILE.encode()))))


@contextlib.contextmanager
def syscalls_traced(pid, syscalls, hex_strings=False):
    """Trace `syscalls` of every thread of process `pid` while the block runs; the list
    yielded holds strace's lines once it ends, each with the file or socket behind a
    descriptor and the first bytes written or read (every byte as \\xNN with
    `hex_strings`, for binary protocols). Skips where strace cannot attach."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (`make test-tools` installs it)")
    with tempfile.TemporaryDirectory(prefix="greenmq-trace-") as directory:
        path = os.path.join(directory, "trace")
        tracer = subprocess.Popen(["strace", "-f", "-yy", "-s", "4096", "-o", path, *(["-xx"] if hex_strings else []),
                                   "-e", "trace=" + ",".join(syscalls), "-p", str(pid)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            # strace says "Process N attached" once it traces every thread; anything else
            # first is why it cannot (ptrace not allowed here, say).
            if not select.select([tracer.stderr], [], [], 30)[0]:
                raise AssertionError("strace said nothing within 30 s of starting")
            first = tracer.stderr.readline()
            if "attached" not in first:
                pytest.skip(f"strace cannot trace the broker here: {first.strip()}")
            lines = []
            yield lines
        finally:
            tracer.terminate()      # strace detaches; the broker goes on
            tracer.wait(30)
            tracer.stderr.close()
        with open(path) as recorded:
            lines += recorded.read().splitlines()


SYNCS_AND_SOCKETS = ["fsync", "fdatasync", "recvfrom", "read", "sendto", "write"]


def answers_after_syncs(lines, request, answer):
    """How many answers the trace `lines` shows, each after a sync of the database that
    ended after the last request before it: `request(text)` and `answer(text)` say what
    the broker read and sent. The client waits for each answer before its next request,
    so between them the broker must have finished a sync: a line with its result, whole
    or "resumed" after another thread's line cut in."""
    syncing = set()             # threads whose database sync has not returned yet
    synced, answers = False, 0
    for line in lines:
        thread, _, call = line.partition(" ")
        call = call.lstrip()
        if DATABASE_SYNC.match(call):
            if call.endswith("<unfinished ...>"):
                syncing.add(thread)
            else:
                synced = synced or call.endswith("= 0")
        elif thread in syncing and call.startswith(("<... fsync resumed>", "<... fdatasync resumed>")):
            syncing.discard(thread)
            synced = synced or call.endswith("= 0")
        elif call.startswith(("recvfrom(", "read(", "<... recvfrom resumed>", "<... read resumed>")) and request(call):
            synced = False
        elif call.startswith(("sendto(", "write(")) and answer(call):
            assert synced, f"answer {answers + 1} was sent before its message was synced:\n" + "\n".join(lines)
            answers += 1
    return answers


def test_no_confirm_reaches_the_client_before_its_message_is_synced_to_disk(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        with syscalls_traced(broker.pid, SYNCS_AND_SOCKETS) as lines:
            conn, channel = json_lines_channel(broker, "synced")
            for i in range(5):
                channel.basic_publish("", "synced", b"%d" % i, connection.BasicProperties(delivery_mode=2))
                channel.wait_for_confirms(timeout=30)
            conn.close()
    finally:
        broker.close()
    assert answers_after_syncs(lines, lambda call: '\\"op\\":\\"publish\\"' in call,
                               lambda call: '\\"event\\":\\"ack\\"' in call) == 5


_SOCKET_CALL = re.compile(r"(?:recvfrom|read|sendto|write)\((\d+)<")


def answers_after_their_own_syncs(lines, request, answer):
    """How many answers the trace `lines` shows, each after a sync of the database that
    began after the last request read from the same connection and ended before the
    answer: with several clients at once, each answer must wait for a sync of its own
    request, however the requests of others and the syncs interleave."""
    unfinished = {}             # thread -> its call cut by another thread's line
    sync_started = {}           # thread -> where its database sync began
    last_synced_from = -1       # where the last finished sync began
    last_request = {}           # descriptor -> where its last request was read
    answers = 0
    for position, line in enumerate(lines):
        thread, _, call = line.partition(" ")
        call = call.lstrip()
        if call.endswith("<unfinished ...>"):
            unfinished[thread] = call
            if DATABASE_SYNC.match(call):
                sync_started[thread] = position
            elif call.startswith(("sendto(", "write(")) and answer(call):
                answers += 1
                descriptor = _SOCKET_CALL.match(call).group(1)
                assert last_synced_from > last_request.get(descriptor, -1), \
                    f"answer {answers} was sent before its message was synced:\n" + "\n".join(lines)
            continue
        if call.startswith("<... "):
            begun = unfinished.pop(thread, "")
            if DATABASE_SYNC.match(begun):
                if call.endswith("= 0"):
                    last_synced_from = max(last_synced_from, sync_started.pop(thread))
            elif begun.startswith(("recvfrom(", "read(")) and request(call):
                last_request[_SOCKET_CALL.match(begun).group(1)] = position
            continue
        if DATABASE_SYNC.match(call):
            if call.endswith("= 0"):
                last_synced_from = position
        elif call.startswith(("recvfrom(", "read(")) and request(call):
            last_request[_SOCKET_CALL.match(call).group(1)] = position
        elif call.startswith(("sendto(", "write(")) and answer(call):
            answers += 1
            descriptor = _SOCKET_CALL.match(call).group(1)
            assert last_synced_from > last_request.get(descriptor, -1), \
                f"answer {answers} was sent before its message was synced:\n" + "\n".join(lines)
    return answers


def test_no_confirm_reaches_any_of_several_clients_before_its_message_is_synced(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    clients, messages = 4, 10

    def publish_each_confirmed(channel):
        for i in range(messages):
            channel.basic_publish("", "synced", b"%d" % i, connection.BasicProperties(delivery_mode=2))
            channel.wait_for_confirms(timeout=30)

    try:
        channels = [json_lines_channel(broker, "synced") for _ in range(clients)]
        with syscalls_traced(broker.pid, SYNCS_AND_SOCKETS) as lines:
            threads = [threading.Thread(target=publish_each_confirmed, args=(channel,)) for _, channel in channels]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        for conn, _ in channels:
            conn.close()
    finally:
        broker.close()
    assert answers_after_their_own_syncs(lines, lambda call: '\\"op\\":\\"publish\\"' in call,
                                         lambda call: '\\"event\\":\\"ack\\"' in call) == clients * messages


def amqp_method(class_id, method_id):
    """An argument-less AMQP method's last bytes as strace -xx shows them: class, method, frame end."""
    return "".join(f"\\x{byte:02x}" for byte in (class_id >> 8, class_id & 255, method_id >> 8, method_id & 255, 0xCE))


TX_COMMIT, TX_COMMIT_OK = amqp_method(90, 20), amqp_method(90, 21)


def test_no_tx_commit_ok_reaches_the_client_before_its_messages_are_synced_to_disk(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_channel(broker)
        ch.queue_declare("committed", durable=True)
        ch.tx_select()
        with syscalls_traced(broker.pid, SYNCS_AND_SOCKETS, hex_strings=True) as lines:
            for i in range(5):
                ch.basic_publish("", "committed", b"%d" % i, PERSISTENT)
                ch.basic_publish("", "committed", b"%d again" % i, PERSISTENT)
                ch.tx_commit()
        conn.close()
    finally:
        broker.close()
    assert answers_after_syncs(lines, lambda call: TX_COMMIT in call, lambda call: TX_COMMIT_OK in call) == 5


def publish_over_http(broker, queue, text):
    """A persistent message to `queue` through the management API, which must route it."""
    assert http_api.call(broker.http_port, "POST", http_api.path("exchanges", "/", "amq.default", "publish"),
                         {"routing_key": queue, "payload": text, "payload_encoding": "string",
                          "properties": {"delivery_mode": 2}}) == (200, {"routed": True})


def test_no_http_publish_is_answered_before_its_message_is_synced_to_disk(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, ch = pika_channel(broker)
        ch.queue_declare("posted", durable=True)
        conn.close()
        with syscalls_traced(broker.pid, SYNCS_AND_SOCKETS) as lines:
            for i in range(5):
                publish_over_http(broker, "posted", str(i))
    finally:
        broker.close()
    assert answers_after_syncs(lines, lambda call: "POST /api/exchanges/" in call,
                               lambda call: '\\"routed\\"' in call) == 5


def stored_commits(broker):
    """How many commits the broker's store has made that wrote something, from /metrics."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=10).read().decode()
    return int(re.search(r"^greenmq_store_commit_duration_seconds_count (\d+)$", metrics, re.MULTILINE).group(1))


# An ack needs no fsync and waits a few milliseconds to share a commit (REMOVALS_DELAY_SECONDS
# in greenmq/store/sqlite.py), so it is on disk well within this, even on a busy machine.
ACK_ON_DISK_SECONDS = 0.25


def test_an_ack_alone_reaches_the_disk_within_a_quarter_second(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, channel = json_lines_channel(broker, "acked")
        channel.basic_publish("", "acked", b"done", connection.BasicProperties(delivery_mode=2))
        channel.wait_for_confirms(timeout=30)
        delivery, _, body = channel.basic_get("acked")
        assert body == b"done"
        before = stored_commits(broker)
        acked_at = time.monotonic()
        channel.basic_ack(delivery.delivery_tag)
        while stored_commits(broker) == before and time.monotonic() - acked_at < ACK_ON_DISK_SECONDS:
            time.sleep(0.005)
        # Killed at once: whatever the store had not committed by now is lost.
        broker = restarted(data_dir, broker, signal.SIGKILL)
        conn, ch = pika_channel(broker)
        assert drain(ch, "acked") == [], f"the ack was not on disk {ACK_ON_DISK_SECONDS} s after it was sent"
        conn.close()
    finally:
        broker.close()


def confirming_raw_publishers(broker, queue, count):
    """`count` raw AMQP connections in confirm mode on channel 1, and the frames of one
    persistent publish to `queue`, with everything before them committed."""
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
    publishers = [RawClient(url).open() for _ in range(count)]
    for publisher in publishers:
        publisher.open_channel()
        publisher.send_method(1, spec.Confirm.Select())
        publisher.expect(spec.Confirm.SelectOk, 1)
    publishers[0].send_method(1, spec.Queue.Declare(queue=queue, durable=True))
    publishers[0].expect(spec.Queue.DeclareOk, 1)
    body = b"persistent"
    frames = b"".join(amqp_frame.marshal(frame, 1) for frame in (
        spec.Basic.Publish(exchange="", routing_key=queue),
        amqp_header.ContentHeader(0, len(body), spec.Basic.Properties(delivery_mode=2)),
        amqp_body.ContentBody(body)))
    publishers[0].send(frames)              # confirmed once it and the declare are on disk
    assert publishers[0].expect(spec.Basic.Ack, 1).delivery_tag == 1
    return publishers, frames


# Connections publishing at once, each waiting for its confirm (a web application's workers).
PUBLISHERS = 16


def test_publishers_on_many_connections_waiting_for_their_confirms_share_one_commit(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        publishers, frames = confirming_raw_publishers(broker, "shared", PUBLISHERS)
        before = stored_commits(broker)
        # Frozen, the broker finds every publish waiting when it goes on: they arrived
        # during one commit, as they would while the disk syncs one.
        with broker.frozen():
            for publisher in publishers:
                publisher.send(frames)
        for number, publisher in enumerate(publishers):
            assert publisher.expect(spec.Basic.Ack, 1).delivery_tag == (2 if number == 0 else 1)
        # Usually one commit; the hub may start the first before it has read every socket
        # that woke with it, so a second may carry the rest. One a message would be 16.
        assert 1 <= stored_commits(broker) - before <= PUBLISHERS // 4
        for publisher in publishers:
            publisher.close()
        broker = restarted(data_dir, broker, signal.SIGKILL)
        assert f"and {PUBLISHERS + 1} messages" in broker.log()
    finally:
        broker.close()


# Long beside the milliseconds this test takes to answer 16 confirms, short enough that a
# publisher that does not come back (the one that declared the queue) costs it little.
RETURNING_WAIT_SECONDS = 2


def test_publishers_confirmed_by_one_commit_share_the_next_as_each_publishes_on_its_confirm(data_dir, tmp_path):
    """Publishers confirmed by one commit each publish again on hearing their confirm, one
    after another (this test answers them in turn, with a look at the commit count before
    the last): the next commit waits for them all instead of starting with the first one
    back. The wait is lengthened to RETURNING_WAIT_SECONDS, a hundred times what answering
    them all takes, so the test does not depend on the machine's speed."""
    gate = str(tmp_path / "commit-gate")
    broker = BrokerProcess(data_dir=data_dir, script="tests/stalled_commit_broker.py", env={
        **os.environ, stalled_commit_broker.GATE_VARIABLE: gate,
        stalled_commit_broker.RETURNING_WAIT_VARIABLE: str(RETURNING_WAIT_SECONDS)}).start()
    try:
        publishers, frames = confirming_raw_publishers(broker, "shared", PUBLISHERS)
        # A commit stalled by a publisher that wants no confirm, so every publish of the
        # first round waits in one batch behind it.
        os.mkfifo(gate)
        conn = connection.Connection("127.0.0.1", broker.port)
        channel = conn.channel()
        channel.basic_publish("", "shared", b"staller", connection.BasicProperties(delivery_mode=2))
        held = stalled_commit_broker.hold(gate)
        for publisher in publishers:
            publisher.send(frames)
        deadline = time.monotonic() + 60
        while channel.queue_declare("shared", durable=True, passive=True).method.message_count < PUBLISHERS + 2:
            assert time.monotonic() < deadline, "the first round never arrived"
        stalled_commit_broker.release(gate, held)
        for number, publisher in enumerate(publishers):
            assert publisher.expect(spec.Basic.Ack, 1).delivery_tag == (2 if number == 0 else 1)
            if number == PUBLISHERS - 1:
                second_round_starts = stored_commits(broker)
            publisher.send(frames)
        for number, publisher in enumerate(publishers):
            assert publisher.expect(spec.Basic.Ack, 1).delivery_tag == (3 if number == 0 else 2)
        assert stored_commits(broker) - second_round_starts == 1
        for publisher in publishers:
            publisher.close()
        conn.close()
    finally:
        broker.close()


def persistent_publish_frames(queue, body):
    return b"".join(amqp_frame.marshal(frame, 1) for frame in (
        spec.Basic.Publish(exchange="", routing_key=queue),
        amqp_header.ContentHeader(0, len(body), spec.Basic.Properties(delivery_mode=2)),
        amqp_body.ContentBody(body)))


def stall_commits(broker, gate, queue):
    """Hold the commits of a stalled_commit_broker at `gate`: one carrying a persistent
    message for `queue` from a publisher that wants no confirm waits there, and what comes
    next waits in the open batch behind it. Returns that publisher's connection and what
    stalled_commit_broker.release takes."""
    os.mkfifo(gate)
    conn = connection.Connection("127.0.0.1", broker.port)
    conn.channel().basic_publish("", queue, b"staller", connection.BasicProperties(delivery_mode=2))
    return conn, stalled_commit_broker.hold(gate)


def bodies_after_kill_9(data_dir, broker, *queues):
    """Kill -9 `broker` and start it again on `data_dir`: (the new broker, the bodies each
    of `queues` then holds, drained)."""
    broker = restarted(data_dir, broker, signal.SIGKILL)
    conn, ch = pika_channel(broker)
    bodies = [[body for body, _ in drain(ch, queue)] for queue in queues]
    conn.close()
    return broker, bodies


def received_delivery(client, channel):
    """The next delivery on `channel` of a RawClient: (its basic.deliver, its body)."""
    delivery = client.expect(spec.Basic.Deliver, channel)
    client.expect(amqp_header.ContentHeader, channel)
    return delivery, client.expect(amqp_body.ContentBody, channel).value


def test_a_persistent_message_consumed_before_its_commit_is_confirmed_without_waiting_for_the_disk(
        data_dir, tmp_path):
    """As RabbitMQ confirms a message its store drops unwritten because every queue is done
    with it: while the disk is stalled, a publisher whose message a consumer acked hears its
    confirm, and the message is never written; one nobody consumed waits for the disk."""
    gate = str(tmp_path / "commit-gate")
    broker = BrokerProcess(data_dir=data_dir, script="tests/stalled_commit_broker.py",
                           env={**os.environ, stalled_commit_broker.GATE_VARIABLE: gate}).start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        consumed, waiting = RawClient(url).open(), RawClient(url).open()
        for publisher, queue in ((consumed, "worked"), (waiting, "idle")):
            publisher.open_channel()
            publisher.send_method(1, spec.Queue.Declare(queue=queue, durable=True))
            publisher.expect(spec.Queue.DeclareOk, 1)
            publisher.send_method(1, spec.Confirm.Select())
            publisher.expect(spec.Confirm.SelectOk, 1)
        consumer = RawClient(url).open()
        consumer.open_channel()
        consumer.send_method(1, spec.Basic.Consume(queue="worked"))
        consumer.expect(spec.Basic.ConsumeOk, 1)
        conn, held = stall_commits(broker, gate, "idle")
        waiting.send(persistent_publish_frames("idle", b"on disk first"))
        consumed.send(persistent_publish_frames("worked", b"done"))
        delivery, body = received_delivery(consumer, 1)
        assert body == b"done"
        consumer.send_method(1, spec.Basic.Ack(delivery.delivery_tag))
        assert consumed.expect(spec.Basic.Ack, 1).delivery_tag == 1
        # No commit has ended meanwhile, so the other publisher has heard nothing.
        waiting.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            waiting.sock.recv(1)
        waiting.sock.setblocking(True)
        stalled_commit_broker.release(gate, held)
        assert waiting.expect(spec.Basic.Ack, 1).delivery_tag == 1
        for client in (consumed, waiting, consumer):
            client.close()
        conn.close()
        broker, (idle, worked) = bodies_after_kill_9(data_dir, broker, "idle", "worked")
        assert idle == [b"staller", b"on disk first"]
        assert worked == []
    finally:
        broker.close()


def test_a_message_dead_lettered_before_its_commit_is_confirmed_only_once_its_copy_is_on_disk(
        data_dir, tmp_path):
    """A message rejected into a dead-letter queue before it was written ends unwritten, but
    its copy in the dead-letter queue is not on disk yet: the confirm waits for the commit
    that keeps the copy, and the copy survives a kill -9."""
    gate = str(tmp_path / "commit-gate")
    broker = BrokerProcess(data_dir=data_dir, script="tests/stalled_commit_broker.py",
                           env={**os.environ, stalled_commit_broker.GATE_VARIABLE: gate}).start()
    try:
        client = RawClient(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f").open()
        client.open_channel(1)
        client.open_channel(2)
        client.send_method(1, spec.Queue.Declare(queue="graveyard", durable=True))
        client.expect(spec.Queue.DeclareOk, 1)
        client.send_method(1, spec.Queue.Declare(queue="rejected", durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "graveyard"}))
        client.expect(spec.Queue.DeclareOk, 1)
        client.send_method(1, spec.Confirm.Select())
        client.expect(spec.Confirm.SelectOk, 1)
        client.send_method(2, spec.Basic.Consume(queue="rejected"))
        client.expect(spec.Basic.ConsumeOk, 2)
        conn, held = stall_commits(broker, gate, "graveyard")
        client.send(persistent_publish_frames("rejected", b"unwanted"))
        delivery, _ = received_delivery(client, 2)
        client.send_method(2, spec.Basic.Reject(delivery.delivery_tag, requeue=False))
        # The broker answers in order on a connection: a confirm made by the reject would
        # come before the qos-ok asked for after it.
        client.send_method(2, spec.Basic.Qos(prefetch_count=10))
        frames = [client.receive()]
        while not isinstance(frames[-1][1], spec.Basic.QosOk):
            frames.append(client.receive())
        assert not [frame for _, frame in frames if isinstance(frame, spec.Basic.Ack)]
        stalled_commit_broker.release(gate, held)
        assert client.expect(spec.Basic.Ack, 1).delivery_tag == 1
        client.close()
        conn.close()
        broker, (graveyard, rejected) = bodies_after_kill_9(data_dir, broker, "graveyard", "rejected")
        assert graveyard == [b"staller", b"unwanted"]
        assert rejected == []
    finally:
        broker.close()


# Long beside the milliseconds a consumer here takes to ack, so the test does not depend on
# the machine's speed; the wait ends at the ack.
ENDING_WAIT_SECONDS = 30


def test_where_consumers_ack_before_the_commit_ends_commits_wait_for_the_acks_and_write_nothing(
        data_dir, tmp_path):
    """Once a commit's messages were acked while it was written, the next commits wait for
    their messages' acks: a publisher waiting for each confirm, and a consumer acking each
    delivery, then go on without a commit a message (one each without the wait)."""
    gate = str(tmp_path / "commit-gate")
    broker = BrokerProcess(data_dir=data_dir, script="tests/stalled_commit_broker.py", env={
        **os.environ, stalled_commit_broker.GATE_VARIABLE: gate,
        stalled_commit_broker.ENDING_WAIT_VARIABLE: str(ENDING_WAIT_SECONDS)}).start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        publisher, consumer = RawClient(url).open(), RawClient(url).open()
        publisher.open_channel()
        publisher.send_method(1, spec.Queue.Declare(queue="work", durable=True))
        publisher.expect(spec.Queue.DeclareOk, 1)
        publisher.send_method(1, spec.Confirm.Select())
        publisher.expect(spec.Confirm.SelectOk, 1)
        consumer.open_channel()
        consumer.send_method(1, spec.Basic.Consume(queue="work"))
        consumer.expect(spec.Basic.ConsumeOk, 1)

        def consume_one():
            delivery, _ = received_delivery(consumer, 1)
            consumer.send_method(1, spec.Basic.Ack(delivery.delivery_tag))

        # The first message's commit is held until its ack has arrived: acked while written.
        before_first = stored_commits(broker)
        os.mkfifo(gate)
        publisher.send(persistent_publish_frames("work", b"first"))
        held = stalled_commit_broker.hold(gate)
        consume_one()
        stalled_commit_broker.release(gate, held)
        assert publisher.expect(spec.Basic.Ack, 1).delivery_tag == 1
        # Its removal goes in a commit of its own, a few milliseconds later: one that
        # writes no new message does not change what the next one does.
        deadline = time.monotonic() + 60
        while stored_commits(broker) < before_first + 2:
            assert time.monotonic() < deadline, "the first message's removal was never committed"
        before = stored_commits(broker)
        for number in range(2, 22):
            publisher.send(persistent_publish_frames("work", b"more"))
            consume_one()
            assert publisher.expect(spec.Basic.Ack, 1).delivery_tag == number
        # The second message is written, as its commit was decided before the first's ended,
        # and its removal takes a commit; a commit a message would be 20.
        assert stored_commits(broker) - before <= 2
        for client in (publisher, consumer):
            client.close()
    finally:
        broker.close()


def test_acks_of_a_committed_transaction_are_on_disk_when_commit_ok_arrives(data_dir):
    broker = BrokerProcess(data_dir=data_dir).start()
    try:
        conn, _ = filled_durable_queue(broker, "settled", 3)
        ch = conn.channel()
        ch.tx_select()
        tags = [ch.basic_get("settled")[0].delivery_tag for _ in range(2)]
        ch.basic_ack(tags[-1], multiple=True)
        ch.tx_commit()
        # Killed at once: an ack waits a few milliseconds for a commit of its own unless
        # something waits for it, and commit-ok must.
        broker = restarted(data_dir, broker, signal.SIGKILL)
        conn, ch = pika_channel(broker)
        assert drain(ch, "settled") == [(b"2", True)]
        conn.close()
    finally:
        broker.close()
