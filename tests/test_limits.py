"""Vhost limits (max-connections, max-queues) and user limits (max-connections,
max-channels), as RabbitMQ has them: set through greenmqctl, the HTTP API and definitions,
kept across a restart, and refused over both wires with RabbitMQ's codes and texts."""

import json

import pika
import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess
from tests.greenmqctl_process import failed, greenmqctl as ctl, greenmqctl_json as ctl_json
from tests.http_api import call, path

EXIT_REFUSED = 65


@pytest.fixture
def vhost(broker, name):
    """A vhost of this test's own, guest with full rights in it, so its limits touch no other test."""
    assert call(broker.http_port, "PUT", path("vhosts", name))[0] == 201
    assert call(broker.http_port, "PUT", path("permissions", name, "guest"),
                {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    yield name
    call(broker.http_port, "DELETE", path("vhosts", name))


@pytest.fixture
def user(broker, name):
    """A user of this test's own (password "secret") with full rights in /."""
    assert ctl(broker.port, "add_user", name, "secret").returncode == 0
    assert ctl(broker.port, "set_permissions", name, ".*", ".*", ".*").returncode == 0
    yield name
    ctl(broker.port, "delete_user", name)


def json_lines(broker, vhost="/", user="guest", password="guest"):
    return connection.Connection("127.0.0.1", broker.port, user, password, vhost)


def pika_connection(broker, vhost="/", user="guest", password="guest"):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, vhost, pika.PlainCredentials(user, password)))


def refused_by_pika(broker, **login):
    """The (code, text) the broker closed a pika connection with at connection.open."""
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        pika_connection(broker, **login)
    code, _, text = str(refused.value).partition("ConnectionClosedByBroker: (")[2].partition(") ")
    return int(code), json.loads(text)


def refused_by_json_lines(broker, **login):
    with pytest.raises(connection.BrokerError) as refused:
        json_lines(broker, **login)
    return refused.value.code, refused.value.text


def test_vhost_connection_limit_refuses_connections_over_it_on_both_wires(broker, vhost):
    assert ctl(broker.port, "set_vhost_limits", "-p", vhost, '{"max-connections": 1}').returncode == 0
    first = json_lines(broker, vhost)
    try:
        text = f"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': connection limit (1) is reached"
        assert refused_by_pika(broker, vhost=vhost) == (530, text)
        assert refused_by_json_lines(broker, vhost=vhost) == (530, text)
        json_lines(broker).close()      # other vhosts are not limited
    finally:
        first.close()
    pika_connection(broker, vhost).close()     # the one place is free again
    assert ctl(broker.port, "set_vhost_limits", "-p", vhost, '{"max-connections": -1}').returncode == 0
    with json_lines(broker, vhost), json_lines(broker, vhost):
        pass                                   # negative: no limit


def test_vhost_queue_limit_refuses_new_queues_but_not_redeclaring_one(broker, vhost, name):
    status, _ = call(broker.http_port, "PUT", path("vhost-limits", vhost, "max-queues"), {"value": 1})
    assert status == 204
    with pika_connection(broker, vhost) as amqp:
        channel = amqp.channel()
        channel.queue_declare(name)
        channel.queue_declare(name)            # the same queue again is no new one
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(name + ".2")
        text = f"PRECONDITION_FAILED - cannot declare queue '{name}.2': queue limit in vhost '{vhost}' (1) is reached"
        assert (refused.value.reply_code, refused.value.reply_text) == (406, text)
    with json_lines(broker, vhost) as conn:
        with pytest.raises(connection.BrokerError) as refused:
            conn.channel().queue_declare(name + ".2")
        assert (refused.value.code, refused.value.text) == (406, text)
        conn.channel().queue_delete(name)
        conn.channel().queue_declare(name + ".2")     # room again


def test_vhost_limits_through_greenmqctl(broker, vhost):
    assert ctl_json(broker.port, "list_vhost_limits", "-p", vhost) == []
    set_limits = ctl(broker.port, "set_vhost_limits", "-p", vhost, '{"max-connections": 10, "max-queues": 0}')
    assert set_limits.returncode == 0, set_limits.stderr
    assert set_limits.stdout.strip() == f'Applying limits for vhost "{vhost}" ...'
    wanted = {"vhost": vhost, "value": {"max-connections": 10, "max-queues": 0}}
    assert ctl_json(broker.port, "list_vhost_limits", "-p", vhost) == [wanted]
    assert wanted in ctl_json(broker.port, "list_vhost_limits", "--global")
    table = ctl(broker.port, "list_vhost_limits", "-p", vhost).stdout.splitlines()
    assert table[0] == f'Listing limits for vhost "{vhost}" ...'
    assert table[2].split() == [vhost, '{"max-connections":10,"max-queues":0}']
    unknown = ctl(broker.port, "set_vhost_limits", "-p", vhost, '{"max-channels": 1}')
    assert "Unrecognised terms ['max-channels'] in limits" in failed(unknown, EXIT_REFUSED)
    assert ctl(broker.port, "clear_vhost_limits", "-p", vhost).returncode == 0
    assert ctl_json(broker.port, "list_vhost_limits", "-p", vhost) == []


def test_limits_api_is_rabbitmqs_and_for_administrators_only(broker, vhost, user):
    port = broker.http_port
    assert call(port, "PUT", path("vhost-limits", vhost, "max-connections"), {"value": 5})[0] == 204
    assert call(port, "PUT", path("vhost-limits", vhost, "max-queues"), {"value": 7})[0] == 204
    wanted = {"vhost": vhost, "value": {"max-connections": 5, "max-queues": 7}}
    assert call(port, "GET", path("vhost-limits", vhost)) == (200, [wanted])
    assert wanted in call(port, "GET", path("vhost-limits"))[1]
    assert call(port, "DELETE", path("vhost-limits", vhost, "max-connections"))[0] == 204
    assert call(port, "GET", path("vhost-limits", vhost))[1] == [{"vhost": vhost, "value": {"max-queues": 7}}]
    assert call(port, "PUT", path("vhost-limits", vhost, "max-foo"), {"value": 1})[0] == 400
    assert call(port, "PUT", path("vhost-limits", vhost, "max-queues"), {"value": "x"})[0] == 400
    assert call(port, "GET", path("vhost-limits", "no-such-vhost"))[0] == 404
    assert call(port, "PUT", path("user-limits", user, "max-channels"), {"value": 3})[0] == 204
    assert call(port, "GET", path("user-limits", user)) == (200, [{"user": user, "value": {"max-channels": 3}}])
    assert {"user": user, "value": {"max-channels": 3}} in call(port, "GET", path("user-limits"))[1]
    assert call(port, "DELETE", path("user-limits", user, "max-channels"))[0] == 204
    assert call(port, "GET", path("user-limits", user)) == (200, [])
    ctl(broker.port, "set_user_tags", user, "management")
    for method, limit_path, body in (("GET", path("vhost-limits"), None),
                                     ("PUT", path("vhost-limits", vhost, "max-queues"), {"value": 1}),
                                     ("DELETE", path("vhost-limits", vhost, "max-queues"), None),
                                     ("PUT", path("user-limits", user, "max-channels"), {"value": 1})):
        assert call(port, method, limit_path, body, auth=(user, "secret"))[0] == 403, (method, limit_path)
    assert call(port, "GET", path("vhost-limits", vhost))[1] == [{"vhost": vhost, "value": {"max-queues": 7}}]


def test_user_connection_limit_refuses_that_users_connections_on_both_wires(broker, user):
    assert ctl(broker.port, "set_user_limits", user, '{"max-connections": 1}').returncode == 0
    with json_lines(broker, user=user, password="secret"):
        text = f"NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
        assert refused_by_pika(broker, user=user, password="secret") == (530, text)
        assert refused_by_json_lines(broker, user=user, password="secret") == (530, text)
        json_lines(broker).close()          # other users are not limited
    pika_connection(broker, user=user, password="secret").close()


def test_user_channel_limit_counts_channels_on_all_their_connections(broker, user):
    assert ctl(broker.port, "set_user_limits", user, '{"max-channels": 2}').returncode == 0
    text = f"NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
    with json_lines(broker, user=user, password="secret") as conn:      # its first channel is one
        amqp = pika_connection(broker, user=user, password="secret")
        amqp.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
            amqp.channel()
        assert (refused.value.reply_code, refused.value.reply_text) == (530, text)
        with pika_connection(broker, user=user, password="secret") as amqp:
            amqp.channel()                                              # the second again
            with pytest.raises(connection.BrokerError) as refused:
                conn.channel()
            assert (refused.value.code, refused.value.text) == (530, text)
    cleared = ctl(broker.port, "clear_user_limits", user, "max-channels")
    assert cleared.stdout.strip() == f'Clearing "max-channels" limit for user "{user}" ...'
    assert ctl_json(broker.port, "list_user_limits", user) == []
    with pika_connection(broker, user=user, password="secret") as amqp:
        amqp.channel(), amqp.channel(), amqp.channel()


def test_user_limits_through_greenmqctl(broker, user):
    assert ctl(broker.port, "set_user_limits", user, '{"max-connections": 4, "max-channels": 8}').returncode == 0
    wanted = {"user": user, "value": {"max-connections": 4, "max-channels": 8}}
    assert ctl_json(broker.port, "list_user_limits", user) == [wanted]
    assert wanted in ctl_json(broker.port, "list_user_limits")
    assert ctl(broker.port, "clear_user_limits", user, "max-connections").returncode == 0
    assert ctl_json(broker.port, "list_user_limits", user) == [{"user": user, "value": {"max-channels": 8}}]
    assert ctl(broker.port, "clear_user_limits", user, "all").returncode == 0
    assert ctl_json(broker.port, "list_user_limits", user) == []
    bad = ctl(broker.port, "set_user_limits", user, '{"max-queues": 1}')
    assert "Unrecognised terms ['max-queues'] in limits" in failed(bad, EXIT_REFUSED)


def test_limits_are_exported_as_rabbitmq_does_and_kept_across_a_restart_and_an_import(tmp_path):
    data_dir = str(tmp_path / "data")
    with BrokerProcess(data_dir=data_dir) as broker:
        assert ctl(broker.port, "set_vhost_limits", "-p", "/", '{"max-queues": 3}').returncode == 0
        assert ctl(broker.port, "set_user_limits", "guest", '{"max-channels": 9}').returncode == 0
    with BrokerProcess(data_dir=data_dir) as broker:
        exported = json.loads(ctl(broker.port, "export_definitions", "-").stdout)
        assert call(broker.http_port, "GET", path("user-limits", "guest"))[1] == [
            {"user": "guest", "value": {"max-channels": 9}}]
    assert exported["parameters"] == [{"value": {"max-queues": 3}, "vhost": "/", "component": "vhost-limits",
                                       "name": "limits"}]
    assert [user["limits"] for user in exported["users"] if user["name"] == "guest"] == [{"max-channels": 9}]
    with BrokerProcess() as broker:
        imported = ctl(broker.port, "import_definitions", "-", input=json.dumps(exported))
        assert imported.returncode == 0, imported.stderr
        assert ctl_json(broker.port, "list_vhost_limits") == [{"vhost": "/", "value": {"max-queues": 3}}]
        assert ctl_json(broker.port, "list_user_limits", "guest") == [{"user": "guest", "value": {"max-channels": 9}}]
        other = dict(exported, parameters=[{"value": {}, "vhost": "/", "component": "federation-upstream",
                                             "name": "x"}])
        refused = ctl(broker.port, "import_definitions", "-", input=json.dumps(other))
        assert "parameters of component 'federation-upstream' are not supported" in failed(refused, EXIT_REFUSED)
