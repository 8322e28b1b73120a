"""Dead-lettering as RabbitMQ 3.10 does it: the new message a dead message becomes, with
its history in the `x-death` header, and the cycles in which it must not go round again.

A queue with `x-dead-letter-exchange` republishes what ends there rejected (nack or reject
without requeue), expired (queue TTL or per-message `expiration`), dropped by its length
limit (maxlen) or, in a quorum queue, returned too often (delivery_limit); the virtual host routes the new message like any publish (vhost.py).
Pure functions of messages and header values: no queues, no routing here.
"""

import datetime
import time

from .message import Message

# The reasons RabbitMQ writes into x-death: a queue names why a message died there with
# one of these, and a rejection is what lets a dead-letter cycle go round (is_cycle).
# delivery_limit: returned to a quorum queue more often than its x-delivery-limit.
REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT = "rejected", "expired", "maxlen", "delivery_limit"


def dead_lettered(message, reason, queue_name, exchange_name, routing_key=None):
    """The message `message` becomes when it dies in `queue_name` for `reason`, to be
    published to `exchange_name` with `routing_key` (None: its own). It keeps its body and
    properties (persistence too) but not its `expiration`, which x-death keeps as
    `original-expiration`; a death in the same queue for the same reason as before counts
    up that entry and moves it to the front instead of adding one."""
    properties = dict(message.properties) if message.properties else {}
    headers = dict(properties.get("headers") or {})
    info = {"reason": reason, "queue": queue_name,
            "time": datetime.datetime.fromtimestamp(int(time.time()), datetime.timezone.utc),
            "exchange": message.exchange, "routing-keys": [message.routing_key]}
    expiration = properties.pop("expiration", None)
    if expiration is not None:
        info["original-expiration"] = expiration
    deaths = headers.get("x-death")
    if deaths is None:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue_name
        headers["x-first-death-exchange"] = message.exchange
        headers["x-death"] = [{"count": 1, **info}]
    elif type(deaths) is not list:
        # A client republished a consumed message with x-death turned into something
        # else: RabbitMQ starts the history again.
        headers["x-death"] = [{"count": 1, **info}]
    else:
        for index, death in enumerate(deaths):
            if type(death) is dict and death.get("queue") == queue_name and death.get("reason") == reason:
                count = death.get("count")
                again = dict(death, count=count + 1 if type(count) is int else 1)
                headers["x-death"] = [_sorted(again)] + deaths[:index] + deaths[index + 1:]
                break
        else:
            headers["x-death"] = [_sorted({"count": 1, **info})] + deaths
    if routing_key is not None:
        headers.pop("CC", None)
    properties["headers"] = headers
    return Message(exchange_name, message.routing_key if routing_key is None else routing_key,
                   message.body, properties)


def _sorted(table):
    return dict(sorted(table.items()))


def is_cycle(queue_name, message):
    """Whether a dead-lettered `message` routed to `queue_name` would go round a cycle no
    client takes part in: it died in that queue before, and every death since (that one
    included) was automatic, not a rejection. Such a copy is dropped, as RabbitMQ drops it;
    a rejection in the cycle lets it go round."""
    deaths = message.properties["headers"]["x-death"]
    for death in deaths:
        if type(death) is not dict:
            return False        # something a client put there: not fully automatic
        if death.get("reason") == REJECTED:
            return False
        if death.get("queue") == queue_name:
            return True
    return False
