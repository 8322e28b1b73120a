"""The brokers a blocking client may reach, and going from one to the next when one is lost.

A connection is given a host name (JSON lines), an amqp:// or amqps:// URL, or a list of
such URLs (the nodes of a cluster, say). This module reads them into the brokers the
connection goes round, paces its attempts to reach the next one, and keeps what the
program declared so that it can be declared again there. Connection owns the sockets and
the channels and does the reconnecting with these (see `Connection._fail_over`); the
rules live here, out of the way of the connection's per-message code.
"""

import os
import ssl as ssl_module
import time
import urllib.parse

from greenmq.client_amqp import AmqpWire
from greenmq.client_json_lines import JsonLinesWire

DEFAULT_PORT = 5680
PORT_ENVIRONMENT_VARIABLE = "GREENMQ_PORT"
# An amqp:// or amqps:// URL that a host name given without a port gives way to, so the
# examples' `Connection('localhost')` runs unchanged against any AMQP broker.
URL_ENVIRONMENT_VARIABLE = "GREENMQ_URL"
AMQP_PORTS = {"amqp": 5672, "amqps": 5671}

# Failover (given a list of URLs): the waits between attempts to reach the next broker,
# doubling from the first to the last, so a cluster restarting is not hammered; a lost
# connection is given up once no broker answered for this long. A connection closed with
# 320 (CONNECTION_FORCED: the broker is shutting down) fails over too; other closes are
# the program's error and are raised.
FAILOVER_FIRST_WAIT = 0.1
FAILOVER_MAX_WAIT = 5.0
FAILOVER_GIVE_UP_SECONDS = 60.0
FAILOVER_CLOSE_CODE = 320


def brokers(hosts, port, username, password, virtual_host, ssl):
    """The brokers to connect to, in the order given; more than one only as AMQP URLs
    (the JSON-lines protocol has no failover to offer)."""
    if not hosts:
        raise ValueError("no broker to connect to")
    brokers = [Broker(host, port, username, password, virtual_host, ssl) for host in hosts]
    if len(brokers) > 1 and any(broker.wire is not AmqpWire for broker in brokers):
        raise ValueError("failover takes amqp:// or amqps:// URLs only")
    return brokers


def fails_over(closed):
    """Whether a connection closed with this ConnectionClosed goes on with the next
    broker: it was lost, or the broker is shutting down."""
    return closed.code in (None, FAILOVER_CLOSE_CODE)


class Broker:
    """One broker to connect to: a host name (JSON lines) or an amqp(s):// URL, with
    the keyword arguments for what it leaves out."""

    def __init__(self, host, port, username, password, virtual_host, ssl):
        if port is None and "://" not in host and os.environ.get(URL_ENVIRONMENT_VARIABLE):
            host = os.environ[URL_ENVIRONMENT_VARIABLE]
        if "://" in host:
            host, port, username, password, virtual_host, ssl = parse_url(
                host, port, username, password, virtual_host, ssl)
            self.wire = AmqpWire
        else:
            if port is None:
                port = int(os.environ.get(PORT_ENVIRONMENT_VARIABLE, DEFAULT_PORT))
            self.wire = JsonLinesWire
        self.host, self.port, self.username, self.password = host, port, username, password
        self.virtual_host, self.ssl = virtual_host, ssl


def parse_url(url, port, username, password, virtual_host, ssl):
    """host, port, username, password, virtual host and TLS context from an amqp:// or
    amqps:// URL (percent-escaped, as pika and RabbitMQ read them: %2f is the vhost '/');
    what the URL leaves out keeps the value given."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in AMQP_PORTS:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: use amqp:// or amqps://")
    if parts.scheme == "amqps" and ssl is None:
        ssl = ssl_module.create_default_context()
    if parts.username is not None:
        username = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        password = urllib.parse.unquote(parts.password)
    if parts.path not in ("", "/"):
        virtual_host = urllib.parse.unquote(parts.path[1:])
    return (parts.hostname or "localhost", port or parts.port or AMQP_PORTS[parts.scheme],
            username, password, virtual_host, ssl)


class Backoff:
    """The waits of one failover between its attempts to reach the next broker, counted
    from when the connection was lost."""

    def __init__(self):
        self._wait = FAILOVER_FIRST_WAIT
        self._give_up_at = time.monotonic() + FAILOVER_GIVE_UP_SECONDS

    def next_wait(self):
        """How long to wait before the next attempt; None once that wait would end past
        FAILOVER_GIVE_UP_SECONDS: give up."""
        wait = self._wait
        if time.monotonic() + wait > self._give_up_at:
            return None
        self._wait = min(2 * wait, FAILOVER_MAX_WAIT)
        return wait


class Declarations:
    """What a failover declares again, in the order first declared: exchanges, queues,
    bindings (on channel 1), and each channel's prefetch, confirm mode and consumers."""

    def __init__(self):
        self._declared = {}

    def remember(self, channel, op, fields, reply):
        """Keep (or forget) what request `op` with `fields`, answered by `reply` on
        `channel`, declared."""
        declared = self._declared
        if fields.get("passive"):
            return
        if op == "exchange.declare":
            key, channel = ("exchange", fields["exchange"]), 1
        elif op == "queue.declare":
            key, channel = ("queue", reply["queue"]), 1
        elif op in ("queue.bind", "queue.unbind"):
            key, channel = ("binding", fields["queue"], fields["exchange"], fields["routing_key"],
                            repr(fields["arguments"])), 1
        elif op in ("qos", "confirm.select"):
            key = (op, channel)
        elif op == "consume":
            key = ("consumer", reply["consumer_tag"])
            fields["consumer_tag"] = reply["consumer_tag"]
        elif op == "exchange.delete":
            declared.pop(("exchange", fields["exchange"]), None)
            return
        elif op == "queue.delete":
            declared.pop(("queue", fields["queue"]), None)
            return
        elif op == "cancel":
            declared.pop(("consumer", fields["consumer_tag"]), None)
            return
        elif op == "channel.close":
            self._declared = {key: entry for key, entry in declared.items() if entry[0] != channel}
            return
        else:
            return
        if op == "queue.unbind":
            declared.pop(key, None)
        else:
            declared[key] = (channel, op, {name: value for name, value in fields.items()
                                           if name not in ("op", "id", "channel")})

    def declare_again(self, call):
        """Replay what was declared through `call(channel, op, **fields)`, which remembers
        each anew; kept whole if this broker too is lost half-way."""
        declared, self._declared = self._declared, {}
        renamed = {}                    # server-named queues: the old name -> the new one
        try:
            for key, (channel, op, fields) in declared.items():
                fields = dict(fields)
                if fields.get("queue") in renamed:
                    fields["queue"] = renamed[fields["queue"]]
                reply = call(channel, op, **fields)
                if op == "queue.declare" and not fields["queue"]:
                    renamed[key[1]] = reply["queue"]
        except BaseException:
            self._declared = declared
            raise
