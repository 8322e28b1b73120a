"""The memory budget's figures (Linux only: /proc).

    python bench/memory_budget.py rss [--limit 256MiB] [--gib 1]
        RSS at baseline, its peak during a flood of 1 KiB messages against --memory-limit,
        and a minute after the queue is emptied (malloc_trim's work).
    python bench/memory_budget.py cpu --old DIR [--rounds 4]
        The broker's CPU per transient message (user+system from /proc around a fixed
        workload of amqp_broker_bound.py), this tree's broker and the one in DIR (for
        example `git archive <before> | tar -x -C DIR`) alternating, as ratios per round.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from greenmq import connection  # noqa: E402
from amqp_broker_bound import WORKLOADS  # noqa: E402
from amqp_budget import cpu_seconds  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402

BODY = b"x" * 1024
SAMPLE_SECONDS = 0.1
SETTLE_SECONDS = 60


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def flood(port, queue, count):
    with connection.Connection(port=port) as publisher:
        channel = publisher.channel()
        for _ in range(count):
            channel.basic_publish("", queue, BODY)
        channel.queue_declare(queue, passive=True)    # everything sent has been read


def drain(port, queue, count):
    with connection.Connection(port=port) as consumer:
        received = []
        channel = consumer.channel()
        channel.basic_consume(queue, lambda *delivery: received.append(1), auto_ack=True)
        while len(received) < count:
            consumer.process_data_events(0.1)


def report_rss(args):
    count = int(args.gib * 2**30) // len(BODY)
    with BrokerProcess("--memory-limit", args.limit, "--in-memory") as broker:
        with connection.Connection(port=broker.port) as admin:
            admin.channel().queue_declare("bench.memory")
            limit = admin.call("status")["memory"]["limit_bytes"]
        baseline = rss_bytes(broker.pid)
        workers = [threading.Thread(target=flood, args=(broker.port, "bench.memory", count)),
                   threading.Thread(target=drain, args=(broker.port, "bench.memory", count))]
        started = time.monotonic()
        workers[0].start()
        peak, blocked_seen = baseline, False
        with connection.Connection(port=broker.port) as admin:
            while not blocked_seen and workers[0].is_alive():
                blocked_seen = admin.call("status")["memory"]["publishers_blocked"]
                peak = max(peak, rss_bytes(broker.pid))
                time.sleep(SAMPLE_SECONDS)
        workers[1].start()
        while any(worker.is_alive() for worker in workers):
            peak = max(peak, rss_bytes(broker.pid))
            time.sleep(SAMPLE_SECONDS)
        emptied = rss_bytes(broker.pid)
        print(f"{count:,} messages of {len(BODY)} bytes ({args.gib:g} GiB) in {time.monotonic() - started:.1f} s "
              f"against a limit of {limit / 2**20:.0f} MiB (publishers blocked: {blocked_seen})")
        time.sleep(SETTLE_SECONDS)
        settled = rss_bytes(broker.pid)
        mib = 2**20
        print(f"RSS: baseline {baseline / mib:.0f} MiB, peak {peak / mib:.0f} MiB ({peak / limit:.2f}x the limit), "
              f"at empty {emptied / mib:.0f} MiB, {SETTLE_SECONDS} s later {settled / mib:.0f} MiB "
              f"({(settled - baseline) / max(1, peak - baseline):.0%} of the peak's distance above baseline)")


def cpu_per_message(script, workload, args):
    with BrokerProcess("--in-memory", script=script) as broker:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        WORKLOADS[workload](url, args)        # warm up: first connections, caches
        user, system = cpu_seconds(broker.pid)
        WORKLOADS[workload](url, args)
        user_after, system_after = cpu_seconds(broker.pid)
    return (user_after - user + system_after - system) * 1e6 / args.messages


def report_cpu(args):
    new_script = "broker.py"
    old_script = os.path.join(os.path.abspath(args.old), "broker.py")
    for workload in ("no-ack", "acked"):
        ratios = []
        for round_number in range(args.rounds):
            order = [(old_script, "old"), (new_script, "new")]
            if round_number % 2:
                order.reverse()
            figures = {label: cpu_per_message(script, workload, args) for script, label in order}
            ratios.append(figures["new"] / figures["old"])
            print(f"{workload} round {round_number + 1}: broker CPU per message old {figures['old']:.2f} us, "
                  f"new {figures['new']:.2f} us, new/old {ratios[-1]:.3f}")
        ratios.sort()
        print(f"{workload}: median new/old {ratios[len(ratios) // 2]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    rss = sub.add_parser("rss")
    rss.add_argument("--limit", default="256MiB")
    rss.add_argument("--gib", type=float, default=1.0)
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--old", required=True)
    cpu.add_argument("--rounds", type=int, default=4)
    cpu.add_argument("--messages", type=int, default=200_000)
    cpu.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    report_rss(args) if args.what == "rss" else report_cpu(args)


if __name__ == "__main__":
    main()
