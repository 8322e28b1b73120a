"""The broker with allocation failures on cue, for tests: `python tests/failing_allocation_broker.py
--port 0 ...`. Exhausting the machine's memory would harm everyone on it; instead one step
of the broker raises MemoryError when the bytes it handles carry TRIGGER:

- reading: a connection's input (JSON lines or AMQP) is refused by the protocol;
- publishing: the core cannot make the message object for a body carrying the trigger;
- writing: a connection's output (a delivery of a message carrying the trigger) cannot be
  joined for its socket.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greenmq import amqp_protocol, broker, message, protocol, transport  # noqa: E402

READ_TRIGGER = b"memory-error-on-read"
PUBLISH_TRIGGER = b"memory-error-on-publish"
WRITE_TRIGGER = b"memory-error-on-write"


def _failing_on_read(data_received):
    def patched(self, data):
        if READ_TRIGGER in data:
            raise MemoryError
        return data_received(self, data)
    return patched


def _failing_on_publish(make_message):
    def patched(self, exchange, routing_key, body, *args):
        if PUBLISH_TRIGGER in body:
            raise MemoryError
        return make_message(self, exchange, routing_key, body, *args)
    return patched


def _failing_on_write(take_output_buffers):
    def patched(self):
        if any(WRITE_TRIGGER in bytes(chunk) for chunk in self.outbox):
            raise MemoryError
        return take_output_buffers(self)
    return patched


for front_end in (protocol.JsonLinesProtocol, amqp_protocol.AmqpConnection):
    front_end.data_received = _failing_on_read(front_end.data_received)
message.Message.__init__ = _failing_on_publish(message.Message.__init__)
transport.FrontEndConnection.take_output_buffers = _failing_on_write(transport.FrontEndConnection.take_output_buffers)

if __name__ == "__main__":
    sys.exit(broker.main())
