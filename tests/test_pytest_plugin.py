"""The pytest plugin as a user meets it: test files in a directory of their own, no
conftest, nothing but GreenMQ installed, run by pytest in a subprocess. The user code is
what teams test against RabbitMQ: kombu, a Celery app with the rpc:// backend, a pika RPC
pair."""

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The users' runs start a broker, import Celery and start a worker: seconds, not minutes.
RUN_TIMEOUT_SECONDS = 120

USER_TESTS = {
    "test_kombu_app.py": '''
        import kombu

        def test_kombu_producer_and_consumer_with_redelivery(greenmq_vhost):
            exchange = kombu.Exchange("orders", "direct")
            queue = kombu.Queue("orders.created", exchange, routing_key="created")
            received = []

            def on_message(body, message):
                received.append((body, message.delivery_info["redelivered"]))
                if len(received) == 1:
                    message.requeue()          # the first try fails: the broker redelivers
                else:
                    message.ack()

            with kombu.Connection(greenmq_vhost.amqp_url) as connection:
                connection.Producer().publish({"order": 7}, exchange=exchange, routing_key="created",
                                              declare=[queue], serializer="json")
                with connection.Consumer(queue, callbacks=[on_message]):
                    while len(received) < 2:
                        connection.drain_events(timeout=5)
                assert received == [({"order": 7}, False), ({"order": 7}, True)]
                assert queue(connection.default_channel).queue_declare(passive=True).message_count == 0
    ''',
    "test_celery_app.py": '''
        import pytest
        from celery import Celery
        from celery.contrib.testing.worker import start_worker

        app = Celery("shop", backend="rpc://")

        @app.task
        def total(prices):
            return sum(prices)

        @pytest.fixture
        def worker(greenmq_vhost):
            app.conf.update(broker_url=greenmq_vhost.amqp_url, broker_connection_retry_on_startup=False)
            # The worker's event heartbeat (a 2 s timer) wakes its loop to see the stop request;
            # without it the worker thread outlives the test (with RabbitMQ too).
            with start_worker(app, pool="solo", perform_ping_check=False, without_heartbeat=False):
                yield

        def test_a_task_runs_in_a_worker_and_its_result_comes_back(worker):
            assert total.delay([1, 2, 39]).get(timeout=30) == 42
    ''',
    "test_pika_rpc.py": '''
        import threading
        import uuid

        import pika

        def serve(url, ready):
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.queue_declare("rpc")

            def on_request(ch, method, properties, body):
                ch.basic_publish("", properties.reply_to, str(int(body) ** 2).encode(),
                                 pika.BasicProperties(correlation_id=properties.correlation_id))
                ch.basic_ack(method.delivery_tag)
                if body == b"0":
                    ch.stop_consuming()

            channel.basic_consume("rpc", on_request)
            ready.set()
            channel.start_consuming()
            connection.close()

        def test_pika_rpc_server_and_client(greenmq_vhost):
            ready = threading.Event()
            server = threading.Thread(target=serve, args=(greenmq_vhost.amqp_url, ready))
            server.start()
            assert ready.wait(10)
            connection = pika.BlockingConnection(pika.URLParameters(greenmq_vhost.amqp_url))
            channel = connection.channel()
            callback_queue = channel.queue_declare("", exclusive=True).method.queue
            answers = {}
            channel.basic_consume(callback_queue, lambda ch, m, p, body: answers.update({p.correlation_id: body}),
                                  auto_ack=True)
            for n in (3, 12, 0):
                correlation_id = str(uuid.uuid4())
                channel.basic_publish("", "rpc", str(n).encode(),
                                      pika.BasicProperties(reply_to=callback_queue, correlation_id=correlation_id))
                while correlation_id not in answers:
                    connection.process_data_events(time_limit=5)
                assert answers[correlation_id] == str(n * n).encode()
            server.join(10)
            connection.close()
    ''',
    "test_isolation.py": '''
        import pika
        import pytest

        @pytest.mark.parametrize("run", [1, 2])
        def test_each_test_has_a_fresh_vhost(greenmq_vhost, run):
            connection = pika.BlockingConnection(pika.URLParameters(greenmq_vhost.amqp_url))
            channel = connection.channel()
            assert channel.queue_declare("same-name").method.message_count == 0
            channel.basic_publish("", "same-name", b"left behind")
            connection.close()

        def test_reset_deletes_what_tests_declared(greenmq):
            connection = pika.BlockingConnection(pika.URLParameters(greenmq.amqp_url))
            channel = connection.channel()
            channel.exchange_declare("declared", "fanout")
            channel.queue_declare("declared")
            connection.close()
            greenmq.reset()
            with greenmq.connect() as client:
                assert client.list_queues() == []
                assert sorted(x["name"] for x in client.list_exchanges()) == [
                    "", "amq.direct", "amq.fanout", "amq.headers", "amq.match", "amq.topic"]

        def test_fails_on_purpose(greenmq_vhost):
            pika.BlockingConnection(pika.URLParameters(greenmq_vhost.amqp_url)).close()
            assert False, "failed on purpose"
    ''',
}


def run_as_user(directory, *args):
    """`python ARGS` in the user's directory, GreenMQ found only as installed."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    done = subprocess.run([sys.executable, *args], cwd=directory, env=environment, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_SECONDS)
    return done.returncode, done.stdout + done.stderr


def run_pytest(directory, *args):
    return run_as_user(directory, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args)


def write_tests(directory, files):
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))


def test_users_kombu_celery_and_pika_code_runs_against_the_plugins_broker(tmp_path):
    write_tests(tmp_path, USER_TESTS)
    code, output = run_pytest(tmp_path)
    assert re.search(r"\b1 failed, 6 passed\b", output), output
    assert code == 1
    failed = output.split("FAILURES")[1].split("short test summary")[0]
    # The failing test's report carries the broker's log of that test, and only of that test.
    assert "greenmq broker log" in failed and "accepted AMQP connection" in failed, failed
    assert "test_fails_on_purpose" in failed and "listening for AMQP clients" not in failed, failed
    assert output.count("greenmq broker log") == 1, output


def test_options_from_the_ini_file_fix_the_port_and_keep_the_data(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ngreenmq_port = {port}\ngreenmq_keep_data = true\n")
    write_tests(tmp_path, {"test_options.py": f'''
        import os

        def test_the_broker_has_the_fixed_port_and_a_data_dir(greenmq):
            assert greenmq.amqp_port == {port}
            assert os.environ.get("GREENMQ_DATA_DIR") is None
            assert os.path.isdir(greenmq.data_dir)
            with open(f"/proc/{{greenmq.process.child.pid}}/environ", "rb") as environ:
                assert b"GREENMQ_DATA_DIR=" + greenmq.data_dir.encode() + b"\\0" in environ.read()
    '''})
    code, output = run_pytest(tmp_path)
    kept = re.search(r"greenmq: the broker's data and log are kept in (\S+)", output)
    assert kept, output
    try:
        assert code == 0, output
        assert os.path.isdir(os.path.join(kept.group(1), "data"))
        assert "listening for AMQP clients" in open(os.path.join(kept.group(1), "broker.log")).read()
    finally:
        shutil.rmtree(kept.group(1))


def test_with_a_broker_url_the_same_tests_run_against_that_broker(tmp_path, broker):
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2F"
    write_tests(tmp_path, {"test_elsewhere.py": f'''
        import pika

        def test_the_fixtures_point_at_the_given_broker(greenmq, greenmq_vhost):
            assert greenmq.amqp_url == "{url}" and greenmq_vhost is greenmq
            pika.BlockingConnection(pika.URLParameters(greenmq_vhost.amqp_url)).close()
    '''})
    code, output = run_pytest(tmp_path, "--greenmq-url", url)
    assert code == 0, output
    assert "tests share its virtual host and nothing is reset" in output, output


def test_a_bad_port_option_is_a_usage_error(tmp_path):
    write_tests(tmp_path, {"test_any.py": "def test_any(greenmq):\n    pass\n"})
    code, output = run_pytest(tmp_path, "--greenmq-port", "http")
    assert code != 0 and "greenmq_port must be a port number, not 'http'" in output, output


def readme_example(file_name):
    """The README's Python example that starts with the comment `# file_name`."""
    with open(os.path.join(ROOT, "README.md")) as readme:
        blocks = re.findall(r"```python\n(.*?)```", readme.read(), re.S)
    [block] = [b for b in blocks if b.startswith(f"# {file_name}\n")]
    return block


def test_the_readme_examples_run_as_written(tmp_path):
    for name in ("test_orders.py", "test_orders_unittest.py"):
        (tmp_path / name).write_text(readme_example(name))
    code, output = run_pytest(tmp_path, "test_orders.py")
    assert code == 0 and "1 passed" in output, output
    code, output = run_as_user(tmp_path, "test_orders_unittest.py")
    assert code == 0 and "Ran 1 test" in output, output


# Where `make run` puts a GreenMQ, and a RabbitMQ its AMQP and management API.
DEFAULT_PORTS = {"--port": 5680, "--amqp-port": 5672, "--http-port": 15672}


@pytest.fixture
def broker_on_the_default_ports():
    """A GreenMQ on the default ports, as in another terminal running `make run`."""
    for port in DEFAULT_PORTS.values():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as the broker binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"port {port} is taken, so no broker can be put there for this test")
    with BrokerProcess(*(str(word) for flag in DEFAULT_PORTS.items() for word in flag)) as other:
        yield other


def test_the_plugins_runs_pass_beside_a_broker_on_the_default_ports_and_leave_it_alone(
        tmp_path, broker, broker_on_the_default_ports):
    for directory in ("users", "url"):
        (tmp_path / directory).mkdir()
    test_users_kombu_celery_and_pika_code_runs_against_the_plugins_broker(tmp_path / "users")
    test_with_a_broker_url_the_same_tests_run_against_that_broker(tmp_path / "url", broker)
    assert "accepted" not in broker_on_the_default_ports.log(), broker_on_the_default_ports.log()
    with connection.Connection("127.0.0.1", broker_on_the_default_ports.port) as admin:
        assert [v["name"] for v in admin.call("list_vhosts")["items"]] == ["/"]
        assert admin.list_queues() == []
