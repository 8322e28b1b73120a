"""AMQP methods answered as RabbitMQ 3.10 answers them, one test per difference the
differential test (tests/differential) found. Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL."""

import pika
import pytest
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pika.exceptions import ChannelClosedByBroker

from tests.test_amqp_pika import until
from tests.test_amqp_wire import RawClient


def refused(call):
    """The reply code of the channel.close `call` ends in."""
    with pytest.raises(ChannelClosedByBroker) as closed:
        call()
    return closed.value.reply_code


def test_unbinding_from_a_missing_queue_or_exchange_succeeds(connections, name):
    channel = connections().channel()
    channel.exchange_declare(name, "direct", auto_delete=True)
    channel.queue_declare(name, auto_delete=True)
    channel.queue_unbind(name + "-missing", name, "k")
    channel.queue_unbind(name, name + "-missing", "k")
    channel.queue_unbind(name, name, "never-bound")
    assert refused(lambda: channel.queue_unbind(name, "", "k")) == 403


def test_aio_pika_rpc_close_unbinds_after_its_auto_delete_queue_went(connections, name):
    """What aio-pika's RPC.close() does: cancel the consumer of an auto-delete queue bound
    to an auto-delete exchange, which takes both away, then unbind them."""
    channel = connections().channel()
    channel.exchange_declare(name, "direct", auto_delete=True)
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, name, queue)
    tag = channel.basic_consume(queue, lambda *args: None)
    channel.basic_cancel(tag)
    channel.queue_unbind(queue, name, queue)
    assert channel.is_open


def test_unbinding_from_anothers_exclusive_queue_is_locked_only_if_the_binding_exists(connections, name):
    owner = connections().channel()
    owner.queue_declare(name, exclusive=True)
    owner.queue_bind(name, "amq.direct", "bound")
    other = connections()
    channel = other.channel()
    channel.queue_unbind(name, "amq.direct", "not-bound")
    assert refused(lambda: channel.queue_unbind(name, "amq.direct", "bound")) == 405


def test_redeclaring_an_exclusive_queue_without_exclusive_is_locked(connections, name):
    connection = connections()
    channel = connection.channel()
    channel.queue_declare(name, exclusive=True)
    assert refused(lambda: channel.queue_declare(name, exclusive=False)) == 405
    channel = connection.channel()
    # Locked comes before inequivalent arguments.
    assert refused(lambda: channel.queue_declare(name, durable=True)) == 405


def test_an_exclusive_queue_is_transient_whatever_durable_says(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, exclusive=True, durable=True)
    channel.queue_declare(name, exclusive=True, durable=False)
    channel.queue_declare(name, exclusive=True, durable=True)


def test_deleting_a_queue_that_is_not_empty_says_so_in_rabbitmqs_words(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    channel.basic_publish("", name, b"m")
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_delete(name, if_empty=True)
    assert (closed.value.reply_code, closed.value.reply_text) == (
        406, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty")


def test_a_reused_consumer_tag_is_refused_before_the_queue_is_looked_up(amqp_url, name):
    client = RawClient(amqp_url).open()
    try:
        client.open_channel(1)
        client.send_method(1, spec.Queue.Declare(queue=name, auto_delete=True))
        client.expect(spec.Queue.DeclareOk, 1)
        client.send_method(1, spec.Basic.Consume(queue=name, consumer_tag="tag"))
        client.expect(spec.Basic.ConsumeOk, 1)
        client.send_method(1, spec.Basic.Consume(queue=name + "-missing", consumer_tag="tag"))
        close = client.expect_connection_close()
        assert (close.reply_code, close.class_id, close.method_id) == (530, 60, 20)
    finally:
        client.close()


def test_a_closing_connection_gets_no_deliveries_of_what_it_returns(amqp_url, connections, name):
    """Messages a closing connection's channel requeues are not delivered to a consumer on
    another of its channels, which is closing too."""
    client = RawClient(amqp_url).open()
    try:
        client.open_channel(1)
        client.open_channel(2)
        client.send_method(1, spec.Queue.Declare(queue=name))
        client.expect(spec.Queue.DeclareOk, 1)
        client.send_method(1, spec.Basic.Publish(exchange="", routing_key=name))
        client.send(b"".join(_content(1, b"m")))
        client.send_method(1, spec.Basic.Get(queue=name))
        client.expect(spec.Basic.GetOk, 1)
        client.send_method(2, spec.Basic.Consume(queue=name, consumer_tag="later"))
        client.expect(spec.Basic.ConsumeOk, 2)
        client.send_method(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        frames = []
        while not frames or frames[-1] != "Connection.CloseOk":
            frames.append(client.receive()[1].name)
        assert "Basic.Deliver" not in frames
    finally:
        client.close()
    channel = connections().channel()
    assert channel.queue_delete(name).method.message_count == 1


def test_get_counts_what_is_left_without_expired_messages_at_the_head(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    channel.basic_publish("", name, b"first")
    channel.basic_publish("", name, b"expired", pika.BasicProperties(expiration="0"))
    channel.basic_publish("", name, b"last")
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert (body, method.message_count) == (b"first", 1)


def test_a_refused_publish_in_confirm_mode_closes_the_channel_without_a_nack(amqp_url, name):
    client = RawClient(amqp_url).open()
    try:
        client.open_channel(1)
        client.send_method(1, spec.Confirm.Select())
        client.expect(spec.Confirm.SelectOk, 1)
        client.send_method(1, spec.Basic.Publish(exchange=name + "-missing", routing_key="k"))
        client.send(b"".join(_content(1, b"m")))
        close = client.expect(spec.Channel.Close, 1)
        assert close.reply_code == 404
        client.send_method(1, spec.Channel.CloseOk())
        client.send_method(2, spec.Channel.Open())
        frames = []     # until channel 2 is open, whatever the broker still had for channel 1 is in
        while not frames or frames[-1] != (2, "Channel.OpenOk"):
            channel, frame = client.receive()
            frames.append((channel, frame.name))
        assert frames == [(2, "Channel.OpenOk")]
    finally:
        client.close()


def test_a_transaction_refuses_an_unknown_delivery_tag_at_once(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    channel.tx_select()
    channel.basic_ack(99)
    assert refused(lambda: channel.queue_declare(name, passive=True)) == 406


def test_a_transaction_refuses_a_tag_it_already_settled(connections, name):
    channel = connections().channel()
    channel.queue_declare(name)
    channel.basic_publish("", name, b"m")
    method, _, _ = channel.basic_get(name)
    channel.tx_select()
    channel.basic_ack(method.delivery_tag)
    channel.basic_reject(method.delivery_tag)
    assert refused(lambda: channel.queue_declare(name, passive=True)) == 406
    channel = connections().channel()
    assert channel.queue_declare(name, passive=True).method.message_count == 1   # never committed
    channel.queue_delete(name)


def test_a_transaction_acks_what_it_settled_at_commit_and_not_after_rollback(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", name, body)
    tags = [channel.basic_get(name)[0].delivery_tag for _ in range(3)]
    channel.tx_select()
    channel.basic_ack(tags[1], multiple=True)
    channel.tx_rollback()
    channel.basic_ack(tags[0])          # settled again: the rollback forgot it
    channel.basic_ack(tags[2], multiple=True)
    channel.tx_commit()
    assert channel.queue_declare(name, passive=True).method.message_count == 0
    channel.basic_recover(requeue=True)
    assert channel.queue_declare(name, passive=True).method.message_count == 0


def test_a_transaction_refuses_a_publish_to_a_missing_exchange_at_once(connections, name):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    channel.tx_select()
    channel.basic_publish(name + "-missing", "k", b"m")
    assert refused(lambda: channel.queue_declare(name, passive=True)) == 404


def _content(channel, body):
    return [amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), spec.Basic.Properties()), channel),
            amqp_frame.marshal(amqp_body.ContentBody(body), channel)]


def test_a_basic_get_awaiting_its_ack_takes_no_room_in_the_channels_prefetch_window(connections, name):
    """RabbitMQ's channel-wide (global) qos counts consumer deliveries only."""
    connection = connections()
    channel = connection.channel()
    channel.queue_declare(name, auto_delete=True)
    for body in (b"m1", b"m2", b"m3", b"m4"):
        channel.basic_publish("", name, body)
    channel.basic_qos(prefetch_count=1, global_qos=True)
    gets = [channel.basic_get(name, auto_ack=False) for _ in range(2)]
    assert [body for _, _, body in gets] == [b"m1", b"m2"]
    delivered = []
    channel.basic_consume(name, lambda ch, method, properties, body: delivered.append(body))
    until(lambda: delivered, connection)
    assert delivered == [b"m3"]
    # The window of one is full now: m4 waits, also once the gets are settled.
    assert channel.queue_declare(name, passive=True).method.message_count == 1
    channel.basic_ack(gets[0][0].delivery_tag)
    channel.basic_reject(gets[1][0].delivery_tag, requeue=False)
    assert channel.queue_declare(name, passive=True).method.message_count == 1
