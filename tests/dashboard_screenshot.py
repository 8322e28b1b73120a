"""Save a screenshot of the dashboard with some traffic on it, for the README:
`make screenshot` (or `python -m tests.dashboard_screenshot docs/dashboard.png`)."""

import sys
import threading
import time

import pika

from tests.broker_process import BrokerProcess
from tests.browser import MISSING, chromium, open_dashboard, wait_until
from tests.http_api import call, path

QUEUES = ("orders", "invoices", "emails", "audit.log")


def traffic(amqp_port, stop):
    """Publish into every queue and consume two of them, so the chart has rates to show."""
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port)) as connection:
        channel = connection.channel()
        for queue in QUEUES:
            channel.queue_declare(queue)
        for queue in QUEUES[:2]:
            channel.basic_consume(queue, lambda ch, method, properties, body: ch.basic_ack(method.delivery_tag))
        n = 0
        while not stop.is_set():
            for queue in QUEUES:
                channel.basic_publish("", queue, b'{"n": %d}' % n)
            n += 1
            if n % 50 == 0:
                connection.process_data_events(0.05)


def main(target):
    if MISSING:
        sys.exit(MISSING)
    with BrokerProcess("--stats-interval", "1") as broker:
        stop = threading.Event()
        thread = threading.Thread(target=traffic, args=(broker.amqp_port, stop), daemon=True)
        thread.start()
        with chromium(1280, 760) as driver:
            open_dashboard(driver, broker.http_port)
            time.sleep(12)                                       # a few samples for the chart
            wait_until(lambda: call(broker.http_port, "GET", path("queues", "/", "orders"))[0] == 200)
            driver.save_screenshot(target)
        stop.set()
        thread.join(5)
    print(f"saved {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
