"""A backlog ten times the memory limit: persistent messages into one durable queue with
nobody consuming (or, with --transient, transient ones into a non-durable queue, which page
to the scratch store once memory is short), then drained by one consumer; GreenMQ (started
here with --memory-limit) beside RabbitMQ on the same backlog.

    python bench/paging.py                                   # 64 MiB limit, 640 MiB of 4 KiB messages
    python bench/paging.py --memory-limit-mib 256            # 2.5 GiB, as issue 23 asks
    python bench/paging.py --url amqp://guest:guest@127.0.0.1:5682/%2f   # and RabbitMQ in the same run
    python bench/paging.py --priorities 10 --message-ttl-ms 3600000     # a priority queue with a TTL
    python bench/paging.py --transient                       # transient messages, non-durable queue
    python bench/paging.py --size 1048576 --memory-limit-mib 256 --prefetch 10   # 1 MiB bodies

Printed per broker: the publish rate over the first and the last tenth of the backlog, the
drain's rate, whether every message came back once and in order, and for GreenMQ its peak
RSS (VmHWM) against the limit and its RSS growth while the backlog was taken. A paged
message keeps nothing in memory, so that growth is the room under the limit filled (the
store's uncommitted batches, the queue's window, the allocator's slack), whatever the
backlog's length: 5 and 20 times the 256 MiB limit (`--backlog-factor`) grew RSS by 267 and
262 MiB on 2026-12-07 (854 and 209 B a message, if divided). With `--priorities N` the
queue has x-max-priority N - 1 and message n priority n % N, so "in order" is highest
priority first, publish order within one; `--message-ttl-ms` gives the queue a TTL (long
enough not to expire: what is measured is that such a queue pages too).
"""

import argparse
import os
import struct
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pika  # noqa: E402

from tests.broker_process import BrokerProcess  # noqa: E402


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])


def publish(url, queue, count, size, priorities, arguments, transient):
    """Seconds taken by the first and the last tenth of `count` publishes; the last publish
    is confirmed, and confirms come in order, so all are stored when this returns."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=not transient, arguments=arguments)
    filler = b"x" * (size - 8)
    tenth = max(1, count // 10)
    marks = [time.perf_counter()]
    delivery_mode = 1 if transient else 2
    properties = [pika.BasicProperties(delivery_mode=delivery_mode, priority=priority)
                  for priority in range(max(priorities, 1))]
    for number in range(count):
        if number == count - 1:
            channel.confirm_delivery()
        channel.basic_publish("", queue, struct.pack(">Q", number) + filler, properties[number % len(properties)])
        if (number + 1) % tenth == 0:
            marks.append(time.perf_counter())
    connection.close()
    return tenth / (marks[1] - marks[0]), tenth / (marks[-1] - marks[-2])


def order(count, priorities):
    """The message numbers in the order they must come back."""
    if priorities < 2:
        return range(count)
    return (number for priority in reversed(range(priorities)) for number in range(priority, count, priorities))


def drain(url, queue, count, priorities, prefetch):
    """Messages per second consuming all `count` with a prefetch of `prefetch` (acked by
    halves), and whether they came once and in order."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    expected, in_order, received = iter(order(count, priorities)), True, 0
    began = time.perf_counter()
    for method, _, body in channel.consume(queue, inactivity_timeout=30):
        if method is None:
            break
        in_order = in_order and struct.unpack(">Q", body[:8])[0] == next(expected, None)
        received += 1
        if received % max(1, prefetch // 2) == 0 or received == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == count:
            break
    seconds = time.perf_counter() - began
    channel.cancel()
    left = channel.queue_declare(queue, passive=True).method.message_count
    channel.queue_delete(queue)
    connection.close()
    return count / seconds, received == count and in_order and left == 0


def run(name, url, count, size, priorities, arguments, transient, prefetch, pid=None):
    queue = f"paging-{uuid.uuid4().hex[:8]}"
    before = proc_kib(pid, "VmRSS") if pid else None
    first_rate, last_rate = publish(url, queue, count, size, priorities, arguments, transient)
    line = f"{name:<10} publish {first_rate:9,.0f} msg/s first tenth, {last_rate:9,.0f} last tenth"
    if pid:
        grown = proc_kib(pid, "VmRSS") - before
        line += f"; RSS +{grown / 1024:.0f} MiB while the backlog was taken"
    rate, complete = drain(url, queue, count, priorities, prefetch)
    line += f"\n{'':<10} drain {rate:9,.0f} msg/s, {'complete and in order' if complete else 'LOST OR OUT OF ORDER'}"
    if pid:
        line += f"; peak RSS {proc_kib(pid, 'VmHWM') / 1024:.0f} MiB"
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-limit-mib", type=int, default=64)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--backlog-factor", type=int, default=10, help="backlog bytes over the limit")
    parser.add_argument("--url", action="append", default=[], help="another broker to run the same backlog on")
    parser.add_argument("--priorities", type=int, default=0, help="a priority queue with this many priorities")
    parser.add_argument("--message-ttl-ms", type=int, help="the queue's x-message-ttl")
    parser.add_argument("--transient", action="store_true", help="transient messages into a non-durable queue")
    parser.add_argument("--prefetch", type=int, default=1000, help="the draining consumer's prefetch")
    args = parser.parse_args()
    count = args.backlog_factor * args.memory_limit_mib * 2**20 // args.size
    arguments = {}
    if args.priorities > 1:
        arguments["x-max-priority"] = args.priorities - 1
    if args.message_ttl_ms is not None:
        arguments["x-message-ttl"] = args.message_ttl_ms
    print(f"{count:,} {'transient' if args.transient else 'persistent'} messages of {args.size} B "
          f"({count * args.size / 2**30:.2f} GiB) into one {'non-durable' if args.transient else 'durable'} "
          f"queue {arguments or ''}, GreenMQ with --memory-limit {args.memory_limit_mib}MiB")
    with BrokerProcess("--memory-limit", f"{args.memory_limit_mib}MiB") as broker:
        run("GreenMQ", f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", count, args.size,
            args.priorities, arguments, args.transient, args.prefetch, broker.pid)
    for url in args.url:
        run(urllib.parse.urlparse(url).netloc.split("@")[-1], url, count, args.size, args.priorities, arguments,
            args.transient, args.prefetch)


if __name__ == "__main__":
    main()
