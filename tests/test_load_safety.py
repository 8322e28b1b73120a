"""Safe under load: what one client sends cannot crash the broker, hold its memory without
bound or keep its resources forever; limits give clear errors and the connection goes on
where the line could be read."""

import base64
import json
import os
import resource
import socket
import sys
import threading
import time

import gevent
import gevent.socket
import pika
import pytest
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from greenmq import connection, transport
from greenmq import message
from greenmq.message import Message
from greenmq.protocol import MAX_NESTING_DEPTH, JsonLinesProtocol, _nesting_depth
from tests.broker_process import BrokerProcess
from tests.failing_allocation_broker import PUBLISH_TRIGGER, READ_TRIGGER, WRITE_TRIGGER
from tests.test_amqp_wire import RawClient as AmqpRawClient
from tests.test_bad_input import TIMEOUT, RawClient, assert_error, raw  # noqa: F401  (raw: a fixture)
from tests.test_protocol_unit import lines, node, output  # noqa: F401  (node: a fixture)

MAX_SIZE_ERROR = "PRECONDITION_FAILED - message size {} is larger than configured max size {}"


# -- nesting -------------------------------------------------------------------------------

def test_a_line_of_100000_brackets_gets_502_and_the_connection_goes_on(broker, raw):
    raw.send_raw(b"[" * 100_000 + b"\n")
    assert_error(raw.read(), 502, f"nested deeper than {MAX_NESTING_DEPTH} levels")
    raw.send_raw(b'{"op": "publish", "body": "' + b"[" * 100_000 + b'", "routing_key": "nowhere"}\n')
    assert raw.still_works()              # brackets inside a string are text, not nesting
    assert "Traceback" not in broker.log() and "RecursionError" not in broker.log()


def test_headers_nested_past_the_limit_are_refused_and_at_the_limit_accepted(raw, name):
    def nested(depth):
        value = "leaf"
        for _ in range(depth):
            value = {"a": value}
        return value

    raw.call({"op": "queue.declare", "queue": name, "id": 1})
    # request (1) > properties (2) > headers (3, the outermost of the nested objects)
    raw.send({"op": "publish", "routing_key": name, "id": 2,
              "properties": {"headers": nested(MAX_NESTING_DEPTH - 1)}})
    assert_error(raw.read(), 502, "nested deeper")
    raw.send({"op": "publish", "routing_key": name, "properties": {"headers": nested(MAX_NESTING_DEPTH - 2)}})
    assert raw.call({"op": "queue.declare", "queue": name, "passive": True, "id": 3})["message_count"] == 1


@pytest.mark.parametrize("text, depth", [
    ('[]', 1), ('{"a": [[{}]]}', 4), ('["[[[[", "\\"[[["]', 1), ('"[[["', 0),
    ('[[]] [[[[[[', 2), ('{"a": "\\\\"}', 1),
])
def test_nesting_depth_counts_brackets_outside_strings_up_to_the_end_of_the_value(text, depth):
    assert _nesting_depth(text) == depth


# -- the deadline for hello, heartbeats ------------------------------------------------------

def test_a_client_that_never_says_hello_is_closed_after_the_deadline():
    with BrokerProcess("--hello-timeout", "0.5") as broker:
        silent = RawClient(broker.port, hello=False)
        started = time.monotonic()
        closing = silent.read()
        assert closing["event"] == "close" and closing["code"] == 320, closing
        assert "no 'hello' within 0.5 seconds" in closing["text"]
        assert silent.read() is None
        assert time.monotonic() - started < TIMEOUT
        talking = RawClient(broker.port)          # one that says hello in time stays
        time.sleep(1.0)                           # past the deadline it was not held to
        assert talking.still_works()
        assert "sent no 'hello'" in broker.log() and "Traceback" not in broker.log()


def test_heartbeats_are_negotiated_in_hello_and_a_silent_client_is_dropped(broker):
    client = RawClient(broker.port, hello=False)
    reply = client.call({"op": "hello", "heartbeat": 1, "id": 1})
    assert reply["ok"] is True and reply["heartbeat"] == 1
    received = client.buffer
    deadline = time.monotonic() + TIMEOUT
    while data := client.sock.recv(65536):     # this client never says a word
        received += data
        assert time.monotonic() < deadline, "still open after two heartbeat intervals"
    *heartbeats, closing, after = received.split(b"\n")
    assert heartbeats and set(heartbeats) == {b""}, received      # empty lines, the broker's own
    closing = json.loads(closing)
    assert closing["event"] == "close" and closing["code"] == 320 and after == b""
    assert "missed heartbeats, timeout: 1s" in closing["text"]


@pytest.mark.parametrize("heartbeat", [-1, 65536, "5"])
def test_a_heartbeat_out_of_range_is_refused(node, heartbeat):  # noqa: F811
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1))
    protocol.data_received(lines({"op": "hello", "heartbeat": heartbeat, "id": 1}))
    assert_error(output(protocol)[0], 502, "'heartbeat'")
    assert protocol.session is None and not protocol.closed


def test_connection_py_keeps_a_heartbeat_connection_alive_while_idle(broker, name):
    with connection.Connection("127.0.0.1", broker.port, heartbeat=1) as conn:
        conn.default_channel.queue_declare(name)
        conn.sleep(3.5)                           # past two intervals: only heartbeats flowed
        conn.default_channel.basic_publish("", name, "still open")
        assert conn.default_channel.queue_declare(name, passive=True).message_count == 1


class _ScriptedBroker:
    """A listening socket whose one client gets `hello` answered with `reply`, then whatever
    `then(sock, reader)` does, in a thread."""

    def __init__(self, reply, then):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = []
        self.result = []
        threading.Thread(target=self._serve, args=(reply, then), daemon=True).start()

    def _serve(self, reply, then):
        sock, _ = self.server.accept()
        self.accepted.append(sock)
        reader = sock.makefile("rb")
        request = json.loads(reader.readline())
        sock.sendall(json.dumps(dict(reply, ok=True, id=request["id"])).encode() + b"\n")
        self.result.append(then(sock, reader))

    def close(self):
        for sock in self.accepted:
            sock.close()
        self.server.close()


def test_connection_py_gives_up_a_broker_that_stops_sending_heartbeats():
    silent = _ScriptedBroker({"heartbeat": 1}, lambda sock, reader: None)    # never another word
    try:
        conn = connection.Connection("127.0.0.1", silent.port, heartbeat=1)
        with pytest.raises(connection.ConnectionClosed, match="missed heartbeats"):
            conn.process_data_events(TIMEOUT)
    finally:
        silent.close()


def test_connection_py_sends_a_large_message_whole_to_a_broker_slow_to_read():
    def read_late(sock, reader):
        time.sleep(2.0)                 # busy: the client's socket buffers fill and it waits
        return len(reader.readline())

    slow = _ScriptedBroker({}, read_late)
    try:
        conn = connection.Connection("127.0.0.1", slow.port)
        conn.default_channel.basic_publish("", "q", b"x" * (32 * 1024 * 1024))
        conn.process_data_events(0)     # writes the queued publish in this thread
        deadline = time.monotonic() + TIMEOUT
        while not slow.result:
            assert time.monotonic() < deadline, "the broker did not get the line"
            time.sleep(0.05)
        assert slow.result[0] > 32 * 1024 * 1024 and conn.is_open
    finally:
        slow.close()


# -- the maximum message size ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_broker():
    """A broker taking messages of at most 1 KiB."""
    with BrokerProcess("--max-message-bytes", "1024") as process:
        yield process
        assert "Traceback" not in process.log()


def test_a_json_publish_over_the_maximum_is_refused_and_the_connection_goes_on(small_broker):
    client = RawClient(small_broker.port)
    hello = RawClient(small_broker.port, hello=False).call({"op": "hello", "id": 1})
    assert hello["max_message_bytes"] == 1024
    client.call({"op": "queue.declare", "queue": "sized", "id": 1})
    client.send({"op": "publish", "routing_key": "sized", "body": base64.b64encode(b"\xff" * 1025).decode(),
                 "body_encoding": "base64", "id": 2},
                {"op": "publish", "routing_key": "sized", "body": "é" * 513, "id": 3},
                {"op": "publish", "routing_key": "sized", "body": "x" * 1024})
    assert_error(client.read(), 406, MAX_SIZE_ERROR.format(1025, 1024))
    assert_error(client.read(), 406, MAX_SIZE_ERROR.format(1026, 1024))
    assert client.call({"op": "queue.declare", "queue": "sized", "passive": True, "id": 4})["message_count"] == 1


def test_an_amqp_publish_over_the_maximum_in_one_read_is_refused_too(small_broker):
    # A property-less publish whose frames arrive together takes the front end's fast path.
    client = AmqpRawClient(f"amqp://guest:guest@127.0.0.1:{small_broker.amqp_port}/%2f").open()
    client.open_channel(1)
    client.send(amqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key="nowhere"), 1)
                + amqp_frame.marshal(amqp_header.ContentHeader(0, 1025, spec.Basic.Properties()), 1)
                + amqp_frame.marshal(amqp_body.ContentBody(b"x" * 1025), 1))
    close = client.expect(spec.Channel.Close, 1)
    assert (close.reply_code, close.reply_text) == (406, MAX_SIZE_ERROR.format(1025, 1024))
    client.close()


@pytest.mark.parametrize("byte", [b"\xff", b"x", "x"])      # binary, ASCII and text bodies
def test_connection_py_refuses_a_body_over_the_maximum_before_sending_it(small_broker, byte):
    with connection.Connection("127.0.0.1", small_broker.port) as conn:
        assert conn.max_message_bytes == 1024
        channel = conn.default_channel
        channel.queue_declare("refused")
        with pytest.raises(connection.PreconditionFailed, match=MAX_SIZE_ERROR.format(1025, 1024)):
            channel.basic_publish("", "refused", byte * 1025)
        channel.basic_publish("", "refused", byte * 1024)       # the connection went on
        body = byte * 1024
        assert channel.basic_get("refused", auto_ack=True)[2] == (body.encode() if isinstance(body, str) else body)


def test_connection_py_sends_and_receives_a_binary_body_larger_than_16_mib(conn, name):
    body = os.urandom(20 * 1024 * 1024)
    channel = conn.default_channel
    channel.queue_declare(name)
    channel.basic_publish("", name, body)
    assert channel.basic_get(name, auto_ack=True)[2] == body


def test_connection_py_sends_text_that_escapes_long_as_base64():
    # Control characters escape to six bytes each: 2 MiB of them would not fit the line
    # of a broker taking 4 MiB messages, while their base64 does.
    body = b"\x01" * (2 * 1024 * 1024)
    with BrokerProcess("--max-message-bytes", str(4 * 1024 * 1024)) as broker:
        with connection.Connection("127.0.0.1", broker.port) as conn:
            conn.default_channel.queue_declare("escaped")
            conn.default_channel.basic_publish("", "escaped", body)
            assert conn.default_channel.basic_get("escaped", auto_ack=True)[2] == body
        assert "Traceback" not in broker.log()


# -- long lines in linear time -------------------------------------------------------------

# 16 MiB arriving 1 KiB at a time: linear reading takes well under a second; re-joining the
# partial line on every read copies 128 GiB and would take minutes.
LONG_LINE_BYTES = 16 * 1024 * 1024
PIECE_BYTES = 1024
LONG_LINE_DEADLINE_SECONDS = 30.0


def test_the_broker_reads_a_long_line_in_pieces_in_linear_time(node):  # noqa: F811
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1))
    protocol.data_received(lines({"op": "hello"}, {"op": "queue.declare", "queue": "long"}))
    head = b'{"op": "publish", "routing_key": "long", "body": "'
    line = head + b"x" * LONG_LINE_BYTES + b'"}\n'
    deadline = time.monotonic() + LONG_LINE_DEADLINE_SECONDS
    for start in range(0, len(line), PIECE_BYTES):
        protocol.data_received(line[start:start + PIECE_BYTES])
        assert time.monotonic() < deadline, f"{start} bytes read by the deadline"
    output(protocol)
    protocol.data_received(lines({"op": "get", "queue": "long", "no_ack": True, "id": 1}))
    assert len(output(protocol)[0]["body"]) == LONG_LINE_BYTES


def test_connection_py_reads_a_long_line_in_pieces_in_linear_time(broker):
    conn = connection.Connection("127.0.0.1", broker.port)
    head = json.dumps({"ok": True, "id": 10**9, "text": ""})[:-2].encode()
    line = head + b"x" * LONG_LINE_BYTES + b'"}\n'
    try:
        deadline = time.monotonic() + LONG_LINE_DEADLINE_SECONDS
        for start in range(0, len(line), PIECE_BYTES):
            conn._data_received(line[start:start + PIECE_BYTES])
            assert time.monotonic() < deadline, f"{start} bytes read by the deadline"
        assert len(conn._replies[10**9]["text"]) == LONG_LINE_BYTES
    finally:
        conn.close()


# -- names shared by messages --------------------------------------------------------------

def test_unique_routing_keys_are_not_kept_after_their_messages(monkeypatch):
    # CPython 3.12 made interned strings immortal: emulate that, so this holds on every version.
    immortal = []

    def intern_forever(text):
        immortal.append(text)
        return text

    monkeypatch.setattr(sys, "intern", intern_forever)
    count = message.MAX_SHARED_NAMES * 3
    for n in range(count):
        Message("rpc", f"amq.gen-reply-{n:08d}-" + "x" * 40, b"")
    kept = len(immortal) + len(message._shared_names)
    assert kept <= message.MAX_SHARED_NAMES + 1, f"{kept} names kept after {count} messages are gone"


def test_messages_with_one_routing_key_share_one_string():
    first = Message("ex", "".join(["route", ".key"]), b"")
    second = Message("ex", "".join(["route", ".key"]), b"")
    assert first.routing_key is second.routing_key and first.exchange is second.exchange


# -- many connections ------------------------------------------------------------------------

CONNECTIONS = 10_000
CONNECTIONS_DEADLINE_SECONDS = 120.0
CONNECT_BATCH = 200


def test_ten_thousand_connections_open_and_close_against_a_broker_started_with_1024_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit on open files ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    clients = []
    try:
        with BrokerProcess("--no-amqp", open_files=1024) as broker:
            assert "raised the open-file limit from 1024" in broker.log()
            connection.Connection("127.0.0.1", broker.port).close()     # the login is verified once
            deadline = time.monotonic() + CONNECTIONS_DEADLINE_SECONDS
            hello = b'{"op":"hello","id":1}\n'
            while len(clients) < CONNECTIONS:
                batch = [socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT)
                         for _ in range(min(CONNECT_BATCH, CONNECTIONS - len(clients)))]
                clients.extend(batch)
                for sock in batch:
                    sock.sendall(hello)
                for sock in batch:
                    assert b'"ok":true' in sock.recv(4096)
                assert time.monotonic() < deadline, f"{len(clients)} connections open by the deadline"
            with connection.Connection("127.0.0.1", broker.port) as conn:
                assert len(conn.list_connections()) == CONNECTIONS + 1
                for sock in clients:
                    sock.close()
                clients = []
                while len(conn.list_connections()) > 1:
                    assert time.monotonic() < deadline, "connections still open at the deadline"
                    time.sleep(0.05)
            assert "Traceback" not in broker.log()
    finally:
        for sock in clients:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- allocation failures ---------------------------------------------------------------------

@pytest.fixture
def failing_broker():
    with BrokerProcess(script="tests/failing_allocation_broker.py") as process:
        yield process


def _amqp_connection(broker):
    return pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))


def _assert_closed_out_of_memory(amqp_connection):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        amqp_connection.process_data_events(TIMEOUT)
        amqp_connection.process_data_events(TIMEOUT)
    assert closed.value.reply_code == 541 and "out of memory" in closed.value.reply_text


def _assert_logged_without_traceback(broker, kind):
    log = broker.log()
    assert f"out of memory serving {kind} connection" in log and "Traceback" not in log


@pytest.mark.parametrize("trigger", [READ_TRIGGER, PUBLISH_TRIGGER], ids=["reading", "publishing"])
def test_a_memory_error_serving_json_lines_closes_only_that_connection(failing_broker, trigger):
    bystander = connection.Connection("127.0.0.1", failing_broker.port)
    offender = RawClient(failing_broker.port)
    offender.send({"op": "publish", "routing_key": "x", "body": trigger.decode()})
    closing = offender.read()
    assert closing == {"event": "close", "code": 541, "error": "INTERNAL_ERROR",
                       "text": "INTERNAL_ERROR - out of memory"}
    assert offender.read() is None
    assert RawClient(failing_broker.port).still_works()
    bystander.default_channel.queue_declare("after")
    bystander.close()
    _assert_logged_without_traceback(failing_broker, "JSON-lines")


def test_a_memory_error_publishing_over_amqp_closes_only_that_connection(failing_broker):
    offender = _amqp_connection(failing_broker)
    offender.channel().basic_publish("", "nowhere", PUBLISH_TRIGGER)
    _assert_closed_out_of_memory(offender)
    newcomer = _amqp_connection(failing_broker)
    newcomer.channel().queue_declare("", exclusive=True)
    newcomer.close()
    _assert_logged_without_traceback(failing_broker, "AMQP")


def test_a_memory_error_writing_closes_only_that_connection_and_new_ones_are_accepted(failing_broker):
    publisher = _amqp_connection(failing_broker)
    publisher_channel = publisher.channel()
    publisher_channel.queue_declare("doomed")
    consumer = _amqp_connection(failing_broker)
    consumer.channel().basic_consume("doomed", lambda *args: None, auto_ack=True)
    publisher_channel.basic_publish("", "doomed", WRITE_TRIGGER)
    _assert_closed_out_of_memory(consumer)
    for _ in range(3):                # new AMQP connections are served, the publisher goes on
        newcomer = _amqp_connection(failing_broker)
        newcomer.channel().queue_declare("doomed", passive=True)
        newcomer.close()
    publisher_channel.basic_publish("", "doomed", b"fine")
    assert publisher_channel.basic_get("doomed", auto_ack=True)[2] == b"fine"
    publisher.close()
    with connection.Connection("127.0.0.1", failing_broker.port) as conn:
        assert conn.default_channel.queue_declare("doomed", passive=True).message_count == 0
    _assert_logged_without_traceback(failing_broker, "AMQP")


# -- a send that fails while the reader waits -----------------------------------------------

class _BreakingSocket(gevent.socket.socket):
    """A server-side socket whose sends fail once `broken` is set, as one whose peer
    vanished, though nothing arrives to make it readable."""

    broken = False

    def send(self, *args):
        if self.broken:
            raise BrokenPipeError("broken pipe")
        return super().send(*args)

    def sendmsg(self, *args):
        if self.broken:
            raise BrokenPipeError("broken pipe")
        return super().sendmsg(*args)


def test_a_send_failing_while_the_reader_waits_between_reads_ends_the_connection(node):
    """The send of output made elsewhere (a delivery from another connection's publish)
    fails while this connection's reader waits between reads, on a watcher of its own,
    with nothing arriving to make the socket readable: the connection still ends."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    sock = _BreakingSocket(fileno=accepted.detach())
    protocols = []

    def make_protocol(peer):
        protocols.append(JsonLinesProtocol(node, peer))
        return protocols[-1]

    reader = gevent.spawn(transport.connection_handler(make_protocol), sock, address)
    try:
        client.sendall(b'{"op":"hello","id":1}\n')
        assert b'"ok":true' in client.recv(4096)      # read, answered: the reader waits for more
        sock.broken = True
        protocols[0]._write(b"output made elsewhere\n")
        deadline = time.monotonic() + TIMEOUT
        while protocols[0].session is not None:     # its end: the session let go
            assert time.monotonic() < deadline, "the connection's reader still waits after its send failed"
            gevent.sleep(0.01)
    finally:
        reader.kill()
        client.close()
        listener.close()
