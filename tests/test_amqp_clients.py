"""AMQP 0-9-1 through py-amqp and kombu, unmodified, and messages crossing between AMQP and
the JSON-lines protocol. Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL (the
cross-protocol tests then skip)."""

import datetime
import decimal
import socket
from urllib.parse import unquote, urlparse

import amqp
import kombu
import pytest
from kombu.simple import SimpleQueue

from greenmq import connection as jsonlines
from tests.broker_process import BrokerProcess

WAIT = 10.0


@pytest.fixture
def amqp_connect(amqp_url):
    """py-amqp connections to the broker under test, closed after the test."""
    url = urlparse(amqp_url)
    opened = []

    def connect(**options):
        options = dict(dict(userid=url.username or "guest", password=url.password or "guest",
                            virtual_host=unquote(url.path[1:]) or "/"), **options)
        conn = amqp.Connection(host=f"{url.hostname}:{url.port}", **options)
        conn.connect()
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        try:
            conn.close()
        except (OSError, amqp.exceptions.AMQPError):
            pass


def drain_until(conn, done):
    """Run py-amqp's event loop until `done()`; fails after WAIT seconds without events."""
    while not done():
        try:
            conn.drain_events(timeout=WAIT)
        except socket.timeout:
            pytest.fail("no event arrived in time")


# -- py-amqp: the idioms of seed 002 -------------------------------------------------------

def test_broadcast_reaches_every_exclusive_auto_delete_queue(amqp_connect, name):
    consumers = []
    received = []
    for n in range(2):
        conn = amqp_connect()
        chan = conn.channel()
        chan.exchange_declare(exchange=name, type="fanout", durable=False, auto_delete=True)
        queue = chan.queue_declare("", durable=False, exclusive=True, auto_delete=True)
        chan.queue_bind(queue=queue[0], exchange=name)
        chan.basic_consume(queue=queue[0], callback=lambda msg, n=n: received.append((n, msg.body)),
                           no_ack=True)
        consumers.append(conn)
    producer = amqp_connect().channel()
    producer.basic_publish(amqp.Message("AL 24: FL 7\nTouch down by Tim Tebow"), exchange=name)
    for n, conn in enumerate(consumers):
        drain_until(conn, lambda: any(who == n for who, _ in received))
    assert sorted(received) == [(0, "AL 24: FL 7\nTouch down by Tim Tebow"),
                                (1, "AL 24: FL 7\nTouch down by Tim Tebow")]


def test_notify_keeps_persistent_messages_for_each_named_durable_queue(amqp_connect, name):
    setup = amqp_connect().channel()
    setup.exchange_declare(exchange=name, type="fanout", durable=True, auto_delete=False)
    systems = [f"{name}.scheduling", f"{name}.reporting"]
    for queue in systems:      # each consumer ran once to register its queue
        setup.queue_declare(queue, durable=True, auto_delete=False, exclusive=False)
        setup.queue_bind(queue=queue, exchange=name)
    producer = amqp_connect().channel()
    producer.basic_publish(amqp.Message("given:John\nsurname:Smith", delivery_mode=2), exchange=name)
    conn = amqp_connect()
    chan = conn.channel()
    received = {}

    def on_message(msg):
        received[msg.delivery_info["routing_key"], msg.delivery_info["consumer_tag"]] = msg.body
        assert msg.properties["delivery_mode"] == 2
        chan.basic_ack(msg.delivery_tag)

    tags = [chan.basic_consume(queue=queue, callback=on_message) for queue in systems]
    drain_until(conn, lambda: len(received) == 2)
    assert received == {("", tag): "given:John\nsurname:Smith" for tag in tags}
    for tag in tags:
        chan.basic_cancel(tag)
    for queue in systems:
        assert chan.queue_declare(queue, passive=True).message_count == 0
        chan.queue_delete(queue)
    chan.exchange_delete(name)


def test_request_response_through_a_direct_exchange_and_reply_to(amqp_connect, name):
    server_conn = amqp_connect()
    server = server_conn.channel()
    server.exchange_declare(exchange=name, type="direct", durable=False, auto_delete=True)
    server.queue_declare(queue=name, durable=False, exclusive=False, auto_delete=True)
    server.queue_bind(exchange=name, queue=name, routing_key="add_patient")

    def add_patient(msg):
        server.basic_publish(amqp.Message("Return Value: " + msg.body,
                                          correlation_id=msg.properties["correlation_id"]),
                             routing_key=msg.properties["reply_to"])

    server.basic_consume(queue=name, callback=add_patient, no_ack=True)
    client_conn = amqp_connect()
    client = client_conn.channel()
    reply_queue = client.queue_declare("", durable=False, exclusive=True, auto_delete=True)[0]
    responses = []
    client.basic_consume(queue=reply_queue, callback=responses.append, no_ack=True)
    msg = amqp.Message("Test message!", correlation_id="42")
    msg.properties["reply_to"] = reply_queue
    client.basic_publish(msg, exchange=name, routing_key="add_patient")
    server_conn.drain_events(timeout=WAIT)      # the request, answered by add_patient
    drain_until(client_conn, lambda: responses)
    assert responses[0].body == "Return Value: Test message!"
    assert responses[0].properties["correlation_id"] == "42"


def test_py_amqp_publisher_confirms_and_basic_get(amqp_connect, name):
    conn = amqp_connect(confirm_publish=True)
    chan = conn.channel()
    chan.queue_declare(name, auto_delete=False)
    for n in range(20):
        chan.basic_publish(amqp.Message(f"m{n}", application_headers={"n": n}), routing_key=name)
    bodies = []
    while True:
        msg = chan.basic_get(name, no_ack=False)
        if msg is None:
            break
        assert msg.headers == {"n": len(bodies)}
        bodies.append(msg.body)
        chan.basic_ack(msg.delivery_tag)
    assert bodies == [f"m{n}" for n in range(20)]
    chan.queue_delete(name)


def test_py_amqp_field_tables_pass_through_unchanged(amqp_connect, name):
    # py-amqp writes floats, which pika cannot.
    headers = {"float": 1.5, "int": -3, "str": "é", "bool": False, "list": [1, 2.5, "x"],
               "table": {"a": {"b": None}}, "decimal": decimal.Decimal("3.14"),
               "time": datetime.datetime(2024, 5, 6, 7, 8, 9)}
    chan = amqp_connect().channel()
    chan.queue_declare(name, auto_delete=False)
    chan.basic_publish(amqp.Message(b"\x00\x01", application_headers=headers, timestamp=1700000000), routing_key=name)
    msg = chan.basic_get(name, no_ack=True)
    assert msg.body == b"\x00\x01"
    assert msg.headers == headers
    assert msg.properties["timestamp"] == 1700000000
    chan.queue_delete(name)


# -- kombu ---------------------------------------------------------------------------------

def test_kombu_simple_queue_put_and_get(amqp_url, name):
    with kombu.Connection(amqp_url) as conn:
        queue = SimpleQueue(conn, name)
        queue.put({"hello": "world", "n": [1, 2, 3]})
        message = queue.get(block=True, timeout=WAIT)
        assert message.payload == {"hello": "world", "n": [1, 2, 3]}
        message.ack()
        assert queue.qsize() == 0
        queue.clear()
        queue.close()


def test_kombu_producer_and_consumer_with_a_topic_exchange_and_durable_queue(amqp_url, name):
    exchange = kombu.Exchange(name, type="topic", durable=True)
    queue = kombu.Queue(name, exchange, routing_key="stock.#", durable=True)
    received = []
    with kombu.Connection(amqp_url) as conn:
        with conn.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())]):
            producer = conn.Producer(serializer="json")
            for key in ("stock.usd.nyse", "stock.eur", "weather.oslo"):
                producer.publish({"key": key}, exchange=exchange, routing_key=key, declare=[queue])
            while len(received) < 2:
                conn.drain_events(timeout=WAIT)
        assert received == [{"key": "stock.usd.nyse"}, {"key": "stock.eur"}]
        queue(conn.default_channel).delete()
        exchange(conn.default_channel).delete()


# -- across protocols ----------------------------------------------------------------------

def test_a_message_published_over_amqp_is_consumed_over_json_lines(amqp_connect, broker, against_greenmq, name):
    chan = amqp_connect().channel()
    chan.queue_declare(name, auto_delete=False)
    headers = {"task": "add", "args": [1, 2], "nested": {"retries": 0}, "flag": True}
    chan.basic_publish(amqp.Message(b"\xffbinary\x00", content_type="application/octet-stream",
                                    application_headers=headers, delivery_mode=2, priority=4, correlation_id="c1",
                                    reply_to="r", message_id="m1", timestamp=1700000000, type="t",
                                    app_id="a"), routing_key=name)
    with jsonlines.Connection("127.0.0.1", broker.port) as conn:
        method, properties, body = conn.channel().basic_get(name, auto_ack=True)
    assert body == b"\xffbinary\x00"
    assert properties == jsonlines.BasicProperties(
        content_type="application/octet-stream", headers=headers, delivery_mode=2, priority=4,
        correlation_id="c1", reply_to="r", message_id="m1", timestamp=1700000000, type="t", app_id="a")
    assert (method.exchange, method.routing_key) == ("", name)


def test_a_message_published_over_json_lines_is_consumed_over_amqp(amqp_connect, broker, against_greenmq, name):
    chan = amqp_connect().channel()
    chan.queue_declare(name, auto_delete=False)
    headers = {"x-trace": "abc", "n": 5, "list": ["a", 1]}
    with jsonlines.Connection("127.0.0.1", broker.port) as conn:
        conn.channel().basic_publish("", name, b"from json \x00\xff", jsonlines.BasicProperties(
            content_type="text/plain", headers=headers, timestamp=1700000000, correlation_id="c2",
            delivery_mode=1, expiration="60000", user_id="guest"))
    msg = chan.basic_get(name, no_ack=True)
    assert msg.body == b"from json \x00\xff"
    assert msg.headers == headers
    assert msg.properties["timestamp"] == 1700000000
    assert (msg.content_type, msg.correlation_id, msg.delivery_mode, msg.expiration, msg.user_id) == (
        "text/plain", "c2", 1, "60000", "guest")
    chan.queue_delete(name)


def test_json_lines_and_amqp_consumers_share_one_queue_round_robin(amqp_connect, broker, against_greenmq, name):
    conn = amqp_connect()
    chan = conn.channel()
    chan.queue_declare(name, auto_delete=False)
    amqp_got = []
    chan.basic_consume(name, callback=lambda msg: amqp_got.append(bytes(msg.body, "utf-8") if isinstance(msg.body, str) else msg.body), no_ack=True)
    with jsonlines.Connection("127.0.0.1", broker.port) as json_conn:
        json_channel = json_conn.channel()
        json_got = []
        json_channel.basic_consume(name, lambda ch, m, p, b: json_got.append(b), auto_ack=True)
        for n in range(4):
            json_channel.basic_publish("", name, str(n).encode())
        drain_until(conn, lambda: len(amqp_got) == 2)
        while len(json_got) < 2:
            json_conn.process_data_events(0.05)
    assert sorted(amqp_got + json_got) == [b"0", b"1", b"2", b"3"]
    assert len(amqp_got) == len(json_got) == 2


def test_every_header_type_survives_a_relay_through_a_json_lines_client(amqp_connect, broker, against_greenmq, name):
    """AMQP -> JSON lines -> AMQP: the JSON side carries byte arrays, timestamps and decimals
    in tagged form, so a relaying JSON client passes them on unchanged."""
    headers = {"bytes": b"\x00\xff", "time": datetime.datetime(2024, 5, 6, 7, 8, 9),
               "decimal": decimal.Decimal("3.14"), "float": 0.25, "list": [b"\xfe", decimal.Decimal("-1.5")]}
    # (py-amqp writes bytes as long strings and reads back text where they decode as UTF-8,
    # so the byte strings here are not UTF-8.)
    chan = amqp_connect().channel()
    chan.queue_declare(name + ".in", auto_delete=False)
    chan.queue_declare(name + ".out", auto_delete=False)
    chan.basic_publish(amqp.Message(b"relayed", application_headers=headers), routing_key=name + ".in")
    with jsonlines.Connection("127.0.0.1", broker.port) as conn:
        json_channel = conn.channel()
        method, properties, body = json_channel.basic_get(name + ".in", auto_ack=True)
        json_channel.basic_publish("", name + ".out", body, properties)
    msg = chan.basic_get(name + ".out", no_ack=True)
    assert msg.body == b"relayed"
    assert msg.headers == headers
    chan.queue_delete(name + ".in")
    chan.queue_delete(name + ".out")


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_py_amqp_logs_in_with_either_mechanism(amqp_connect, mechanism, name):
    chan = amqp_connect(login_method=mechanism).channel()
    assert chan.queue_declare(name, exclusive=True).queue == name


def test_a_wrong_password_is_refused_with_403(amqp_connect):
    with pytest.raises(amqp.exceptions.AccessRefused):
        amqp_connect(password="wrong")


def test_kombu_ensure_republishes_after_a_broker_restart(against_greenmq):
    """The broker goes away under a kombu producer and comes back on the same port: the
    ensure()-wrapped publish reconnects, redeclares and delivers. Confirms are on, as they
    must be for this: without them a publish into the dead socket looks like a success.
    (Messages sent before the restart are gone: nothing is written to disk yet.)"""
    first = BrokerProcess().start()
    port = first.amqp_port
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    queue = kombu.Queue("ensure-restart", routing_key="ensure-restart")
    second = None
    try:
        with kombu.Connection(url, transport_options={"confirm_publish": True}) as connection:
            producer = connection.Producer()
            publish = connection.ensure(producer, producer.publish, max_retries=20,
                                        interval_start=0.1, interval_step=0.1, interval_max=0.5)
            publish({"n": 1}, routing_key="ensure-restart", declare=[queue])
            first.close()
            second = BrokerProcess("--amqp-port", str(port)).start()
            publish({"n": 2}, routing_key="ensure-restart", declare=[queue])
        with kombu.Connection(url) as connection:
            message = connection.SimpleQueue(queue).get(timeout=10)
            assert message.payload == {"n": 2}
            message.ack()
    finally:
        first.close()
        if second is not None:
            second.close()
