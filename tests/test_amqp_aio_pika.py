"""asyncio clients, unmodified: aio-pika's common patterns and aiormq underneath it.
Runs against GreenMQ, or $GREENMQ_TEST_AMQP_URL."""

import asyncio
import contextlib
from urllib.parse import urlparse

import aio_pika
import aiormq
import pytest
from aio_pika.exceptions import DeliveryError
from aio_pika.patterns import RPC, Master, NackMessage

# Every test runs under this deadline: a lost message fails it instead of hanging the run.
TEST_SECONDS = 20.0
# How long a pattern waits for a dead-lettered reply or refusal before failing.
FEATURE_WAIT_SECONDS = 3.0



def run(test):
    """Run the coroutine function `test` to completion under TEST_SECONDS."""
    asyncio.run(asyncio.wait_for(test(), TEST_SECONDS))


class Relay:
    """A TCP relay to the broker that a test can cut, as a network failure or a broker
    restart would, for robust connections to come back through."""

    def __init__(self, amqp_url):
        url = urlparse(amqp_url)
        self.upstream = (url.hostname, url.port)
        self.url = amqp_url
        self.links = []
        self.server = None

    async def start(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        url = urlparse(self.url)
        self.url = url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{port}").geturl()
        return self

    async def _accept(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.links.append((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def cut(self):
        for near, far in self.links:
            near.transport.abort()
            far.transport.abort()
        self.links.clear()

    def close(self):
        self.cut()
        self.server.close()


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def open_channel(amqp_url, **options):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await connection.channel(**options)


async def until(condition):
    """Wait for `condition()` (a coroutine function or a plain one); the run's deadline bounds it."""
    while not (await condition() if asyncio.iscoroutinefunction(condition) else condition()):
        await asyncio.sleep(0.01)


def test_robust_connection_and_channel_come_back_with_their_queue_and_consumer(amqp_url, name):
    async def test():
        relay = await Relay(amqp_url).start()
        connection = await aio_pika.connect_robust(relay.url, reconnect_interval=0.1)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, auto_delete=True)
            received = []

            async def on_message(message):
                async with message.process():
                    received.append(message.body)

            await queue.consume(on_message)
            await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=name)
            await until(lambda: received == [b"before"])
            reconnected = asyncio.Event()
            connection.reconnect_callbacks.add(lambda *args: reconnected.set())
            relay.cut()
            await reconnected.wait()
            await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=name)
            await until(lambda: received == [b"before", b"after"])
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            await connection.close()
            relay.close()
    run(test)


def test_rpc_register_call_and_close(amqp_url, name):
    async def test():
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            async def multiply(*, x, y):
                return x * y

            server = await RPC.create(await connection.channel())
            await server.register(name, multiply, auto_delete=True)
            client = await RPC.create(await connection.channel())
            assert await client.call(name, kwargs={"x": 6, "y": 7}) == 42
            # close(): cancel, unbind from the DLX the auto-delete queue just took away, delete
            await client.close()
            await server.close()
    run(test)


def test_rpc_errors_come_back_as_exceptions(amqp_url, name):
    async def test():
        async def fail(*, reason):
            raise ValueError(reason)
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            server = await RPC.create(await connection.channel())
            await server.register(name, fail, auto_delete=True)
            client = await RPC.create(await connection.channel())
            with pytest.raises(ValueError, match="no good"):
                await client.call(name, kwargs={"reason": "no good"})
            await client.close()
            await server.close()
    run(test)


def test_rpc_call_times_out_through_dead_lettering(amqp_url, name):
    """A call that expires in the queue is dead-lettered back to its caller as a timeout."""
    async def test():
        release = asyncio.Event()

        async def slow(*, n):
            await release.wait()
            return n

        connection = await aio_pika.connect(amqp_url)
        async with connection:
            server_channel = await connection.channel()
            await server_channel.set_qos(prefetch_count=1)
            server = await RPC.create(server_channel)
            await server.register(name, slow, auto_delete=True)
            client = await RPC.create(await connection.channel())
            busy = asyncio.ensure_future(client.call(name, kwargs={"n": 1}))
            with pytest.raises(asyncio.TimeoutError) as timed_out:
                await asyncio.wait_for(client.call(name, kwargs={"n": 2}, expiration=0.05), FEATURE_WAIT_SECONDS)
            release.set()
            assert await busy == 1
            assert timed_out.value.args and timed_out.value.args[0] == "Message timed-out"
            await client.close()
            await server.close()
    run(test)


def test_master_hands_tasks_to_workers_and_a_nack_requeues(amqp_url, name):
    async def test():
        done = []
        refused = set()

        async def work(*, n):
            if n == 2 and n not in refused:
                refused.add(n)
                raise NackMessage(requeue=True)
            done.append(n)

        connection = await aio_pika.connect(amqp_url)
        async with connection:
            master = Master(await connection.channel())
            worker = await master.create_worker(name, work, auto_delete=True)
            for n in (1, 2, 3):
                await master.create_task(name, kwargs={"n": n})
            await until(lambda: sorted(done) == [1, 2, 3])
            await worker.close()
    run(test)


def test_queue_iterator_processes_messages_in_order(amqp_url, name):
    async def test():
        async with open_channel(amqp_url) as channel:
            queue = await channel.declare_queue(name, auto_delete=True)
            for n in range(5):
                await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), routing_key=name)
            got = []
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 5:
                        break
            assert got == [b"0", b"1", b"2", b"3", b"4"]
    run(test)


def test_publisher_confirms_ack_and_return_unroutable_mandatory_messages(amqp_url, name):
    async def test():
        async with open_channel(amqp_url, publisher_confirms=True) as channel:
            returned = []
            channel.return_callbacks.add(lambda channel, message: returned.append(message.body))
            await channel.declare_queue(name, auto_delete=True)
            confirmation = await channel.default_exchange.publish(aio_pika.Message(b"m"), routing_key=name)
            assert isinstance(confirmation, aiormq.spec.Basic.Ack)
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(b"lost"), routing_key=name + "-nowhere", mandatory=True)
            assert not isinstance(confirmation, aiormq.spec.Basic.Ack)
            assert returned == [b"lost"]
    run(test)


def test_publisher_confirms_raise_delivery_error_on_reject_publish(amqp_url, name):
    async def test():
        async with open_channel(amqp_url, publisher_confirms=True) as channel:
            await channel.declare_queue(name, auto_delete=True,
                                        arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
            await channel.default_exchange.publish(aio_pika.Message(b"fits"), routing_key=name)
            with pytest.raises(DeliveryError):
                await channel.default_exchange.publish(aio_pika.Message(b"over"), routing_key=name)
            await channel.queue_delete(name)
    run(test)


def test_expired_messages_are_not_delivered(amqp_url, name):
    async def test():
        async with open_channel(amqp_url) as channel:
            queue = await channel.declare_queue(name, auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"short", expiration=0.05), routing_key=name)
            await channel.default_exchange.publish(aio_pika.Message(b"long", expiration=60), routing_key=name)

            async def one_left():
                declared = await channel.declare_queue(name, passive=True)
                return declared.declaration_result.message_count == 1

            await until(one_left)      # the head expires on its own, unread
            message = await queue.get(timeout=5)
            assert message.body == b"long"
            await message.ack()
            assert await queue.get(fail=False) is None
    run(test)


def test_a_consumer_that_cancels_itself(amqp_url, name):
    async def test():
        async with open_channel(amqp_url) as channel:
            await channel.set_qos(prefetch_count=1)
            queue = await channel.declare_queue(name)
            got = []
            stopped = asyncio.Event()

            async def on_message(message):
                got.append(message.body)
                if len(got) == 2:       # prefetch 1: nothing more comes while this is unacked
                    await queue.cancel(tag)
                    stopped.set()
                await message.ack()

            tag = await queue.consume(on_message)
            for n in range(4):
                await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), routing_key=name)
            await stopped.wait()
            declared = await channel.declare_queue(name, passive=True)
            assert got == [b"0", b"1"]
            assert declared.declaration_result.consumer_count == 0
            assert declared.declaration_result.message_count == 2
            await queue.delete(if_unused=False, if_empty=False)
    run(test)


def test_aiormq_publish_consume_and_ack(amqp_url, name):
    async def test():
        connection = await aiormq.connect(amqp_url)
        try:
            channel = await connection.channel()
            await channel.queue_declare(name, auto_delete=True)
            received = asyncio.Queue()

            async def on_message(message):
                await received.put(message.body)
                await message.channel.basic_ack(message.delivery.delivery_tag)

            await channel.basic_consume(name, on_message)
            confirmation = await channel.basic_publish(b"hello", routing_key=name,
                                                       properties=aiormq.spec.Basic.Properties(message_id="1"))
            assert isinstance(confirmation, aiormq.spec.Basic.Ack)
            assert await received.get() == b"hello"
        finally:
            await connection.close()
    run(test)
