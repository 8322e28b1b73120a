"""AMQP 0-9-1 marshalling: bytes in, values out, and back, with no broker state.

pamqp decodes and encodes every frame; the few that each message brings (basic.publish,
its content header, basic.ack, basic.deliver and the content sent with it) are done here
by hand, each held equal to pamqp's result by a test, because pamqp's general marshalling
took most of a message's cost. What a frame means is amqp_protocol.py's business.
"""

import logging
import re
import struct

from pamqp import commands as spec
from pamqp import constants as amqp_constants
from pamqp import decode
from pamqp import frame as amqp_frame
from pamqp import heartbeat as amqp_heartbeat
from pamqp.exceptions import UnmarshalingException

from .errors import FrameError, Unsupported
from .message import STREAM_OFFSET_HEADER
from .properties import AMQP_NAMES, from_amqp, to_amqp
from .transport import SCATTERED_BODY_BYTES

log = logging.getLogger("greenmq.amqp")

# pamqp holds queue and exchange names to the spec's pattern (letters, digits and "-_.:"
# with a few more), and raises on any other when it builds or reads a method. RabbitMQ
# takes any name of up to 255 bytes ("orders!", "café"), and the core checks names as it
# does (vhost.check_name), so in the broker's process pamqp takes any name too.
for _name_domain in ("queue-name", "exchange-name"):
    amqp_constants.DOMAIN_REGEX[_name_domain] = re.compile(".*", re.DOTALL)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
# Readers of fixed layouts, bound here: a struct imported by name and asked for its
# unpack_from builds the bound method on every call (Python 3.11 compiles a method call
# on an imported name as an attribute load), and these run for every frame.
# unpack_frame_head(buffer, offset): a frame's type, channel and payload size.
unpack_frame_head = struct.Struct(">BHI").unpack_from
HEARTBEAT_FRAME = amqp_frame.marshal(amqp_heartbeat.Heartbeat(), 0)
_FRAME_END_BYTE = bytes([FRAME_END])
_HEADER_PREFIX = struct.Struct(">HHQ")      # a content header's class id, weight, body size
_HEADER_PREFIX_BYTES = _HEADER_PREFIX.size
# The end byte of the frame before, then a content header's frame head and that prefix.
_END_AND_HEADER_START = struct.Struct(">BBHIHHQ")
_END_AND_BODY_HEAD = struct.Struct(">BBHI")      # the same, then a body frame's head
_METHOD_INDEX = struct.Struct(">I")
# A content header without properties: class id, weight and body size, then zero flags.
NO_PROPERTY_FLAGS = b"\x00\x00"
PROPERTIES_AT = 7 + _HEADER_PREFIX_BYTES     # a content header's flags, from the frame's start
BARE_HEADER_END = PROPERTIES_AT + len(NO_PROPERTY_FLAGS)
# unpack_header_start(buffer, offset): a content header's frame head, prefix and flags.
unpack_header_start = struct.Struct(">BHIHHQH").unpack_from
_SHORT_LENGTH = struct.Struct(">B")


# -- methods in --------------------------------------------------------------------------

class MethodDecoder:
    """Decodes one connection's method frames: basic.publish and basic.ack by hand, the
    rest by pamqp. Each connection has its own, as it keeps that connection's last publish."""

    __slots__ = ("_last_publish_arguments", "_last_publish")

    def __init__(self):
        self._last_publish_arguments, self._last_publish = None, None

    def decode(self, buffer, start, frame_end):
        """The method frame in buffer[start:frame_end + 1] as pamqp's method object; a
        FrameError (501) for one that cannot be decoded, Unsupported (540) for an unknown."""
        if frame_end - start < 11:
            raise FrameError("method frame too short")
        index = _METHOD_INDEX.unpack_from(buffer, start + 7)[0]
        if index == _BASIC_PUBLISH:
            # A publisher mostly repeats its last basic.publish; the method objects are
            # only read, so the last one decoded serves again.
            arguments = self._last_publish_arguments
            if (arguments is not None and frame_end - start - 11 == len(arguments)
                    and buffer.startswith(arguments, start + 11)):
                return self._last_publish
            method = decode_publish(buffer, start, frame_end)
            if method is not None:
                self._last_publish_arguments, self._last_publish = buffer[start + 11:frame_end], method
                return method
        elif index == _BASIC_ACK:
            method = decode_ack(buffer, start, frame_end)
            if method is not None:
                return method
        elif index not in spec.INDEX_MAPPING:
            raise Unsupported(f"unknown method class {index >> 16} method {index & 0xFFFF}")
        try:
            return amqp_frame.unmarshal(buffer[start:frame_end + 1])[2]
        except UnmarshalingException as exc:
            # RabbitMQ answers a method it cannot decode with 501, naming the method.
            raise FrameError(f"could not decode {spec.INDEX_MAPPING[index].name}: {exc}") from None


class UndecodedMethod:
    """A method frame that could not be decoded, known only by its class and method ids."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


def undecoded_method(buffer, start, frame_end):
    """The method frame in buffer[start:frame_end + 1] by its ids alone, to name it in an
    error as RabbitMQ does; None when it is too short to hold them."""
    if frame_end - start < 11:
        return None
    return UndecodedMethod(_METHOD_INDEX.unpack_from(buffer, start + 7)[0])


def method_ids(method):
    """The class and method ids a connection.close or channel.close names; (0, 0) for none."""
    return (method.index >> 16, method.index & 0xFFFF) if method is not None else (0, 0)


_BASIC_PUBLISH = spec.Basic.Publish.index
_PUBLISH_TICKET = struct.Struct(">H")
_new_method = object.__new__


def decode_publish(buffer, start, frame_end):
    """The basic.publish method frame in buffer[start:frame_end + 1] decoded as pamqp
    decodes it (a test holds the two equal), or None unless it is well formed, and pamqp is
    left to decode it and word the error. It is one of the two frames every published
    message brings, and pamqp's general unmarshalling took a third of a publish's cost."""
    exchange_at = start + 14          # frame head 7, method index 4, ticket 2, length 1
    if frame_end - exchange_at < 2:
        return None
    exchange_end = exchange_at + buffer[exchange_at - 1]
    if exchange_end >= frame_end:
        return None
    key_end = exchange_end + 1 + buffer[exchange_end]
    if key_end + 1 != frame_end:
        return None
    try:
        exchange = str(buffer[exchange_at:exchange_end], "utf-8")
        routing_key = str(buffer[exchange_end + 1:key_end], "utf-8")
    except UnicodeDecodeError:
        return None
    bits = buffer[key_end]
    method = _new_method(spec.Basic.Publish)
    method.ticket = _PUBLISH_TICKET.unpack_from(buffer, start + 11)[0]
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


_BASIC_ACK = spec.Basic.Ack.index
_DELIVERY_TAG = struct.Struct(">q")     # pamqp reads it signed
_ACK_FRAME_END = 11 + _DELIVERY_TAG.size + 1     # from the frame's start: the tag, then the bit


def decode_ack(buffer, start, frame_end):
    """basic.ack as pamqp decodes it (a test holds the two equal), or None unless well
    formed: clients that ack every message send one per delivery, and pamqp took 5 us."""
    if frame_end - start != _ACK_FRAME_END:
        return None
    method = _new_method(spec.Basic.Ack)
    method.delivery_tag = _DELIVERY_TAG.unpack_from(buffer, start + 11)[0]
    method.multiple = bool(buffer[start + 19] & 1)
    return method


_CONFIRM_FRAME = struct.Struct(">BHIIQ?B")    # head, class and method, tag, the multiple bit, end
_BASIC_NACK = spec.Basic.Nack.index


def confirm_frame(channel_number, delivery_tag, multiple, ack):
    """A publisher confirm: basic.ack, or basic.nack without requeue, as pamqp encodes it
    (a test holds the two equal). One goes out per channel per commit, and pamqp took
    about 20 us of the hub's time for each."""
    return _CONFIRM_FRAME.pack(FRAME_METHOD, channel_number, 13, _BASIC_ACK if ack else _BASIC_NACK,
                               delivery_tag, multiple, FRAME_END)


def amqplain_credentials(response):
    """The LOGIN and PASSWORD of an AMQPLAIN response (a field table without its length);
    ValueError when it is not one."""
    table = decode.field_table(_TABLE_LENGTH.pack(len(response)) + response)[1]
    return table.get("LOGIN", b""), table.get("PASSWORD", b"")


# -- content in --------------------------------------------------------------------------

def decode_content_header(buffer, start, frame_end):
    """The content header frame in buffer[start:frame_end + 1] as (body size, properties
    as the core's dict or None, the flags and values as sent), decoded as pamqp and
    properties.from_amqp decodes it (a test holds them equal); None unless it is well
    formed (unmarshal_content_header then decodes it and words the error). pamqp took 7 us
    for a header with two short strings, five times the rest of a publish."""
    if frame_end - start < BARE_HEADER_END:
        return None
    size = _HEADER_PREFIX.unpack_from(buffer, start + 7)[2]
    if frame_end - start == BARE_HEADER_END and not buffer[frame_end - 2] and not buffer[frame_end - 1]:
        return size, None, NO_PROPERTY_FLAGS        # no properties, as most publishers send
    properties = decode_properties(buffer, start + PROPERTIES_AT, frame_end)
    if properties is UNDECODED:
        return None
    return size, properties, buffer[start + PROPERTIES_AT:frame_end]


def unmarshal_content_header(buffer, start, frame_end):
    """decode_content_header's answer by pamqp, for what that one leaves to it; a
    FrameError (501) for a header pamqp cannot decode either."""
    try:
        content_header = amqp_frame.unmarshal(buffer[start:frame_end + 1])[2]
    except UnmarshalingException as exc:
        raise FrameError(f"could not decode the content header: {exc}") from None
    return (content_header.body_size, from_amqp(content_header.properties) or None,
            buffer[start + PROPERTIES_AT:frame_end])


UNDECODED = object()
# The properties in the order pamqp decodes them, each as (the core's name, its flag bit,
# its AMQP type), taken from pamqp's own definitions.
_PROPERTY_LAYOUT = tuple(
    (next(name for name, amqp_name in AMQP_NAMES.items() if amqp_name == slot),
     spec.Basic.Properties.flags[slot], getattr(spec.Basic.Properties, "_" + slot))
    for slot in spec.Basic.Properties.__slots__)
# Flag bits no property uses: bit 0 announces a second flag word, which 0-9-1 never needs.
_UNUSED_FLAGS = 0xFFFF & ~sum(flag for _, flag, _ in _PROPERTY_LAYOUT)
_FLAGS = struct.Struct(">H")
_TABLE_LENGTH = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")
# pamqp reads larger timestamps as milliseconds, through a float: left to it.
_LARGEST_SECONDS = 0xFFFFFFFF


def decode_properties(buffer, at, end):
    """The flags and values in buffer[at:end] as the core's dict (None when empty), or
    UNDECODED for anything but exactly the values the flags announce."""
    flags = _FLAGS.unpack_from(buffer, at)[0]
    if flags & _UNUSED_FLAGS:
        return UNDECODED
    at += 2
    values = {}
    for name, flag, kind in _PROPERTY_LAYOUT:
        if not flags & flag:
            continue
        if at >= end:
            return UNDECODED
        if kind == "shortstr":
            value_end = at + 1 + buffer[at]
            if value_end > end:
                return UNDECODED
            try:
                value = str(buffer[at + 1:value_end], "utf-8")
            except UnicodeDecodeError:
                return UNDECODED
            at = value_end
            if name == "cluster_id" and value == "":
                continue          # as properties.from_amqp: pamqp's stand-in for none
        elif kind == "octet":
            value = buffer[at]
            at += 1
        elif kind == "timestamp":
            if end - at < 8:
                return UNDECODED
            value = _TIMESTAMP.unpack_from(buffer, at)[0]
            if value > _LARGEST_SECONDS:
                return UNDECODED
            at += 8
        else:                     # the headers table, decoded by pamqp itself
            if end - at < 4:
                return UNDECODED
            table_end = at + 4 + _TABLE_LENGTH.unpack_from(buffer, at)[0]
            if table_end > end:
                return UNDECODED
            try:
                # Unsliced, as pamqp reads it: a value that runs past the table's stated end
                # shows as more bytes used than stated, and is left to pamqp to judge.
                used, value = decode.field_table(buffer[at:end])
            except ValueError:
                return UNDECODED
            if used != table_end - at:
                return UNDECODED
            at = table_end
        values[name] = value
    if at != end:
        return UNDECODED
    return values or None


# -- frames out --------------------------------------------------------------------------

# basic.deliver's frame head and method ids, then (after the consumer tag) the delivery
# tag and the redelivered bit.
_DELIVER_START = struct.Struct(">BHIHH")
_DELIVER_MIDDLE = struct.Struct(">q?")
_DELIVER_FIXED_BYTES = 4 + 9      # ids, tag and bit
# Consumer tags, exchange names and routing keys recur in every delivery; their encodings
# are kept, up to this many (then it starts afresh), so that unique routing keys (RPC
# replies, say) cannot grow it without bound.
SHORT_STRING_CACHE_SIZE = 1024
_short_strings = {}


def _encoded_short_string(text):
    """`text` as an AMQP short string (its length in one byte, then its UTF-8 bytes), kept."""
    if len(_short_strings) >= SHORT_STRING_CACHE_SIZE:
        _short_strings.clear()
    value = text.encode()
    encoded = _short_strings[text] = _SHORT_LENGTH.pack(len(value)) + value
    return encoded


def deliver_method(channel_number, consumer_tag, delivery_tag, redelivered, exchange, routing_key):
    """basic.deliver's frame, but for its end byte, in parts, exactly as pamqp marshals it
    (a test holds the two equal), assembled here because it is the one frame sent per
    message and consumer: pamqp's general marshalling took a sixth of a delivery's cost,
    and fanout is bound by it."""
    known = _short_strings.get
    tag = known(consumer_tag) or _encoded_short_string(consumer_tag)
    exchange = known(exchange) or _encoded_short_string(exchange)
    routing_key = known(routing_key) or _encoded_short_string(routing_key)
    return [_DELIVER_START.pack(FRAME_METHOD, channel_number,
                                _DELIVER_FIXED_BYTES + len(tag) + len(exchange) + len(routing_key),
                                spec.Basic.frame_id, spec.Basic.Deliver.frame_id),
            tag, _DELIVER_MIDDLE.pack(delivery_tag, redelivered), exchange, routing_key]


# Any method frame but basic.deliver, whole, as pamqp marshals it: method_frame(method, channel_number).
method_frame = amqp_frame.marshal


def method_parts(method, channel_number):
    """Any other method frame as deliver_method gives basic.deliver's."""
    return [method_frame(method, channel_number)[:-1]]


def content_frames(method_frame, channel_number, message, frame_max):
    """`method_frame` (parts as deliver_method gives them), then the content header and
    body frames of `message` as pamqp marshals them (a test holds them equal): for a
    small body, bytes, the frames joined once (this runs for every delivery); for a body
    of SCATTERED_BODY_BYTES or more, a list of buffers to write in this order, the frame
    heads between the body's own bytes, uncopied."""
    body = message.body
    size = len(body)
    encoded = message.encoded_properties
    if encoded is None:
        encoded = _encode_properties(message)
    if message.stream_offset is not None:
        encoded = _with_stream_offset(encoded, message.stream_offset)
    method_frame += (_END_AND_HEADER_START.pack(
        FRAME_END, FRAME_HEADER, channel_number, _HEADER_PREFIX_BYTES + len(encoded), spec.Basic.frame_id, 0, size),
        encoded)
    chunk = frame_max - 8
    if size < SCATTERED_BODY_BYTES:
        if size > chunk:
            for start in range(0, size, chunk):
                piece = body[start:start + chunk]
                method_frame += (_END_AND_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_number, len(piece)), piece)
        elif size:      # one body frame or, for an empty body, none
            method_frame += (_END_AND_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_number, size), body)
        method_frame.append(_FRAME_END_BYTE)
        return b"".join(method_frame)
    if size <= chunk:
        method_frame.append(_END_AND_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_number, size))
        return [b"".join(method_frame), body, _FRAME_END_BYTE]
    view = memoryview(body)
    method_frame.append(_END_AND_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_number, chunk))
    buffers = [b"".join(method_frame), view[:chunk]]
    for start in range(chunk, size, chunk):
        piece = view[start:start + chunk]
        buffers += (_END_AND_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_number, len(piece)), piece)
    buffers.append(_FRAME_END_BYTE)
    return buffers


# Property flags of the properties before `headers`, and of `headers` itself.
_CONTENT_TYPE_FLAG, _CONTENT_ENCODING_FLAG, _HEADERS_FLAG = 0x8000, 0x4000, 0x2000
_FLAGS = struct.Struct(">H")
_TABLE_LENGTH = struct.Struct(">I")
# The x-stream-offset header entry before its value: a long (64 bits), as RabbitMQ sends it.
_STREAM_OFFSET_ENTRY = _encoded_short_string(STREAM_OFFSET_HEADER) + b"l"
_LONG = struct.Struct(">q")


def _with_stream_offset(encoded, offset):
    """Encoded properties with a stream delivery's x-stream-offset added to their headers,
    spliced into the bytes: encoding them anew through pamqp cost five times a delivery."""
    flags = _FLAGS.unpack_from(encoded)[0]
    at = 2
    if flags & _CONTENT_TYPE_FLAG:
        at += 1 + encoded[at]
    if flags & _CONTENT_ENCODING_FLAG:
        at += 1 + encoded[at]
    entry = _STREAM_OFFSET_ENTRY + _LONG.pack(offset)
    if flags & _HEADERS_FLAG:
        end = at + 4 + _TABLE_LENGTH.unpack_from(encoded, at)[0]
        return b"".join((encoded[:at], _TABLE_LENGTH.pack(end - at - 4 + len(entry)), encoded[at + 4:end], entry,
                         encoded[end:]))
    return b"".join((_FLAGS.pack(flags | _HEADERS_FLAG), encoded[2:at], _TABLE_LENGTH.pack(len(entry)), entry,
                     encoded[at:]))


# Messages from one JSON-lines publisher mostly carry the same few properties (a
# delivery_mode, a content_type): their AMQP encoding is kept for the next such message.
# Bounded, as a stream of unique values (ids) would otherwise grow it without limit.
ENCODED_PROPERTIES_CACHE_SIZE = 1024
_encoded_properties = {}


def _encode_properties(message):
    """The property flags and values of a content header for a message that came without
    them in AMQP's encoding (from JSON lines, say), kept on the message for its next
    delivery (fanout, redelivery)."""
    properties = message.properties
    if not properties:
        return NO_PROPERTY_FLAGS
    key = None
    if "headers" not in properties:         # the one property whose value is not hashable
        key = tuple(properties.items())
        encoded = _encoded_properties.get(key)
        if encoded is not None:
            message.encoded_properties = encoded
            return encoded
    try:
        encoded = to_amqp(properties).marshal()
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        # Both front ends refuse what AMQP cannot carry, so this is a bug; better a message
        # without properties than a consumer's connection, or the core mid-delivery, broken.
        log.error("cannot encode the properties of a message from exchange '%s' for AMQP (%s); "
                  "sending it without them", message.exchange, exc)
        return NO_PROPERTY_FLAGS
    if key is not None:
        if len(_encoded_properties) >= ENCODED_PROPERTIES_CACHE_SIZE:
            _encoded_properties.clear()
        _encoded_properties[key] = encoded
    message.encoded_properties = encoded
    return encoded
