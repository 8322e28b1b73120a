"""A publish that returned is delivered however the program ends: connection.py closes the
connections a program left open when the interpreter exits, over both wires. Each case is a
real script in a subprocess against a real broker, and the queue is counted once it has
exited."""

import signal
import subprocess
import sys
import textwrap

import pytest

from greenmq import connection
from tests.broker_process import ROOT, BrokerProcess

# Seconds a script may take to publish and end (10,000 messages on a loaded machine).
SCRIPT_TIMEOUT = 60.0

PUBLISHER = textwrap.dedent("""
    import sys, time
    from greenmq import connection

    address, queue, count, ending = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if len(sys.argv) > 5:
        connection.EXIT_CLOSE_SECONDS = float(sys.argv[5])
    conn = connection.Connection(address) if address.startswith("amqp") else \\
        connection.Connection("127.0.0.1", int(address))
    channel = conn.default_channel
    channel.queue_declare(queue)
    for number in range(count):
        channel.basic_publish("", queue, str(number))
    if ending == "sys.exit":
        sys.exit(0)
    if ending == "exception":
        raise RuntimeError("the program fails after publishing")
    if ending == "ctrl-c":
        print("published", flush=True)
        time.sleep(SCRIPT_TIMEOUT)
""").replace("SCRIPT_TIMEOUT", repr(SCRIPT_TIMEOUT))

# What each ending leaves as the exit code: the exception's 1, and death by the SIGINT that
# Python raises again once it has unwound (and closed its connections).
EXIT_CODES = {"off the end": 0, "sys.exit": 0, "exception": 1, "ctrl-c": -signal.SIGINT}


@pytest.fixture(scope="module")
def exit_broker():
    with BrokerProcess() as process:
        yield process


def address(broker, wire):
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f" if wire == "amqp" else str(broker.port)


def message_count(broker, queue):
    with connection.Connection("127.0.0.1", broker.port) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).method.message_count


def run(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("ending", list(EXIT_CODES))
@pytest.mark.parametrize("count", [1, 100, 10_000])
@pytest.mark.parametrize("wire", ["json-lines", "amqp"])
def test_every_publish_that_returned_is_delivered_however_the_program_ends(exit_broker, name, wire, count,
                                                                            ending):
    script = run(PUBLISHER, address(exit_broker, wire), name, count, ending)
    if ending == "ctrl-c":
        assert script.stdout.readline() == "published\n", script.stderr.read()
        script.send_signal(signal.SIGINT)
    _, stderr = script.communicate(timeout=SCRIPT_TIMEOUT)
    assert script.returncode == EXIT_CODES[ending], stderr
    assert message_count(exit_broker, name) == count


FORKING_PUBLISHER = textwrap.dedent("""
    import os, sys
    from greenmq import connection

    port, queue, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    conn = connection.Connection("127.0.0.1", port)
    channel = conn.default_channel
    channel.queue_declare(queue)
    for number in range(count):
        channel.basic_publish("", queue, str(number))
    child = os.fork()
    if child == 0:
        sys.exit(0)             # runs the exit handlers, in the child
    os.waitpid(child, 0)
    channel.basic_publish("", queue, "after the child")
    conn.close()
""")


def test_a_forked_child_leaves_its_parents_connections_to_the_parent(exit_broker, name):
    """The child's exit neither sends the parent's queued publishes again nor says goodbye
    on the parent's socket: the parent goes on publishing, and each message arrives once."""
    script = run(FORKING_PUBLISHER, exit_broker.port, name, 1000)
    _, stderr = script.communicate(timeout=SCRIPT_TIMEOUT)
    assert script.returncode == 0, stderr
    assert message_count(exit_broker, name) == 1001


@pytest.mark.parametrize("wire", ["json-lines", "amqp"])
def test_the_close_at_exit_gives_up_on_a_broker_that_does_not_answer(wire):
    """A broker that stops answering (here: frozen by SIGSTOP) holds the program's exit for
    EXIT_CLOSE_SECONDS (made short here), not for ever."""
    with BrokerProcess() as broker:
        script = run(PUBLISHER, address(broker, wire), "q", 1, "ctrl-c", 0.5)
        assert script.stdout.readline() == "published\n", script.stderr.read()
        with broker.frozen():
            try:
                script.send_signal(signal.SIGINT)
                script.communicate(timeout=SCRIPT_TIMEOUT / 4)
            finally:
                script.kill()
        assert script.returncode == -signal.SIGINT
