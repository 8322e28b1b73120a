"""Queues: ready messages, consumers served round-robin within their prefetch, and the
order messages return in when they are requeued.

A queue knows consumers only through the small `Consumer` record below; delivery tags and
unacked bookkeeping belong to the channel (session.py), which a consumer points back to.
Nothing here parses or encodes anything.
"""

import heapq
import time
from collections import deque
from operator import attrgetter

import gevent

from errors import AccessRefused, PreconditionFailed
from message import MAX_EXPIRY_MS

_seq = attrgetter("seq")

# Queue arguments this broker honours, with the check each value must pass (RabbitMQ's).
QUEUE_ARGUMENTS = {
    "x-message-ttl": lambda v: type(v) is int and 0 <= v <= MAX_EXPIRY_MS,
    "x-expires": lambda v: type(v) is int and 0 < v <= MAX_EXPIRY_MS,
}


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
        self.prefetch_count = prefetch_count
        self.unacked = 0

    def can_take(self):
        """Room for one more delivery: the channel is flowing and its socket keeps up, and
        neither this consumer's nor the channel's prefetch window is full. Prefetch does
        not apply to no-ack consumers, as in RabbitMQ."""
        channel = self.channel
        if not channel.active:
            return False
        if self.no_ack:
            return True
        return ((not self.prefetch_count or self.unacked < self.prefetch_count)
                and (not channel.prefetch_count or len(channel.unacked) < channel.prefetch_count))


class Queue:
    def __init__(self, vhost, name, durable=False, exclusive_owner=None, auto_delete=False,
                 arguments=None, on_expired=None):
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.message_ttl = self.arguments.get("x-message-ttl")
        self.expires = self.arguments.get("x-expires")
        self.ready = deque()
        self.consumers = deque()
        self.unacked_count = 0
        self.bindings = set()  # exchanges with a binding to this queue, to unbind on delete
        self.deleted = False
        self._on_expired = on_expired
        self._expiry_timer = None
        self._ttl_timer = None
        self.touch()

    def __repr__(self):
        return f"<Queue {self.name!r} in vhost {self.vhost!r}>"

    @property
    def exclusive(self):
        return self.exclusive_owner is not None

    @property
    def message_count(self):
        self._drop_expired()
        return len(self.ready)

    # -- messages in -------------------------------------------------------------------

    def enqueue(self, message):
        ttl = self.message_ttl
        if message.ttl is not None and (ttl is None or message.ttl < ttl):
            ttl = message.ttl
        if ttl is not None:
            message = message.placed(message.redelivered, time.monotonic() + ttl / 1000.0)
        ready = self.ready
        if not ready and self.consumers:
            consumer = self._next_consumer()
            if consumer is not None:
                consumer.channel.deliver(consumer, message)
                return
        ready.append(message)
        if ttl is not None and self._ttl_timer is None:
            self._arm_ttl_timer()

    def requeue(self, messages):
        """Put back messages that were delivered and not acknowledged, flagged redelivered,
        each in its original place ahead of everything published after it."""
        if self.deleted or not messages:
            return
        returning = sorted((m if m.redelivered else m.placed(True, m.expires_at) for m in messages),
                           key=_seq)
        ready = self.ready
        last = returning[-1].seq
        ahead = []
        while ready and ready[0].seq < last:
            ahead.append(ready.popleft())
        ready.extendleft(reversed(list(heapq.merge(ahead, returning, key=_seq))))
        if self._ttl_timer is None:
            self._arm_ttl_timer()
        self.dispatch()

    # -- messages out ------------------------------------------------------------------

    def dispatch(self):
        """Deliver ready messages while some consumer has room."""
        ready = self.ready
        while ready and self.consumers:
            message = ready[0]
            if message.expires_at is not None and message.expires_at <= time.monotonic():
                ready.popleft()
                continue
            consumer = self._next_consumer()
            if consumer is None:
                return
            ready.popleft()
            consumer.channel.deliver(consumer, message)

    def get(self):
        """The next ready message for basic.get, or None."""
        self.touch()
        self._drop_expired()
        return self.ready.popleft() if self.ready else None

    def purge(self):
        count = len(self.ready)
        self.ready.clear()
        return count

    def _next_consumer(self):
        consumers = self.consumers
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if consumer.can_take():
                return consumer
        return None

    # -- consumers ---------------------------------------------------------------------

    def add_consumer(self, consumer):
        if consumer.exclusive and self.consumers or any(c.exclusive for c in self.consumers):
            raise AccessRefused(f"queue '{self.name}' in vhost '{self.vhost}' in exclusive use")
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
        ready = self.ready
        if ready and ready[0].expires_at is not None:
            now = time.monotonic()
            while ready and ready[0].expires_at is not None and ready[0].expires_at <= now:
                ready.popleft()

    def _arm_ttl_timer(self):
        """For the head's expiry only: as in RabbitMQ, a message expires on reaching the head,
        so one with a short per-message TTL waits behind one without."""
        head_expires_at = self.ready[0].expires_at
        if head_expires_at is not None:
            self._ttl_timer = gevent.spawn_later(max(0.0, head_expires_at - time.monotonic()), self._ttl_fired)

    def _ttl_fired(self):
        """Drop messages expired at the head, so an unread queue does not hold them."""
        self._ttl_timer = None
        if self.deleted:
            return
        self._drop_expired()
        if self.ready:
            self._arm_ttl_timer()

    def mark_deleted(self):
        self.deleted = True
        self.ready.clear()
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
