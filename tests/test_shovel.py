"""greenmqctl shovel: a queue's waiting messages moved to another AMQP broker, none lost
when that broker dies half-way and the command is run again."""

import os
import signal
import subprocess
import sys

from greenmq import connection
from tests.broker_process import ROOT, BrokerProcess
from tests.test_durability import small_disk  # noqa: F401  (a fixture)

MESSAGES = 400


def amqp_url(broker):
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"


def shovel(source, target, *options):
    return [sys.executable, "-m", "greenmq.ctl", "--port", str(source.port), "shovel", "work", amqp_url(target),
            "--window", "20", *options]


def test_the_shovel_loses_nothing_when_the_target_dies_half_way_and_it_is_run_again(tmp_path):
    target_dir = str(tmp_path / "target")
    with BrokerProcess() as source:
        target = BrokerProcess(data_dir=target_dir).start()
        try:
            with connection.Connection("127.0.0.1", target.port) as conn:
                conn.default_channel.queue_declare("work", durable=True)
            bodies = {f"message {i}".encode() for i in range(MESSAGES)}
            with connection.Connection("127.0.0.1", source.port) as conn:
                channel = conn.channel()
                channel.queue_declare("work", durable=True)
                channel.confirm_delivery(window=100)
                for body in sorted(bodies):
                    channel.basic_publish("", "work", body, connection.BasicProperties(delivery_mode=2))
                channel.wait_for_confirms(timeout=30)

            first = subprocess.Popen(shovel(source, target), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            for line in first.stdout:
                if line.startswith(f"Moved 100 of {MESSAGES}"):
                    target.stop(signal.SIGKILL)           # half-way, by design
                    break
            first.stdout.read()
            assert first.wait(timeout=60) != 0 and first.stderr.read().startswith("Error:")
            target.close()

            target = BrokerProcess(data_dir=target_dir).start()
            second = subprocess.run(shovel(source, target), cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert second.returncode == 0, second.stderr
            assert second.stdout.splitlines()[-1].startswith("Moved ")

            with connection.Connection("127.0.0.1", source.port) as conn:
                assert conn.default_channel.queue_declare("work", passive=True).message_count == 0
            moved = []
            with connection.Connection("127.0.0.1", target.port) as conn:
                while True:
                    method, properties, body = conn.default_channel.basic_get("work", auto_ack=True)
                    if method is None:
                        break
                    assert properties.delivery_mode == 2
                    moved.append(body)
            assert set(moved) == bodies                  # none lost; a few may have come twice
            assert len(moved) < MESSAGES + 40            # at most a window or two again
        finally:
            target.close()


def test_the_shovel_refuses_a_target_queue_that_does_not_exist():
    with BrokerProcess() as source, BrokerProcess() as target:
        with connection.Connection("127.0.0.1", source.port) as conn:
            conn.default_channel.queue_declare("work")
            conn.default_channel.basic_publish("", "work", b"stays here")
        result = subprocess.run(shovel(source, target), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 65 and "NOT_FOUND - no queue 'work'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        with connection.Connection("127.0.0.1", source.port) as conn:
            assert conn.default_channel.queue_declare("work", passive=True).message_count == 1


def test_messages_the_target_refuses_stay_in_the_source_queue(small_disk):
    with BrokerProcess() as source, BrokerProcess(data_dir=os.path.join(small_disk, "data")) as target:
        with connection.Connection("127.0.0.1", target.port) as conn:
            conn.default_channel.queue_declare("work", durable=True)
        with connection.Connection("127.0.0.1", source.port) as conn:
            conn.default_channel.queue_declare("work")
            for i in range(MESSAGES):
                conn.default_channel.basic_publish("", "work", b"m%d" % i, connection.BasicProperties(delivery_mode=2))
            assert conn.default_channel.queue_declare("work", passive=True).message_count == MESSAGES
        fill(small_disk)                      # the target's store cannot take them: it nacks
        result = subprocess.run(shovel(source, target), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 65 and "refused messages" in result.stderr, result.stderr
        with connection.Connection("127.0.0.1", source.port) as conn:
            assert conn.default_channel.queue_declare("work", passive=True).message_count == MESSAGES


def fill(directory):
    with open(os.path.join(directory, "filler"), "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
