"""The AMQP front end's own frame assembly, held to pamqp's encoding of the same method, and
its connection's table of states."""

import datetime
import struct
from random import Random

import pytest

from hypothesis import example, given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import body as amqp_body
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp import heartbeat as amqp_heartbeat
from pamqp.exceptions import UnmarshalingException

from greenmq import amqp_codec
from greenmq.amqp_codec import (SHORT_STRING_CACHE_SIZE, confirm_frame, decode_ack, decode_content_header,
                                decode_publish, deliver_method)
from greenmq.amqp_protocol import (CLOSED, FRAME_MIN, HEADER, RUNNING, TRANSITIONS, _Channel, AmqpConnection,
                                   ConnectionState, ForbiddenTransition)
from greenmq.errors import AccessRefused, BrokerError, ConnectionForced
from greenmq import properties as amqp_properties
from greenmq.memory import MIN_MEMORY_LIMIT_BYTES, MemoryBudget
from greenmq.message import Message

# Short strings: at most 255 bytes once encoded, which 63 characters of any kind stay under.
short_strings = st.text(max_size=63)
# pamqp refuses to marshal exchange names outside the spec's alphabet; the broker's own are in it.
exchange_names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,127}", fullmatch=True)
delivery_tags = st.integers(min_value=1, max_value=2**63 - 1)     # pamqp packs them signed


@given(st.integers(1, 65535), short_strings, delivery_tags, st.booleans(), exchange_names, short_strings)
def test_basic_deliver_frames_are_what_pamqp_would_send(channel, consumer_tag, delivery_tag, redelivered,
                                                         exchange, routing_key):
    method = spec.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=delivery_tag, redelivered=redelivered,
                                exchange=exchange, routing_key=routing_key)
    expected = amqp_frame.marshal(method, channel)
    assert b"".join(deliver_method(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key)) + b"\xce" == expected


@given(short_strings, short_strings)
def test_basic_deliver_frames_decode_to_their_arguments(exchange, routing_key):
    """Any exchange name a client may use, spec alphabet or not, reaches the consumer intact."""
    used, channel, method = amqp_frame.unmarshal(b"".join(deliver_method(7, "ctag", 42, True, exchange, routing_key)) + b"\xce")
    assert (channel, method.consumer_tag, method.delivery_tag, method.redelivered, method.exchange,
            method.routing_key) == (7, "ctag", 42, True, exchange, routing_key)


def _method_frame(method_class, arguments, channel=1):
    """A method frame carrying `method_class`'s index and `arguments`, well formed or not."""
    payload = struct.pack(">I", method_class.index) + arguments
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def _short_string(value):
    return bytes([len(value)]) + value


def _slots(method):
    return {slot: getattr(method, slot) for slot in method.__slots__}


utf8_short_strings = short_strings.map(lambda text: text.encode())


@given(st.integers(1, 65535), st.integers(0, 65535), utf8_short_strings, utf8_short_strings,
       st.integers(0, 255))
def test_basic_publish_frames_decode_as_pamqp_decodes_them(channel, ticket, exchange, routing_key, bits):
    """Any exchange name and routing key a client may send, spec alphabet or not."""
    frame = _method_frame(spec.Basic.Publish, struct.pack(">H", ticket) + _short_string(exchange)
                          + _short_string(routing_key) + bytes([bits]), channel)
    method = decode_publish(frame, 0, len(frame) - 1)
    assert isinstance(method, spec.Basic.Publish)
    assert _slots(method) == _slots(amqp_frame.unmarshal(frame)[2])


publish_arguments = st.binary(max_size=80) | st.builds(
    lambda ticket, exchange, routing_key, rest: ticket + _short_string(exchange) + _short_string(routing_key) + rest,
    st.binary(min_size=2, max_size=2), st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=3))


@pytest.mark.parametrize("method_class, decode, arguments", [(spec.Basic.Publish, decode_publish, publish_arguments),
                                                             (spec.Basic.Ack, decode_ack, st.binary(max_size=12))])
@given(data=st.data())
def test_methods_decoded_directly_are_decoded_so_by_pamqp_too(method_class, decode, arguments, data):
    """Whatever the front end decodes itself pamqp decodes alike; the rest is left to pamqp,
    whose error (or lax reading) the broker keeps."""
    frame = _method_frame(method_class, data.draw(arguments))
    method = decode(frame, 0, len(frame) - 1)
    if method is not None:
        assert _slots(method) == _slots(amqp_frame.unmarshal(frame)[2])
    else:
        try:
            amqp_frame.unmarshal(frame)
        except UnmarshalingException:
            pass


def test_basic_publish_is_decoded_from_within_a_larger_buffer():
    frame = amqp_frame.marshal(spec.Basic.Publish(exchange="amq.topic", routing_key="a.b", mandatory=True), 3)
    buffer = b"\x08\x00\x00\x00\x00\x00\x00\xce" + frame + b"\x01\x02"
    method = decode_publish(buffer, 8, 8 + len(frame) - 1)
    assert _slots(method) == {"ticket": 0, "exchange": "amq.topic", "routing_key": "a.b", "mandatory": True,
                              "immediate": False}


bodies = st.integers(0, 3 * FRAME_MIN).map(lambda size: bytes(i % 251 for i in range(size))) | st.binary(max_size=64)


@example(body=b"x" * (FRAME_MIN - 7), frame_max=FRAME_MIN, channel=1, properties=None, from_amqp=True)
@given(bodies, st.integers(FRAME_MIN, 2 * FRAME_MIN), st.integers(1, 65535),
       st.none() | st.builds(spec.Basic.Properties, content_type=st.none() | short_strings,
                             delivery_mode=st.none() | st.sampled_from([1, 2]),
                             headers=st.none() | st.dictionaries(short_strings, short_strings, max_size=3)),
       st.booleans())
def test_deliveries_are_the_frames_pamqp_would_send(body, frame_max, channel, properties, from_amqp):
    """The content header, with the properties as an AMQP publisher encoded them or encoded
    anew from the core's dict, and the body split at frame_max."""
    if from_amqp:
        message = Message("amq.direct", "key", body, None, None if properties is None else properties.marshal())
    else:
        message = Message("amq.direct", "key", body, amqp_properties.from_amqp(properties or spec.Basic.Properties()) or None)
    connection = AmqpConnection(_Node(), ("127.0.0.1", 1))
    connection.frame_max = frame_max
    connection.deliver(channel, "ctag", 7, message)
    expected = [spec.Basic.Deliver(consumer_tag="ctag", delivery_tag=7, exchange="amq.direct", routing_key="key"),
                amqp_header.ContentHeader(0, len(body), properties)]
    expected += [amqp_body.ContentBody(body[start:start + frame_max - 8])
                 for start in range(0, len(body), frame_max - 8)]
    assert connection.take_output() == b"".join(amqp_frame.marshal(frame, channel) for frame in expected)


def test_encoded_names_kept_for_deliveries_stay_bounded():
    """RPC replies each bring a routing key of their own."""
    for n in range(3 * SHORT_STRING_CACHE_SIZE):
        used, _, method = amqp_frame.unmarshal(b"".join(deliver_method(1, "ctag", n + 1, False, "", f"amq.gen-{n}")) + b"\xce")
        assert method.routing_key == f"amq.gen-{n}"
    assert len(amqp_codec._short_strings) <= SHORT_STRING_CACHE_SIZE


header_values = st.none() | st.booleans() | st.integers(-2**31, 2**31 - 1) | short_strings
properties = st.builds(
    spec.Basic.Properties,
    content_type=st.none() | short_strings, content_encoding=st.none() | short_strings,
    headers=st.none() | st.dictionaries(short_strings, header_values | st.lists(header_values, max_size=3), max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]), priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short_strings, reply_to=st.none() | short_strings,
    expiration=st.none() | short_strings, message_id=st.none() | short_strings,
    timestamp=st.none() | st.integers(0, 2**32 - 1).map(
        lambda seconds: datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)),
    message_type=st.none() | short_strings, user_id=st.none() | short_strings, app_id=st.none() | short_strings)


def _pamqp_content_header(frame):
    header = amqp_frame.unmarshal(frame)[2]
    return header.body_size, amqp_properties.from_amqp(header.properties) or None, frame[19:-1]


@given(properties, st.integers(0, 2**63 - 1), st.integers(1, 65535))
def test_content_headers_decode_as_pamqp_decodes_them(properties, body_size, channel):
    frame = amqp_frame.marshal(amqp_header.ContentHeader(0, body_size, properties), channel)
    assert decode_content_header(frame, 0, len(frame) - 1) == _pamqp_content_header(frame)


def _altered(encoded, at, value, cut):
    """`encoded` with one byte changed and `cut` bytes dropped from the end (or added)."""
    at %= len(encoded)
    altered = encoded[:at] + bytes([value]) + encoded[at + 1:]
    return altered[:len(altered) - cut] if cut > 0 else altered + b"\x00" * -cut


@example(flags_and_values=b"\x00\x04\x00", body_size=1)            # cluster_id, empty
@example(flags_and_values=b"\x80\x01\x01\x00", body_size=1)        # a second flag word
# A headers table whose last value runs past the table's stated length.
@example(flags_and_values=b" \x04\x00\x00\x00)\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x12\x00\xc2\x80"
                          b"\x00\x00\x00\x00\x00\xf0\x90\x80\x80\x00\x00\xf0\x90\x80\x80\x00\x00\x00\x01\x00S\x00\x00"
                          b"\x00\x01\x00", body_size=0)
@given(st.binary(min_size=2, max_size=60)
       | st.builds(_altered, properties.map(lambda p: p.marshal()), st.integers(0, 200), st.integers(0, 255),
                   st.integers(-2, 3)),
       st.integers(0, 2**16))
def test_content_headers_decoded_directly_are_decoded_so_by_pamqp_too(flags_and_values, body_size):
    """Whatever the front end decodes itself pamqp decodes alike (trailing bytes, bad UTF-8
    and truncated values are left to pamqp)."""
    payload = struct.pack(">HHQ", 60, 0, body_size) + flags_and_values
    frame = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
    decoded = decode_content_header(frame, 0, len(frame) - 1)
    if decoded is not None:
        assert decoded == _pamqp_content_header(frame)


@given(st.integers(0, 2**63 - 1), st.booleans())
def test_basic_ack_frames_decode_as_pamqp_decodes_them(delivery_tag, multiple):
    frame = amqp_frame.marshal(spec.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple), 1)
    method = decode_ack(frame, 0, len(frame) - 1)
    assert isinstance(method, spec.Basic.Ack)
    assert _slots(method) == _slots(amqp_frame.unmarshal(frame)[2])


@given(st.integers(0, 2047), st.integers(0, 2**63 - 1), st.booleans(), st.booleans())
def test_confirm_frames_are_what_pamqp_makes(channel, delivery_tag, multiple, ack):
    method = (spec.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple) if ack else
              spec.Basic.Nack(delivery_tag=delivery_tag, multiple=multiple, requeue=False))
    assert confirm_frame(channel, delivery_tag, multiple, ack) == amqp_frame.marshal(method, channel)


class _RecordingChannel:
    """A core channel that records what it is asked to publish."""

    def __init__(self, number, published):
        self.number, self.published = number, published

    def publish(self, *arguments):
        self.published.append((self.number, *arguments))


def _published(stream, cuts, whole_publishes):
    """What a running connection publishes from `stream` read in pieces cut at `cuts`."""
    published = []
    connection = AmqpConnection(_Node(), ("127.0.0.1", 1))
    connection.state = RUNNING
    connection.channels = {n: _Channel(_RecordingChannel(n, published)) for n in (1, 2)}
    if not whole_publishes:
        connection._whole_publish = lambda *arguments: 0
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        connection.data_received(stream[start:cut])
        start = cut
    assert not connection.outbox and not connection.closed
    return published


messages = st.tuples(
    st.sampled_from([1, 2]), st.sampled_from(["", "amq.direct"]), st.sampled_from(["a", "b", "key.one"]),
    st.booleans(), st.none() | properties, st.binary(max_size=300), st.integers(1, 3))


# A body in two frames where the first frame's announced end falls on a 0xce of the second.
@example(messages=[(1, "", "a", False, None, bytes(12) + b"\xce" + bytes(7), 2)], cuts=[], random=Random(0))
@given(st.lists(messages, max_size=12), st.lists(st.integers(0, 5000), max_size=8), st.randoms())
def test_publishes_taken_in_one_step_are_those_taken_frame_by_frame(messages, cuts, random):
    """Publishes of two channels, interleaved frame by frame, with or without properties,
    bodies in one frame or several, heartbeats between, read in any pieces."""
    pending = {1: [], 2: []}
    for channel, exchange, routing_key, mandatory, props, body, body_frames in messages:
        cut = -(-len(body) // body_frames) or 1
        frames = [spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
                  amqp_header.ContentHeader(0, len(body), props)]
        frames += [amqp_body.ContentBody(body[i:i + cut]) for i in range(0, len(body), cut)]
        pending[channel] += [amqp_frame.marshal(frame, channel) for frame in frames]
    stream = b""
    while pending[1] or pending[2]:
        channel = random.choice([n for n in (1, 2) if pending[n]])
        stream += pending[channel].pop(0)
        if random.random() < 0.1:
            stream += b"\x08\x00\x00\x00\x00\x00\x00\xce"       # a heartbeat
    cuts = [cut % (len(stream) + 1) for cut in cuts]
    expected = _published(stream, cuts, whole_publishes=False)
    assert len(expected) == len(messages)
    assert _published(stream, cuts, whole_publishes=True) == expected


def _reachable(start):
    """The states TRANSITIONS leads to from `start`, `start` among them."""
    seen, todo = {start}, [start]
    while todo:
        for state in TRANSITIONS[todo.pop()] - seen:
            seen.add(state)
            todo.append(state)
    return seen


def test_each_state_named_in_the_module_is_the_member_of_that_name():
    from greenmq import amqp_protocol
    assert all(getattr(amqp_protocol, state.name) is state for state in ConnectionState)


def test_every_connection_state_is_reachable_from_the_protocol_header():
    assert set(TRANSITIONS) == set(ConnectionState)
    assert _reachable(HEADER) == set(ConnectionState)


def test_a_closed_connection_has_no_way_out_and_every_state_has_one_to_closed():
    assert TRANSITIONS[CLOSED] == frozenset()
    assert all(CLOSED in _reachable(state) for state in ConnectionState)


def test_a_move_the_table_does_not_allow_is_refused_as_a_broker_bug_not_a_client_error():
    connection = AmqpConnection(_Node(), ("127.0.0.1", 1))
    connection.state = RUNNING
    with pytest.raises(ForbiddenTransition) as refused:
        connection._move_to(HEADER)
    assert not isinstance(refused.value, BrokerError)      # no reply code blames the client
    assert connection.state is RUNNING and not connection.closed


class _Session:
    """A core session that takes everything and does nothing."""

    def flush_confirms(self):
        pass

    def close(self):
        pass

    def open_channel(self, number):
        return object()

    def close_channel(self, number):
        pass


class _Node:
    """A node with one user, guest/guest, and every virtual host."""

    def __init__(self):
        self.memory = MemoryBudget(MIN_MEMORY_LIMIT_BYTES)

    def authenticate(self, username, password, peer, mechanism):
        if (username, password) != ("guest", "guest"):
            raise AccessRefused(f"login refused for user '{username}'")
        return username

    def open_session(self, user, vhost_name, peer, protocol, sink, client_properties=None):
        return _Session()


def _client_says(method, channel=0):
    return amqp_frame.marshal(method, channel)


# What a client may send, right or wrong, and the broker's own close (its stopping).
CLIENT_INPUT = {
    "header": b"AMQP\x00\x00\x09\x01",
    "http": b"GET / HTTP/1.1\r\n\r\n",
    "start-ok": _client_says(spec.Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="PLAIN", response="\0guest\0guest")),
    "wrong password": _client_says(spec.Connection.StartOk(mechanism="PLAIN", response="\0guest\0wrong")),
    "tune-ok": _client_says(spec.Connection.TuneOk(channel_max=0, frame_max=FRAME_MIN, heartbeat=0)),
    "tune-ok too small": _client_says(spec.Connection.TuneOk(channel_max=0, frame_max=512, heartbeat=0)),
    "open": _client_says(spec.Connection.Open(virtual_host="/")),
    "close": _client_says(spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    "close-ok": _client_says(spec.Connection.CloseOk()),
    "channel.open": _client_says(spec.Channel.Open(), 1),
    "heartbeat": _client_says(amqp_heartbeat.Heartbeat()),
    "bad frame end": b"\x08\x00\x00\x00\x00\x00\x00\x00",
    "unknown method": struct.pack(">BHII", 1, 0, 4, 0xFFFF0001) + b"\xce",
    "broker stops": None,
}


def _moves(inputs):
    """The moves a fresh connection makes as `inputs` (keys of CLIENT_INPUT) arrive, each
    (from, to), refused ones too, and its state at the end."""
    connection = AmqpConnection(_Node(), ("127.0.0.1", 1))
    moves = []
    move_to = connection._move_to

    def recorded(state):
        moves.append((connection.state, state))
        move_to(state)

    connection._move_to = recorded
    for name in inputs:
        if CLIENT_INPUT[name] is None:
            connection.close(ConnectionForced("broker shutdown"))
        elif not connection.closed:          # the transport reads no more once closed
            connection.data_received(CLIENT_INPUT[name])
    return moves, connection.state


def _allowed(moves):
    return [(before, after) for before, after in moves if after in TRANSITIONS[before]]


def test_the_connection_makes_every_move_in_the_table_and_no_other():
    """A login refused or a client's close before tune, an error or a close in each state
    after it, and the broker stopping: together they make each move the table allows."""
    sequences = [
        (["http"], "closed"),
        (["header", "close"], "closed"),
        (["header", "wrong password"], "closed"),
        (["header", "start-ok", "close"], "closed"),
        (["header", "start-ok", "tune-ok too small", "close-ok"], "closed"),
        (["header", "start-ok", "tune-ok", "close"], "closed"),
        (["header", "start-ok", "tune-ok", "start-ok"], "closing"),
        (["header", "start-ok", "tune-ok", "open", "channel.open", "close"], "closed"),
        (["header", "start-ok", "tune-ok", "open", "tune-ok", "heartbeat"], "closing"),
        (["header", "start-ok", "tune-ok", "open", "broker stops"], "closed"),
    ]
    made = set()
    for inputs, final_state in sequences:
        moves, state = _moves(inputs)
        assert _allowed(moves) == moves and state is ConnectionState(final_state), inputs
        made.update(moves)
    assert made == {(before, after) for before, afters in TRANSITIONS.items() for after in afters}


HANDSHAKE = ["header", "start-ok", "tune-ok", "open"]


def test_a_connection_its_client_closed_sends_no_heartbeat_and_waits_for_nothing():
    connection = AmqpConnection(_Node(), ("127.0.0.1", 1))
    connection.data_received(CLIENT_INPUT["header"] + CLIENT_INPUT["start-ok"] + _client_says(
        spec.Connection.TuneOk(channel_max=0, frame_max=FRAME_MIN, heartbeat=1)) + CLIENT_INPUT["open"])
    assert connection.heartbeat == 1 and connection.state is RUNNING
    connection.take_output()
    connection.data_received(CLIENT_INPUT["close"])
    assert connection.take_output() == _client_says(spec.Connection.CloseOk())
    assert connection.tick(connection._last_sent + 1) is None and not connection.outbox


@given(st.integers(0, len(HANDSHAKE)), st.lists(st.sampled_from(sorted(CLIENT_INPUT)), max_size=12))
@example(0, ["http", "broker stops"])
@example(2, ["close", "broker stops"])
@example(4, ["bad frame end", "broker stops"])
def test_nothing_a_client_sends_makes_the_connection_leave_its_table(steps, inputs):
    """A refused move is the broker's bug: no input, in any order and in any state (reached
    by the first `steps` of a good handshake), may reach one."""
    moves, _ = _moves(HANDSHAKE[:steps] + inputs)
    assert _allowed(moves) == moves


@pytest.mark.parametrize("properties", [
    None, {"content_type": "text/plain"}, {"delivery_mode": 2, "priority": 3},
    {"content_type": "a", "content_encoding": "gzip", "headers": {"n": 1, "s": "x"}, "message_id": "m"},
])
def test_a_stream_delivery_carries_its_offset_in_the_headers_spliced_as_pamqp_would_marshal_it(properties):
    message = Message("", "q", b"body", properties)
    frames = amqp_codec.content_frames(amqp_codec.deliver_method(1, "ctag", 7, False, "", "q"), 1,
                                       message.at_offset(2**40 + 5), 131072)
    expected = dict(properties or {})
    expected["headers"] = {**expected.get("headers", {}), "x-stream-offset": 2**40 + 5}
    header = amqp_frame.marshal(amqp_header.ContentHeader(0, 4, amqp_properties.to_amqp(expected)), 1)
    assert header in frames
