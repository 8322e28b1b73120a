"""Big bodies: byte-exact over both protocols however the frames and reads cut them (just
under and over frame_max, several MiB, fanout, a consumer too slow for its socket), and
one body object from the read buffer to every queue and the socket writes."""

import base64
import json
import os
import socket

import pytest
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from greenmq import lines, memory, transport
from greenmq.amqp_protocol import FRAME_MAX, AmqpConnection
from greenmq.node import Node
from greenmq.protocol import JsonLinesProtocol
from tests.test_amqp_wire import RawClient as AmqpRawClient
from tests.test_bad_input import RawClient as JsonLinesRawClient

PEER = ("127.0.0.1", 1)
BODY_FRAME_BYTES = FRAME_MAX - 8        # the most body one frame carries
MIB = 1024 * 1024

# Sizes at the edges of one body frame and of frame_max, and one of several MiB.
EDGE_SIZES = [BODY_FRAME_BYTES - 1, BODY_FRAME_BYTES, BODY_FRAME_BYTES + 1, FRAME_MAX + 1, 3 * MIB + 7]


def _bodies(size):
    """Bodies of `size` bytes of each kind a front end treats apart: binary (base64 over
    JSON lines), ASCII JSON carries as it is, ASCII that needs escapes, UTF-8 text."""
    text = ("a\"b\\c\n" * size)[:size].encode()
    utf8 = ("é" * size).encode()[:size - size % 2]
    return [os.urandom(size), b"x" * size, text, utf8]


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_big_bodies_arrive_byte_exact_in_every_queue_of_a_fanout(connect, name, size):
    conn = connect()
    channel = conn.channel()
    channel.exchange_declare(name, "fanout")
    queues = [f"{name}-{number}" for number in range(3)]
    for queue in queues:
        channel.queue_declare(queue)
        channel.queue_bind(queue, name)
    bodies = _bodies(size)
    for body in bodies:
        channel.basic_publish(name, "", body)
    for queue in queues:
        got = [channel.basic_get(queue, auto_ack=True)[2] for _ in bodies]
        assert [len(body) for body in got] == [len(body) for body in bodies]
        assert got == bodies
        channel.queue_delete(queue)
    channel.exchange_delete(name)


def test_small_and_big_deliveries_interleaved_keep_their_order(connect, name):
    """Small deliveries, each a buffer of its own, and big ones sent as several go out in
    the order they were made, more of them at once than one writev may gather."""
    conn = connect()
    channel = conn.channel()
    channel.queue_declare(name)
    bodies = [os.urandom(transport.SCATTERED_BODY_BYTES + n) if n % 500 == 0 else b"small %d" % n
              for n in range(2 * transport.MAX_WRITE_BUFFERS + 1)]
    for body in bodies:
        channel.basic_publish("", name, body)
    received = []
    channel.basic_consume(name, lambda ch, method, properties, body: received.append(body), auto_ack=True)
    while len(received) < len(bodies):
        conn.process_data_events(1)
    assert received == bodies


# -- a consumer slower than its socket ---------------------------------------------------

SLOW_BODIES = 6
# The consumer's socket buffer and reads: far less than what waits for it, so the broker's
# writes are taken in part; not much less, or TCP's window updates make it crawl.
SLOW_READ_BYTES = 64 * 1024


def _publish_and_wait(broker, queue, bodies):
    """Publishes `bodies` to `queue` over AMQP with confirms; returns once all are routed."""
    publisher = AmqpRawClient(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f").open()
    publisher.open_channel(1)
    publisher.send_method(1, spec.Confirm.Select())
    publisher.expect(spec.Confirm.SelectOk, 1)
    for body in bodies:
        frames = [spec.Basic.Publish(exchange="", routing_key=queue),
                  amqp_header.ContentHeader(0, len(body), spec.Basic.Properties())]
        frames += [amqp_body.ContentBody(body[at:at + BODY_FRAME_BYTES]) for at in range(0, len(body), BODY_FRAME_BYTES)]
        publisher.send(b"".join(amqp_frame.marshal(frame, 1) for frame in frames))
    acked = 0
    while acked < len(bodies):
        ack = publisher.expect(spec.Basic.Ack, 1)
        acked = ack.delivery_tag
    publisher.sock.close()


def _small_receive_buffer(sock):
    """Little room in the consumer's socket: the broker's writes are taken in part."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ_BYTES)


def test_a_slow_amqp_consumer_gets_big_bodies_byte_exact(broker, name):
    """Deliveries of several MiB wait for a consumer whose socket takes a little at a time:
    each write is accepted in part, and what was left goes on where it stopped."""
    bodies = [os.urandom(MIB + 3 * n) for n in range(SLOW_BODIES)]
    consumer = AmqpRawClient(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f")
    _small_receive_buffer(consumer.sock)
    consumer.open().open_channel(1)
    consumer.send_method(1, spec.Queue.Declare(queue=name))
    consumer.expect(spec.Queue.DeclareOk, 1)
    consumer.send_method(1, spec.Basic.Consume(queue=name, no_ack=True))
    consumer.expect(spec.Basic.ConsumeOk, 1)
    _publish_and_wait(broker, name, bodies)
    received, frames = [], _frames(consumer.sock, consumer.buffer)
    for _ in bodies:
        assert isinstance(next(frames), spec.Basic.Deliver)
        header = next(frames)
        parts, size = [], 0
        while size < header.body_size:
            part = next(frames).value
            parts.append(part)
            size += len(part)
        received.append(b"".join(parts))
    assert received == bodies
    consumer.sock.close()


def _lines(sock, buffer):
    """The lines `sock` brings after `buffer`, read SLOW_READ_BYTES at a time."""
    parts = [buffer]
    while True:
        data = sock.recv(SLOW_READ_BYTES)
        assert data, "the broker closed the connection"
        *whole, rest = data.split(b"\n")
        for line in whole:
            parts.append(line)
            yield b"".join(parts)
            parts = []
        parts.append(rest)


def _frames(sock, buffer):
    """The frames `sock` brings after `buffer`, read SLOW_READ_BYTES at a time."""
    buffer = bytearray(buffer)
    while True:
        if len(buffer) >= 7:
            frame_end = 7 + int.from_bytes(buffer[3:7], "big") + 1
            if len(buffer) >= frame_end:
                yield amqp_frame.unmarshal(bytes(buffer[:frame_end]))[2]
                del buffer[:frame_end]
                continue
        data = sock.recv(SLOW_READ_BYTES)
        assert data, "the broker closed the connection"
        buffer += data


def test_a_slow_json_lines_consumer_gets_big_bodies_byte_exact(broker, name):
    bodies = [os.urandom(MIB + 3 * n) for n in range(SLOW_BODIES - 1)] + [b"y" * MIB]
    consumer = JsonLinesRawClient(broker.port)
    _small_receive_buffer(consumer.sock)
    assert consumer.call({"op": "queue.declare", "queue": name})["ok"]
    assert consumer.call({"op": "consume", "queue": name, "no_ack": True})["ok"]
    _publish_and_wait(broker, name, bodies)
    received, lines = [], _lines(consumer.sock, consumer.buffer)
    for _ in bodies:
        event = json.loads(next(lines))
        assert event["event"] == "deliver"
        received.append(base64.b64decode(event["body"]) if event.get("body_encoding") == "base64"
                        else event["body"].encode())
    assert received == bodies
    consumer.sock.close()


# -- big buffers reused, not faulted in afresh --------------------------------------------

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Messages flow through in rounds, each published whole before it is consumed: several MiB
# held and then freed together, as at a broker that keeps up with its publishers.
REUSE_ROUND_MESSAGES = 8
REUSE_WARM_UP_ROUNDS = 2
REUSE_ROUNDS = 4


def _minor_faults(pid):
    """Page faults the process has taken that needed no disk: fresh pages it touched."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def _deliver_in_rounds(broker, queue, rounds):
    """Each round's bodies published (confirmed) and then received by a no-ack consumer
    before the next round; returns the rounds received."""
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
    consumer, publisher = AmqpRawClient(url).open(), AmqpRawClient(url).open()
    consumer.open_channel(1)
    consumer.send_method(1, spec.Basic.Consume(queue=queue, no_ack=True))
    consumer.expect(spec.Basic.ConsumeOk, 1)
    publisher.open_channel(1)
    publisher.send_method(1, spec.Confirm.Select())
    publisher.expect(spec.Confirm.SelectOk, 1)
    frames, received, tag = _frames(consumer.sock, consumer.buffer), [], 0
    for bodies in rounds:
        for body in bodies:
            content = [spec.Basic.Publish(exchange="", routing_key=queue),
                       amqp_header.ContentHeader(0, len(body), spec.Basic.Properties())]
            content += [amqp_body.ContentBody(body[at:at + BODY_FRAME_BYTES])
                        for at in range(0, len(body), BODY_FRAME_BYTES)]
            publisher.send(b"".join(amqp_frame.marshal(frame, 1) for frame in content))
        tag += len(bodies)
        while publisher.expect(spec.Basic.Ack, 1).delivery_tag < tag:
            pass
        received.append([])
        for _ in bodies:
            assert isinstance(next(frames), spec.Basic.Deliver)
            size, parts = next(frames).body_size, []
            while sum(map(len, parts)) < size:
                parts.append(next(frames).value)
            received[-1].append(b"".join(parts))
    publisher.sock.close()
    consumer.sock.close()
    return received


@pytest.mark.skipif(memory._mallopt is None or not os.path.exists("/proc/self/stat"),
                    reason="needs glibc's mallopt and Linux's /proc")
def test_big_bodies_flowing_through_reuse_the_brokers_memory(broker, name):
    """Once a few rounds of messages have passed, the buffers of the next ones (their
    reads, their joined bodies) reuse freed memory rather than fresh pages, each of which
    costs the kernel a fault: far fewer faults per message than one body has pages."""
    control = AmqpRawClient(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f").open()
    control.open_channel(1)
    control.send_method(1, spec.Queue.Declare(queue=name))
    control.expect(spec.Queue.DeclareOk, 1)
    rounds = [[os.urandom(MIB + n) for n in range(REUSE_ROUND_MESSAGES)]
              for _ in range(REUSE_WARM_UP_ROUNDS + REUSE_ROUNDS)]
    warm_up, measured = rounds[:REUSE_WARM_UP_ROUNDS], rounds[REUSE_WARM_UP_ROUNDS:]
    assert _deliver_in_rounds(broker, name, warm_up) == warm_up
    before = _minor_faults(broker.pid)
    assert _deliver_in_rounds(broker, name, measured) == measured
    faults_per_message = (_minor_faults(broker.pid) - before) / (REUSE_ROUNDS * REUSE_ROUND_MESSAGES)
    assert faults_per_message < MIB / PAGE_BYTES / 4, f"{faults_per_message:.0f} page faults per 1 MiB message"
    control.send_method(1, spec.Queue.Delete(queue=name))
    control.expect(spec.Queue.DeleteOk, 1)
    control.sock.close()


# -- one body object, from the read to the queues and the socket --------------------------

def _amqp_client_bytes(frame_max=FRAME_MAX):
    """What an AMQP client sends to log in and open channel 1."""
    return b"AMQP\x00\x00\x09\x01" + b"".join(amqp_frame.marshal(method, channel) for method, channel in (
        (spec.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest"), 0),
        (spec.Connection.TuneOk(channel_max=0, frame_max=frame_max, heartbeat=0), 0),
        (spec.Connection.Open(virtual_host="/"), 0),
        (spec.Channel.Open(), 1)))


def _in_pieces(data, piece):
    return [data[at:at + piece] for at in range(0, len(data), piece)]


def _fanout_queues(node, exchange, count):
    """`count` queues bound to a new fanout exchange; every other one with a message TTL,
    so that it holds a copy of its own of each message (Message.placed), its body shared."""
    vhost = node.vhosts["/"]
    vhost.declare_exchange(exchange, "fanout")
    queues = []
    for number in range(count):
        queue = vhost.declare_queue(f"{exchange}-{number}", arguments={"x-message-ttl": 60_000} if number % 2 else None)
        vhost.bind(queue.name, exchange, "", None)
        queues.append(queue)
    return queues


def _the_one_body(queues):
    """The body object every queue holds its copy of the message with; fails unless it is one."""
    bodies = {id(message.body): message.body for queue in queues for message in queue.ready}
    assert len(bodies) == 1, f"{len(bodies)} body objects for one message in {len(queues)} queues"
    return next(iter(bodies.values()))


@pytest.mark.parametrize("size", [BODY_FRAME_BYTES, 3 * BODY_FRAME_BYTES + 5])
@pytest.mark.parametrize("piece", [7001, 256 * 1024])
def test_an_amqp_body_is_one_object_in_every_queue_and_in_every_delivery(size, piece):
    """One body object for all the queues of a fanout, and the deliveries' output holds it
    (or memoryviews of it) between the frame heads rather than copies."""
    node = Node()
    queues = _fanout_queues(node, "fan", 4)
    body = os.urandom(size)
    connection = AmqpConnection(node, PEER)
    publish = [spec.Basic.Publish(exchange="fan", routing_key=""),
               amqp_header.ContentHeader(0, size, spec.Basic.Properties())]
    publish += [amqp_body.ContentBody(body[at:at + BODY_FRAME_BYTES]) for at in range(0, size, BODY_FRAME_BYTES)]
    for data in _in_pieces(_amqp_client_bytes() + b"".join(amqp_frame.marshal(f, 1) for f in publish), piece):
        connection.data_received(data)
    held = _the_one_body(queues)
    assert type(held) is bytes and held == body
    connection.take_output()
    for queue in queues:
        connection.data_received(amqp_frame.marshal(spec.Basic.Consume(queue=queue.name, no_ack=True), 1))
        sent = connection.take_output_buffers()
        connection.output_drained()         # as the transport says once the socket took it
        of_body = [buffer for buffer in sent if buffer is held or (type(buffer) is memoryview and buffer.obj is held)]
        assert len(of_body) == -(-size // BODY_FRAME_BYTES)       # one per body frame
        assert b"".join(of_body) == body


def test_a_json_lines_body_is_one_object_in_every_queue_and_in_every_delivery():
    node = Node()
    queues = _fanout_queues(node, "fan", 4)
    body = b"z" * (3 * BODY_FRAME_BYTES)        # text JSON carries as it is
    protocol = JsonLinesProtocol(node, PEER)
    lines = b"".join(json.dumps(request).encode() + b"\n" for request in (
        {"op": "hello"}, {"op": "publish", "exchange": "fan", "body": base64.b64encode(body).decode(), "body_encoding": "base64"}))
    for data in _in_pieces(lines, 7001):
        protocol.data_received(data)
    held = _the_one_body(queues)
    assert type(held) is bytes and held == body
    protocol.take_output()
    for queue in queues:
        protocol.data_received(json.dumps({"op": "consume", "queue": queue.name, "no_ack": True}).encode() + b"\n")
        assert sum(buffer is held for buffer in protocol.take_output_buffers()) == 1
        protocol.output_drained()


def test_long_json_lines_in_one_read_are_each_taken_whole():
    """Lines long enough to be taken as memoryviews of the read (lines.VIEWED_LINE_BYTES),
    several in one read, after the end of a line begun in the read before."""
    node = Node()
    node.vhosts["/"].declare_queue("q")
    protocol = JsonLinesProtocol(node, PEER)
    bodies = [(b"%d" % n) * (lines.VIEWED_LINE_BYTES + n) for n in range(1, 5)]
    data = b"".join(json.dumps(request).encode() + b"\n" for request in [{"op": "hello"}] + [
        {"op": "publish", "routing_key": "q", "body": body.decode()} for body in bodies])
    first_line_end = data.index(b"\n") + 1
    protocol.data_received(data[:first_line_end + 10])
    protocol.data_received(data[first_line_end + 10:])
    assert [message.body for message in node.vhosts["/"].queues["q"].ready] == bodies
