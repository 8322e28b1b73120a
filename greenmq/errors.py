"""One error vocabulary for every front end: AMQP reply codes plus a sentence naming the object.

The core raises these; the JSON-lines protocol turns them into error replies, the AMQP
front end into channel.close / connection.close with the same code and text, so an
operator sees the same words everywhere (as RabbitMQ does).
"""


class BrokerError(Exception):
    """A refused operation: `code` is the AMQP reply code, `text` what RabbitMQ would say."""

    code = 541
    name = "INTERNAL_ERROR"
    # Connection-level errors close the whole connection in AMQP; channel-level ones only the channel.
    connection_level = True

    def __init__(self, message):
        self.text = f"{self.name} - {message}"
        super().__init__(self.text)


class ChannelError(BrokerError):
    connection_level = False


class AccessRefused(ChannelError):
    code, name = 403, "ACCESS_REFUSED"


class NotFound(ChannelError):
    code, name = 404, "NOT_FOUND"


class ResourceLocked(ChannelError):
    code, name = 405, "RESOURCE_LOCKED"


class PreconditionFailed(ChannelError):
    code, name = 406, "PRECONDITION_FAILED"


class StoreUnavailable(ChannelError):
    """A persistent message the durable store cannot take now (full disk, read-only or
    vanished data directory): a publisher in confirm mode gets a nack, any other this
    error; transient messages are not affected."""
    code, name = 506, "RESOURCE_ERROR"


class PublishRefused(Exception):
    """A queue at its length limit with x-overflow reject-publish (or reject-publish-dlx)
    refused a message: a publisher in confirm mode gets a nack, any other nothing (the
    message is dropped), as in RabbitMQ. Not a BrokerError: no client sees it as one."""


class InvalidExchangeType(ChannelError):
    """An unknown exchange type: 406 on the channel, as RabbitMQ from 3.11 on answers and
    pika's own tests expect (RabbitMQ 3.10 closed the connection with 503 COMMAND_INVALID)."""
    code, name = 406, "PRECONDITION_FAILED"


class ConnectionForced(BrokerError):
    code, name = 320, "CONNECTION_FORCED"


class FrameError(BrokerError):
    code, name = 501, "FRAME_ERROR"


class BadSyntax(BrokerError):
    code, name = 502, "SYNTAX_ERROR"


class CommandInvalid(BrokerError):
    code, name = 503, "COMMAND_INVALID"


class ChannelNotOpen(BrokerError):
    code, name = 504, "CHANNEL_ERROR"


class UnexpectedFrame(BrokerError):
    code, name = 505, "UNEXPECTED_FRAME"


class NotAllowed(BrokerError):
    code, name = 530, "NOT_ALLOWED"


class Unsupported(BrokerError):
    code, name = 540, "NOT_IMPLEMENTED"


class InternalError(BrokerError):
    code, name = 541, "INTERNAL_ERROR"
