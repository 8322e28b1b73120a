"""The members of a JSON request, checked the same way by every front end that takes JSON
objects (the JSON-lines protocol, the management API).

A member of the wrong JSON type, or a required one missing, is the core's BadSyntax with
a sentence naming the field; each front end says it in its own wire form (an error line,
an HTTP 400). Types are exact: `true` is not an integer, `1` is not true.
"""

import base64
import binascii
import sys

from .errors import BadSyntax

# `default` for a member that must be there.
REQUIRED = object()

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


def field(request, name, kind, default=REQUIRED):
    """`request[name]`, of JSON type `kind`; `default` when it is missing or null. Runs per
    acknowledgement on JSON lines: the common case is one lookup and one type compare."""
    value = request.get(name, REQUIRED)
    if value is REQUIRED or (value is None and default is not REQUIRED):
        if default is REQUIRED:
            raise BadSyntax(f"field '{name}' is required")
        return default
    if type(value) is not kind:
        raise BadSyntax(f"field '{name}' must be {_TYPE_NAMES[kind]}")
    return value


def flag(request, name, default=False):
    return field(request, name, bool, default)


def string_list(request, name):
    """A list of strings (user tags); empty when missing."""
    strings = field(request, name, list, [])
    if not all(type(string) is str for string in strings):
        raise BadSyntax(f"field '{name}' must be a list of strings")
    return strings


def base64_bytes(text, name):
    """The bytes a base64 field carries, decoded from the string as it is (base64.b64decode
    would copy it to bytes and match it against a pattern first)."""
    try:
        return _strict_base64(text)
    except (binascii.Error, ValueError):     # ValueError: not ASCII
        raise BadSyntax(f"field '{name}' is not valid base64") from None


if sys.version_info >= (3, 11):
    def _strict_base64(text):
        return binascii.a2b_base64(text, strict_mode=True)
else:
    def _strict_base64(text):
        return base64.b64decode(text, validate=True)
