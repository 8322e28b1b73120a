"""What survives a restart: durable exchanges, queues and bindings, users, permissions,
virtual hosts, their limits and policies, and the persistent messages in durable queues, behind one
small interface.

The core writes through a `Store` on the hub and never waits for it: writes are accepted at
once and become durable with a later commit. `after_commit(callback)` is the one "durable
now" signal: it runs `callback(batch, ok)` on the hub once the batch holding everything
written so far is committed. Whatever promises "on disk" waits for it: a publisher confirm
through it, and `tx.commit-ok` and an HTTP publish through `durably`, which blocks its own
greenlet (a connection's reader, an HTTP request), never the hub.

`open_store` picks the implementation: `memory.MemoryStore` (nothing outlives the process)
or `sqlite.SqliteStore` (an SQLite database, committed in groups by a thread of its own,
`writer.WriterThread`).

A message routed to several durable queues is stored once, with a place per queue; the
`Stored` record on the message counts the queues still holding it.

Until its commit a message is held by the store too (a paged one by the store alone), so a
store counts what it has accepted but not yet written in the node's memory budget
(`counts_in`): when the disk falls behind, publishers are blocked rather than the
uncommitted batch growing without bound.
"""

import abc
import logging

from gevent.event import AsyncResult

from ..errors import StoreUnavailable
from ..message import properties_to_json
from ..stats import LatencyHistogram

# Upper bounds (seconds) of the commit latency histogram in /metrics: from a cached write
# (about 1 ms) through a typical fsync (5-50 ms) to a disk in trouble.
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StoreError(Exception):
    """The store cannot be opened; the text is one sentence naming the file."""


class StoreReadError(Exception):
    """A store cannot read messages back now (its disk returns errors); nothing was taken,
    so the reader tries again later. The text says why."""


class ReadFailures:
    """Whether a store's reads fail (its disk returns errors), logged once as they begin and
    once as they end, however often its readers try meanwhile."""

    def __init__(self, name):
        self.name = name            # "the message store PATH": what the log lines call it
        self.failing = False

    def failed(self, error):
        """A read failed for `error` (text): raises StoreReadError."""
        if not self.failing:
            logging.getLogger("greenmq.store").error(
                "cannot read %s: %s; the messages paged there wait until it can be read", self.name, error)
            self.failing = True
        raise StoreReadError(error)

    def succeeded(self):
        if self.failing:
            logging.getLogger("greenmq.store").warning("%s is readable again", self.name)
            self.failing = False


class Stored:
    """The store's record of one persistent message: its key, which orders stored messages
    as they were published, and how many durable queues hold it in memory. `refs` None:
    some queue paged it (queue_store.ReadyList), so the count is unknown and the store asks
    its own places whether the message is still held when a queue lets it go."""

    __slots__ = ("key", "refs")

    def __init__(self, key, refs):
        self.key = key
        self.refs = refs


class Recovered:
    """What a store held at start: definitions as plain values, messages per queue."""

    def __init__(self):
        self.first_start = False    # nothing was ever stored: the node sets itself up
        self.vhosts = []      # names
        self.users = []       # (name, password_hash, hashing_algorithm, tags)
        self.permissions = [] # (user, vhost, configure, write, read)
        self.limits = []      # ("vhost" or "user", its name, {limit name: value})
        self.policies = []    # (vhost, kind, name, pattern, apply_to, priority, definition)
        self.exchanges = []   # (vhost, name, type, auto_delete, internal, arguments)
        # (vhost, name, auto_delete, arguments, how many messages it holds): each queue reads
        # its messages back itself (`Store.read_queue`), so a start costs no more with a backlog.
        self.queues = []
        # (vhost, name) -> (first offset, its message's key) of a stream retention truncated
        self.stream_starts = {}
        self.bindings = []    # (vhost, source, destination, routing_key, arguments, destination_kind)
        self.clean = True     # the last run ended with a clean stop


class _Uncounted:
    """Where a store made without a node (a test of the store alone) counts its unwritten
    bytes: nowhere that anyone reads."""

    __slots__ = ("held_bytes",)

    def __init__(self):
        self.held_bytes = 0


def open_store(data_dir):
    """The store for `data_dir`, or a MemoryStore when it is None."""
    # Imported here: both implement the interface below, so they import this module.
    if data_dir is None:
        from .memory import MemoryStore
        return MemoryStore()
    from .sqlite import SqliteStore
    return SqliteStore(data_dir)


class Store(abc.ABC):
    """The interface the core writes through. Writes are accepted at once and become
    durable with the next commit; `available` is False while commits fail, and then
    persistent messages must be refused rather than accepted into thin air."""

    def __init__(self):
        self.open_batch = 1        # the batch that writes made now will be committed in
        self.available = True
        self.last_key = 0          # of the last message kept; `load` continues after the stored ones
        # Messages kept and removals accepted so far: `durably` compares it before and
        # after, so a path that wrote nothing never waits.
        self.message_writes = 0
        self.commit_seconds = LatencyHistogram(COMMIT_SECONDS_BUCKETS)
        self.memory = _Uncounted()  # the budget unwritten messages count in (`counts_in`)

    def counts_in(self, memory):
        """Count the bytes of messages accepted and not yet committed in `memory` (the
        node's MemoryBudget, or anything with `held_bytes`) from now on."""
        self.memory = memory

    # -- definitions ---------------------------------------------------------------------

    @abc.abstractmethod
    def put_vhost(self, name):
        """Keep a virtual host."""

    @abc.abstractmethod
    def delete_vhost(self, name):
        """And everything in it: permissions, exchanges, queues, bindings, messages."""

    @abc.abstractmethod
    def put_user(self, name, password_hash, hashing_algorithm, tags):
        """Keep a user, or its new password or tags."""

    @abc.abstractmethod
    def delete_user(self, name):
        """And the user's permissions."""

    @abc.abstractmethod
    def put_permission(self, user, vhost, configure, write, read):
        """Keep what a user may do in a virtual host."""

    @abc.abstractmethod
    def delete_permission(self, user, vhost):
        """The user may do nothing in the virtual host any more."""

    @abc.abstractmethod
    def put_limits(self, kind, name, limits):
        """Keep a vhost's or a user's (`kind`) limits; {} forgets them. Deleting the vhost
        or the user forgets them too."""

    @abc.abstractmethod
    def put_policy(self, vhost, kind, name, pattern, apply_to, priority, definition):
        """Keep a policy or an operator policy (`kind`), or its new version."""

    @abc.abstractmethod
    def delete_policy(self, vhost, kind, name):
        """Forget a policy. Deleting the vhost forgets its policies too."""

    @abc.abstractmethod
    def put_exchange(self, vhost, name, type_name, auto_delete, internal, arguments):
        """Keep a durable exchange."""

    @abc.abstractmethod
    def delete_exchange(self, vhost, name):
        """And every binding from it or to it."""

    @abc.abstractmethod
    def put_queue(self, vhost, name, auto_delete, arguments):
        """Keep a durable queue, so persistent messages can be kept for it."""

    @abc.abstractmethod
    def delete_queue(self, vhost, name):
        """And every binding to it and its place for every message."""

    @abc.abstractmethod
    def put_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        """Keep a binding between durable ends; `destination_kind` is "queue", or "exchange"
        for an exchange-to-exchange binding."""

    @abc.abstractmethod
    def delete_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        """Forget a binding."""

    # -- messages ------------------------------------------------------------------------

    @abc.abstractmethod
    def add_message(self, message, queues):
        """Keep `message` for `queues` (durable, all of them), each place with the expiry
        the queue gives it now (`expiries`); marks it `stored`."""

    def _record(self, message, queues):
        """`message`'s record, keyed after every message kept before it."""
        self.last_key += 1
        self.message_writes += 1
        record = message.stored = Stored(self.last_key, len(queues))
        return record

    @abc.abstractmethod
    def remove_messages(self, queue, messages, dead_lettered=False):
        """`queue` is done with `messages` (all `stored`). `dead_lettered`: their copies
        were just kept for their dead-letter queues, so one ending unwritten is confirmed
        with this batch, which keeps the copies, not before (on_end_before_write)."""

    def on_end_before_write(self, message, callback, argument):
        """Call `callback(argument)` should `message`, kept by this batch, end on every queue
        before the batch is written: it never needs the disk then, and its publisher need
        not wait for the commit (RabbitMQ confirms a message its store drops unwritten,
        acked before the write). A store whose commits end at once has nothing to call."""

    @abc.abstractmethod
    def read_queue(self, queue, after_key, limit, priority=None):
        """Up to `limit` committed messages of `queue` with keys above `after_key`, in key
        order, as [(key, message, published_at, expires_at)]: time.time() when it was kept
        (what a stream's timestamps are), and the wall-clock time it expires in `queue` as
        given when it was kept (None: never); only those of `priority`
        (`queue.level_of(message)` when it was kept) unless that is None.
        Blocks the calling greenlet, never the hub. What is not committed yet is not there:
        a reader keeps the newest messages in memory until `after_commit` says they are.
        When its disk cannot be read it raises StoreReadError, with nothing taken: the
        reader tries again later."""

    @abc.abstractmethod
    def paged_bytes(self, queue, after_key, count, priority=None):
        """The bodies' bytes of the next `count` messages `read_queue` would give, all
        committed first. Blocks the calling greenlet, never the hub."""

    @abc.abstractmethod
    def paged_sizes(self, queue):
        """At start: {priority: (count, bytes of the bodies)} of `queue`'s messages, for a
        queue that pages by priority or counts bytes. Blocks the calling greenlet."""

    @abc.abstractmethod
    def remove_paged(self, queue, after_key, priority=None):
        """`queue` is done with every stored message of its own with a key above
        `after_key` (of `priority`, unless None): its paged messages, purged or deleted
        without being read back. The messages no other queue holds go too."""

    @abc.abstractmethod
    def remove_paged_head(self, queue, after_key, count):
        """`queue` is done with the first `count` of its stored messages with keys above
        `after_key`: paged messages dropped unread (x-overflow drop-head). The messages no
        other queue holds go too. Later reads do not see them."""

    @abc.abstractmethod
    def put_stream_start(self, vhost, name, first_offset, first_key):
        """Keep where a stream's log starts now that retention dropped what came before:
        the offset of its first message, and that message's key. `load` gives it back in
        `stream_starts`; deleting the queue forgets it."""

    @abc.abstractmethod
    def mark_redelivered(self, queue, messages):
        """At a clean stop: these may have been delivered, so say so when they return."""

    # -- commits -------------------------------------------------------------------------

    @abc.abstractmethod
    def after_commit(self, callback, again=False):
        """Run `callback(batch, ok)` on the hub once everything written so far is committed
        (ok True) or could not be written (ok False); once per batch however often asked.
        Committed means synced to disk for new messages and definitions; removals (acks)
        may reach the disk only with the next synced commit (see sqlite.py). `again`: the
        caller is likely to write and ask again once called back (a publisher waiting for
        each confirm), so the next commit may wait a little for it and share its fsync."""

    def durably(self, operation, *arguments):
        """`operation(*arguments)`, returned once the messages it kept or removed are
        committed: the wait behind `tx.commit-ok` and an HTTP publish's answer. Blocks the
        calling greenlet, which must not be the hub; one that wrote no message does not
        wait. StoreUnavailable when the commit failed."""
        writes = self.message_writes
        result = operation(*arguments)
        if self.message_writes != writes:
            if not self.committed():
                raise StoreUnavailable(
                    "the message store cannot be written: what was just published or acked is not on disk")
        return result

    def committed(self):
        """Whether everything written so far is committed, once it is (or could not be):
        blocks the calling greenlet, which must not be the hub."""
        done = AsyncResult()
        self.after_commit(lambda batch, ok: done.set(ok))
        return done.get()

    @abc.abstractmethod
    def load(self):
        """A `Recovered` with everything stored, messages in publish order per queue."""

    @abc.abstractmethod
    def close(self):
        """Commit what is pending and mark the stop clean."""


def expiries(message, queues, now):
    """When `message`, taken by `queues` at wall time `now`, expires in each of them (None:
    never), or None when it expires in none. A message keeps the expiry it was given when
    a queue took it, whatever the queue's TTL is later (as in RabbitMQ), so its place keeps
    it: read back after paging or a restart it expires when it would have in memory."""
    ttl = message.ttl
    if ttl is None:
        for queue in queues:
            if queue.message_ttl is not None:
                break
        else:
            return None
    return [None if given is None else now + given / 1000.0
            for given in (queue.effective_ttl(message) for queue in queues)]


def canonical_arguments(arguments):
    """Arguments as a key: equal tables give equal text (properties_to_json sorts keys)."""
    return properties_to_json(arguments or {})
