"""The message as the core holds it: one small object per published message, shared by every
queue it is routed to."""

import itertools
import sys

from errors import PreconditionFailed

# AMQP 0-9-1 basic properties, in the order of the spec's property flags.
PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
    "user_id", "app_id", "cluster_id",
)

# RabbitMQ's bound on TTLs and queue expiry, in milliseconds (about 49 days): larger values
# are refused rather than overflowing the timers they set.
MAX_EXPIRY_MS = 2**32 - 1

_next_seq = itertools.count(1).__next__


class Message:
    """`properties` is None or a dict keyed by PROPERTY_NAMES; `seq` orders messages
    process-wide, so requeued messages can return to their original place in any queue.
    `redelivered` and `expires_at` belong to a message's place in one queue: queues
    copy the message (see `placed`) rather than change a shared one. `encoded_properties`
    is opaque to the core: the properties as the publisher's wire format carried them, which
    a front end speaking the same format may send again instead of encoding them anew."""

    __slots__ = ("seq", "exchange", "routing_key", "body", "properties", "ttl",
                 "redelivered", "expires_at", "encoded_properties")

    def __init__(self, exchange, routing_key, body, properties=None, encoded_properties=None):
        self.seq = _next_seq()
        # Interned, so a million messages with the same key hold one string, not a million
        # (a fifth of a small message's memory); interned strings still die with their last user.
        self.exchange = sys.intern(exchange)
        self.routing_key = sys.intern(routing_key)
        self.body = body
        self.properties = properties
        self.encoded_properties = encoded_properties
        self.ttl = None
        if properties is not None:
            expiration = properties.get("expiration")
            if expiration is not None:
                self.ttl = parse_expiration(expiration)
        self.redelivered = False
        self.expires_at = None

    @property
    def headers(self):
        return self.properties.get("headers") if self.properties else None

    def placed(self, redelivered, expires_at):
        """A copy for one queue's use, sharing body and properties."""
        copy = Message.__new__(Message)
        copy.seq = self.seq
        copy.exchange = self.exchange
        copy.routing_key = self.routing_key
        copy.body = self.body
        copy.properties = self.properties
        copy.ttl = self.ttl
        copy.redelivered = redelivered
        copy.expires_at = expires_at
        copy.encoded_properties = self.encoded_properties
        return copy


def parse_expiration(expiration):
    """Per-message TTL in milliseconds: AMQP carries it as a decimal string."""
    if isinstance(expiration, str) and expiration.isdigit() and expiration.isascii() and len(expiration) <= 10:
        ttl = int(expiration)
        if ttl <= MAX_EXPIRY_MS:
            return ttl
    raise PreconditionFailed(f"invalid expiration '{expiration[:20] if isinstance(expiration, str) else expiration}'")
