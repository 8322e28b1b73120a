"""Users, password hashes, tags, permissions and virtual hosts: kept in the store, checked
at login, refused with RabbitMQ's words."""

import base64
import hashlib
import logging

import pika
import pytest

from greenmq import access
from greenmq import node as node_module
from greenmq.access import Permission, User, hash_password
from greenmq.store.sqlite import SqliteStore
from greenmq.errors import AccessRefused, NotAllowed, NotFound, PreconditionFailed
from greenmq.node import Node
from tests.broker_process import BrokerProcess
from tests.test_core_queues import PEER, RecordingSink, login


def test_a_first_start_has_guest_with_full_rights_on_the_default_vhost():
    node = Node()
    assert set(node.vhosts) == {"/"}
    assert node.users["guest"].tags == ("administrator",)
    permission = node.permissions["guest", "/"]
    assert (permission.configure, permission.write, permission.read) == (".*", ".*", ".*")
    assert node.users["guest"].password_hash != "guest"


def test_passwords_are_salted_and_slow_to_guess():
    first, second = hash_password("secret"), hash_password("secret")
    assert first != second
    assert first.startswith(f"{access.PBKDF2_ITERATIONS}$")
    user = User("u", first)
    assert user.check_password("secret") and not user.check_password("Secret")
    assert not User("u", "damaged$hash").check_password("secret")
    assert not User("u", "").check_password("")


def test_rabbitmq_password_hashes_from_imported_definitions_are_understood():
    salt = b"\x01\x02\x03\x04"
    rabbit_hash = base64.b64encode(salt + hashlib.sha256(salt + b"s3cret").digest()).decode()
    user = User("imported", rabbit_hash, "rabbit_password_hashing_sha256")
    assert user.check_password("s3cret") and not user.check_password("other")
    with pytest.raises(PreconditionFailed, match="unknown hashing algorithm 'rot13'"):
        User("u", "x", "rot13")


def test_users_vhosts_and_permissions_survive_a_restart(tmp_path):
    node = Node(SqliteStore(str(tmp_path)))
    node.add_vhost("orders")
    node.add_user("app", "app-password", ["monitoring"])
    node.set_permissions("app", "orders", "^app\\.", "^app\\.|amq\\.default", ".*")
    node.add_user("gone", "x")
    node.delete_user("gone")
    node.close()
    again = Node(SqliteStore(str(tmp_path)))
    assert set(again.vhosts) == {"/", "orders"}
    assert set(again.users) == {"guest", "app"} and again.users["app"].tags == ("monitoring",)
    assert again.permissions["app", "orders"].configure == "^app\\."
    assert again.authenticate("app", "app-password", PEER).name == "app"
    again.delete_vhost("orders")
    again.close()
    third = Node(SqliteStore(str(tmp_path)))
    assert set(third.vhosts) == {"/"} and ("app", "orders") not in third.permissions
    third.close()


def test_wrong_logins_are_refused_logged_with_user_and_peer_and_slowed(monkeypatch, caplog):
    node = Node()
    delays = []
    monkeypatch.setattr(node_module.gevent, "sleep", delays.append)
    caplog.set_level(logging.WARNING, logger="greenmq")
    for attempt in range(4):
        with pytest.raises(AccessRefused, match="Login was refused using authentication mechanism PLAIN"):
            node.authenticate("guest", "wrong", ("127.0.0.9", 4242))
    with pytest.raises(AccessRefused):
        node.authenticate("nobody", "x", ("127.0.0.9", 4243))
    assert "login refused for user 'guest' from 127.0.0.9:4242 (PLAIN): wrong password" in caplog.text
    assert "login refused for user 'nobody' from 127.0.0.9:4243 (PLAIN): unknown user" in caplog.text
    assert delays == [0.1, 0.2, 0.4, 0.8]         # the first failure is not delayed
    node.authenticate("guest", "guest", ("127.0.0.9", 4244))
    with pytest.raises(AccessRefused):
        node.authenticate("guest", "wrong", ("127.0.0.9", 4245))
    assert delays == [0.1, 0.2, 0.4, 0.8]         # a success starts the count again


def test_guest_may_only_log_in_over_loopback():
    node = Node()
    with pytest.raises(AccessRefused, match="User 'guest' can only connect via localhost"):
        node.authenticate("guest", "guest", ("192.0.2.7", 5000))
    node.add_user("remote", "pw")
    assert node.authenticate("remote", "pw", ("192.0.2.7", 5000)).name == "remote"


def test_a_user_without_permissions_on_a_vhost_cannot_open_it():
    node = Node()
    node.add_user("app", "pw")
    with pytest.raises(NotAllowed, match="access to vhost '/' refused for user 'app'"):
        node.open_session(node.authenticate("app", "pw", PEER), "/", PEER, "test", RecordingSink())


def test_user_and_permission_requests_name_what_is_wrong():
    node = Node()
    with pytest.raises(NotFound, match="no user 'ghost'"):
        node.set_permissions("ghost", "/", ".*", ".*", ".*")
    with pytest.raises(NotFound, match="no vhost 'nowhere'"):
        node.set_permissions("guest", "nowhere", ".*", ".*", ".*")
    with pytest.raises(PreconditionFailed, match="configure permission '\\[' is not a regular expression"):
        node.set_permissions("guest", "/", "[", ".*", ".*")
    assert node.permissions["guest", "/"].configure == ".*"      # unchanged
    with pytest.raises(PreconditionFailed, match="user 'guest' already exists"):
        node.add_user("guest", "x")


def test_permission_patterns_match_as_rabbitmq_matches_them():
    permission = Permission(configure="^app\\.", write="", read="log")
    permission.check("configure", "queue", "app.tasks", "/", "u")
    permission.check("read", "queue", "my.logs", "/", "u")          # anywhere in the name
    with pytest.raises(AccessRefused) as refused:
        permission.check("configure", "queue", "other", "/", "u")
    assert str(refused.value) == "ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 'u'"
    with pytest.raises(AccessRefused, match="access to exchange 'amq.default' in vhost 'v' refused"):
        permission.check("write", "exchange", "", "v", "u")         # empty: nothing at all


def test_changed_permissions_apply_to_open_sessions_at_once():
    node = Node()
    node.add_user("app", "pw")
    node.set_permissions("app", "/", ".*", ".*", ".*")
    session = login(node, RecordingSink(), "app", "pw")
    session.check("configure", "queue", "q")
    node.set_permissions("app", "/", "^other$", ".*", ".*")
    with pytest.raises(AccessRefused):
        session.check("configure", "queue", "q")
    node.clear_permissions("app", "/")
    with pytest.raises(AccessRefused):
        session.check("read", "queue", "q")


def test_a_wrong_password_over_amqp_is_refused_and_logged():
    with BrokerProcess() as broker:
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(f"amqp://guest:nope@127.0.0.1:{broker.amqp_port}/%2f"))
        log = broker.log()
    assert "login refused for user 'guest' from 127.0.0.1:" in log and "(PLAIN): wrong password" in log
    assert "Traceback" not in log
