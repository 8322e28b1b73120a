"""The memory budget (--memory-limit): a flood of publishes against a small limit blocks
the publishers (connection.blocked for AMQP, a `blocked` event for JSON lines) with the
broker's accounted memory near the limit; consumers drain, the publishers are unblocked,
and every message arrives exactly once."""

import os
import re
import signal
import socket
import threading
import time
import urllib.request

import gevent
import gevent.event
import pika
import pytest
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from greenmq import connection
from greenmq import memory
from greenmq import transport
from greenmq.node import Node
from greenmq.protocol import JsonLinesProtocol
from tests import stalled_commit_broker
from tests.broker_process import BrokerProcess
from tests.test_amqp_wire import RawClient as AmqpRawClient
from tests.test_bad_input import RawClient
from tests.conftest import client_url
from tests.test_core_queues import node, open_channel, publish  # noqa: F401  (node: a fixture)

LIMIT = 4 * 1024 * 1024
# Above the limit by at most what one batch of reads brings in (transport.RECV_BYTES) and
# the messages' bookkeeping: the limit is checked between batches.
SLACK = 1024 * 1024
BODY_BYTES = 1024
MESSAGES = 3 * LIMIT // BODY_BYTES          # three times what the limit holds
DEADLINE_SECONDS = 60
# The brokers here do not page (a paging ratio above 1, RabbitMQ's way to turn it off), so
# that a flood fills memory: these tests are about the limit itself (paging:
# tests/test_scratch_paging.py).
NOT_PAGING = ("--memory-paging-ratio", "2")


@pytest.fixture(scope="module")
def small_broker():
    with BrokerProcess("--memory-limit", "4MiB", "--in-memory", *NOT_PAGING) as broker:
        yield broker


@pytest.fixture(params=["json-lines", "amqp"])
def connect(request, small_broker):
    """Opens connection.py connections to the small broker over this test's wire, so one
    test proves the same waiting over JSON lines and AMQP (connection.blocked)."""
    url = client_url(request.param, small_broker)
    port = small_broker.port if request.param == "json-lines" else None
    return lambda **options: connection.Connection(url, port=port, **options)


def body(number):
    return f"{number:08d}".encode().ljust(BODY_BYTES, b".")


def memory_status(broker):
    with connection.Connection(port=broker.port) as admin:
        return admin.call("status")["memory"]


def wait_for(predicate, what):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def drain(client, name):
    """The numbers of the MESSAGES consumed from `name`, acked (pika and connection.py alike)."""
    received = []

    def on_message(channel, method, properties, message_body):
        received.append(int(message_body[:8]))
        channel.basic_ack(method.delivery_tag)

    channel = client.channel()
    channel.basic_qos(prefetch_count=500)
    channel.basic_consume(name, on_message)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(received) < MESSAGES:
        assert time.monotonic() < deadline, f"{len(received)} of {MESSAGES} messages arrived"
        client.process_data_events(0.01)
    return received


def assert_blocked_near_the_limit(broker):
    wait_for(lambda: memory_status(broker)["publishers_blocked"], "the broker to block publishers")
    status = memory_status(broker)
    assert status["limit_bytes"] == LIMIT
    assert LIMIT < status["held_bytes"] < LIMIT + SLACK


def test_memory_limit_accepts_bytes_units_and_a_fraction_of_the_machine():
    assert memory.parse_memory_limit(2_000_000) == 2_000_000
    assert memory.parse_memory_limit("512MiB") == 512 * 2**20
    assert memory.parse_memory_limit("2GB") == 2 * 10**9
    assert memory.parse_memory_limit("0.4") == memory.parse_memory_limit(0.4) == int(
        0.4 * memory.machine_memory_bytes())
    for wrong in ("lots", "12 parsecs", 0, 1.5, True, "1KiB", -5):
        with pytest.raises(ValueError, match="fraction of the machine's memory"):
            memory.parse_memory_limit(wrong)


def test_a_queues_byte_window_is_a_share_of_the_limit_with_a_floor_a_small_limit_keeps():
    """A 32nd of the limit, but a few dozen 1 MiB bodies at least, and never a quarter of a
    small limit; given as bytes with RabbitMQ's units."""
    assert memory.MemoryBudget(16 * 2**30).queue_window_bytes == 512 * 2**20
    assert memory.MemoryBudget(256 * 2**20).queue_window_bytes == 32 * 2**20
    assert memory.MemoryBudget(4 * 2**20).queue_window_bytes == 2**20
    assert memory.MemoryBudget(4 * 2**20, queue_window_bytes=0).queue_window_bytes == 0
    assert memory.parse_bytes("64MiB") == 64 * 2**20 and memory.parse_bytes(1000) == 1000
    for wrong in ("lots", -1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="must be bytes"):
            memory.parse_bytes(wrong)


def test_a_pika_flood_is_blocked_near_the_limit_then_drained_and_every_message_arrives_once(small_broker, name):
    events = []
    outcome = []

    def flood():
        # pika's basic_publish waits for its output to be written: a blocked publisher waits
        # in it, so it lives in a thread of its own.
        parameters = pika.ConnectionParameters("127.0.0.1", small_broker.amqp_port, heartbeat=1)
        publisher = pika.BlockingConnection(parameters)
        publisher.add_on_connection_blocked_callback(
            lambda conn, frame: events.append(("blocked", frame.method.reason)))
        publisher.add_on_connection_unblocked_callback(lambda conn, frame: events.append(("unblocked", None)))
        channel = publisher.channel()
        channel.queue_declare(name)
        for number in range(MESSAGES):
            channel.basic_publish("", name, body(number))
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (not events or events[-1][0] != "unblocked") and time.monotonic() < deadline:
            publisher.process_data_events(0.01)
        outcome.append(publisher.is_open)
        publisher.close()

    flooding = threading.Thread(target=flood)
    flooding.start()
    assert_blocked_near_the_limit(small_broker)
    # The broker reads nothing from the publisher now, its heartbeats neither: it must not
    # take that silence for a dead peer (two heartbeat intervals and more).
    time.sleep(2.5)
    assert memory_status(small_broker)["publishers_blocked"]
    assert "missed heartbeats" not in small_broker.log()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{small_broker.http_port}/metrics", timeout=10).read().decode()
    assert re.search(r"^greenmq_publishers_blocked 1(\.0)?$", metrics, re.MULTILINE), metrics

    consumer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", small_broker.amqp_port))
    received = drain(consumer, name)
    consumer.close()
    flooding.join(DEADLINE_SECONDS)
    assert outcome == [True]
    # Blocked, then unblocked as consumers free a tenth of the limit, perhaps blocked again
    # by what the publisher sends then, and so on: always in pairs, unblocked at the end.
    assert events and events == [("blocked", memory.BLOCKED_REASON), ("unblocked", None)] * (len(events) // 2)
    assert sorted(received) == list(range(MESSAGES))
    wait_for(lambda: memory_status(small_broker)["held_bytes"] == 0, "the accounted memory to return to 0")


def test_a_connection_py_flood_waits_while_blocked_and_every_message_arrives_once(small_broker, connect, name):
    publisher = connect()
    publisher.channel().queue_declare(name)

    def flood():
        channel = publisher.channel()
        # Confirms make the publisher read as it goes, so it hears `blocked` and waits in
        # basic_publish; without them it waits in its socket's send, as TCP makes it.
        channel.confirm_delivery(window=200)
        for number in range(MESSAGES):
            channel.basic_publish("", name, body(number))
        channel.queue_declare(name, passive=True)       # everything sent has been read

    # A daemon: a publisher never unblocked fails the test rather than hang its end.
    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    assert_blocked_near_the_limit(small_broker)
    wait_for(lambda: publisher.blocked is not None, "the publisher to hear it is blocked")
    assert publisher.blocked == memory.BLOCKED_REASON and flooding.is_alive()

    with connect() as consumer:
        received = drain(consumer, name)
    flooding.join(DEADLINE_SECONDS)
    assert not flooding.is_alive()
    # The flood may have blocked the broker again near its end, and the publisher reads the
    # `unblocked` that the drain caused only when it next reads.
    wait_for(lambda: publisher.process_data_events(0.01) or publisher.blocked is None, "the 'unblocked' event")
    assert sorted(received) == list(range(MESSAGES))
    publisher.close()


def test_a_publish_blocked_past_its_timeout_raises_and_goes_through_once_unblocked(small_broker, connect, name):
    publisher = connect(blocked_connection_timeout=0.5)
    channel = publisher.channel()
    channel.queue_declare(name)
    channel.confirm_delivery(window=200)
    sent = 0
    with pytest.raises(connection.ConnectionBlockedTimeout, match="low on memory"):
        for sent in range(MESSAGES):
            channel.basic_publish("", name, body(sent))
    with connection.Connection(port=small_broker.port) as admin:
        admin.channel().queue_purge(name)
    wait_for(lambda: publisher.process_data_events(0.01) or publisher.blocked is None, "the 'unblocked' event")
    channel.basic_publish("", name, b"after the block")
    # What was sent before the timeout and not yet read stays sent: it follows the purge, in
    # order up to the publish before the one that gave up (which sent nothing), and the new
    # message comes after it.
    bodies = []
    while True:
        method, properties, message_body = channel.basic_get(name, auto_ack=True)
        if method is None:
            break
        bodies.append(message_body)
    assert bodies[-1] == b"after the block"
    numbers = [int(message_body[:8]) for message_body in bodies[:-1]]
    assert numbers == list(range(sent - len(numbers), sent))
    publisher.close()


def test_a_blocked_publisher_closed_by_an_operator_hears_why_at_once(small_broker, connect, name):
    """A blocked connection still hears the broker: closed meanwhile, its waiting publish
    raises the operator's 320 at once (over AMQP, the close-ok it owes does not wait out the
    block) rather than wait for memory to be freed; and the broker ends the connection
    (its socket, its reader) while the memory is still held."""
    publisher = connect(client_properties={"connection_name": name})
    channel = publisher.channel()
    channel.queue_declare(name)
    channel.confirm_delivery(window=200)
    closed = []

    def flood():
        try:
            for number in range(MESSAGES):
                channel.basic_publish("", name, body(number))
        except connection.ConnectionClosed as exc:
            closed.append(exc)

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    wait_for(lambda: publisher.blocked is not None, "the publisher to hear it is blocked")
    with connection.Connection(port=small_broker.port) as admin:
        [connection_name] = [row["name"] for row in admin.list_connections()
                             if row["client_properties"].get("connection_name") == name]
        ended = small_broker.log().count("closed ")
        admin.call("connection.close", name=connection_name, reason="making room")
        flooding.join(DEADLINE_SECONDS)
        wait_for(lambda: small_broker.log().count("closed ") > ended, "the broker to end the closed connection")
        assert admin.channel().queue_declare(name, passive=True).message_count > 0     # memory still held
        admin.channel().queue_delete(name)
    assert [(exc.code, "making room" in exc.text) for exc in closed] == [(320, True)]


def test_a_publisher_blocked_by_a_broker_that_dies_fails_over_unblocked(name):
    """The next broker of the list has blocked nothing: the flood goes on there."""
    with BrokerProcess("--memory-limit", "4MiB", "--in-memory", *NOT_PAGING) as first, BrokerProcess("--in-memory") as second:
        urls = [f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f" for broker in (first, second)]
        publisher = connection.Connection(urls)
        channel = publisher.channel()
        channel.queue_declare(name)
        channel.confirm_delivery(window=200)
        flooding = threading.Thread(target=lambda: [channel.basic_publish("", name, body(number))
                                                    for number in range(MESSAGES)], daemon=True)
        flooding.start()
        wait_for(lambda: publisher.blocked is not None, "the publisher to hear it is blocked")
        first.stop(signal.SIGKILL)
        flooding.join(DEADLINE_SECONDS)
        assert not flooding.is_alive() and publisher.blocked is None
        assert publisher.port == second.amqp_port
        # What the first broker took before it died is lost with it (it kept no disk); the
        # rest of the flood is on the second.
        taken_by_the_first = (LIMIT + SLACK) // BODY_BYTES
        assert channel.queue_declare(name, passive=True).method.message_count >= MESSAGES - taken_by_the_first
        publisher.close()


# -- memory given back ---------------------------------------------------------------------------

# Messages the size of a small document, and big ones (which glibc would serve with mmaps of
# their own, given back at once, but for memory.HEAP_ALLOCATION_MAX_BYTES): both from the
# heap, where only malloc_trim returns freed pages. Together they pass the drop that starts
# a trim, quickly published.
TRIM_BODY_SIZES = [16 * 1024, 1024 * 1024]
TRIM_BYTES = memory.TRIM_AFTER_DROP_BYTES + 32 * 1024 * 1024


def resident_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.mark.skipif(memory._malloc_trim is None or not os.path.exists("/proc/self/status"),
                    reason="needs glibc's malloc_trim and Linux's /proc")
@pytest.mark.parametrize("body_bytes", TRIM_BODY_SIZES)
def test_memory_of_a_purged_queue_is_given_back_to_the_system(name, body_bytes):
    with BrokerProcess("--in-memory") as broker:
        client = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        channel = client.channel()
        channel.queue_declare(name)
        baseline = resident_bytes(broker.pid)
        messages = TRIM_BYTES // body_bytes
        for number in range(messages):
            channel.basic_publish("", name, body(number).ljust(body_bytes, b"."))
        assert channel.queue_declare(name, passive=True).method.message_count == messages
        peak = resident_bytes(broker.pid)
        assert peak - baseline > memory.TRIM_AFTER_DROP_BYTES
        channel.queue_purge(name)
        # Freed, CPython's and glibc's memory stays resident until trimmed; given back, the
        # broker is within a quarter of the peak's height above where it began (the goal).
        wait_for(lambda: resident_bytes(broker.pid) < baseline + (peak - baseline) / 4,
                 f"RSS to fall from {peak >> 20} MiB towards {baseline >> 20} MiB")
        client.close()


@pytest.mark.parametrize("limit, drop", [(4 * memory.TRIM_AFTER_DROP_BYTES, memory.TRIM_AFTER_DROP_BYTES),
                                         (32 * 1024 * 1024, 8 * 1024 * 1024)], ids=["large-limit", "small-limit"])
def test_a_queue_filled_and_emptied_between_two_looks_of_the_trimmer_is_trimmed(monkeypatch, limit, drop):
    """The trimmer looks at the count once a TRIM_CHECK_SECONDS; the high point in between
    is kept where publishers are admitted. A drop of TRIM_AFTER_DROP_BYTES starts a trim,
    and glibc keeps no more free at the heap's top; with a small limit, a quarter of it."""
    trims, options = [], {}
    monkeypatch.setattr(memory, "_malloc_trim", trims.append)
    monkeypatch.setattr(memory, "_mallopt", options.__setitem__)
    monkeypatch.setattr(memory, "TRIM_CHECK_SECONDS", 0.05)
    budget = memory.MemoryBudget(limit)
    budget.start_trimming()
    try:
        assert options[memory._M_TRIM_THRESHOLD] == drop
        gevent.sleep(0)             # the trimmer takes its starting point
        budget.held_bytes += drop
        assert budget.admits_publishers()
        budget.held_bytes -= drop
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not trims:
            assert time.monotonic() < deadline, f"no trim after a drop of {drop} bytes"
            gevent.sleep(0.01)
        assert trims == [0]
    finally:
        budget._trimmer.kill()


# -- the accounting, in the core (no broker process) -------------------------------------------

def test_every_way_a_message_ends_gives_its_bytes_back(node):
    """Held bytes return to where they were whichever door the messages leave by: ack,
    no-ack delivery and get, reject (dead-lettered to a queue that is then purged), expiry,
    a queue TTL of 0 with no consumer, drop-head and reject-publish overflow, purge, and deletion of a queue with unacked ones."""
    channel, sink = open_channel(node)
    vhost = channel.vhost
    before = node.memory.held_bytes
    vhost.declare_queue("dead")
    vhost.declare_queue("q", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    vhost.declare_queue("short", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    vhost.declare_queue("head", arguments={"x-max-length": 1})
    vhost.declare_queue("expiring")
    vhost.declare_queue("ttl0", arguments={"x-message-ttl": 0})
    publish(channel, "q", *[b"m%d" % number for number in range(6)])
    assert node.memory.held_bytes == before + 6 * memory.MESSAGE_OVERHEAD_BYTES + sum(len(b"m%d" % n) for n in range(6))
    first = channel.get("q")
    channel.ack(first[0])
    channel.get("q", no_ack=True)
    channel.consume("q", "acker", no_ack=False)
    tags = [delivery[2] for delivery in sink.deliveries]
    channel.reject(tags[0], requeue=False)          # dead-lettered into "dead"
    channel.cancel("acker")
    publish(channel, "short", b"kept", b"refused")
    publish(channel, "head", b"dropped", b"kept")
    channel.publish("", "expiring", b"gone", {"expiration": "0"})   # a queue TTL of 0 would drop it at once:
    publish(channel, "ttl0", b"dropped at once")
    channel.consume("dead", "eater", no_ack=True)
    vhost.purge_queue("short")
    vhost.purge_queue("head")
    assert vhost.queues["expiring"].drop_expired() == 1
    vhost.delete_queue("q")          # its unacked deliveries end when the channel lets them go
    channel.session.close()
    assert node.memory.held_bytes == before


# -- resuming publishers -----------------------------------------------------------------------

# The budget's promise: publishers blocked above the limit are read again only once held
# memory is below nine tenths of it (a tenth free for their next burst).
RESUME_MARK = LIMIT * 9 // 10
# Between the limit and the resume mark, how long a blocked publisher is watched staying
# blocked: twenty of the budget's looks at the count.
STAYS_BLOCKED_SECONDS = 20 * memory.BLOCKED_CHECK_SECONDS


def test_a_blocked_publisher_is_resumed_only_below_nine_tenths_of_the_limit(name):
    with BrokerProcess("--memory-limit", "4MiB", "--in-memory", *NOT_PAGING) as broker, \
            connection.Connection(port=broker.port) as publisher, \
            connection.Connection(port=broker.port) as getter:
        publisher.channel().queue_declare(name)
        # Just enough to pass the limit with the last message, so every one is read before
        # the broker stops reading and nothing more arrives once it reads again.
        channel = publisher.channel()
        for number in range(LIMIT // (BODY_BYTES + memory.MESSAGE_OVERHEAD_BYTES) + 1):
            channel.basic_publish("", name, body(number))
        wait_for(lambda: publisher.process_data_events(0.01) or publisher.blocked is not None,
                 "the publisher to hear it is blocked")
        gets = getter.channel()

        def drain_below(mark):
            """basic.get until held memory is below `mark`, seeing the publishers blocked
            all the while that it is at or above the resume mark."""
            while True:
                status = getter.call("status")["memory"]
                assert status["publishers_blocked"] or status["held_bytes"] < RESUME_MARK, status
                if status["held_bytes"] < mark:
                    return
                assert gets.basic_get(name, auto_ack=True)[0] is not None, status

        drain_below(LIMIT)
        drain_below((LIMIT + RESUME_MARK) // 2)     # below the limit, well above the mark
        watched_since = time.monotonic()
        while time.monotonic() - watched_since < STAYS_BLOCKED_SECONDS:
            assert getter.call("status")["memory"]["publishers_blocked"]
            assert publisher.blocked is not None
            publisher.process_data_events(0.02)
        drain_below(RESUME_MARK)
        wait_for(lambda: publisher.process_data_events(0.01) or publisher.blocked is None,
                 "the publisher to hear it is unblocked")
        assert not getter.call("status")["memory"]["publishers_blocked"]


# -- what is counted ---------------------------------------------------------------------------

def test_a_second_node_in_one_process_starts_with_nothing_held(node):
    channel, _ = open_channel(node)
    channel.vhost.declare_queue("q")
    publish(channel, "q", b"m" * 1000)
    held = node.memory.held_bytes
    assert held >= 1000
    second = Node()
    assert second.memory.held_bytes == 0
    channel, _ = open_channel(second)
    channel.vhost.declare_queue("q")
    publish(channel, "q", b"m" * 10)
    assert node.memory.held_bytes == held       # each node counts its own


FANOUT_QUEUES = 10
LARGE_BODY_BYTES = 1024 * 1024


def test_a_body_routed_to_ten_queues_counts_once(name):
    """One 1 MiB body in ten queues holds one body (each queue's copy shares it): the budget
    counts it once, not ten times, and lets it go with the last copy."""
    with BrokerProcess("--in-memory") as broker, connection.Connection(port=broker.port) as conn:
        channel = conn.channel()
        queues = [f"{name}-{number}" for number in range(FANOUT_QUEUES)]
        for queue in queues:
            channel.queue_declare(queue)
            channel.queue_bind(queue, "amq.fanout", "")
        before = memory_status(broker)["held_bytes"]
        channel.basic_publish("amq.fanout", "", b"x" * LARGE_BODY_BYTES)
        wait_for(lambda: all(channel.queue_declare(queue, passive=True).method.message_count == 1
                             for queue in queues), "the message in every queue")
        held = memory_status(broker)["held_bytes"] - before
        assert LARGE_BODY_BYTES <= held <= LARGE_BODY_BYTES + FANOUT_QUEUES * memory.MESSAGE_OVERHEAD_BYTES
        for queue in queues[:-1]:
            channel.queue_purge(queue)
        assert memory_status(broker)["held_bytes"] - before >= LARGE_BODY_BYTES    # one copy still holds it
        channel.queue_purge(queues[-1])
        assert memory_status(broker)["held_bytes"] == before


# A message streamed larger than the limit: four times it, well under the largest allowed.
STREAMED_BYTES = 4 * LIMIT


def _amqp_stream(broker):
    """Starts an AMQP publish of STREAMED_BYTES; returns a function sending the next part
    of its body, as whole body frames."""
    client = AmqpRawClient(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f").open()
    client.open_channel(1)
    client.send(amqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key="nowhere"), 1)
                + amqp_frame.marshal(amqp_header.ContentHeader(0, STREAMED_BYTES, spec.Basic.Properties()), 1))
    frame_body = 131072 - 8

    def send(size):
        client.send(b"".join(amqp_frame.marshal(amqp_body.ContentBody(b"x" * min(frame_body, size - start)), 1)
                             for start in range(0, size, frame_body)))
    return client.sock, send


def _json_lines_stream(broker):
    """Starts a JSON-lines publish of STREAMED_BYTES; returns a function sending the next
    part of its line (never its end)."""
    client = RawClient(broker.port)
    client.send_raw(b'{"op": "publish", "routing_key": "nowhere", "body": "')
    return client.sock, lambda size: client.send_raw(b"x" * size)


@pytest.mark.parametrize("stream", [_amqp_stream, _json_lines_stream], ids=["amqp", "json-lines"])
def test_a_message_still_arriving_counts_and_its_sender_is_paused_over_the_limit(stream):
    """Input not yet whole (an AMQP content, a JSON line) counts as it arrives, and a
    connection streaming a message is paused like a publisher above the limit, before its
    first publish is whole: it cannot stream a message of many times the limit unpaused."""
    with BrokerProcess("--memory-limit", "4MiB", "--in-memory", *NOT_PAGING) as broker:
        sock, send = stream(broker)
        send(LIMIT // 2)
        wait_for(lambda: memory_status(broker)["held_bytes"] >= LIMIT // 2, "the partial message to count")
        assert not memory_status(broker)["publishers_blocked"]

        def send_the_rest():
            try:
                send(STREAMED_BYTES - LIMIT // 2)
            except OSError:
                pass        # closed by the test while the broker was not reading it
        sender = threading.Thread(target=send_the_rest, daemon=True)
        sender.start()
        wait_for(lambda: memory_status(broker)["publishers_blocked"], "the broker to block the streaming sender")
        assert memory_status(broker)["held_bytes"] < LIMIT + SLACK
        sock.close()
        sender.join(DEADLINE_SECONDS)


def test_an_http_publish_counts_while_its_body_arrives(name):
    """The body of a publish through the HTTP API is held while it is read and routed: it
    counts from its first byte, and is given back once the message is in its queue."""
    with BrokerProcess("--in-memory") as broker, connection.Connection(port=broker.port) as admin:
        admin.channel().queue_declare(name)
        before = memory_status(broker)["held_bytes"]
        start = b'{"routing_key": "%s", "payload_encoding": "string", "payload": "' % name.encode()
        end = b'"}'
        payload = LARGE_BODY_BYTES
        with socket.create_connection(("127.0.0.1", broker.http_port), timeout=DEADLINE_SECONDS) as sock:
            sock.sendall(b"POST /api/exchanges/%%2F/amq.default/publish HTTP/1.1\r\n"
                         b"Host: 127.0.0.1:%d\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % (broker.http_port, len(start) + payload + len(end)) + start + b"x" * (payload // 2))
            wait_for(lambda: memory_status(broker)["held_bytes"] - before >= payload, "the HTTP publish to count")
            sock.sendall(b"x" * (payload - payload // 2) + end)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: memory_status(broker)["held_bytes"] - before == payload + memory.MESSAGE_OVERHEAD_BYTES,
                 "the HTTP publish's count to become its message's")


class _SlowSocket:
    """A socket that takes nothing without waiting, and sends all only once released."""

    def __init__(self):
        self.released = gevent.event.Event()
        self.sent = b""

    def send(self, data, flags, timeout):
        return 0

    def sendall(self, data):
        self.released.wait()
        self.sent += data

    def sendmsg(self, buffers):
        self.released.wait()
        data = b"".join(buffers)
        self.sent += data
        return len(data)


def test_output_taken_for_a_socket_that_has_not_accepted_it_still_counts(node):
    """Output leaves the protocol's outbox for the transport's pending send before the
    socket takes it: it counts until the socket has it all."""
    protocol = JsonLinesProtocol(node, ("127.0.0.1", 1))
    sock = _SlowSocket()
    output = transport._Output(sock, protocol)
    before = node.memory.held_bytes
    protocol._write(b"x" * 1000)
    output.send_now()                   # nothing accepted: all of it pending
    assert (protocol.outbox_bytes, sum(map(len, output.pending))) == (0, 1000)
    assert node.memory.held_bytes == before + 1000
    protocol._write(b"y" * 500)
    writer = gevent.spawn(output.write_loop)
    try:
        gevent.sleep(0)                 # the writer takes both and waits in sendall
        assert protocol.outbox_bytes == 0
        assert node.memory.held_bytes == before + 1500
        sock.released.set()
        gevent.sleep(0)
        assert sock.sent == b"x" * 1000 + b"y" * 500
        assert node.memory.held_bytes == before
    finally:
        writer.kill()


@pytest.mark.parametrize("stream", [_amqp_stream, _json_lines_stream], ids=["amqp", "json-lines"])
def test_a_message_left_unfinished_by_its_connection_is_given_back(stream):
    with BrokerProcess("--in-memory") as broker:
        before = memory_status(broker)["held_bytes"]
        sock, send = stream(broker)
        send(LIMIT // 2)
        wait_for(lambda: memory_status(broker)["held_bytes"] >= before + LIMIT // 2, "the partial message to count")
        sock.close()
        wait_for(lambda: memory_status(broker)["held_bytes"] == before, "its bytes to be given back")


# -- what the store holds until its commit -----------------------------------------------------

PAGED_BODY_BYTES = 4096
# Twice what the limit holds: a lazy queue keeps none of them in memory, so only the store's
# uncommitted batch can stop the publisher before it sends them all.
PAGED_MESSAGES = 2 * LIMIT // PAGED_BODY_BYTES


def test_messages_waiting_for_a_stalled_commit_count_and_block_publishers_and_none_is_lost(name, tmp_path):
    """A disk that stops: persistent messages to a lazy queue are held by the store's open
    batch alone until it commits, and they count, so publishers are blocked near the limit
    instead of the batch growing without bound; once the disk goes on, every message is
    confirmed and arrives once, in order."""
    gate = str(tmp_path / "commit-gate")
    with BrokerProcess("--memory-limit", "4MiB", script="tests/stalled_commit_broker.py",
                       env={**os.environ, stalled_commit_broker.GATE_VARIABLE: gate}) as broker, \
            connection.Connection(port=broker.port) as admin:
        # Closed only once it is unblocked: a broker that never unblocks it ends it by stopping.
        publisher = connection.Connection(port=broker.port)
        admin.channel().queue_declare(name, durable=True, arguments={"x-queue-mode": "lazy"})
        os.mkfifo(gate)
        channel = publisher.channel()
        channel.confirm_delivery(window=PAGED_MESSAGES)

        failures = []

        def publish_all():
            try:
                for number in range(PAGED_MESSAGES):
                    channel.basic_publish("", name, f"{number:08d}".encode().ljust(PAGED_BODY_BYTES, b"."),
                                          {"delivery_mode": 2})
                channel.wait_for_confirms()
            except Exception as exc:     # a nack included: reported below
                failures.append(exc)
        publishing = threading.Thread(target=publish_all, daemon=True)
        publishing.start()

        def queued():
            return admin.channel().queue_declare(name, passive=True).method.message_count
        wait_for(lambda: memory_status(broker)["publishers_blocked"] or queued() == PAGED_MESSAGES,
                 "the publisher blocked or every message accepted")
        status = memory_status(broker)
        assert status["publishers_blocked"] and status["held_bytes"] > LIMIT, status
        assert queued() < PAGED_MESSAGES
        stalled_commit_broker.release(gate, stalled_commit_broker.hold(gate))
        publishing.join(DEADLINE_SECONDS)
        assert not publishing.is_alive() and not failures, failures
        publisher.close()
        received = []
        consumer = admin.channel()
        while len(received) < PAGED_MESSAGES:
            method, _, body = consumer.basic_get(name, auto_ack=True)
            assert method is not None, f"{len(received)} of {PAGED_MESSAGES} messages arrived"
            received.append(int(body[:8]))
        assert received == list(range(PAGED_MESSAGES))
        assert "Traceback" not in broker.log()
