"""AMQP 0-9-1 throughput with the broker, not the client, as the bottleneck: no client
library, a producer that writes pre-encoded basic.publish + content header + body frames in
batches, and consumers in their own processes that only count basic.deliver frames.

    python bench/amqp_broker_bound.py                     # starts GreenMQ itself
    python bench/amqp_broker_bound.py --url amqp://guest:guest@127.0.0.1:5682/%2f

Every URL given is measured in the same run, workload by workload in turn, and compared
with GreenMQ. Workloads: one producer to one consumer, no-ack; the same with manual acks
(prefetch 1000, one multiple basic.ack per read); fanout to four queues with four no-ack
consumers (deliveries per second); and the raw RPC round trip of amqp_workloads.py.

    python bench/amqp_broker_bound.py --size 64KiB --size 256KiB --size 1MiB --only no-ack \
        --only acked --only fanout --url amqp://guest:guest@127.0.0.1:5682/%2f

After each size come the CPU seconds a message (a delivery, for fanout) took on each side:
the clients' (this process and its children), and GreenMQ's when this bench started it.
With big bodies the clients' kernel copies cost about as much as the broker's, so the
machine's cores, not the broker, bound the rate: the line says where.

With --bare-relay each workload also runs through the least any broker must do: a relay
process that receives the producer's bytes once and sends them once to each consumer,
without frames, queues or acks (with bodies of 64 KiB and up, where frames add a few bytes,
the kernel's copies are a broker's). No broker outruns it on the same machine, so its rate
over another broker's is the most any broker could be ahead there (for acked too: the
relay has no acks to read).

Each --size is a run of its own (bytes, or with KiB or MiB); bodies larger than a frame
are sent in frame_max pieces, as clients send them, and without --messages a size gets
BYTES_PER_WORKLOAD of bodies (at most MESSAGES messages).
"""

import argparse
import collections
import multiprocessing
import os
import resource
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pamqp import body as amqp_body  # noqa: E402
from pamqp import commands as spec  # noqa: E402
from pamqp import frame as amqp_frame  # noqa: E402
from pamqp import header as amqp_header  # noqa: E402

from amqp_workloads import RawChannel, print_comparison, raw_rpc_latency, run_workload  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402

# What the issue that asked for this benchmark measured: enough messages for a few seconds
# of work per workload, published in batches large enough to leave the producer idle.
MESSAGES = 200_000
BATCH = 500
PREFETCH = 1000
FANOUT_WIDTH = 4
READ_BYTES = 256 * 1024
# Big bodies: about this many bytes per workload, a few seconds at RabbitMQ's rate.
BYTES_PER_WORKLOAD = 2 * 1024**3

_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_INDEX = struct.Struct(">I")
_DELIVERY_TAG = struct.Struct(">Q")
_BASIC_DELIVER = (spec.Basic.frame_id << 16) | spec.Basic.Deliver.frame_id


def _publish_batch(exchange, routing_key, size, count, frame_max):
    body, chunk = b"x" * size, frame_max - 8
    one = b"".join(amqp_frame.marshal(frame, 1) for frame in (
        spec.Basic.Publish(exchange=exchange, routing_key=routing_key),
        amqp_header.ContentHeader(0, size, spec.Basic.Properties()),
        *(amqp_body.ContentBody(body[at:at + chunk]) for at in range(0, size, chunk))))
    return one * count


def _produce(url, exchange, routing_key, count, size, started):
    channel = RawChannel(url)
    # Big bodies in batches of about the same bytes as 500 small ones: not 500 MiB at once.
    batch_count = max(1, min(BATCH, BATCH * 4096 // size))
    batch = _publish_batch(exchange, routing_key, size, batch_count, channel.frame_max)
    rest = _publish_batch(exchange, routing_key, size, count % batch_count, channel.frame_max)
    started.put(time.monotonic())
    for _ in range(count // batch_count):
        channel.sock.sendall(batch)
    if rest:
        channel.sock.sendall(rest)
    # A clean close: the broker answers it after all the publishes before it, and no
    # unread input can make our side reset the connection under them.
    channel.call(spec.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), spec.Connection.CloseOk, 0)
    channel.sock.close()


def _consume(url, queue, count, ready, finished, acked):
    """Count basic.deliver frames until `count`; with `acked`, one multiple ack per read.
    Body frames are skipped as they arrive, not buffered, so that big bodies cost the
    consumer no more than reading them."""
    channel = RawChannel(url)
    if acked:
        channel.call(spec.Basic.Qos(prefetch_count=PREFETCH), spec.Basic.QosOk)
    channel.call(spec.Basic.Consume(queue=queue, no_ack=not acked), spec.Basic.ConsumeOk)
    ready.put(True)
    sock, data = channel.sock, channel.buffer
    received = last_tag = offset = skip = 0
    unpack_head, unpack_index, unpack_tag = _FRAME_HEAD.unpack_from, _METHOD_INDEX.unpack_from, _DELIVERY_TAG.unpack_from
    while received < count:
        chunk = sock.recv(READ_BYTES)
        if not chunk:
            raise RuntimeError(f"broker closed the connection after {received} deliveries")
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        data = data[offset:] + chunk[skip:] if offset < len(data) else chunk[skip:]
        offset, end, before, skip = 0, len(data), received, 0
        while end - offset >= 7:
            frame_type, _, size = unpack_head(data, offset)
            frame_end = offset + 8 + size
            if frame_end > end:
                if frame_type == 3:       # a body frame: skip the rest of it unread
                    skip, offset = frame_end - end, end
                break
            if frame_type == 1 and unpack_index(data, offset + 7)[0] == _BASIC_DELIVER:
                received += 1
                if acked:
                    tag_at = offset + 12 + data[offset + 11]      # after the consumer tag
                    last_tag = unpack_tag(data, tag_at)[0]
            offset = frame_end
        if acked and received > before:
            channel.send(spec.Basic.Ack(delivery_tag=last_tag, multiple=True))
    finished.put(time.monotonic())
    sock.close()


def _fresh_queues(url, names, exchange=None):
    control = RawChannel(url)
    if exchange:
        control.call(spec.Exchange.Declare(exchange=exchange, exchange_type="fanout"), spec.Exchange.DeclareOk)
    for name in names:
        control.call(spec.Queue.Declare(queue=name), spec.Queue.DeclareOk)
        control.call(spec.Queue.Purge(queue=name), spec.Queue.PurgeOk)
        if exchange:
            control.call(spec.Queue.Bind(queue=name, exchange=exchange), spec.Queue.BindOk)
    return control


def _remove_queues(control, names):
    for name in names:
        control.call(spec.Queue.Delete(queue=name), spec.Queue.DeleteOk)
    control.sock.close()


def one_to_one(url, count, size, acked=False):
    names = ["bench.bound.acked" if acked else "bench.bound.one"]
    control = _fresh_queues(url, names)
    rate = run_workload(_consume, _produce, url, "", names[0], names, count, size, acked)
    _remove_queues(control, names)
    return rate


def fanout(url, count, size):
    names = [f"bench.bound.fanout.{i}" for i in range(FANOUT_WIDTH)]
    control = _fresh_queues(url, names, "bench.bound.fanout")
    rate = run_workload(_consume, _produce, url, "bench.bound.fanout", "", names, count, size, False)
    _remove_queues(control, names)
    return rate


def raw_rpc(url, args):
    p50, p99 = raw_rpc_latency(url, args.rpc_calls)
    return {"raw RPC p50 us": p50 * 1e6, "raw RPC p99 us": p99 * 1e6}


def _relay(width, address, cpu):
    """The bare relay: `width` consumers, then a producer, connect; every byte the producer
    sends goes once to each consumer, read as GreenMQ reads (RECV_BYTES at a time) and sent
    as it sends (without waiting: each consumer takes its bytes at its own pace, from a
    backlog of its own, and the producer is read while none holds RELAY_BACKLOG_BYTES)."""
    listener = socket.create_server(("127.0.0.1", 0))
    address.put(listener.getsockname()[1])
    consumers = [listener.accept()[0] for _ in range(width)]
    producer = listener.accept()[0]
    backlogs = {consumer: collections.deque() for consumer in consumers}
    waiting = dict.fromkeys(consumers, 0)        # bytes in each consumer's backlog
    poll = selectors.DefaultSelector()
    poll.register(producer, selectors.EVENT_READ)
    for consumer in consumers:
        consumer.setblocking(False)
        poll.register(consumer, selectors.EVENT_WRITE)
    reading, paused = True, False
    while reading or any(waiting.values()):
        for key, _ in poll.select():
            sock = key.fileobj
            if sock is producer:
                data = producer.recv(RELAY_READ_BYTES)
                if not data:
                    reading = False
                    poll.unregister(producer)
                    continue
                for consumer in consumers:
                    backlogs[consumer].append(memoryview(data))
                    waiting[consumer] += len(data)
                if max(waiting.values()) > RELAY_BACKLOG_BYTES:
                    paused = True
                    poll.unregister(producer)
            elif waiting[sock]:
                backlog = backlogs[sock]
                try:
                    sent = sock.sendmsg(backlog)       # all it holds, in one writev, as GreenMQ sends
                except BlockingIOError:
                    continue
                waiting[sock] -= sent
                while sent >= len(backlog[0]):
                    sent -= len(backlog.popleft())
                    if not backlog:
                        break
                else:
                    backlog[0] = backlog[0][sent:]
                if paused and max(waiting.values()) <= RELAY_BACKLOG_BYTES:
                    paused = False
                    poll.register(producer, selectors.EVENT_READ)
    for consumer in consumers:
        consumer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu.put(usage.ru_utime + usage.ru_stime)


# What the relay reads at a time: what GreenMQ does (transport.RECV_BYTES).
RELAY_READ_BYTES = 256 * 1024
# How far the relay lets one consumer fall behind: the output GreenMQ holds for a socket
# before its consumers stop taking messages (transport.OUTBOX_HIGH_WATER).
RELAY_BACKLOG_BYTES = 1024 * 1024


def _relay_produce(port, exchange, routing_key, count, size, started):
    sock = socket.create_connection(("127.0.0.1", port))
    batch_count = max(1, min(BATCH, BATCH * 4096 // size))
    batch = b"x" * (size * batch_count)
    started.put(time.monotonic())
    for _ in range(count // batch_count):
        sock.sendall(batch)
    sock.sendall(b"x" * (size * (count % batch_count)))
    sock.close()


def _relay_consume(port, queue, count, ready, finished, size):
    sock = socket.create_connection(("127.0.0.1", port))
    ready.put(True)
    buffer, left = bytearray(READ_BYTES), count * size
    while left > 0:
        received = sock.recv_into(buffer)
        if not received:
            raise RuntimeError("the relay closed the connection early")
        left -= received
    finished.put(time.monotonic())
    sock.close()


def bare_relay(width, count, size):
    """Deliveries a second through the bare relay, and its CPU seconds."""
    address, cpu = multiprocessing.Queue(), multiprocessing.Queue()
    relay = multiprocessing.Process(target=_relay, args=(width, address, cpu))
    relay.start()
    rate = run_workload(_relay_consume, _relay_produce, address.get(timeout=60), "", "", [None] * width, count, size,
                        size)
    seconds = cpu.get(timeout=60)
    relay.join()
    return rate, seconds


# Each workload runs on every broker before the next starts, so that the machine's other
# load of the moment weighs on both sides of a ratio alike. The round trip goes first:
# after a throughput workload a broker may still be busy (freeing, collecting) while the
# next broker's latency is taken.
WORKLOADS = {
    "rpc": raw_rpc,
    "no-ack": lambda url, args: {"1->1 no-ack msg/s": one_to_one(url, args.messages, args.size)},
    "acked": lambda url, args: {"1->1 acked msg/s": one_to_one(url, args.messages, args.size, acked=True)},
    "fanout": lambda url, args: {f"fanout 1->{FANOUT_WIDTH} deliveries/s": fanout(url, args.messages, args.size)},
}


# Messages (deliveries, for fanout) per workload run, for the CPU a message.
DELIVERIES = {"no-ack": 1, "acked": 1, "fanout": FANOUT_WIDTH}


def clients_cpu_seconds():
    """User and system CPU of this process and its finished children (the clients)."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def process_cpu_seconds(pid):
    """User and system CPU of process `pid`, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_cpu(workload, cpu, deliveries):
    """The CPU a delivery took, per side (the clients', and the broker's where this bench
    can read it), and the rate at which they would fill every core."""
    (_, clients), *broker = ((side, seconds / deliveries) for side, seconds in cpu.items())
    row = f"{workload} CPU a delivery: clients {clients * 1e6:,.0f} us"
    for side, seconds in broker:
        row += (f", {side} {seconds * 1e6:,.0f} us; all {os.cpu_count()} cores busy at about "
                f"{os.cpu_count() / (clients + seconds):,.0f}/s")
    print(row)


BARE_RELAY = "bare relay"


def print_relay_headroom(results):
    """For each other broker, how far ahead of it the bare relay was: no broker can be
    further ahead on this machine."""
    relay = results[BARE_RELAY]
    for name, measured in results.items():
        if name not in ("GreenMQ", BARE_RELAY):
            print(f"the bare relay over {name[:30]}: " + ", ".join(
                f"{key} x{relay[key] / measured[key]:.2f}" for key in relay))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[],
                        help="also measure the broker at this AMQP URL (repeatable), e.g. a reference RabbitMQ")
    parser.add_argument("--greenmq-url", help="measure this running GreenMQ (to profile it) instead of starting one")
    parser.add_argument("--messages", type=int, help=f"per workload (default: {MESSAGES:,}, fewer for big bodies)")
    parser.add_argument("--size", type=byte_size, action="append",
                        help="body size, e.g. 100, 64KiB, 1MiB (repeatable: one run each; default 100)")
    parser.add_argument("--rpc-calls", type=int, default=3_000)
    parser.add_argument("--only", choices=list(WORKLOADS), action="append", help="run only this workload (repeatable)")
    parser.add_argument("--bare-relay", action="store_true",
                        help="also run each throughput workload through a relay that only copies bytes (see above)")
    args = parser.parse_args()
    broker = None
    if args.greenmq_url:
        greenmq = args.greenmq_url
    else:
        broker = BrokerProcess().start()
        greenmq = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
    urls = {"GreenMQ": greenmq, **{url: url for url in args.url}}
    names = [*urls, BARE_RELAY] if args.bare_relay else list(urls)
    messages = args.messages
    try:
        for size in args.size or [100]:
            args.size, args.messages = size, messages or messages_for(size)
            print(f"{args.messages:,} x {size:,} B transient messages per workload; {args.rpc_calls:,} raw RPC calls")
            results = {name: {} for name in names}
            cpu_rows = []
            for workload in args.only or WORKLOADS:
                for name, url in urls.items():
                    clients, broker_cpu = clients_cpu_seconds(), broker and process_cpu_seconds(broker.pid)
                    measured = WORKLOADS[workload](url, args)
                    results[name].update(measured)
                    if workload in DELIVERIES:
                        cpu = {"clients": clients_cpu_seconds() - clients}
                        if broker and name == "GreenMQ":
                            cpu["GreenMQ"] = process_cpu_seconds(broker.pid) - broker_cpu
                        cpu_rows.append((f"{workload} ({name[:30]})", cpu, args.messages * DELIVERIES[workload]))
                if args.bare_relay and workload in DELIVERIES:
                    clients = clients_cpu_seconds()
                    rate, relay_cpu = bare_relay(DELIVERIES[workload], args.messages, args.size)
                    results[BARE_RELAY].update(dict.fromkeys(measured, rate))
                    cpu = {"clients": clients_cpu_seconds() - clients - relay_cpu, "the relay": relay_cpu}
                    cpu_rows.append((f"{workload} ({BARE_RELAY})", cpu, args.messages * DELIVERIES[workload]))
            print_comparison(results)
            for row in cpu_rows:
                print_cpu(*row)
            if args.bare_relay:
                print_relay_headroom(results)
    finally:
        if broker is not None:
            broker.close()


def byte_size(text):
    """A --size: bytes, or a number with KiB or MiB."""
    for suffix, unit in (("KiB", 1024), ("MiB", 1024**2)):
        if text.endswith(suffix):
            return int(text[:-len(suffix)]) * unit
    return int(text)


def messages_for(size):
    """The default message count for bodies of `size` bytes."""
    return max(1, min(MESSAGES, BYTES_PER_WORKLOAD // size))


if __name__ == "__main__":
    main()
