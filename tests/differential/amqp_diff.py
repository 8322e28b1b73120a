"""A differential test of the AMQP front end: seeded sequences of AMQP methods, sent to a
broker over a plain socket, with every answer written down in a form two brokers can be
compared by, step by step.

Each sequence uses two connections ("a" with channels 1-3, "b" with channels 1-2, for
queues exclusive to another connection) and names of its own. After every step a barrier
makes the answers deterministic: every open channel is pinged, every queue the sequence
knows is declared passively (which also records its message and consumer counts), and the
channels are pinged again, so deliveries, confirms and returns that the step caused have
arrived by then on either broker. Server-generated names are numbered in order of first
appearance. Reply texts are recorded but compared only with --texts: the codes, methods,
counts and flags are what clients act on.

Beside classic queues, q4 is a quorum queue (x-delivery-limit 1, so deliveries carry
x-delivery-count and a second return drops a message) and s0 a stream; declarations may
ask for either type, with what they refuse. Some steps set or clear a policy (the run's own
names, over some of its queues) through the broker's management API, by default beside its
AMQP port as RabbitMQ's is (--management-url otherwise); the step waits until the API shows
every queue with the policy it should have. RabbitMQ 3.10's counts of a quorum queue's
consumers and of a stream's messages and consumers are not what clients act on (a basic.get
not yet settled counts as a consumer there; a stream counts nothing), so the barrier
records a quorum queue's message count only and a stream's existence.

Re-record the reference answers from a RabbitMQ 3.10 on 127.0.0.1:5682 (for example
Debian's rabbitmq-server) with:

    .venv/bin/python -m tests.differential.amqp_diff --url amqp://guest:guest@127.0.0.1:5682/%2f \\
        --record tests/differential/rabbitmq-3.10.json

Compare a broker with the recording, or with a live reference, or run longer:

    .venv/bin/python -m tests.differential.amqp_diff --url URL --management-url http://guest:guest@HOST:PORT \\
        --compare tests/differential/rabbitmq-3.10.json
    .venv/bin/python -m tests.differential.amqp_diff --url URL --reference REFERENCE_URL --sequences 200
"""

import argparse
import base64
import collections
import datetime
import json
import random
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

# What the recording holds and `make test` replays: about 3,000 steps in 30 sequences.
SEQUENCES = 30
STEPS_PER_SEQUENCE = 100
FIRST_SEED = 1
# A broker that has not answered a synchronous method by then is recorded as silent.
REPLY_TIMEOUT_SECONDS = 5.0
# The reference broker finishes tearing down channels and connections (requeueing their
# unacked messages, deleting exclusive and auto-delete queues) after it has answered; the
# barrier waits that long at most for the queues it probes to stop changing.
SETTLE_SECONDS = 2.0
SETTLE_POLL_SECONDS = 0.01
# RabbitMQ's quorum queues and streams count, deliver and confirm a message once its log
# entry is written (0.5 to 2 ms measured on the reference), which nothing over AMQP awaits
# without changing the queue: on RabbitMQ the barrier probes again after this long.
RABBITMQ_COMMIT_SECONDS = 0.02

CHANNELS = {"a": (1, 2, 3, 4, 5), "b": (1, 2, 3, 4)}
PROBE_CHANNEL = 10      # on connection "a", the first of the barrier's: one per name probed
QUEUES = ("q0", "q1", "q2", "q3", "q4", "s0")
EXCHANGES = ("x0", "x1", "x2")
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
EXCHANGE_TYPE = {"x0": "direct", "x1": "fanout", "x2": "topic"}     # as the prelude declares them
ROUTING_KEYS = ("", "k1", "k2", "k1.k2", "#", "*.k2")
# The channels that may consume each queue: one queue per channel, as RabbitMQ's queues
# deliver to a channel concurrently (which queue's message comes first, or takes a shared
# prefetch window, depends on timing there), but two consumers for some queues.
CONSUMER_CHANNELS = {"q0": (("a", 1), ("b", 3)), "q1": (("a", 2),), "q2": (("a", 3), ("a", 4)),
                     "q3": (("b", 1),), "q4": (("a", 5),), "s0": (("b", 4),), "gen": (("b", 2),),
                     "missing": (("a", 1),)}
CONSUMER_TAGS = tuple(f"c-{queue}" for queue in CONSUMER_CHANNELS)
# The broker's own exchanges are shared with whoever else uses it (a reference broker is
# shared): only amq.direct, with routing keys of this sequence's own, which no one else's
# messages carry nor bindings catch.
SHARED_EXCHANGES = ("amq.direct",)
SERVER_NAMED = "gen"     # a step's queue "gen" means the last server-named queue
# Queue arguments whose outcome does not depend on timing: a TTL of 0 drops what no
# consumer takes at once, a long one never fires during a run; length limits with both
# overflow behaviours, and priorities (publishes carry priorities now and then).
# Dead-letter exchanges are left out: their names would have to be this run's own.
QUEUE_ARGUMENTS = ({}, {}, {}, {"x-message-ttl": 0}, {"x-message-ttl": 600000}, {"x-max-length": 2},
                   {"x-max-length": 1, "x-overflow": "reject-publish"}, {"x-max-priority": 5},
                   {"x-queue-type": "classic"})
# A quorum queue's and a stream's, with some of what each refuses (priorities,
# reject-publish-dlx, classic-only and stream-only arguments); x-queue-type is added.
QUORUM_ARGUMENTS = ({}, {"x-delivery-limit": 1}, {"x-delivery-limit": 0}, {"x-max-length": 1, "x-overflow": "reject-publish"},
                    {"x-message-ttl": 0}, {"x-max-priority": 5}, {"x-overflow": "reject-publish-dlx"},
                    {"x-queue-mode": "lazy"}, {"x-max-age": "1D"})
STREAM_ARGUMENTS = ({}, {"x-max-length-bytes": 1000000}, {"x-max-age": "1D"}, {"x-max-priority": 5},
                    {"x-message-ttl": 0}, {"x-overflow": "reject-publish"}, {"x-delivery-limit": 1})
QUEUE_TYPE_WEIGHTS = {"classic": 6, "quorum": 3, "stream": 1}
# The prelude's queues beside the classic ones: a quorum queue that drops a message at its
# second return, and a stream.
PRELUDE_QUEUES = {"q4": {"durable": True, "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 1}},
                  "s0": {"durable": True, "arguments": {"x-queue-type": "stream"}}}
# Where a stream consumer starts (absent: "next"); it needs a prefetch window, which its
# step sets on the channel before consuming (0: none, refused).
STREAM_OFFSETS = (None, "first", "next", "last", 0, 2)
# Policies the sequences set and clear, each with a priority of its own (which of two
# equal ones applies is not promised), over some of the sequence's queues.
POLICIES = {"p0": 0, "p1": 1}
POLICY_DEFINITIONS = ({"message-ttl": 0}, {"max-length": 1}, {"max-length": 2, "overflow": "reject-publish"},
                      {"max-length": 1, "overflow": "reject-publish"}, {"delivery-limit": 0},
                      {"delivery-limit": 2}, {"max-length-bytes": 0}, {"overflow": "drop-head", "max-length": 0})
# How long the barrier waits for a policy change to show on every queue it matches: the
# reference's API shows a queue's policy from the statistics the queue emits (every 5 s for
# a classic queue, 10 s for a quorum queue; a stream's never shows, so streams are left out).
POLICY_SETTLE_SECONDS = 20.0
# The keys of POLICY_DEFINITIONS a type of queue does not take: a policy holding one does
# not apply to it, and the next matching one does (RabbitMQ 3.10's is_policy_applicable).
INAPPLICABLE_POLICY_KEYS = {"classic": {"delivery-limit"}, "quorum": set()}
POLICY_POLL_SECONDS = 0.2

_FRAME_HEAD = struct.Struct(">BHI")
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
_SERVER_NAME = re.compile(r"amq\.(gen|ctag)-[A-Za-z0-9_\-]+")


# -- the generator -------------------------------------------------------------------------

def generate(seed, steps=STEPS_PER_SEQUENCE):
    """The steps of one sequence: plain dicts, the same for every broker and run."""
    rng = random.Random(seed)
    operations = [(operation, weight) for operation, weight in _WEIGHTS.items()]
    names = [operation for operation, _ in operations]
    weights = [weight for _, weight in operations]
    result = [dict(step) for step in PRELUDE]
    for _ in range(steps - len(PRELUDE)):
        operation = rng.choices(names, weights)[0]
        conn = "a" if rng.random() < 0.75 else "b"
        step = {"op": operation, "conn": conn, "ch": rng.choice(CHANNELS[conn])}
        step.update(_ARGUMENTS[operation](rng))
        result.append(step)
    return result


def _declared(**step):
    return {"conn": "a", "ch": 1, **step}


# Every sequence starts from a populated world, so that most steps find something to act on.
_PLAIN_QUEUE = {"passive": False, "durable": False, "exclusive": False, "auto_delete": False, "arguments": {}}
def _prelude_declaration(queue):
    return {**_PLAIN_QUEUE, **PRELUDE_QUEUES.get(queue, {})}


PRELUDE = (
    [_declared(op="queue.declare", queue=queue, **_prelude_declaration(queue)) for queue in QUEUES]
    + [_declared(op="exchange.declare", exchange=exchange, type=EXCHANGE_TYPE[exchange], passive=False,
                 durable=False, auto_delete=False, internal=False) for exchange in EXCHANGES]
    + [_declared(op="queue.bind", queue=queue, exchange=exchange, routing_key=key, arguments={})
       for queue, exchange, key in (("q0", "x0", "k1"), ("q1", "x0", "k2"), ("q1", "x1", ""), ("q2", "x1", ""),
                                    ("q2", "x2", "#"), ("q3", "x2", "*.k2"))])


def _queue(rng, missing=0.05):
    roll = rng.random()
    if roll < missing:
        return "missing"
    if roll < missing + 0.15:
        return SERVER_NAMED
    return rng.choice(QUEUES)


def _exchange(rng):
    roll = rng.random()
    if roll < 0.1:
        return "missing"
    if roll < 0.25:
        return rng.choice(SHARED_EXCHANGES)
    return rng.choice(EXCHANGES)


def _binding_arguments(rng):
    if rng.random() < 0.7:
        return {}
    return {"x-match": rng.choice(("all", "any")), "h": rng.choice(("1", "2"))}


def _settle(rng, can_be_multiple=True):
    """A delivery tag seen on the channel ('last', 'first', 'prev': stale once settled), one
    never issued, or 0 (with multiple: everything); multiple takes the highest tag seen."""
    multiple = can_be_multiple and rng.random() < 0.3
    roll = rng.random()
    if roll < 0.85:
        tag = "last" if multiple else rng.choice(("last", "last", "first", "prev"))
    elif roll < 0.93:
        tag = 0
    else:
        tag = rng.randint(1000, 1010)
    return {"tag": tag, "multiple": multiple} if can_be_multiple else {"tag": tag}


def _consume(rng, queue):
    conn, channel = rng.choice(CONSUMER_CHANNELS[queue])
    step = {"conn": conn, "ch": channel, "queue": queue, "tag": f"c-{queue}", "no_ack": rng.random() < 0.3,
            "exclusive": rng.random() < 0.15}
    if queue == "s0":
        step.update(offset=rng.choice(STREAM_OFFSETS), prefetch=rng.choice((0, 1, 2, 2)))
    return step


def _exchange_declare(rng, exchange):
    """Mostly as the prelude declared it; sometimes with another type or flags."""
    plain = rng.random() < 0.7
    return {"exchange": exchange, "type": EXCHANGE_TYPE.get(exchange, "direct") if plain else rng.choice(EXCHANGE_TYPES),
            "passive": rng.random() < 0.1, "durable": not plain and rng.random() < 0.3,
            "auto_delete": not plain and rng.random() < 0.3, "internal": not plain and rng.random() < 0.1}


def _queue_declare(rng):
    """Server-named, or one of the prelude's names: mostly as the prelude declared it,
    sometimes of a type chosen at random: classic exclusive, auto-delete, durable or with a
    TTL; quorum or stream mostly durable, now and then with what they refuse."""
    queue = rng.choice(("",) + QUEUES)
    passive = rng.random() < 0.1
    if rng.random() < 0.6:
        return {"queue": queue, "passive": passive, **_prelude_declaration(queue)}
    queue_type = rng.choices(list(QUEUE_TYPE_WEIGHTS), list(QUEUE_TYPE_WEIGHTS.values()))[0]
    if queue_type == "classic":
        return {"queue": queue, "passive": passive, "durable": rng.random() < 0.3, "exclusive": rng.random() < 0.4,
                "auto_delete": rng.random() < 0.4, "arguments": rng.choice(QUEUE_ARGUMENTS)}
    arguments = rng.choice(QUORUM_ARGUMENTS if queue_type == "quorum" else STREAM_ARGUMENTS)
    return {"queue": queue, "passive": passive, "durable": rng.random() < 0.8, "exclusive": rng.random() < 0.15,
            "auto_delete": rng.random() < 0.15, "arguments": {"x-queue-type": queue_type, **arguments}}


def _policy_set(rng):
    """A policy over one to three of the sequence's queues (exchanges are not its concern)."""
    return {"policy": rng.choice(list(POLICIES)), "queues": sorted(rng.sample(QUEUES, rng.randint(1, 3))),
            "definition": rng.choice(POLICY_DEFINITIONS)}


def _properties(rng):
    properties = {}
    if rng.random() < 0.3:
        properties["delivery_mode"] = rng.choice((1, 2))
    if rng.random() < 0.2:
        properties["expiration"] = rng.choice(("0", "600000"))
    if rng.random() < 0.3:
        properties["headers"] = {"h": rng.choice(("1", "2"))}
    if rng.random() < 0.2:
        properties["content_type"] = "text/plain"
    if rng.random() < 0.2:
        properties["message_id"] = f"id{rng.randint(1, 99)}"
    if rng.random() < 0.1:
        properties["priority"] = rng.randint(0, 9)
    return properties


_ARGUMENTS = {
    "exchange.declare": lambda rng: _exchange_declare(rng, rng.choice(EXCHANGES * 3 + ("amq.direct", "amq.gone"))),
    "exchange.delete": lambda rng: {"exchange": _exchange(rng), "if_unused": rng.random() < 0.4},
    "queue.declare": lambda rng: _queue_declare(rng),
    "queue.bind": lambda rng: {"queue": _queue(rng), "exchange": _exchange(rng),
                               "routing_key": rng.choice(ROUTING_KEYS), "arguments": _binding_arguments(rng)},
    "queue.unbind": lambda rng: {"queue": _queue(rng, 0.15), "exchange": _exchange(rng),
                                 "routing_key": rng.choice(ROUTING_KEYS), "arguments": _binding_arguments(rng)},
    "queue.purge": lambda rng: {"queue": _queue(rng)},
    "queue.delete": lambda rng: {"queue": _queue(rng), "if_unused": rng.random() < 0.3,
                                 "if_empty": rng.random() < 0.3},
    "basic.publish": lambda rng: {
        "exchange": rng.choice(("", "", "") + EXCHANGES + SHARED_EXCHANGES + ("missing",)),
        "routing_key": rng.choice(QUEUES + (SERVER_NAMED,) + ROUTING_KEYS),
        "mandatory": rng.random() < 0.4, "properties": _properties(rng)},
    "basic.get": lambda rng: {"queue": _queue(rng), "no_ack": rng.random() < 0.3},
    "basic.consume": lambda rng: _consume(rng, _queue(rng)),
    "basic.cancel": lambda rng: {"tag": rng.choice(CONSUMER_TAGS + ("unknown",))},
    "basic.ack": lambda rng: _settle(rng),
    "basic.nack": lambda rng: {**_settle(rng), "requeue": rng.random() < 0.6},
    "basic.reject": lambda rng: {**_settle(rng, False), "requeue": rng.random() < 0.6},
    "basic.recover": lambda rng: {},
    "basic.qos": lambda rng: {"prefetch_count": rng.randint(0, 3), "global": rng.random() < 0.3},
    "confirm.select": lambda rng: {},
    "tx.select": lambda rng: {},
    "tx.commit": lambda rng: {},
    "tx.rollback": lambda rng: {},
    "channel.close": lambda rng: {},
    "connection.close": lambda rng: {},
    "policy.set": _policy_set,
    "policy.clear": lambda rng: {"policy": rng.choice(list(POLICIES))},
}

_WEIGHTS = {
    "exchange.declare": 4, "exchange.delete": 2, "queue.declare": 8, "queue.bind": 6,
    "queue.unbind": 4, "queue.purge": 2, "queue.delete": 3, "basic.publish": 28, "basic.get": 10,
    "basic.consume": 6, "basic.cancel": 3, "basic.ack": 10, "basic.nack": 4, "basic.reject": 3,
    "basic.recover": 1, "basic.qos": 3, "confirm.select": 2, "tx.select": 1, "tx.commit": 1,
    "tx.rollback": 1, "channel.close": 1, "connection.close": 1, "policy.set": 3, "policy.clear": 1,
}


def describe(step):
    """One line naming a step, kept in the recording so a changed generator is noticed."""
    details = " ".join(f"{key}={json.dumps(value, sort_keys=True)}" for key, value in step.items()
                       if key not in ("op", "conn", "ch"))
    return f"{step['conn']}{step['ch']} {step['op']} {details}".rstrip()


# -- a minimal AMQP client ---------------------------------------------------------------------

class Silent(Exception):
    """The broker did not answer in time."""


class Connection:
    """A socket speaking AMQP frames: `call` sends a method and reads until its answer;
    everything else that arrives is collected in `events` per channel."""

    def __init__(self, url):
        parsed = urllib.parse.urlparse(url)
        self.address = (parsed.hostname or "localhost", parsed.port or 5672)
        self.user = urllib.parse.unquote(parsed.username or "guest")
        self.password = urllib.parse.unquote(parsed.password or "guest")
        vhost = parsed.path[1:] if parsed.path else ""
        self.vhost = urllib.parse.unquote(vhost) if vhost else "/"
        self.sock = None
        self.open = False
        self.channels = set()     # open as far as this client knows
        self.events = []          # (channel, kind, item) in arrival order
        self.closed_by_broker = None
        self.server_properties = {}
        self._buffer = b""
        self._content = {}        # channel -> [method item, properties, size, parts]

    def connect(self):
        self.sock = socket.create_connection(self.address, timeout=REPLY_TIMEOUT_SECONDS)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.server_properties = self._expect(0, spec.Connection.Start).server_properties
        self.send(0, spec.Connection.StartOk(client_properties={"product": "greenmq-diff", "capabilities": {
            "consumer_cancel_notify": True, "publisher_confirms": True, "basic.nack": True}},
            mechanism="PLAIN", response=f"\0{self.user}\0{self.password}", locale="en_US"))
        tune = self._expect(0, spec.Connection.Tune)
        self.send(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        self.send(0, spec.Connection.Open(virtual_host=self.vhost))
        self._expect(0, spec.Connection.OpenOk)
        self.open = True
        self.channels = set()
        self.closed_by_broker = None

    def _expect(self, channel, kind):
        while True:
            number, frame = self._read_frame()
            if number == channel and isinstance(frame, kind):
                return frame
            if isinstance(frame, spec.Connection.Close):
                raise RuntimeError(f"connection refused: {frame.reply_code} {frame.reply_text}")

    def send(self, channel, method):
        self.sock.sendall(amqp_frame.marshal(method, channel))

    def publish(self, channel, method, body, properties):
        frames = [amqp_frame.marshal(method, channel),
                  amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), spec.Basic.Properties(**properties)),
                                     channel),
                  amqp_frame.marshal(amqp_body.ContentBody(body), channel)]
        self.sock.sendall(b"".join(frames))

    def call(self, channel, method, replies):
        """Send `method` and read until one of `replies` (or a close) comes on `channel`;
        returns that frame, or a Channel.Close / Connection.Close."""
        return self.call_many([(channel, method, replies)])[0]

    def call_many(self, calls):
        """Send every (channel, method, replies) at once, then read until each has its
        answer: one of its replies, or the close of its channel or of the connection.
        On a channel the broker closed it discards the methods that follow."""
        self.sock.sendall(b"".join(amqp_frame.marshal(method, channel) for channel, method, _ in calls))
        waiting = {}
        for index, (channel, _, _) in enumerate(calls):
            waiting.setdefault(channel, collections.deque()).append(index)
        answers = [None] * len(calls)
        while waiting:
            number, frame = self._read_frame()
            item = self._handle(number, frame)
            if item is None:
                continue
            if isinstance(frame, spec.Connection.Close):
                return [answer or frame for answer in answers]
            pending = waiting.get(number)
            if pending and isinstance(item, spec.Channel.Close):
                for index in pending:
                    answers[index] = item
                del waiting[number]
            elif pending and isinstance(item, calls[pending[0]][2]):
                answers[pending.popleft()] = item
                if not pending:
                    del waiting[number]
            else:
                self.events.append((number, item))
        return answers

    def _handle(self, number, frame):
        """Answer the broker's closes, assemble content; the item to record, or None."""
        if isinstance(frame, spec.Connection.Close):
            self.send(0, spec.Connection.CloseOk())
            self.closed_by_broker = frame
            self.drop()
            return frame
        if isinstance(frame, spec.Channel.OpenOk):
            self.channels.add(number)
            return frame
        if isinstance(frame, spec.Channel.Close):
            self.send(number, spec.Channel.CloseOk())
            self.channels.discard(number)
            return frame
        if isinstance(frame, (spec.Basic.Deliver, spec.Basic.GetOk, spec.Basic.Return)):
            self._content[number] = [frame, None, 0, []]
            return None
        if isinstance(frame, amqp_header.ContentHeader):
            content = self._content[number]
            content[1], content[2] = frame.properties, frame.body_size
            return self._content_done(number) if frame.body_size == 0 else None
        if isinstance(frame, amqp_body.ContentBody):
            content = self._content[number]
            content[3].append(frame.value)
            return self._content_done(number) if sum(map(len, content[3])) >= content[2] else None
        return frame

    def _content_done(self, number):
        method, properties, _, parts = self._content.pop(number)
        method.content = (b"".join(parts), properties)
        return method

    def _read_frame(self):
        while True:
            if len(self._buffer) >= 7:
                frame_type, channel, size = _FRAME_HEAD.unpack_from(self._buffer)
                if len(self._buffer) >= size + 8:
                    consumed, channel, frame = amqp_frame.unmarshal(self._buffer[:size + 8])
                    self._buffer = self._buffer[consumed:]
                    if frame_type == FRAME_HEARTBEAT:
                        continue
                    return channel, frame
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Silent() from None
            except OSError as exc:
                raise EOFError(str(exc)) from None
            if not data:
                raise EOFError("the broker closed the socket")
            self._buffer += data

    def drop(self):
        self.open = False
        self.channels = set()
        self._buffer = b""
        self._content = {}
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self):
        if self.open:
            try:
                self.call(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), (spec.Connection.CloseOk,))
            except (Silent, EOFError, OSError):
                pass
        self.drop()


class Management:
    """The broker's HTTP API, for what AMQP cannot do (policies): `call` gives the status
    and the decoded answer."""

    def __init__(self, url):
        parsed = urllib.parse.urlparse(url)
        self.base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"
        credentials = f"{urllib.parse.unquote(parsed.username or 'guest')}:{urllib.parse.unquote(parsed.password or 'guest')}"
        self.authorization = "Basic " + base64.b64encode(credentials.encode()).decode()

    def call(self, method, path, body=None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": self.authorization,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REPLY_TIMEOUT_SECONDS) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        return status, json.loads(text) if text else None


def management_url(amqp_url):
    """A RabbitMQ's management API beside its AMQP port: 15672 for 5672 (and 15682 for the
    reference's 5682), with the same user."""
    parsed = urllib.parse.urlparse(amqp_url)
    return (f"http://{parsed.username or 'guest'}:{parsed.password or 'guest'}@{parsed.hostname or 'localhost'}:"
            f"{(parsed.port or 5672) + 10000}")


# -- running a sequence ------------------------------------------------------------------------

_PING = spec.Exchange.Declare(exchange="amq.direct", exchange_type="direct", passive=True)


class Runner:
    """Runs one sequence's steps on a broker and writes down the answers."""

    def __init__(self, url, seed, management=None):
        self.url = url
        self.management = Management(management or management_url(url))
        self.vhost = urllib.parse.quote(Connection(url).vhost, safe="")
        self.prefix = f"greenmq-diff{seed}."
        self.policies = {}            # name of a policy in effect -> (the queues it matches, its definition)
        self.queue_types = {}         # real name -> "classic", "quorum" or "stream", as declared
        self.commit_seconds = 0.0     # how long a quorum queue may take to count what it took
        self.connections = {"a": Connection(url), "b": Connection(url)}
        self.server_names = {}        # real server-generated name -> its number in this run
        self.last_server_queue = None
        self.queues_seen = set()      # real names of queues this sequence may have made
        self.exclusive = {"a": set(), "b": set()}   # exclusive queues each connection declared
        self.delivery_tags = {}       # (conn, channel) -> tags seen, in order
        self.consumers = {}           # (conn, channel) -> {tag of its consumer: real queue name}
        self.confirmed = {}           # (conn, channel) -> the highest publish it had confirmed
        self.published = {}           # (conn, channel) in confirm mode -> publishes it made there
        self.closed_in_step = set()   # connections the current step saw closed
        self.last_probe = None
        self.body_counter = 0

    def run(self, steps):
        self._clean()
        answers = []
        try:
            for step in steps:
                answers.append(self.step(step))
        finally:
            self._clean()
            for conn in self.connections.values():
                conn.close()
        return answers

    def _clean(self):
        """Remove what this sequence declares (a reference broker keeps it between runs)."""
        conn = Connection(self.url)
        conn.connect()
        self._open_channel(conn, 1)
        self.commit_seconds = RABBITMQ_COMMIT_SECONDS if _text(conn.server_properties.get("product")) == "RabbitMQ" else 0.0
        for queue in [self.prefix + q for q in QUEUES] + sorted(self.queues_seen):
            if conn.call(1, spec.Queue.Delete(queue=queue), (spec.Queue.DeleteOk,)).name != "Queue.DeleteOk":
                self._open_channel(conn, 1)
        for exchange in EXCHANGES:
            conn.call(1, spec.Exchange.Delete(exchange=self.prefix + exchange), (spec.Exchange.DeleteOk,))
        conn.close()
        for policy in POLICIES:
            self.management.call("DELETE", self._policy_path(policy))
        self.policies = {}

    def _open_channel(self, conn, number):
        conn.call(number, spec.Channel.Open(), (spec.Channel.OpenOk,))

    # -- one step ------------------------------------------------------------------------

    def step(self, step):
        conn = self.connections[step["conn"]]
        answer = []
        try:
            if not conn.open:
                conn.connect()
            if step["ch"] not in conn.channels:
                self._open_channel(conn, step["ch"])
                self.delivery_tags[(step["conn"], step["ch"])] = []
                self.consumers[(step["conn"], step["ch"])] = {}
                self.confirmed[(step["conn"], step["ch"])] = 0
                self.published.pop((step["conn"], step["ch"]), None)
            self.closed_in_step = set()
            reply = getattr(self, "_" + step["op"].replace(".", "_"))(conn, step)
            if reply is not None:
                answer.append(reply if isinstance(reply, list) else self._item(reply))
            if conn.closed_by_broker is not None or step["op"] == "connection.close":
                self._connection_gone(step["conn"])
            self._barrier(answer)
        except Silent:
            answer.append(["silent"])
            for name, each in self.connections.items():
                each.drop()
                self._connection_gone(name)
        except EOFError as exc:
            answer.append(["socket closed", str(exc)])
            for name, each in self.connections.items():
                each.drop()
                self._connection_gone(name)
        return answer

    def _connection_gone(self, name):
        """Its exclusive queues go with it; the reference broker deletes them a moment after
        the close, so the barrier waits for that."""
        self.closed_in_step.add(name)
        gone = self.exclusive[name]
        self.exclusive[name] = set()
        self._wait_deleted(gone)

    def _wait_deleted(self, queues):
        if not queues:
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            answers = self._passive_declares([("queue", queue) for queue in sorted(queues)])
            if all(getattr(answer, "reply_code", None) == 404 for answer in answers):
                return
            time.sleep(SETTLE_POLL_SECONDS)

    def _passive_declares(self, names):
        """Passive declares of ("queue" | "exchange", real name), each on a probe channel of
        its own (a missing one closes it), all sent at once; their answers in order."""
        probe = self.connections["a"]
        if not probe.open:
            probe.connect()
        calls = []
        for index, (kind, name) in enumerate(names):
            number = PROBE_CHANNEL + index
            if number not in probe.channels:
                calls.append((number, spec.Channel.Open(), (spec.Channel.OpenOk,)))
            if kind == "queue":
                calls.append((number, spec.Queue.Declare(queue=name, passive=True), (spec.Queue.DeclareOk,)))
            else:
                calls.append((number, spec.Exchange.Declare(exchange=name, passive=True), (spec.Exchange.DeclareOk,)))
        return [answer for answer in probe.call_many(calls) if not isinstance(answer, spec.Channel.OpenOk)]

    def _barrier(self, answer):
        """Ping every channel, probe every queue, ping again; then record what arrived."""
        self._ping_all()
        probe = self._probe()
        settle_until = time.monotonic() + SETTLE_SECONDS
        time.sleep(self.commit_seconds)
        while True:
            self._ping_all()
            again = self._probe()
            if again == probe or time.monotonic() > settle_until:
                break
            probe = again
            time.sleep(SETTLE_POLL_SECONDS)
        # RabbitMQ answers queue.delete before the consumers' channels hear that the queue
        # went (they learn it from the queue process's exit), so their basic.cancel may come
        # after the pings above; wait for it, and for every confirm due, up to the same bound.
        cancel_until = time.monotonic() + SETTLE_SECONDS
        while (self._cancels_due(probe) or self._confirms_due()) and time.monotonic() < cancel_until:
            time.sleep(SETTLE_POLL_SECONDS)
            self._ping_all()
        for name in ("a", "b"):
            events = self.connections[name].events
            self.connections[name].events = []
            # Per channel, the kinds keep their own order; across channels and kinds the
            # two brokers interleave differently, and no client can rely on that.
            groups = {}
            for number, item in events:
                if isinstance(item, spec.Basic.Deliver):
                    if name in self.closed_in_step:
                        continue        # RabbitMQ may or may not deliver to a closing connection (README)
                    self.delivery_tags[(name, number)].append(item.delivery_tag)
                elif isinstance(item, spec.Basic.Cancel):
                    self.consumers[(name, number)].pop(item.consumer_tag, None)
                described = self._item(item)
                if isinstance(item, (spec.Basic.Ack, spec.Basic.Nack)):
                    # A multiple confirm of the one publish it covers says no more than a
                    # single one: RabbitMQ sends either, so they compare alike.
                    confirmed = self.confirmed.get((name, number), 0)
                    described[2] = item.multiple and item.delivery_tag > confirmed + 1
                    self.confirmed[(name, number)] = max(confirmed, item.delivery_tag)
                groups.setdefault((number, _kind(item)), []).append(described)
            for key in sorted(groups):
                answer.append([f"{name}{key[0]}", key[1], groups[key]])
        if probe != self.last_probe:
            answer.append(["queues", probe])
            self.last_probe = probe

    def _cancels_due(self, probe):
        """Whether a consumer on an open channel has lost its queue (the probe no longer
        finds it) and its basic.cancel has not arrived yet."""
        for (name, number), consumers in self.consumers.items():
            conn = self.connections[name]
            if not conn.open or number not in conn.channels:
                continue
            cancelled = {item.consumer_tag for at, item in conn.events
                         if at == number and isinstance(item, spec.Basic.Cancel)}
            for tag, queue in consumers.items():
                if self._name(queue) not in probe and tag not in cancelled:
                    return True
        return False

    def _confirms_due(self):
        """Whether a channel in confirm mode has publishes not yet confirmed: a durable
        message or a quorum queue's is confirmed once it is written, after the pings."""
        for (name, number), published in self.published.items():
            conn = self.connections[name]
            if not conn.open or number not in conn.channels:
                continue
            tags = [item.delivery_tag for at, item in conn.events
                    if at == number and isinstance(item, (spec.Basic.Ack, spec.Basic.Nack))]
            if max(tags, default=self.confirmed.get((name, number), 0)) < published:
                return True
        return False

    def _ping_all(self):
        for name in ("a", "b"):
            conn = self.connections[name]
            numbers = sorted(number for number in conn.channels if number < PROBE_CHANNEL)
            if not numbers:
                continue
            for number, reply in zip(numbers, conn.call_many([(n, _PING, (spec.Exchange.DeclareOk,)) for n in numbers])):
                if reply.name != "Exchange.DeclareOk":
                    conn.events.append((number, reply))
            if not conn.open:
                self._connection_gone(name)

    def _probe(self):
        """What exists: each queue's message and consumer counts (or why it cannot be
        seen), and which exchanges."""
        queues = [self.prefix + q for q in QUEUES] + sorted(self.queues_seen)
        names = [("queue", queue) for queue in queues] + [("exchange", self.prefix + x) for x in EXCHANGES]
        found = {}
        for (kind, name), reply in zip(names, self._passive_declares(names)):
            if reply.name == "Queue.DeclareOk":
                counts = self._counts(reply)
                found[self._name(name)] = counts[0] if len(counts) == 1 else counts
            elif reply.name == "Exchange.DeclareOk":
                found[self._name(name)] = "exchange"
            elif reply.reply_code != 404:
                found[self._name(name)] = reply.reply_code
        return found

    # -- answers as comparable lists ------------------------------------------------------------

    def _counts(self, declare_ok):
        """A queue's counts as clients may rely on them: RabbitMQ 3.10 counts a basic.get not
        yet settled as a quorum queue's consumer, and counts neither a stream's messages
        nor its consumers, so those are left out."""
        queue_type = self.queue_types.get(declare_ok.queue, "classic")
        if queue_type == "stream":
            return ["stream"]
        if queue_type == "quorum":
            return [declare_ok.message_count, "quorum"]
        return [declare_ok.message_count, declare_ok.consumer_count]

    def _name(self, value):
        """A name or text as both brokers would say it: prefix off, server names numbered."""
        value = value.replace(self.prefix, "")

        def number(match):
            real = match.group(0)
            if real not in self.server_names:
                self.server_names[real] = len(self.server_names) + 1
            return f"amq.{match.group(1)}-{self.server_names[real]}"
        return _SERVER_NAME.sub(number, value)

    def _item(self, frame):
        name = frame.name
        if isinstance(frame, (spec.Channel.Close, spec.Connection.Close)):
            return [name, frame.reply_code, frame.class_id, frame.method_id, self._name(frame.reply_text)]
        if isinstance(frame, spec.Queue.DeclareOk):
            return [name, self._name(frame.queue), *self._counts(frame)]
        if isinstance(frame, (spec.Queue.PurgeOk, spec.Queue.DeleteOk)):
            return [name, frame.message_count]
        if isinstance(frame, (spec.Basic.ConsumeOk, spec.Basic.CancelOk, spec.Basic.Cancel)):
            return [name, self._name(frame.consumer_tag)]
        if isinstance(frame, (spec.Basic.Deliver, spec.Basic.GetOk)):
            body, properties = frame.content
            item = [name, frame.delivery_tag, frame.redelivered, self._name(frame.exchange),
                    self._name(frame.routing_key), body.decode(), _received_properties(properties)]
            if isinstance(frame, spec.Basic.Deliver):
                item.insert(1, self._name(frame.consumer_tag))
            else:
                item.append(frame.message_count)
            return item
        if isinstance(frame, spec.Basic.Return):
            body, properties = frame.content
            return [name, frame.reply_code, self._name(frame.exchange), self._name(frame.routing_key),
                    body.decode()]
        if isinstance(frame, (spec.Basic.Ack, spec.Basic.Nack)):
            return [name, frame.delivery_tag, frame.multiple]
        return [name]

    # -- the operations --------------------------------------------------------------------------

    def _real_queue(self, name):
        if name == SERVER_NAMED:
            return self.last_server_queue or "amq.gen-none"
        return self.prefix + name

    def _real_exchange(self, name):
        return name if name.startswith("amq.") else self.prefix + name

    def _real_key(self, step):
        key = step["routing_key"]
        if key in QUEUES or key == SERVER_NAMED:
            return self._real_queue(key)
        return self.prefix + key if step["exchange"] in SHARED_EXCHANGES else key

    def _exchange_declare(self, conn, step):
        return conn.call(step["ch"], spec.Exchange.Declare(
            exchange=self._real_exchange(step["exchange"]), exchange_type=step["type"], passive=step["passive"],
            durable=step["durable"], auto_delete=step["auto_delete"], internal=step["internal"]),
            (spec.Exchange.DeclareOk,))

    def _exchange_delete(self, conn, step):
        return conn.call(step["ch"], spec.Exchange.Delete(exchange=self._real_exchange(step["exchange"]),
                                                          if_unused=step["if_unused"]), (spec.Exchange.DeleteOk,))

    def _queue_declare(self, conn, step):
        queue = self.prefix + step["queue"] if step["queue"] else ""
        reply = conn.call(step["ch"], spec.Queue.Declare(
            queue=queue, passive=step["passive"], durable=step["durable"], exclusive=step["exclusive"],
            auto_delete=step["auto_delete"], arguments=step["arguments"]), (spec.Queue.DeclareOk,))
        if reply.name == "Queue.DeclareOk":
            if not queue:
                self.last_server_queue = reply.queue
                self.queues_seen.add(reply.queue)
            if not step["passive"] and self._name(reply.queue) not in (self.last_probe or {}):
                self.queue_types[reply.queue] = step["arguments"].get("x-queue-type", "classic")
            if step["exclusive"] and not step["passive"]:
                self.exclusive[step["conn"]].add(reply.queue)
        return reply

    def _queue_bind(self, conn, step):
        return conn.call(step["ch"], spec.Queue.Bind(
            queue=self._real_queue(step["queue"]), exchange=self._real_exchange(step["exchange"]),
            routing_key=self._real_key(step), arguments=step["arguments"]), (spec.Queue.BindOk,))

    def _queue_unbind(self, conn, step):
        return conn.call(step["ch"], spec.Queue.Unbind(
            queue=self._real_queue(step["queue"]), exchange=self._real_exchange(step["exchange"]),
            routing_key=self._real_key(step), arguments=step["arguments"]), (spec.Queue.UnbindOk,))

    def _queue_purge(self, conn, step):
        return conn.call(step["ch"], spec.Queue.Purge(queue=self._real_queue(step["queue"])), (spec.Queue.PurgeOk,))

    def _queue_delete(self, conn, step):
        return conn.call(step["ch"], spec.Queue.Delete(queue=self._real_queue(step["queue"]),
                                                       if_unused=step["if_unused"], if_empty=step["if_empty"]),
                         (spec.Queue.DeleteOk,))

    def _basic_publish(self, conn, step):
        self.body_counter += 1
        if (step["conn"], step["ch"]) in self.published:
            self.published[(step["conn"], step["ch"])] += 1
        exchange = "" if step["exchange"] == "" else self._real_exchange(step["exchange"])
        conn.publish(step["ch"], spec.Basic.Publish(exchange=exchange, routing_key=self._real_key(step),
                                                    mandatory=step["mandatory"]),
                     f"m{self.body_counter}".encode(), step["properties"])

    def _basic_get(self, conn, step):
        reply = conn.call(step["ch"], spec.Basic.Get(queue=self._real_queue(step["queue"]), no_ack=step["no_ack"]),
                          (spec.Basic.GetOk, spec.Basic.GetEmpty))
        if reply.name == "Basic.GetOk" and not step["no_ack"]:
            self.delivery_tags[(step["conn"], step["ch"])].append(reply.delivery_tag)
        return reply

    def _basic_consume(self, conn, step):
        arguments = {}
        if "offset" in step:
            # A stream consumer needs a prefetch window: set on its channel if it has no
            # consumer yet (otherwise it would change the window of the one it has).
            if step["prefetch"] and not self.consumers[(step["conn"], step["ch"])]:
                conn.call(step["ch"], spec.Basic.Qos(prefetch_count=step["prefetch"]), (spec.Basic.QosOk,))
            if step["offset"] is not None:
                arguments["x-stream-offset"] = step["offset"]
        reply = conn.call(step["ch"], spec.Basic.Consume(
            queue=self._real_queue(step["queue"]), consumer_tag=step["tag"], no_ack=step["no_ack"],
            exclusive=step["exclusive"], arguments=arguments), (spec.Basic.ConsumeOk,))
        if reply.name == "Basic.ConsumeOk":
            self.consumers[(step["conn"], step["ch"])][reply.consumer_tag] = self._real_queue(step["queue"])
        return reply

    def _basic_cancel(self, conn, step):
        reply = conn.call(step["ch"], spec.Basic.Cancel(consumer_tag=step["tag"]), (spec.Basic.CancelOk,))
        self.consumers[(step["conn"], step["ch"])].pop(step["tag"], None)
        return reply

    def _tag(self, step):
        tag = step["tag"]
        if not isinstance(tag, str):
            return tag
        # Deliveries to consumers count too: take them from what has arrived so far.
        tags = self.delivery_tags[(step["conn"], step["ch"])]
        if not tags:
            return 1
        return {"last": tags[-1], "first": tags[0], "prev": tags[-2] if len(tags) > 1 else tags[0]}[tag]

    def _basic_ack(self, conn, step):
        conn.send(step["ch"], spec.Basic.Ack(delivery_tag=self._tag(step), multiple=step["multiple"]))

    def _basic_nack(self, conn, step):
        conn.send(step["ch"], spec.Basic.Nack(delivery_tag=self._tag(step), multiple=step["multiple"],
                                              requeue=step["requeue"]))

    def _basic_reject(self, conn, step):
        conn.send(step["ch"], spec.Basic.Reject(delivery_tag=self._tag(step), requeue=step["requeue"]))

    def _basic_recover(self, conn, step):
        return conn.call(step["ch"], spec.Basic.Recover(requeue=True), (spec.Basic.RecoverOk,))

    def _basic_qos(self, conn, step):
        if not step["global"] and self.consumers[(step["conn"], step["ch"])]:
            # GreenMQ applies it to the consumers there at once, RabbitMQ to later ones (README)
            return ["not sent: per-consumer qos on a channel with a consumer"]
        return conn.call(step["ch"], spec.Basic.Qos(prefetch_count=step["prefetch_count"], global_=step["global"]),
                         (spec.Basic.QosOk,))

    def _confirm_select(self, conn, step):
        reply = conn.call(step["ch"], spec.Confirm.Select(), (spec.Confirm.SelectOk,))
        if reply.name == "Confirm.SelectOk":
            self.published.setdefault((step["conn"], step["ch"]), 0)
        return reply

    def _tx_select(self, conn, step):
        return conn.call(step["ch"], spec.Tx.Select(), (spec.Tx.SelectOk,))

    def _tx_commit(self, conn, step):
        return conn.call(step["ch"], spec.Tx.Commit(), (spec.Tx.CommitOk,))

    def _tx_rollback(self, conn, step):
        return conn.call(step["ch"], spec.Tx.Rollback(), (spec.Tx.RollbackOk,))

    def _channel_close(self, conn, step):
        reply = conn.call(step["ch"], spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
                          (spec.Channel.CloseOk,))
        conn.channels.discard(step["ch"])
        return reply

    def _policy_path(self, policy):
        return f"/api/policies/{self.vhost}/{urllib.parse.quote(self.prefix + policy, safe='')}"

    def _policy_set(self, conn, step):
        queues = step["queues"]
        pattern = "^" + re.escape(self.prefix) + "(" + "|".join(re.escape(queue) for queue in queues) + ")$"
        status, _ = self.management.call("PUT", self._policy_path(step["policy"]), {
            "pattern": pattern, "definition": step["definition"], "priority": POLICIES[step["policy"]],
            "apply-to": "queues"})
        if status in (201, 204):
            self.policies[step["policy"]] = (set(queues), step["definition"])
        return ["policy.set", status, self._policies_in_effect()]

    def _policy_clear(self, conn, step):
        status, _ = self.management.call("DELETE", self._policy_path(step["policy"]))
        self.policies.pop(step["policy"], None)
        return ["policy.clear", status, self._policies_in_effect()]

    def _policies_in_effect(self):
        """{queue: the policy applied to it} for the sequence's queues that exist, once each
        shows the policy it should (the matching one of highest priority), or the time
        allowed has passed: RabbitMQ answers the request before the queues hear of it."""
        deadline = time.monotonic() + POLICY_SETTLE_SECONDS
        while True:
            found = {}
            for queue in QUEUES:
                if self.queue_types.get(self.prefix + queue) == "stream":
                    continue
                status, details = self.management.call("GET", f"/api/queues/{self.vhost}/"
                                                       f"{urllib.parse.quote(self.prefix + queue, safe='')}")
                if status == 200:
                    name = (details.get("policy") or "").replace(self.prefix, "") or None
                    found[queue] = [name, details.get("effective_policy_definition") or {}] if name else None
            expected = {queue: self._policy_for(queue) for queue in found}
            if found == expected or time.monotonic() > deadline:
                return found
            time.sleep(POLICY_POLL_SECONDS)

    def _policy_for(self, queue):
        inapplicable = INAPPLICABLE_POLICY_KEYS[self.queue_types.get(self.prefix + queue, "classic")]
        matching = [policy for policy, (queues, definition) in self.policies.items()
                    if queue in queues and not inapplicable.intersection(definition)]
        if not matching:
            return None
        policy = max(matching, key=POLICIES.get)
        return [policy, self.policies[policy][1]]

    def _connection_close(self, conn, step):
        reply = conn.call(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), (spec.Connection.CloseOk,))
        conn.drop()
        return reply


def _kind(item):
    if isinstance(item, spec.Basic.Deliver):
        return "deliveries"
    if isinstance(item, (spec.Basic.Return, spec.Basic.Ack, spec.Basic.Nack)):
        return "publish outcomes"
    return "other"


def _received_properties(properties):
    values = {}
    for name in ("content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "message_id", "timestamp", "message_type", "user_id", "app_id"):
        value = getattr(properties, name, None)
        if value is not None:
            values[name] = value.isoformat() if isinstance(value, datetime.datetime) else value
    return values


# -- recording and comparing ----------------------------------------------------------------------

def run_sequences(url, seeds, steps=STEPS_PER_SEQUENCE, management=None):
    """{seed: [[description, answer], ...]} for `seeds` on the broker at `url`, whose
    management API is at `management` (by default beside it, as RabbitMQ's)."""
    results = {}
    for seed in seeds:
        plan = generate(seed, steps)
        answers = Runner(url, seed, management).run(plan)
        results[str(seed)] = [[describe(step), answer] for step, answer in zip(plan, answers)]
    return results


def record(path, answers, url):
    """One step a line, so a re-recording shows in a diff as the steps that changed."""
    conn = Connection(url)
    conn.connect()
    product = conn.server_properties.get("product", "?")
    version = conn.server_properties.get("version", "?")
    conn.close()
    header = {"broker": f"{_text(product)} {_text(version)}",
              "recorded_by": "python -m tests.differential.amqp_diff --url URL --record FILE"}
    with open(path, "w") as out:
        out.write(json.dumps(header)[:-1] + ', "sequences": {')
        for number, (seed, steps) in enumerate(answers.items()):
            out.write(("," if number else "") + f"\n{json.dumps(seed)}: [")
            out.write(",".join("\n" + json.dumps(step, separators=(",", ":")) for step in steps))
            out.write("]")
        out.write("\n}}\n")


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def recorded(path):
    with open(path) as recorded_file:
        return json.load(recorded_file)["sequences"]


def differences(expected, actual, texts=False):
    """Lines naming each step whose answer differs, with both answers."""
    found = []
    for seed, steps in expected.items():
        got = actual.get(seed)
        if got is None:
            found.append(f"sequence {seed}: not run")
            continue
        for index, ((description, want), (other, have)) in enumerate(zip(steps, got)):
            if description != other:
                found.append(f"sequence {seed} step {index}: the generator changed ({description!r} != {other!r}); "
                             "re-record the reference answers")
                break
            if _comparable(want, texts) != _comparable(have, texts):
                found.append(f"sequence {seed} step {index}: {description}\n    reference: {json.dumps(want)}\n"
                             f"    this one:  {json.dumps(have)}")
                break       # what follows a difference differs for that reason
    return found


def _comparable(answer, texts):
    return answer if texts else [_without_text(item) for item in answer]


def _without_text(item):
    if isinstance(item, list):
        if item and item[0] in ("Channel.Close", "Connection.Close"):
            return item[:4]
        return [_without_text(part) for part in item]
    return item


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the broker to run the sequences on")
    parser.add_argument("--record", metavar="FILE", help="write the answers to FILE (as reference answers)")
    parser.add_argument("--compare", metavar="FILE", help="compare with the answers recorded in FILE")
    parser.add_argument("--reference", metavar="URL", help="compare with a live reference broker")
    parser.add_argument("--management-url", metavar="URL",
                        help="the HTTP API of the broker at --url (default: its AMQP port + 10000, as RabbitMQ's)")
    parser.add_argument("--reference-management-url", metavar="URL", help="likewise for --reference")
    parser.add_argument("--sequences", type=int, default=SEQUENCES)
    parser.add_argument("--steps", type=int, default=STEPS_PER_SEQUENCE)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--texts", action="store_true", help="compare reply texts too")
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.sequences)
    started = time.monotonic()
    answers = run_sequences(args.url, seeds, args.steps, args.management_url)
    print(f"{len(seeds)} sequences of {args.steps} steps in {time.monotonic() - started:.1f} s", file=sys.stderr)
    if args.record:
        record(args.record, answers, args.url)
    expected = None
    if args.compare:
        expected = recorded(args.compare)
    elif args.reference:
        expected = run_sequences(args.reference, seeds, args.steps, args.reference_management_url)
    if expected is not None:
        found = differences(expected, answers, args.texts)
        for line in found:
            print(line)
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
