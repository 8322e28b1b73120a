"""Quorum queues on one node, as RabbitMQ 3.10 has them: declared durable only, every
message kept on disk whatever its delivery mode, each return of a message counted
(x-delivery-count) and a message returned past x-delivery-limit dead-lettered, dead-lettering
at most once or, with x-overflow reject-publish, at least once. What a quorum queue does
like a classic one (TTLs, expiry, length limits, single active and prioritised consumers)
is the classic queue's code; here is only what differs.

One node has no replicas: "quorum" here is the behaviour applications rely on, so they run
unchanged, and a declaration moves to a RabbitMQ cluster as it is.
"""

import gevent

from .dead_letter import DELIVERY_LIMIT
from .errors import PreconditionFailed
from .message import PlacedMessage
from .policy import NOT_FOR_QUORUM_QUEUES
from .queue_store import QUEUE_ARGUMENTS, Queue, _accepted, _integer, _string

DEAD_LETTER_STRATEGIES = ("at-most-once", "at-least-once")

# x-queue-leader-locator's values in RabbitMQ 3.10 (where to put the leader: one node has one).
LEADER_LOCATORS = ("client-local", "balanced")

# The arguments of a quorum queue with RabbitMQ 3.10's checks (a redeclare must repeat them
# all alike). x-delivery-limit is not checked there: a value other than an integer sets no
# limit. The last group only tunes RabbitMQ's replication and memory, so it has no effect.
QUORUM_ARGUMENTS = {
    **{name: QUEUE_ARGUMENTS[name] for name in (
        "x-message-ttl", "x-expires", "x-dead-letter-exchange", "x-dead-letter-routing-key",
        "x-max-length", "x-max-length-bytes", "x-overflow", "x-single-active-consumer", "x-queue-type")},
    "x-delivery-limit": _accepted,
    "x-dead-letter-strategy": _string(DEAD_LETTER_STRATEGIES, "invalid_dlx_strategy"),
    "x-max-in-memory-length": _integer(),
    "x-max-in-memory-bytes": _integer(),
    "x-quorum-initial-group-size": _integer(),
    "x-queue-leader-locator": _string(LEADER_LOCATORS, "invalid_queue_locator_arg"),
}

# What a quorum queue cannot do, refused as RabbitMQ 3.10 refuses it ("of queue type
# rabbit_quorum_queue"): priorities (RabbitMQ 4 has them), classic-only tuning, streams' own.
QUORUM_REFUSED_ARGUMENTS = (
    "x-max-priority", "x-queue-mode", "x-queue-version", "x-queue-master-locator",
    "x-initial-cluster-size", "x-max-age", "x-stream-max-segment-size-bytes",
)

# Quorum queues' x-overflow reject-publish lets publishes in again once the queue is back
# below this share of its limits (RabbitMQ's rabbit_fifo ?LOW_LIMIT), so a queue at its
# limit does not flap between refusing and taking every other publish.
REJECT_PUBLISH_LOW_LIMIT = 0.8

# How long a message dead-lettered at least once waits in its queue before it is routed
# again when no queue took it (no route, or a target refusing it with reject-publish).
# RabbitMQ's worker waits for its publisher-confirm timeout (minutes); one node needs no
# confirm round trip, so a second keeps the retries cheap and the wait short.
DEAD_LETTER_RETRY_SECONDS = 1.0

DELIVERY_COUNT_HEADER = "x-delivery-count"


class CountedMessage(PlacedMessage):
    """A quorum queue's copy of a message with its deliveries counted: `delivery_count`
    returns so far, and its properties with that count in x-delivery-count, as consumers
    are sent it (the message as published, kept in the store and dead-lettered, has none)."""

    __slots__ = ("delivery_count",)


def counted(message, count, redelivered):
    copy = message.placed(redelivered, message.expires_at, message.order, CountedMessage)
    copy.delivery_count = count
    properties = dict(message.properties) if message.properties else {}
    properties["headers"] = {**(properties.get("headers") or {}), DELIVERY_COUNT_HEADER: count}
    copy.properties = properties
    copy.encoded_properties = None
    return copy


class QuorumQueue(Queue):
    queue_type = "quorum"
    rabbit_type = "rabbit_quorum_queue"
    accepted_arguments = QUORUM_ARGUMENTS
    refused_arguments = QUORUM_REFUSED_ARGUMENTS
    keeps_every_message = True
    global_qos = False
    trims_under_previous_overflow = False
    inapplicable_policy_keys = NOT_FOR_QUORUM_QUEUES
    publish_blocked = False     # x-overflow reject-publish: over the limit, not yet back under it
    # Not paged: each message's delivery count lives on its copy in memory, which the store
    # does not keep (RabbitMQ's x-max-in-memory-length is accepted and has no effect).
    pages = False

    def __init__(self, *args, **kwargs):
        self.pending_dead_letters = []     # at-least-once: (message, reason) no queue took yet
        self._retry_timer = None
        super().__init__(*args, **kwargs)

    @classmethod
    def validate(cls, arguments, durable, exclusive, auto_delete, what):
        """Quorum queues are durable, never exclusive or auto-delete (RabbitMQ's checks, in
        its order); an exclusive declaration arrives here not durable, as it was made."""
        super().validate(arguments, durable, exclusive, auto_delete, what)
        for refused, name in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"),
                              (not durable, "non-durable")):
            if refused:
                raise PreconditionFailed(f"invalid property '{name}' for {what}")

    def configure(self, settings):
        """The classic settings, then a quorum queue's own: x-delivery-limit, and
        x-dead-letter-strategy, at-least-once only with x-overflow reject-publish (otherwise
        RabbitMQ falls back to at-most-once). reject-publish-dlx is not a quorum queue's:
        RabbitMQ 3.10 logs a warning and drops the head."""
        super().configure(settings)
        if self.overflow == "reject-publish-dlx":
            self.overflow = "drop-head"
        limit = settings.get("x-delivery-limit")
        self.delivery_limit = limit if type(limit) is int else None
        self.at_least_once = (settings.get("x-dead-letter-strategy") == "at-least-once"
                              and self.overflow == "reject-publish" and self.dead_letter_exchange is not None)

    def _full_for(self, message):
        """reject-publish as a quorum queue has it: a publish is taken while the ready
        messages are not over a limit (so the queue may go one over it), then refused until
        they are back to REJECT_PUBLISH_LOW_LIMIT of every limit."""
        ready, max_length, max_bytes = self.ready, self.max_length, self.max_length_bytes
        if self.publish_blocked:
            low = REJECT_PUBLISH_LOW_LIMIT
            self.publish_blocked = not ((max_length is None or len(ready) <= int(max_length * low))
                                        and (max_bytes is None or ready.bytes <= int(max_bytes * low)))
        else:
            self.publish_blocked = ((max_length is not None and len(ready) > max_length)
                                    or (max_bytes is not None and ready.bytes > max_bytes))
        return self.publish_blocked

    def get(self, no_ack, channel=None):
        """basic.get's message carries x-delivery-count even on its first delivery (0), as
        RabbitMQ's does; a consumer's only from its first return on."""
        got = super().get(no_ack, channel)
        if got is None or type(got[0]) is CountedMessage:
            return got
        message, delivery = got
        return counted(message, 0, message.redelivered), delivery

    def _requeue(self, messages):
        """Each return counts a delivery; a message returned more than x-delivery-limit
        times is dead-lettered (delivery_limit) instead, or dropped without a DLX."""
        limit, returned, dead = self.delivery_limit, [], []
        for message in messages:
            count = getattr(message, "delivery_count", 0) + 1
            if limit is not None and count > limit:
                dead.append(message)
            else:
                returned.append(counted(message, count, True))
        if dead:
            self._forget(dead, DELIVERY_LIMIT)
        super()._requeue(returned)

    def _forget(self, messages, reason=None):
        """At least once: a message dies here only once a queue has taken its dead-lettered
        copy, which is stored in the same batch that removes it here, so it is on disk in
        one place or the other at every commit. What no queue took (no route, a target
        refusing it) stays, not ready, and is routed again after DEAD_LETTER_RETRY_SECONDS.
        Copies may go twice to a target that took one when another refused, as at-least-once
        allows."""
        if reason is None or not self.at_least_once or self.deleted or not messages:
            super()._forget(messages, reason)
            return
        refused = {id(message) for message in self._dead_letter(self, messages, reason)}
        super()._forget([message for message in messages if id(message) not in refused])
        if refused:
            self.pending_dead_letters += [(message, reason) for message in messages if id(message) in refused]
            if self._retry_timer is None:
                self._retry_timer = gevent.spawn_later(DEAD_LETTER_RETRY_SECONDS, self._retry_dead_letters)

    def _retry_dead_letters(self):
        self._retry_timer = None
        pending, self.pending_dead_letters = self.pending_dead_letters, []
        for message, reason in pending:
            self._forget((message,), reason)

    def mark_deleted(self):
        """Messages still waiting to be dead-lettered go with the queue, as in RabbitMQ."""
        super().mark_deleted()
        if self._retry_timer is not None:
            self._retry_timer.kill(block=False)
            self._retry_timer = None
        pending, self.pending_dead_letters = self.pending_dead_letters, []
        super()._forget([message for message, _ in pending])
