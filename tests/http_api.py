"""Requests to a broker's management API over real HTTP, for tests and the screenshot."""

import base64
import http.client
import json
from urllib.parse import quote

GUEST = ("guest", "guest")


def call(port, method, path, body=None, auth=GUEST, raw=None, headers=None, tls=None):
    """(status, decoded JSON or None). `raw` bytes are sent as they are instead of `body`;
    with an ssl context `tls`, over HTTPS."""
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
    try:
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if payload is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(data) if data and kind.startswith("application/json") else data
    finally:
        connection.close()


def path(*parts):
    """/api/... with each part quoted as RabbitMQ's API wants them ('/' is %2F)."""
    return "/api/" + "/".join(quote(part, safe="") for part in parts)
