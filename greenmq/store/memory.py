"""The store of a broker that keeps nothing on disk (--in-memory), and of a core made
without one (unit tests): a restart starts empty."""

import bisect
import itertools
import time

from . import Recovered, Store, canonical_arguments, expiries


class MemoryStore(Store):
    """Nothing on disk: a commit is done the moment it is asked for, and `load` of a new
    store finds nothing. Holds what SqliteStore would write, so both keep one contract."""

    def __init__(self):
        super().__init__()
        self.vhosts = {}
        self.users = {}
        self.permissions = {}
        self.limits = {}           # (kind, name) -> limits
        self.policies = {}         # (vhost, kind, name) -> the Recovered row
        self.exchanges = {}
        self.queues = {}
        self.bindings = {}
        # (vhost, queue) -> {key: (message, published_at, its expiry there, redelivered, its priority there)}
        self.messages = {}
        # (vhost, queue) -> the keys kept for it in key order, removed ones included until
        # they are more than half: what read_queue finds its place in by bisection.
        self.keys = {}
        self.stream_starts = {}    # (vhost, queue) -> (first offset, first key)
        self._loaded = False

    def put_vhost(self, name):
        self.vhosts[name] = name

    def delete_vhost(self, name):
        self.vhosts.pop(name, None)
        for table in (self.exchanges, self.queues, self.messages, self.keys, self.stream_starts, self.bindings,
                      self.policies):
            for key in [key for key in table if key[0] == name]:
                del table[key]
        for key in [key for key in self.permissions if key[1] == name]:
            del self.permissions[key]
        self.limits.pop(("vhost", name), None)

    def put_user(self, name, password_hash, hashing_algorithm, tags):
        self.users[name] = (name, password_hash, hashing_algorithm, tuple(tags))

    def delete_user(self, name):
        self.users.pop(name, None)
        for key in [key for key in self.permissions if key[0] == name]:
            del self.permissions[key]
        self.limits.pop(("user", name), None)

    def put_permission(self, user, vhost, configure, write, read):
        self.permissions[user, vhost] = (user, vhost, configure, write, read)

    def delete_permission(self, user, vhost):
        self.permissions.pop((user, vhost), None)

    def put_limits(self, kind, name, limits):
        if limits:
            self.limits[kind, name] = dict(limits)
        else:
            self.limits.pop((kind, name), None)

    def put_policy(self, vhost, kind, name, pattern, apply_to, priority, definition):
        self.policies[vhost, kind, name] = (vhost, kind, name, pattern, apply_to, priority, definition)

    def delete_policy(self, vhost, kind, name):
        self.policies.pop((vhost, kind, name), None)

    def put_exchange(self, vhost, name, type_name, auto_delete, internal, arguments):
        self.exchanges[vhost, name] = (vhost, name, type_name, auto_delete, internal, arguments)

    def delete_exchange(self, vhost, name):
        self.exchanges.pop((vhost, name), None)
        for key in [key for key in self.bindings
                    if key[:2] == (vhost, name) or (key[0], key[2], key[5]) == (vhost, name, "exchange")]:
            del self.bindings[key]

    def put_queue(self, vhost, name, auto_delete, arguments):
        self.queues[vhost, name] = (vhost, name, auto_delete, arguments)
        self.messages[vhost, name] = {}
        self.keys[vhost, name] = []

    def delete_queue(self, vhost, name):
        self.queues.pop((vhost, name), None)
        self.messages.pop((vhost, name), None)
        self.keys.pop((vhost, name), None)
        self.stream_starts.pop((vhost, name), None)
        for key in [key for key in self.bindings if (key[0], key[2], key[5]) == (vhost, name, "queue")]:
            del self.bindings[key]

    def put_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        self.bindings[vhost, source, destination, routing_key, canonical_arguments(arguments), destination_kind] = arguments

    def delete_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        self.bindings.pop((vhost, source, destination, routing_key, canonical_arguments(arguments), destination_kind), None)

    def add_message(self, message, queues):
        key = self._record(message, queues).key
        now = time.time()
        prioritised = message.properties and message.properties.get("priority")
        expires = expiries(message, queues, now)
        for at, queue in enumerate(queues):
            self.messages[queue.vhost_name, queue.name][key] = (
                message, now, expires and expires[at], False, queue.level_of(message) if prioritised else 0)
            self.keys[queue.vhost_name, queue.name].append(key)

    def remove_messages(self, queue, messages, dead_lettered=False):
        self.message_writes += 1
        held = self.messages.get((queue.vhost_name, queue.name), {})
        for message in messages:
            if message.stored.refs is not None:
                message.stored.refs -= 1
            held.pop(message.stored.key, None)
        keys = self.keys.get((queue.vhost_name, queue.name))
        if keys is not None and len(keys) > 2 * len(held) + 64:
            keys[:] = [key for key in keys if key in held]

    def _places(self, queue, after_key, priority):
        """(key, what is kept for it) of `queue` above `after_key` (of `priority`), in key order."""
        held = self.messages.get((queue.vhost_name, queue.name), {})
        keys = self.keys.get((queue.vhost_name, queue.name), [])
        for at in range(bisect.bisect_right(keys, after_key), len(keys)):
            kept = held.get(keys[at])
            if kept is not None and (priority is None or kept[4] == priority):
                yield keys[at], kept

    def read_queue(self, queue, after_key, limit, priority=None):
        rows = []
        for key, (message, published_at, expires_at, redelivered, _) in self._places(queue, after_key, priority):
            rows.append((key, message.placed(True, None) if redelivered else message, published_at, expires_at))
            if len(rows) == limit:
                break
        return rows

    def paged_bytes(self, queue, after_key, count, priority=None):
        places = itertools.islice(self._places(queue, after_key, priority), count)
        return sum(len(kept[0].body) for _, kept in places)

    def paged_sizes(self, queue):
        sizes = {}
        for _, (message, _, _, _, priority) in self._places(queue, 0, None):
            count, size = sizes.get(priority, (0, 0))
            sizes[priority] = (count + 1, size + len(message.body))
        return sizes

    def remove_paged(self, queue, after_key, priority=None):
        self.message_writes += 1
        held = self.messages.get((queue.vhost_name, queue.name), {})
        for key in [key for key, _ in self._places(queue, after_key, priority)]:
            del held[key]

    def remove_paged_head(self, queue, after_key, count):
        self.message_writes += 1
        held = self.messages.get((queue.vhost_name, queue.name), {})
        for key in [key for key, _ in itertools.islice(self._places(queue, after_key, None), count)]:
            del held[key]

    def put_stream_start(self, vhost, name, first_offset, first_key):
        self.stream_starts[vhost, name] = (first_offset, first_key)

    def mark_redelivered(self, queue, messages):
        held = self.messages.get((queue.vhost_name, queue.name), {})
        for message in messages:
            key = message.stored.key
            stored_message, published_at, expires_at, _, priority = held[key]
            held[key] = (stored_message, published_at, expires_at, True, priority)

    def after_commit(self, callback, again=False):
        callback(self.open_batch, True)
        self.open_batch += 1

    def load(self):
        recovered = Recovered()
        recovered.first_start, self._loaded = not self._loaded, True
        recovered.vhosts = list(self.vhosts)
        recovered.users = list(self.users.values())
        recovered.permissions = list(self.permissions.values())
        recovered.limits = [(kind, name, dict(limits)) for (kind, name), limits in self.limits.items()]
        recovered.policies = list(self.policies.values())
        recovered.exchanges = list(self.exchanges.values())
        recovered.bindings = [key[:4] + (arguments, key[5]) for key, arguments in self.bindings.items()]
        recovered.stream_starts = dict(self.stream_starts)
        recovered.queues = [(vhost, name, auto_delete, arguments, len(self.messages[key]))
                            for key, (vhost, name, auto_delete, arguments) in self.queues.items()]
        return recovered

    def close(self):
        pass

