"""A user restricted by configure/write/read regular expressions is refused, in both
protocols, with RabbitMQ's code and sentence (checked against RabbitMQ 3.10), and may do
what its permissions allow."""

import pika
import pytest

from greenmq import connection

USER, PASSWORD = "app-permissions", "app-secret"
ALLOWED = "^app-"          # configure, write and read: names starting with app-


@pytest.fixture(scope="module")
def restricted(broker):
    """The user, with rights on app-* only, and an app- and an other- queue and exchange."""
    with connection.Connection("127.0.0.1", broker.port) as admin:
        admin.call("user.add", user=USER, password=PASSWORD)
        admin.call("permissions.set", user=USER, vhost="/", configure=ALLOWED, write=ALLOWED, read=ALLOWED)
        channel = admin.default_channel
        for kind in ("app", "other"):
            channel.queue_declare(f"{kind}-q")
            channel.exchange_declare(f"{kind}-x", "direct")
        yield broker
        admin.call("user.delete", user=USER)
        for kind in ("app", "other"):
            channel.queue_delete(f"{kind}-q")
            channel.exchange_delete(f"{kind}-x")


def refused(resource, name):
    return f"ACCESS_REFUSED - access to {resource} '{name}' in vhost '/' refused for user '{USER}'"


# (what, the call on a pika-style channel, the sentence); the same calls on connection.py's
# channels, which share pika's names.
REFUSALS = [
    ("declare a queue", lambda ch: ch.queue_declare("other-q2"), refused("queue", "other-q2")),
    ("declare an exchange", lambda ch: ch.exchange_declare("other-x2", "direct"), refused("exchange", "other-x2")),
    ("delete a queue", lambda ch: ch.queue_delete("other-q"), refused("queue", "other-q")),
    ("delete an exchange", lambda ch: ch.exchange_delete("other-x"), refused("exchange", "other-x")),
    ("bind another's queue", lambda ch: ch.queue_bind("other-q", "app-x", "k"), refused("queue", "other-q")),
    ("bind from another's exchange", lambda ch: ch.queue_bind("app-q", "other-x", "k"), refused("exchange", "other-x")),
    ("bind from amq.direct", lambda ch: ch.queue_bind("app-q", "amq.direct", "k"), refused("exchange", "amq.direct")),
    ("publish to another's exchange", lambda ch: ch.basic_publish("other-x", "k", b"x"), refused("exchange", "other-x")),
    ("publish to the default exchange", lambda ch: ch.basic_publish("", "app-q", b"x"),
     refused("exchange", "amq.default")),
    ("consume", lambda ch: ch.basic_consume("other-q", lambda *delivery: None), refused("queue", "other-q")),
    ("get", lambda ch: ch.basic_get("other-q"), refused("queue", "other-q")),
    ("purge", lambda ch: ch.queue_purge("other-q"), refused("queue", "other-q")),
]


@pytest.mark.parametrize("operation, sentence", [(call, sentence) for _, call, sentence in REFUSALS],
                         ids=[what for what, _, _ in REFUSALS])
def test_pika_is_refused_with_403_and_rabbitmqs_sentence(restricted, operation, sentence):
    with pika.BlockingConnection(pika.URLParameters(
            f"amqp://{USER}:{PASSWORD}@127.0.0.1:{restricted.amqp_port}/%2f")) as client:
        channel = client.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            operation(channel)
            channel.basic_qos(prefetch_count=1)    # a round trip: a refused publish is reported by then
        assert (closed.value.reply_code, closed.value.reply_text) == (403, sentence)


@pytest.mark.parametrize("operation, sentence", [(call, sentence) for _, call, sentence in REFUSALS],
                         ids=[what for what, _, _ in REFUSALS])
def test_connection_py_is_refused_with_403_and_rabbitmqs_sentence(restricted, operation, sentence):
    with connection.Connection("127.0.0.1", restricted.port, USER, PASSWORD) as client:
        channel = client.channel()
        with pytest.raises(connection.AccessRefused) as refusal:
            operation(channel)
            # A refused publish has no answer of its own: it is raised by the channel's next
            # call after it has arrived (the first round trip brings it).
            channel.basic_qos(prefetch_count=1)
            channel.basic_qos(prefetch_count=1)
        assert (refusal.value.code, refusal.value.text) == (403, sentence)


def test_what_the_permissions_allow_works_in_both_protocols(restricted):
    with pika.BlockingConnection(pika.URLParameters(
            f"amqp://{USER}:{PASSWORD}@127.0.0.1:{restricted.amqp_port}/%2f")) as client:
        channel = client.channel()
        channel.queue_declare("other-q", passive=True)      # passive declares need no rights, as in RabbitMQ
        channel.queue_declare("app-q")
        channel.queue_bind("app-q", "app-x", "k")
        channel.basic_publish("app-x", "k", b"allowed")
        assert channel.basic_get("app-q", auto_ack=True)[2] == b"allowed"
    with connection.Connection("127.0.0.1", restricted.port, USER, PASSWORD) as client:
        channel = client.channel()
        channel.basic_publish("app-x", "k", b"allowed")
        assert channel.basic_get("app-q", auto_ack=True)[2] == b"allowed"
        channel.queue_purge("app-q")


def test_changed_permissions_apply_to_open_connections(restricted):
    with connection.Connection("127.0.0.1", restricted.port) as admin, \
            connection.Connection("127.0.0.1", restricted.port, USER, PASSWORD) as client:
        channel = client.channel()
        channel.queue_declare("app-q")
        admin.call("permissions.set", user=USER, vhost="/", configure="^$", write=ALLOWED, read=ALLOWED)
        try:
            with pytest.raises(connection.AccessRefused):
                channel.queue_declare("app-q")
        finally:
            admin.call("permissions.set", user=USER, vhost="/", configure=ALLOWED, write=ALLOWED, read=ALLOWED)


@pytest.mark.parametrize("user, password, vhost, code, text", [
    (USER, "wrong", "/", 403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                              "For details see the broker logfile."),
    ("nobody", "x", "/", 403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                              "For details see the broker logfile."),
    (USER, PASSWORD, "no-such-vhost", 530, "NOT_ALLOWED - vhost no-such-vhost not found"),
])
def test_logins_are_refused_alike_in_both_protocols(restricted, user, password, vhost, code, text):
    with pytest.raises(pika.exceptions.AMQPConnectionError) as closed:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", restricted.amqp_port, vhost, pika.PlainCredentials(user, password)))
    assert f"ConnectionClosedByBroker: ({code}) '{text}'" in str(closed.value)
    with pytest.raises(connection.ConnectionClosed) as closed:
        connection.Connection("127.0.0.1", restricted.port, user, password, vhost)
    assert (closed.value.code, closed.value.text) == (code, text)
    assert f"login refused for user '{user}' from 127.0.0.1:" in restricted.log() or code == 530
