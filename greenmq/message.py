"""The message as the core holds it: one small object per published message, shared by every
queue it is routed to."""

import base64
import datetime
import decimal
import json

from .errors import BadSyntax, PreconditionFailed
from .properties import PROPERTY_NAMES

# AMQP's short strings (names, routing keys, most properties) hold at most 255 bytes of UTF-8.
MAX_NAME_BYTES = 255


# RabbitMQ's bound on TTLs and queue expiry, in milliseconds (about 49 days): larger values
# are refused rather than overflowing the timers they set.
MAX_EXPIRY_MS = 2**32 - 1

# RabbitMQ's default max_message_size: the largest body either protocol accepts. A front
# end refuses a larger one before holding it whole (406, as RabbitMQ does); operators may
# lower or raise it with --max-message-bytes (RabbitMQ allows up to 512 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024

# Messages share one copy of each exchange name and routing key seen recently (a fifth of a
# small message's memory when a million wait). Not sys.intern: since CPython 3.12 interned
# strings live as long as the process, so unique routing keys (an RPC reply queue per
# request) would pile up forever. 10,000 names of at most 255 bytes bound what this table
# holds to a few MiB; when full it starts afresh, and the strings die with their messages.
MAX_SHARED_NAMES = 10_000
_shared_names = {}


def message_too_large(size, max_message_bytes):
    """The refusal of a body larger than the broker's maximum, in RabbitMQ's words."""
    return PreconditionFailed(f"message size {size} is larger than configured max size {max_message_bytes}")


class Message:
    """`properties` is None or a dict keyed by PROPERTY_NAMES. `encoded_properties` is
    opaque to the core: the properties as the publisher's wire format carried them, which
    a front end speaking the same format may send again instead of encoding them anew.
    `stored` is the durable store's record of a persistent message it holds, shared by
    every queue's copy; None for everything the store does not hold.

    A TTL of the message's own and what belongs to its place in one queue (when it expires
    there, whether it was delivered before, its order among the queue's requeued messages)
    live on PlacedMessage: most messages have none of them, and without those slots and
    a sequence number a queued message takes a fifth less memory. Here they read as unset."""

    __slots__ = ("exchange", "routing_key", "body", "properties", "encoded_properties", "stored", "holders")

    ttl = None
    redelivered = False
    expires_at = None
    order = None
    origin = None
    stream_offset = None

    def __init__(self, exchange, routing_key, body, properties=None, encoded_properties=None):
        shared = _shared_names          # the one copy of each name (see MAX_SHARED_NAMES)
        if len(shared) >= MAX_SHARED_NAMES:
            shared.clear()
        self.exchange = shared.setdefault(exchange, exchange)
        self.routing_key = shared.setdefault(routing_key, routing_key)
        self.body = body
        self.properties = properties
        self.encoded_properties = encoded_properties
        self.stored = None
        self.holders = 0    # the queues holding it: its body counts in the memory budget once

    def _sharing(self, kind):
        """A new `kind` of message holding this one's body and properties (not copies)."""
        copy = kind.__new__(kind)
        copy.exchange = self.exchange
        copy.routing_key = self.routing_key
        copy.body = self.body
        copy.properties = self.properties
        copy.encoded_properties = self.encoded_properties
        return copy

    def placed(self, redelivered, expires_at, order=None, kind=None):
        """A copy for one queue's use, sharing body and properties; `kind`: a subclass of
        PlacedMessage for a queue type that keeps more per message."""
        copy = self._sharing(kind or PlacedMessage)
        copy.stored = self.stored
        copy.ttl = self.ttl
        copy.redelivered = redelivered
        copy.expires_at = expires_at
        copy.order = order
        copy.origin = self.origin or self
        return copy

    def at_offset(self, offset):
        """The message as a stream delivers it, at `offset`: each front end adds the offset
        to the headers it sends (STREAM_OFFSET_HEADER) in its own encoding, so neither the
        properties nor their encoding are copied and made anew per delivery."""
        copy = self._sharing(OffsetMessage)
        copy.stored = None
        copy.holders = 0
        copy.stream_offset = offset
        return copy


# The header a stream's deliveries carry their offset in, as RabbitMQ names it.
STREAM_OFFSET_HEADER = "x-stream-offset"


class OffsetMessage(Message):
    """A stream's delivery of a message, with its offset in the stream."""

    __slots__ = ("stream_offset",)


def properties_with_stream_offset(message):
    """A stream delivery's properties as a dict, its offset among the headers."""
    properties = message.properties or {}
    return {**properties, "headers": {**(properties.get("headers") or {}), STREAM_OFFSET_HEADER: message.stream_offset}}


class PlacedMessage(Message):
    """A message with state of its own: its TTL in milliseconds (from its `expiration`
    property), or a queue's copy of it with its deadline there (monotonic time), its
    redelivered flag and `order`, the queue's count of deliveries when the message first
    left it, which puts it back in its place if it is requeued. A queue's copy names its
    `origin`, the message whose `holders` counts the queues holding the body they share."""

    __slots__ = ("ttl", "redelivered", "expires_at", "order", "origin")


def new_message(exchange, routing_key, body, properties=None, encoded_properties=None):
    """A published message, carrying its own TTL if its properties give it one."""
    if properties is not None:
        expiration = properties.get("expiration")
        if expiration is not None:
            ttl = parse_expiration(expiration)
            message = PlacedMessage(exchange, routing_key, body, properties, encoded_properties)
            message.ttl = ttl
            message.redelivered = False
            message.expires_at = message.order = message.origin = None
            return message
    return Message(exchange, routing_key, body, properties, encoded_properties)


def ttl_of(properties):
    """A message's own TTL in milliseconds, from its `expiration` property, or None."""
    expiration = properties.get("expiration")
    return None if expiration is None else parse_expiration(expiration)


def parse_expiration(expiration):
    """Per-message TTL in milliseconds: AMQP carries it as a decimal string."""
    if isinstance(expiration, str) and expiration.isdigit() and expiration.isascii() and len(expiration) <= 10:
        ttl = int(expiration)
        if ttl <= MAX_EXPIRY_MS:
            return ttl
    raise PreconditionFailed(f"invalid expiration '{expiration[:20] if isinstance(expiration, str) else expiration}'")


# -- properties as JSON -------------------------------------------------------------------
# Header values JSON has no type for travel as one-member objects tagged with their type,
# so a message's properties survive JSON (the JSON-lines protocol, the durable store) as
# AMQP holds them.

# The latest second a timestamp may name: what Python's datetime (and so every AMQP client
# library here) can represent, the last second of the year 9999.
MAX_TIMESTAMP = 253402300799


def json_value(value):
    """The tagged form of a value JSON has no type for (a `default=` for json encoders)."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {"$timestamp": int(value.timestamp())}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    raise TypeError(f"cannot encode {type(value).__name__} in JSON")


# Keys sorted, so equal tables give equal text.
properties_to_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=json_value).encode


def _untag(obj):
    if len(obj) == 1:
        (tag, tagged), = obj.items()
        decode = TAGGED_VALUES.get(tag)
        if decode is not None:
            return decode(tagged)
    return obj


def _timestamp(seconds):
    if type(seconds) is not int or not 0 <= seconds <= MAX_TIMESTAMP:
        raise ValueError(seconds)
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _decimal(text):
    if type(text) is not str:
        raise TypeError(text)
    number = decimal.Decimal(text)
    if not number.is_finite():
        raise ValueError(text)
    return number


# Each tag's decoder; they raise ValueError or TypeError for a value the tag cannot carry.
TAGGED_VALUES = {
    "$bytes": lambda text: bytearray(base64.b64decode(text, validate=True)),   # AMQP's byte array type
    "$timestamp": _timestamp,
    "$decimal": _decimal,
}

properties_from_json = json.JSONDecoder(object_hook=_untag).decode


STRING_PROPERTIES = frozenset(PROPERTY_NAMES) - {"headers", "delivery_mode", "priority", "timestamp"}


def properties_from_request(properties):
    """Check the properties of a message published over JSON (lines or HTTP) against what
    AMQP can carry, so any consumer can be sent it; returns them, or None when empty."""
    if type(properties) is not dict:
        raise BadSyntax("field 'properties' must be an object")
    for name, value in properties.items():
        if name in STRING_PROPERTIES:
            ok = type(value) is str and (len(value) <= 63 or len(value.encode()) <= MAX_NAME_BYTES)
        elif name == "headers":
            ok = type(value) is dict
            if ok:
                properties["headers"] = _header_value(value)
        elif name == "delivery_mode":
            ok = value in (1, 2) and type(value) is int
        elif name == "priority":
            ok = type(value) is int and 0 <= value <= 255
        elif name == "timestamp":
            ok = type(value) is int and 0 <= value <= MAX_TIMESTAMP
        else:
            raise BadSyntax(f"unknown property '{name}'")
        if not ok:
            raise BadSyntax(f"invalid value for property '{name}': {str(value)[:40]!r}")
    return properties or None


def _header_value(value):
    """A headers value from JSON as AMQP holds it: tagged objects back to bytes, timestamps
    and decimals; integers within AMQP's widest (64-bit signed)."""
    if type(value) is dict:
        if len(value) == 1:
            (tag, tagged), = value.items()
            decode = TAGGED_VALUES.get(tag)
            if decode is not None:
                try:
                    return decode(tagged)
                except (TypeError, ValueError, ArithmeticError, OverflowError):
                    raise BadSyntax(f"invalid {tag} header value {str(tagged)[:40]!r}") from None
        return {key: _header_value(item) for key, item in value.items()}
    if type(value) is list:
        return [_header_value(item) for item in value]
    if type(value) is int and not -2**63 <= value < 2**63:
        raise BadSyntax(f"header integer {str(value)[:40]} is outside AMQP's 64-bit range")
    return value
