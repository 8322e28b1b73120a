"""Connection and channel state, the same for every protocol.

A front end opens a `Session` per client connection and a `Channel` per channel, calls
their methods for what the client asks, and receives what the core pushes through the
`sink` it passed in, an object with these methods:

    deliver(channel_number, consumer_tag, delivery_tag, message)
    consumer_cancelled(channel_number, consumer_tag)       # queue deleted under a consumer
    message_returned(channel_number, reply_code, reply_text, message)   # mandatory, unroutable
    publish_confirmed(channel_number, delivery_tag, multiple, ack)      # confirm mode
    channel_closed(channel_number, exc)    # the broker closes a channel (consumer timeout)
    close(exc)                     # the broker ends the connection (its vhost was deleted)

Confirms collect per channel as runs of acks or nacks and reach the sink when the front end
calls `session.flush_confirms()`, once per batch of input, so one confirm covers a batch.

When the front end's socket cannot keep up it calls `session.set_writable(False)`, and
True once drained; queues then hold messages instead of piling them into its buffer.
"""

import base64
import os
from collections import deque

from .access import check_user_id
from .errors import BrokerError, ChannelNotOpen, NotAllowed, PreconditionFailed, PublishRefused, StoreUnavailable, Unsupported
from .message import Message, new_message
from .queue_store import Consumer
from .vhost import DIRECT_REPLY_TO

MAX_CHANNELS = 2047  # RabbitMQ's default channel_max


class Session:
    """One client connection: who, to which virtual host, with which channels."""

    def __init__(self, node, vhost, user, permission, peer, protocol, sink, client_properties=None):
        self.node = node
        self.vhost = vhost
        self.user = user                # the user's name
        self.permission = permission    # the user's rights in this vhost (access.Permission)
        self.peer = peer
        # What operators call this connection: the client's address, as RabbitMQ names one.
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.protocol = protocol
        self.sink = sink
        self.client_properties = client_properties or {}
        self.channels = {}
        self.exclusive_queues = set()
        self.writable = True
        self.closed = False
        self.confirming_channels = []   # channels with confirms not yet flushed

    def check(self, kind, resource, name):
        """AccessRefused unless the user may `kind` (configure, write, read) the named
        queue or exchange."""
        self.permission.check(kind, resource, name, self.vhost.name, self.user)

    def open_channel(self, number):
        if number in self.channels:
            raise ChannelNotOpen(f"second 'channel.open' seen for channel {number}")
        if not 1 <= number <= MAX_CHANNELS:
            raise NotAllowed(f"channel number {number} is outside 1..{MAX_CHANNELS}")
        self.node.check_channel_limit(self.user)
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
        for channel in self.channels.values():
            channel.active = False      # what one channel requeues is not for its siblings
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
        self.node = session.node
        self.vhost = session.vhost
        self.sink = session.sink
        self.number = number
        self.consumers = {}
        self.reply_consumer = None      # the ReplyConsumer of direct reply-to, if it consumes
        # delivery_tag -> its Delivery (queue_store.py) not yet settled, in tag order;
        # Queue.settle alone takes them out.
        self.unacked = {}
        # Those of them that came from basic.get: RabbitMQ's channel-wide (global) prefetch
        # window counts only consumer deliveries.
        self.unacked_gets = {}
        self.next_delivery_tag = 1
        self.global_prefetch_count = 0      # a window shared by the channel's consumers
        self.consumer_prefetch_count = 0    # each new consumer's own window
        self.flow = True
        self.active = session.writable
        self.confirming = False
        self.publish_seq = 0
        self.confirm_runs = []        # [[ack, first seq, last seq], ...] not yet flushed
        # Confirms held back while a stored message ahead of them waits for its commit, as
        # (seq, ack, the store's batch it waits for or 0), so none overtakes an earlier one.
        self.unconfirmed = deque()
        self.closed = False

    # -- publishing --------------------------------------------------------------------

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False,
                encoded_properties=None):
        """Route one message. In confirm mode every publish, refused or not, takes the next
        sequence number and is acked or nacked in order; a message the store keeps is
        acked once it is on disk."""
        seq = 0
        if self.confirming:
            seq = self.publish_seq = self.publish_seq + 1
            writes = self.vhost.store.message_writes
        try:
            if exchange not in self.session.permission.writable_exchanges:
                self.session.check("write", "exchange", exchange)
            if properties is None:      # most messages: no TTL of their own to look for
                message = Message(exchange, routing_key, body, None, encoded_properties)
            else:
                if "user_id" in properties:
                    check_user_id(properties["user_id"], self.session.user)
                if properties.get("reply_to") == DIRECT_REPLY_TO:
                    properties, encoded_properties = self._with_reply_name(properties), None
                message = new_message(exchange, routing_key, body, properties, encoded_properties)
            routed = self.vhost.publish(exchange, message)
        except StoreUnavailable:
            if not seq:
                raise
            self._confirm(seq, False)     # the nack says it all; the channel goes on
            return
        except PublishRefused:
            if seq:
                self._confirm(seq, False)     # without confirms the message is just dropped
            return
        except BrokerError:
            if seq:
                self._confirm(seq, False)
            raise
        if not routed and mandatory:
            self.sink.message_returned(self.number, 312, "NO_ROUTE", message)
        if seq:
            # Whatever the publish kept in the store (a persistent message for durable
            # queues, any message for a stream) is confirmed once it is on disk, or once
            # every queue is done with it if that comes first (the next to confirm only:
            # confirms go out in order).
            store = self.vhost.store
            if store.message_writes != writes:
                if not self.unconfirmed:
                    store.on_end_before_write(message, self._ended_before_write, seq)
                self.unconfirmed.append((seq, True, store.open_batch))
                store.after_commit(self._committed, again=True)
            else:
                self._confirm(seq, True)

    def _with_reply_name(self, properties):
        """A request's properties with `reply_to` naming this channel's reply consumer, which
        RabbitMQ requires to exist."""
        if self.reply_consumer is None:
            raise PreconditionFailed("fast reply consumer does not exist")
        return {**properties, "reply_to": self.reply_consumer.name}

    def check_publish(self, exchange, properties=None):
        """Refuse now what `publish` would refuse: a transaction's publishes are refused when
        sent, as in RabbitMQ, though routed only at commit."""
        self.session.check("write", "exchange", exchange)
        self.vhost.publishable(exchange)
        if properties is not None and "user_id" in properties:
            check_user_id(properties["user_id"], self.session.user)
        if properties is not None and properties.get("reply_to") == DIRECT_REPLY_TO:
            self._with_reply_name(properties)

    def _confirm(self, seq, ack):
        if self.unconfirmed:
            self.unconfirmed.append((seq, ack, 0))
        else:
            self._record_confirm(seq, ack)

    def _record_confirm(self, seq, ack):
        runs = self.confirm_runs
        if runs and runs[-1][0] == ack:
            runs[-1][2] = seq
            return
        if not runs:
            self.session.confirming_channels.append(self)
        runs.append([ack, seq, seq])

    def _committed(self, batch, ok):
        """The store's batch `batch` is on disk (or failed to get there): release the held
        confirms up to the first one still waiting for a later batch."""
        unconfirmed = self.unconfirmed
        if self.closed:
            return
        while unconfirmed and unconfirmed[0][2] <= batch:
            seq, ack, waited_for = unconfirmed.popleft()
            self._record_confirm(seq, ack and ok if waited_for == batch else ack)
        self.session.flush_confirms()

    def _ended_before_write(self, seq):
        """Message `seq`, the next to confirm, was consumed (or dropped) by every queue
        before the store wrote it: confirm it and those behind it that wait for nothing."""
        unconfirmed = self.unconfirmed
        if self.closed or not unconfirmed or unconfirmed[0][0] != seq:
            return
        while unconfirmed and (unconfirmed[0][0] == seq or not unconfirmed[0][2]):
            number, ack, _ = unconfirmed.popleft()
            self._record_confirm(number, ack)
        self.session.flush_confirms()

    def commit(self, operations):
        """A transaction's publishes and settlements, `(method, arguments)` of this channel
        in the order sent, run now; returns once the store has committed what they kept or
        removed, which is what tx.commit-ok promises. Blocks the calling greenlet (the
        connection's reader: later frames wait their turn), never the hub. What the store
        could not take fails the transaction as a nacked message does in RabbitMQ."""
        try:
            self.vhost.store.durably(_run_all, operations)
        except StoreUnavailable:
            raise PreconditionFailed("partial tx completion") from None

    def confirm_select(self):
        self.confirming = True

    # -- consuming ---------------------------------------------------------------------

    def consume(self, queue_name, consumer_tag="", no_ack=False, exclusive=False,
                arguments=None, announce=None):
        """Subscribe to a queue. `announce(tag)` runs after the consumer exists and before
        its first delivery, so the front end can answer consume-ok first."""
        # Before the queue is looked up, as in RabbitMQ.
        if consumer_tag in self.consumers or (self.reply_consumer is not None
                                              and consumer_tag == self.reply_consumer.tag):
            raise NotAllowed(f"attempt to reuse consumer tag '{consumer_tag}'")
        if not consumer_tag:
            consumer_tag = "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if queue_name == DIRECT_REPLY_TO:
            self._consume_replies(consumer_tag, no_ack)
            if announce is not None:
                announce(consumer_tag)
            return consumer_tag
        self.session.check("read", "queue", queue_name)
        queue = self.vhost.queue(queue_name, self.session)
        if self.global_prefetch_count and not queue.global_qos:
            raise Unsupported(f"queue '{queue_name}' in vhost '{self.vhost.name}' does not support global qos")
        consumer = Consumer(consumer_tag, queue, self, no_ack, exclusive, arguments,
                            self.consumer_prefetch_count)
        queue.add_consumer(consumer)
        self.consumers[consumer_tag] = consumer
        if announce is not None:
            announce(consumer_tag)
        queue.dispatch()
        return consumer_tag

    def _consume_replies(self, consumer_tag, no_ack):
        """Direct reply-to's consumer: no queue, no acks (a reply has nowhere to go back
        to), one per channel; needs no permission, as in RabbitMQ."""
        if not no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge")
        if self.reply_consumer is not None:
            raise PreconditionFailed("reply consumer already set")
        self.reply_consumer = ReplyConsumer(consumer_tag, self.vhost.open_reply_name(self))

    def _stop_replies(self):
        self.vhost.close_reply_name(self.reply_consumer.name)
        self.reply_consumer = None

    def cancel(self, consumer_tag, requeue_unacked=False):
        """Stop a consumer. Its unacked deliveries stay on the channel to be acked (AMQP),
        unless `requeue_unacked` puts them back on the queue now. False if no such consumer."""
        if self.reply_consumer is not None and consumer_tag == self.reply_consumer.tag:
            self._stop_replies()
            return True
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is None:
            return False
        self._detach(consumer)
        if requeue_unacked:
            self._settle(list(consumer.unacked.values()), requeue=True)
        return True

    def consumer_cancelled(self, consumer):
        """The queue went away under the consumer."""
        if self.consumers.pop(consumer.tag, None) is not None:
            self.sink.consumer_cancelled(self.number, consumer.tag)

    def _detach(self, consumer):
        queue = consumer.queue
        if not queue.deleted and queue.remove_consumer(consumer):
            self.vhost.remove_queue(queue)

    def can_deliver(self, consumer):
        """Room for one more delivery to `consumer`: the channel is flowing and its socket
        keeps up, and neither the consumer's nor the channel's prefetch window is full.
        Prefetch does not apply to no-ack consumers, as in RabbitMQ."""
        if not self.active:
            return False
        if consumer.no_ack:
            return True
        return ((not consumer.prefetch_count or len(consumer.unacked) < consumer.prefetch_count)
                and (not self.global_prefetch_count
                     or len(self.unacked) - len(self.unacked_gets) < self.global_prefetch_count))

    def deliver(self, consumer, message, delivery):
        """Called by a queue for a consumer that can take `message` (or by the vhost for a
        direct reply): the next delivery tag names it, and an acking consumer's `delivery`
        is held by that tag until settled."""
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        if delivery is not None:
            delivery.delivery_tag = tag
            delivery.delivered_at = self.node.clock
            self.unacked[tag] = consumer.unacked[tag] = delivery
        self.sink.deliver(self.number, consumer.tag, tag, message)

    def get(self, queue_name, no_ack=False):
        """basic.get: (delivery_tag, message, messages left) or None when the queue is empty."""
        self.session.check("read", "queue", queue_name)
        queue = self.vhost.queue(queue_name, self.session)
        got = queue.get(no_ack, self)
        if got is None:
            return None
        message, delivery = got
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        if delivery is not None:
            delivery.delivery_tag = tag
            delivery.delivered_at = self.node.clock
            self.unacked[tag] = self.unacked_gets[tag] = delivery
        return tag, message, queue.message_count

    def qos(self, prefetch_count, global_=False):
        """Global qos limits the channel's unacked total; otherwise each consumer's own, now
        and for consumers to come (RabbitMQ applies it to new consumers only; clients such
        as Celery raise it at run time and expect it to take effect)."""
        if global_:
            self.global_prefetch_count = prefetch_count
        else:
            self.consumer_prefetch_count = prefetch_count
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
        if multiple:
            self._settle(self._take(delivery_tag, multiple), requeue=False)
            return
        delivery = self.unacked.get(delivery_tag)
        if delivery is None:
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        delivery.queue.settle((delivery,), False)
        if self.global_prefetch_count:
            self._dispatch_all()

    def nack(self, delivery_tag, multiple=False, requeue=True):
        self._settle(self._take(delivery_tag, multiple), requeue, rejected=True)

    def reject(self, delivery_tag, requeue=True):
        self.nack(delivery_tag, False, requeue)

    def recover(self):
        """basic.recover: every unacked delivery goes back to its queue."""
        self._settle(list(self.unacked.values()), requeue=True)

    def tags_settled_by(self, delivery_tag, multiple, pending=()):
        """The tags an ack or nack of `delivery_tag` would settle, leaving out `pending` ones
        (settled in an open transaction), refusing an unknown tag as `ack` does."""
        if multiple and delivery_tag == 0:
            return [tag for tag in self.unacked if tag not in pending]
        if delivery_tag not in self.unacked or delivery_tag in pending:
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        if not multiple:
            return [delivery_tag]
        return [tag for tag in self.unacked if tag <= delivery_tag and tag not in pending]

    def _take(self, delivery_tag, multiple):
        """The unacked deliveries an ack/nack names (tag 0 + multiple: all)."""
        unacked = self.unacked
        if multiple and delivery_tag == 0:
            return list(unacked.values())
        if delivery_tag not in unacked:
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        if not multiple:
            return [unacked[delivery_tag]]
        deliveries = []
        for tag, delivery in unacked.items():
            if tag > delivery_tag:
                break
            deliveries.append(delivery)
        return deliveries

    def _settle(self, deliveries, requeue, rejected=False):
        """Hand deliveries back to their queues to settle; a channel-wide window that
        opened may be filled from any of the channel's queues."""
        by_queue = {}
        for delivery in deliveries:
            by_queue.setdefault(delivery.queue, []).append(delivery)
        for queue, queue_deliveries in by_queue.items():
            queue.settle(queue_deliveries, requeue, rejected)
        if self.global_prefetch_count:
            self._dispatch_all()

    # -- closing -----------------------------------------------------------------------

    def close(self):
        """Cancel the consumers, then requeue everything unacked, in original order."""
        if self.closed:
            return
        self.closed = True
        self.active = False
        if self.reply_consumer is not None:
            self._stop_replies()
        for consumer in list(self.consumers.values()):
            self._detach(consumer)
        self.consumers.clear()
        self._settle(list(self.unacked.values()), requeue=True)


class ReplyConsumer:
    """A channel's consumer of direct reply-to: its tag, and the name its requests'
    `reply_to` carries, which replies are published to."""

    __slots__ = ("tag", "name")

    def __init__(self, tag, name):
        self.tag = tag
        self.name = name


def _run_all(operations):
    for operation, arguments in operations:
        operation(*arguments)
