"""AMQP 0-9-1 over raw sockets: what a broken or hostile client gets, by reply code and
the class/method ids of the failing method, and that other connections do not notice.
Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL."""

import os
import random
import socket
import struct
from urllib.parse import urlparse

import pika
import pytest
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp import body as amqp_body
from pamqp import heartbeat as amqp_heartbeat

from tests.broker_process import BrokerProcess

WAIT = 10.0
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class RawClient:
    """A socket that speaks AMQP frames through pamqp and nothing else."""

    def __init__(self, amqp_url):
        url = urlparse(amqp_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # small frames, answers awaited
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def send_method(self, channel, method):
        self.send(amqp_frame.marshal(method, channel))

    def receive(self):
        """The next frame as (channel, frame object), or None once the broker closed."""
        while True:
            if self.buffer:
                consumed, channel, value = amqp_frame.unmarshal(self.buffer)
                if consumed:
                    self.buffer = self.buffer[consumed:]
                    return channel, value
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def expect(self, method_type, channel=None):
        while True:
            got = self.receive()
            assert got is not None, f"connection closed while waiting for {method_type.name}"
            if channel is not None and got[0] != channel:
                continue
            if not isinstance(got[1], amqp_heartbeat.Heartbeat):
                assert isinstance(got[1], method_type), got[1]
                return got[1]

    def open(self, frame_max=131072):
        self.send(PROTOCOL_HEADER)
        self.expect(spec.Connection.Start)
        self.send_method(0, spec.Connection.StartOk(
            client_properties={"product": "raw"}, mechanism="PLAIN", response="\0guest\0guest"))
        tune = self.expect(spec.Connection.Tune)
        self.send_method(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=frame_max,
                                                   heartbeat=0))
        self.send_method(0, spec.Connection.Open(virtual_host="/"))
        self.expect(spec.Connection.OpenOk)
        return self

    def open_channel(self, number=1):
        self.send_method(number, spec.Channel.Open())
        self.expect(spec.Channel.OpenOk, number)

    def expect_connection_close(self):
        """The broker's connection.close; answers close-ok and checks the socket then ends.
        After a frame error the broker may hang up without waiting for the close-ok."""
        close = self.expect(spec.Connection.Close, 0)
        try:
            self.send_method(0, spec.Connection.CloseOk())
        except OSError:
            pass
        assert self.receive_until_closed()
        return close

    def receive_until_closed(self):
        """True once the broker closed the socket (a reset counts: it may close with our
        bytes unread)."""
        try:
            while self.receive() is not None:
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self):
        self.sock.close()


@pytest.fixture
def raw(amqp_url):
    clients = []

    def connect():
        client = RawClient(amqp_url)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def bystander(amqp_url, name):
    """A pika connection with a message waiting, to show it survives others' mistakes."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(name, auto_delete=True)
    channel.basic_publish("", name, b"still here")
    yield channel
    assert channel.basic_get(name, auto_ack=True)[2] == b"still here"
    connection.close()


def frame(frame_type, channel, payload, end=b"\xce"):
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


def test_a_wrong_protocol_header_gets_the_right_one_back_and_a_close(raw, bystander):
    client = raw()
    client.send(b"AMQP\x01\x01\x00\x0a")
    assert client.sock.recv(64) == PROTOCOL_HEADER
    assert client.receive_until_closed()


def test_http_instead_of_amqp_gets_the_protocol_header(raw, bystander):
    client = raw()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.sock.recv(64) == PROTOCOL_HEADER
    assert client.receive_until_closed()


def test_a_frame_with_a_bad_end_byte_is_a_frame_error(raw, bystander):
    client = raw().open()
    client.open_channel()
    client.send(frame(1, 1, struct.pack(">HH", 50, 10) + b"\x00" * 20, end=b"\x00"))
    close = client.expect_connection_close()
    assert close.reply_code == 501


def test_garbage_after_the_handshake_closes_only_that_connection(raw, bystander):
    client = raw().open()
    client.send(b"\x07" + b"\xab" * 200)
    close = client.expect_connection_close()
    assert close.reply_code == 501


def test_a_frame_over_the_negotiated_frame_max_is_a_frame_error(raw, bystander):
    client = raw().open(frame_max=4096)
    client.open_channel()
    client.send_method(1, spec.Basic.Publish(exchange="", routing_key="q"))
    header = amqp_header.ContentHeader(0, 5000, spec.Basic.Properties())
    client.send(amqp_frame.marshal(header, 1))
    client.send(amqp_frame.marshal(amqp_body.ContentBody(b"x" * 5000), 1))
    close = client.expect_connection_close()
    assert close.reply_code == 501
    assert "frame" in close.reply_text.lower()


def test_an_unknown_method_closes_the_connection_with_its_ids(raw, bystander):
    client = raw().open()
    client.open_channel()
    client.send(frame(1, 1, struct.pack(">HH", 60, 999)))
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        # RabbitMQ 3.10 resets the connection without a word; GreenMQ says why.
        assert client.receive_until_closed()
        return
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (540, 60, 999)


def test_a_method_on_a_channel_never_opened_is_a_channel_error(raw, bystander):
    client = raw().open()
    client.send_method(3, spec.Queue.Declare(queue="", exclusive=True))
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (504, 50, 10)


def test_a_method_on_a_closed_channel_is_a_channel_error(raw, bystander):
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    client.expect(spec.Channel.CloseOk, 1)
    client.send_method(1, spec.Basic.Qos(prefetch_count=1))
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (504, 60, 10)


def test_a_channel_error_carries_the_ids_of_the_failing_method(raw, bystander, name):
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Queue.Bind(queue="missing-" + name, exchange="amq.direct", routing_key="k"))
    close = client.expect(spec.Channel.Close, 1)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 20)
    client.send_method(1, spec.Channel.CloseOk())
    client.open_channel(1)                  # the number can be used again at once


def test_content_without_basic_publish_is_an_unexpected_frame(raw, bystander):
    client = raw().open()
    client.open_channel(1)
    client.send(amqp_frame.marshal(amqp_body.ContentBody(b"stray"), 1))
    close = client.expect_connection_close()
    assert close.reply_code == 505


def test_a_method_in_place_of_a_content_header_is_an_unexpected_frame(raw, bystander):
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Basic.Publish(exchange="", routing_key="q"))
    client.send_method(1, spec.Basic.Qos(prefetch_count=1))
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (505, 60, 40)   # the basic.publish


def test_recover_without_requeue_is_not_implemented(raw, bystander):
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Basic.Recover(requeue=False))
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (540, 60, 110)


def test_a_wrong_password_is_refused(raw, bystander):
    client = raw()
    client.send(PROTOCOL_HEADER)
    client.expect(spec.Connection.Start)
    client.send_method(0, spec.Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="PLAIN", response="\0guest\0wrong"))
    close = client.expect(spec.Connection.Close, 0)
    assert close.reply_code == 403
    assert client.receive_until_closed()


def test_a_client_that_stops_sending_heartbeats_is_disconnected(raw, bystander):
    client = raw()
    client.send(PROTOCOL_HEADER)
    client.expect(spec.Connection.Start)
    client.send_method(0, spec.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                                  response="\0guest\0guest"))
    tune = client.expect(spec.Connection.Tune)
    client.send_method(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=131072, heartbeat=1))
    client.send_method(0, spec.Connection.Open(virtual_host="/"))
    client.expect(spec.Connection.OpenOk)
    heartbeats = 0
    try:
        while (got := client.receive()) is not None:      # never answering
            heartbeats += isinstance(got[1], amqp_heartbeat.Heartbeat)
    except ConnectionResetError:
        pass
    assert heartbeats >= 1          # the broker sent its own before giving up on ours


def test_channel_flow_is_answered_with_flow_ok(raw, bystander):
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Channel.Flow(active=True))
    assert client.expect(spec.Channel.FlowOk, 1).active is True
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        return      # RabbitMQ 3.10 answers active=false with 540 NOT_IMPLEMENTED
    # GreenMQ pauses the channel's consumers, as the spec and issue 4 ask.
    client.send_method(1, spec.Channel.Flow(active=False))
    assert client.expect(spec.Channel.FlowOk, 1).active is False


def test_a_paused_channel_gets_no_deliveries_until_flow_resumes(raw, bystander, against_greenmq, name):
    queue = name + ".paused"
    client = raw().open()
    client.open_channel(1)
    client.send_method(1, spec.Queue.Declare(queue=queue, auto_delete=True))
    client.expect(spec.Queue.DeclareOk, 1)
    client.send_method(1, spec.Channel.Flow(active=False))
    client.expect(spec.Channel.FlowOk, 1)
    client.send_method(1, spec.Basic.Consume(queue=queue, consumer_tag="paused", no_ack=True))
    client.expect(spec.Basic.ConsumeOk, 1)
    client.send_method(1, spec.Basic.Publish(exchange="", routing_key=queue))
    client.send(amqp_frame.marshal(amqp_header.ContentHeader(0, 2, spec.Basic.Properties()), 1))
    client.send(amqp_frame.marshal(amqp_body.ContentBody(b"hi"), 1))
    client.send_method(1, spec.Queue.Declare(queue=queue, passive=True))
    assert client.expect(spec.Queue.DeclareOk, 1).message_count == 1     # held in the queue
    client.send_method(1, spec.Channel.Flow(active=True))
    client.expect(spec.Channel.FlowOk, 1)
    assert client.expect(spec.Basic.Deliver, 1).consumer_tag == "paused"


def test_a_channel_over_channel_max_is_refused(raw, bystander, against_greenmq):
    """channel_max is "the highest channel number the client may use" in the spec; RabbitMQ
    3.10 instead counts open channels against it, so this checks GreenMQ only."""
    client = raw()
    client.send(PROTOCOL_HEADER)
    client.expect(spec.Connection.Start)
    client.send_method(0, spec.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                                  response="\0guest\0guest"))
    client.expect(spec.Connection.Tune)
    client.send_method(0, spec.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0))
    client.send_method(0, spec.Connection.Open(virtual_host="/"))
    client.expect(spec.Connection.OpenOk)
    client.open_channel(10)
    client.send_method(11, spec.Channel.Open())
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (530, 20, 10)


def test_start_offers_plain_and_amqplain_and_the_capabilities_clients_need(raw, bystander):
    client = raw()
    client.send(PROTOCOL_HEADER)
    start = client.expect(spec.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert set(start.mechanisms.split()) >= {"PLAIN", "AMQPLAIN"}
    capabilities = start.server_properties["capabilities"]
    needed = {"publisher_confirms", "basic.nack", "consumer_cancel_notify", "authentication_failure_close",
              "per_consumer_qos", "exchange_exchange_bindings", "consumer_priorities", "connection.blocked"}
    assert {name for name, value in capabilities.items() if value} >= needed
    if not os.environ.get("GREENMQ_TEST_AMQP_URL"):
        # Only what GreenMQ really implements: no direct reply-to.
        assert set(capabilities) == needed
        assert start.mechanisms.split() == ["PLAIN", "AMQPLAIN"]


def test_a_deleted_queue_cancels_silently_for_clients_without_consumer_cancel_notify(raw, bystander, amqp_url, name):
    client = raw().open()         # its client_properties announce no capabilities
    client.open_channel(1)
    queue = name + ".silent"
    client.send_method(1, spec.Queue.Declare(queue=queue))
    client.expect(spec.Queue.DeclareOk, 1)
    client.send_method(1, spec.Basic.Consume(queue=queue, consumer_tag="quiet"))
    client.expect(spec.Basic.ConsumeOk, 1)
    other = pika.BlockingConnection(pika.URLParameters(amqp_url))
    other.channel().queue_delete(queue)
    other.close()
    client.send_method(1, spec.Basic.Qos(prefetch_count=3))
    client.expect(spec.Basic.QosOk, 1)         # and no basic.cancel before it


@pytest.mark.parametrize("class_id, method_id, arguments", [
    (50, 10, b"\x10abc"),          # queue.declare, its queue name cut short
    (60, 40, b"\x00\x10abc"),      # basic.publish (decoded apart from the rest), its routing key cut short
])
def test_undecodable_method_arguments_are_a_frame_error_naming_the_method(raw, bystander, class_id, method_id,
                                                                          arguments):
    """As RabbitMQ answers it: 501 with the method's ids (not 502, which it does not use here)."""
    client = raw().open()
    client.open_channel()
    client.send(frame(1, 1, struct.pack(">HHH", class_id, method_id, 0) + arguments))
    close = client.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (501, class_id, method_id)


def test_a_content_header_missing_the_properties_its_flags_announce_is_a_frame_error(raw, bystander,
                                                                                    against_greenmq):
    """GreenMQ decodes properties on arrival; RabbitMQ only when it needs them, and says
    nothing here."""
    client = raw().open()
    client.open_channel()
    # content_type's flag set, with no short string after the flags; then the body.
    client.send(amqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key="q"), 1)
                + frame(2, 1, struct.pack(">HHQH", 60, 0, 5, 0x8000)) + amqp_frame.marshal(amqp_body.ContentBody(b"body!"), 1))
    close = client.expect_connection_close()
    assert close.reply_code == 501


def _publish_frames(channel, routing_key, body, body_frames=1):
    """basic.publish, its content header and its body in `body_frames` frames."""
    cut = len(body) // body_frames
    pieces = [body[i * cut:(i + 1) * cut if i + 1 < body_frames else len(body)] for i in range(body_frames)]
    frames = [spec.Basic.Publish(exchange="", routing_key=routing_key), amqp_header.ContentHeader(0, len(body))]
    frames += [amqp_body.ContentBody(piece) for piece in pieces if piece]
    return [amqp_frame.marshal(f, channel) for f in frames]


def test_contents_of_two_channels_may_interleave(raw, bystander, name):
    """Frames of different channels may interleave (AMQP 0-9-1, 4.2.6); each content is
    assembled on its own channel, whatever arrives in between."""
    reader, name = bystander, f"{name}.interleaved"       # the bystander's queue keeps its message
    reader.queue_declare(name, auto_delete=True)
    client = raw().open()
    client.open_channel(1)
    client.open_channel(2)
    one, two = _publish_frames(1, name, b"one"), _publish_frames(2, name, b"two" * 10, body_frames=2)
    client.send(one[0] + two[0] + one[1] + two[1] + two[2] + one[2] + two[3])
    three, four = _publish_frames(1, name, b"three"), _publish_frames(2, name, b"four!")
    client.send(three[0] + three[1] + four[0] + four[1] + three[2] + four[2])
    client.send(b"".join(_publish_frames(1, name, b"")))
    client.send(b"".join(_publish_frames(1, name, b"five", body_frames=2)))
    client.send_method(1, spec.Basic.Qos(prefetch_count=1))
    client.expect(spec.Basic.QosOk, 1)       # so the publishes before it were all taken
    client.send_method(2, spec.Basic.Qos(prefetch_count=1))
    client.expect(spec.Basic.QosOk, 2)
    bodies = [reader.basic_get(name, auto_ack=True)[2] for _ in range(6)]
    # Channels are not ordered among themselves.
    assert sorted(bodies) == [b"", b"five", b"four!", b"one", b"three", b"two" * 10]


def test_each_publish_goes_where_it_says_in_a_run_of_similar_ones(raw, bystander, name):
    """Publishes that differ only in a character of the routing key or in a flag, sent
    back to back, are each routed by their own arguments."""
    queues = [f"{name}.a", f"{name}.b"]
    for queue in queues:
        bystander.queue_declare(queue, auto_delete=True)
    client = raw().open()
    client.open_channel(1)
    frames = []
    for n, (queue, mandatory) in enumerate([(0, False), (1, False), (0, False), (0, True), (1, True)]):
        frames += [spec.Basic.Publish(exchange="", routing_key=queues[queue], mandatory=mandatory),
                   amqp_header.ContentHeader(0, 1), amqp_body.ContentBody(str(n).encode())]
    frames += [spec.Basic.Publish(exchange="", routing_key=f"{name}.c", mandatory=True),
               amqp_header.ContentHeader(0, 1), amqp_body.ContentBody(b"5")]
    client.send(b"".join(amqp_frame.marshal(f, 1) for f in frames))
    returned = client.expect(spec.Basic.Return, 1)
    assert (returned.reply_code, returned.routing_key) == (312, f"{name}.c")
    got = {queue: [] for queue in queues}
    for queue in queues:
        while (body := bystander.basic_get(queue, auto_ack=True)[2]) is not None:
            got[queue].append(body)
    assert got == {queues[0]: [b"0", b"2", b"3"], queues[1]: [b"1", b"4"]}


def test_a_body_frame_before_its_own_channels_content_header_is_an_unexpected_frame(raw, bystander, name):
    """Even when another channel's content header came in between."""
    client = raw().open()
    client.open_channel(1)
    client.open_channel(2)
    one, two = _publish_frames(1, name, b"one"), _publish_frames(2, name, b"two")
    client.send(one[0] + two[0] + one[1] + two[2])
    close = client.expect_connection_close()
    assert close.reply_code == 505


def test_an_empty_body_frame_after_an_empty_content_is_an_unexpected_frame(raw, bystander, name):
    """A content header announcing no body completes the message; a body frame after it
    belongs to no message."""
    client = raw().open()
    client.open_channel()
    client.send(b"".join(_publish_frames(1, name, b"")) + amqp_frame.marshal(amqp_body.ContentBody(b""), 1))
    close = client.expect_connection_close()
    assert close.reply_code == 505


def test_a_body_frame_larger_than_its_content_header_announced_is_a_frame_error(raw, bystander, name,
                                                                                 against_greenmq):
    """RabbitMQ 3.10 says nothing here; GreenMQ refuses content it cannot frame."""
    client = raw().open()
    client.open_channel()
    publish, header, _ = _publish_frames(1, name, b"four")
    client.send(publish + header + amqp_frame.marshal(amqp_body.ContentBody(b"five!"), 1))
    close = client.expect_connection_close()
    assert close.reply_code == 501


def test_a_stopping_broker_tells_amqp_clients_why(against_greenmq):
    with BrokerProcess() as broker:
        connection = pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"))
        assert broker.stop() == 0
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(WAIT)
        assert closed.value.reply_code == 320
        assert "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'" in closed.value.reply_text


def _random_frames(rng, channels):
    """Method and content frames in random order and with random arguments: whatever a
    confused client might ask of the core (the framing errors have tests of their own)."""
    queue = lambda: rng.choice(("fuzz.a", "fuzz.b", ""))      # noqa: E731
    flag = lambda: rng.random() < 0.5                            # noqa: E731
    methods = (
        lambda: spec.Channel.Flow(active=flag()),
        lambda: spec.Exchange.Declare(exchange="fuzz.x", exchange_type=rng.choice(("direct", "fanout", "topic")),
                                      durable=flag()),
        lambda: spec.Exchange.Delete(exchange="fuzz.x", if_unused=flag()),
        lambda: spec.Queue.Declare(queue=queue(), exclusive=flag(), auto_delete=flag(), passive=rng.random() < 0.2,
                                   arguments=rng.choice(({}, {}, {"x-message-ttl": 5}, {"x-expires": 50},
                                                         {"x-message-ttl": -1}, {"x-expires": "soon"}))),
        lambda: spec.Queue.Bind(queue=queue(), exchange=rng.choice(("fuzz.x", "amq.topic", "")), routing_key="#"),
        lambda: spec.Queue.Purge(queue=queue()),
        lambda: spec.Queue.Delete(queue=queue(), if_empty=flag()),
        lambda: spec.Basic.Qos(prefetch_count=rng.randint(0, 2), global_=flag()),
        lambda: spec.Basic.Consume(queue=queue(), consumer_tag=rng.choice(("", "fuzz")), no_ack=flag(),
                                   exclusive=flag()),
        lambda: spec.Basic.Cancel(consumer_tag="fuzz"),
        lambda: spec.Basic.Get(queue=queue(), no_ack=flag()),
        lambda: spec.Basic.Ack(delivery_tag=rng.randint(0, 4), multiple=flag()),
        lambda: spec.Basic.Nack(delivery_tag=rng.randint(0, 4), multiple=flag(), requeue=flag()),
        lambda: spec.Basic.Reject(delivery_tag=rng.randint(0, 4), requeue=flag()),
        lambda: spec.Basic.Recover(requeue=True),
        lambda: spec.Confirm.Select(),
        lambda: spec.Tx.Select(),
        lambda: spec.Tx.Commit(),
        lambda: spec.Tx.Rollback(),
    )
    for _ in range(300):
        number = rng.choice(channels)
        if rng.random() < 0.4:
            body = b"x" * rng.randint(0, 3)
            properties = spec.Basic.Properties(expiration=rng.choice((None, None, "0", "5")),
                                               headers={"h": rng.choice((1, "s", [1], {"n": None}))})
            frames = [spec.Basic.Publish(exchange=rng.choice(("", "", "fuzz.x", "fuzz.missing")),
                                         routing_key=queue(), mandatory=flag()),
                      amqp_header.ContentHeader(0, len(body), properties)]
            if body:
                frames.append(amqp_body.ContentBody(body))
            yield b"".join(amqp_frame.marshal(f, number) for f in frames)
        else:
            yield amqp_frame.marshal(rng.choice(methods)(), number)


def _settle(client, sync_channel):
    """Waits until the broker has answered everything sent so far (a basic.qos on a channel
    kept for this answers last), reopening channels it closed; False once it closed the
    connection. Deterministic: the broker answers in order."""
    client.send_method(sync_channel, spec.Basic.Qos(prefetch_count=0))
    while True:
        got = client.receive()
        if got is None or isinstance(got[1], spec.Connection.Close):
            return False
        number, method = got
        if isinstance(method, spec.Channel.Close):
            client.send_method(number, spec.Channel.CloseOk())
            client.send_method(number, spec.Channel.Open())
        elif number == sync_channel and isinstance(method, spec.Basic.QosOk):
            return True


def test_random_method_sequences_never_crash_the_broker(fresh_broker, against_greenmq):
    """Random method sequences over several channels, which the client reopens whenever the
    broker closes one: each error is refused alone, the broker logs no traceback and goes
    on serving. Fixed seeds, so a failure reproduces."""
    url = f"amqp://guest:guest@127.0.0.1:{fresh_broker.amqp_port}/%2f"
    channels, sync_channel = (1, 2, 3), 4
    frames_sent = 0
    for seed in range(40):
        client = RawClient(url).open()
        for number in channels + (sync_channel,):
            client.open_channel(number)
        try:
            for i, data in enumerate(_random_frames(random.Random(seed), channels)):
                client.send(data)
                frames_sent += 1
                if i % 5 == 4 and not _settle(client, sync_channel):
                    break
        except OSError:
            pass        # the broker closed this connection for an error of its own
        client.close()
    assert frames_sent > 10000      # most sequences ran to their end
    assert "Traceback" not in fresh_broker.log()
    after = RawClient(url).open()
    after.open_channel()
    after.send_method(1, spec.Queue.Declare(queue="", exclusive=True))
    assert after.expect(spec.Queue.DeclareOk, 1).queue.startswith("amq.gen-")
    after.close()


def test_a_message_over_the_maximum_size_closes_the_channel_with_406_and_the_connection_goes_on(raw, bystander, name):
    client = raw().open()
    client.open_channel(1)
    size = 128 * 1024 * 1024 + 1                  # RabbitMQ's default max_message_size, and a byte
    client.send_method(1, spec.Basic.Publish(exchange="", routing_key=name))
    client.send(amqp_frame.marshal(amqp_header.ContentHeader(0, size, spec.Basic.Properties()), 1))
    chunk = 131072 - 8
    body_frame = frame(3, 1, b"x" * chunk)
    for _ in range(size // chunk):
        client.send(body_frame)
    client.send(frame(3, 1, b"x" * (size % chunk)))
    close = client.expect(spec.Channel.Close, 1)
    assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 40)
    assert close.reply_text == ("PRECONDITION_FAILED - message size 134217729 is larger than "
                                "configured max size 134217728")
    client.send_method(1, spec.Channel.CloseOk())
    client.open_channel(2)
    client.send_method(2, spec.Queue.Declare(queue=name, auto_delete=True))
    assert client.expect(spec.Queue.DeclareOk, 2).message_count == 1     # the bystander's message only
