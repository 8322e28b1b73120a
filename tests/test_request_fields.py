"""A request's members are checked by one function for the JSON-lines protocol and the
management API: the same types, defaults and required members, refused with the same
sentence, which each front end sends in its own form (an error line, an HTTP 400)."""

import json
import socket

import pytest

from greenmq.errors import BadSyntax
from greenmq.request_fields import base64_bytes, field, flag, string_list
from tests.http_api import call, path

TIMEOUT = 10.0


# -- the checks themselves ------------------------------------------------------------------

@pytest.mark.parametrize("value, kind, words", [
    (True, int, "must be an integer"), (1, bool, "must be true or false"), (1.0, int, "must be an integer"),
    ("yes", bool, "must be true or false"), ([], dict, "must be an object"), ({}, list, "must be a list"),
    (5, str, "must be a string"),
])
def test_a_field_must_have_exactly_its_json_type(value, kind, words):
    with pytest.raises(BadSyntax) as refused:
        field({"f": value}, "f", kind, None)
    assert refused.value.text == f"SYNTAX_ERROR - field 'f' {words}"


def test_a_missing_or_null_field_takes_its_default_and_a_missing_required_one_is_refused():
    assert field({}, "f", int, 7) == 7
    assert field({"f": None}, "f", int, 7) == 7
    assert flag({}, "f") is False and flag({"f": True}, "f") is True
    with pytest.raises(BadSyntax, match="field 'f' is required"):
        field({}, "f", str)
    with pytest.raises(BadSyntax, match="field 'f' must be a string"):
        field({"f": None}, "f", str)


def test_a_string_list_holds_only_strings_and_base64_must_be_valid():
    assert string_list({}, "tags") == [] and string_list({"tags": ["a", "b"]}, "tags") == ["a", "b"]
    with pytest.raises(BadSyntax, match="field 'tags' must be a list of strings"):
        string_list({"tags": ["a", 5]}, "tags")
    assert base64_bytes("aGk=", "body") == b"hi"
    with pytest.raises(BadSyntax, match="field 'body' is not valid base64"):
        base64_bytes("QQ", "body")


# -- through both front doors ---------------------------------------------------------------------

def json_lines_error(port, request):
    """The error a JSON-lines request gets from a broker, as the client reads it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(json.dumps(line).encode() + b"\n" for line in ({"op": "hello"}, request)))
        buffer = b""
        while buffer.count(b"\n") < 2:
            data = sock.recv(65536)
            assert data, buffer
            buffer += data
    hello, reply = (json.loads(line) for line in buffer.split(b"\n")[:2])
    assert hello["ok"] is True and reply["ok"] is False, reply
    return reply


@pytest.mark.parametrize("json_lines, http", [
    ({"op": "queue.declare", "queue": "{name}", "durable": "yes"}, ("PUT", ("queues", "/", "{name}"), {"durable": "yes"})),
    ({"op": "queue.declare", "queue": "{name}", "arguments": []}, ("PUT", ("queues", "/", "{name}"), {"arguments": []})),
    ({"op": "permissions.set", "user": "guest", "vhost": "/", "configure": ".*", "read": ".*"},
     ("PUT", ("permissions", "/", "guest"), {"configure": ".*", "read": ".*"})),
    ({"op": "user.add", "user": "{name}", "password": "pw", "tags": ["management", 5]},
     ("PUT", ("users", "{name}"), {"password": "pw", "tags": ["management", 5]})),
])
def test_a_bad_field_is_refused_in_the_same_words_over_json_lines_and_http(broker, name, json_lines, http):
    json_lines = {key: value.format(name=name) if type(value) is str else value for key, value in json_lines.items()}
    method, parts, body = http
    reply = json_lines_error(broker.port, json_lines)
    status, refusal = call(broker.http_port, method, path(*(part.format(name=name) for part in parts)), body)
    assert reply["code"] == 502 and reply["error"] == "SYNTAX_ERROR"
    assert status == 400 and refusal == {"error": "bad_request", "reason": reply["text"]}
    assert call(broker.http_port, "GET", path("queues", "/", name))[0] == 404       # nothing was made
    assert call(broker.http_port, "GET", path("users", name))[0] == 404
