"""What watching the broker costs: message flow with and without a dashboard refreshing
every second, and the time /api/queues and /metrics take with many queues.

    python bench/watching.py                   # starts its own broker on free ports
    python bench/watching.py --rounds 7 --messages 300000 --queues 10000
    python bench/watching.py --browser         # the real dashboard in headless Chromium

Flow: bench/throughput.py's transient run (one producer, one consumer, 100-byte bodies),
alternately without and with a watcher, in one broker; the watcher is a separate process
making the requests the dashboard's queues tab makes each second (overview, queues,
exchanges, bindings, connections, consumers), or with --browser the dashboard itself. On
two shared cores the watcher's own CPU weighs on the clients too, so the broker's CPU time
per refresh is measured as well: what a refresh takes from the broker, whatever the machine.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from greenmq import connection  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402
from tests.http_api import call  # noqa: E402
from throughput import throughput  # noqa: E402

DASHBOARD_REQUESTS = ("/api/overview", "/api/queues", "/api/exchanges", "/api/bindings", "/api/connections",
                      "/api/consumers")


def watcher(http_port, stop):
    """Every second, what an open dashboard asks for."""
    while not stop.is_set():
        started = time.monotonic()
        for path in DASHBOARD_REQUESTS:
            status, _ = call(http_port, "GET", path)
            assert status == 200, (path, status)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def browser_watcher(http_port, stop):
    from tests.browser import MISSING, chromium, open_dashboard
    if MISSING:
        raise SystemExit(MISSING)
    from selenium.webdriver.common.by import By
    with chromium() as driver:
        open_dashboard(driver, http_port, refresh=1)
        driver.find_element(By.ID, "tab-queues").click()
        stop.wait()


def flow(args, broker):
    target = browser_watcher if args.browser else watcher
    throughput(broker.port, args.messages // 4, 100)        # warm up
    alone, watched = [], []
    for _ in range(args.rounds):
        alone.append(throughput(broker.port, args.messages, 100))
        stop = multiprocessing.Event()
        process = multiprocessing.Process(target=target, args=(broker.http_port, stop))
        process.start()
        time.sleep(3 if args.browser else 1)                  # the watcher is refreshing before the run
        watched.append(throughput(broker.port, args.messages, 100))
        stop.set()
        process.join(30)
    print(f"transient flow, {args.messages} messages x {args.rounds} rounds, alternating")
    print(f"  without a dashboard: median {statistics.median(alone):,.0f} msg/s  ({', '.join(f'{r:,.0f}' for r in alone)})")
    print(f"  dashboard every 1 s: median {statistics.median(watched):,.0f} msg/s  "
          f"({', '.join(f'{r:,.0f}' for r in watched)})")
    print(f"  ratio watched/alone: {statistics.median(watched) / statistics.median(alone):.3f}")


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def refresh_cost(args, broker):
    """The broker's CPU time per dashboard refresh, with `--refresh-queues` queues."""
    with connection.Connection("127.0.0.1", broker.port) as conn:
        channel = conn.channel()
        for i in range(args.refresh_queues):
            channel.queue_declare(f"bench.refresh.{i:04d}")
    refreshes = 200
    before = cpu_seconds(broker.pid)
    for _ in range(refreshes):
        for path in DASHBOARD_REQUESTS:
            call(broker.http_port, "GET", path)
    per_refresh = (cpu_seconds(broker.pid) - before) / refreshes
    print(f"broker CPU per dashboard refresh ({len(DASHBOARD_REQUESTS)} requests, {args.refresh_queues} queues): "
          f"{per_refresh * 1000:.1f} ms, {per_refresh * 100:.2f}% of the broker's time at one refresh a second")


def many_queues(args, broker):
    with connection.Connection("127.0.0.1", broker.port) as conn:
        channel = conn.channel()
        for i in range(args.queues):
            channel.queue_declare(f"bench.many.{i:05d}")
            if i % 10 == 0:
                channel.basic_publish("", f"bench.many.{i:05d}", b"x")
    for path in ("/api/queues", "/metrics", "/api/overview"):
        times = []
        for _ in range(5):
            started = time.monotonic()
            status, body = call(broker.http_port, "GET", path)
            times.append(time.monotonic() - started)
            assert status == 200
        size = len(body) if isinstance(body, bytes) else len(str(body))
        print(f"GET {path} with {args.queues:,} queues: median {statistics.median(times) * 1000:.0f} ms, "
              f"best {min(times) * 1000:.0f} ms ({size:,} characters)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--refresh-queues", type=int, default=100)
    parser.add_argument("--browser", action="store_true", help="watch with the real dashboard in headless Chromium")
    args = parser.parse_args()
    with BrokerProcess("--in-memory") as broker:
        refresh_cost(args, broker)
    with BrokerProcess("--in-memory") as broker:
        flow(args, broker)
    with BrokerProcess("--in-memory") as broker:
        many_queues(args, broker)


if __name__ == "__main__":
    main()
