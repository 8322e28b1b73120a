"""RabbitMQ's direct reply-to through pika: a requester consumes the pseudo-queue
`amq.rabbitmq.reply-to`, and replies to the name its request's `reply_to` was given reach
it with no queue between. Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (the listings
and JSON lines only against GreenMQ)."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

import connection
from tests.test_amqp_pika import until

REPLY_TO = "amq.rabbitmq.reply-to"


def request(connections, name):
    """A requester consuming its replies, and the request it sent to the queue `name` as
    a server receives it: (requester's connection, its channel, replies it got, the
    request's properties)."""
    server = connections().channel()
    server.queue_declare(name, auto_delete=True)
    requester = connections()
    channel = requester.channel()
    replies = []
    channel.basic_consume(REPLY_TO, lambda ch, method, properties, body: replies.append((method, properties, body)),
                          auto_ack=True)
    channel.basic_publish("", name, b"request", pika.BasicProperties(reply_to=REPLY_TO, correlation_id="42"))
    got = []
    until(lambda: got.append(server.basic_get(name, auto_ack=True)) or got[-1][0] is not None, requester)
    _, properties, body = got[-1]
    assert body == b"request"
    return requester, channel, replies, properties


def test_reply_to_the_rewritten_name_reaches_the_requesters_reply_consumer(connections, name):
    requester, channel, replies, properties = request(connections, name)
    reply_name = properties.reply_to
    assert reply_name.startswith(REPLY_TO + ".") and len(reply_name) > len(REPLY_TO) + 1
    assert properties.correlation_id == "42"
    server = connections().channel()
    server.basic_publish("", reply_name, b"reply", pika.BasicProperties(correlation_id="42"))
    until(lambda: replies, requester)
    method, reply_properties, body = replies[0]
    assert (body, reply_properties.correlation_id) == (b"reply", "42")
    assert (method.exchange, method.routing_key) == ("", reply_name)


def test_reply_to_names_are_no_queues_in_the_listings(connections, name, broker, against_greenmq):
    requester, channel, replies, properties = request(connections, name)
    channel.queue_declare(REPLY_TO)     # some clients declare it before consuming
    listings = connection.Connection("127.0.0.1", broker.port)
    try:
        names = [queue["name"] for queue in listings.list_queues()]
    finally:
        listings.close()
    assert name in names
    assert not [queue for queue in names if queue.startswith(REPLY_TO)]


def test_declaring_reply_to_answers_no_messages_and_one_consumer(connections):
    channel = connections().channel()
    for passive in (True, False):
        ok = channel.queue_declare(REPLY_TO, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)


def test_consuming_reply_to_with_acks_is_refused(connections):
    channel = connections().channel()
    with pytest.raises(ChannelClosedByBroker) as refused:
        channel.basic_consume(REPLY_TO, lambda *args: None, auto_ack=False)
    assert refused.value.reply_code == 406
    assert refused.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


@pytest.mark.parametrize("in_a_transaction", [False, True])
def test_publishing_with_reply_to_without_consuming_it_is_refused_when_sent(connections, name, in_a_transaction):
    channel = connections().channel()
    channel.queue_declare(name, auto_delete=True)
    if in_a_transaction:
        channel.tx_select()
    channel.basic_publish("", name, b"request", pika.BasicProperties(reply_to=REPLY_TO))
    with pytest.raises(ChannelClosedByBroker) as refused:
        channel.queue_declare(name, passive=True)   # the refusal arrives first; no commit is sent
    assert refused.value.reply_code == 406
    assert refused.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def close_by_client(channel):
    channel.close()     # pika cancels the channel's consumers first


def close_for_an_error(channel):
    with pytest.raises(ChannelClosedByBroker):
        channel.queue_declare("no queue has this name", passive=True)


@pytest.mark.parametrize("close", [close_by_client, close_for_an_error])
def test_a_reply_after_the_requesters_channel_closed_is_dropped_or_returned(connections, name, close):
    requester, channel, replies, properties = request(connections, name)
    reply_name = properties.reply_to
    lookup = requester.channel()
    assert lookup.queue_declare(reply_name, passive=True).method.consumer_count == 1
    close(channel)
    with pytest.raises(ChannelClosedByBroker) as missing:
        lookup.queue_declare(reply_name, passive=True)
    assert missing.value.reply_code == 404
    server = connections().channel()
    server.confirm_delivery()
    server.basic_publish("", reply_name, b"late reply")      # dropped
    with pytest.raises(UnroutableError):
        server.basic_publish("", reply_name, b"late reply", mandatory=True)


def test_a_reply_after_the_reply_consumer_was_cancelled_is_returned_to_a_mandatory_publisher(connections, name):
    requester, channel, replies, properties = request(connections, name)
    channel.basic_cancel(channel.consumer_tags[0])
    server = connections().channel()
    server.confirm_delivery()
    with pytest.raises(UnroutableError):
        server.basic_publish("", properties.reply_to, b"late reply", mandatory=True)


def test_direct_reply_to_works_over_json_lines_too(conn, name, against_greenmq):
    channel = conn.channel()
    channel.queue_declare(name, auto_delete=True)
    replies = []
    channel.basic_consume(REPLY_TO, lambda ch, method, properties, body: replies.append((method, body)),
                          auto_ack=True)
    channel.basic_publish("", name, b"request", {"reply_to": REPLY_TO})
    got = []
    until(lambda: got.append(channel.basic_get(name, auto_ack=True)) or got[-1][0] is not None, conn)
    reply_name = got[-1][1].reply_to
    assert reply_name.startswith(REPLY_TO + ".")
    channel.basic_publish("", reply_name, b"reply")
    until(lambda: replies, conn)
    assert (replies[0][0].routing_key, replies[0][1]) == (reply_name, b"reply")
