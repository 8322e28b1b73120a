"""Quorum queues: publishing persistent messages with pipelined confirms into a quorum
queue, then consuming them with acks and a prefetch window, beside the same into a
durable classic queue; GreenMQ and every --url in one run.

    python bench/quorum.py                                           # GreenMQ alone
    python bench/quorum.py --url amqp://guest:guest@127.0.0.1:5682/%2f

The publisher and consumer are durable.py's raw AMQP clients (a window of confirms
outstanding; one multiple ack per read, prefetch 5000), so the clients cost little and
the broker's path to disk is what is measured. Publish and consume run apart: the publish
rate is to the last confirm, the consume rate to the last delivery of a full queue.
"""

import argparse
import os
import queue as queues
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pika  # noqa: E402

from amqp_workloads import compare  # noqa: E402
from durable import raw_consumer, raw_publisher  # noqa: E402

QUEUE_TYPES = {"classic": {}, "quorum": {"x-queue-type": "quorum"}}


def fresh_queue(url, name, arguments):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.queue_delete(name)
    channel.queue_declare(name, durable=True, arguments=arguments)
    conn.close()


def delete_queue(url, name):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_delete(name)
    conn.close()


def publish_then_consume(url, queue_type, args):
    """(publish msg/s, consume msg/s) for one queue of `queue_type`."""
    name = f"bench.quorum.{queue_type}"
    fresh_queue(url, name, QUEUE_TYPES[queue_type])
    started = queues.SimpleQueue()
    raw_publisher(url, name, args.messages, args.window, started)
    published = args.messages / (time.monotonic() - started.get())
    ready, finished = queues.SimpleQueue(), queues.SimpleQueue()
    start = time.monotonic()
    raw_consumer(url, name, args.messages, ready, finished)
    consumed = args.messages / (finished.get() - start)
    delete_queue(url, name)
    return published, consumed


def measure(url, args):
    results = {}
    for queue_type in QUEUE_TYPES:
        published, consumed = publish_then_consume(url, queue_type, args)
        results[f"{queue_type} publish msg/s"] = published
        results[f"{queue_type} consume msg/s"] = consumed
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[],
                        help="also measure the broker at this AMQP URL (repeatable), e.g. a reference RabbitMQ")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=1000, help="confirms outstanding while publishing")
    args = parser.parse_args()
    print(f"{args.messages:,} x 100 B persistent messages per queue; confirm window {args.window}; prefetch 5000")
    compare(measure, args)


if __name__ == "__main__":
    main()
