"""greenmqctl against a running broker, driven as a subprocess as an operator drives it."""

import os
import subprocess
import sys
import time

import pytest

from greenmq import connection
from greenmq import ctl as greenmqctl
from tests.broker_process import BrokerProcess
from tests.greenmqctl_process import failed, greenmqctl as ctl, greenmqctl_json as ctl_json

EXIT_USAGE, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_NO_PERMISSION = 64, 65, 69, 77


def test_list_queues_shows_rabbitmqctls_columns_as_a_table_and_as_json(broker, channel, name):
    channel.queue_declare(name, arguments={"x-max-length": 10})
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", name, body)
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(name, lambda *delivery: None)
    channel.connection.process_data_events(0.2)     # one delivered, unacked
    columns = ["name", "messages", "messages_ready", "messages_unacknowledged", "consumers", "durable",
               "auto_delete", "exclusive", "arguments"]
    rows = [row for row in ctl_json(broker.port, "list_queues", "-p", "/", *columns) if row["name"] == name]
    assert rows == [{"name": name, "messages": 3, "messages_ready": 2, "messages_unacknowledged": 1, "consumers": 1,
                     "durable": False, "auto_delete": False, "exclusive": False, "arguments": {"x-max-length": 10}}]
    table = ctl(broker.port, "list_queues", "name", "messages", "consumers")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "Listing queues for vhost / ..."
    assert lines[1].split() == ["name", "messages", "consumers"]
    row = next(line for line in lines if line.startswith(name + " "))
    assert row.split() == [name, "3", "1"]
    assert row.index(" 3 ", len(name)) + 1 == lines[1].index("messages")     # aligned under its header
    quiet = ctl(broker.port, "-q", "list_queues")
    assert quiet.stdout.splitlines()[0].split() == ["name", "messages"]   # rabbitmqctl's default columns


def test_listings_of_exchanges_bindings_consumers_connections_and_channels(broker, channel, name):
    channel.exchange_declare(name, "topic", durable=True)
    channel.queue_declare(name)
    channel.queue_bind(name, name, "a.#")
    tag = channel.basic_consume(name, lambda *delivery: None)
    exchanges = ctl_json(broker.port, "list_exchanges", "name", "type", "durable", "auto_delete", "internal")
    assert {"name": name, "type": "topic", "durable": True, "auto_delete": False, "internal": False} in exchanges
    bindings = ctl_json(broker.port, "list_bindings")
    assert {"source_name": name, "source_kind": "exchange", "destination_name": name, "destination_kind": "queue",
            "routing_key": "a.#", "arguments": {}} in bindings
    consumers = ctl_json(broker.port, "list_consumers", "queue_name", "consumer_tag", "ack_required")
    assert {"queue_name": name, "consumer_tag": tag, "ack_required": True} in consumers
    connections = ctl_json(broker.port, "list_connections", "user", "peer_host", "peer_port", "vhost")
    local_port = channel.connection._sock.getsockname()[1]
    assert {"user": "guest", "peer_host": "127.0.0.1", "peer_port": local_port, "vhost": "/"} in connections
    channels = ctl_json(broker.port, "list_channels", "connection", "number", "consumer_count")
    assert {"connection": f"127.0.0.1:{local_port}", "number": channel.channel_number, "consumer_count": 1} in channels
    status = ctl_json(broker.port, "status")
    assert status["product"] == "GreenMQ" and status["connections"] >= 2 and status["queues"] >= 1


def test_users_passwords_tags_and_permissions_from_the_command_line(broker, name):
    user = f"user-{name}"
    assert ctl(broker.port, "add_user", user, "first").returncode == 0
    assert {"user": user, "tags": []} in ctl_json(broker.port, "list_users")
    assert ctl(broker.port, "set_permissions", "-p", "/", user, "^app\\.", "^app\\.", ".*").returncode == 0
    assert ctl_json(broker.port, "list_user_permissions", user) == [
        {"vhost": "/", "configure": "^app\\.", "write": "^app\\.", "read": ".*"}]
    assert {"user": user, "configure": "^app\\.", "write": "^app\\.", "read": ".*"} in \
        ctl_json(broker.port, "list_permissions", "-p", "/")
    connection.Connection("127.0.0.1", broker.port, user, "first").close()

    assert ctl(broker.port, "change_password", user, "second").returncode == 0
    with pytest.raises(connection.ConnectionClosed) as refused:
        connection.Connection("127.0.0.1", broker.port, user, "first")
    assert refused.value.code == 403
    connection.Connection("127.0.0.1", broker.port, user, "second").close()

    assert ctl(broker.port, "set_user_tags", user, "monitoring", "management").returncode == 0
    assert {"user": user, "tags": ["monitoring", "management"]} in ctl_json(broker.port, "list_users")
    # a monitoring user may look, not change
    assert ctl(broker.port, "list_connections", env={"GREENMQ_USER": user, "GREENMQ_PASSWORD": "second"}).returncode == 0
    line = failed(ctl(broker.port, "add_vhost", "nope", env={"GREENMQ_USER": user, "GREENMQ_PASSWORD": "second"}),
                  EXIT_NO_PERMISSION)
    assert line == f"Error: ACCESS_REFUSED - user '{user}' has none of the tags administrator"

    assert ctl(broker.port, "clear_permissions", "-p", "/", user).returncode == 0
    assert ctl_json(broker.port, "list_user_permissions", user) == []
    assert ctl(broker.port, "clear_password", user).returncode == 0
    assert ctl(broker.port, "delete_user", user).returncode == 0
    assert user not in [row["user"] for row in ctl_json(broker.port, "list_users")]


def test_add_user_reads_the_password_from_standard_input_when_not_given(broker, name):
    user = f"stdin-{name}"
    assert ctl(broker.port, "add_user", user, input="from stdin\n").returncode == 0
    ctl(broker.port, "set_permissions", user, ".*", ".*", ".*")
    connection.Connection("127.0.0.1", broker.port, user, "from stdin").close()
    ctl(broker.port, "delete_user", user)


def test_vhosts_are_added_listed_and_deleted(broker, name):
    assert ctl(broker.port, "add_vhost", name).returncode == 0
    assert {"name": name} in ctl_json(broker.port, "list_vhosts")
    with connection.Connection("127.0.0.1", broker.port, virtual_host=name) as client:
        client.default_channel.queue_declare("in-the-vhost")
    assert ctl_json(broker.port, "list_queues", "-p", name, "name") == [{"name": "in-the-vhost"}]
    assert ctl(broker.port, "delete_vhost", name).returncode == 0
    assert {"name": name} not in ctl_json(broker.port, "list_vhosts")
    line = failed(ctl(broker.port, "list_queues", "-p", name), EXIT_REFUSED)
    assert line == f"Error: NOT_FOUND - no vhost '{name}'"


def test_purge_queue_and_delete_queue(broker, channel, name):
    channel.queue_declare(name)
    channel.basic_publish("", name, b"x")
    assert ctl(broker.port, "purge_queue", name).returncode == 0
    assert channel.queue_declare(name, passive=True).method.message_count == 0
    channel.basic_publish("", name, b"x")
    failed(ctl(broker.port, "delete_queue", name, "--if-empty"), EXIT_REFUSED)
    assert ctl(broker.port, "delete_queue", name).returncode == 0
    assert name not in [row["name"] for row in ctl_json(broker.port, "list_queues")]
    line = failed(ctl(broker.port, "purge_queue", name), EXIT_REFUSED)
    assert line == f"Error: NOT_FOUND - no queue '{name}' in vhost '/'"


def test_close_connection_tells_the_client_320_and_the_reason(broker):
    client = connection.Connection("127.0.0.1", broker.port)
    connection_name = "127.0.0.1:%d" % client._sock.getsockname()[1]
    assert ctl(broker.port, "close_connection", connection_name, "go away").returncode == 0
    with pytest.raises(connection.ConnectionClosed) as closed:
        client.process_data_events(5)
    assert closed.value.code == 320 and closed.value.text == "CONNECTION_FORCED - go away"
    failed(ctl(broker.port, "close_connection", connection_name, "again"), EXIT_REFUSED)


def test_every_command_has_help(capsys):
    for command in greenmqctl.COMMANDS:
        with pytest.raises(SystemExit) as exited:
            greenmqctl.main([command, "--help"])
        assert exited.value.code == 0
        assert f"usage: greenmqctl {command}" in capsys.readouterr().out
    result = ctl(1, "--help")
    assert result.returncode == 0 and "list_queues" in result.stdout


@pytest.mark.parametrize("args, status, message", [
    ((), EXIT_USAGE, "Error: the following arguments are required: COMMAND"),
    (("no_such_command",), EXIT_USAGE, "Error: argument COMMAND: invalid choice: 'no_such_command'"),
    (("add_user",), EXIT_USAGE, "Error: the following arguments are required: username"),
    (("set_permissions", "guest", ".*"), EXIT_USAGE, "Error: the following arguments are required: write, read"),
    (("list_queues", "name", "colour"), EXIT_USAGE, "Error: invalid column 'colour' for list_queues"),
    (("delete_user", "nobody"), EXIT_REFUSED, "Error: NOT_FOUND - no user 'nobody'"),
    (("set_permissions", "-p", "no-vhost", "guest", ".*", ".*", ".*"), EXIT_REFUSED,
     "Error: NOT_FOUND - no vhost 'no-vhost'"),
    (("set_permissions", "guest", "(", ".*", ".*"), EXIT_REFUSED,
     "Error: PRECONDITION_FAILED - configure permission '(' is not a regular expression"),
    (("add_user", "guest", "x"), EXIT_REFUSED, "Error: PRECONDITION_FAILED - user 'guest' already exists"),
    (("import_definitions", "/no/such/file.json"), EXIT_REFUSED, "Error: cannot read /no/such/file.json"),
])
def test_wrong_calls_fail_with_one_line_and_change_nothing(broker, args, status, message):
    before = ctl_json(broker.port, "list_permissions"), ctl_json(broker.port, "list_users")
    assert failed(ctl(broker.port, *args), status).startswith(message)
    assert (ctl_json(broker.port, "list_permissions"), ctl_json(broker.port, "list_users")) == before


def test_an_unreachable_broker_and_a_refused_login_are_one_line_errors(broker):
    line = failed(ctl(1, "status"), EXIT_UNAVAILABLE)
    assert line == "Error: unable to connect to 127.0.0.1:1: Connection refused"
    line = failed(ctl(broker.port, "status", env={"GREENMQ_PASSWORD": "wrong"}), EXIT_NO_PERMISSION)
    assert line == ("Error: ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                    "For details see the broker logfile.")
    line = failed(ctl(broker.port, "--user", "nobody", "status"), EXIT_NO_PERMISSION)
    assert "Login was refused" in line
    assert ctl(broker.port, "status", "--password", "guest").returncode == 0   # flags after the command too


def test_rotate_logs_and_sighup_reopen_the_log_file(tmp_path):
    log_file = tmp_path / "greenmq.log"
    with BrokerProcess("--in-memory", "--log-file", str(log_file)) as broker:
        assert "listening for JSON-lines clients" in log_file.read_text()
        log_file.rename(tmp_path / "greenmq.log.1")
        assert ctl(broker.port, "rotate_logs").returncode == 0
        _wait_for(lambda: "closed JSON-lines connection" in _text(log_file))
        (tmp_path / "greenmq.log").rename(tmp_path / "greenmq.log.2")
        broker.process.send_signal(1)           # SIGHUP
        _wait_for(lambda: log_file.exists())
        connection.Connection("127.0.0.1", broker.port).close()
        _wait_for(lambda: "closed JSON-lines connection" in _text(log_file))
        assert broker.stop() == 0
    assert "stopped" in log_file.read_text()
    assert "Traceback" not in "".join(path.read_text() for path in tmp_path.iterdir())


def _text(path):
    return path.read_text() if path.exists() else ""


def _wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


_INSTALLED_SCRIPT = os.path.join(os.path.dirname(sys.executable), "greenmqctl")


@pytest.mark.skipif(not os.path.exists(_INSTALLED_SCRIPT), reason="GreenMQ is not installed in this Python")
def test_the_console_script_is_installed(broker):
    result = subprocess.run([_INSTALLED_SCRIPT, "--port", str(broker.port), "-q", "list_vhosts"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "/" in result.stdout.split()
