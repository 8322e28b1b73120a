"""The management HTTP API and /metrics, through real HTTP requests to a broker process."""

import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from urllib.parse import quote

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenmq import connection
from greenmq.memory import MESSAGE_OVERHEAD_BYTES
from tests.broker_process import BrokerProcess
from tests.http_api import call, path
from tests.tls_certificates import write_certificates

# Short, so a test sees rates within a second or two rather than the default five.
STATS_INTERVAL = "0.3"


@pytest.fixture(scope="module")
def mgmt():
    with BrokerProcess("--stats-interval", STATS_INTERVAL) as process:
        yield process
        log = process.log()
    assert "Traceback" not in log, log


def api(broker, method, *parts, body=None, auth=("guest", "guest"), raw=None, query=""):
    return call(broker.http_port, method, path(*parts) + query, body, auth, raw)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met within the deadline")


def add_user(broker, name, tags, vhost_permissions=None):
    assert api(broker, "PUT", "users", name, body={"password": "pw", "tags": tags})[0] == 201
    if vhost_permissions is not None:
        configure, write, read = vhost_permissions
        status, _ = api(broker, "PUT", "permissions", "/", name,
                        body={"configure": configure, "write": write, "read": read})
        assert status == 201
    return name, "pw"


# -- refusals ---------------------------------------------------------------------------------

def test_requests_without_or_with_wrong_credentials_are_refused_with_401(mgmt):
    status, reply = api(mgmt, "GET", "overview", auth=None)
    assert status == 401 and reply["error"] == "not_authorised"
    assert api(mgmt, "GET", "queues", auth=("guest", "wrong"))[0] == 401
    assert api(mgmt, "GET", "queues", auth=("nobody", "guest"))[0] == 401
    status, reply = call(mgmt.http_port, "GET", "/api/overview", headers={"Authorization": "Basic !!!"}, auth=None)
    assert status == 401 and "malformed" in reply["reason"]
    assert api(mgmt, "GET", "overview")[0] == 200


def test_users_without_a_management_tag_or_permission_are_refused_with_403(mgmt, name):
    plain = add_user(mgmt, name + "-plain", "", (".*", ".*", ".*"))
    status, reply = api(mgmt, "GET", "overview", auth=plain)
    assert status == 403 and "tag" in reply["reason"]

    outsider = add_user(mgmt, name + "-outsider", "management")       # no permissions anywhere
    assert api(mgmt, "PUT", "queues", "/", name, body={})[0] == 201
    assert api(mgmt, "GET", "overview", auth=outsider)[0] == 200
    assert [q for q in api(mgmt, "GET", "queues", auth=outsider)[1]] == []
    assert api(mgmt, "GET", "queues", "/", name, auth=outsider)[0] == 403
    assert api(mgmt, "DELETE", "queues", "/", name, "contents", auth=outsider)[0] == 403

    reader = add_user(mgmt, name + "-reader", "management", ("^$", "^$", ".*"))
    assert name in [q["name"] for q in api(mgmt, "GET", "queues", auth=reader)[1]]
    status, reply = api(mgmt, "PUT", "queues", "/", name + "-new", body={}, auth=reader)
    assert status == 403 and "ACCESS_REFUSED" in reply["reason"]
    assert api(mgmt, "DELETE", "queues", "/", name, auth=reader)[0] == 403
    assert api(mgmt, "DELETE", "queues", "/", name, "contents", auth=reader)[0] == 204     # read allows purge
    for admin_only in (("users",), ("permissions",), ("definitions",)):
        assert api(mgmt, "GET", *admin_only, auth=reader)[0] == 403
    assert api(mgmt, "PUT", "vhosts", name, body={}, auth=reader)[0] == 403
    assert api(mgmt, "GET", "queues", "/", name)[0] == 200


def test_a_management_users_overview_counts_only_its_vhosts(mgmt, name):
    vhost = name + "-vhost"
    api(mgmt, "PUT", "vhosts", vhost, body={})
    user = add_user(mgmt, name, "management")
    api(mgmt, "PUT", "permissions", vhost, name, body={"configure": ".*", "write": ".*", "read": ".*"})
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    for _ in range(3):
        api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body={"routing_key": name, "payload": "x"})
    mine, everything = api(mgmt, "GET", "overview", auth=user)[1], api(mgmt, "GET", "overview")[1]
    assert mine["message_stats"]["publish"] == 0 and everything["message_stats"]["publish"] >= 3
    assert mine["queue_totals"]["messages"] == 0 and everything["queue_totals"]["messages"] >= 3
    assert mine["object_totals"]["queues"] == 0 and [v["name"] for v in api(mgmt, "GET", "vhosts", auth=user)[1]] == [vhost]
    api(mgmt, "DELETE", "vhosts", vhost)


def test_unknown_vhosts_queues_exchanges_and_paths_are_404(mgmt, name):
    for parts in (("queues", "no-such-vhost"), ("queues", "/", name), ("exchanges", "/", name),
                  ("vhosts", name), ("users", name), ("bindings", "/", "e", "amq.direct", "q", name),
                  ("no-such-thing",)):
        status, reply = api(mgmt, "GET", *parts)
        assert status == 404 and reply["error"] == "not_found", parts
    status, reply = api(mgmt, "POST", "queues", "/", name, "get", body={"count": 1})
    assert status == 404 and f"no queue '{name}'" in reply["reason"]
    assert api(mgmt, "PATCH", "queues")[0] == 405


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "malformed JSON"), (b"[1, 2]", "must be an object"), (b"\xff\xfe", "malformed JSON"),
    (b'{"durable": "yes"}', "'durable' must be true or false"),
    (b'{"arguments": []}', "'arguments' must be an object"),
    (b'{"arguments": {"x-message-ttl": "soon"}}', "x-message-ttl"),
])
def test_malformed_bodies_are_refused_with_400_and_a_reason(mgmt, name, raw, reason):
    status, reply = api(mgmt, "PUT", "queues", "/", name, raw=raw)
    assert status == 400, reply
    assert reply["error"] == "bad_request" and reason in reply["reason"]
    assert api(mgmt, "GET", "queues", "/", name)[0] == 404


def test_malformed_requests_elsewhere_are_400(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    for parts, body in ((("queues", "/", name, "get"), {"count": "many"}),
                        (("queues", "/", name, "get"), {"count": 1, "ackmode": "keep"}),
                        (("exchanges", "/", "amq.default", "publish"), {"routing_key": name}),
                        (("exchanges", "/", "amq.default", "publish"),
                         {"routing_key": name, "payload": "x", "payload_encoding": "base64"}),
                        (("exchanges", "/", "amq.default", "publish"),
                         {"routing_key": name, "payload": "x", "properties": {"delivery_mode": 7}}),
                        (("exchanges", "/", name), {"type": "no-such-type"}),
                        (("permissions", "/", "guest"), {"configure": ".*"}),
                        (("permissions", "/", "guest"), {"configure": "(", "write": "", "read": ""}),
                        (("users", name), {"tags": "management"}),
                        (("definitions",), {"queues": [{"name": 5, "vhost": "/"}]})):
        method = "PUT" if parts[0] in ("exchanges", "permissions", "users") and parts[-1] != "publish" else "POST"
        status, reply = api(mgmt, method, *parts, body=body)
        assert status == 400 and reply["reason"], (parts, body, reply)
    status, reply = api(mgmt, "PUT", "queues", "/", name, body={"durable": True})
    assert status == 400 and "inequivalent arg 'durable'" in reply["reason"]


# -- what the API shows ----------------------------------------------------------------------------

def test_counts_match_what_pika_and_connection_py_did(mgmt, name):
    params = pika.ConnectionParameters("127.0.0.1", mgmt.amqp_port)
    with pika.BlockingConnection(params) as amqp, connection.Connection("127.0.0.1", mgmt.port) as lines:
        channel = amqp.channel()
        channel.queue_declare(name)
        for i in range(5):
            channel.basic_publish("", name, f"pika {i}".encode())
        lines_channel = lines.channel()
        for i in range(3):
            lines_channel.basic_publish("", name, f"lines {i}".encode())
        wait_for(lambda: api(mgmt, "GET", "queues", "/", name)[1]["messages"] == 8)
        for _ in range(2):                                          # two fetched and acked
            method, _, _ = channel.basic_get(name)
            channel.basic_ack(method.delivery_tag)
        held, _, _ = channel.basic_get(name)                        # one held unacked
        consumer_channel = amqp.channel()
        consumer_channel.basic_qos(prefetch_count=1)
        consumer_tag = consumer_channel.basic_consume(name, lambda *args: None)   # takes one more, unacked
        amqp.process_data_events(0.2)

        queue = wait_for(lambda: (lambda q: q if q["messages_unacknowledged"] == 2 else None)(
            api(mgmt, "GET", "queues", "/", name)[1]))
        assert (queue["messages"], queue["messages_ready"], queue["messages_unacknowledged"]) == (6, 4, 2)
        assert queue["consumers"] == 1 and queue["memory"] > 0
        stats = queue["message_stats"]
        assert (stats["publish"], stats["deliver_get"], stats["ack"], stats["redeliver"]) == (8, 4, 2, 0)

        [row] = [q for q in api(mgmt, "GET", "queues", "/")[1] if q["name"] == name]
        assert row["messages"] == 6
        consumers = [c for c in api(mgmt, "GET", "consumers")[1] if c["queue"]["name"] == name]
        assert [c["consumer_tag"] for c in consumers] == [consumer_tag]
        assert consumers[0]["queue"]["vhost"] == "/" and consumers[0]["prefetch_count"] == 1
        protocols = {c["protocol"] for c in api(mgmt, "GET", "connections")[1] if c["user"] == "guest"}
        assert len(protocols) == 2
        channels = api(mgmt, "GET", "channels")[1]
        assert len([c for c in channels if c["consumers"] == 1]) >= 1

        consumer_channel.close()                                    # its unacked delivery returns
        channel.basic_reject(held.delivery_tag, requeue=True)
        queue = wait_for(lambda: (lambda q: q if q["messages_ready"] == 6 else None)(
            api(mgmt, "GET", "queues", "/", name)[1]))
        assert queue["messages_unacknowledged"] == 0
        overview = api(mgmt, "GET", "overview")[1]
        assert overview["queue_totals"]["messages"] >= 6
        assert overview["message_stats"]["publish"] >= 8


def test_rabbitmq_shaped_fields_are_present(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    overview = api(mgmt, "GET", "overview")[1]
    assert {"management_version", "node", "object_totals", "queue_totals", "message_stats"} <= set(overview)
    assert {"connections", "channels", "exchanges", "queues", "consumers"} <= set(overview["object_totals"])
    assert {"publish", "publish_details", "deliver_get", "ack"} <= set(overview["message_stats"])
    queue = api(mgmt, "GET", "queues", "/", name)[1]
    assert {"name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "node", "state", "messages",
            "messages_ready", "messages_unacknowledged", "consumers", "memory", "message_stats"} <= set(queue)
    assert set(queue["message_stats"]) >= {"publish", "publish_details", "deliver", "deliver_details",
                                           "deliver_get", "ack", "ack_details", "redeliver"}
    [default] = [e for e in api(mgmt, "GET", "exchanges", "/")[1] if e["name"] == ""]
    assert {"name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"} <= set(default)
    [binding] = [b for b in api(mgmt, "GET", "bindings", "/")[1] if b["destination"] == name]
    assert {"source", "vhost", "destination", "destination_type", "routing_key", "arguments",
            "properties_key"} <= set(binding)
    [node] = api(mgmt, "GET", "nodes")[1]
    assert node["running"] is True and node["mem_used"] > 0
    assert api(mgmt, "GET", "nodes", node["name"])[1]["name"] == node["name"]
    assert api(mgmt, "GET", "vhosts", "/")[1]["name"] == "/"
    assert {"name", "tags"} <= set(api(mgmt, "GET", "users", "guest")[1])
    assert api(mgmt, "GET", "whoami")[1] == {"name": "guest", "tags": ["administrator"]}


def test_the_api_lists_the_rows_json_lines_lists_with_its_own_members_added(mgmt, name):
    exchange = name + "-x"
    api(mgmt, "PUT", "exchanges", "/", exchange,
        body={"type": "headers", "durable": False, "arguments": {"alternate-exchange": "amq.fanout"}})
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False, "arguments": {"x-max-length": 5}})
    api(mgmt, "POST", "bindings", "/", "e", exchange, "q", name, body={"arguments": {"x-match": "any", "k": 1}})
    for _ in range(2):
        api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body={"routing_key": name, "payload": "x"})
    with connection.Connection("127.0.0.1", mgmt.port) as lines:
        listed = {what: lines.call(f"list_{what}", vhost="/")["items"] for what in ("queues", "exchanges", "bindings")}
        [vhost] = [row for row in lines.call("list_vhosts")["items"] if row["name"] == "/"]
        shown = api(mgmt, "GET", "vhosts", "/")[1]
    assert {member: shown.get(member) for member in vhost} == vhost and vhost["messages"] >= 2
    for what, key in (("queues", "name"), ("exchanges", "name"), ("bindings", "destination")):
        [row] = [row for row in listed[what] if row[key] in (name, exchange) and row.get("source") != ""]
        shown = [shown for shown in api(mgmt, "GET", what, "/")[1] if shown[key] == row[key]
                 and shown.get("source") != ""]
        if what == "bindings":      # RabbitMQ's API calls it destination_type
            row["destination_type"] = row.pop("destination_kind")
        assert [{member: item.get(member) for member in row} for item in shown] == [row], what
    assert {"messages": 2, "messages_ready": 2, "arguments": {"x-max-length": 5}}.items() <= \
        next(row for row in listed["queues"] if row["name"] == name).items()


def test_rates_are_sampled_from_counters_while_messages_flow(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    with connection.Connection("127.0.0.1", mgmt.port) as lines:
        channel = lines.channel()

        def publishing_rate():
            for _ in range(50):
                channel.basic_publish("", name, b"x")
            queue = api(mgmt, "GET", "queues", "/", name)[1]
            return queue["message_stats"]["publish_details"]["rate"] > 0 and \
                api(mgmt, "GET", "overview")[1]["message_stats"]["publish_details"]["rate"] > 0
        wait_for(publishing_rate)


# -- changing things -------------------------------------------------------------------------------

def test_exchanges_queues_and_bindings_are_made_and_removed_through_the_api(mgmt, name):
    exchange, queue = name + "-x", name + "-q"
    assert api(mgmt, "PUT", "exchanges", "/", exchange, body={"type": "topic", "durable": False})[0] == 201
    assert api(mgmt, "PUT", "exchanges", "/", exchange, body={"type": "topic", "durable": False})[0] == 204
    assert api(mgmt, "PUT", "queues", "/", queue, body={"durable": False, "arguments": {"x-message-ttl": 60000}})[0] == 201
    assert api(mgmt, "POST", "bindings", "/", "e", exchange, "q", queue, body={"routing_key": "a.*"})[0] == 201
    [binding] = api(mgmt, "GET", "bindings", "/", "e", exchange, "q", queue)[1]
    assert binding["routing_key"] == "a.*"
    assert api(mgmt, "GET", "exchanges", "/", exchange, "bindings", "source")[1] == [binding]

    status, reply = api(mgmt, "POST", "exchanges", "/", exchange, "publish",
                        body={"routing_key": "a.b", "payload": "aGk=", "payload_encoding": "base64",
                              "properties": {"headers": {"n": 1}, "content_type": "text/plain"}})
    assert (status, reply) == (200, {"routed": True})
    assert api(mgmt, "POST", "exchanges", "/", exchange, "publish",
               body={"routing_key": "b", "payload": ""})[1] == {"routed": False}
    with connection.Connection("127.0.0.1", mgmt.port) as lines:        # what the API did, seen by a client
        assert lines.channel().queue_declare(queue, passive=True).method.message_count == 1

    assert api(mgmt, "DELETE", "bindings", "/", "e", exchange, "q", queue, binding["properties_key"])[0] == 204
    assert api(mgmt, "GET", "bindings", "/", "e", exchange, "q", queue)[1] == []
    assert api(mgmt, "DELETE", "exchanges", "/", exchange)[0] == 204
    assert api(mgmt, "GET", "exchanges", "/", exchange)[0] == 404
    status, reply = api(mgmt, "DELETE", "exchanges", "/", "amq.direct")
    assert status == 403 and "system exchange" in reply["reason"]
    assert api(mgmt, "DELETE", "queues", "/", queue, query="?if-empty=true")[0] == 400
    assert api(mgmt, "DELETE", "queues", "/", queue)[0] == 204
    assert api(mgmt, "GET", "queues", "/", queue)[0] == 404


def test_an_exchange_to_exchange_binding_is_listed_at_both_exchanges_and_never_as_a_queues(mgmt, name):
    source, destination = name + "-source", name        # a queue shares the destination's name
    api(mgmt, "PUT", "exchanges", "/", source, body={"type": "topic", "durable": False})
    api(mgmt, "PUT", "exchanges", "/", destination, body={"type": "fanout", "durable": False})
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", mgmt.amqp_port)) as amqp:
        channel = amqp.channel()
        channel.exchange_bind(destination, source, "a.#")
        [binding] = api(mgmt, "GET", "exchanges", "/", source, "bindings", "source")[1]
        assert binding == {"source": source, "vhost": "/", "destination": destination,
                           "destination_type": "exchange", "routing_key": "a.#", "arguments": {},
                           "properties_key": "a.#"}
        assert api(mgmt, "GET", "exchanges", "/", destination, "bindings", "destination")[1] == [binding]
        assert api(mgmt, "GET", "exchanges", "/", source, "bindings", "destination")[1] == []
        assert [b["source"] for b in api(mgmt, "GET", "queues", "/", name, "bindings")[1]] == [""]
        assert api(mgmt, "GET", "bindings", "/", "e", source, "q", name)[1] == []
        channel.exchange_unbind(destination, source, "a.#")
        assert api(mgmt, "GET", "exchanges", "/", destination, "bindings", "destination")[1] == []
    api(mgmt, "DELETE", "queues", "/", name)
    api(mgmt, "DELETE", "exchanges", "/", destination)
    api(mgmt, "DELETE", "exchanges", "/", source)


def test_get_messages_requeues_or_removes_and_purge_empties(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    for body in ("one", "two", "three"):
        api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body={"routing_key": name, "payload": body})
    status, got = api(mgmt, "POST", "queues", "/", name, "get", body={"count": 2, "ackmode": "ack_requeue_true"})
    assert status == 200
    assert [(m["payload"], m["redelivered"], m["message_count"]) for m in got] == [("one", False, 2), ("two", False, 1)]
    status, got = api(mgmt, "POST", "queues", "/", name, "get",
                      body={"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64"})
    assert [(m["payload"], m["redelivered"], m["payload_encoding"]) for m in got] == [
        ("b25l", True, "base64"), ("dHdv", True, "base64"), ("dGhyZWU=", False, "base64")]
    assert api(mgmt, "GET", "queues", "/", name)[1]["messages"] == 0
    for body in ("four", "five"):
        api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body={"routing_key": name, "payload": body})
    assert api(mgmt, "GET", "queues", "/", name)[1]["messages_ready"] == 2
    assert api(mgmt, "DELETE", "queues", "/", name, "contents")[0] == 204
    assert api(mgmt, "GET", "queues", "/", name)[1]["messages_ready"] == 0


def test_users_vhosts_and_permissions_through_the_api(mgmt, name):
    vhost = name + "-vhost"
    assert api(mgmt, "PUT", "vhosts", vhost, body={})[0] == 201
    assert api(mgmt, "PUT", "vhosts", vhost, body={})[0] == 204
    assert api(mgmt, "PUT", "users", name, body={"password": "secret", "tags": ["monitoring"]})[0] == 201
    assert api(mgmt, "PUT", "permissions", vhost, name, body={"configure": "", "write": ".*", "read": ".*"})[0] == 201
    assert api(mgmt, "GET", "permissions", vhost, name)[1] == {
        "user": name, "vhost": vhost, "configure": "", "write": ".*", "read": ".*"}
    assert [p["vhost"] for p in api(mgmt, "GET", "users", name, "permissions")[1]] == [vhost]
    assert [p["user"] for p in api(mgmt, "GET", "vhosts", vhost, "permissions")[1]] == [name]
    assert api(mgmt, "GET", "whoami", auth=(name, "secret"))[1]["tags"] == ["monitoring"]
    assert api(mgmt, "PUT", "users", name, body={"password": "changed", "tags": "management"})[0] == 204
    assert api(mgmt, "GET", "whoami", auth=(name, "secret"))[0] == 401
    assert api(mgmt, "GET", "whoami", auth=(name, "changed"))[1]["tags"] == ["management"]
    with connection.Connection("127.0.0.1", mgmt.port, name, "changed", vhost) as client:   # may log in there
        assert client.is_open
    assert api(mgmt, "DELETE", "permissions", vhost, name)[0] == 204
    assert api(mgmt, "GET", "permissions", vhost, name)[0] == 404
    assert api(mgmt, "DELETE", "vhosts", vhost)[0] == 204
    assert api(mgmt, "GET", "vhosts", vhost)[0] == 404
    assert api(mgmt, "DELETE", "users", name)[0] == 204
    assert api(mgmt, "GET", "whoami", auth=(name, "changed"))[0] == 401


def test_a_connection_is_closed_through_the_api_by_its_user_or_an_administrator(mgmt, name):
    watcher = add_user(mgmt, name, "monitoring")
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", mgmt.amqp_port)) as amqp:
        local_port = amqp._impl._transport._sock.getsockname()[1]
        [row] = [c for c in api(mgmt, "GET", "connections")[1] if c["peer_port"] == local_port]
        assert api(mgmt, "GET", "connections", row["name"])[1]["protocol"] == row["protocol"]
        assert api(mgmt, "GET", "connections", row["name"], auth=watcher)[0] == 200       # sees it
        assert api(mgmt, "DELETE", "connections", row["name"], auth=watcher)[0] == 403    # may not close it
        assert api(mgmt, "DELETE", "connections", row["name"])[0] == 204
        with pytest.raises(pika.exceptions.ConnectionClosed):
            amqp.process_data_events(2)
            amqp.channel()
    assert api(mgmt, "GET", "connections", row["name"])[0] == 404


def test_definitions_exported_from_one_broker_rebuild_another(mgmt, name):
    exchange, queue = name + "-x", name + "-q"
    api(mgmt, "PUT", "exchanges", "/", exchange, body={"type": "fanout", "durable": True})
    api(mgmt, "PUT", "queues", "/", queue, body={"durable": True, "arguments": {"x-expires": 600000}})
    api(mgmt, "POST", "bindings", "/", "e", exchange, "q", queue, body={"routing_key": "k"})
    api(mgmt, "PUT", "users", name, body={"password": "pw", "tags": "management"})
    api(mgmt, "PUT", "permissions", "/", name, body={"configure": "^$", "write": ".*", "read": ".*"})
    status, definitions = api(mgmt, "GET", "definitions")
    assert status == 200
    assert all("password" not in user for user in definitions["users"])

    with BrokerProcess() as other:
        assert call(other.http_port, "POST", "/api/definitions", definitions)[0] == 204
        assert call(other.http_port, "GET", path("queues", "/", queue))[1]["arguments"] == {"x-expires": 600000}
        assert call(other.http_port, "GET", path("exchanges", "/", exchange))[1]["type"] == "fanout"
        [binding] = call(other.http_port, "GET", path("bindings", "/", "e", exchange, "q", queue))[1]
        assert binding["routing_key"] == "k"
        # The user came over with its password hash: it logs in with the same password.
        assert call(other.http_port, "GET", "/api/whoami", auth=(name, "pw"))[1]["name"] == name
        assert call(other.http_port, "GET", path("permissions", "/", name))[1]["configure"] == "^$"
        status, reply = call(other.http_port, "POST", "/api/definitions", {"queues": "many"})
        assert status == 400 and "'queues' must be a list" in reply["reason"]
    api(mgmt, "DELETE", "queues", "/", queue)
    api(mgmt, "DELETE", "exchanges", "/", exchange)


# -- /metrics -----------------------------------------------------------------------------------------

def metric_families(port):
    status, text = call(port, "GET", "/metrics", auth=None)
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def test_metrics_parse_as_prometheus_text_and_count_what_happened(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": True})
    for i in range(3):
        api(mgmt, "POST", "exchanges", "/", "amq.default", "publish",
            body={"routing_key": name, "payload": str(i), "properties": {"delivery_mode": 2}})
    api(mgmt, "POST", "queues", "/", name, "get", body={"count": 1, "ackmode": "ack_requeue_false"})
    families = metric_families(mgmt.http_port)
    for gauge in ("greenmq_connections", "greenmq_channels", "greenmq_queues", "greenmq_consumers",
                  "greenmq_process_resident_memory_bytes", "greenmq_memory_held_bytes", "greenmq_memory_limit_bytes",
                  "greenmq_publishers_blocked"):
        assert families[gauge].type == "gauge"
    assert families["greenmq_memory_held_bytes"].samples[0].value >= 2 * MESSAGE_OVERHEAD_BYTES  # two still held
    assert families["greenmq_memory_limit_bytes"].samples[0].value > 0
    assert families["greenmq_publishers_blocked"].samples[0].value == 0
    # The parser names counters without their _total suffix.
    for counter in ("published", "delivered", "acked", "redelivered", "dead_lettered"):
        assert families[f"greenmq_messages_{counter}"].type == "counter"
    assert families["greenmq_messages_published"].samples[0].value >= 3

    def per_queue(family):
        return {s.name: s.value for s in families[family].samples if s.labels == {"vhost": "/", "queue": name}}
    assert per_queue("greenmq_queue_messages_ready") == {"greenmq_queue_messages_ready": 2}
    assert per_queue("greenmq_queue_messages_unacked") == {"greenmq_queue_messages_unacked": 0}
    assert per_queue("greenmq_queue_messages_published")["greenmq_queue_messages_published_total"] == 3
    assert per_queue("greenmq_queue_messages_acked")["greenmq_queue_messages_acked_total"] == 1

    commits = families["greenmq_store_commit_duration_seconds"]
    assert commits.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in commits.samples}
    assert samples["greenmq_store_commit_duration_seconds_count", None] >= 1      # the persistent messages
    assert samples["greenmq_store_commit_duration_seconds_bucket", "+Inf"] == \
        samples["greenmq_store_commit_duration_seconds_count", None]


def test_metric_labels_carry_queue_names_with_quotes_backslashes_and_newlines(mgmt):
    name = 'a "quoted" \\ queue\nover two lines'
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body={"routing_key": name, "payload": "x"})
    ready = {s.labels["queue"]: s.value for s in metric_families(mgmt.http_port)["greenmq_queue_messages_ready"].samples}
    assert ready[name] == 1
    api(mgmt, "DELETE", "queues", "/", name)


def test_per_queue_series_can_be_turned_off():
    with BrokerProcess("--no-per-queue-metrics") as broker:
        call(broker.http_port, "PUT", path("queues", "/", "q"), {})
        families = metric_families(broker.http_port)
        assert "greenmq_queue_messages_ready" not in families
        assert families["greenmq_queues"].samples[0].value == 1


# -- the listener -----------------------------------------------------------------------------------------

def test_no_http_means_no_management_listener():
    with BrokerProcess("--no-http") as broker:
        assert "HTTP" not in broker.ports
        assert "HTTP clients" not in broker.log()


def test_without_plain_listeners_the_api_is_served_over_https_only(tmp_path):
    certificates = write_certificates(tmp_path)
    with BrokerProcess("--in-memory", "--tls-cert", certificates["server_cert"], "--tls-key",
                       certificates["server_key"], "--no-plain", "--tls-port", "0", "--amqps-port", "0") as broker:
        tls = ssl.create_default_context(cafile=certificates["ca"])
        status, overview = call(broker.http_port, "GET", "/api/overview", tls=tls)
        assert status == 200 and overview["product_name"] == "GreenMQ"
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(broker.http_port, "GET", "/api/overview")          # plain HTTP is not answered
        deadline = time.monotonic() + 10
        while "HTTPS connection from" not in broker.log():       # the broker's word on it, in one line
            assert time.monotonic() < deadline, broker.log()
            time.sleep(0.02)
        assert "Traceback" not in broker.log()


def test_a_taken_http_port_stops_the_start_with_one_clear_sentence(mgmt):
    broker = BrokerProcess("--http-port", str(mgmt.http_port))
    with pytest.raises(RuntimeError) as refused:
        broker.start()
    broker.close()
    assert f"cannot listen on 127.0.0.1:{mgmt.http_port} for HTTP clients" in str(refused.value)
    assert "Traceback" not in str(refused.value)


def test_only_an_administrator_may_create_or_change_users(mgmt, name):
    """As in RabbitMQ, PUT /api/users/{name} is an administrator's: a management or
    monitoring user is refused with 403, and neither makes a user nor raises its own tags."""
    newcomer = name + "-newcomer"
    for tag in ("management", "monitoring"):
        user = add_user(mgmt, f"{name}-{tag}", tag, (".*", ".*", ".*"))
        status, reply = api(mgmt, "PUT", "users", newcomer, body={"password": "pw", "tags": "administrator"},
                            auth=user)
        assert status == 403 and "administrator" in reply["reason"]
        status, _ = api(mgmt, "PUT", "users", user[0], body={"password": "pw", "tags": "administrator"}, auth=user)
        assert status == 403
        assert api(mgmt, "GET", "whoami", auth=user)[1]["tags"] == [tag]
    assert api(mgmt, "GET", "users", newcomer)[0] == 404


# -- safe in a browser ------------------------------------------------------------------------------------

def raw_request(port, request, timeout=10.0):
    """The status line and the rest of what the broker answered to `request` bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_bodies_not_declared_json_are_refused_with_415_and_nothing_is_done(mgmt, name):
    """What a page on another site can make a browser send unasked: text/plain, a form, or a
    POST with no body and no type at all. A JSON type with a charset is JSON."""
    definitions = json.dumps({"vhosts": [{"name": name}]}).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, reply = call(mgmt.http_port, "POST", path("definitions"), raw=definitions,
                             headers={"Content-Type": kind})
        assert status == 415 and reply["error"] == "unsupported_media_type" and kind in reply["reason"], reply
    assert api(mgmt, "GET", "vhosts", name)[0] == 404
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    status, reply = call(mgmt.http_port, "POST", path("bindings", "/", "e", "amq.direct", "q", name))
    assert status == 415 and "none" in reply["reason"]
    assert api(mgmt, "GET", "bindings", "/", "e", "amq.direct", "q", name)[1] == []
    status, _ = call(mgmt.http_port, "POST", path("definitions"), raw=definitions,
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 204 and api(mgmt, "GET", "vhosts", name)[0] == 200
    assert call(mgmt.http_port, "PUT", path("vhosts", name + "-bodiless"), raw=b"")[0] == 201   # as curl -X PUT
    api(mgmt, "DELETE", "vhosts", name)
    api(mgmt, "DELETE", "vhosts", name + "-bodiless")


def test_a_host_that_is_not_the_brokers_is_refused_with_421_before_anything_else(mgmt):
    """A DNS-rebinding page reaches this address under its own name, so that name is its Host."""
    for target in ("/api/whoami", "/", "/metrics"):
        head, body = raw_request(mgmt.http_port, f"GET {target} HTTP/1.1\r\nHost: evil.example:{mgmt.http_port}\r\n"
                                                 "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
                                                 .encode())
        assert head.startswith("HTTP/1.1 421 "), (target, head)
        reply = json.loads(body)
        assert reply["error"] == "misdirected_request" and "evil.example" in reply["reason"]
    for host in ("localhost", f"localhost:{mgmt.http_port}", "127.0.0.1", f"[::1]:{mgmt.http_port}",
                 socket.gethostname()):
        assert call(mgmt.http_port, "GET", "/api/whoami", headers={"Host": host})[0] == 200, host


def test_more_host_names_are_allowed_with_http_allowed_hosts():
    with BrokerProcess("--in-memory", "--http-allowed-hosts", "Broker.example, other.example") as broker:
        for host in ("broker.example", "BROKER.example:15672", "other.example", "127.0.0.1"):
            assert call(broker.http_port, "GET", "/api/whoami", headers={"Host": host})[0] == 200, host
        assert call(broker.http_port, "GET", "/api/whoami", headers={"Host": "evil.example"})[0] == 421


def test_a_401_never_asks_the_browser_for_credentials_it_would_remember(mgmt):
    for auth in (None, ("guest", "wrong")):
        connection_ = http.client.HTTPConnection("127.0.0.1", mgmt.http_port, timeout=10)
        headers = {} if auth is None else {"Authorization": "Basic Z3Vlc3Q6d3Jvbmc="}
        connection_.request("GET", "/api/overview", headers=headers)
        response = connection_.getresponse()
        response.read()
        connection_.close()
        assert response.status == 401 and response.getheader("WWW-Authenticate") is None


# -- no request holds the hub -------------------------------------------------------------------------------

# Far above the 5 ms a filter may take, far below the seconds a backtracking one would.
PROMPT_SECONDS = 1.0


def timed_whoami(port):
    started = time.monotonic()
    connection_ = http.client.HTTPConnection("127.0.0.1", port, timeout=PROMPT_SECONDS * 5)
    try:
        connection_.request("GET", "/api/whoami", headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
        assert connection_.getresponse().status == 200
    finally:
        connection_.close()
    return time.monotonic() - started


def test_a_backtracking_name_filter_is_cut_short_while_other_clients_are_answered(mgmt, name):
    """(a+)+$ against a long name took the hub for seconds with Python's re; the engine now
    answers it at once. (a|aa)+$ backtracks in any engine that can backtrack: it is refused
    within the budget, and a second client polling meanwhile is never kept waiting."""
    long_name = name + "-" + "a" * 60 + "!"
    api(mgmt, "PUT", "queues", "/", long_name, body={"durable": False})
    status, rows = api(mgmt, "GET", "queues", "/", query="?use_regex=true&name=" + quote("(a+)+$"))
    assert status == 200 and rows == []
    status, rows = api(mgmt, "GET", "queues", "/", query="?use_regex=true&name=" + quote("a+!$"))
    assert status == 200 and [row["name"] for row in rows] == [long_name]

    refusals, stop = [], threading.Event()

    def refused_filters():
        try:
            for _ in range(20):
                refusals.append(api(mgmt, "GET", "queues", "/", query="?use_regex=true&name=" + quote("(a|aa)+$")))
        finally:
            stop.set()

    filtering = threading.Thread(target=refused_filters)
    filtering.start()
    waits = []
    while not stop.is_set():
        waits.append(timed_whoami(mgmt.http_port))
    filtering.join()
    assert len(refusals) == 20
    for status, reply in refusals:
        assert status == 400 and reply["error"] == "bad_request" and "5 ms" in reply["reason"], reply
    assert waits and max(waits) < PROMPT_SECONDS, waits
    api(mgmt, "DELETE", "queues", "/", long_name)


# -- errors are errors ----------------------------------------------------------------------------------------

def test_a_publish_a_full_reject_publish_queue_refuses_is_a_400_in_rabbitmqs_words(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name,
        body={"durable": False, "arguments": {"x-max-length": 1, "x-overflow": "reject-publish"}})
    message = {"routing_key": name, "payload": "x", "payload_encoding": "string", "properties": {}}
    assert api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body=message) == (200, {"routed": True})
    assert api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body=message) == \
        (400, {"error": "bad_request", "reason": "rejected Unable to publish message. Check queue limits."})
    assert api(mgmt, "GET", "queues", "/", name)[1]["messages_ready"] == 1


def test_a_publish_whose_user_id_is_not_the_callers_is_refused_as_over_amqp(mgmt, name):
    api(mgmt, "PUT", "queues", "/", name, body={"durable": False})
    message = {"routing_key": name, "payload": "x", "properties": {"user_id": "mallory"}}
    status, reply = api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body=message)
    assert status == 400 and reply["reason"] == ("PRECONDITION_FAILED - user_id property set to 'mallory' "
                                                 "but authenticated user was 'guest'")
    message["properties"]["user_id"] = "guest"
    assert api(mgmt, "POST", "exchanges", "/", "amq.default", "publish", body=message) == (200, {"routed": True})
    assert api(mgmt, "GET", "queues", "/", name)[1]["messages_ready"] == 1


def test_created_and_changed_answer_with_empty_bodies_as_rabbitmq(mgmt, name):
    """201 on the first PUT, 204 on the next, and no body (not `null`) on either."""
    user = name + "-user"
    for method, parts, body in ((("PUT", ("queues", "/", name), {"durable": False})),
                                ("PUT", ("exchanges", "/", name), {"type": "direct", "durable": False}),
                                ("PUT", ("users", user), {"password": "pw", "tags": ""}),
                                ("PUT", ("permissions", "/", user), {"configure": "", "write": "", "read": ""}),
                                ("PUT", ("vhosts", name), {})):
        for expected in (201, 204):
            assert api(mgmt, method, *parts, body=body) == (expected, b""), (parts, expected)
    assert api(mgmt, "POST", "bindings", "/", "e", name, "q", name, body={"routing_key": "k"}) == (201, b"")
    assert api(mgmt, "POST", "definitions", body={}) == (204, b"")
    for parts in (("bindings", "/", "e", name, "q", name, "k"), ("queues", "/", name, "contents"),
                  ("queues", "/", name), ("exchanges", "/", name), ("permissions", "/", user), ("users", user),
                  ("vhosts", name)):
        assert api(mgmt, "DELETE", *parts) == (204, b""), parts


def test_bytes_that_are_not_http_are_logged_once_at_warning_without_the_bytes(mgmt):
    secret = "not-http-" + uuid.uuid4().hex
    head, _ = raw_request(mgmt.http_port, f"\x16\x03{secret}\r\n\r\n".encode())
    assert head.startswith("HTTP/1.1 400 ")
    wait_for(lambda: "is not an HTTP request" in mgmt.log())
    warnings = [line for line in mgmt.log().splitlines() if "is not an HTTP request" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], warnings
    assert secret not in mgmt.log()
