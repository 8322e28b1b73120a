"""End-to-end throughput and memory per queued message, through connection.py.

    python bench/throughput.py                  # starts its own broker on a free port
    python bench/throughput.py --messages 500000 --memory-messages 1000000

Throughput: one producer process and one consumer process, transient 100-byte bodies,
auto-ack; rate = messages / (last message received - first publish). Memory: the broker's
resident set growth with N messages waiting in a queue with no consumer, per message.
"""

import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import connection  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402


def consumer(port, queue, count, ready, result):
    conn = connection.Connection("127.0.0.1", port)
    channel = conn.default_channel
    received = 0

    def on_message(ch, method, properties, body):
        nonlocal received
        received += 1
        if received == count:
            result.put(time.monotonic())
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    ready.set()
    channel.start_consuming()
    conn.close()


def producer(port, queue, count, size, result):
    conn = connection.Connection("127.0.0.1", port)
    body = b"x" * size
    publish = conn.default_channel.basic_publish
    result.put(time.monotonic())
    for _ in range(count):
        publish("", queue, body)
    conn.close()


def throughput(port, count, size):
    conn = connection.Connection("127.0.0.1", port)
    queue = conn.default_channel.queue_declare("bench.throughput", auto_delete=False).queue
    conn.default_channel.queue_purge(queue)
    conn.close()
    ready, result = multiprocessing.Event(), multiprocessing.Queue()
    c = multiprocessing.Process(target=consumer, args=(port, queue, count, ready, result))
    c.start()
    ready.wait()
    p = multiprocessing.Process(target=producer, args=(port, queue, count, size, result))
    p.start()
    started = result.get()
    finished = result.get()
    p.join()
    c.join()
    return count / (finished - started)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_per_message(port, broker_pid, count, size):
    conn = connection.Connection("127.0.0.1", port)
    channel = conn.default_channel
    queue = channel.queue_declare("bench.memory").queue
    channel.queue_purge(queue)
    before = rss_bytes(broker_pid)
    body = b"x" * size
    for _ in range(count):
        channel.basic_publish("", queue, body)
    depth = channel.queue_declare(queue, passive=True).message_count
    after = rss_bytes(broker_pid)
    channel.queue_delete(queue)
    conn.close()
    assert depth == count, (depth, count)
    return (after - before) / count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="use a running broker instead of starting one")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--memory-messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    broker = None
    port = args.port
    if port is None:
        broker = BrokerProcess().start()
        port = broker.port
    try:
        rates = [throughput(port, args.messages, args.size) for _ in range(args.rounds)]
        print(f"throughput: {args.messages} x {args.size} B, 1 producer -> 1 consumer, auto-ack: "
              + ", ".join(f"{r:,.0f}" for r in rates) + f" msg/s (best {max(rates):,.0f})")
        if broker is not None and args.memory_messages:
            per_message = memory_per_message(port, broker.pid, args.memory_messages, args.size)
            print(f"memory: {per_message:.0f} bytes of broker RSS per queued {args.size}-byte message "
                  f"({args.memory_messages:,} waiting)")
    finally:
        if broker is not None:
            broker.close()


if __name__ == "__main__":
    main()
