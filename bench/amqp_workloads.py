"""AMQP 0-9-1 workloads through pika's BlockingConnection, against any broker URL, so one
run can measure GreenMQ and a reference RabbitMQ side by side.

    python bench/amqp_workloads.py                                  # starts GreenMQ itself
    python bench/amqp_workloads.py --url amqp://guest:guest@127.0.0.1:5682/%2f

Workloads: one producer to one consumer (transient 100-byte messages, auto-ack); fanout
to four queues with four consumers (deliveries per second); RPC round trips through a
server process (p50 and p99 latency).
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pika  # noqa: E402

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


def _run(url, exchange, routing_key, queues, count, size):
    """Start one consumer per queue, then a producer; returns deliveries per second."""
    ready, started, finished = multiprocessing.Queue(), multiprocessing.Queue(), multiprocessing.Queue()
    consumers = [multiprocessing.Process(target=_consume, args=(url, q, count, ready, finished)) for q in queues]
    for c in consumers:
        c.start()
    for _ in consumers:
        ready.get(timeout=60)
    producer = multiprocessing.Process(target=_produce, args=(url, exchange, routing_key, count, size, started))
    producer.start()
    start = started.get(timeout=60)
    end = max(finished.get(timeout=600) for _ in consumers)
    producer.join()
    for c in consumers:
        c.join()
    return count * len(queues) / (end - start)


def one_to_one(url, count, size):
    connection, channel = _channel(url)
    queue = channel.queue_declare("bench.amqp.one", auto_delete=False).method.queue
    channel.queue_purge(queue)
    connection.close()
    return _run(url, "", queue, [queue], count, size)


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
    return _run(url, "bench.amqp.fanout", "", queues, count, size)


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


def measure(url, args):
    one = one_to_one(url, args.messages, args.size)
    fan = fanout(url, args.messages, args.size)
    p50, p99 = rpc_latency(url, args.rpc_calls)
    return {"1->1 msg/s": one, "fanout deliveries/s": fan, "RPC p50 us": p50 * 1e6, "RPC p99 us": p99 * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[],
                        help="also measure the broker at this AMQP URL (repeatable), e.g. a reference RabbitMQ")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rpc-calls", type=int, default=3_000)
    args = parser.parse_args()
    print(f"{args.messages:,} x {args.size} B messages; {args.rpc_calls:,} RPC calls")
    results = {}
    with BrokerProcess() as broker:
        results["GreenMQ"] = measure(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", args)
    for url in args.url:
        results[url] = measure(url, args)
    names = list(results)
    print(f"{'':22}" + "".join(f"{name[:40]:>42}" for name in names))
    for key in results["GreenMQ"]:
        row = f"{key:22}"
        for name in names:
            value = results[name][key]
            ratio = "" if name == "GreenMQ" else f" (GreenMQ x{_better(key, results['GreenMQ'][key], value):.2f})"
            row += f"{value:>26,.0f}{ratio:>16}"
        print(row)


def _better(key, greenmq, other):
    """How many times better GreenMQ is: rates higher, latencies lower."""
    return other / greenmq if key.endswith("us") else greenmq / other


if __name__ == "__main__":
    main()
