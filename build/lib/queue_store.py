"""Queues: the ready messages, the consumers served round-robin within their prefetch
windows, and each message's life from enqueue to its end.

A queue is the one owner of its messages' lives. A message leaves the ready list either
delivered (the channel then holds it, unacked, until it calls `settle`) or through
`_forget`, the single door through which a message ends here: acked, rejected, expired,
purged, or gone with its queue. The unacked counts and the durable store hang off these
two places and nowhere else.

Delivery tags belong to the channel (session.py), which a consumer points back to.
Nothing here parses or encodes anything.
"""

import heapq
import time
from collections import deque

import gevent

from errors import AccessRefused, PreconditionFailed
from message import MAX_EXPIRY_MS

# Queue arguments this broker honours, with the check each value must pass (RabbitMQ's).
QUEUE_ARGUMENTS = {
    "x-message-ttl": lambda v: type(v) is int and 0 <= v <= MAX_EXPIRY_MS,
    "x-expires": lambda v: type(v) is int and 0 < v <= MAX_EXPIRY_MS,
}


# The per-queue message counters (plain integers on Queue), in the order samplers read them.
MESSAGE_COUNTERS = ("published", "delivered", "acked", "redelivered", "dead_lettered")


class ReadyList:
    """Ready messages in publish order. Published messages join at the tail; requeued ones
    return to their original place through a heap keyed by publish order, so putting back
    k messages costs O(k log k) however many wait behind them (the old way, popping every
    older waiting message per requeue, held the hub for seconds at depth)."""

    __slots__ = ("fresh", "returned")

    def __init__(self):
        self.fresh = deque()        # never delivered, in publish order
        self.returned = []          # heap of (seq, message): delivered and requeued

    def __len__(self):
        return len(self.fresh) + len(self.returned)

    def append(self, message):
        self.fresh.append(message)

    def put_back(self, message):
        heapq.heappush(self.returned, (message.seq, message))

    def head(self):
        """The message `popleft` would take, or None."""
        returned, fresh = self.returned, self.fresh
        if returned and (not fresh or returned[0][0] < fresh[0].seq):
            return returned[0][1]
        return fresh[0] if fresh else None

    def popleft(self):
        returned, fresh = self.returned, self.fresh
        if returned and (not fresh or returned[0][0] < fresh[0].seq):
            return heapq.heappop(returned)[1]
        return fresh.popleft()

    def take_all(self):
        """Empty the list; returns what it held, in order."""
        messages = list(self)
        self.fresh.clear()
        self.returned.clear()
        return messages

    def __iter__(self):
        returned = (message for _, message in sorted(self.returned))
        return heapq.merge(returned, self.fresh, key=_seq) if self.returned else iter(self.fresh)


def _seq(message):
    return message.seq


class Consumer:
    """A subscription of one channel to one queue."""

    __slots__ = ("tag", "queue", "channel", "no_ack", "exclusive", "arguments",
                 "prefetch_count", "unacked")

    def __init__(self, tag, queue, channel, no_ack=False, exclusive=False, arguments=None,
                 prefetch_count=0):
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.prefetch_count = prefetch_count    # this consumer's own window; 0: none
        self.unacked = 0                         # its deliveries not yet settled


class Queue:
    def __init__(self, vhost_name, name, durable=False, exclusive_owner=None, auto_delete=False,
                 arguments=None, on_expired=None, store=None):
        self.vhost_name = vhost_name
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.message_ttl = self.arguments.get("x-message-ttl")
        self.expires = self.arguments.get("x-expires")
        self.ready = ReadyList()
        self.consumers = deque()
        self.unacked_count = 0
        # Plain counters for the management API and /metrics (sampled into rates there).
        self.published = self.delivered = self.acked = self.redelivered = self.dead_lettered = 0
        self.bound_exchanges = set()    # exchanges with a binding to this queue, to unbind on delete
        self.deleted = False
        # The durable store, for a queue whose persistent messages outlive the process;
        # exclusive queues end with their connection, so none is kept.
        self.store = store if durable and exclusive_owner is None else None
        self._on_expired = on_expired
        self._expiry_timer = None
        self._ttl_timer = None
        self.touch()

    def __repr__(self):
        return f"<Queue {self.name!r} in vhost {self.vhost_name!r}>"

    @property
    def exclusive(self):
        return self.exclusive_owner is not None

    @property
    def message_count(self):
        self._drop_expired()
        return len(self.ready)

    # -- messages in -------------------------------------------------------------------

    def enqueue(self, message):
        self.published += 1
        ttl = self.message_ttl
        if message.ttl is not None and (ttl is None or message.ttl < ttl):
            ttl = message.ttl
        if ttl is not None:
            message = message.placed(message.redelivered, time.monotonic() + ttl / 1000.0)
        ready = self.ready
        if self.consumers and not ready.fresh and not ready.returned:
            consumer = self._next_consumer()
            if consumer is not None:
                self._hand_out(consumer, message)
                return
        ready.append(message)
        if ttl is not None and self._ttl_timer is None:
            self._arm_ttl_timer()

    def restore(self, message):
        """A message recovered from the store, in publish order, before any consumer."""
        self.ready.append(message)
        if message.expires_at is not None and self._ttl_timer is None:
            self._arm_ttl_timer()

    # -- messages out ------------------------------------------------------------------

    def dispatch(self):
        """Deliver ready messages while some consumer has room."""
        ready, consumers = self.ready, self.consumers
        # The ready list's two parts are read directly here and in _next_live and enqueue:
        # these run per message, and a Python-level len() each time cost a tenth of a delivery.
        fresh, returned = ready.fresh, ready.returned
        while (fresh or returned) and consumers:
            consumer = self._next_consumer()
            if consumer is None:
                return
            message = self._next_live()
            if message is None:
                return
            self._hand_out(consumer, message)

    def _next_live(self):
        """Take the next ready message that has not expired, ending those that have."""
        ready = self.ready
        fresh, returned = ready.fresh, ready.returned
        while fresh or returned:
            message = ready.popleft() if returned else fresh.popleft()
            if message.expires_at is None or message.expires_at > time.monotonic():
                return message
            self._forget((message,))
        return None

    def _hand_out(self, consumer, message):
        self.delivered += 1
        if message.redelivered:
            self.redelivered += 1
        if consumer.no_ack:
            if self.store is not None and message.stored is not None:
                self._forget((message,))
        else:
            consumer.unacked += 1
            self.unacked_count += 1
        consumer.channel.deliver(consumer, message)

    def get(self, no_ack):
        """The next ready message for basic.get, or None; unless `no_ack` it stays this
        queue's, unacked, until the channel settles it."""
        self.touch()
        message = self._next_live()
        if message is None:
            return None
        self.delivered += 1
        if message.redelivered:
            self.redelivered += 1
        if no_ack:
            if self.store is not None and message.stored is not None:
                self._forget((message,))
        else:
            self.unacked_count += 1
        return message

    def settle(self, deliveries, requeue):
        """The end of delivered messages: `deliveries` are a channel's (message, queue,
        consumer or None for basic.get) entries for this queue. Requeued ones go back to
        their places, flagged redelivered; the rest are done with."""
        self.unacked_count -= len(deliveries)
        for _, _, consumer in deliveries:
            if consumer is not None:
                consumer.unacked -= 1
        messages = [entry[0] for entry in deliveries]
        if requeue and not self.deleted:
            ready = self.ready
            for message in messages:
                ready.put_back(message if message.redelivered else message.placed(True, message.expires_at))
            if self._ttl_timer is None and ready:
                self._arm_ttl_timer()
            self.dispatch()
        else:
            self.acked += len(messages)
            self._forget(messages)

    def purge(self):
        """Drop every ready message (unacked ones stay, as in RabbitMQ); returns how many."""
        messages = self.ready.take_all()
        self._forget(messages)
        return len(messages)

    def _forget(self, messages):
        """The one place where messages end in this queue."""
        if self.store is not None:
            stored = [message for message in messages if message.stored is not None]
            if stored:
                self.store.remove_messages(self, stored)

    def _next_consumer(self):
        consumers = self.consumers
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if consumer.channel.can_deliver(consumer):
                return consumer
        return None

    # -- consumers ---------------------------------------------------------------------

    def add_consumer(self, consumer):
        if consumer.exclusive and self.consumers or any(c.exclusive for c in self.consumers):
            raise AccessRefused(f"queue '{self.name}' in vhost '{self.vhost_name}' in exclusive use")
        self.consumers.append(consumer)
        self._cancel_expiry()

    def remove_consumer(self, consumer):
        """Returns True when this was the last consumer of an auto-delete queue."""
        self.consumers.remove(consumer)
        if not self.consumers:
            self.touch()
            return self.auto_delete
        return False

    # -- expiry (x-expires, x-message-ttl) ------------------------------------------------

    def touch(self):
        """Restart the x-expires clock: the queue was declared, read or left idle."""
        if self.expires is None or self.consumers or self.deleted:
            return
        self._cancel_expiry()
        self._expiry_timer = gevent.spawn_later(self.expires / 1000.0, self._expire)

    def _cancel_expiry(self):
        if self._expiry_timer is not None:
            self._expiry_timer.kill(block=False)
            self._expiry_timer = None

    def _expire(self):
        self._expiry_timer = None
        if not self.consumers and not self.deleted and self._on_expired is not None:
            self._on_expired(self)

    def _drop_expired(self):
        """As in RabbitMQ, messages expire on reaching the head, so one with a short
        per-message TTL waits behind one without."""
        ready = self.ready
        head = ready.head()
        if head is None or head.expires_at is None:
            return
        now = time.monotonic()
        expired = []
        while head is not None and head.expires_at is not None and head.expires_at <= now:
            expired.append(ready.popleft())
            head = ready.head()
        if expired:
            self._forget(expired)

    def _arm_ttl_timer(self):
        """A timer for the head's expiry, so an unread queue does not hold expired messages."""
        head = self.ready.head()
        if head is not None and head.expires_at is not None:
            self._ttl_timer = gevent.spawn_later(max(0.0, head.expires_at - time.monotonic()), self._ttl_fired)

    def _ttl_fired(self):
        self._ttl_timer = None
        if self.deleted:
            return
        self._drop_expired()
        if self.ready:
            self._arm_ttl_timer()

    def mark_deleted(self):
        """The queue is gone: its ready messages end with it. Deliveries still unacked end
        when their channel settles them (a requeue then has nowhere to go)."""
        self.deleted = True
        self._forget(self.ready.take_all())
        self._cancel_expiry()
        if self._ttl_timer is not None:
            self._ttl_timer.kill(block=False)
            self._ttl_timer = None


def validate_queue_arguments(arguments, queue_name, vhost_name):
    for name, check in QUEUE_ARGUMENTS.items():
        if name in arguments and not check(arguments[name]):
            raise PreconditionFailed(
                f"invalid arg '{name}' for queue '{queue_name}' in vhost '{vhost_name}': "
                f"{str(arguments[name])[:20]!r} is not an integer in range")
