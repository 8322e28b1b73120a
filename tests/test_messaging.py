"""The messaging model through connection.py against a live broker, each test over JSON
lines and over AMQP (GreenMQ's AMQP port, and a reference broker where one is named)."""

import os
import signal
import time

import pytest

from greenmq import connection
from greenmq.connection import BasicProperties


@pytest.fixture
def conn(connect):
    return connect()


def drain(channel, queue, count, auto_ack=True):
    """Consume exactly `count` messages from `queue`; returns (method, properties, body) each."""
    got = []
    for method, properties, body in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=5):
        assert method is not None, f"only {len(got)} of {count} messages arrived"
        got.append((method, properties, body))
        if len(got) == count:
            break
    return got


def test_default_exchange_routes_by_queue_name(channel, name):
    channel.queue_declare(name)
    channel.basic_publish("", name, b"Hello World!")
    [(method, _, body)] = drain(channel, name, 1)
    assert body == b"Hello World!"
    assert method.exchange == "" and method.routing_key == name


def test_fanout_copies_each_message_to_every_bound_queue(channel, name):
    channel.exchange_declare(name, "fanout")
    queues = [channel.queue_declare("", exclusive=True).method.queue for _ in range(3)]
    for queue in queues:
        channel.queue_bind(queue, name)
    channel.basic_publish(name, "ignored", b"log line")
    for queue in queues:
        assert [body for _, _, body in drain(channel, queue, 1)] == [b"log line"]


def test_direct_exchange_routes_only_matching_keys(channel, name):
    channel.exchange_declare(name, "direct")
    errors = channel.queue_declare("", exclusive=True).queue
    channel.queue_bind(errors, name, "error")
    channel.confirm_delivery()      # confirmed: in the queue (RabbitMQ counts it only then)
    channel.basic_publish(name, "info", b"skip")
    channel.basic_publish(name, "error", b"keep")
    assert channel.queue_declare(errors, passive=True).message_count == 1
    assert channel.basic_get(errors, auto_ack=True)[2] == b"keep"


def test_properties_and_binary_bodies_arrive_unchanged(channel, name):
    channel.queue_declare(name)
    properties = BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers={"a": 1, "b": [1, "x"], "c": {"d": None}},
        delivery_mode=2, priority=5, correlation_id="c-1", reply_to="r", expiration="60000",
        message_id="m-1", timestamp=1700000000, type="t", user_id="guest", app_id="app", cluster_id="cl")
    body = bytes(range(256))
    channel.basic_publish("", name, body, properties)
    [(method, received, received_body)] = drain(channel, name, 1)
    assert received_body == body
    assert received == properties


def test_server_named_queue_is_reported_by_declare(channel):
    result = channel.queue_declare("", exclusive=True)
    assert result.method.queue.startswith("amq.gen-")
    assert result.message_count == 0 and result.consumer_count == 0


def test_unknown_exchange_is_a_not_found_error(channel, name):
    with pytest.raises(connection.NotFound) as error:
        channel.queue_bind("nothing-" + name, "amq.direct")
    assert error.value.code == 404
    assert f"no queue 'nothing-{name}' in vhost '/'" in error.value.text


def test_topic_exchange_routes_by_word_patterns(channel, name):
    channel.exchange_declare(name, "topic")
    kern = channel.queue_declare("", exclusive=True).queue
    critical = channel.queue_declare("", exclusive=True).queue
    channel.queue_bind(kern, name, "kern.*")
    channel.queue_bind(critical, name, "#.critical")
    for key in ("kern.critical", "kern.info", "app.db.critical", "kern.a.b"):
        channel.basic_publish(name, key, key)
    assert sorted(m.routing_key for m, _, _ in drain(channel, kern, 2)) == ["kern.critical", "kern.info"]
    assert sorted(m.routing_key for m, _, _ in drain(channel, critical, 2)) == ["app.db.critical", "kern.critical"]


def test_headers_exchange_routes_by_all_or_any(channel, name):
    channel.exchange_declare(name, "headers")
    both = channel.queue_declare("", exclusive=True).queue
    either = channel.queue_declare("", exclusive=True).queue
    channel.queue_bind(both, name, "", {"x-match": "all", "format": "pdf", "type": "report"})
    channel.queue_bind(either, name, "", {"x-match": "any", "format": "pdf", "type": "report"})
    channel.basic_publish(name, "", "pdf report", BasicProperties(headers={"format": "pdf", "type": "report"}))
    channel.basic_publish(name, "", "pdf only", BasicProperties(headers={"format": "pdf"}))
    channel.basic_publish(name, "", "neither", BasicProperties(headers={"format": "zip"}))
    assert [b for _, _, b in drain(channel, both, 1)] == [b"pdf report"]
    assert [b for _, _, b in drain(channel, either, 2)] == [b"pdf report", b"pdf only"]


def test_predeclared_amq_exchanges_are_listed(json_lines_only, conn):
    exchanges = {(x["name"], x["type"]) for x in conn.list_exchanges()}
    assert {("", "direct"), ("amq.direct", "direct"), ("amq.fanout", "fanout"),
            ("amq.topic", "topic"), ("amq.headers", "headers")} <= exchanges


def test_listings_show_queues_bindings_and_consumers(json_lines_only, conn, channel, name):
    channel.exchange_declare(name, "fanout")
    channel.queue_declare(name)
    channel.queue_bind(name, name)
    channel.basic_publish(name, "", "one")
    channel.basic_publish(name, "", "two")
    channel.basic_qos(prefetch_count=1)
    tag = channel.basic_consume(name, lambda *a: None)
    [row] = [q for q in conn.list_queues() if q["name"] == name]
    assert (row["messages_ready"], row["messages_unacknowledged"], row["consumers"]) == (1, 1, 1)
    bindings = [(b["source"], b["destination"], b["routing_key"]) for b in conn.list_bindings()
                if b["destination"] == name]
    assert bindings == [("", name, name), (name, name, name)]   # pika's default key: the queue name
    assert any(c["consumer_tag"] == tag and c["queue"] == name for c in conn.list_consumers())
    assert any(x["name"] == name and x["type"] == "fanout" for x in conn.list_exchanges())


def test_work_queue_is_shared_round_robin_between_connections(connect, name):
    workers = [connect() for _ in range(2)]
    producer = connect()
    try:
        for w in workers:
            w.default_channel.queue_declare(name)
        received = {0: [], 1: []}
        for i, w in enumerate(workers):
            w.default_channel.basic_consume(name, lambda ch, m, p, b, i=i: received[i].append(b), auto_ack=True)
        for n in range(6):
            producer.default_channel.basic_publish("", name, str(n))
        producer.default_channel.queue_declare(name, passive=True)   # all six are routed by now
        for w in workers:
            while len(received[workers.index(w)]) < 3:
                w.process_data_events(5)
        assert received[0] == [b"0", b"2", b"4"] and received[1] == [b"1", b"3", b"5"]
    finally:
        for c in workers + [producer]:
            c.close()


def test_unacked_messages_return_redelivered_when_the_consumer_connection_drops(connect, name):
    consumer = connect()
    consumer.default_channel.queue_declare(name)
    for n in range(3):
        consumer.default_channel.basic_publish("", name, str(n))
    seen = []
    consumer.default_channel.basic_consume(name, lambda ch, m, p, b: seen.append(b))
    while len(seen) < 3:
        consumer.process_data_events(5)
    consumer._sock.close()          # vanish without acking or closing
    other = connect()
    try:
        got = []
        while len(got) < 3:
            method, _, body = other.default_channel.basic_get(name, auto_ack=True)
            if method is not None:
                got.append((body, method.redelivered))
        assert got == [(b"0", True), (b"1", True), (b"2", True)]
    finally:
        other.close()


def test_nack_and_reject_requeue_or_drop(channel, name):
    channel.queue_declare(name)
    for body in ("a", "b"):
        channel.basic_publish("", name, body)
    method, _, body = channel.basic_get(name)
    channel.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = channel.basic_get(name)
    assert (body, method.redelivered) == (b"a", True)
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, _, body = channel.basic_get(name)
    assert body == b"b" and method.message_count == 0
    channel.basic_ack(method.delivery_tag)
    assert channel.basic_get(name) == (None, None, None)


def test_rpc_round_trip_with_reply_to_and_correlation_id(connect, name):
    server = connect()
    client = connect()
    try:
        server_channel = server.default_channel
        server_channel.exchange_declare(name, "direct")
        server_channel.queue_declare(name, auto_delete=True)
        server_channel.queue_bind(name, name, "add_patient")

        def on_request(ch, method, properties, body):
            ch.basic_publish("", properties.reply_to, b"added " + body,
                             BasicProperties(correlation_id=properties.correlation_id))

        server_channel.basic_consume(name, on_request, auto_ack=True)
        reply_queue = client.default_channel.queue_declare("", exclusive=True, auto_delete=True).queue
        client.default_channel.basic_publish(name, "add_patient", b"John Smith",
                                             BasicProperties(reply_to=reply_queue, correlation_id="42"))
        while True:
            server.process_data_events(0.01)
            method, properties, body = client.default_channel.basic_get(reply_queue, auto_ack=True)
            if method is not None:
                break
        assert (body, properties.correlation_id) == (b"added John Smith", "42")
    finally:
        server.close()
        client.close()


def test_publisher_confirms_every_message_in_order(channel, name):
    channel.queue_declare(name)
    channel.confirm_delivery()
    for n in range(50):
        channel.basic_publish("", name, str(n))
    assert channel.queue_declare(name, passive=True).message_count == 50
    with pytest.raises(connection.UnroutableError):
        channel.basic_publish("", "no-such-queue-" + name, "x", mandatory=True)
    with pytest.raises(connection.NotFound):
        channel.basic_publish("no-such-exchange-" + name, "", "x")


def test_pipelined_confirms_are_awaited_together_and_report_returns(channel, name):
    channel.queue_declare(name)
    channel.confirm_delivery(window=20)
    for n in range(200):
        channel.basic_publish("", name, str(n))
    channel.wait_for_confirms(timeout=10)
    assert not channel._unconfirmed
    assert channel.queue_declare(name, passive=True).message_count == 200
    channel.basic_publish("", "no-such-queue-" + name, "x", mandatory=True)
    with pytest.raises(connection.UnroutableError):
        channel.wait_for_confirms(timeout=10)


def test_a_channel_goes_on_after_a_refusal_with_its_confirm_mode(channel, name):
    channel.queue_declare(name)
    channel.confirm_delivery(window=5)
    channel.basic_publish("", name, "before the refusal")
    channel.wait_for_confirms(timeout=5)
    with pytest.raises(connection.NotFound):
        channel.queue_declare("missing-" + name, passive=True)
    channel.basic_publish("", name, "after the refusal")
    channel.wait_for_confirms(timeout=5)                        # still confirmed, in order
    assert [channel.basic_get(name, auto_ack=True)[2] for _ in range(2)] == [
        b"before the refusal", b"after the refusal"]


def test_a_large_binary_body_arrives_whole(channel, name):
    body = os.urandom(1024 * 1024 + 7)          # many AMQP frames, base64 over JSON lines
    channel.queue_declare(name)
    channel.basic_publish("", name, body)
    assert channel.basic_get(name, auto_ack=True)[2] == body


def test_deleting_its_queue_cancels_the_consumer(conn, channel, name):
    channel.queue_declare(name)
    channel.basic_consume(name, lambda *a: None)
    conn.channel().queue_delete(name)
    deadline = time.monotonic() + 5
    while channel._consumers and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert not channel._consumers


def test_a_heartbeat_connection_stays_open_while_idle(connect, name):
    conn = connect(heartbeat=1)
    conn.default_channel.queue_declare(name)
    conn.sleep(3.5)                             # past two intervals: only heartbeats flowed
    conn.default_channel.confirm_delivery()
    conn.default_channel.basic_publish("", name, "still open")
    assert conn.default_channel.queue_declare(name, passive=True).message_count == 1


def test_mandatory_return_reaches_the_return_callback(conn, channel, name):
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append((method.reply_code, body)))
    channel.basic_publish("", "unbound-" + name, "lost?", mandatory=True)
    while not returned:
        conn.process_data_events(5)
    assert returned == [(312, b"lost?")]


def test_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it(connect, name):
    owner = connect()
    other = connect()
    try:
        owner.default_channel.queue_declare(name, exclusive=True)
        with pytest.raises(connection.ResourceLocked) as error:
            other.default_channel.basic_consume(name, lambda *a: None)
        assert error.value.code == 405
        owner.close()
        with pytest.raises(connection.NotFound):
            other.default_channel.queue_declare(name, passive=True)
    finally:
        other.close()


def test_auto_delete_queue_is_deleted_when_its_last_consumer_cancels(channel, name):
    channel.queue_declare(name, auto_delete=True)
    tag = channel.basic_consume(name, lambda *a: None)
    channel.basic_cancel(tag)
    with pytest.raises(connection.NotFound):
        channel.queue_declare(name, passive=True)


def test_redeclare_with_different_flags_is_refused(channel, name):
    channel.queue_declare(name, durable=True)
    with pytest.raises(connection.PreconditionFailed) as error:
        channel.queue_declare(name, durable=False)
    assert error.value.code == 406
    assert "inequivalent arg 'durable'" in error.value.text


def test_purge_and_delete_report_message_counts(channel, name):
    channel.queue_declare(name)
    for n in range(3):
        channel.basic_publish("", name, str(n))
    assert channel.queue_purge(name) == 3
    channel.basic_publish("", name, "x")
    with pytest.raises(connection.PreconditionFailed):
        channel.queue_delete(name, if_empty=True)
    assert channel.queue_delete(name) == 1


def test_channels_have_their_own_delivery_tags(conn, name):
    first, second = conn.channel(), conn.channel()
    first.queue_declare(name)
    for n in range(2):
        first.basic_publish("", name, str(n))
    assert first.basic_get(name)[0].delivery_tag == 1
    assert second.basic_get(name)[0].delivery_tag == 1


def test_a_lone_publish_is_sent_without_any_later_call(connect, conn, name):
    conn.default_channel.queue_declare(name)
    conn.default_channel.basic_publish("", name, "alone")   # nothing else happens on conn
    reader = connect()
    try:
        got = drain(reader.default_channel, name, 1)
        assert got[0][2] == b"alone"
    finally:
        reader.close()


def test_connection_to_localhost_uses_the_port_from_the_environment(broker, monkeypatch):
    monkeypatch.setenv("GREENMQ_PORT", str(broker.port))
    with connection.Connection("localhost") as conn:
        assert conn.server_properties["server"] == "GreenMQ"


def test_a_host_name_without_a_port_gives_way_to_the_url_in_the_environment(broker, monkeypatch):
    monkeypatch.setenv("GREENMQ_URL", f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f")
    monkeypatch.setenv("GREENMQ_PORT", "1")       # not used: the URL wins
    with connection.Connection("localhost") as conn:
        assert (conn.port, conn.server_properties["properties"]["product"]) == (broker.amqp_port, "GreenMQ")
    with connection.Connection("127.0.0.1", broker.port) as conn:    # a port given: JSON lines
        assert (conn.port, conn.server_properties["server"]) == (broker.port, "GreenMQ")


def test_amqp_url_gives_credentials_and_virtual_host(broker):
    with pytest.raises(connection.AccessRefused) as error:
        connection.Connection(f"amqp://guest:wrong@127.0.0.1:{broker.amqp_port}/%2f")
    assert error.value.code == 403
    with pytest.raises(connection.BrokerError) as error:
        connection.Connection(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/no-such-vhost")
    assert error.value.code == 530


def test_unbind_stops_routing(channel, name):
    channel.exchange_declare(name, "direct")
    channel.queue_declare(name)
    channel.queue_bind(name, name, "k")
    channel.queue_unbind(name, name, "k")
    channel.basic_publish(name, "k", "x")
    assert channel.queue_declare(name, passive=True).message_count == 0


def test_passive_declare_of_a_missing_exchange_is_not_found(channel, name):
    with pytest.raises(connection.NotFound) as error:
        channel.exchange_declare(name, passive=True)
    assert f"no exchange '{name}' in vhost '/'" in error.value.text


def test_plain_threads_each_with_a_connection_work_at_once(connect, name):
    import threading

    count, results, failures = 2000, {}, []

    def produce():
        try:
            with connect() as conn:
                for n in range(count):
                    conn.default_channel.basic_publish("", name, str(n))
        except Exception as exc:  # reported through `failures`, asserted below
            failures.append(exc)

    def consume():
        try:
            with connect() as conn:
                got = [body for _, _, body in drain(conn.default_channel, name, count)]
                results["bodies"] = got
        except Exception as exc:
            failures.append(exc)

    with connect() as setup:
        setup.default_channel.queue_declare(name)
    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert results["bodies"] == [str(n).encode() for n in range(count)]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread signal masks from /proc")
def test_ctrl_c_is_left_to_the_main_thread(conn):
    """A signal taken by the client's writer thread would not interrupt the main thread's
    blocking recv: Ctrl-C in a consumer would be lost."""
    with open(f"/proc/self/task/{conn._writer.native_id}/status") as status:
        blocked = int(next(line for line in status if line.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert blocked & (1 << (sig - 1)), sig


def test_connection_sleep_keeps_serving_consumers(connect, conn, name):
    channel = conn.default_channel
    channel.queue_declare(name)
    got = []
    channel.basic_consume(name, lambda ch, m, p, b: got.append(b), auto_ack=True)
    with connect() as producer:
        producer.default_channel.basic_publish("", name, "during sleep")
    started = time.monotonic()
    conn.sleep(0.3)
    assert time.monotonic() - started >= 0.3
    assert got == [b"during sleep"]
