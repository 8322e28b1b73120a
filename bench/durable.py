"""Persistent messages: confirmed publishing to a durable queue with an acking consumer,
recovery time and memory per stored message.

    python bench/durable.py                                          # GreenMQ alone
    python bench/durable.py --url amqp://guest:guest@127.0.0.1:5682/%2f

Workloads (100-byte persistent messages, a durable queue, one consumer that acks):
- "confirm each": pika's BlockingConnection waiting for every confirm, as most Python
  code publishes;
- "pipelined AMQP": a raw AMQP publisher keeping `--window` confirms outstanding, and a
  raw consumer acking (multiple) what each read brought;
- "pipelined connection.py": connection.py's confirm window (GreenMQ only);
- "confirm each, N raw publishers": for each count in `--publishers` (16 by default, a
  web application's workers), that many raw AMQP connections, each waiting for every
  confirm, dealt out to `--publisher-processes` processes (2) that serve theirs through a
  selector, so the clients cost little and the broker's group commit across connections
  is what is measured. They connect first and start publishing together. With
  `--c-publishers` a small C program (confirm_publishers.c, built with the machine's cc)
  serves each process's connections: a send and a read per message, where the Python
  selector loop costs about as much CPU as the broker does. A consumer acking each read
  takes the messages, so most are acked before a commit would write them (and are then
  confirmed at the ack, in both brokers); with `--unconsumed` nobody consumes and every
  confirm waits for the disk.
- "occasional": `--occasional-publishers` raw connections (2) each publishing one message,
  waiting for its confirm and pausing `--pause-ms` (3) before the next, out of step: the
  confirm latency's p50 and p90 (a web application's quieter workers beside busy ones).
Then, GreenMQ only: recovery of `--recovery-messages` stored messages after a clean stop
and after kill -9, and the broker's memory per queued persistent message.

`--workloads` picks some of them (each, pipelined, publishers, occasional, connection) and `--rounds N`
measures every broker N times, taking turns, as the machine's load drifts.

    python bench/durable.py --workloads publishers pipelined --publishers 1 4 16 --rounds 3 \
        --recovery-messages 0 --url amqp://guest:guest@127.0.0.1:5682/%2f
"""

import argparse
import multiprocessing
import os
import math
import re
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pika  # noqa: E402
from pamqp import body as amqp_body  # noqa: E402
from pamqp import commands as spec  # noqa: E402
from pamqp import frame as amqp_frame  # noqa: E402
from pamqp import header as amqp_header  # noqa: E402

from greenmq import connection  # noqa: E402
from amqp_workloads import RawChannel  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402
from throughput import rss_bytes  # noqa: E402

BODY = b"x" * 100
_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_IDS = struct.Struct(">HH")
ACK_IDS = (60, 80)
DELIVER_IDS = (60, 60)


def declare(url, queue):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)
    channel.queue_purge(queue)
    conn.close()


def method_frames(sock, buffer):
    """(buffer left, [(class id, method id, arguments bytes)]) for the complete frames read."""
    buffer += sock.recv(1 << 20)
    methods, offset = [], 0
    while len(buffer) - offset >= 7:
        frame_type, _, size = _FRAME_HEAD.unpack_from(buffer, offset)
        end = offset + 7 + size + 1
        if end > len(buffer):
            break
        if frame_type == 1:
            class_id, method_id = _METHOD_IDS.unpack_from(buffer, offset + 7)
            methods.append((class_id, method_id, buffer[offset + 11:end - 1]))
        offset = end
    return buffer[offset:], methods


def publish_frames(queue):
    return b"".join(amqp_frame.marshal(frame, 1) for frame in (
        spec.Basic.Publish(exchange="", routing_key=queue),
        amqp_header.ContentHeader(0, len(BODY), spec.Basic.Properties(delivery_mode=2)),
        amqp_body.ContentBody(BODY)))


def raw_publisher(url, queue, count, window, started, go=None, connections=1):
    """Publishes `count` messages on each of `connections` connections, keeping up to
    `window` confirms outstanding on each; with `go`, connected first and started when it
    is set. One process serves them all through a selector: a process per connection costs
    a context switch per confirm, about as much CPU as the broker spends on the message."""
    channels = [RawChannel(url) for _ in range(connections)]
    for channel in channels:
        channel.call(spec.Confirm.Select(), spec.Confirm.SelectOk)
    frames = publish_frames(queue)
    if go is not None:
        started.put(None)
        go.wait()
    started.put(time.monotonic())
    selector = selectors.DefaultSelector()
    for channel in channels:
        channel.sent = channel.confirmed = 0
        selector.register(channel.sock, selectors.EVENT_READ, channel)
        publish_more(channel, frames, count, window)
    while selector.get_map():
        for key, _ in selector.select():
            channel = key.data
            channel.buffer, methods = method_frames(channel.sock, channel.buffer)
            for class_id, method_id, arguments in methods:
                if (class_id, method_id) == ACK_IDS:
                    channel.confirmed = struct.unpack_from(">Q", arguments)[0]
                elif class_id == 60 and method_id == 120:
                    raise RuntimeError("the broker nacked a message")
            if channel.confirmed == count:
                selector.unregister(channel.sock)
                channel.sock.close()
            else:
                publish_more(channel, frames, count, window)


def c_publisher(program, url, queue, count, window, started, go=None, connections=1):
    """raw_publisher's work done by `program` (built from confirm_publishers.c) on the
    connections opened here, started before `go` and given its frames after."""
    channels = [RawChannel(url) for _ in range(connections)]
    for channel in channels:
        channel.call(spec.Confirm.Select(), spec.Confirm.SelectOk)
    descriptors = [channel.sock.fileno() for channel in channels]
    process = subprocess.Popen([program, str(count), str(window), *map(str, descriptors)],
                               stdin=subprocess.PIPE, pass_fds=descriptors)
    if go is not None:
        started.put(None)
        go.wait()
    started.put(time.monotonic())
    process.communicate(publish_frames(queue))
    if process.returncode:
        raise RuntimeError(f"{program} failed with exit code {process.returncode}")


def build_c_publishers():
    """confirm_publishers.c built into a temporary directory; a C compiler is needed."""
    program = os.path.join(tempfile.mkdtemp(prefix="greenmq-bench-"), "confirm_publishers")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "confirm_publishers.c")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", program, source], check=True)
    return program


def publish_more(channel, frames, count, window):
    room = min(window - (channel.sent - channel.confirmed), count - channel.sent)
    if room > 0:
        channel.sock.sendall(frames * room)
        channel.sent += room


def raw_consumer(url, queue, count, ready, finished):
    channel = RawChannel(url)
    channel.call(spec.Basic.Qos(prefetch_count=5000), spec.Basic.QosOk)
    channel.call(spec.Basic.Consume(queue=queue), spec.Basic.ConsumeOk)
    ready.put(True)
    drain(channel, count)
    finished.put(time.monotonic())
    channel.sock.close()


def drain(channel, count):
    """Receive `count` deliveries on a consuming RawChannel, acking each read's last tag
    (multiple)."""
    sock, buffer, received = channel.sock, channel.buffer, 0
    while received < count:
        buffer, methods = method_frames(sock, buffer)
        last_tag = None
        for class_id, method_id, arguments in methods:
            if (class_id, method_id) == DELIVER_IDS:
                last_tag = struct.unpack_from(">Q", arguments, 1 + arguments[0])[0]
                received += 1
        if last_tag is not None:
            sock.sendall(amqp_frame.marshal(spec.Basic.Ack(delivery_tag=last_tag, multiple=True), 1))


def pika_publisher(url, queue, count, started):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2)
    started.put(time.monotonic())
    for _ in range(count):
        channel.basic_publish("", queue, BODY, properties)
    conn.close()


def pika_consumer(url, queue, count, ready, finished):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=100)
    received = 0

    def on_message(ch, method, properties, body):
        nonlocal received
        ch.basic_ack(method.delivery_tag)
        received += 1
        if received == count:
            finished.put(time.monotonic())
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    ready.put(True)
    channel.start_consuming()
    conn.close()


def json_publisher(port, queue, count, window, started):
    conn = connection.Connection("127.0.0.1", port)
    channel = conn.channel()
    channel.confirm_delivery(window=window)
    properties = connection.BasicProperties(delivery_mode=2)
    started.put(time.monotonic())
    for _ in range(count):
        channel.basic_publish("", queue, BODY, properties)
    channel.wait_for_confirms()
    conn.close()


def timed(publisher, publisher_args, consumer, consumer_args, count, publishers=None):
    """Messages per second from the first publish to the consumer's last delivery, or
    without a `consumer` to the publishers' last confirm. With `publishers`, that many
    processes run `publisher` (whose arguments give its own count), connected before any
    starts, so a late process start does not thin the first commits."""
    ready, started, finished = multiprocessing.Queue(), multiprocessing.Queue(), multiprocessing.Queue()
    consumer_process = None
    if consumer is not None:
        consumer_process = multiprocessing.Process(target=consumer, args=(*consumer_args, count, ready, finished))
        consumer_process.start()
        ready.get(timeout=60)
    go = multiprocessing.Event() if publishers else None
    publisher_processes = [
        multiprocessing.Process(target=publisher, args=(*publisher_args, started) + ((go,) if go else ()))
        for _ in range(publishers or 1)]
    for process in publisher_processes:
        process.start()
    if go is not None:
        for _ in publisher_processes:
            started.get(timeout=60)     # connected
        go.set()
    start = min(started.get(timeout=60) for _ in publisher_processes)
    end = finished.get(timeout=900) if consumer_process else None
    for process in publisher_processes:
        process.join()
    if consumer_process is None:
        end = time.monotonic()
    else:
        consumer_process.join()
    return count / (end - start)


def throughputs(url, args, json_port=None):
    results = {}
    queue = "bench.durable"
    if "each" in args.workloads:
        declare(url, queue)
        results["confirm each (pika), msg/s"] = timed(
            pika_publisher, (url, queue, args.each_messages), pika_consumer, (url, queue), args.each_messages)
    if "pipelined" in args.workloads:
        declare(url, queue)
        results[f"pipelined AMQP (window {args.window}), msg/s"] = timed(
            raw_publisher, (url, queue, args.messages, args.window), raw_consumer, (url, queue), args.messages)
    for publishers in args.publishers if "publishers" in args.workloads else ():
        declare(url, queue)
        each = args.each_messages // publishers
        processes = math.gcd(publishers, args.publisher_processes)
        publisher = partial(c_publisher, args.c_publishers) if args.c_publishers else raw_publisher
        consumer = None if args.unconsumed else raw_consumer
        results[f"confirm each, {publishers} raw publishers{', unconsumed' if args.unconsumed else ''}, msg/s"] = timed(
            partial(publisher, connections=publishers // processes), (url, queue, each, 1), consumer,
            (url, queue), each * publishers, publishers=processes)
    if "occasional" in args.workloads:
        declare(url, queue)
        latencies = occasional_latencies(url, queue, args.occasional_publishers, args.pause_ms / 1000,
                                         args.occasional_messages)
        named = f"{args.occasional_publishers} publishers pausing {args.pause_ms:g} ms: confirm"
        results[f"{named} p50 us"] = latencies[len(latencies) // 2] * 1e6
        results[f"{named} p90 us"] = latencies[len(latencies) * 9 // 10] * 1e6
    if json_port is not None and "connection" in args.workloads:
        declare(url, queue)
        results[f"pipelined connection.py (window {args.window}), msg/s"] = timed(
            json_publisher, (json_port, queue, args.messages, args.window), raw_consumer, (url, queue),
            args.messages)
    return results


def occasional_latencies(url, queue, publishers, pause, messages):
    """Confirm latencies, sorted, of `publishers` raw connections each publishing one message
    `messages` times, waiting for its confirm and then `pause` seconds, out of step with
    each other (each in a thread: the pauses leave the GIL free)."""
    latencies = []

    def publish_now_and_then(delay):
        channel = RawChannel(url)
        channel.call(spec.Confirm.Select(), spec.Confirm.SelectOk)
        frames = publish_frames(queue)
        time.sleep(delay)
        for _ in range(messages):
            sent = time.perf_counter()
            channel.sock.sendall(frames)
            confirmed = False
            while not confirmed:
                channel.buffer, methods = method_frames(channel.sock, channel.buffer)
                confirmed = any((class_id, method_id) == ACK_IDS for class_id, method_id, _ in methods)
            latencies.append(time.perf_counter() - sent)
            time.sleep(pause)
        channel.sock.close()

    threads = [threading.Thread(target=publish_now_and_then, args=(pause * n / publishers,))
               for n in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def fill(url, queue, count, window):
    declare(url, queue)
    started = multiprocessing.Queue()
    raw_publisher(url, queue, count, window, started)


def recovery_seconds(broker):
    match = re.search(r"and (\d+) messages in ([\d.]+) s", broker.log())
    return int(match.group(1)), float(match.group(2))


def recovery_and_memory(args):
    """Seconds to recover `count` messages after a clean stop and after kill -9, and RSS
    per stored message."""
    count = args.recovery_messages
    with BrokerProcess() as broker:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        before = rss_bytes(broker.pid)
        fill(url, "bench.recovery", count, args.window)
        per_message = (rss_bytes(broker.pid) - before) / count
        data_dir = broker.data_dir
        broker.stop()
        figures = {"RSS per queued persistent message, B": per_message}
        for how in ("clean stop", "kill -9"):
            started = time.monotonic()
            with BrokerProcess(data_dir=data_dir) as restarted:
                ready = time.monotonic() - started
                recovered, seconds = recovery_seconds(restarted)
                assert recovered == count, (recovered, count)
                figures[f"recovery after {how}: restore s"] = seconds
                figures[f"recovery after {how}: start to listening s"] = ready
                restarted.stop(signal.SIGKILL if how == "clean stop" else signal.SIGTERM)
        return figures


WORKLOADS = ("each", "pipelined", "publishers", "occasional", "connection")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[], help="also measure the broker at this AMQP URL")
    parser.add_argument("--each-messages", type=int, default=5_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--publishers", type=int, nargs="+", default=[16],
                        help="raw publishers waiting for every confirm, each in its own process; "
                             "several counts measure each")
    parser.add_argument("--publisher-processes", type=int, default=2,
                        help="processes the raw publishers are dealt out to (a divisor of their number)")
    parser.add_argument("--c-publishers", action="store_true",
                        help="serve the raw publishers with confirm_publishers.c (needs cc)")
    parser.add_argument("--unconsumed", action="store_true",
                        help="no consumer for the raw publishers: every message is written before its confirm")
    parser.add_argument("--occasional-publishers", type=int, default=2)
    parser.add_argument("--pause-ms", type=float, default=3.0, help="between an occasional publisher's messages")
    parser.add_argument("--occasional-messages", type=int, default=300, help="per occasional publisher")
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--rounds", type=int, default=1, help="measure every broker this many times, taking turns")
    parser.add_argument("--recovery-messages", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.c_publishers:
        args.c_publishers = build_c_publishers()
    for round_number in range(1, args.rounds + 1):
        results = {}
        with BrokerProcess() as broker:
            results["GreenMQ"] = throughputs(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f", args,
                                             broker.port)
        for url in args.url:
            results[url] = throughputs(url, args)
        if args.rounds > 1:
            print(f"round {round_number} (load average {os.getloadavg()[0]:.1f})")
        for key in results["GreenMQ"]:
            row = f"{key:48}{results['GreenMQ'][key]:>12,.0f}"
            for url in args.url:
                if key in results[url]:
                    other = results[url][key]
                    ratio = other / results["GreenMQ"][key] if key.endswith(" us") else results["GreenMQ"][key] / other
                    row += f"   {url[:30]}: {other:,.0f} (GreenMQ x{ratio:.2f})"
            print(row, flush=True)
    if args.recovery_messages:
        for key, value in recovery_and_memory(args).items():
            print(f"{key:48}{value:>12,.2f}")


if __name__ == "__main__":
    main()
