"""Every example program, run unchanged as a process against a live broker: GreenMQ's
JSON-lines port (GREENMQ_PORT), its AMQP port and a reference AMQP broker (GREENMQ_URL)."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.broker_process import ROOT
from tests.conftest import client_url

EXAMPLES = os.path.join(ROOT, "examples")
SEED = os.path.join(os.path.dirname(ROOT), "shared", "seeds", "000_6a8685d0f885b244.txt")
WAIT = 15.0   # seconds any expected line may take on a loaded machine


class Program:
    """An example running in the background, its output read line by line."""

    def __init__(self, where, name, *args):
        env = {**os.environ, **where, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, text):
        """Wait for a line containing `text`; returns the lines before it."""
        before = []
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} after {before!r}") from None
            if line is None:
                raise AssertionError(f"exited without {text!r}; output: {before!r}")
            if text in line:
                return before
            before.append(line)

    def rest(self):
        """The output after the last line expected, once the program has exited."""
        lines = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            lines.append(line)
        return lines

    def interrupt(self, sig=signal.SIGINT):
        """Ctrl-C (or another signal); returns the exit code."""
        self.process.send_signal(sig)
        return self.process.wait(WAIT)

    def stop(self):
        """Ctrl-C, so the broker sees a clean close; a kill if that does not end it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def broker_environment(wire, broker):
    """The environment that points the examples at `broker` over `wire`."""
    if wire == "json-lines":
        return {"GREENMQ_PORT": str(broker.port)}
    return {"GREENMQ_URL": client_url(wire, broker)}


@pytest.fixture
def where(client_wire, broker):
    return broker_environment(client_wire, broker)


def run_to_end(where, name, *args):
    """Run an example to completion; returns the CompletedProcess."""
    env = {**os.environ, **where,
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def run(where, name, *args):
    """Run an example that must succeed; returns its output."""
    result = run_to_end(where, name, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def programs():
    started = []
    yield started
    for program in started:
        program.stop()


@pytest.fixture
def start(where, programs):
    def start(name, *args):
        program = Program(where, name, *args)
        programs.append(program)
        return program
    return start


def _code_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.skipif(not os.path.exists(SEED), reason="the seed documents are not beside this checkout (../shared)")
def test_original_examples_are_the_seed_verbatim_but_for_the_host():
    with open(SEED) as seed:
        lines = _code_lines(seed.read().replace("'example.com'", "'localhost'"))
    start = lines.index("import connection")
    for name in ("publisher.py", "subscriber.py"):
        with open(os.path.join(EXAMPLES, name)) as example:
            code = _code_lines(example.read())
        assert lines[start:start + len(code)] == code, name
        start = lines.index("import connection", start + 1) if name == "publisher.py" else None


def test_original_publisher_sends_typed_lines_to_queue_topic1(connect, start):
    with connect() as conn:
        conn.default_channel.queue_declare("topic1")
        conn.default_channel.queue_purge("topic1")
        publisher = start("publisher.py")
        publisher.expect("Type the message you want to send to queue1")
        publisher.process.stdin.write("first line\nsecond line\n")
        publisher.process.stdin.flush()
        got = []
        for method, _, body in conn.default_channel.consume("topic1", auto_ack=True, inactivity_timeout=WAIT):
            assert method is not None, got
            got.append(body)
            if len(got) == 2:
                break
        assert got == [b"first line", b"second line"]
        assert publisher.interrupt() == 2
        publisher.expect("Closing...")


def test_original_subscriber_prints_messages_of_the_default_queue(connect, start):
    subscriber = start("subscriber.py")
    with connect() as conn:
        conn.publish("hello, default queue")     # no name: the default queue
    subscriber.expect("hello, default queue")


def test_hello_world_send_and_receive(where, start):
    receiver = start("receive.py")
    receiver.expect("Waiting for messages")
    assert "Sent 'Hello there'" in run(where, "send.py", "Hello", "there")
    receiver.expect("Received 'Hello there'")
    assert receiver.interrupt() == 0


def test_work_queue_gives_tasks_to_the_idle_worker_and_requeues_unacked_ones(where, connect, start):
    busy = start("worker.py", "0.05")
    busy.expect("Waiting for messages")
    try:
        run(where, "new_task.py", "long" + "." * 400)    # 20 s: busy for the whole test
        busy.expect("Received 'long")
        idle = start("worker.py", "0.05")
        idle.expect("Waiting for messages")
        for task in ("a.", "b.", "c."):
            run(where, "new_task.py", task)
        # prefetch 1: the busy worker, holding an unacked task, is given none of these
        before = idle.expect("Done 'c.'")
        assert [line for line in before if "Done" in line] == [" [x] Done 'a.'", " [x] Done 'b.'"]
        assert busy.interrupt() == 0          # stopped before acking its task...
        assert busy.rest() == []
        idle.expect("Received 'long")         # ...which goes to the other worker
        assert idle.interrupt() == 0
    finally:
        with connect() as conn:
            conn.default_channel.queue_purge("task_queue")


def test_emit_log_reaches_every_receiver(where, start):
    receivers = [start("receive_logs.py") for _ in range(2)]
    for r in receivers:
        r.expect("Waiting for logs")
    run(where, "emit_log.py", "disk", "full")
    for r in receivers:
        r.expect("'disk full'")


def test_topic_receivers_get_only_matching_keys(where, start):
    kern = start("receive_logs_topic.py", "kern.*")
    critical = start("receive_logs_topic.py", "*.critical")
    for r in (kern, critical):
        r.expect("Waiting for logs")
    for key in ("kern.critical", "kern.info", "app.critical", "app.info", "kern.end", "end.critical"):
        run(where, "emit_log_topic.py", key, "m")
    assert kern.expect("kern.end") == [" [x] kern.critical:'m'", " [x] kern.info:'m'"]
    assert critical.expect("end.critical") == [" [x] kern.critical:'m'", " [x] app.critical:'m'"]


def test_headers_receivers_match_all_or_any(where, start):
    every = start("receive_headers.py", "all", "format=pdf", "type=report")
    either = start("receive_headers.py", "any", "format=pdf", "format=zip")
    for r in (every, either):
        r.expect("Waiting for reports")
    for headers in (["format=pdf", "type=report"], ["format=pdf"], ["format=zip"], ["format=doc"]):
        run(where, "emit_headers.py", *headers, "+".join(h.split("=")[1] for h in headers))
    run(where, "emit_headers.py", "format=pdf", "type=report", "end")
    assert [re.sub(r".*:", "", line) for line in every.expect(":'end'")] == ["'pdf+report'"]
    assert [re.sub(r".*:", "", line) for line in either.expect(":'end'")] == ["'pdf+report'", "'pdf'", "'zip'"]


def test_broadcast_reaches_current_listeners(where, start):
    listeners = [start("broadcast.py", "listen") for _ in range(2)]
    for listener in listeners:
        listener.expect("Listening")
    run(where, "broadcast.py", "send", "AL 24: FL 7")
    for listener in listeners:
        listener.expect("AL 24: FL 7")


def test_notify_gives_every_system_every_event_even_when_not_running(where, start):
    scheduling = start("notify.py", "consume", "scheduling")
    scheduling.expect("waiting for patients")   # its queue now exists...
    assert scheduling.interrupt() == 0          # ...and outlives it
    reporting = start("notify.py", "consume", "reporting")
    reporting.expect("waiting for patients")
    run(where, "notify.py", "produce", "given:John surname:Smith")
    reporting.expect("[reporting] given:John surname:Smith")
    scheduling = start("notify.py", "consume", "scheduling")
    assert scheduling.expect("[scheduling] given:John surname:Smith") == [" [*] scheduling waiting for patients"]


def test_rpc_client_gets_the_servers_answer(where, start):
    server = start("rpc_server.py")
    server.expect("Awaiting requests")
    assert "Got 'added Jane Doe'" in run(where, "rpc_client.py", "Jane", "Doe")
    server.expect("added Jane Doe")


@pytest.mark.parametrize("wire", ["json-lines", "amqp"])
def test_rpc_client_without_a_server_says_so(fresh_broker, wire):
    result = run_to_end(broker_environment(wire, fresh_broker), "rpc_client.py", "Jane", "Doe")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is examples/rpc_server.py running?" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


RECEIVERS = [
    (("receive.py",), "Waiting for messages"),
    (("worker.py", "0.05"), "Waiting for messages"),
    (("receive_logs.py",), "Waiting for logs"),
    (("receive_logs_topic.py", "signals.#"), "Waiting for logs"),
    (("receive_headers.py", "any", "signals=yes"), "Waiting for reports"),
    (("broadcast.py", "listen"), "Listening"),
    (("notify.py", "consume", "signals-test"), "waiting for patients"),
    (("rpc_server.py",), "Awaiting requests"),
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command, ready", RECEIVERS, ids=[c[0] for c, _ in RECEIVERS])
def test_receivers_exit_cleanly_on_a_signal(connect, start, command, ready, sig):
    with connect() as conn:     # a reference broker keeps a durable queue between runs
        conn.default_channel.queue_delete("notify.patient.add.signals-test")
    receiver = start(*command)
    receiver.expect(ready)
    assert receiver.interrupt(sig) == 0
    assert receiver.rest() == []
