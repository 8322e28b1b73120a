"""greenmq_testing outside pytest: `with broker() as b:` gives a real broker, and nothing
of it (process or files) outlives the block, the parent, a Ctrl-C or a SIGTERM."""

import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import pika
import pytest

from greenmq import connection
from greenmq import testing as greenmq_testing
from tests.broker_process import BrokerProcess

# A management API that is not there: nothing listens on port 1 of loopback.
NO_MANAGEMENT_API = "http://127.0.0.1:1"
# How long a stopped broker (or one whose parent died) may take to be gone.
GONE_SECONDS = 15


def wait_gone(pid):
    """Wait, without polling, until process `pid` (not our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], GONE_SECONDS)[0])
    finally:
        os.close(pidfd)


def test_the_block_has_a_broker_that_amqp_clients_use_and_leaves_nothing_behind():
    with greenmq_testing.broker() as b:
        client = pika.BlockingConnection(pika.URLParameters(b.amqp_url))
        client.channel().queue_declare("q")
        client.close()
        with b.connect() as json_lines:
            assert [q["name"] for q in json_lines.list_queues()] == ["q"]
        with open(f"/proc/{b.process.child.pid}/environ", "rb") as environ:
            assert f"GREENMQ_DATA_DIR={b.data_dir}\0".encode() in environ.read()
        child, directory = b.process.child, b.process.directory
        assert os.listdir(b.data_dir), "the broker keeps its store in the temporary data directory"
    assert child.returncode == 0
    assert not os.path.exists(directory)


def test_an_exception_in_the_block_stops_the_broker_and_removes_its_files():
    with pytest.raises(ZeroDivisionError):
        with greenmq_testing.broker() as b:
            child, directory = b.process.child, b.process.directory
            1 / 0
    assert child.returncode == 0 and not os.path.exists(directory)


def test_a_vhost_of_its_own_and_a_reset():
    with greenmq_testing.broker() as b:
        mine = b.add_vhost()
        assert mine.amqp_url.endswith("/" + mine.vhost) and mine.port == b.port
        with mine.connect() as inside:
            inside.default_channel.queue_declare("only-in-mine")
        with b.connect() as default:
            default.default_channel.exchange_declare("x", "topic")
            default.default_channel.queue_declare("q")
            held = default.default_channel.queue_declare("", exclusive=True).method.queue
            b.reset()
            assert [q["name"] for q in default.list_queues()] == [held]   # goes with its connection
            assert "x" not in [x["name"] for x in default.list_exchanges()]
        with mine.connect() as inside:
            assert [q["name"] for q in inside.list_queues()] == ["only-in-mine"]
        b.delete_vhost(mine.vhost)


def test_a_fixed_amqp_port_is_used():
    with greenmq_testing.broker() as first:
        port = first.amqp_port
    with greenmq_testing.broker(amqp_port=port) as b:
        assert b.amqp_port == port and b.amqp_url.startswith(f"amqp://guest:guest@127.0.0.1:{port}/")


def test_a_broker_that_cannot_start_says_why_and_leaves_nothing_behind():
    with greenmq_testing.broker() as running:
        with pytest.raises(greenmq_testing.GreenMQTestingError, match="cannot listen on 127.0.0.1:") as failed:
            greenmq_testing.start(amqp_port=running.amqp_port)
    assert "exited with 1" in str(failed.value)
    assert not [p for p in greenmq_testing._running]


def test_a_broker_that_never_says_it_is_ready_is_stopped_and_leaves_nothing_behind(tmp_path, monkeypatch):
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\necho 'stuck importing' >&2\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(greenmq_testing, "START_TIMEOUT_SECONDS", 2.0)
    # A temporary directory of this test's own: other test runs on the machine make theirs.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = broker_directories()
    with pytest.raises(greenmq_testing.GreenMQTestingError, match="did not say it was ready") as failed:
        greenmq_testing.start(python=str(silent))
    assert "stuck importing" in str(failed.value)       # its log says why
    assert not greenmq_testing._running and broker_directories() <= before


def broker_directories():
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("greenmq-test-")}


def test_a_url_names_a_broker_already_running():
    b = greenmq_testing.from_url("amqp://app:s%40cret@rabbit.example:5673/shop%2Feu", NO_MANAGEMENT_API)
    assert (b.host, b.amqp_port, b.vhost, b.username, b.password) == ("rabbit.example", 5673, "shop/eu", "app", "s@cret")
    assert b.amqp_url == "amqp://app:s%40cret@rabbit.example:5673/shop%2Feu"
    assert greenmq_testing.from_url("amqp://localhost", NO_MANAGEMENT_API).vhost == "/"
    assert greenmq_testing.from_url("amqps://localhost", NO_MANAGEMENT_API).amqp_url == \
        "amqps://guest:guest@localhost:5671/%2F"
    with pytest.raises(ValueError):
        greenmq_testing.from_url("http://localhost")
    for needs_greenmq in (b.reset, b.add_vhost, lambda: b.delete_vhost("v")):
        with pytest.raises(greenmq_testing.GreenMQTestingError, match="needs a GreenMQ started here or RabbitMQ's"):
            needs_greenmq()


def test_a_management_api_is_used_only_for_the_broker_it_serves(monkeypatch):
    """Another broker's API (say `make run`'s on 15672) must not get the test vhosts: one
    named for the URL's broker but serving another is refused, and the default one is left
    alone; the broker's own is used."""
    with BrokerProcess() as mine, BrokerProcess() as other, \
            connection.Connection(f"amqp://guest:guest@127.0.0.1:{other.amqp_port}/%2F"):   # its own client
        url = f"amqp://guest:guest@127.0.0.1:{mine.amqp_port}/%2F"
        with pytest.raises(greenmq_testing.GreenMQTestingError, match="of another broker"):
            greenmq_testing.from_url(url, f"http://127.0.0.1:{other.http_port}")
        monkeypatch.setattr(greenmq_testing, "MANAGEMENT_PORT", other.http_port)     # the default one
        assert greenmq_testing.from_url(url).admin is None
        own = greenmq_testing.from_url(url, f"http://127.0.0.1:{mine.http_port}")
        own.add_vhost("made-here")
        for broker, vhosts in ((mine, ["/", "made-here"]), (other, ["/"])):
            with connection.Connection("127.0.0.1", broker.port) as admin:
                assert sorted(v["name"] for v in admin.call("list_vhosts")["items"]) == vhosts


class _RabbitMQOverview(http.server.BaseHTTPRequestHandler):
    """What RabbitMQ's management API says of itself: its AMQP listener on port 5682."""

    def do_GET(self):
        body = {"/api/whoami": {"name": "guest", "tags": ["administrator"]},
                "/api/overview": {"node": "rabbit@localhost", "listeners": [
                    {"node": "rabbit@localhost", "protocol": "amqp", "ip_address": "127.0.0.1", "port": 5682},
                    {"node": "rabbit@localhost", "protocol": "http", "ip_address": "::", "port": 15682}]}}
        data = json.dumps(body[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_rabbitmq_management_api_is_used_for_the_broker_on_its_amqp_listeners_port():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RabbitMQOverview) as api:
        threading.Thread(target=api.serve_forever, daemon=True).start()
        try:
            api_url = f"http://127.0.0.1:{api.server_address[1]}"
            assert greenmq_testing.from_url("amqp://guest:guest@127.0.0.1:5682/%2F", api_url).admin is not None
            with pytest.raises(greenmq_testing.GreenMQTestingError, match="of another broker"):
                greenmq_testing.from_url("amqp://guest:guest@127.0.0.1:5672/%2F", api_url)
        finally:
            api.shutdown()


SCRIPT = textwrap.dedent("""
    import json, signal
    from greenmq import testing as greenmq_testing
    with greenmq_testing.broker() as b:
        print(json.dumps({"pid": b.process.child.pid, "directory": b.process.directory}), flush=True)
        signal.pause()
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_the_broker_never_outlives_a_script_that_is_interrupted_or_killed(tmp_path, sig):
    script = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=tmp_path)
    started = json.loads(script.stdout.readline())
    script.send_signal(sig)
    script.wait(GONE_SECONDS)
    assert wait_gone(started["pid"]), "the broker outlived its parent"
    if sig == signal.SIGKILL:
        shutil.rmtree(started["directory"])     # nobody was left to remove it
    else:
        assert not os.path.exists(started["directory"])
        assert script.returncode == -sig       # it died of the signal, as without GreenMQ


@pytest.mark.skipif(not os.environ.get("GREENMQ_TEST_MANAGEMENT_URL"),
                    reason="needs a RabbitMQ with its management API: $GREENMQ_TEST_AMQP_URL and "
                           "$GREENMQ_TEST_MANAGEMENT_URL (e.g. http://127.0.0.1:15672)")
def test_against_rabbitmq_vhosts_and_resets_go_through_its_management_api():
    b = greenmq_testing.from_url(os.environ["GREENMQ_TEST_AMQP_URL"], os.environ["GREENMQ_TEST_MANAGEMENT_URL"])
    mine = b.add_vhost()
    client = pika.BlockingConnection(pika.URLParameters(mine.amqp_url))
    channel = client.channel()
    channel.queue_declare("declared")
    channel.exchange_declare("declared", "fanout")
    held = channel.queue_declare("", exclusive=True).method.queue
    mine.reset()
    assert [q["name"] for q in b.admin._call("GET", f"/api/queues/{mine.vhost}?columns=name")] == [held]
    assert "declared" not in [x["name"] for x in b.admin._call("GET", f"/api/exchanges/{mine.vhost}?columns=name")]
    b.delete_vhost(mine.vhost)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        client.process_data_events(5)
    assert closed.value.reply_code == 320
