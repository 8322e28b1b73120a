"""A virtual host: the registry of its exchanges, queues and bindings, and the one place
where a publish is routed to queues.

Operations take the session asking (`owner`): its user's permissions are checked (as in
RabbitMQ's access control table), and exclusive queues refuse everyone but the
connection that declared them. The broker's own operations (recovery, expiry, auto-delete)
pass no owner.
"""

import base64
import os

from .access import limit_reached
from .dead_letter import REJECTED, dead_lettered, is_cycle
from .errors import AccessRefused, NotFound, PreconditionFailed, PublishRefused, ResourceLocked, StoreUnavailable, Unsupported
from .exchange import DefaultExchange, exchange_class
from .message import MAX_NAME_BYTES
from .policy import OPERATOR_POLICY, POLICY, Policies, effective_definition, settings
from .queue_store import Queue, amqp_type, queue_type_refusal
from .quorum_queue import QuorumQueue
from .stats import MESSAGE_COUNTERS
from .stream import StreamQueue


# The queue types a declaration may name in x-queue-type (none: classic), each with the
# class whose queues are of that type (and whose argument table checks the declaration).
QUEUE_TYPES = {"classic": Queue, "quorum": QuorumQueue, "stream": StreamQueue}


def queue_class(arguments, what):
    """The class of queue a declaration's x-queue-type asks for; 406 when there is none."""
    queue_type = arguments.get("x-queue-type", "classic")
    cls = QUEUE_TYPES.get(queue_type) if type(queue_type) is str else None
    if cls is None:
        raise PreconditionFailed(f"invalid arg 'x-queue-type' for {what}: {queue_type_refusal(queue_type)}")
    return cls


PREDECLARED_EXCHANGES = (
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
)

# RabbitMQ's direct reply-to: a channel consuming this pseudo-queue (no-ack) may publish
# requests whose `reply_to` names it; each such channel gets a name under this prefix, and
# a reply published to the default exchange with that name as routing key goes straight
# to the channel's reply consumer, with no queue in between.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_NAME_PREFIX = DIRECT_REPLY_TO + "."

# x-queue-type -> the class of its queues; classic queues (no x-queue-type) are Queues.
class ReplyPseudoQueue:
    """What queue.declare answers for direct reply-to's names, which are no queues:
    0 messages and 1 consumer, as RabbitMQ answers."""

    __slots__ = ("name",)
    message_count = 0
    consumers = (None,)

    def __init__(self, name):
        self.name = name


class VirtualHost:
    def __init__(self, name, store, memory, scratch):
        self.name = name
        self.store = store          # where durable definitions and persistent messages go
        self.memory = memory        # the node's MemoryBudget, which its queues' messages count in
        self.scratch = scratch      # where its queues page what the store does not keep
        self.queues = {}
        self.exchanges = {"": DefaultExchange(self.queues)}
        self.published = 0          # messages accepted for routing, for the management API
        self.limits = {}            # max-connections, max-queues (access.LIMITS), set by the node
        self.reply_channels = {}    # direct reply-to name -> the Channel consuming its replies
        self.policies = Policies(name)
        # What deleted queues had counted, so node-wide totals never go backwards.
        self.deleted_queue_counts = dict.fromkeys(MESSAGE_COUNTERS, 0)
        # How many queues keep every message in the store (quorum queues): while there are
        # none, a transient publish skips the store's path altogether.
        self.queues_keeping_every_message = 0
        for exchange_name, type_name in PREDECLARED_EXCHANGES:
            self.exchanges[exchange_name] = exchange_class(type_name)(exchange_name, durable=True)

    def __repr__(self):
        return self.name

    # -- exchanges ---------------------------------------------------------------------

    def exchange(self, name):
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def declare_exchange(self, name, type_name="direct", passive=False, durable=False,
                         auto_delete=False, internal=False, arguments=None, owner=None):
        check_name(name, "exchange name")
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.exchange(name)
        if owner is not None:
            owner.check("configure", "exchange", name)
        cls = exchange_class(type_name)
        exchange = self.exchanges.get(name)
        what = f"exchange '{name}' in vhost '{self.name}'"
        alternate = (arguments or {}).get("alternate-exchange")
        if alternate is not None and type(alternate) is not str:
            raise PreconditionFailed(f"invalid type '{amqp_type(alternate)}' for arg 'alternate-exchange' in {what}")
        if exchange is None:
            if name.startswith("amq."):
                raise AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
            exchange = self.exchanges[name] = cls(name, durable, auto_delete, internal, arguments)
            self._apply_policies_to(exchange)
            if durable:
                self.store.put_exchange(self.name, name, type_name, auto_delete, internal, exchange.arguments)
            return exchange
        _equivalent(what, "type", type_name, exchange.type)
        _equivalent(what, "durable", durable, exchange.durable)
        _equivalent(what, "auto_delete", auto_delete, exchange.auto_delete)
        _equivalent(what, "internal", internal, exchange.internal)
        _equivalent(what, "alternate-exchange", alternate, exchange.arguments.get("alternate-exchange"))
        return exchange

    def delete_exchange(self, name, if_unused=False, owner=None):
        check_name(name, "exchange name")
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if owner is not None:
            owner.check("configure", "exchange", name)
        if name.startswith("amq.") and name in self.exchanges:
            raise AccessRefused(f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed")
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # deleting what is not there succeeds, as in RabbitMQ
        if if_unused and exchange.bindings:
            raise PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange):
        del self.exchanges[exchange.name]
        for destination in exchange.destinations():
            destination.bound_exchanges.discard(exchange)
        self._unbind_from_all(exchange)
        if exchange.durable:
            self.store.delete_exchange(self.name, exchange.name)

    # -- queues ------------------------------------------------------------------------

    def queue(self, name, owner=None):
        """The queue `owner` may use, by name."""
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise self._locked(name)
        return queue

    def _locked(self, name):
        return ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{name}' in vhost '{self.name}'. "
            "It could be originally declared on another connection or the exclusive "
            "property value does not match that of the original declaration.")

    def declare_queue(self, name="", passive=False, durable=False, exclusive=False,
                      auto_delete=False, arguments=None, owner=None):
        """Returns the queue; a server-named one when `name` is empty."""
        check_name(name, "queue name")
        if name == DIRECT_REPLY_TO or (passive and name in self.reply_channels):
            return ReplyPseudoQueue(name)
        arguments = arguments or {}
        if passive:
            queue = self.queue(name, owner)
            queue.touch()
            queue.drop_expired()    # declare-ok counts the messages left
            return queue
        # An exclusive queue ends with its connection, so RabbitMQ makes it transient whatever
        # `durable` says, and redeclaring it with the other `durable` is no difference.
        durable = durable and not exclusive
        if not name:
            name = "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
            cls = queue_class(arguments, f"queue '{name}' in vhost '{self.name}'")
            if cls is not Queue:    # a replicated queue's name is its identity in a cluster
                raise PreconditionFailed(f"Cannot declare a server-named queue for type {cls.rabbit_type}")
        if owner is not None:
            owner.check("configure", "queue", name)
        queue = self.queues.get(name)
        if queue is None:
            if name.startswith("amq.") and not name.startswith("amq.gen-"):
                raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
            limit = limit_reached(self.limits, "max-queues", self.queues.__len__)
            if limit is not None:
                raise PreconditionFailed(f"cannot declare queue '{name}': queue limit in vhost '{self.name}' "
                                         f"({limit}) is reached")
            what = f"queue '{name}' in vhost '{self.name}'"
            queue_class(arguments, what).validate(arguments, durable, exclusive, auto_delete, what)
            queue = self._add_queue(name, durable, owner if exclusive else None, auto_delete, arguments)
            if queue.store is not None:
                self.store.put_queue(self.name, name, auto_delete, queue.arguments)
            if exclusive and owner is not None:
                owner.exclusive_queues.add(queue)
            return queue
        if queue.exclusive_owner is not (owner if exclusive else None):
            raise self._locked(name)    # another's, or declared with the other `exclusive`
        what = f"queue '{name}' in vhost '{self.name}'"
        _equivalent(what, "durable", durable, queue.durable)
        _equivalent(what, "auto_delete", auto_delete, queue.auto_delete)
        if queue_class(arguments, what) is not type(queue):     # none and 'classic' are one type
            _equivalent(what, "x-queue-type", arguments.get("x-queue-type"), queue.arguments.get("x-queue-type"))
        for argument in queue.accepted_arguments:
            if argument != "x-queue-type":
                _equivalent(what, argument, arguments.get(argument), queue.arguments.get(argument))
        queue.touch()
        queue.drop_expired()
        return queue

    def _add_queue(self, name, durable, exclusive_owner, auto_delete, arguments):
        cls = queue_class(arguments, f"queue '{name}' in vhost '{self.name}'")
        queue = self.queues[name] = cls(self.name, name, durable, exclusive_owner, auto_delete,
                                        arguments, on_expired=self.remove_queue, store=self.store,
                                        dead_letter=self.dead_letter, memory=self.memory,
                                        scratch=self.scratch)
        if queue.keeps_every_message and queue.store is not None:
            self.queues_keeping_every_message += 1
        self._apply_policies_to(queue)
        return queue

    def delete_queue(self, name, if_unused=False, if_empty=False, owner=None):
        """queue.delete: returns how many ready messages went with the queue (0 if it was
        not there: deleting is idempotent, as in RabbitMQ)."""
        check_name(name, "queue name")
        if owner is not None:
            owner.check("configure", "queue", name)
        if name not in self.queues:
            return 0
        queue = self.queue(name, owner)
        if isinstance(queue, QuorumQueue) and (if_unused or if_empty):
            flag = "if-unused" if if_unused else "if-empty"
            raise Unsupported(f"cannot delete queue '{name}' in vhost '{self.name}'. queue.delete operations "
                              f"with {flag} flag set are not supported by quorum queues")
        if isinstance(queue, StreamQueue):
            # RabbitMQ 3.10 deletes a stream whatever they say, and counts none of its messages
            self.remove_queue(queue)
            return 0
        if if_unused and queue.consumers:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty:
            queue.drop_expired()
            if queue.message_count:
                raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' not empty")
        return self.remove_queue(queue)

    def purge_queue(self, name, owner=None):
        """queue.purge: returns how many ready messages went."""
        if owner is not None:
            owner.check("read", "queue", name)
        return self.queue(name, owner).purge()

    def remove_queue(self, queue):
        """Delete a queue without asking (expired, auto-deleted, its owner gone), telling
        its consumers; returns how many ready messages went with it."""
        if queue.deleted:
            return 0
        queue.drop_expired()    # dead-lettered as expired, not gone with the queue
        count = queue.message_count
        del self.queues[queue.name]
        queue.mark_deleted()
        for counter in MESSAGE_COUNTERS:
            self.deleted_queue_counts[counter] += getattr(queue, counter)
        if queue.store is not None:
            self.store.delete_queue(self.name, queue.name)
            if queue.keeps_every_message:
                self.queues_keeping_every_message -= 1
        for consumer in list(queue.consumers):
            consumer.channel.consumer_cancelled(consumer)
        self._unbind_from_all(queue)
        if queue.exclusive_owner is not None:
            queue.exclusive_owner.exclusive_queues.discard(queue)
        return count

    def remove_all(self):
        """Delete every queue and declared exchange, from the store too: the vhost is being
        deleted. Queues go first, so their timers stop and their consumers are told."""
        for queue in list(self.queues.values()):
            self.remove_queue(queue)
        for exchange in list(self.exchanges.values()):
            if exchange.name and not exchange.name.startswith("amq."):
                self._remove_exchange(exchange)

    # -- bindings ----------------------------------------------------------------------

    def bind(self, queue_name, exchange_name, routing_key="", arguments=None, owner=None):
        check_name(routing_key, "routing key")
        exchange, queue = self._binding_ends(queue_name, exchange_name, owner)
        self._bind(exchange, queue, routing_key, arguments, queue.store is not None)

    def bind_exchange(self, destination_name, source_name, routing_key="", arguments=None, owner=None):
        """exchange.bind: messages `source` routes to this binding go on through `destination`."""
        check_name(routing_key, "routing key")
        self._check_exchange_binding_access(destination_name, source_name, owner)
        source = self._bindable(source_name)
        destination = self._bindable(destination_name)
        self._bind(source, destination, routing_key, arguments, destination.durable)

    def _bind(self, source, destination, routing_key, arguments, destination_kept):
        """Kept in the store when both ends are (durable exchanges, queues the store keeps)."""
        if source.bind(destination, routing_key, arguments) and source.durable and destination_kept:
            self.store.put_binding(self.name, source.name, destination.name, routing_key, arguments,
                                   destination.kind)
        destination.bound_exchanges.add(source)

    def unbind(self, queue_name, exchange_name, routing_key="", arguments=None, owner=None):
        """Removing a binding that is not there succeeds, even from a queue or exchange that
        is not there or a queue exclusive to another connection, as in RabbitMQ: clients
        unbind on cleanup after an auto-delete queue or exchange already went."""
        self._check_binding_access(queue_name, exchange_name, owner)
        exchange = self._bindable(exchange_name, missing_ok=True)
        queue = self.queues.get(queue_name)
        if exchange is None or not exchange.has_binding(queue, routing_key, arguments):
            return
        self.queue(queue_name, owner)
        self._unbind(exchange, queue, routing_key, arguments, queue.store is not None)

    def unbind_exchange(self, destination_name, source_name, routing_key="", arguments=None, owner=None):
        """As `unbind`: removing a binding that is not there succeeds."""
        self._check_exchange_binding_access(destination_name, source_name, owner)
        source = self._bindable(source_name, missing_ok=True)
        destination = self._bindable(destination_name, missing_ok=True)
        if source is None or not source.has_binding(destination, routing_key, arguments):
            return
        self._unbind(source, destination, routing_key, arguments, destination.durable)

    def _unbind(self, source, destination, routing_key, arguments, destination_kept):
        source.unbind(destination, routing_key, arguments)
        if source.durable and destination_kept:
            self.store.delete_binding(self.name, source.name, destination.name, routing_key, arguments,
                                      destination.kind)
        if not any(key[0] is destination for key in source.bindings):
            destination.bound_exchanges.discard(source)
        self._auto_delete_exchange(source)

    def _unbind_from_all(self, destination):
        """`destination` (a queue or an exchange) is being deleted: no exchange routes to it."""
        for exchange in list(destination.bound_exchanges):
            exchange.unbind_destination(destination)
            self._auto_delete_exchange(exchange)
        destination.bound_exchanges.clear()

    def _binding_ends(self, queue_name, exchange_name, owner):
        self._check_binding_access(queue_name, exchange_name, owner)
        return self._bindable(exchange_name), self.queue(queue_name, owner)

    def _check_binding_access(self, queue_name, exchange_name, owner):
        if owner is not None:
            owner.check("write", "queue", queue_name)
            owner.check("read", "exchange", exchange_name)

    def _check_exchange_binding_access(self, destination_name, source_name, owner):
        if owner is not None:
            owner.check("write", "exchange", destination_name)
            owner.check("read", "exchange", source_name)

    def _bindable(self, exchange_name, missing_ok=False):
        check_name(exchange_name, "exchange name")
        if exchange_name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        return self.exchanges.get(exchange_name) if missing_ok else self.exchange(exchange_name)

    def _auto_delete_exchange(self, exchange):
        if exchange.auto_delete and not exchange.bindings and self.exchanges.get(exchange.name) is exchange:
            self._remove_exchange(exchange)

    # -- policies --------------------------------------------------------------------

    def set_policy(self, kind, name, pattern, definition, priority=0, apply_to="all"):
        """Add or replace a policy or operator policy (`kind`); it applies at once to the
        queues and exchanges there are, and to those declared later."""
        check_name(name, "policy name")
        self.policies.put(kind, name, pattern, definition, priority, apply_to)
        self.store.put_policy(self.name, kind, name, pattern, apply_to, priority, definition)
        self._apply_policies()

    def clear_policy(self, kind, name):
        """What it set goes at once: each queue and exchange falls back to the next policy
        matching it, or to its own arguments."""
        self.policies.delete(kind, name)
        self.store.delete_policy(self.name, kind, name)
        self._apply_policies()

    def _apply_policies(self):
        for queue in self.queues.values():
            self._apply_policies_to(queue)
        for exchange in self.exchanges.values():
            if exchange.name:
                self._apply_policies_to(exchange)

    def _apply_policies_to(self, target):
        """Which policy and operator policy apply to a queue or an exchange; its settings
        change only when the definition they make does, so setting an unrelated policy
        restarts no queue's x-expires clock."""
        policy = self.policies.winner(POLICY, target)
        operator_policy = self.policies.winner(OPERATOR_POLICY, target)
        definition = effective_definition(policy, operator_policy)
        target.policy, target.operator_policy = policy, operator_policy
        if definition != target.policy_definition:
            target.policy_definition = definition
            target.configure(settings(target.arguments, definition))

    def list_policies(self, kind):
        return self.policies.list(kind)

    # -- direct reply-to ---------------------------------------------------------------

    def open_reply_name(self, channel):
        """A new direct reply-to name for `channel`'s reply consumer: random, so one client
        cannot guess another's."""
        name = REPLY_NAME_PREFIX + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        self.reply_channels[name] = channel
        return name

    def close_reply_name(self, name):
        """Replies to `name` are unroutable from now on: its consumer or channel is gone."""
        self.reply_channels.pop(name, None)

    def _direct_reply(self, exchange, message):
        """A message the default exchange routed nowhere goes to the reply consumer its
        routing key names, if any; returns 1 if it did, else 0 (unroutable)."""
        if exchange.name or not message.routing_key.startswith(REPLY_NAME_PREFIX):
            return 0
        channel = self.reply_channels.get(message.routing_key)
        if channel is None:
            return 0
        channel.deliver(channel.reply_consumer, message, None)
        return 1

    # -- routing -----------------------------------------------------------------------

    def publish(self, exchange_name, message):
        """Route `message` through the named exchange into its queues; returns how many.
        Raises PublishRefused, once every queue has had it, when one refused it (x-overflow
        reject-publish)."""
        exchange = self.exchanges.get(exchange_name)
        if exchange is None or exchange.internal:
            self.publishable(exchange_name)     # raises what the publisher is told
        if len(message.routing_key) > MAX_NAME_BYTES // 4:    # short keys cannot be too long
            check_name(message.routing_key, "routing key")
        self.published += 1
        properties = message.properties
        if (exchange.forwards or exchange.alternate is not None or self.queues_keeping_every_message
                or (properties is not None and properties.get("delivery_mode") == 2)):
            return self._deliver(exchange, message)
        # The common case inline, as it runs per message: a transient message through an
        # exchange with neither exchange-to-exchange bindings nor an alternate exchange.
        queues = exchange.route(message.routing_key, message.properties)
        if not queues:
            return self._direct_reply(exchange, message)
        refused = False
        for queue in queues:
            if not queue.enqueue(message):
                refused = True
        if refused:
            raise PublishRefused()
        return len(queues)

    def _deliver(self, exchange, message, died_for=None):
        """Route `message` from `exchange`, keep it in the store for the durable queues
        among them if it is persistent (for quorum queues whatever its delivery mode), and
        give it to each; returns how many. A published message is refused when the store
        cannot take it; a dead-lettered one (`died_for` a reason) is not, and skips the
        queues it would go round a cycle through. PublishRefused once every queue has had
        it, when one refused it (x-overflow reject-publish)."""
        if exchange.forwards or exchange.alternate is not None:
            queues = self._route_on(exchange, message)
        else:
            queues = exchange.route(message.routing_key, message.properties)
            if not queues and died_for is None:
                return self._direct_reply(exchange, message)
        if died_for is not None and died_for != REJECTED:
            queues = [queue for queue in queues if not is_cycle(queue.name, message)]
        properties = message.properties
        persistent = properties is not None and properties.get("delivery_mode") == 2
        if persistent or self.queues_keeping_every_message:
            durable = [queue for queue in queues
                       if queue.store is not None and (persistent or queue.keeps_every_message)
                       and not queue.keeps_own_copies]
            if durable:
                if died_for is None and not self.store.available:
                    raise StoreUnavailable("the message store cannot be written: persistent message refused")
                self.store.add_message(message, durable)
        refused = False
        for queue in queues:
            if not queue.enqueue(message):
                refused = True
        if refused:
            raise PublishRefused()
        return len(queues)

    def _route_on(self, first, message):
        """The queues `message` reaches from `first` through exchange-to-exchange bindings
        and alternate exchanges, as RabbitMQ routes: an exchange whose own bindings route
        the message nowhere hands it to its alternate exchange; each exchange routes it at
        most once (so cycles end), and each queue gets it once however many paths lead there."""
        routing_key, properties = message.routing_key, message.properties
        queues = {}
        seen = {first}
        pending = [first]
        while pending:
            exchange = pending.pop()
            destinations = exchange.route(routing_key, properties)
            if not destinations and exchange.alternate is not None:
                alternate = self.exchanges.get(exchange.alternate)
                destinations = () if alternate is None else (alternate,)
            for destination in destinations:
                if destination.kind == "queue":
                    queues[destination] = None
                elif destination not in seen:
                    seen.add(destination)
                    pending.append(destination)
        return tuple(queues)

    # -- dead-lettering ----------------------------------------------------------------

    def dead_letter(self, queue, messages, reason):
        """Republish what died in `queue` to its dead-letter exchange, through that
        exchange's normal routing (dead_letter.py says what the new messages carry), as
        each was published (`origin`: a queue's copy may carry delivery state of its own,
        a quorum queue's x-delivery-count). With no such exchange they are dropped, as in
        RabbitMQ; copies that would go round an automatic cycle are dropped too. Returns
        those no queue took whole (routed nowhere, or refused by a length limit), which a
        queue dead-lettering at least once keeps."""
        exchange = self.exchanges.get(queue.dead_letter_exchange)
        if exchange is None:
            return messages
        refused = []
        for message in messages:
            try:
                routed = self._deliver(exchange, dead_lettered(message.origin or message, reason, queue.name,
                                                               exchange.name, queue.dead_letter_routing_key), reason)
            except PublishRefused:
                routed = 0
            if not routed:
                refused.append(message)
        return refused

    def publishable(self, exchange_name):
        """The exchange a publish names, if it may be published to."""
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFound(f"no exchange '{exchange_name}' in vhost '{self.name}'")
        if exchange.internal:
            raise AccessRefused(f"cannot publish to internal exchange '{exchange_name}' in vhost '{self.name}'")
        return exchange

    # -- recovery ----------------------------------------------------------------------

    def restore(self, recovered):
        """Durable exchanges, queues, bindings and messages of this virtual host from the
        store, before any client can see them."""
        for vhost, kind, name, pattern, apply_to, priority, definition in recovered.policies:
            if vhost == self.name:
                self.policies.put(kind, name, pattern, definition, priority, apply_to)
        for vhost, name, type_name, auto_delete, internal, arguments in recovered.exchanges:
            if vhost == self.name:
                self.exchanges[name] = exchange_class(type_name)(name, True, auto_delete, internal, arguments)
        self._apply_policies()      # to the predeclared exchanges too
        restored = []
        for vhost, name, auto_delete, arguments, count in recovered.queues:
            if vhost != self.name:
                continue
            queue = self._add_queue(name, True, None, auto_delete, arguments)
            restored.append(queue)
            if queue.keeps_own_copies:
                queue.recover(recovered.stream_starts.get((vhost, name)))
            else:
                queue.recover_backlog(count)
        for vhost, source, destination, routing_key, arguments, destination_kind in recovered.bindings:
            if vhost != self.name:
                continue
            exchange = self.exchanges.get(source)
            target = (self.exchanges if destination_kind == "exchange" else self.queues).get(destination)
            if exchange is not None and target is not None:
                exchange.bind(target, routing_key, arguments)
                target.bound_exchanges.add(exchange)
        # What expired while the broker was down ends as expiry always does, once the
        # bindings its dead-letter exchange may route it through are back.
        return sum(queue.drop_expired() for queue in restored)

    # -- listings for operators ------------------------------------------------------------
    # One row per object with rabbitmqctl's names: the JSON-lines listings (and so
    # greenmqctl) send the rows as they are; the management API adds its own members to them.

    def list_exchanges(self):
        return [exchange_row(exchange) for exchange in self.exchanges.values()]

    def list_queues(self):
        return [queue_row(queue) for queue in self.queues.values()]

    def list_consumers(self):
        return [{"queue": c.queue.name, "consumer_tag": c.tag, "channel": c.channel.number,
                 "connection": c.channel.session.name, "ack_required": not c.no_ack,
                 "exclusive": c.exclusive, "prefetch_count": c.prefetch_count, "arguments": c.arguments}
                for q in self.queues.values() for c in q.consumers]

    def list_bindings(self):
        """As `rabbitmqctl list_bindings`: the default exchange's implicit bindings first."""
        rows = [{"source": "", "destination": q.name, "destination_kind": "queue",
                 "routing_key": q.name, "arguments": {}} for q in self.queues.values()]
        for exchange in self.exchanges.values():
            if exchange.name == "":
                continue
            for (destination, routing_key, _), arguments in exchange.bindings.items():
                rows.append({"source": exchange.name, "destination": destination.name,
                             "destination_kind": destination.kind, "routing_key": routing_key,
                             "arguments": arguments})
        return rows


def exchange_row(exchange):
    return {"name": exchange.name, "type": exchange.type, "durable": exchange.durable,
            "auto_delete": exchange.auto_delete, "internal": exchange.internal, "arguments": exchange.arguments,
            **policy_columns(exchange)}


def queue_row(queue):
    ready, unacked = queue.message_count, queue.unacked_count
    return {"name": queue.name, "type": queue.queue_type, "durable": queue.durable, "exclusive": queue.exclusive,
            "auto_delete": queue.auto_delete, "arguments": queue.arguments,
            "messages_ready": ready, "messages_unacknowledged": unacked,
            "messages": ready + unacked, "consumers": len(queue.consumers), **policy_columns(queue)}


def policy_columns(target):
    """The policies a queue or an exchange is under, with RabbitMQ's names (null: none)."""
    return {"policy": target.policy.name if target.policy is not None else None,
            "operator_policy": target.operator_policy.name if target.operator_policy is not None else None,
            "effective_policy_definition": target.policy_definition}


def check_name(name, kind):
    """Names and routing keys are AMQP short strings: at most 255 bytes of UTF-8."""
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise PreconditionFailed(f"{kind} is longer than {MAX_NAME_BYTES} bytes")


def _equivalent(what, argument, received, current):
    if received != current or type(received) is not type(current):
        # RabbitMQ names the type too when only one side has the argument.
        show = _show_typed if received is None or current is None else _show
        raise PreconditionFailed(
            f"inequivalent arg '{argument}' for {what}: received {show(received)} but current is {show(current)}")


def _show(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    return f"'{value}'"


def _show_typed(value):
    return "none" if value is None else f"the value {_show(value)} of type '{amqp_type(value)}'"
