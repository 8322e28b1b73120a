"""Streams: publishing to a stream with pipelined confirms, then three consumers reading
the whole log from "first" at once, and GreenMQ's peak memory while they read it.

    python bench/streams.py                                          # GreenMQ alone
    python bench/streams.py --url amqp://guest:guest@127.0.0.1:5682/%2f --messages 1000000

Every URL given is measured in the same run and compared with GreenMQ (started here with
a data directory of its own). Publishing: a raw AMQP publisher keeping `--window`
confirms outstanding (100-byte messages). Reading: `--consumers` raw consumers in their
own processes, prefetch `--prefetch`, acking (multiple) what each read brought; the rate
is deliveries per second from the first consumer's start to the last one's end. GreenMQ's
resident memory is sampled every 50 ms while they read: a stream is read back from the
store in batches, so the peak should not grow with the stream.
"""

import argparse
import multiprocessing
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pika  # noqa: E402
from pamqp import commands as spec  # noqa: E402

from amqp_workloads import RawChannel, print_comparison  # noqa: E402
from durable import drain, raw_publisher  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402
from throughput import rss_bytes  # noqa: E402

MESSAGES = 200_000
WINDOW = 1000
CONSUMERS = 3
PREFETCH = 2000
RSS_SAMPLE_SECONDS = 0.05


def declare_stream(url):
    queue = f"bench-stream-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    conn.close()
    return queue


def delete_stream(url, queue):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_delete(queue)
    conn.close()


def stream_consumer(url, queue, count, prefetch, ready, finished):
    """Reads `count` messages from the start of the log, acking each read's last tag (multiple)."""
    channel = RawChannel(url)
    channel.call(spec.Basic.Qos(prefetch_count=prefetch), spec.Basic.QosOk)
    ready.put(True)
    channel.call(spec.Basic.Consume(queue=queue, arguments={"x-stream-offset": "first"}), spec.Basic.ConsumeOk)
    drain(channel, count)
    finished.put(time.monotonic())
    channel.sock.close()


def publish(url, queue, count, window):
    """Messages per second published with `window` confirms outstanding."""
    started = multiprocessing.Queue()
    publisher = multiprocessing.Process(target=raw_publisher, args=(url, queue, count, window, started))
    publisher.start()
    start = started.get(timeout=60)
    publisher.join()
    if publisher.exitcode:
        raise RuntimeError("the publisher failed")
    return count / (time.monotonic() - start)


def read(url, queue, count, consumers, prefetch, pid=None):
    """(deliveries per second, peak RSS of `pid` while they read, or None)."""
    ready, finished = multiprocessing.Queue(), multiprocessing.Queue()
    processes = [multiprocessing.Process(target=stream_consumer, args=(url, queue, count, prefetch, ready, finished))
                 for _ in range(consumers)]
    peak, reading = [0], threading.Event()

    def sample():
        while not reading.wait(RSS_SAMPLE_SECONDS):
            peak[0] = max(peak[0], rss_bytes(pid))

    sampler = threading.Thread(target=sample) if pid is not None else None
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=60)
    start = time.monotonic()
    if sampler is not None:
        sampler.start()
    end = max(finished.get(timeout=3600) for _ in processes)
    reading.set()
    if sampler is not None:
        sampler.join()
    for process in processes:
        process.join()
    return count * consumers / (end - start), (peak[0] or None)


def measure(url, args, pid=None):
    queue = declare_stream(url)
    try:
        published = publish(url, queue, args.messages, args.window)
        rss_before = rss_bytes(pid) if pid is not None else None
        delivered, peak = read(url, queue, args.messages, args.consumers, args.prefetch, pid)
    finally:
        delete_stream(url, queue)
    results = {"publish msg/s": published, f"{args.consumers} readers deliveries/s": delivered}
    return results, rss_before, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[], help="another AMQP broker to compare (repeatable)")
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--consumers", type=int, default=CONSUMERS)
    parser.add_argument("--prefetch", type=int, default=PREFETCH)
    args = parser.parse_args()
    results = {}
    with BrokerProcess() as broker:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        results["GreenMQ"], rss_before, peak = measure(url, args, broker.pid)
    for other in args.url:
        results[other.split("@")[-1]] = measure(other, args)[0]
    print(f"stream of {args.messages:,} messages of 100 bytes; window {args.window}, "
          f"{args.consumers} consumers from 'first', prefetch {args.prefetch}")
    print_comparison(results)
    print(f"GreenMQ resident memory: {rss_before / 2**20:,.0f} MiB after publishing, "
          f"peak {peak / 2**20:,.0f} MiB while the consumers read")


if __name__ == "__main__":
    main()
