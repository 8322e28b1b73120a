"""Connection and channel state, the same for every protocol.

A front end opens a `Session` per client connection and a `Channel` per channel, calls
their methods for what the client asks, and receives what the core pushes through the
`sink` it passed in, an object with these methods:

    deliver(channel_number, consumer_tag, delivery_tag, message)
    consumer_cancelled(channel_number, consumer_tag)       # queue deleted under a consumer
    message_returned(channel_number, reply_code, reply_text, message)   # mandatory, unroutable
    publish_confirmed(channel_number, delivery_tag, multiple, ack)      # confirm mode

Confirms collect per channel as runs of acks or nacks and reach the sink when the front end
calls `session.flush_confirms()`, once per batch of input, so one confirm covers a batch.

When the front end's socket cannot keep up it calls `session.set_writable(False)`, and
True once drained; queues then hold messages instead of piling them into its buffer.
"""

import base64
import os

from errors import BrokerError, ChannelNotOpen, NotAllowed, PreconditionFailed
from message import Message
from queue_store import Consumer

MAX_CHANNELS = 2047  # RabbitMQ's default channel_max


class Session:
    """One client connection: who, to which virtual host, with which channels."""

    def __init__(self, node, vhost, user, peer, protocol, sink, client_properties=None):
        self.node = node
        self.vhost = vhost
        self.user = user
        self.peer = peer
        self.protocol = protocol
        self.sink = sink
        self.client_properties = client_properties or {}
        self.channels = {}
        self.exclusive_queues = set()
        self.writable = True
        self.closed = False
        self.confirming_channels = []   # channels with confirms not yet flushed

    def open_channel(self, number):
        if number in self.channels:
            raise ChannelNotOpen(f"second 'channel.open' seen for channel {number}")
        if not 1 <= number <= MAX_CHANNELS:
            raise NotAllowed(f"channel number {number} is outside 1..{MAX_CHANNELS}")
        channel = self.channels[number] = Channel(self, number)
        return channel

    def channel(self, number):
        channel = self.channels.get(number)
        if channel is None:
            raise ChannelNotOpen(f"expected 'channel.open' for channel {number}")
        return channel

    def close_channel(self, number):
        channel = self.channels.pop(number, None)
        if channel is not None:
            channel.close()

    def flush_confirms(self):
        """Send the confirms collected since the last call, one per run."""
        if self.confirming_channels:
            for channel in self.confirming_channels:
                for ack, first, last in channel.confirm_runs:
                    self.sink.publish_confirmed(channel.number, last, last > first, ack)
                channel.confirm_runs.clear()
            self.confirming_channels.clear()

    def set_writable(self, writable):
        if writable == self.writable:
            return
        self.writable = writable
        for channel in list(self.channels.values()):
            channel.update_active()

    def close(self):
        """The client is gone: requeue what it held and delete its exclusive queues."""
        if self.closed:
            return
        self.closed = True
        for number in list(self.channels):
            self.close_channel(number)
        for queue in list(self.exclusive_queues):
            self.vhost.remove_queue(queue)
        self.node.sessions.discard(self)


class Channel:
    """Delivery tags, unacknowledged deliveries, consumers, prefetch and confirm mode of
    one channel."""

    def __init__(self, session, number):
        self.session = session
        self.vhost = session.vhost
        self.sink = session.sink
        self.number = number
        self.consumers = {}
        # delivery_tag -> (message, queue, consumer or None for basic.get), in tag order.
        self.unacked = {}
        self.next_delivery_tag = 1
        self.prefetch_count = 0       # shared by the channel's consumers (global qos)
        self.consumer_prefetch = 0    # each consumer's own window
        self.flow = True
        self.active = session.writable
        self.confirming = False
        self.publish_seq = 0
        self.confirm_runs = []        # [[ack, first seq, last seq], ...] not yet flushed
        self.closed = False

    # -- publishing --------------------------------------------------------------------

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False,
                encoded_properties=None):
        """Route one message. In confirm mode every publish, refused or not, takes the next
        sequence number and is acked or nacked in order."""
        seq = 0
        if self.confirming:
            seq = self.publish_seq = self.publish_seq + 1
        try:
            if properties is not None and "user_id" in properties:
                self._check_user_id(properties["user_id"])
            message = Message(exchange, routing_key, body, properties, encoded_properties)
            routed = self.vhost.publish(exchange, message)
        except BrokerError:
            if seq:
                self._confirm(seq, False)
            raise
        if not routed and mandatory:
            self.sink.message_returned(self.number, 312, "NO_ROUTE", message)
        if seq:
            self._confirm(seq, True)

    def _confirm(self, seq, ack):
        runs = self.confirm_runs
        if runs and runs[-1][0] == ack:
            runs[-1][2] = seq
            return
        if not runs:
            self.session.confirming_channels.append(self)
        runs.append([ack, seq, seq])

    def _check_user_id(self, user_id):
        if user_id != self.session.user:
            raise PreconditionFailed(
                f"user_id property set to '{user_id}' but authenticated user was '{self.session.user}'")

    def confirm_select(self):
        self.confirming = True

    # -- consuming ---------------------------------------------------------------------

    def consume(self, queue_name, consumer_tag="", no_ack=False, exclusive=False,
                arguments=None, announce=None):
        """Subscribe to a queue. `announce(tag)` runs after the consumer exists and before
        its first delivery, so the front end can answer consume-ok first."""
        queue = self.vhost.queue(queue_name, self.session)
        if not consumer_tag:
            consumer_tag = "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        elif consumer_tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{consumer_tag}'")
        consumer = Consumer(consumer_tag, queue, self, no_ack, exclusive, arguments,
                            self.consumer_prefetch)
        queue.add_consumer(consumer)
        self.consumers[consumer_tag] = consumer
        if announce is not None:
            announce(consumer_tag)
        queue.dispatch()
        return consumer_tag

    def cancel(self, consumer_tag, requeue_unacked=False):
        """Stop a consumer. Its unacked deliveries stay on the channel to be acked (AMQP),
        unless `requeue_unacked` puts them back on the queue now. False if no such consumer."""
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is None:
            return False
        self._detach(consumer)
        if requeue_unacked:
            tags = [tag for tag, entry in self.unacked.items() if entry[2] is consumer]
            self._requeue([self.unacked.pop(tag) for tag in tags])
        return True

    def consumer_cancelled(self, consumer):
        """The queue went away under the consumer."""
        if self.consumers.pop(consumer.tag, None) is not None:
            self.sink.consumer_cancelled(self.number, consumer.tag)

    def _detach(self, consumer):
        queue = consumer.queue
        if not queue.deleted and queue.remove_consumer(consumer):
            self.vhost.remove_queue(queue)

    def deliver(self, consumer, message):
        """Called by a queue for a consumer that can take `message`."""
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        if not consumer.no_ack:
            self.unacked[tag] = (message, consumer.queue, consumer)
            consumer.unacked += 1
            consumer.queue.unacked_count += 1
        self.sink.deliver(self.number, consumer.tag, tag, message)

    def get(self, queue_name, no_ack=False):
        """basic.get: (delivery_tag, message, messages left) or None when the queue is empty."""
        queue = self.vhost.queue(queue_name, self.session)
        message = queue.get()
        if message is None:
            return None
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        if not no_ack:
            self.unacked[tag] = (message, queue, None)
            queue.unacked_count += 1
        return tag, message, len(queue.ready)

    def qos(self, prefetch_count, global_=False):
        """Global qos limits the channel's unacked total; otherwise each consumer's own, now
        and for consumers to come (RabbitMQ applies it to new consumers only; clients such
        as Celery raise it at run time and expect it to take effect)."""
        if global_:
            self.prefetch_count = prefetch_count
        else:
            self.consumer_prefetch = prefetch_count
            for consumer in self.consumers.values():
                consumer.prefetch_count = prefetch_count
        self._dispatch_all()

    def set_flow(self, active):
        self.flow = active
        self.update_active()

    def update_active(self):
        was_active = self.active
        self.active = self.flow and self.session.writable and not self.closed
        if self.active and not was_active:
            self._dispatch_all()

    def _dispatch_all(self):
        for queue in {consumer.queue for consumer in self.consumers.values()}:
            queue.dispatch()

    # -- settling deliveries -----------------------------------------------------------

    def ack(self, delivery_tag, multiple=False):
        if not multiple:
            entry = self.unacked.pop(delivery_tag, None)
            if entry is None:
                raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
            message, queue, consumer = entry
            queue.unacked_count -= 1
            if consumer is not None:
                consumer.unacked -= 1
            if self.prefetch_count:
                self._dispatch_all()
            elif queue.ready:
                queue.dispatch()
            return
        entries = self._take(delivery_tag, multiple)
        for message, queue, consumer in entries:
            queue.unacked_count -= 1
            if consumer is not None:
                consumer.unacked -= 1
        self._redispatch(entries)

    def nack(self, delivery_tag, multiple=False, requeue=True):
        entries = self._take(delivery_tag, multiple)
        if requeue:
            self._requeue(entries)
        else:
            for message, queue, consumer in entries:
                queue.unacked_count -= 1
                if consumer is not None:
                    consumer.unacked -= 1
            self._redispatch(entries)

    def reject(self, delivery_tag, requeue=True):
        self.nack(delivery_tag, False, requeue)

    def recover(self):
        """basic.recover: every unacked delivery goes back to its queue."""
        entries = list(self.unacked.values())
        self.unacked.clear()
        self._requeue(entries)

    def _take(self, delivery_tag, multiple):
        """Remove and return the unacked entries an ack/nack names (tag 0 + multiple: all)."""
        unacked = self.unacked
        if multiple and delivery_tag == 0:
            entries = list(unacked.values())
            unacked.clear()
            return entries
        if delivery_tag not in unacked:
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        if not multiple:
            return [unacked.pop(delivery_tag)]
        tags = []
        for tag in unacked:
            if tag > delivery_tag:
                break
            tags.append(tag)
        return [unacked.pop(tag) for tag in tags]

    def _requeue(self, entries):
        by_queue = {}
        for message, queue, consumer in entries:
            queue.unacked_count -= 1
            if consumer is not None:
                consumer.unacked -= 1
            by_queue.setdefault(queue, []).append(message)
        for queue, messages in by_queue.items():
            queue.requeue(messages)
        self._redispatch(entries)

    def _redispatch(self, entries):
        """Windows opened: let the queues involved deliver again."""
        queues = {queue for _, queue, _ in entries}
        if self.prefetch_count:
            queues.update(consumer.queue for consumer in self.consumers.values())
        for queue in queues:
            if queue.ready:
                queue.dispatch()

    # -- closing -----------------------------------------------------------------------

    def close(self):
        """Cancel the consumers, then requeue everything unacked, in original order."""
        if self.closed:
            return
        self.closed = True
        self.active = False
        for consumer in list(self.consumers.values()):
            self._detach(consumer)
        self.consumers.clear()
        entries = list(self.unacked.values())
        self.unacked.clear()
        self._requeue(entries)
