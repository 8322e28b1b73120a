"""The broker as a process: flags, start-up errors, and clean stops."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from greenmq import connection
from tests.broker_process import ROOT, BrokerProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_broker_and_tells_clients_why(fresh_broker, sig):
    client = connection.Connection("127.0.0.1", fresh_broker.port)
    client.default_channel.queue_declare("q")
    assert fresh_broker.stop(sig) == 0
    with pytest.raises(connection.ConnectionClosed) as closed:
        client.process_data_events(5)
    assert closed.value.code == 320
    assert "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'" in closed.value.text
    log = fresh_broker.log()
    assert "shutting down" in log and "stopped" in log and "Traceback" not in log


def test_help_describes_the_flags():
    result = subprocess.run([sys.executable, "broker.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--max-line-bytes"):
        assert flag in result.stdout


def test_bad_flag_values_are_refused_with_a_message():
    result = subprocess.run([sys.executable, "broker.py", "--port", "70000"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--port must be between 0 and 65535" in result.stderr


def test_a_taken_port_is_a_clear_start_up_error():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            BrokerProcess("--port", str(holder.getsockname()[1])).start()
    finally:
        holder.close()


def test_listens_on_loopback_by_default(broker):
    assert "listening for JSON-lines clients on 127.0.0.1:" in broker.log()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read socket timers")
def test_client_sockets_get_a_short_keepalive_so_vanished_peers_are_noticed(broker):
    with socket.create_connection(("127.0.0.1", broker.port)) as client:
        client.sendall(b'{"op":"hello","id":1}\n')
        client.recv(4096)          # the broker has accepted and set up the connection
        peer_port = client.getsockname()[1]
        out = subprocess.run(["ss", "-tnoH", "state", "established", f"( dport = :{peer_port} )"],
                             capture_output=True, text=True, check=True).stdout
    timer = re.search(r"timer:\(keepalive,(?:(\d+)sec|1min)", out)   # ss shows 60 s as "1min"
    assert timer is not None, out
    assert timer.group(1) is None or int(timer.group(1)) <= 60


def test_the_broker_says_on_stdout_when_it_accepts_clients():
    process = subprocess.Popen([sys.executable, "broker.py", "--port", "0", "--amqp-port", "0", "--http-port", "0",
                                "--in-memory"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready == {"ready": True, "host": "127.0.0.1", "port": ready["port"], "amqp_port": ready["amqp_port"],
                         "http_port": ready["http_port"]}
        socket.create_connection(("127.0.0.1", ready["amqp_port"]), timeout=5).close()
        socket.create_connection(("127.0.0.1", ready["http_port"]), timeout=5).close()
        with connection.Connection("127.0.0.1", ready["port"]) as client:
            assert client.list_queues() == []
    finally:
        process.terminate()
        process.wait(10)
    assert process.stdout.read() == ""      # one line, nothing else


def test_json_logs_are_one_object_a_line_for_log_collectors():
    with BrokerProcess("--log-format", "json") as broker:
        with pytest.raises(connection.ConnectionClosed, match="ACCESS_REFUSED"):
            connection.Connection("127.0.0.1", broker.port, password="wrong")
        broker.stop()
        lines = [json.loads(line) for line in broker.log().splitlines()]   # every line is JSON
    entries = [line for line in lines if "ready" not in line]                # the ready line is on stdout
    assert {entry["level"] for entry in entries} >= {"info", "warning"}
    assert all(set(entry) >= {"time", "level", "logger", "message"} and entry["time"].endswith("Z")
               for entry in entries)
    refusal = next(entry for entry in entries if entry["level"] == "warning")
    assert refusal["logger"] == "greenmq" and "login refused for user 'guest'" in refusal["message"]
