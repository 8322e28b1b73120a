"""AMQP 0-9-1 workloads through pika's BlockingConnection, against any broker URL, so one
run can measure GreenMQ and a reference RabbitMQ side by side.

    python bench/amqp_workloads.py                                  # starts GreenMQ itself
    python bench/amqp_workloads.py --url amqp://guest:guest@127.0.0.1:5682/%2f

Workloads: one producer to one consumer (transient 100-byte messages, auto-ack); fanout
to four queues with four consumers (deliveries per second); RPC round trips through a
server process (p50 and p99 latency); and the same round trip without a client library,
two raw sockets replaying pre-encoded frames, which leaves the broker and the kernel.
"""

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import time
import uuid
from urllib.parse import unquote, urlparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pika  # noqa: E402
from pamqp import body as amqp_body  # noqa: E402
from pamqp import commands as spec  # noqa: E402
from pamqp import frame as amqp_frame  # noqa: E402
from pamqp import header as amqp_header  # noqa: E402

from tests.broker_process import BrokerProcess  # noqa: E402


def _channel(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def _consume(url, queue, count, ready, finished):
    connection, channel = _channel(url)
    received = 0

    def on_message(ch, method, properties, body):
        nonlocal received
        received += 1
        if received == count:
            finished.put(time.monotonic())
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    ready.put(True)
    channel.start_consuming()
    connection.close()


def _produce(url, exchange, routing_key, count, size, started):
    connection, channel = _channel(url)
    body = b"x" * size
    started.put(time.monotonic())
    for _ in range(count):
        channel.basic_publish(exchange, routing_key, body)
    connection.close()


def run_workload(consume, produce, url, exchange, routing_key, queues, count, size, *consume_options):
    """One `consume(url, queue, count, ready, finished, *consume_options)` process per queue,
    then a `produce(url, exchange, routing_key, count, size, started)` process; returns
    deliveries per second, from the producer's start to the last consumer's end."""
    ready, started, finished = multiprocessing.Queue(), multiprocessing.Queue(), multiprocessing.Queue()
    consumers = [multiprocessing.Process(target=consume, args=(url, queue, count, ready, finished, *consume_options))
                 for queue in queues]
    for consumer in consumers:
        consumer.start()
    for _ in consumers:
        ready.get(timeout=60)
    producer = multiprocessing.Process(target=produce, args=(url, exchange, routing_key, count, size, started))
    producer.start()
    start = started.get(timeout=60)
    end = max(finished.get(timeout=600) for _ in consumers)
    producer.join()
    for consumer in consumers:
        consumer.join()
    return count * len(queues) / (end - start)


def one_to_one(url, count, size):
    connection, channel = _channel(url)
    queue = channel.queue_declare("bench.amqp.one", auto_delete=False).method.queue
    channel.queue_purge(queue)
    connection.close()
    return run_workload(_consume, _produce, url, "", queue, [queue], count, size)


def fanout(url, count, size, width=4):
    connection, channel = _channel(url)
    channel.exchange_declare("bench.amqp.fanout", "fanout")
    queues = []
    for i in range(width):
        queue = channel.queue_declare(f"bench.amqp.fanout.{i}").method.queue
        channel.queue_purge(queue)
        channel.queue_bind(queue, "bench.amqp.fanout")
        queues.append(queue)
    connection.close()
    return run_workload(_consume, _produce, url, "bench.amqp.fanout", "", queues, count, size)


def _rpc_server(url, ready):
    connection, channel = _channel(url)
    channel.queue_declare("bench.amqp.rpc", auto_delete=False)
    channel.queue_purge("bench.amqp.rpc")

    def on_request(ch, method, properties, body):
        if body == b"stop":
            ch.stop_consuming()
            return
        ch.basic_publish("", properties.reply_to, body,
                         pika.BasicProperties(correlation_id=properties.correlation_id))

    channel.basic_consume("bench.amqp.rpc", on_request, auto_ack=True)
    ready.put(True)
    channel.start_consuming()
    connection.close()


def rpc_latency(url, calls):
    ready = multiprocessing.Queue()
    server = multiprocessing.Process(target=_rpc_server, args=(url, ready))
    server.start()
    ready.get(timeout=60)
    connection, channel = _channel(url)
    reply_queue = channel.queue_declare("", exclusive=True).method.queue
    response = {}

    def on_reply(ch, method, properties, body):
        response["id"] = properties.correlation_id

    channel.basic_consume(reply_queue, on_reply, auto_ack=True)
    latencies = []
    for _ in range(calls):
        call_id = uuid.uuid4().hex
        started = time.perf_counter()
        channel.basic_publish("", "bench.amqp.rpc", b"ping",
                              pika.BasicProperties(reply_to=reply_queue, correlation_id=call_id))
        while response.get("id") != call_id:
            connection.process_data_events(time_limit=None)
        latencies.append(time.perf_counter() - started)
    channel.basic_publish("", "bench.amqp.rpc", b"stop")
    connection.close()
    server.join()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


class RawChannel:
    """Channel 1 of a bare AMQP connection: just enough to declare, consume and replay frames."""

    def __init__(self, url):
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 5672))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(spec.Connection.Start)
        credentials = f"\0{unquote(parts.username or 'guest')}\0{unquote(parts.password or 'guest')}"
        self.send(spec.Connection.StartOk(client_properties={}, mechanism="PLAIN", response=credentials), 0)
        tune = self.expect(spec.Connection.Tune)
        self.frame_max = tune.frame_max
        self.send(spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0), 0)
        self.send(spec.Connection.Open(virtual_host=unquote(parts.path[1:]) or "/"), 0)
        self.expect(spec.Connection.OpenOk)
        self.send(spec.Channel.Open())
        self.expect(spec.Channel.OpenOk)

    def send(self, method, channel=1):
        self.sock.sendall(amqp_frame.marshal(method, channel))

    def expect(self, method_class):
        while True:
            try:
                used, _, method = amqp_frame.unmarshal(self.buffer)
            except Exception:      # pamqp's answer to an incomplete frame
                self.buffer += self.sock.recv(65536)
                continue
            self.buffer = self.buffer[used:]
            assert isinstance(method, method_class), method
            return method

    def call(self, method, reply_class, channel=1):
        self.send(method, channel)
        return self.expect(reply_class)

    def receive_delivery_ending(self, tail):
        """Waits for a delivery whose body frame ends the bytes read so far."""
        data = b""
        while not data.endswith(tail):
            data += self.sock.recv(65536)


def raw_rpc_latency(url, calls):
    client, server = RawChannel(url), RawChannel(url)
    server.call(spec.Queue.Declare(queue="bench.amqp.raw-rpc"), spec.Queue.DeclareOk)
    server.call(spec.Queue.Purge(queue="bench.amqp.raw-rpc"), spec.Queue.PurgeOk)
    reply_queue = client.call(spec.Queue.Declare(queue="", exclusive=True), spec.Queue.DeclareOk).queue
    server.call(spec.Basic.Consume(queue="bench.amqp.raw-rpc", no_ack=True), spec.Basic.ConsumeOk)
    client.call(spec.Basic.Consume(queue=reply_queue, no_ack=True), spec.Basic.ConsumeOk)

    def publish_frames(routing_key, body):
        return b"".join(amqp_frame.marshal(f, 1) for f in (
            spec.Basic.Publish(exchange="", routing_key=routing_key),
            amqp_header.ContentHeader(0, len(body), spec.Basic.Properties()),
            amqp_body.ContentBody(body)))

    request, reply = publish_frames("bench.amqp.raw-rpc", b"ping"), publish_frames(reply_queue, b"pong")
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        client.sock.sendall(request)
        server.receive_delivery_ending(b"ping\xce")
        server.sock.sendall(reply)
        client.receive_delivery_ending(b"pong\xce")
        latencies.append(time.perf_counter() - started)
    client.sock.close()
    server.sock.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def measure(url, args):
    one = one_to_one(url, args.messages, args.size)
    fan = fanout(url, args.messages, args.size)
    p50, p99 = rpc_latency(url, args.rpc_calls)
    raw_p50, raw_p99 = raw_rpc_latency(url, args.rpc_calls)
    return {"1->1 msg/s": one, "fanout deliveries/s": fan, "RPC p50 us": p50 * 1e6, "RPC p99 us": p99 * 1e6,
            "raw RPC p50 us": raw_p50 * 1e6, "raw RPC p99 us": raw_p99 * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[],
                        help="also measure the broker at this AMQP URL (repeatable), e.g. a reference RabbitMQ")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rpc-calls", type=int, default=3_000)
    args = parser.parse_args()
    print(f"{args.messages:,} x {args.size} B messages; {args.rpc_calls:,} RPC calls")
    compare(measure, args)


def compare(measure, args):
    """`measure(url, args)` on a GreenMQ started here, then on each broker of `args.url`,
    printed side by side."""
    results = {}
    with BrokerProcess() as broker:
        results["GreenMQ"] = measure(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", args)
    for url in args.url:
        results[url] = measure(url, args)
    print_comparison(results)


def print_comparison(results):
    """One row per measure, one column per broker, each with its ratio to GreenMQ's."""
    names = list(results)
    print(f"{'':26}" + "".join(f"{name[:40]:>42}" for name in names))
    for key in results["GreenMQ"]:
        row = f"{key:26}"
        for name in names:
            value = results[name].get(key)
            if value is None:       # not measured there (the bare relay's round trip)
                row += f"{'-':>42}"
                continue
            ratio = "" if name == "GreenMQ" else f" (GreenMQ x{_better(key, results['GreenMQ'][key], value):.2f})"
            row += f"{value:>26,.0f}{ratio:>16}"
        print(row)


def _better(key, greenmq, other):
    """How many times better GreenMQ is: rates higher, latencies lower."""
    return other / greenmq if key.endswith("us") else greenmq / other


if __name__ == "__main__":
    main()
