"""Virtual hosts added and deleted at run time (vhost.add / vhost.delete): each one a
separate world, and deleting one disconnects its clients with 320, as in RabbitMQ."""

import json
import socket

import pika
import pytest

from greenmq import connection
from greenmq.node import Node
from greenmq.protocol import JsonLinesProtocol


@pytest.fixture
def vhost(broker, name):
    with connection.Connection("127.0.0.1", broker.port) as admin:
        admin.add_vhost(name)
    yield name
    with connection.Connection("127.0.0.1", broker.port) as admin:
        try:
            admin.delete_vhost(name)
        except connection.NotFound:
            pass                  # the test deleted it


def test_an_added_vhost_is_a_world_of_its_own(broker, conn, vhost, name):
    with connection.Connection("127.0.0.1", broker.port, virtual_host=vhost) as inside:
        inside.default_channel.queue_declare("only-here")
        inside.default_channel.exchange_declare(name, "fanout")
        assert "only-here" in [q["name"] for q in inside.list_queues()]
        assert "amq.topic" in [x["name"] for x in inside.list_exchanges()]
    assert "only-here" not in [q["name"] for q in conn.list_queues()]
    assert name not in [x["name"] for x in conn.list_exchanges()]


def test_amqp_clients_connect_to_an_added_vhost(broker, vhost):
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/{vhost}"
    client = pika.BlockingConnection(pika.URLParameters(url))
    channel = client.channel()
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"hi")
    assert channel.basic_get("q", auto_ack=True)[2] == b"hi"
    client.close()


def test_deleting_a_vhost_closes_its_connections_with_320(broker, conn, vhost):
    amqp = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/{vhost}"))
    amqp.channel().queue_declare("q")
    json_lines = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    json_lines.sendall(json.dumps({"op": "hello", "vhost": vhost}).encode() + b"\n")
    assert json.loads(json_lines.makefile().readline())["ok"] is True
    conn.delete_vhost(vhost)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as amqp_closed:
        amqp.process_data_events(5)
    assert amqp_closed.value.reply_code == 320
    assert f"CONNECTION_FORCED - vhost '{vhost}' is deleted" in amqp_closed.value.reply_text
    # The close event is the last line: the broker hangs up without waiting for the client.
    received = b""
    while chunk := json_lines.recv(4096):
        received += chunk
    assert json.loads(received) == {"event": "close", "code": 320, "error": "CONNECTION_FORCED",
                                    "text": f"CONNECTION_FORCED - vhost '{vhost}' is deleted"}
    assert not [c for c in conn.list_connections() if c["vhost"] == vhost]
    # An end the broker chose is not logged as a failed connection.
    assert f"connection from 127.0.0.1:{json_lines.getsockname()[1]} failed" not in broker.log()


def test_a_deleted_vhost_is_gone_with_its_queues(broker, conn, vhost):
    with connection.Connection("127.0.0.1", broker.port, virtual_host=vhost) as inside:
        inside.default_channel.queue_declare("q")
        inside.default_channel.basic_publish("", "q", b"lost with the vhost")
    conn.delete_vhost(vhost)
    with pytest.raises(connection.ConnectionClosed) as refused:
        connection.Connection("127.0.0.1", broker.port, virtual_host=vhost)
    assert refused.value.code == 530
    conn.add_vhost(vhost)
    with connection.Connection("127.0.0.1", broker.port, virtual_host=vhost) as inside:
        assert inside.list_queues() == []


@pytest.mark.parametrize("request_fields, code, text", [
    ({"op": "vhost.add", "vhost": "/"}, 406, "PRECONDITION_FAILED - vhost '/' already exists"),
    ({"op": "vhost.add", "vhost": ""}, 406, "must not be empty"),
    ({"op": "vhost.add", "vhost": "v" * 256}, 406, "longer than 255 bytes"),
    ({"op": "vhost.add"}, 502, "field 'vhost' is required"),
    ({"op": "vhost.add", "vhost": 7}, 502, "field 'vhost' must be a string"),
    ({"op": "vhost.delete", "vhost": "nowhere"}, 404, "NOT_FOUND - no vhost 'nowhere'"),
    ({"op": "vhost.delete", "vhost": "/"}, 406, "cannot delete vhost '/' from a connection to it"),
])
def test_bad_vhost_requests_are_refused(node_client, request_fields, code, text):
    reply = node_client.request(request_fields)
    assert reply["ok"] is False and reply["code"] == code and text in reply["text"], reply


def test_only_administrators_add_or_delete_vhosts():
    node = Node()
    node.add_user("app", "secret")
    node.set_permissions("app", "/", ".*", ".*", ".*")
    app = _Client(node, user="app", password="secret")
    for op in ("vhost.add", "vhost.delete"):
        reply = app.request({"op": op, "vhost": "other"})
        assert reply["code"] == 403 and reply["text"] == "ACCESS_REFUSED - user 'app' has none of the tags administrator"
    assert _Client(node).request({"op": "vhost.add", "vhost": "other"})["ok"] is True
    assert set(node.vhosts) == {"/", "other"}


class _Client:
    """A JSON-lines client without a network, against a core in this process."""

    def __init__(self, node, **hello):
        self.protocol = JsonLinesProtocol(node, ("127.0.0.1", 1))
        assert self.request({"op": "hello", **hello})["ok"] is True

    def request(self, fields):
        self.protocol.data_received(json.dumps(fields).encode() + b"\n")
        [reply] = [json.loads(line) for line in self.protocol.take_output().splitlines()]
        return reply


@pytest.fixture
def node_client():
    return _Client(Node())


def test_deleting_a_vhost_deletes_its_queues_exchanges_and_what_the_store_holds_of_them():
    node = Node()
    node.add_vhost("v")
    vhost = node.vhosts["v"]
    queue = vhost.declare_queue("q", durable=True, arguments={"x-expires": 3_600_000, "x-message-ttl": 60_000})
    vhost.declare_exchange("x", "topic", durable=True)
    vhost.bind("q", "x", "#")
    node.vhosts["/"].declare_exchange("x", "topic", durable=True)
    node.delete_vhost("v")
    assert queue.deleted        # and so its expiry and TTL timers are stopped
    recovered = node.store.load()
    assert [e[:2] for e in recovered.exchanges] == [("/", "x")]
    assert recovered.queues == [] and recovered.bindings == []
