"""The client's JSON-lines wire (client_json_lines.py) without a network: the lines it writes."""

import base64
import json

from hypothesis import example, given
from hypothesis import strategies as st

from greenmq.client_json_lines import JsonLinesWire

_NAMES = st.text(max_size=20)
_BODIES = st.binary(max_size=200) | st.text(max_size=200)


def _wire(measure_bodies_over=1000):
    wire = JsonLinesWire(None)
    wire._measure_bodies_over = measure_bodies_over     # as a broker's `hello` would set it
    return wire


@given(exchange=_NAMES, routing_key=_NAMES, body=_BODIES, properties=st.none() | st.just({"content_type": "ü/x"}),
       mandatory=st.booleans(), channel=st.sampled_from([1, 2]))
@example(exchange="", routing_key="q", body=b"x" * 100, properties=None, mandatory=False, channel=1)
@example(exchange="ëx", routing_key='"\\\n\u2028', body='名前"\\', properties=None, mandatory=False, channel=1)
def test_a_publish_line_is_the_compact_json_of_what_it_carries(exchange, routing_key, body, properties,
                                                               mandatory, channel):
    """Whichever way the line is made (the common publish is formatted directly), it is the
    request's compact ASCII JSON, the same as for a body that is not `bytes`."""
    line = _wire().publish(channel, exchange, routing_key, body, properties, mandatory)
    request = json.loads(line)
    assert line == json.dumps(request, separators=(",", ":")) + "\n"
    assert list(request)[:3] == ["op", "exchange", "routing_key"]
    assert (request["op"], request["exchange"], request["routing_key"]) == ("publish", exchange, routing_key)
    data = body.encode() if isinstance(body, str) else body
    carried = (base64.b64decode(request["body"]) if request.get("body_encoding") == "base64"
               else request["body"].encode())
    assert carried == data
    assert request.get("properties") == (properties or None)
    assert request.get("mandatory", False) == mandatory and request.get("channel", 1) == channel
    if isinstance(body, bytes):
        assert line == _wire().publish(channel, exchange, routing_key, bytearray(body), properties, mandatory)
