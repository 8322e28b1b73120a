"""The blocking client's pure parts, without a network: the lines its JSON-lines wire
writes, the waits between failover attempts and what a failover declares again, and what
its modules import and offer."""

import base64
import json
import subprocess
import sys
import types

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from greenmq import client_failover, connection
from greenmq.client_json_lines import JsonLinesWire

_NAMES = st.text(max_size=20)
_BODIES = st.binary(max_size=200) | st.text(max_size=200)


def _wire(measure_bodies_over=1000):
    wire = JsonLinesWire(None)
    wire._measure_bodies_over = measure_bodies_over     # as a broker's `hello` would set it
    return wire


@given(exchange=_NAMES, routing_key=_NAMES, body=_BODIES, properties=st.none() | st.just({"content_type": "ü/x"}),
       mandatory=st.booleans(), channel=st.sampled_from([1, 2]))
@example(exchange="", routing_key="q", body=b"x" * 100, properties=None, mandatory=False, channel=1)
@example(exchange="ëx", routing_key='"\\\n\u2028', body='名前"\\', properties=None, mandatory=False, channel=1)
def test_a_publish_line_is_the_compact_json_of_what_it_carries(exchange, routing_key, body, properties,
                                                               mandatory, channel):
    """Whichever way the line is made (the common publish is formatted directly), it is the
    request's compact ASCII JSON, the same as for a body that is not `bytes`."""
    line = _wire().publish(channel, exchange, routing_key, body, properties, mandatory)
    request = json.loads(line)
    assert line == json.dumps(request, separators=(",", ":")) + "\n"
    assert list(request)[:3] == ["op", "exchange", "routing_key"]
    assert (request["op"], request["exchange"], request["routing_key"]) == ("publish", exchange, routing_key)
    data = body.encode() if isinstance(body, str) else body
    carried = (base64.b64decode(request["body"]) if request.get("body_encoding") == "base64"
               else request["body"].encode())
    assert carried == data
    assert request.get("properties") == (properties or None)
    assert request.get("mandatory", False) == mandatory and request.get("channel", 1) == channel
    if isinstance(body, bytes):
        assert line == _wire().publish(channel, exchange, routing_key, bytearray(body), properties, mandatory)


def test_failover_waits_double_up_to_the_longest_and_give_up_after_the_limit(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(client_failover, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    backoff = client_failover.Backoff()
    waits = []
    while (wait := backoff.next_wait()) is not None:
        waits.append(wait)
        clock[0] += wait
    first, longest = client_failover.FAILOVER_FIRST_WAIT, client_failover.FAILOVER_MAX_WAIT
    assert waits[:3] == [first, 2 * first, 4 * first]
    assert waits == sorted(waits) and waits[-1] == longest == max(waits)
    # Given up only once the next wait would end past the limit, counted from the loss.
    assert sum(waits) <= client_failover.FAILOVER_GIVE_UP_SECONDS < sum(waits) + longest


def test_the_client_imports_no_broker_module_and_no_gevent():
    """Scripts and threads use the client without gevent, and it runs against any AMQP
    broker: importing it brings in its own modules only, whatever GreenMQ's broker holds."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, greenmq.connection; print(*sorted(sys.modules))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert "gevent" not in loaded
    # properties.py and lines.py are the vocabulary both sides share; they import nothing.
    shared = ("greenmq", "greenmq.connection", "greenmq.properties", "greenmq.lines")
    assert [name for name in loaded if name.startswith("greenmq")
            and name not in shared and not name.startswith("greenmq.client_")] == []


# What programs may use as connection.<name>, wherever in the client it is defined.
_PUBLIC_NAMES = (
    "Connection", "Channel", "BasicProperties", "Delivery", "QueueDeclareOk",
    "GreenMQError", "BrokerError", "AccessRefused", "AuthenticationError", "NotFound", "ResourceLocked", "PreconditionFailed",
    "ConnectionClosed", "NackError", "ConnectionBlockedTimeout", "UnroutableError",
    "DEFAULT_PORT", "PORT_ENVIRONMENT_VARIABLE", "URL_ENVIRONMENT_VARIABLE", "AMQP_PORTS",
    "FAILOVER_FIRST_WAIT", "FAILOVER_MAX_WAIT", "FAILOVER_GIVE_UP_SECONDS", "FAILOVER_CLOSE_CODE",
    "PROTOCOL_VERSION", "DEFAULT_QUEUE", "SIGNAL_CHECK_SECONDS", "MAX_QUEUED_LINES", "EXIT_CLOSE_SECONDS", "RECV_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_LINE_BYTES", "PROPERTY_NAMES", "AMQP_FRAME_MAX", "AMQP_CHANNEL_MAX",
)


def test_every_public_name_of_the_client_is_offered_by_connection():
    import connection as original        # the original scripts' name for the same module

    assert original is connection
    assert [name for name in _PUBLIC_NAMES if not hasattr(connection, name)] == []


def _declared_so_far():
    """A program's declarations as Connection remembers them: some undone, one passive."""
    declarations = client_failover.Declarations()
    remember = declarations.remember
    remember(1, "exchange.declare", {"exchange": "logs", "type": "fanout", "passive": False}, {"ok": True})
    remember(1, "queue.declare", {"queue": "", "passive": False}, {"queue": "amq.gen-old"})
    remember(1, "queue.bind", {"queue": "amq.gen-old", "exchange": "logs", "routing_key": "", "arguments": None},
             {"ok": True})
    remember(1, "queue.declare", {"queue": "gone", "passive": False}, {"queue": "gone"})
    remember(1, "queue.delete", {"queue": "gone"}, {"message_count": 0})
    remember(1, "queue.declare", {"queue": "theirs", "passive": True}, {"queue": "theirs"})
    remember(2, "qos", {"prefetch_count": 10, "global": False}, {"ok": True})
    remember(2, "consume", {"queue": "amq.gen-old", "consumer_tag": ""}, {"consumer_tag": "ctag-1"})
    remember(3, "confirm.select", {}, {"ok": True})
    remember(3, "channel.close", {}, {"ok": True})
    return declarations


def _broker_that_names_queues(declarations, calls, lost_at=None):
    """A `call` as Connection's: sends the request, remembers it anew, returns the reply."""
    def call(channel, op, **fields):
        if len(calls) == lost_at:
            raise connection.ConnectionClosed(None, "connection lost")
        calls.append((channel, op, fields))
        reply = {"queue": fields["queue"] or "amq.gen-new"} if op == "queue.declare" else {"ok": True}
        if op == "consume":
            reply = {"consumer_tag": fields["consumer_tag"]}
        declarations.remember(channel, op, fields, reply)
        return reply
    return call


_DECLARED_AGAIN = [
    (1, "exchange.declare", {"exchange": "logs", "type": "fanout", "passive": False}),
    (1, "queue.declare", {"queue": "", "passive": False}),
    (1, "queue.bind", {"queue": "amq.gen-new", "exchange": "logs", "routing_key": "", "arguments": None}),
    (2, "qos", {"prefetch_count": 10, "global": False}),
    (2, "consume", {"queue": "amq.gen-new", "consumer_tag": "ctag-1"}),
]


def test_a_failover_declares_again_what_stands_in_order_with_server_named_queues_renamed():
    declarations, calls = _declared_so_far(), []
    declarations.declare_again(_broker_that_names_queues(declarations, calls))
    assert calls == _DECLARED_AGAIN
    calls.clear()                       # and what was declared again is kept for the next failover
    declarations.declare_again(_broker_that_names_queues(declarations, calls))
    assert [(channel, op) for channel, op, _ in calls] == [(channel, op) for channel, op, _ in _DECLARED_AGAIN]


def test_declarations_are_kept_whole_when_the_broker_is_lost_half_way_through_them():
    declarations, calls = _declared_so_far(), []
    with pytest.raises(connection.ConnectionClosed):
        declarations.declare_again(_broker_that_names_queues(declarations, calls, lost_at=3))
    calls.clear()
    declarations.declare_again(_broker_that_names_queues(declarations, calls))
    assert calls == _DECLARED_AGAIN
