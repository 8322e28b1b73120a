"""The AMQP front end's own frame assembly, held to pamqp's encoding of the same method."""

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as amqp_frame

from amqp_protocol import deliver_frame

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
    assert deliver_frame(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key) == expected


@given(short_strings, short_strings)
def test_basic_deliver_frames_decode_to_their_arguments(exchange, routing_key):
    """Any exchange name a client may use, spec alphabet or not, reaches the consumer intact."""
    used, channel, method = amqp_frame.unmarshal(deliver_frame(7, "ctag", 42, True, exchange, routing_key))
    assert (channel, method.consumer_tag, method.delivery_tag, method.redelivered, method.exchange,
            method.routing_key) == (7, "ctag", 42, True, exchange, routing_key)
