"""Policies and operator policies, through the front door: set over the HTTP API and
greenmqctl, felt over AMQP (pika). The tests over HTTP and AMQP run against GreenMQ and,
when $GREENMQ_TEST_AMQP_URL names one, against a reference RabbitMQ too (its management
API at $GREENMQ_TEST_MANAGEMENT_URL, default http://127.0.0.1:15682), which applies a
policy a moment after answering: effects are awaited, never assumed."""

import html
import json
import os
import re
import time
from urllib.parse import urlparse

import pika
import pytest

from tests.broker_process import BrokerProcess
from tests.test_amqp_queue_features import bodies
from tests.test_limits import user  # noqa: F401 - a fixture: a user with rights in /
from tests.greenmqctl_process import greenmqctl as ctl, greenmqctl_json as ctl_json
from tests.http_api import call, path

EXIT_REFUSED = 65
# How long a reference RabbitMQ may take to apply a policy to its queues.
SETTLE_SECONDS = 10


class Target:
    """A broker under test as these tests speak to it: its management API and AMQP port.
    Policies it was given are cleared when the test ends."""

    def __init__(self, http_port, amqp_url, greenmq):
        self.http_port, self.amqp_url, self.greenmq = http_port, amqp_url, greenmq
        self.made = []          # (kind path, name)
        self.connection = None

    def put(self, name, pattern, definition, kind="policies", **fields):
        body = {"pattern": pattern, "definition": definition, **fields}
        status, reply = call(self.http_port, "PUT", path(kind, "/", name), body)
        if status in (201, 204):
            self.made.append((kind, name))
        return status, reply

    def clear(self, name, kind="policies"):
        return call(self.http_port, "DELETE", path(kind, "/", name))[0]

    def channel(self):
        if self.connection is None:
            self.connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        return self.connection.channel()

    def ready(self, queue):
        return self.channel().queue_declare(queue, passive=True).method.message_count

    def close(self):
        for kind, name in self.made:
            self.clear(name, kind)
        if self.connection is not None and self.connection.is_open:
            self.connection.close()


def reference_target():
    url = os.environ.get("GREENMQ_TEST_AMQP_URL")
    if not url:
        pytest.skip("no reference broker: set GREENMQ_TEST_AMQP_URL (and GREENMQ_TEST_MANAGEMENT_URL)")
    management = urlparse(os.environ.get("GREENMQ_TEST_MANAGEMENT_URL", "http://127.0.0.1:15682"))
    return Target(management.port, url, greenmq=False)


@pytest.fixture(params=["greenmq", "reference"])
def target(request, broker):
    t = (Target(broker.http_port, f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", greenmq=True)
         if request.param == "greenmq" else reference_target())
    yield t
    t.close()


@pytest.fixture
def greenmq(broker):
    t = Target(broker.http_port, f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", greenmq=True)
    yield t
    t.close()


@pytest.fixture
def queue(target, name):
    """A queue named `name` on the target, deleted after the test; yields a channel."""
    channel = target.channel()
    channel.queue_declare(name)
    yield channel
    target.channel().queue_delete(name)


def exactly(name):
    return "^" + re.escape(name) + "$"


def eventually(condition, seconds=SETTLE_SECONDS):
    """Waits for `condition()` to hold (a reference broker applies policies asynchronously;
    GreenMQ before it answers, so there the first look succeeds)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def publish(channel, queue, count, prefix="m"):
    for i in range(count):
        channel.basic_publish("", queue, f"{prefix}{i}".encode())


def queue_json(target, queue):
    return call(target.http_port, "GET", path("queues", "/", queue))[1]


# -- what policies do to queues ---------------------------------------------------------------

def test_a_message_ttl_policy_expires_messages_and_clearing_it_keeps_them(target, name):
    channel = target.channel()
    channel.queue_declare(name, auto_delete=False)
    try:
        assert target.put(name, exactly(name), {"message-ttl": 50}, **{"apply-to": "queues"})[0] == 201
        eventually(lambda: (publish(channel, name, 1), time.sleep(0.1), target.ready(name))[2] == 0)
        assert target.clear(name) == 204
        eventually(lambda: (publish(channel, name, 1, "kept"), time.sleep(0.1), target.ready(name))[2] > 0)
    finally:
        channel.queue_delete(name)


def test_messages_queued_before_a_message_ttl_policy_keep_theirs(target, name, queue):
    """RabbitMQ gives a message its expiry as it is queued; a later TTL is for later messages."""
    channel = queue
    publish(channel, name, 1, "before")
    assert target.put(name, exactly(name), {"message-ttl": 20})[0] == 201
    time.sleep(0.3)
    assert bodies(channel, name) == [b"before0"]


def test_a_lowered_max_length_drops_the_oldest_at_once_and_clearing_it_lifts_the_limit(target, name, queue):
    channel = queue
    publish(channel, name, 5)
    assert target.put(name, exactly(name), {"max-length": 2})[0] == 201
    eventually(lambda: target.ready(name) == 2)
    publish(channel, name, 1, "new")
    assert bodies(channel, name) == [b"m4", b"new0"]
    assert target.clear(name) == 204
    eventually(lambda: (publish(channel, name, 1, "more"), target.ready(name))[1] >= 3)


def test_a_lowered_max_length_drops_nothing_from_a_reject_publish_queue(target, name):
    """RabbitMQ drops over a new limit only when overflow is drop-head; reject-publish refuses new messages."""
    channel = target.channel()
    channel.queue_declare(name, arguments={"x-overflow": "reject-publish"})
    try:
        publish(channel, name, 5)
        assert target.put(name, exactly(name), {"max-length": 2})[0] == 201
        channel.confirm_delivery()
        eventually(lambda: not _published(channel, name))
        assert target.ready(name) == 5
    finally:
        channel.queue_delete(name)


def test_a_policy_moving_a_queue_to_reject_publish_drops_over_its_limit_once(target, name, queue):
    """RabbitMQ takes the policy's max-length under the overflow the queue had (drop-head),
    then its overflow: the oldest go down to the limit, and later publishes are refused."""
    channel = queue
    publish(channel, name, 5)
    assert target.put(name, exactly(name), {"max-length": 2, "overflow": "reject-publish"})[0] == 201
    eventually(lambda: target.ready(name) == 2)
    channel.confirm_delivery()
    eventually(lambda: not _published(channel, name))
    assert bodies(channel, name) == [b"m3", b"m4"]


def test_a_message_ttl_policy_of_0_drops_a_new_message_behind_older_ones(target, name, queue):
    """RabbitMQ drops at once what a queue TTL of 0 gives no consumer, wherever the head is;
    the messages queued before the policy keep theirs."""
    channel = queue
    publish(channel, name, 2, "before")
    assert target.put(name, exactly(name), {"message-ttl": 0})[0] == 201
    eventually(lambda: (publish(channel, name, 1, "after"), target.ready(name))[1] == 2)
    assert bodies(channel, name) == [b"before0", b"before1"]


def _published(channel, queue):
    try:
        channel.basic_publish("", queue, b"one more")
        return True
    except pika.exceptions.NackError:
        return False


def test_a_max_length_bytes_policy_counts_the_bytes_of_a_plain_queue(target, name, queue):
    channel = queue
    for body in (b"a" * 10, b"b" * 10, b"c" * 10):
        channel.basic_publish("", name, body)
    assert target.put(name, exactly(name), {"max-length-bytes": 15})[0] == 201
    eventually(lambda: target.ready(name) == 1)
    channel.basic_publish("", name, b"d" * 10)
    assert bodies(channel, name) == [b"d" * 10]


def test_a_policys_dead_letter_exchange_takes_rejected_messages(target, name):
    channel = target.channel()
    channel.queue_declare(name)
    channel.queue_declare(name + ".dead")
    try:
        assert target.put(name, exactly(name), {"dead-letter-exchange": "",
                                                "dead-letter-routing-key": name + ".dead"})[0] == 201
        time.sleep(0.2 if not target.greenmq else 0)    # the reference applies it a moment later
        publish(channel, name, 1)
        method, _, _ = channel.basic_get(name)
        channel.basic_reject(method.delivery_tag, requeue=False)
        eventually(lambda: target.ready(name + ".dead") == 1)
    finally:
        channel.queue_delete(name)
        channel.queue_delete(name + ".dead")


def test_an_expires_policy_deletes_an_unused_queue(target, name):
    channel = target.channel()
    channel.queue_declare(name)
    assert target.put(name, exactly(name), {"expires": 100})[0] == 201
    # Asked over HTTP: a passive declare would be a use, which restarts the clock.
    eventually(lambda: call(target.http_port, "GET", path("queues", "/", name))[0] == 404)


def test_clearing_an_expires_policy_stops_the_queues_clock(target, name, queue):
    assert target.put(name, exactly(name), {"expires": 300})[0] == 201
    assert target.clear(name) == 204
    time.sleep(0.6)
    assert call(target.http_port, "GET", path("queues", "/", name))[0] == 200


def test_setting_an_unrelated_policy_does_not_restart_a_queues_expiry_clock(target, name):
    channel = target.channel()
    channel.queue_declare(name)
    assert target.put(name, exactly(name), {"expires": 300})[0] == 201
    deadline = time.monotonic() + SETTLE_SECONDS
    for round in range(10 ** 6):      # another policy every 50 ms, each a change that matches nothing
        if call(target.http_port, "GET", path("queues", "/", name))[0] == 404:
            break
        assert time.monotonic() < deadline, "the queue never expired"
        assert target.put(name + "-other", "^nothing-here$", {"max-length": round + 1})[0] in (201, 204)
        time.sleep(0.05)


def test_the_lower_of_operator_policy_and_policy_wins_for_limits(target, name, queue):
    channel = queue
    assert target.put(name, exactly(name), {"max-length": 4, "message-ttl": 600000})[0] == 201
    assert target.put(name, exactly(name), {"max-length": 2}, kind="operator-policies")[0] == 201
    publish(channel, name, 5)
    eventually(lambda: target.ready(name) == 2)
    assert target.put(name, exactly(name), {"max-length": 9}, kind="operator-policies")[0] == 204
    eventually(lambda: (publish(channel, name, 1), target.ready(name))[1] == 4)
    if target.greenmq:
        shown = queue_json(target, name)
        assert (shown["policy"], shown["operator_policy"]) == (name, name)
        assert shown["effective_policy_definition"] == {"max-length": 4, "message-ttl": 600000}


def test_a_queue_argument_wins_over_a_policy_for_dead_lettering_and_the_lower_for_limits(target, name):
    channel = target.channel()
    # The policy's routing key sorts first, so that taking the lower would pick it.
    channel.queue_declare(name + ".b-argument-dlq")
    channel.queue_declare(name + ".a-policy-dlq")
    channel.queue_declare(name, arguments={"x-max-length": 3, "x-dead-letter-exchange": "",
                                           "x-dead-letter-routing-key": name + ".b-argument-dlq"})
    try:
        assert target.put(name, exactly(name), {"max-length": 10, "dead-letter-exchange": "",
                                                "dead-letter-routing-key": name + ".a-policy-dlq"})[0] == 201
        assert target.put(name + "-op", exactly(name), {"max-length": 2}, kind="operator-policies")[0] == 201
        publish(channel, name, 4)       # the operator policy's 2 is the lowest: two drop, dead-lettered
        eventually(lambda: target.ready(name + ".b-argument-dlq") == 2)
        assert target.ready(name) == 2 and target.ready(name + ".a-policy-dlq") == 0
        assert target.clear(name + "-op", kind="operator-policies") == 204
        eventually(lambda: (publish(channel, name, 1), target.ready(name))[1] == 3)   # the argument's 3 now
    finally:
        for queue in (name, name + ".b-argument-dlq", name + ".a-policy-dlq"):
            channel.queue_delete(queue)


def test_the_lower_of_a_queues_message_ttl_argument_and_a_policys_wins(target, name):
    channel = target.channel()
    channel.queue_declare(name, arguments={"x-message-ttl": 600000})
    try:
        assert target.put(name, exactly(name), {"message-ttl": 50})[0] == 201
        eventually(lambda: (publish(channel, name, 1), time.sleep(0.1), target.ready(name))[2] == 0)
    finally:
        channel.queue_delete(name)


def test_of_the_matching_policies_the_highest_priority_applies_alone(target, name, queue):
    channel = queue
    assert target.put(name + "-low", exactly(name), {"max-length": 1, "message-ttl": 1}, priority=1)[0] == 201
    assert target.put(name + "-high", exactly(name), {"max-length": 3}, priority=2)[0] == 201
    eventually(lambda: (publish(channel, name, 1), target.ready(name))[1] == 3)
    if target.greenmq:
        shown = queue_json(target, name)
        assert shown["policy"] == name + "-high"
        assert shown["effective_policy_definition"] == {"max-length": 3}


def test_a_policy_applies_to_queues_declared_later_and_only_to_what_apply_to_names(target, name):
    assert target.put(name, "^" + re.escape(name), {"max-length": 1}, **{"apply-to": "exchanges"})[0] == 201
    assert target.put(name + "-q", "^" + re.escape(name) + r"\.q", {"max-length": 2},
                      **{"apply-to": "queues"})[0] == 201
    time.sleep(0.2 if not target.greenmq else 0)
    channel = target.channel()
    channel.queue_declare(name + ".q")
    channel.queue_declare(name + ".other")
    try:
        publish(channel, name + ".q", 4)
        publish(channel, name + ".other", 4)
        assert target.ready(name + ".q") == 2
        assert target.ready(name + ".other") == 4       # a policy for exchanges leaves queues alone
    finally:
        channel.queue_delete(name + ".q")
        channel.queue_delete(name + ".other")


def test_a_policy_holding_a_quorum_queue_key_does_not_apply_to_a_classic_queue(target, name, queue):
    channel = queue
    assert target.put(name, exactly(name), {"max-length": 1, "delivery-limit": 5})[0] == 201
    time.sleep(0.2 if not target.greenmq else 0)
    publish(channel, name, 3)
    assert target.ready(name) == 3
    if target.greenmq:
        assert queue_json(target, name)["policy"] is None


def test_a_delivery_limit_policy_applies_to_a_quorum_queue(target, name):
    """A quorum queue takes delivery-limit from a policy: a message returned past it is
    dropped (there is no dead-letter exchange), as x-delivery-limit would drop it."""
    channel = target.channel()
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        assert target.put(name, exactly(name), {"delivery-limit": 1})[0] == 201
        eventually(lambda: queue_json(target, name).get("effective_policy_definition") == {"delivery-limit": 1})
        channel.confirm_delivery()
        channel.basic_publish("", name, b"poison")
        for _ in range(2):      # delivered, returned once (within the limit), returned again
            method, _, body = channel.basic_get(name)
            assert body == b"poison"
            channel.basic_nack(method.delivery_tag, requeue=True)
        eventually(lambda: target.ready(name) == 0)
        assert channel.basic_get(name) == (None, None, None)
    finally:
        channel.queue_delete(name)


def test_a_stream_takes_its_retention_by_policy_and_no_classic_queue_key(target, name):
    """RabbitMQ 3.10 applies max-length-bytes, max-age, segment size and the leader locator
    to a stream; a policy holding any other key (max-length here) passes it by."""
    channel = target.channel()
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
    try:
        assert target.put(name, exactly(name), {"max-length": 5})[0] == 201
        assert target.put(name + ".bytes", exactly(name), {"max-length-bytes": 1000000}, priority=-1)[0] == 201
        eventually(lambda: queue_json(target, name).get("policy") == name + ".bytes")
        assert queue_json(target, name)["effective_policy_definition"] == {"max-length-bytes": 1000000}
    finally:
        channel.queue_delete(name)


def test_an_alternate_exchange_by_policy_takes_what_the_exchange_routes_nowhere(target, name):
    channel = target.channel()
    channel.exchange_declare(name, "direct")
    channel.exchange_declare(name + ".ae", "fanout")
    channel.queue_declare(name + ".unrouted")
    channel.queue_bind(name + ".unrouted", name + ".ae")
    try:
        assert target.put(name, exactly(name), {"alternate-exchange": name + ".ae"},
                          **{"apply-to": "exchanges"})[0] == 201
        eventually(lambda: (channel.basic_publish(name, "nowhere", b"lost?"), target.ready(name + ".unrouted"))[1] > 0)
        if target.greenmq:
            exchange = call(target.http_port, "GET", path("exchanges", "/", name))[1]
            assert exchange["policy"] == name and exchange["arguments"] == {}
        assert target.clear(name) == 204
        time.sleep(0.2 if not target.greenmq else 0)
        count = target.ready(name + ".unrouted")
        channel.basic_publish(name, "nowhere", b"lost")
        assert target.ready(name + ".unrouted") == count
    finally:
        channel.exchange_delete(name)
        channel.exchange_delete(name + ".ae")
        channel.queue_delete(name + ".unrouted")


# -- refusals, as RabbitMQ words them ------------------------------------------------------------

def reason(reply):
    """A refusal's reason without GreenMQ's "CODE - " (RabbitMQ's API has none) and with
    RabbitMQ's HTML escaping undone (GreenMQ's JSON needs none)."""
    return html.unescape(re.sub(r"^[A-Z_]+ - ", "", reply["reason"]))


@pytest.mark.parametrize("kind, body, expected", [
    ("policies", {"pattern": "a", "definition": {"foo": 1, "bar": 2}},
     'Validation failed\n\n[{<<"bar">>,2},{<<"foo">>,1}] are not recognised policy settings\n'),
    ("policies", {"pattern": "a", "definition": {"message-ttl": "x", "foo": 1}},
     'Validation failed\n\n<<"x">> is not a valid message TTL\n'),
    ("policies", {"pattern": "a", "definition": {"message-ttl": "x", "max-length": -1}},
     "Validation failed\n\n-1 is not a valid maximum length\n"),
    ("policies", {"pattern": "a", "definition": {"expires": 0}}, "Validation failed\n\n0 is not a valid queue expiry\n"),
    ("policies", {"pattern": "a", "definition": {"max-length": 1.5}},
     "Validation failed\n\n1.5 is not a valid maximum length\n"),
    ("policies", {"pattern": "a", "definition": {"message-ttl": True}},
     "Validation failed\n\ntrue is not a valid message TTL\n"),
    ("policies", {"pattern": "a", "definition": {"overflow": "bogus"}},
     'Validation failed\n\n<<"bogus">> is not a valid overflow value\n'),
    ("policies", {"pattern": "a", "definition": {"queue-version": 3}},
     "Validation failed\n\n3 is not a valid queue-version value\n"),
    ("policies", {"pattern": "a", "definition": {"max-age": "1X"}},
     'Validation failed\n\n<<"1X">> is not a valid max age\n'),
    ("policies", {"pattern": "a", "definition": {"dead-letter-strategy": "x"}},
     'Validation failed\n\n<<"x">> is not a valid dead letter strategy\n'),
    ("policies", {"pattern": "a", "definition": {"ha-sync-mode": "automatic"}},
     "Validation failed\n\nha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown\n"),
    ("policies", {"pattern": "a", "definition": {"ha-mode": "exactly"}},
     'Validation failed\n\nha-mode="exactly" takes an integer, none given\n'),
    ("policies", {"pattern": "a", "definition": {}}, "Validation failed\n\nno policy provided\n"),
    ("policies", {"pattern": "a", "apply-to": "foo", "definition": {"message-ttl": 1}},
     "Validation failed\n\napply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'\n"),
    ("policies", {"pattern": "a", "priority": "x", "definition": {"message-ttl": 1}},
     'Validation failed\n\npriority should be a number, actually was <<"x">>\n'),
    ("policies", {"pattern": "a"}, "[{key_missing,definition}]"),
    ("policies", {"definition": {"message-ttl": 1}}, "[{key_missing,pattern}]"),
    ("operator-policies", {"pattern": "a", "definition": {"dead-letter-exchange": "x"}},
     'Validation failed\n\n[{<<"dead-letter-exchange">>,<<"x">>}] are not recognised policy settings\n'),
])
def test_a_bad_policy_is_refused_with_400_and_rabbitmqs_reason(target, name, kind, body, expected):
    status, reply = call(target.http_port, "PUT", path(kind, "/", name), body)
    assert (status, reason(reply)) == (400, expected)
    assert call(target.http_port, "GET", path(kind, "/", name))[0] == 404


def test_a_bad_pattern_is_refused_as_not_a_regular_expression(target, name):
    status, reply = call(target.http_port, "PUT", path("policies", "/", name),
                         {"pattern": "(", "definition": {"max-length": 1}})
    assert status == 400
    assert reason(reply).startswith("Validation failed\n\npattern should be regular expression but is invalid: ")


def test_the_api_shows_policies_as_rabbitmq_does_and_deletes_them(target, name):
    assert target.put(name, "^x", {"max-length": 5, "ha-mode": "all"}, priority=7, **{"apply-to": "queues"})[0] == 201
    assert target.put(name, "^x", {"max-length": 5}, priority=7, **{"apply-to": "queues"})[0] == 204
    row = {"vhost": "/", "name": name, "pattern": "^x", "apply-to": "queues", "definition": {"max-length": 5},
           "priority": 7}
    assert call(target.http_port, "GET", path("policies", "/", name)) == (200, row)
    assert row in call(target.http_port, "GET", path("policies", "/"))[1]
    assert row in call(target.http_port, "GET", "/api/policies")[1]
    assert target.clear(name) == 204
    assert target.clear(name) == 404
    assert call(target.http_port, "GET", path("policies", "/", name))[0] == 404


def test_policies_of_a_vhost_that_is_not_there_are_not_found(target, name):
    assert call(target.http_port, "GET", path("policies", name))[0] == 404
    assert call(target.http_port, "PUT", path("policies", name, "p"), {"pattern": "a", "definition": {"max-length": 1}})[0] == 404


# -- who may -----------------------------------------------------------------------------------

def test_a_policymaker_manages_policies_of_its_vhosts_and_no_operator_policies(broker, greenmq, user, name):
    as_user = (user, "secret")
    body = {"pattern": "^nothing", "definition": {"max-length": 1}}
    assert ctl(broker.port, "set_user_tags", user, "management").returncode == 0
    assert call(broker.http_port, "PUT", path("policies", "/", name), body, auth=as_user)[0] == 403
    assert call(broker.http_port, "GET", "/api/policies", auth=as_user)[0] == 403
    assert ctl(broker.port, "set_user_tags", user, "policymaker").returncode == 0
    assert call(broker.http_port, "PUT", path("policies", "/", name), body, auth=as_user)[0] == 201
    greenmq.made.append(("policies", name))
    assert name in [row["name"] for row in call(broker.http_port, "GET", "/api/policies", auth=as_user)[1]]
    assert call(broker.http_port, "PUT", path("operator-policies", "/", name), body, auth=as_user)[0] == 403
    assert call(broker.http_port, "GET", "/api/operator-policies", auth=as_user)[0] == 403
    assert ctl(broker.port, "clear_permissions", user).returncode == 0       # no rights in / any more
    assert call(broker.http_port, "DELETE", path("policies", "/", name), auth=as_user)[0] == 403
    assert name not in [row["name"] for row in call(broker.http_port, "GET", "/api/policies", auth=as_user)[1]]


# -- greenmqctl ---------------------------------------------------------------------------------

def test_greenmqctl_sets_lists_and_clears_policies_with_rabbitmqctls_lines(broker, name):
    pattern = exactly(name)
    result = ctl(broker.port, "set_policy", "--priority", "3", "--apply-to", "queues", name, pattern,
                 '{"max-length":2}')
    assert (result.returncode, result.stdout) == (0, f'Setting policy "{name}" for pattern "{pattern}" to '
                                                     f'"{{"max-length":2}}" with priority "3" for vhost "/" ...\n')
    result = ctl(broker.port, "set_operator_policy", name, pattern, '{"max-length":1}')
    assert result.stdout.startswith(f'Setting operator policy override "{name}" for pattern')
    listing = ctl(broker.port, "list_policies").stdout.splitlines()
    assert listing[0] == 'Listing policies for vhost "/" ...'
    assert listing[1].split() == ["vhost", "name", "pattern", "apply-to", "definition", "priority"]
    assert ["/", name, pattern, "queues", '{"max-length":2}', "3"] in [line.split() for line in listing]
    assert ctl(broker.port, "list_operator_policies").stdout.startswith(
        'Listing operator policy overrides for vhost "/" ...')
    assert {"vhost": "/", "name": name, "pattern": pattern, "apply-to": "all", "definition": {"max-length": 1},
            "priority": 0} in ctl_json(broker.port, "list_operator_policies")
    channel = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f")).channel()
    channel.queue_declare(name)
    rows = ctl_json(broker.port, "list_queues", "name", "policy", "operator_policy", "effective_policy_definition")
    assert {"name": name, "policy": name, "operator_policy": name,
            "effective_policy_definition": {"max-length": 1}} in rows
    assert ctl(broker.port, "clear_operator_policy", name).stdout == f'Clearing operator policy "{name}" on vhost "/" ...\n'
    assert ctl(broker.port, "clear_policy", name).stdout == f'Clearing policy "{name}" on vhost "/" ...\n'
    table = ctl(broker.port, "list_queues", "name", "policy").stdout.splitlines()
    assert [name] in [line.split() for line in table]          # no policy: an empty cell, as rabbitmqctl's
    channel.queue_delete(name)
    channel.connection.close()


def test_greenmqctl_says_why_a_policy_is_refused_as_rabbitmqctl_does(broker, name):
    result = ctl(broker.port, "set_policy", name, "a", '{"foo":1}')
    assert result.returncode == EXIT_REFUSED
    assert result.stderr == ('Error:\nPRECONDITION_FAILED - Validation failed\n\n[{<<"foo">>,1}] are not '
                             'recognised policy settings\n')
    result = ctl(broker.port, "set_policy", name, "a", "{bad json")
    assert result.returncode == 64 and result.stderr.startswith("Error: the definition must be JSON")
    result = ctl(broker.port, "clear_policy", name)
    assert (result.returncode, result.stderr) == (EXIT_REFUSED, f"Error: NOT_FOUND - no policy '{name}' in vhost '/'\n")


# -- kept: restarts and definitions ----------------------------------------------------------------

def test_policies_survive_a_restart_and_apply_to_the_recovered_queues(tmp_path):
    data_dir = str(tmp_path / "data")
    with BrokerProcess(data_dir=data_dir) as broker:
        assert call(broker.http_port, "PUT", path("queues", "/", "kept"), {"durable": True})[0] == 201
        assert call(broker.http_port, "PUT", path("policies", "/", "cap"),
                    {"pattern": "^kept$", "definition": {"max-length": 3}, "priority": 2})[0] == 201
        assert call(broker.http_port, "PUT", path("operator-policies", "/", "lower"),
                    {"pattern": "^kept$", "definition": {"max-length": 2}})[0] == 201
        assert call(broker.http_port, "PUT", path("policies", "/", "gone"),
                    {"pattern": "^kept$", "definition": {"max-length": 1}})[0] == 201
        assert call(broker.http_port, "DELETE", path("policies", "/", "gone"))[0] == 204
    with BrokerProcess(data_dir=data_dir) as broker:
        assert [row["name"] for row in call(broker.http_port, "GET", "/api/policies")[1]] == ["cap"]
        assert [row["name"] for row in call(broker.http_port, "GET", "/api/operator-policies")[1]] == ["lower"]
        shown = call(broker.http_port, "GET", path("queues", "/", "kept"))[1]
        assert (shown["policy"], shown["operator_policy"]) == ("cap", "lower")
        for _ in range(4):
            call(broker.http_port, "POST", path("exchanges", "/", "amq.default", "publish"),
                 {"routing_key": "kept", "payload": "x", "properties": {"delivery_mode": 2}})
        assert call(broker.http_port, "GET", path("queues", "/", "kept"))[1]["messages_ready"] == 2


def test_numbers_beyond_64_bits_in_a_policy_are_kept_as_given_and_the_store_goes_on(tmp_path):
    """RabbitMQ takes any integer as a priority or a limit; SQLite's integers hold 64 bits."""
    data_dir = str(tmp_path / "data")
    huge = {"pattern": "^big$", "definition": {"max-length": 10 ** 26}, "priority": 2 ** 70}
    with BrokerProcess(data_dir=data_dir) as broker:
        assert call(broker.http_port, "PUT", path("policies", "/", "huge"), huge)[0] == 201
        assert call(broker.http_port, "PUT", path("queues", "/", "big"), {"durable": True})[0] == 201
        published = call(broker.http_port, "POST", path("exchanges", "/", "amq.default", "publish"),
                         {"routing_key": "big", "payload": "kept", "properties": {"delivery_mode": 2}})
        assert published == (200, {"routed": True})     # answered once on disk: the store took the policy
    with BrokerProcess(data_dir=data_dir) as broker:
        kept = call(broker.http_port, "GET", path("policies", "/", "huge"))[1]
        assert (kept["priority"], kept["definition"]) == (2 ** 70, {"max-length": 10 ** 26})
        assert call(broker.http_port, "GET", path("queues", "/", "big"))[1]["messages_ready"] == 1


def test_definitions_carry_policies_but_not_operator_policies_as_rabbitmq_310(broker, greenmq, name):
    assert greenmq.put(name, "^def", {"message-ttl": 1000}, priority=4)[0] == 201
    assert greenmq.put(name, "^def", {"max-length": 9}, kind="operator-policies")[0] == 201
    document = call(broker.http_port, "GET", "/api/definitions")[1]
    row = {"vhost": "/", "name": name, "pattern": "^def", "apply-to": "all", "definition": {"message-ttl": 1000},
           "priority": 4}
    assert row in document["policies"] and "operator_policies" not in document
    assert greenmq.clear(name) == 204
    mine = {**{key: [] for key in ("users", "vhosts", "permissions", "queues", "exchanges", "bindings")},
            "policies": [row]}
    assert call(broker.http_port, "POST", "/api/definitions", mine)[0] == 204
    assert call(broker.http_port, "GET", path("policies", "/", name)) == (200, row)
    mine["policies"] = [dict(row, definition={"message-ttl": -5})]
    status, reply = call(broker.http_port, "POST", "/api/definitions", mine)
    assert (status, reply["reason"]) == (400, "PRECONDITION_FAILED - definitions: policies[0]: Validation failed: "
                                              "-5 is not a valid message TTL")


def test_a_backtracking_pattern_costs_a_declare_milliseconds_and_matches_nothing_it_would_hang_on(greenmq, name):
    assert greenmq.put(name, r"^(a|aa)+$", {"max-length": 1})[0] == 201
    channel = greenmq.channel()
    started = time.monotonic()
    channel.queue_declare("a" * 60 + "b" + name)      # 2^60 ways to fail without the time limit
    channel.queue_declare("aaaa")                     # a name it matches at once
    assert time.monotonic() - started < 2
    try:
        assert queue_json(greenmq, "a" * 60 + "b" + name)["policy"] is None
        assert queue_json(greenmq, "aaaa")["policy"] == name
    finally:
        channel.queue_delete("a" * 60 + "b" + name)
        channel.queue_delete("aaaa")
