"""A power cut, modelled: the broker runs on a file system that keeps only what was synced
(tests/power_cut.c, preloaded), is killed, and starts again on the files as they were at
their last sync. Every confirmed message and committed transaction must be there, and no
ack older than the last synced commit may come back; the acks since it do.

The model keeps none of the writes after a file's last sync, the harshest outcome of
losing them; it does not tear or reorder writes (SQLite's write-ahead log checksums its
frames against that), and it takes file names as durable."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.broker_process import BrokerProcess
from tests.test_durability import PERSISTENT, drain, pika_channel, publish_over_http, stored_commits

SHIM_SOURCE = os.path.join(os.path.dirname(__file__), "power_cut.c")

ROUNDS = 10
ACKED_QUEUE_DEPTH = 20
ACKED_LAST = 3      # acks after the last synced commit


@pytest.fixture
def power_cut_shim(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the power-cut file system")
    shim = str(tmp_path / "power_cut.so")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", shim, SHIM_SOURCE, "-ldl"], check=True)
    return shim


def broker_on_power_cut_disk(tmp_path, shim):
    """A broker whose data directory keeps what is synced in a second directory; (broker,
    data directory, synced directory, a file that, given a number, makes each sync take
    that many seconds longer)."""
    data_dir, synced_dir = os.path.realpath(tmp_path / "data"), str(tmp_path / "synced")
    sync_seconds = str(tmp_path / "sync_seconds")
    os.makedirs(data_dir)
    os.makedirs(synced_dir)
    broker = BrokerProcess(data_dir=data_dir, env={
        **os.environ, "LD_PRELOAD": shim, "POWER_CUT_WATCH": data_dir, "POWER_CUT_SYNCED": synced_dir,
        "POWER_CUT_SYNC_SECONDS_FILE": sync_seconds})
    return broker.start(), data_dir, synced_dir, sync_seconds


def cut_power(broker, data_dir, synced_dir):
    """Kill the broker, then leave each file of `data_dir` as it was at its last sync, and
    one never synced gone. Names are taken as durable (a journal SQLite deleted stays
    deleted, as a journalling file system's next sync makes it); contents only as synced."""
    assert broker.stop(signal.SIGKILL) == -signal.SIGKILL
    broker.close()
    for name in os.listdir(data_dir):
        synced = os.path.join(synced_dir, name)
        if os.path.exists(synced):
            shutil.copyfile(synced, os.path.join(data_dir, name))
        else:
            os.unlink(os.path.join(data_dir, name))


def test_after_a_power_cut_every_promise_holds_and_only_acks_since_the_last_sync_return(tmp_path, power_cut_shim):
    broker, data_dir, synced_dir, _ = broker_on_power_cut_disk(tmp_path, power_cut_shim)
    try:
        conn, confirming = pika_channel(broker)
        for queue in ("confirmed", "committed", "acked"):
            confirming.queue_declare(queue, durable=True)
        confirming.confirm_delivery()
        transacting, acking = conn.channel(), conn.channel()
        transacting.tx_select()
        for i in range(ACKED_QUEUE_DEPTH):
            confirming.basic_publish("", "acked", b"a%d" % i, PERSISTENT)
        confirmed, committed, acked = [], [], []
        for i in range(ROUNDS):
            # The confirm says this round's publish and everything read before it (the
            # last round's ack) is synced.
            confirming.basic_publish("", "confirmed", b"c%d" % i, PERSISTENT)
            confirmed.append(b"c%d" % i)
            transacting.basic_publish("", "committed", b"t%d" % i, PERSISTENT)
            transacting.basic_publish("", "committed", b"t%d again" % i, PERSISTENT)
            transacting.tx_commit()
            committed += [b"t%d" % i, b"t%d again" % i]
            method, _, body = acking.basic_get("acked")
            acking.basic_ack(method.delivery_tag)
            acked.append(body)
        # Acks alone are committed without a sync: the operating system has them, the disk not.
        before = stored_commits(broker)
        for _ in range(ACKED_LAST):
            method, _, body = acking.basic_get("acked")
            acking.basic_ack(method.delivery_tag)
            acked.append(body)
        deadline = time.monotonic() + 10
        while stored_commits(broker) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stored_commits(broker) > before, "the last acks were not committed within 10 s"
        cut_power(broker, data_dir, synced_dir)

        broker = BrokerProcess(data_dir=data_dir).start()
        conn, ch = pika_channel(broker)
        assert drain(ch, "confirmed") == [(body, True) for body in confirmed]
        assert drain(ch, "committed") == [(body, True) for body in committed]
        # The last round's ack and the ones after it were never synced; every earlier one was.
        returned = acked[ROUNDS - 1:]
        assert drain(ch, "acked") == [(body, True) for body in returned + [b"a%d" % i for i in range(
            len(acked), ACKED_QUEUE_DEPTH)]]
        conn.close()
    finally:
        broker.close()


# A sync this slow leaves no doubt about the order of an answer and its sync: a kill right
# after an answer sent too early lands well before the sync ends.
SLOW_SYNC_SECONDS = 0.2


def publish_confirmed(broker, ch, body):
    ch.confirm_delivery()
    ch.basic_publish("", "promised", body, PERSISTENT)


def publish_in_a_transaction(broker, ch, body):
    ch.tx_select()
    ch.basic_publish("", "promised", body, PERSISTENT)
    ch.tx_commit()


def publish_promised_over_http(broker, ch, body):
    publish_over_http(broker, "promised", body.decode())


@pytest.mark.parametrize("publish", [publish_confirmed, publish_in_a_transaction, publish_promised_over_http])
def test_a_message_promised_on_disk_survives_a_power_cut_right_after_the_promise(tmp_path, power_cut_shim,
                                                                                  publish):
    broker, data_dir, synced_dir, sync_seconds = broker_on_power_cut_disk(tmp_path, power_cut_shim)
    try:
        conn, ch = pika_channel(broker)
        ch.queue_declare("promised", durable=True)
        with open(sync_seconds, "w") as slow:
            slow.write(str(SLOW_SYNC_SECONDS))
        publish(broker, ch, b"kept")
        cut_power(broker, data_dir, synced_dir)
        broker = BrokerProcess(data_dir=data_dir).start()
        conn, ch = pika_channel(broker)
        assert drain(ch, "promised") == [(b"kept", True)]
        conn.close()
    finally:
        broker.close()
