"""Celery over AMQP, unmodified: one worker process for the module (`celery -A
tests.test_amqp_celery worker --pool solo`), the rpc:// result backend, and `celery inspect
ping` through the pidbox broadcast queues (x-expires, x-message-ttl). Runs against GreenMQ,
or $GREENMQ_TEST_AMQP_URL."""

import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
from celery import Celery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A worker takes a few seconds to import Celery and connect; results wait for it.
RESULT_TIMEOUT = 60

app = Celery("greenmq_tests", broker=os.environ.get("GREENMQ_CELERY_BROKER", "amqp://"), backend="rpc://")
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                task_default_queue=os.environ.get("GREENMQ_CELERY_QUEUE", "celery"))


@app.task
def add(x, y):
    return x + y


@app.task
def echo_headers(**kwargs):
    return kwargs


@app.task
def fail():
    raise ValueError("task failed on purpose")


@pytest.fixture(scope="module")
def worker(amqp_url):
    """A Celery worker on its own queue, and the app configured to send there."""
    queue = "celery-" + os.urandom(4).hex()      # a reference broker may keep old queues
    environment = dict(os.environ, GREENMQ_CELERY_BROKER=amqp_url, GREENMQ_CELERY_QUEUE=queue,
                       GREENMQ_CELERY_WORKER=f"{queue}@{socket.gethostname()}")
    log = tempfile.NamedTemporaryFile(prefix="greenmq-celery-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.test_amqp_celery", "worker", "--pool", "solo",
         "--loglevel", "info", "--without-gossip", "--without-mingle", "-n", environment["GREENMQ_CELERY_WORKER"]],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    app.conf.update(broker_url=amqp_url, task_default_queue=queue)
    try:
        yield environment
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with open(log.name, errors="replace") as f:
            output = f.read()
        os.unlink(log.name)
        app.close()
        # The one traceback expected is fail()'s own.
        assert output.count("Traceback") == output.count("\nValueError: task failed on purpose"), output


def test_a_worker_executes_tasks_and_returns_results(worker):
    results = [add.delay(n, n) for n in range(10)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [2 * n for n in range(10)]


def test_task_arguments_in_headers_and_body_survive_the_trip(worker):
    kwargs = {"text": "héllo", "numbers": [1, 2.5, -3], "nested": {"a": None, "b": True}}
    assert echo_headers.apply_async(kwargs=kwargs, headers={"x-custom": "v"}).get(timeout=RESULT_TIMEOUT) == kwargs


def test_a_failing_task_reports_its_exception(worker):
    with pytest.raises(ValueError, match="task failed on purpose"):
        fail.delay().get(timeout=RESULT_TIMEOUT)


def test_celery_inspect_ping_answers(worker):
    add.delay(1, 1).get(timeout=RESULT_TIMEOUT)     # the worker is up
    name = worker["GREENMQ_CELERY_WORKER"]
    # Naming the worker lets inspect return on its reply instead of waiting out the timeout.
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.test_amqp_celery", "inspect", "ping",
         "--timeout", "10", "--destination", name],
        cwd=ROOT, env=worker, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{name}: OK" in done.stdout and "pong" in done.stdout, done.stdout
