"""A refused login raises the same error over every wire connection.py speaks: GreenMQ's
JSON lines, GreenMQ's AMQP port, and a reference AMQP broker when one is named."""

from urllib.parse import urlsplit, urlunsplit

import pytest

from greenmq import connection
from tests.conftest import CLIENT_WIRES, client_url


def refused_login(wire, broker, password=None, virtual_host=None):
    """Connection's arguments for `wire` with another password or virtual host."""
    url = client_url(wire, broker)
    if wire == "json-lines":
        return {"host": url, "port": broker.port, "password": password or "guest",
                "virtual_host": virtual_host or "/"}
    parts = urlsplit(url)
    user = parts.username or "guest"
    netloc = f"{user}:{password or parts.password or 'guest'}@{parts.hostname}:{parts.port or 5672}"
    return {"host": urlunsplit((parts.scheme, netloc, f"/{virtual_host}" if virtual_host else parts.path, "", ""))}


@pytest.mark.parametrize("wire", CLIENT_WIRES)
def test_a_wrong_password_raises_authentication_error_with_403_over_every_wire(broker, wire):
    with pytest.raises(connection.AuthenticationError) as refused:
        connection.Connection(**refused_login(wire, broker, password="wrong"))
    assert refused.value.code == 403 and refused.value.text.startswith("ACCESS_REFUSED - ")
    # What programs caught before, over either wire, still catches it.
    assert isinstance(refused.value, connection.AccessRefused)
    assert isinstance(refused.value, connection.ConnectionClosed)


@pytest.mark.parametrize("wire", CLIENT_WIRES)
def test_an_unknown_virtual_host_closes_the_connection_with_530_over_every_wire(broker, wire):
    with pytest.raises(connection.ConnectionClosed) as refused:
        connection.Connection(**refused_login(wire, broker, virtual_host="no-such-vhost"))
    assert type(refused.value) is connection.ConnectionClosed
    assert (refused.value.code, refused.value.text) == (530, "NOT_ALLOWED - vhost no-such-vhost not found")
