"""How the broker's output reaches the sockets: what the input of one poll made for a
connection goes out in one write, however many connections that input came from."""

import socket
import struct
import sys

import pytest
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from tests.broker_process import BrokerProcess
from tests.test_amqp_wire import RawClient

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's TCP_INFO")

# Publishers each sending one message at once (a web application's workers).
PUBLISHERS = 16


def segments_received(sock):
    """tcpi_segs_in of Linux's struct tcp_info: each write of the broker's to this socket
    arrives as one segment over loopback."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("=I", info, 140)[0]


def test_messages_from_many_connections_read_in_one_poll_reach_their_consumer_in_one_write():
    broker = BrokerProcess().start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        consumer = RawClient(url).open()
        consumer.open_channel()
        consumer.send_method(1, spec.Queue.Declare(queue="batched"))
        consumer.expect(spec.Queue.DeclareOk, 1)
        consumer.send_method(1, spec.Basic.Consume(queue="batched", no_ack=True))
        consumer.expect(spec.Basic.ConsumeOk, 1)
        publishers = [RawClient(url).open() for _ in range(PUBLISHERS)]
        for publisher in publishers:
            publisher.open_channel()
        body = b"one of many"
        frames = b"".join(amqp_frame.marshal(frame, 1) for frame in (
            spec.Basic.Publish(exchange="", routing_key="batched"),
            amqp_header.ContentHeader(0, len(body), spec.Basic.Properties()),
            amqp_body.ContentBody(body)))
        before = segments_received(consumer.sock)
        # Frozen, the broker finds every publish waiting when it goes on: one poll wakes
        # all the publishers' sockets.
        with broker.frozen():
            for publisher in publishers:
                publisher.send(frames)
        for _ in publishers:
            consumer.expect(spec.Basic.Deliver, 1)
            consumer.expect(amqp_header.ContentHeader, 1)
            assert consumer.expect(amqp_body.ContentBody, 1).value == body
        # Usually one write; the hub may run a reader before its poll has seen every socket
        # that woke with it, so a second may carry the rest. One a message would be 16.
        assert 1 <= segments_received(consumer.sock) - before <= PUBLISHERS // 4
        for client in (consumer, *publishers):
            client.close()
    finally:
        broker.close()
