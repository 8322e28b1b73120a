"""x-expires through pika: a queue unused for its x-expires is deleted, and basic.get counts
as use (RabbitMQ: "has not been redeclared, and basic.get has not been invoked"). Whether
it is gone is asked of the management API, which, unlike a passive declare, does not use it."""

import time

import pika

from tests.http_api import call, path

EXPIRES_MS = 1000
# basic.get this often, for this long: the gets span the queue's x-expires twice and more,
# each well inside it, so a machine busy for most of a second does not end the queue.
GET_EVERY_SECONDS = EXPIRES_MS / 1000 / 10
GETTING_SECONDS = 2.5 * EXPIRES_MS / 1000
WAIT = 10.0


def exists(broker, queue):
    status, _ = call(broker.http_port, "GET", path("queues", "/", queue))
    assert status in (200, 404), status
    return status == 200


def test_basic_get_restarts_the_x_expires_timer(broker, name):
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port)) as connection:
        channel = connection.channel()
        queue = channel.queue_declare(name, arguments={"x-expires": EXPIRES_MS}).method.queue
        started = time.monotonic()
        while time.monotonic() - started < GETTING_SECONDS:
            method, _, _ = channel.basic_get(queue, auto_ack=True)     # a queue gone closes the channel
            assert method is None
            connection.sleep(GET_EVERY_SECONDS)
        assert exists(broker, queue)
        deadline = time.monotonic() + WAIT
        while exists(broker, queue):        # unused now: it goes
            assert time.monotonic() < deadline, f"{queue} outlived its x-expires by {WAIT} s"
            time.sleep(0.05)
