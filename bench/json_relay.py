"""A bare gevent JSON-lines relay: the per-message work no JSON-lines broker can skip,
written the plain way (json.loads in, json.dumps out), as the yardstick that
bench/throughput.py measures GreenMQ against in the same run with the same clients.

    python bench/json_relay.py      # prints {"port": N} once it listens on a free port

Per message it does that work, nothing less and nothing more: split what one recv
returned into lines (carrying a partial line over to the next read), decode each line as
UTF-8 (PROTOCOL.md's encoding) and parse it with json.loads, build the deliver line of
PROTOCOL.md (channel, consumer tag, a delivery tag counting up, redelivered, exchange,
routing key, body, and body_encoding and properties when the publish has them) as a dict
encoded with json.dumps (through one compact encoder made once), and send the deliveries
of one read to the consumer in one sendall. No queues, routing, acks, checks or limits:
a publish goes to the connection that consumed last, and is dropped while there is none.

Other requests get just enough of an answer for connection.py (`hello`, `consume` with a
consumer tag, `close`): `{"ok": true, "id": ...}`. It is one gevent process on one core,
as the broker is.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys

from gevent.server import StreamServer

RECV_BYTES = 256 * 1024        # what GreenMQ's transport reads at a time
CONSUMER_TAG = "relay"

_encode = json.JSONEncoder(separators=(",", ":")).encode


class Relay:
    def __init__(self):
        self.consumer = None        # the socket of the connection that consumed last
        self.delivery_tag = 0

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)      # as the broker's sockets
        partial = b""
        while True:
            data = sock.recv(RECV_BYTES)
            if not data:
                break
            lines = data.split(b"\n")
            if partial:
                lines[0] = partial + lines[0]
            partial = lines.pop()
            deliveries, replies = [], []
            closing = False
            for line in lines:
                if line:            # an empty line is a heartbeat
                    closing = self.line_received(json.loads(line.decode()), sock, deliveries, replies) or closing
            if deliveries and self.consumer is not None:
                self.consumer.sendall("".join(deliveries).encode())
            if replies:
                sock.sendall("".join(replies).encode())
            if closing:
                break
        if self.consumer is sock:
            self.consumer = None
        sock.close()

    def line_received(self, request, sock, deliveries, replies):
        """File what one request asks for; True when it ends the connection."""
        op = request.get("op")
        if op == "publish":
            self.delivery_tag += 1
            deliver = {"event": "deliver", "channel": request.get("channel", 1), "consumer_tag": CONSUMER_TAG,
                       "delivery_tag": self.delivery_tag, "redelivered": False,
                       "exchange": request.get("exchange", ""), "routing_key": request.get("routing_key", ""),
                       "body": request.get("body", "")}
            if "body_encoding" in request:
                deliver["body_encoding"] = request["body_encoding"]
            if "properties" in request:
                deliver["properties"] = request["properties"]
            deliveries.append(_encode(deliver) + "\n")
            return False
        if op == "consume":
            self.consumer = sock
        if "id" in request:
            reply = {"ok": True, "id": request["id"]}
            if op == "consume":
                reply["consumer_tag"] = CONSUMER_TAG
            replies.append(_encode(reply) + "\n")
        return op == "close"


@contextlib.contextmanager
def relay_process():
    """A relay in a process of its own, as the broker runs: yields (port, pid)."""
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdout=subprocess.PIPE)
    try:
        ready = process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the relay exited with {process.wait()}")
        yield json.loads(ready)["port"], process.pid
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def main():
    server = StreamServer(("127.0.0.1", 0), Relay().handle)
    server.start()
    print(json.dumps({"port": server.address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
