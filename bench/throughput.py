"""End-to-end throughput and memory per queued message, through connection.py.

    python bench/throughput.py                  # starts its own broker on a free port
    python bench/throughput.py --messages 500000 --memory-messages 1000000

Throughput: one producer process and one consumer process, transient 100-byte bodies,
auto-ack; rate = messages / (last message received - first publish). Each round runs the
same clients against a bare gevent JSON-lines relay (bench/json_relay.py) right after
the broker, and prints the ratio, with each server's CPU time per message (user + system,
from /proc), the steadier figure on a shared machine. Memory: the broker's resident set
growth with N messages waiting in a queue with no consumer, per message.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from greenmq import connection  # noqa: E402
from amqp_budget import cpu_seconds  # noqa: E402
from json_relay import relay_process  # noqa: E402
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
    """Messages per second through the broker on `port`, into an empty queue."""
    conn = connection.Connection("127.0.0.1", port)
    queue = conn.default_channel.queue_declare("bench.throughput", auto_delete=False).queue
    conn.default_channel.queue_purge(queue)
    conn.close()
    return one_to_one(port, queue, count, size)


def one_to_one(port, queue, count, size):
    """Messages per second from one producer process to one consumer process of `queue`,
    through whatever serves JSON lines on `port` (the relay takes no queue name to heart)."""
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


def publish_rate(channel, queue, count, body):
    """Messages per second routed into `queue`, counted until the broker has them all."""
    started = time.monotonic()
    for _ in range(count):
        channel.basic_publish("", queue, body)
    channel.queue_declare(queue, passive=True)
    return count / (time.monotonic() - started)


def consume_rate(channel, queue, count):
    """Messages per second taken from the head of `queue` by an auto-ack consumer."""
    received = 0

    def on_message(ch, method, properties, body):
        nonlocal received
        received += 1
        if received == count:
            ch.stop_consuming()

    started = time.monotonic()
    tag = channel.basic_consume(queue, on_message, auto_ack=True)
    channel.start_consuming()
    elapsed = time.monotonic() - started
    channel.basic_cancel(tag)
    return count / elapsed


def depth_and_memory(port, broker_pid, depth, count, size):
    """Publish and consume rates with an empty queue and with `depth` messages waiting,
    and the broker's memory per waiting message.

    Both publish rates are taken while the broker's heap grows (the first `count` messages
    into a fresh broker, then `count` more on top of `depth`): publishing into memory freed
    by earlier consumers is faster and would make depth look costly when it is not."""
    conn = connection.Connection("127.0.0.1", port)
    channel = conn.default_channel
    queue = channel.queue_declare("bench.depth").queue
    body = b"x" * size
    before = rss_bytes(broker_pid)
    publish_empty = publish_rate(channel, queue, count, body)
    publish_rate(channel, queue, depth - count, body)
    per_message = (rss_bytes(broker_pid) - before) / depth
    waiting = channel.queue_declare(queue, passive=True).message_count
    assert waiting == depth, (waiting, depth)
    publish_deep = publish_rate(channel, queue, count, body)
    consume_deep = consume_rate(channel, queue, count)
    channel.queue_purge(queue)
    publish_rate(channel, queue, count, body)
    consume_empty = consume_rate(channel, queue, count)
    channel.queue_delete(queue)
    conn.close()
    return (publish_empty, consume_empty), (publish_deep, consume_deep), per_message


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="use a running broker instead of starting one")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--memory-messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.port is not None:
        report_throughput(args.port, None, args)
        return
    with BrokerProcess() as broker:
        report_throughput(broker.port, broker.pid, args)
    if args.memory_messages:
        # A fresh broker, so memory is counted from its baseline and not from what
        # the throughput rounds left behind.
        with BrokerProcess() as broker:
            report_depth_and_memory(broker, args)


def timed(pid, count, measure, *args):
    """(measure(*args), the CPU microseconds per message of process `pid` meanwhile, or
    None without a pid)."""
    before = sum(cpu_seconds(pid)) if pid else None
    rate = measure(*args)
    return rate, (sum(cpu_seconds(pid)) - before) * 1e6 / count if pid else None


def report_throughput(port, pid, args):
    """The broker's rounds, each followed by the relay's, and their ratios."""
    count, size = args.messages, args.size
    greenmq, relay = [], []
    with relay_process() as (relay_port, relay_pid):
        for _ in range(args.rounds):
            greenmq.append(timed(pid, count, throughput, port, count, size))
            relay.append(timed(relay_pid, count, one_to_one, relay_port, "bench.throughput", count, size))
    print(f"throughput: {count} x {size} B, 1 producer -> 1 consumer, auto-ack, msg/s "
          "(the server's CPU per message)")
    for name, rounds in (("GreenMQ", greenmq), ("bare gevent JSON-lines relay", relay)):
        print(f"  {name + ':':30}" + ", ".join(f"{rate:,.0f}" + (f" ({cpu:.2f} us)" if cpu is not None else "")
                                            for rate, cpu in rounds)
              + f"; best {max(rate for rate, _ in rounds):,.0f}")
    ratios = [g[0] / r[0] for g, r in zip(greenmq, relay)]
    print(f"  {'GreenMQ / relay:':30}" + ", ".join(f"{ratio:.2f}" for ratio in ratios)
          + f"; median {statistics.median(ratios):.2f}, best / best {max(greenmq)[0] / max(relay)[0]:.2f}")


def report_depth_and_memory(broker, args):
    shallow, deep, per_message = depth_and_memory(broker.port, broker.pid, args.memory_messages,
                                                  args.messages, args.size)
    print(f"memory: {per_message:.0f} bytes of broker RSS per queued {args.size}-byte message "
          f"({args.memory_messages:,} waiting)")
    for what, empty, full in (("publish", shallow[0], deep[0]), ("consume", shallow[1], deep[1])):
        print(f"{what}: {empty:,.0f} msg/s starting from an empty queue, {full:,.0f} msg/s with "
              f"{args.memory_messages:,} waiting (ratio {full / empty:.2f})")

if __name__ == "__main__":
    main()
