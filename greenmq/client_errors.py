"""What GreenMQ's blocking client raises: one family of errors, those from the broker
carrying its AMQP reply code.

A room of its own, below the client's wires, so that the connection and both wires
(client_json_lines.py, client_amqp.py) raise the same classes with every import pointing
down. Programs catch them as `connection.NotFound` and so on: connection.py re-exports
them.
"""


class GreenMQError(Exception):
    """Base of everything this client raises."""


class BrokerError(GreenMQError):
    """The broker refused a request: `code` is its AMQP reply code, `text` its reason."""

    def __init__(self, code, text, op=None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.op = op


class AccessRefused(BrokerError):
    pass


class NotFound(BrokerError):
    pass


class ResourceLocked(BrokerError):
    pass


class PreconditionFailed(BrokerError):
    pass


class ConnectionClosed(BrokerError):
    """The connection is gone: closed by the broker (with its code and reason) or lost."""


class AuthenticationError(AccessRefused, ConnectionClosed):
    """The broker refused the login (403 ACCESS_REFUSED: a wrong user name or password) and
    closed the connection; the same over either wire. RabbitMQ's users know it by pika's
    name, and as the AccessRefused of py-amqp and kombu; it is both an AccessRefused and a
    ConnectionClosed, so the `except` clauses written when the AMQP wire raised the one and
    the JSON-lines wire the other go on catching it."""


class NackError(GreenMQError):
    """Confirm mode: the broker did not take responsibility for the message."""


class ConnectionBlockedTimeout(GreenMQError):
    """The broker kept this connection blocked (low on memory) for longer than the
    connection's `blocked_connection_timeout`. A basic_publish that raises it sent nothing,
    unless it was sent and then waited for its own confirm (confirm window 1)."""


class UnroutableError(GreenMQError):
    """Confirm mode: a mandatory message was returned because no queue was bound for it."""


_ERRORS_BY_CODE = {403: AccessRefused, 404: NotFound, 405: ResourceLocked, 406: PreconditionFailed}


def connection_closed(code, text):
    """The error for a connection the broker closed with `code` and `text`: 403 can only
    be a refused login (RabbitMQ closes for nothing else with it)."""
    return (AuthenticationError if code == 403 else ConnectionClosed)(code, text)


def broker_error(reply):
    """The error a refusal (a reply or event with `code` and `text`) stands for."""
    return _ERRORS_BY_CODE.get(reply.get("code"), BrokerError)(
        reply.get("code"), reply.get("text", ""), reply.get("op"))


def refuse_large_body(size, limit):
    """Refuse a body over the broker's maximum before sending it; the connection goes on."""
    if size > limit:
        raise PreconditionFailed(
            406, f"PRECONDITION_FAILED - message size {size} is larger than configured max size {limit}",
            "publish")
