"""export_definitions / import_definitions: RabbitMQ's definitions format, so users,
vhosts, permissions and topology move between brokers, GreenMQ or RabbitMQ, either way.

The round trip through RabbitMQ runs when $GREENMQ_TEST_RABBITMQCTL names a rabbitmqctl
command for a running RabbitMQ (with whatever environment it needs), e.g.
    GREENMQ_TEST_RABBITMQCTL="env HOME=/var/lib/rabbitmq rabbitmqctl -n rabbit@localhost"
"""

import base64
import hashlib
import json
import os
import shlex
import subprocess
import tempfile
import time

import pika
import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess
from tests.greenmqctl_process import failed, greenmqctl as ctl

RABBITMQCTL = os.environ.get("GREENMQ_TEST_RABBITMQCTL")
EXIT_REFUSED = 65


def rabbitmq_hash(password, salt=b"\x01\x02\x03\x04"):
    """A password hash as RabbitMQ writes it (rabbit_password_hashing_sha256)."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def topology(vhost, user):
    """A definitions document with one of everything GreenMQ and RabbitMQ share."""
    return {
        "rabbit_version": "3.10.8",
        "users": [{"name": user, "password_hash": rabbitmq_hash("moved"),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"], "limits": {}}],
        "vhosts": [{"name": vhost, "limits": [], "metadata": {"description": "", "tags": []}}],
        "permissions": [{"user": user, "vhost": vhost, "configure": "^orders\\.", "write": ".*", "read": ".*"}],
        "exchanges": [
            {"name": "orders", "vhost": vhost, "type": "topic", "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}},
            {"name": "orders.headers", "vhost": vhost, "type": "headers", "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}},
        ],
        "queues": [
            {"name": "orders.eu", "vhost": vhost, "durable": True, "auto_delete": False, "type": "classic",
             "arguments": {"x-max-length": 1000, "x-message-ttl": 60000}},
            {"name": "orders.audit", "vhost": vhost, "durable": True, "auto_delete": False, "type": "classic",
             "arguments": {}},
        ],
        "bindings": [
            {"source": "orders", "vhost": vhost, "destination": "orders.eu", "destination_type": "queue",
             "routing_key": "eu.#", "arguments": {}},
            {"source": "orders.headers", "vhost": vhost, "destination": "orders.audit", "destination_type": "queue",
             "routing_key": "", "arguments": {"x-match": "any", "region": "eu"}},
            {"source": "orders", "vhost": vhost, "destination": "orders.headers", "destination_type": "exchange",
             "routing_key": "audit.#", "arguments": {}},
        ],
    }


def import_file(port, tmp_path, document, name="definitions.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return ctl(port, "import_definitions", str(path))


def exported(port, *flags):
    result = ctl(port, "export_definitions", "-", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def of(document, vhost, user):
    """What a document holds of one vhost and one user, in a canonical order."""
    def rows(section, keep):
        return sorted((entry for entry in document.get(section, []) if keep(entry)),
                      key=lambda entry: json.dumps(entry, sort_keys=True))
    in_vhost = lambda entry: entry.get("vhost") == vhost
    return {
        "users": [{key: entry[key] for key in ("name", "password_hash", "hashing_algorithm", "tags")}
                  for entry in rows("users", lambda entry: entry["name"] == user)],
        "vhosts": [entry["name"] for entry in rows("vhosts", lambda entry: entry["name"] == vhost)],
        "permissions": rows("permissions", in_vhost),
        # RabbitMQ 3.10 writes no "internal" (it reads it, false when absent)
        "exchanges": [{key: entry[key] for key in ("name", "vhost", "type", "durable", "auto_delete", "arguments")}
                      for entry in rows("exchanges", in_vhost)],
        "queues": [{key: entry[key] for key in ("name", "vhost", "durable", "auto_delete", "arguments")}
                   for entry in rows("queues", in_vhost)],
        "bindings": rows("bindings", in_vhost),
    }


def test_import_then_export_gives_back_the_same_definitions_and_they_work(tmp_path):
    document = topology("shop", "shop-app")
    with BrokerProcess("--in-memory") as first:
        assert import_file(first.port, tmp_path, document).returncode == 0
        assert of(exported(first.port), "shop", "shop-app") == of(document, "shop", "shop-app")
        # the imported user logs in with the password its RabbitMQ hash was made from
        with connection.Connection("127.0.0.1", first.port, "shop-app", "moved", "shop") as client:
            channel = client.channel()
            channel.basic_publish("orders", "eu.paris", b"order")
            channel.basic_publish("orders.headers", "", b"audited", connection.BasicProperties(headers={"region": "eu"}))
            assert channel.basic_get("orders.eu", auto_ack=True)[2] == b"order"
            assert channel.basic_get("orders.audit", auto_ack=True)[2] == b"audited"
            with pytest.raises(connection.AccessRefused):
                channel.queue_declare("payments")     # configure is ^orders\. only

        with BrokerProcess("--in-memory") as second:    # GreenMQ -> GreenMQ, users with GreenMQ hashes too
            ctl(first.port, "add_user", "local", "pw")
            (tmp_path / "all.json").write_text(json.dumps(exported(first.port)))
            assert ctl(second.port, "import_definitions", str(tmp_path / "all.json")).returncode == 0
            assert exported(second.port)["users"] == exported(first.port)["users"]
            for vhost in ("shop", "/"):
                assert of(exported(second.port), vhost, "local") == of(exported(first.port), vhost, "local")
            connection.Connection("127.0.0.1", second.port, "shop-app", "moved", "shop").close()


def test_importing_twice_changes_nothing_the_second_time(tmp_path):
    document = topology("twice", "twice-app")
    with BrokerProcess("--in-memory") as broker:
        assert import_file(broker.port, tmp_path, document).returncode == 0
        once = exported(broker.port)
        result = import_file(broker.port, tmp_path, document)
        assert result.returncode == 0 and "Imported definitions" in result.stdout
        assert exported(broker.port) == once
        for section in ("exchanges", "queues", "bindings", "permissions"):
            document[section] = document[section] * 2     # the same entries twice in one file
        assert import_file(broker.port, tmp_path, document).returncode == 0
        assert exported(broker.port) == once


def test_definitions_survive_a_restart(tmp_path):
    data_dir = str(tmp_path / "data")
    with BrokerProcess(data_dir=data_dir) as broker:
        assert import_file(broker.port, tmp_path, topology("kept", "kept-app")).returncode == 0
        before = of(exported(broker.port), "kept", "kept-app")
    with BrokerProcess(data_dir=data_dir) as broker:
        assert of(exported(broker.port), "kept", "kept-app") == before


def broken(change):
    document = topology("broken", "broken-app")
    change(document)
    return document


@pytest.mark.parametrize("document, message", [
    (broken(lambda d: d["permissions"][0].update(configure="(")),
     "PRECONDITION_FAILED - definitions: permissions[0]: configure permission '(' is not a regular expression"),
    (broken(lambda d: d["permissions"][0].update(vhost="elsewhere")),
     "NOT_FOUND - definitions: permissions[0]: no vhost 'elsewhere'"),
    (broken(lambda d: d["permissions"][0].update(user="nobody")),
     "NOT_FOUND - definitions: permissions[0]: no user 'nobody'"),
    (broken(lambda d: d["users"][0].update(hashing_algorithm="rot13")),
     "PRECONDITION_FAILED - definitions: users[0]: unknown hashing_algorithm 'rot13'"),
    (broken(lambda d: d["users"][0].update(password_hash="not base64!")),
     "PRECONDITION_FAILED - definitions: users[0]: password_hash is not a rabbit_password_hashing_sha256 hash"),
    (broken(lambda d: d["users"][0].update(password_hash=base64.b64encode(b"salt" + b"short").decode())),
     "PRECONDITION_FAILED - definitions: users[0]: password_hash is not a rabbit_password_hashing_sha256 hash"),
    (broken(lambda d: d["users"][0].update(hashing_algorithm="greenmq_pbkdf2_sha256",
                                           password_hash="9999999999$AAAA$" + "A" * 43 + "=")),
     "PRECONDITION_FAILED - definitions: users[0]: password_hash is not a greenmq_pbkdf2_sha256 hash"),
    (broken(lambda d: d["exchanges"][1].update(type="fancy")),
     "PRECONDITION_FAILED - definitions: exchanges[1]: unknown exchange type 'fancy'"),
    (broken(lambda d: d["queues"][0]["arguments"].update({"x-message-ttl": "long"})),
     "PRECONDITION_FAILED - definitions: queues[0]: invalid arg 'x-message-ttl'"),
    (broken(lambda d: d["queues"][1].update(type="lazy")),
     "PRECONDITION_FAILED - definitions: queues[1]: invalid arg 'x-queue-type'"),
    (broken(lambda d: d["queues"][1].update(type="quorum", auto_delete=True)),
     "PRECONDITION_FAILED - definitions: queues[1]: invalid property 'auto-delete'"),
    (broken(lambda d: d["bindings"][1].update(destination="missing")),
     "NOT_FOUND - definitions: bindings[1]: no queue 'missing' in vhost 'broken'"),
    (broken(lambda d: d["bindings"][0].update(source="missing")),
     "NOT_FOUND - definitions: bindings[0]: no exchange 'missing' in vhost 'broken'"),
    (broken(lambda d: d["bindings"][1]["arguments"].update({"x-match": "some"})),
     "PRECONDITION_FAILED - definitions: bindings[1]: invalid x-match field value 'some'"),
    (broken(lambda d: d["bindings"][0].update(destination_type="exchange")),
     "NOT_FOUND - definitions: bindings[0]: no exchange 'orders.eu' in vhost 'broken'"),
    (broken(lambda d: d["bindings"][0].update(destination_type="stream")),
     "PRECONDITION_FAILED - definitions: bindings[0]: unknown destination_type 'stream'"),
    (broken(lambda d: d["queues"][0].update(durable="yes")),
     "SYNTAX_ERROR - definitions: queues[0]: 'durable' must be true or false"),
    (broken(lambda d: d.update(global_parameters=[{"name": "cluster_name", "value": "x"}])),
     "PRECONDITION_FAILED - definitions: 'global_parameters' are not supported by GreenMQ"),
    (broken(lambda d: d.update(policies=[{"vhost": "broken", "name": "ttl", "pattern": "^",
                                          "definition": {"message-ttl": "long"}}])),
     'PRECONDITION_FAILED - definitions: policies[0]: Validation failed'),
    (broken(lambda d: d.update(policies=[{"vhost": "elsewhere", "name": "ttl", "pattern": "^",
                                          "definition": {"message-ttl": 1}}])),
     "NOT_FOUND - definitions: policies[0]: no vhost 'elsewhere'"),
    (broken(lambda d: d["queues"].append(dict(d["queues"][0], durable=False))),
     "PRECONDITION_FAILED - definitions: queues[2]: queue 'orders.eu' in vhost 'broken' exists with other properties"),
    (broken(lambda d: d["exchanges"].append(dict(d["exchanges"][0], type="fanout"))),
     "PRECONDITION_FAILED - definitions: exchanges[2]: exchange 'orders' in vhost 'broken' exists with other "
     "properties"),
    (broken(lambda d: d.update(colours=[])), "SYNTAX_ERROR - definitions: unknown section 'colours'"),
    (broken(lambda d: d.update(queues={})), "SYNTAX_ERROR - definitions: 'queues' must be a list"),
    (broken(lambda d: d["exchanges"].append(
        {"name": "amq.direct", "vhost": "/", "type": "fanout", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}})),
     "PRECONDITION_FAILED - definitions: exchanges[2]: exchange 'amq.direct' in vhost '/' exists with other "
     "properties"),
])
def test_a_bad_definitions_file_is_refused_whole_with_the_entry_named(broker, tmp_path, document, message):
    before = exported(broker.port)
    line = failed(import_file(broker.port, tmp_path, document), EXIT_REFUSED)
    assert line.startswith(f"Error: {message}")
    assert exported(broker.port) == before          # not even the entries before the bad one


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (b"\xff\xfe", "is not UTF-8 text"),
])
def test_a_malformed_definitions_file_is_refused_before_the_broker_is_asked(broker, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert message in failed(ctl(broker.port, "import_definitions", str(path)), EXIT_REFUSED)


def test_only_administrators_export_and_import(broker, tmp_path):
    ctl(broker.port, "add_user", "watcher", "pw")
    ctl(broker.port, "set_user_tags", "watcher", "monitoring")
    try:
        as_watcher = {"GREENMQ_USER": "watcher", "GREENMQ_PASSWORD": "pw", "GREENMQ_VHOST": "/"}
        ctl(broker.port, "set_permissions", "watcher", ".*", ".*", ".*")
        failed(ctl(broker.port, "export_definitions", "-", env=as_watcher), 77)
        (tmp_path / "d.json").write_text(json.dumps(topology("w", "w")))
        failed(ctl(broker.port, "import_definitions", str(tmp_path / "d.json"), env=as_watcher), 77)
    finally:
        ctl(broker.port, "delete_user", "watcher")


def test_export_for_rabbitmq_leaves_out_greenmq_hashes_and_says_so(tmp_path):
    with BrokerProcess("--in-memory") as broker:
        assert import_file(broker.port, tmp_path, topology("r", "r-app")).returncode == 0
        result = ctl(broker.port, "export_definitions", "-", "--for-rabbitmq")
        document = json.loads(result.stdout)
        assert [user["name"] for user in document["users"]] == ["r-app"]
        assert {permission["user"] for permission in document["permissions"]} == {"r-app"}
        assert "left out users whose password hashes RabbitMQ cannot check: guest" in result.stderr


@pytest.mark.skipif(not RABBITMQCTL, reason="needs $GREENMQ_TEST_RABBITMQCTL: a rabbitmqctl command for a "
                                            "running RabbitMQ")
def test_definitions_go_from_greenmq_to_rabbitmq_and_back(tmp_path):
    vhost, user = f"greenmq-definitions-{os.getpid()}", f"greenmq-definitions-{os.getpid()}"
    rabbitmqctl = shlex.split(RABBITMQCTL)

    def rabbit(*args, input=None):
        result = subprocess.run([*rabbitmqctl, *args], input=input, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    with BrokerProcess("--in-memory") as greenmq:
        assert import_file(greenmq.port, tmp_path, topology(vhost, user)).returncode == 0
        assert ctl(greenmq.port, "export_definitions", str(tmp_path / "from-greenmq.json"),
                   "--for-rabbitmq").returncode == 0
        original = of(exported(greenmq.port), vhost, user)
    try:
        # rabbitmqctl may run as another user (Debian's does), who cannot read the test's
        # files, and it does not read standard input: a readable copy in the temporary folder.
        handle, readable = tempfile.mkstemp(suffix=".json")
        with os.fdopen(handle, "w") as file:
            file.write((tmp_path / "from-greenmq.json").read_text())
        os.chmod(readable, 0o644)
        try:
            rabbit("import_definitions", readable)
        finally:
            os.unlink(readable)
        deadline = time.monotonic() + 60        # RabbitMQ imports in the background
        while True:
            try:
                from_rabbitmq = json.loads(rabbit("-q", "export_definitions", "-"))
            except ValueError:
                from_rabbitmq = {}                  # busy importing: it answers with an Erlang term
            if of(from_rabbitmq, vhost, user) == original:
                break
            assert time.monotonic() < deadline, (of(from_rabbitmq, vhost, user), original)
            time.sleep(0.5)
        amqp_url = os.environ.get("GREENMQ_TEST_AMQP_URL")
        if amqp_url:       # the user's password moved with its hash
            parameters = pika.URLParameters(amqp_url)
            parameters.credentials = pika.PlainCredentials(user, "moved")
            parameters.virtual_host = vhost
            pika.BlockingConnection(parameters).close()
        mine = {section: [entry for entry in from_rabbitmq.get(section, [])
                          if entry.get("vhost", entry.get("name")) in (vhost, user)]
                for section in ("users", "vhosts", "permissions", "queues", "exchanges", "bindings")}
        mine["rabbit_version"] = from_rabbitmq["rabbit_version"]
        with BrokerProcess("--in-memory") as back:
            assert import_file(back.port, tmp_path, mine, "from-rabbitmq.json").returncode == 0
            assert of(exported(back.port), vhost, user) == original
            connection.Connection("127.0.0.1", back.port, user, "moved", vhost).close()
    finally:
        subprocess.run([*rabbitmqctl, "delete_vhost", vhost], capture_output=True, timeout=120)
        subprocess.run([*rabbitmqctl, "delete_user", user], capture_output=True, timeout=120)
