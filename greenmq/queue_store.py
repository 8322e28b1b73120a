"""Queues: the ready messages, the consumers served round-robin within their prefetch
windows, and each message's life from enqueue to its end.

A queue is the one owner of its messages' lives. A message leaves the ready list either
handed out (`_hand_out`: to an acking client it goes as a `Delivery`, outstanding until
`settle` ends it) or through `_forget`, the single door through which a message ends
here: acked, rejected, expired, purged, or gone with its queue. The unacked counts are
the sizes of the sets of deliveries outstanding, and they, the durable store and the
node's count of the memory messages hold (memory.py: added at `enqueue` and `restore`,
subtracted in `_forget`, which a no-ack hand-out goes through too) hang off these places
and nowhere else. A message's body and MESSAGE_OVERHEAD_BYTES count once, while its
`holders` (the queues holding it, which share the body) is above zero; each further queue
holding it counts QUEUE_ENTRY_BYTES.

Delivery tags belong to the channel (session.py), which a consumer points back to.
Nothing here parses or encodes anything.
"""

import heapq
import itertools
import logging
import time
from collections import deque

import gevent

from .dead_letter import EXPIRED, MAXLEN, REJECTED
from .errors import AccessRefused, PreconditionFailed
from .memory import MESSAGE_OVERHEAD_BYTES, QUEUE_ENTRY_BYTES
from .message import MAX_EXPIRY_MS
from .policy import NOT_FOR_CLASSIC_QUEUES
from .store import StoreReadError

log = logging.getLogger("greenmq.queue")

# RabbitMQ's cap on x-max-priority: each priority is a list of its own, so more would cost
# memory and dispatch time for no use (RabbitMQ itself recommends at most 10).
MAX_PRIORITY = 255

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")

# The fewest paged messages read back at once: a lazy queue (window 0) reads this many when
# it runs dry, so a consumer is not fed one store read per message; few enough that a lazy
# queue holds next to nothing ahead.
PAGE_IN_MIN = 64

# After a read of the paged tail failed (the disk returned errors), the queue tries again
# this often, not at each dispatch: a disk in trouble is not asked once per message. Its
# messages wait meanwhile, counted as ready; a purge or a delete ends them.
PAGE_IN_RETRY_SECONDS = 1.0

# Messages read at once by a queue that keeps all of its messages in memory (one that does
# not page: a quorum queue) at start: the thread-pool hop costs little per message.
RECOVER_BATCH = 1000


def amqp_type(value):
    """The AMQP field type RabbitMQ names in its refusals for a value of this type."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -2**31 <= value < 2**31 else "long"
    return {str: "longstr", float: "double", dict: "table", list: "array",
            type(None): "void"}.get(type(value), type(value).__name__)


def _integer(minimum=0, maximum=None, zero=True):
    """RabbitMQ's check of an integer argument, as a function giving its refusal or None."""
    def check(value, arguments):
        if type(value) is not int:
            return f'"expected integer, got {amqp_type(value)}"'
        if value < minimum:
            return f"{{value_negative,{value}}}"
        if value == 0 and not zero:
            return f"{{value_zero,{value}}}"
        if maximum is not None and value > maximum:
            return f"{{max_value_exceeded,{value}}}"
        return None
    return check


def _string(choices=None, unsupported=None):
    def check(value, arguments):
        if type(value) is not str:
            return f"{{unacceptable_type,{amqp_type(value)}}}"
        if choices is not None and value not in choices:
            return unsupported.format(value)
        return None
    return check


def _boolean(value, arguments):
    return None if type(value) is bool else f"{{unacceptable_type,{amqp_type(value)}}}"


def _dead_letter_routing_key(value, arguments):
    if "x-dead-letter-exchange" not in arguments:
        return "routing_key_but_no_dlx_defined"
    return _string()(value, arguments)


def queue_type_refusal(value):
    """Why x-queue-type `value` is refused: the vhost asks only for a value its table of
    queue types (vhost.QUEUE_TYPES) lacks."""
    return _string((), "\"unsupported queue type '{}'\"")(value, {})


def _accepted(value, arguments):
    return None


# The arguments of a classic queue, each with RabbitMQ's check of its value (a function
# giving the refusal's reason, or None). A redeclare must repeat them all alike.
# x-queue-type is checked before a type is chosen (by the vhost); x-queue-mode lazy pages
# a durable queue with no window (see `configure`); the others of the last group only tune
# RabbitMQ's internals, so they are accepted and have no effect here.
QUEUE_ARGUMENTS = {
    "x-message-ttl": _integer(maximum=MAX_EXPIRY_MS),
    "x-expires": _integer(maximum=MAX_EXPIRY_MS, zero=False),
    "x-dead-letter-exchange": _string(),
    "x-dead-letter-routing-key": _dead_letter_routing_key,
    "x-max-length": _integer(),
    "x-max-length-bytes": _integer(),
    "x-overflow": _string(OVERFLOW_MODES, "invalid_overflow"),
    "x-max-priority": _integer(maximum=MAX_PRIORITY),
    "x-single-active-consumer": _boolean,
    "x-queue-type": _accepted,
    "x-queue-mode": _string(("default", "lazy"), "\"unsupported queue mode '{}'\""),
    "x-queue-version": _integer(minimum=1, maximum=2),
    "x-queue-master-locator": _accepted,
}

# Arguments of other queue types (quorum, stream): they change what a queue does, and a
# classic queue cannot do it, so they are refused as RabbitMQ refuses them for classic queues.
CLASSIC_REFUSED_ARGUMENTS = (
    "x-delivery-limit", "x-dead-letter-strategy", "x-max-in-memory-length", "x-max-in-memory-bytes",
    "x-quorum-initial-group-size", "x-initial-cluster-size", "x-queue-leader-locator",
    "x-max-age", "x-stream-max-segment-size-bytes",
)


class PagedRun:
    """Ready messages held by a store alone (see Queue.enqueue): the next `count` messages
    of the queue in `store` with keys above `after_key` (of one priority, when the list
    holding the run is a priority's: see ReadyList.priority), read back with
    `Store.read_queue`, their bodies `bytes` long in all (None: not known, a backlog
    recovered by a queue that does not count bytes). One per stretch of pageable messages,
    however long, so a paged message costs no memory.

    A run's messages have the lowest keys of its queue's above `after_key` when its turn
    comes: a store gives keys in the order messages are kept, a run grows only while it is
    last in the tail, and the scratch store, whose runs made by `ReadyList.page_out` may
    come before runs with lower keys, forgets a row as it is read back."""

    __slots__ = ("store", "after_key", "count", "bytes")

    def __init__(self, store, after_key, count, bytes):
        self.store = store
        self.after_key = after_key
        self.count = count
        self.bytes = bytes


class ReadyList:
    """Ready messages in publish order. Published messages join at the tail; requeued ones
    return to their original place through a heap keyed by their `order`, so putting back
    k messages costs O(k log k) however many wait behind them (the old way, popping every
    older waiting message per requeue, held the hub for seconds at depth). Every requeued
    message is older than every fresh one (messages leave in order, so those still fresh
    came later), which is why the heap is simply taken first.

    Behind `fresh` (the window in memory) a queue may have a paged `tail`: PagedRuns of
    messages on disk only (persistent ones of a durable queue in the durable store, others
    in the scratch store while memory is short), and between them the messages kept in
    memory, in order. While the tail holds anything every new message joins it, so the order
    stays; the queue reads runs back into `fresh` as it empties (Queue._page_in). A
    priority's list (in ReadyLevels) knows its `priority`, which the store reads its runs
    by; a plain queue's is None: its runs are all its stored messages above a key. The
    window is counted in messages and in the bytes of their bodies (`fresh_bytes`), and
    either bound sends what comes beyond it to the tail.

    `fresh_bytes` changes wherever `fresh` does, here and in Queue._deliver_ready, which
    takes from a plain list's `fresh` directly."""

    __slots__ = ("fresh", "fresh_bytes", "returned", "tail", "tail_count", "priority")

    def __init__(self, priority=None):
        self.fresh = deque()        # never delivered, in publish order
        self.fresh_bytes = 0        # of the bodies in `fresh`
        self.returned = []          # heap of (order, message): delivered and requeued
        self.tail = deque()         # after `fresh`: PagedRuns and messages kept in memory
        self.tail_count = 0         # the messages in `tail`, paged or not
        self.priority = priority

    def __len__(self):
        return len(self.fresh) + len(self.returned) + self.tail_count

    def append(self, message):
        if self.tail:
            self.tail.append(message)
            self.tail_count += 1
        else:
            self.fresh.append(message)
            self.fresh_bytes += len(message.body)

    def beyond_window(self, message, window, window_bytes):
        """Whether `message` would join this list beyond its window of `window` messages
        and `window_bytes` bytes of bodies."""
        return self.tail or len(self.fresh) >= window or self.fresh_bytes + len(message.body) > window_bytes

    def level_window(self, window):
        """The window of each of its lists, for a queue's window of `window` messages."""
        return window

    def page(self, store, key, message):
        """`message`, kept in `store` as `key`, joins the tail on disk only."""
        tail = self.tail
        run = tail[-1] if tail else None
        if type(run) is not PagedRun or run.store is not store:
            run = PagedRun(store, key - 1, 0, 0)
            tail.append(run)
        run.count += 1
        if run.bytes is not None:
            run.bytes += len(message.body)
        self.tail_count += 1

    def ends_in_run_of(self, store, message):
        """Whether the tail `message` would join ends in a PagedRun in `store`."""
        tail = self.tail
        return bool(tail) and type(tail[-1]) is PagedRun and tail[-1].store is store

    def recovered(self, store, count, bytes=None):
        """At start: the list's `count` messages in `store` (`bytes` long), all paged."""
        if count:
            self.tail.append(PagedRun(store, 0, count, bytes))
            self.tail_count += count

    def next_run(self):
        """The tail's first PagedRun, once the messages in memory before it are in
        `fresh`; None when the tail is empty."""
        tail, fresh = self.tail, self.fresh
        while tail and type(tail[0]) is not PagedRun:
            message = tail.popleft()
            fresh.append(message)
            self.fresh_bytes += len(message.body)
            self.tail_count -= 1
        return tail[0] if tail else None

    def _half_empty(self, window, window_bytes):
        return len(self.fresh) <= window // 2 and self.fresh_bytes <= window_bytes // 2

    def wants_page_in(self, window, window_bytes):
        """Whether the tail is due to be read back: the window is at most half full, in
        messages and in bytes."""
        return bool(self.tail) and self._half_empty(window, window_bytes)

    def due_run(self, window, window_bytes):
        """(this list, the PagedRun to read back now) or None: see `wants_page_in`."""
        run = self.next_run()
        if run is None or not self._half_empty(window, window_bytes):
            return None
        return self, run

    def paged_in(self, run, messages, last_key, count):
        """The first `count` messages of `run` (the last with `last_key`) left it: `messages`
        are them, in memory now (fewer only if the store lost some)."""
        self.fresh.extend(messages)
        read_bytes = sum(len(message.body) for message in messages)
        self.fresh_bytes += read_bytes
        run.after_key = last_key
        run.count -= count
        if run.bytes is not None:
            run.bytes -= read_bytes
        self.tail_count -= count
        if not run.count:
            self.tail.popleft()
            self.next_run()

    def drop_paged_head(self, run, count):
        """The first `count` messages of `run`, the tail's first item, left its store
        unread; their bytes are not known, so neither are the run's any more."""
        run.count -= count
        run.bytes = None
        self.tail_count -= count
        if not run.count:
            self.tail.popleft()

    def lose_run(self, level, run):
        """`run` of `level` (this list) is not in its store any more."""
        self.paged_in(run, [], run.after_key, run.count)

    def paged_runs(self):
        """The PagedRuns of the tail, in order."""
        return [item for item in self.tail if type(item) is PagedRun]

    def paged_count(self):
        """How many of its messages are on disk only (a look for the management API)."""
        return sum(run.count for run in self.paged_runs())

    def first_paged_keys(self):
        """[(store, priority, a key every message of this list paged in that store has a
        key above)]; empty when none is paged."""
        keys = {}
        for run in self.paged_runs():
            keys[run.store] = min(run.after_key, keys.get(run.store, run.after_key))
        return [(store, self.priority, key) for store, key in keys.items()]

    def page_out(self, window, window_bytes, store, page):
        """Memory is short: the messages in memory beyond the window (the first `window`
        of `fresh` within `window_bytes`) that `page(message)` keeps in `store` (it returns
        their key there, or None for one that stays in memory) join the paged tail in their
        places, each stretch of them a new PagedRun; the runs already there stay as they are."""
        fresh, tail = self.fresh, self.tail
        beyond = []
        while len(fresh) > window or self.fresh_bytes > window_bytes:
            beyond.append(fresh.pop())
            self.fresh_bytes -= len(beyond[-1].body)
        beyond.reverse()
        items = beyond + list(tail)
        tail.clear()
        run = None
        for item in items:
            if type(item) is not PagedRun:
                key = page(item)
                if key is not None:
                    if run is None:
                        run = PagedRun(store, key - 1, 0, 0)
                        tail.append(run)
                    run.count += 1
                    run.bytes += len(item.body)
                    continue
            tail.append(item)
            run = None
        self.tail_count += len(beyond)
        self.next_run()     # the tail starts with a run: what stays in memory before it is fresh again

    def put_back(self, message):
        heapq.heappush(self.returned, (message.order, message))

    def head(self):
        """The message `popleft` would take, or None."""
        if self.returned:
            return self.returned[0][1]
        return self.fresh[0] if self.fresh else None

    def popleft(self):
        if self.returned:
            return heapq.heappop(self.returned)[1]
        message = self.fresh.popleft()
        self.fresh_bytes -= len(message.body)
        return message

    def take_all(self):
        """Empty the list; returns what it held in memory, in order (the paged messages
        are their stores' to drop: see `first_paged_keys`)."""
        messages = list(self)
        self.fresh.clear()
        self.fresh_bytes = 0
        self.returned.clear()
        self.tail.clear()
        self.tail_count = 0
        return messages

    def take_expired(self, now):
        """Take the messages expired by `now` at the head: as in RabbitMQ, a message expires
        on reaching the head, so one with a short TTL waits behind one without. A paged
        head waits to be read back (Queue.drop_expired has it read)."""
        head = self.head()
        if head is None or head.expires_at is None or head.expires_at > now:
            return ()
        expired = []
        while head is not None and head.expires_at is not None and head.expires_at <= now:
            expired.append(self.popleft())
            head = self.head()
        return expired

    def next_expiry(self):
        """When the head expires, or None."""
        head = self.head()
        return None if head is None else head.expires_at

    def __iter__(self):
        """The messages in memory, in order."""
        in_tail = [item for item in self.tail if type(item) is not PagedRun] if self.tail else ()
        if not self.returned and not in_tail:
            return iter(self.fresh)
        return itertools.chain([message for _, message in sorted(self.returned)], self.fresh, in_tail)


class _HeadInMemory:
    """ReadyLevels' `fresh`, as the queue's per-message loops read a ReadyList's: true
    while the next message to go (the highest priority's head) is in memory, taken with
    popleft. A priority whose head is paged holds up the lower ones until it is read back."""

    __slots__ = ("levels",)

    def __init__(self, levels):
        self.levels = levels

    def __bool__(self):
        return self.levels.head() is not None

    def popleft(self):
        return self.levels.popleft()


class ReadyLevels:
    """Ready messages of a priority queue (x-max-priority), or of a queue limited in bytes:
    a ReadyList per priority, taken highest first, FIFO within one priority, requeued
    messages back in their place within theirs. A message's priority is its `priority`
    property capped at the queue's maximum (none: 0), as in RabbitMQ. Also counts the ready
    bodies' bytes, which x-max-length-bytes bounds, paged ones too. Each priority has its
    share of the queue's window (`level_window`) and a paged tail of its own, read back by
    its priority (`due_run`). A plain queue has a ReadyList alone, so neither costs it
    anything."""

    __slots__ = ("levels", "top", "count", "bytes", "fresh", "returned")

    def __init__(self, max_priority=0):
        self.levels = [ReadyList(level if max_priority else None) for level in range(max_priority + 1)]
        self.top = 0            # no level above this one holds a message
        self.count = 0
        self.bytes = 0          # of the bodies, paged ones too
        # The queue's per-message loops read a ReadyList's `fresh` and `returned`: here
        # `fresh` is the whole, taken with popleft (see `pages`), nothing is `returned`
        # (requeued messages are in their levels' heaps).
        self.fresh = self
        self.returned = ()

    def pages(self, paging):
        """Whether the queue pages: then a priority's head may be on disk, and `fresh` is
        true only while the next message is in memory; otherwise any message is."""
        self.fresh = _HeadInMemory(self) if paging else self

    @classmethod
    def of(cls, ready, paged_bytes):
        """A ReadyList's messages as one level, counted; `paged_bytes(run, priority)` gives
        the bytes of a PagedRun that does not know them."""
        levels = cls()
        levels.levels[0] = ready
        levels.count = len(ready)
        for run in ready.paged_runs():
            if run.bytes is None:
                run.bytes = paged_bytes(run, ready.priority)
            levels.bytes += run.bytes
        levels.bytes += sum(len(message.body) for message in ready)
        return levels

    def __len__(self):
        return self.count

    @property
    def tail(self):
        """Whether some priority has a tail."""
        return any(level.tail for level in self.levels)

    def priority_of(self, message):
        """The priority `message` has here: its own, capped at the maximum; none is 0."""
        properties = message.properties
        priority = properties.get("priority") if properties else None
        return min(priority, len(self.levels) - 1) if priority else 0

    def _level(self, message):
        level = self.priority_of(message)
        if level > self.top:
            self.top = level
        return self.levels[level]

    def _highest(self):
        """The highest level holding a message, paged or not (level 0 when none does)."""
        levels, top = self.levels, self.top
        while top and not levels[top]:
            top -= 1
        self.top = top
        return levels[top]

    def append(self, message):
        self._level(message).append(message)
        self.count += 1
        self.bytes += len(message.body)

    def beyond_window(self, message, window, window_bytes):
        return self._level(message).beyond_window(message, self.level_window(window),
                                                  self.level_window(window_bytes))

    def level_window(self, window):
        """The queue's window (in messages or in bytes) shared by its priorities, so that a
        priority queue holds no more ahead than a plain one (reads bring PAGE_IN_MIN
        messages at least, though, if the bytes allow)."""
        return max(1, window // len(self.levels)) if window else 0

    def page(self, store, key, message):
        self._level(message).page(store, key, message)
        self.count += 1
        self.bytes += len(message.body)

    def ends_in_run_of(self, store, message):
        return self._level(message).ends_in_run_of(store, message)

    def page_out(self, window, window_bytes, store, page):
        """Each priority's messages beyond its share of the window, as ReadyList.page_out:
        still counted here (with their bytes), on disk only."""
        window, window_bytes = self.level_window(window), self.level_window(window_bytes)
        for level in self.levels:
            if level:
                level.page_out(window, window_bytes, store, page)

    def recovered(self, store, sizes):
        """At start: {priority: (count, bytes)} of the queue's messages in `store`, all paged."""
        for priority, (count, bytes) in sizes.items():
            level = min(priority, len(self.levels) - 1)
            self.levels[level].recovered(store, count, bytes)
            self.count += count
            self.bytes += bytes
            self.top = max(self.top, level)

    def wants_page_in(self, window, window_bytes):
        window, window_bytes = self.level_window(window), self.level_window(window_bytes)
        return any(level.wants_page_in(window, window_bytes) for level in self.levels)

    def due_run(self, window, window_bytes):
        """The highest priority's run due to be read back, as (its list, the run)."""
        window, window_bytes = self.level_window(window), self.level_window(window_bytes)
        for level in reversed(self.levels):
            if level.tail:
                due = level.due_run(window, window_bytes)
                if due is not None:
                    return due
        return None

    def lose_run(self, level, run):
        self.count -= run.count
        self.bytes -= run.bytes or 0
        level.lose_run(level, run)

    def first_paged_keys(self):
        return [keys for level in self.levels for keys in level.first_paged_keys()]

    def paged_count(self):
        return sum(level.paged_count() for level in self.levels)

    def put_back(self, message):
        self._level(message).put_back(message)
        self.count += 1
        self.bytes += len(message.body)

    def head(self):
        return self._highest().head()

    def popleft(self):
        message = self._highest().popleft()
        self.count -= 1
        self.bytes -= len(message.body)
        return message

    def take_all(self):
        messages = list(self)
        for level in self.levels:
            level.take_all()
        self.count = self.bytes = 0
        return messages

    def take_expired(self, now):
        """What each priority's head has expired (RabbitMQ's priority queue drops the
        expired heads of every priority)."""
        expired = []
        for level in reversed(self.levels):
            if level:
                expired += level.take_expired(now)
        self.count -= len(expired)
        self.bytes -= sum(len(message.body) for message in expired)
        return expired

    def next_expiry(self):
        times = [level.next_expiry() for level in self.levels if level]
        times = [at for at in times if at is not None]
        return min(times, default=None)

    def __iter__(self):
        return itertools.chain.from_iterable(reversed(self.levels))


class Delivery:
    """A message handed out to an acking client and not yet settled. Made only by
    `Queue._hand_out` and ended only by `Queue.settle`; while it lives it is held in its
    queue's `unacked`, its channel's `unacked` by delivery tag, and its consumer's
    `unacked` (a basic.get's: its channel's `unacked_gets`), whose sizes are the unacked
    counts. One is made per message delivered with ack, so it has slots."""

    __slots__ = ("message", "queue", "channel", "consumer", "order", "delivery_tag", "delivered_at")

    def __init__(self, message, queue, channel, consumer, order):
        self.message = message
        self.queue = queue
        self.channel = channel      # None: taken by the management API, settled at once
        self.consumer = consumer    # None: taken by basic.get
        # The message's place in its queue's order, kept for a requeue (see Queue.settle).
        self.order = order
        self.delivery_tag = None    # given by the channel as it sends the delivery out
        # delivered_at: the node's coarse clock (Node.clock) when the channel sent it out, set
        # there with the tag, for the consumer timeout; a clock read per message would cost more.

    def __repr__(self):
        return f"<Delivery {self.delivery_tag} of {self.queue!r}>"


class Consumer:
    """A subscription of one channel to one queue."""

    __slots__ = ("tag", "queue", "channel", "no_ack", "exclusive", "arguments",
                 "prefetch_count", "unacked", "priority")

    def __init__(self, tag, queue, channel, no_ack=False, exclusive=False, arguments=None,
                 prefetch_count=0):
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.prefetch_count = prefetch_count    # this consumer's own window; 0: none
        self.unacked = {}       # delivery tag -> its Delivery not yet settled, in tag order
        self.priority = self.arguments.get("x-priority", 0)    # x-priority, checked by the queue


class Queue:
    """A classic queue. Another type (quorum_queue.py) is a subclass with its own argument
    table, declaration rules and what it does differently."""

    kind = "queue"      # as a binding's destination, beside exchanges
    queue_type = "classic"                  # as x-queue-type, the listings and definitions name it
    rabbit_type = "rabbit_classic_queue"    # as RabbitMQ's refusals name it
    accepted_arguments = QUEUE_ARGUMENTS
    refused_arguments = CLASSIC_REFUSED_ARGUMENTS
    keeps_every_message = False     # True: transient messages go to the store too
    global_qos = True               # consumers may share a channel-wide prefetch window
    overflow = "drop-head"          # until `configure` says otherwise
    # RabbitMQ's classic queues take a changed policy's max-length before its overflow, so
    # a new limit drops the oldest messages over it when the queue dropped heads until
    # then, even where the policy moves it to reject-publish; its quorum queues do not.
    trims_under_previous_overflow = True
    # A policy holding one of these keys does not apply to this type of queue at all.
    inapplicable_policy_keys = NOT_FOR_CLASSIC_QUEUES
    # A stream keeps every message it takes in a copy of its own (stream.py); the vhost keeps
    # persistent messages in the store for the other durable queues.
    keeps_own_copies = False
    # Whether its messages beyond the window may wait on disk only (ReadyList's tail).
    pages = True

    def __init__(self, vhost_name, name, durable=False, exclusive_owner=None, auto_delete=False,
                 arguments=None, on_expired=None, store=None, dead_letter=None, memory=None, scratch=None):
        self.vhost_name = vhost_name
        self.memory = memory        # the node's MemoryBudget, which held messages count in
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}    # as declared: a redeclare must repeat them
        max_priority = self.arguments.get("x-max-priority")
        self.ready = ReadyLevels(max_priority) if max_priority else ReadyList()
        # A drop-head over a length limit waits for the paged head to be read back (it is
        # dead-lettered or dropped as it arrives, see `_drop_over_limit`).
        self._paged_drop_due = False
        self._paged_drops = 0       # how many times paged heads left a store unread (`_page_in`)
        self.consumers = deque()
        self.single_active_consumer = self.arguments.get("x-single-active-consumer") is True
        # Consumers are not simply served in turn: one is active alone, or some have priority.
        self.ordered_consumers = self.single_active_consumer
        # The policy and operator policy that apply (policy.Policy, or None) and the
        # definition they make together, which `configure` was given merged with the arguments.
        self.policy = self.operator_policy = None
        self.policy_definition = {}
        self.unacked = set()        # the Deliveries handed out and not yet settled
        # Plain counters for the management API and /metrics (sampled into rates there).
        # `delivered` also ranks requeued messages (see settle), so it only ever grows.
        self.published = self.delivered = self.acked = self.redelivered = self.dead_lettered = 0
        self.bound_exchanges = set()    # exchanges with a binding to this queue, to unbind on delete
        self.deleted = False
        # The durable store, for a queue whose persistent messages outlive the process;
        # exclusive queues end with their connection, so none is kept.
        self.store = store if durable and exclusive_owner is None else None
        # Where the messages the store does not keep wait while memory is short (store/scratch.py).
        self.scratch = scratch
        self._on_expired = on_expired
        self._dead_letter = dead_letter     # dead_letter(queue, messages, reason), the vhost's
        self._expiry_timer = None
        self._ttl_timer = None
        self._pager = None          # the greenlet reading the paged tail back (_page_in)
        self._page_in_retry = None  # after a failed read: the timer that starts it again
        self.configure(self.arguments)

    def __repr__(self):
        return f"<Queue {self.name!r} in vhost {self.vhost_name!r}>"

    @classmethod
    def validate(cls, arguments, durable, exclusive, auto_delete, what):
        """Refuse, with RabbitMQ's sentence, a declaration of this type of queue that this
        broker would not honour; `what` names the queue as the sentences do."""
        if "x-dead-letter-exchange" in arguments and type(arguments["x-dead-letter-exchange"]) is not str:
            raise PreconditionFailed(f"invalid type '{amqp_type(arguments['x-dead-letter-exchange'])}' "
                                     f"for arg 'x-dead-letter-exchange' in {what}")
        for name, check in cls.accepted_arguments.items():
            if name in arguments:
                reason = check(arguments[name], arguments)
                if reason is not None:
                    raise PreconditionFailed(f"invalid arg '{name}' for {what}: {reason}")
        for name in cls.refused_arguments:
            if name in arguments:
                raise PreconditionFailed(f"invalid arg '{name}' for {what} of queue type {cls.rabbit_type}")

    def configure(self, settings):
        """Take the settings that may change while the queue lives (TTLs, expiry, dead
        lettering, length limits), by their argument names: at declaration its arguments,
        later what policies make of them. The one place these attributes are set, and
        they take effect at once, as RabbitMQ applies a changed policy: the x-expires
        clock restarts, a lowered limit drops (dead-letters) the oldest messages over it.
        A new x-message-ttl counts for messages from now on; those queued keep the expiry
        they were given (RabbitMQ's too)."""
        previous_overflow = self.overflow
        self.message_ttl = settings.get("x-message-ttl")
        self.expires = settings.get("x-expires")
        self.dead_letter_exchange = settings.get("x-dead-letter-exchange")
        self.dead_letter_routing_key = settings.get("x-dead-letter-routing-key")
        self.max_length = settings.get("x-max-length")
        self.max_length_bytes = settings.get("x-max-length-bytes")
        self.limited = self.max_length is not None or self.max_length_bytes is not None
        self.overflow = settings.get("x-overflow", "drop-head")
        # How many ready messages stay in memory before others wait on disk only: stored
        # ones of a durable queue in its store, others in the scratch store while memory is
        # short (None: all stay), and within how many bytes of bodies, which bound each read
        # back too (a lazy queue's as well); a priority queue's priorities share them
        # (ReadyLevels.level_window).
        self.window = (None if self.store is None and self.scratch is None or not self.pages
                       else 0 if settings.get("x-queue-mode") == "lazy" else self.memory.queue_window)
        self.window_bytes = self.memory.queue_window_bytes
        if self.max_length_bytes is not None and not isinstance(self.ready, ReadyLevels):
            # a plain list cannot count bytes
            self.ready = ReadyLevels.of(self.ready, self._paged_bytes)
        if type(self.ready) is ReadyLevels:
            self.ready.pages(self.window is not None)
        if self.expires is None:
            self._cancel_expiry()
        else:
            self.touch()
        if self.limited and (self.overflow == "drop-head" or (
                previous_overflow == "drop-head" and self.trims_under_previous_overflow)):
            self._drop_over_limit()
            while self._paged_drop_due and self._pager is not None:
                self._pager.join()      # the new limit holds once configure returns

    @property
    def exclusive(self):
        return self.exclusive_owner is not None

    @property
    def message_count(self):
        """The ready messages, expired ones not yet dropped included (see `drop_expired`),
        dropped ones over x-max-length still to be read back left out."""
        count = len(self.ready)
        if self._paged_drop_due and self.max_length is not None and count > self.max_length:
            return self.max_length
        return count

    @property
    def unacked_count(self):
        return len(self.unacked)

    def effective_ttl(self, message):
        """The TTL in ms `message` has in this queue, or None: the shorter of its own
        (its expiration property) and the queue's x-message-ttl, as in RabbitMQ."""
        ttl = self.message_ttl
        if message.ttl is not None and (ttl is None or message.ttl < ttl):
            return message.ttl
        return ttl

    # -- messages in -------------------------------------------------------------------

    def enqueue(self, message):
        """Take a routed message; False when a length limit with x-overflow reject-publish
        (or reject-publish-dlx) refuses it."""
        self.published += 1
        if message.ttl is not None or self.message_ttl is not None:
            message = message.placed(False, time.monotonic() + self.effective_ttl(message) / 1000.0)
        ready = self.ready
        consumer = None
        full = self.limited and self.overflow != "drop-head" and self._full_for(message)
        if not full and self.consumers and not ready.fresh and not ready.returned and not ready.tail:
            consumer = self._next_consumer()
            if consumer is not None and consumer.no_ack and message.stored is None:
                # Straight through, never held (so not counted in the memory budget):
                # the common case of a no-ack consumer keeping up, kept lean.
                self.delivered += 1
                consumer.channel.deliver(consumer, message, None)
                return True
        if (consumer is None and not full and self.window is not None and self.message_ttl != 0
                and ready.beyond_window(message, self.window, self.window_bytes)):
            # (With a TTL of 0 a message goes at once, below.) A paged message waits on disk
            # only: not held, not counted. Its place there keeps the expiry it was given
            # here (`_from_store` gives it back), and its limits count it meanwhile.
            paged = False
            if self.store is not None and message.stored is not None:
                if message.properties.get("delivery_mode") == 2:
                    # A persistent message, so stored for this queue too (a transient one may
                    # be stored for a quorum queue only).
                    stored = message.stored
                    if stored.refs is not None and stored.refs > 1:
                        stored.refs = None      # the queues holding it in memory no longer know them all
                    ready.page(self.store, stored.key, message)
                    paged = True
            elif (self.memory.paging or ready.ends_in_run_of(self.scratch, message)) and self.scratch.writable:
                # Memory is short, or was when this queue's tail began to go to the scratch
                # store, which the rest of the tail then follows, so that the queue does not
                # fill memory again for the next page-out to write. (While the scratch store
                # cannot write, a paged message would stay in memory anyway: it joins the tail
                # as it is, in its place, and the memory limit's flow control holds.)
                ready.page(self.scratch, self._to_scratch(message), message)
                paged = True
            if paged:
                if self.limited:
                    self._drop_head_over_limit()
                if message.expires_at is not None and self._ttl_timer is None:
                    self._page_in_if_due()      # the head must be in memory to expire on time
                return True
        # Held from here on: the message counts once, with its body, however many queues
        # hold it (they share it), and each further queue its place (see `_forget`).
        source = message.origin or message
        if source.holders:
            source.holders += 1
            self.memory.held_bytes += QUEUE_ENTRY_BYTES
        else:
            source.holders = 1
            self.memory.held_bytes += MESSAGE_OVERHEAD_BYTES + len(message.body)
        if full:
            self._forget((message,), MAXLEN if self.overflow == "reject-publish-dlx" else None)
            return False
        if consumer is None and self.message_ttl == 0 and self.dead_letter_exchange is None:
            # RabbitMQ drops at once what a TTL of 0 lets no consumer take, even behind
            # messages that have not expired (a TTL set by a policy, say).
            self._forget((message,))
            return True
        if consumer is not None:
            self._hand_out(message, consumer.channel, consumer, consumer.no_ack)
            return True
        ready.append(message)
        if self.limited:
            self._drop_head_over_limit()
        if message.expires_at is not None and self._ttl_timer is None:
            self._arm_ttl_timer()
        return True

    def recover_backlog(self, count):
        """At start, before any client: the queue's `count` stored messages. A queue that
        pages has them back as its paged tail, with only its head window read now, so a
        start costs the same with any backlog; one that does not reads them all."""
        if not count:
            return
        store, ready = self.store, self.ready
        if self.window is not None:
            if type(ready) is ReadyList:
                ready.recovered(store, count)
            else:
                ready.recovered(store, store.paged_sizes(self))
            self._start_page_in().join()
            return
        after_key = 0
        while True:
            rows = store.read_queue(self, after_key, RECOVER_BATCH)
            if not rows:
                break
            for _, message, _, expires_at in rows:
                message = self._from_store(message, expires_at)
                self._hold(message)
                ready.append(message)
            after_key = rows[-1][0]
        if self._ttl_timer is None:
            self._arm_ttl_timer()

    def page_out(self, deep=False):
        """Memory is short: the ready messages beyond the window (each priority's share of
        it) that the durable store does not hold go to the scratch store; returns the bytes
        that frees. `deep`: memory is short still with every queue paged beyond its window
        (many queues' windows fill it), so the window goes too, as a lazy queue's; it fills
        again as consumers come, and at once for those waiting. Not while the tail is being
        read back (the read expects its run first), nor while the scratch store cannot write
        (what it pages would stay in memory)."""
        if self.window is None or self.deleted or self._pager is not None or not self.scratch.writable:
            return 0
        scratch, durable, released = self.scratch, self.store is not None, 0

        def page(message):
            nonlocal released
            if durable and message.stored is not None:
                return None
            key = self._to_scratch(message)
            released += self._let_go(message)
            return key

        self.ready.page_out(0 if deep else self.window, 0 if deep else self.window_bytes, scratch, page)
        self.memory.held_bytes -= released
        if self.consumers:
            self._page_in_if_due()      # nothing else would: their window went, and they wait
        return released

    def _to_scratch(self, message):
        """Page `message` to the scratch store, under its priority here, with its expiry in
        wall-clock time, so that `_from_store` gives it back the same expiry; its key."""
        expires_at = message.expires_at
        if expires_at is not None:
            expires_at += time.time() - time.monotonic()
        return self.scratch.page(self, message, self.level_of(message), expires_at)

    def _from_store(self, message, expires_at):
        """A message read back from a store, with the expiry it was given here when the
        queue took it (`expires_at`, wall-clock time: the clock ran on while it was on disk,
        or while the broker was down), whatever the queue's TTL is now."""
        if expires_at is None:
            return message
        return message.placed(message.redelivered, time.monotonic() + (expires_at - time.time()))

    def _paged_bytes(self, run, priority):
        """The bytes of a PagedRun that does not know them, asked of its store: a durable
        store's (a scratch run always knows them: it is never recovered nor dropped unread)."""
        return run.store.paged_bytes(self, run.after_key, run.count, priority)

    def level_of(self, message):
        """The priority `message` has in this queue, which the store keeps it under."""
        return self.ready.priority_of(message) if type(self.ready) is ReadyLevels else 0

    def _hold(self, message):
        """Count a message this queue now holds, as enqueue counts it."""
        source = message.origin or message
        source.holders += 1
        self.memory.held_bytes += (QUEUE_ENTRY_BYTES if source.holders > 1
                                   else MESSAGE_OVERHEAD_BYTES + len(message.body))

    # -- the paged tail ------------------------------------------------------------------

    def _start_page_in(self):
        """The pager, started if need be; None while a failed read waits for its retry."""
        if self._pager is None and self._page_in_retry is None:
            self._pager = gevent.spawn(self._page_in)
        return self._pager

    def _retry_page_in(self):
        """PAGE_IN_RETRY_SECONDS after a failed read: read again if the tail is still due."""
        self._page_in_retry = None
        if self._paged_drop_due and self.ready.tail and not self.deleted:
            self._start_page_in()
        else:
            self._page_in_if_due()

    def _page_in(self):
        """Read the paged tail back into the window while the window is at most half full,
        a batch at a time once the store has committed it (it reads committed messages
        only), and deliver. Runs in a greenlet of its own: a read blocks it, not the hub. A
        read that fails leaves the tail as it was, to be read again PAGE_IN_RETRY_SECONDS later."""
        try:
            while not self.deleted:
                ready = self.ready
                due = ready.due_run(self.window, self.window_bytes)
                if due is None:
                    break
                level, run = due
                store = run.store
                try:
                    count = self._read_count(level, run)
                    if not store.committed():
                        continue    # tried again with the store's next commit
                    drops = self._paged_drops
                    rows = store.read_queue(self, run.after_key, count, level.priority)
                except StoreReadError:      # (the store logs it) nothing was taken: tried again later
                    self._page_in_retry = gevent.spawn_later(PAGE_IN_RETRY_SECONDS, self._retry_page_in)
                    break
                if (self.deleted or self.ready is not ready or not level.tail or level.tail[0] is not run
                        or self._paged_drops != drops):
                    continue    # purged meanwhile, or its head dropped (the read may have seen it)
                if not rows:
                    log.error("the store lost %d messages of %r", run.count, self)
                    ready.lose_run(level, run)
                    continue
                messages = []
                for _, message, _, expires_at in rows:
                    message = self._from_store(message, expires_at)
                    self._hold(message)
                    messages.append(message)
                level.paged_in(run, messages, rows[-1][0], len(messages))
                if self._paged_drop_due:
                    self._paged_drop_due = False
                    self._drop_over_limit()
                if self._ttl_timer is None:
                    self._arm_ttl_timer()
                self._deliver_ready()
        finally:
            self._pager = None
        if self.deleted:
            return
        if self._paged_drop_due:    # the tail's head was in memory after all
            self._paged_drop_due = False
            self._drop_over_limit()
        ready = self.ready
        if ready.fresh or ready.returned:
            self._deliver_ready()   # what the tail held in memory came forward

    def _read_count(self, level, run):
        """How many messages of `run`, the next of `level` (a ready list), to read back now:
        as many as its share of the window has room for in messages (PAGE_IN_MIN at least)
        and in bytes at the run's mean body size (one at least). A run whose bytes are not
        known (a backlog recovered by a plain queue, a head dropped unread) asks its store
        for those of the messages the count would read. Blocks the pager, not the hub."""
        ready = self.ready
        count = min(run.count, max(ready.level_window(self.window) - len(level.fresh), PAGE_IN_MIN))
        room = max(0, ready.level_window(self.window_bytes) - level.fresh_bytes)
        if run.bytes is None:
            size, of = run.store.paged_bytes(self, run.after_key, count, level.priority), count
        else:
            size, of = run.bytes, run.count
        if size > room:
            count = max(1, room * of // size)
        return count

    # -- messages out ------------------------------------------------------------------

    def dispatch(self):
        """Deliver ready messages while some consumer has room; read the paged tail back
        as the window empties."""
        self._deliver_ready()
        if self.window is not None and self.ready.tail:
            self._page_in_if_due()

    def _page_in_if_due(self):
        ready = self.ready
        if (self.window is not None and self._pager is None and ready.tail
                and ready.wants_page_in(self.window, self.window_bytes)):
            self._start_page_in()

    def _deliver_ready(self):
        ready, consumers = self.ready, self.consumers
        # The ready list's two parts are read directly here and in _next_live and enqueue:
        # these run per message, and a Python-level len() each time cost a tenth of a delivery.
        # So a plain list's `fresh` is taken from here, and its bytes counted here; a priority
        # queue's levels count their own as it takes from them.
        fresh, returned = ready.fresh, ready.returned
        plain = type(ready) is ReadyList
        while (fresh or returned) and consumers:
            consumer = self._next_consumer()
            if consumer is None:
                return
            if returned:
                message = ready.popleft()
            else:
                message = fresh.popleft()
                if plain:
                    ready.fresh_bytes -= len(message.body)
            if message.expires_at is not None and message.expires_at <= time.monotonic():
                # Checked here, per message, so that none goes out expired; the ending
                # itself is drop_expired's.
                self._forget((message,), EXPIRED)
                message = self._next_live()
                if message is None:
                    return
            self._hand_out(message, consumer.channel, consumer, consumer.no_ack)

    def _next_live(self):
        """Take the next ready message that has not expired, ending those that have."""
        self.drop_expired()
        ready = self.ready
        return ready.popleft() if ready.fresh or ready.returned else None

    def _hand_out(self, message, channel, consumer, no_ack):
        """A message leaves this queue for a client: a consumer, or basic.get when
        `consumer` is None. Without ack it ends here; with ack it goes out as the one
        Delivery made for it, with its place in the queue's order (see `settle`), which
        is returned. A consumer's goes on to its channel to be sent."""
        self.delivered += 1
        if message.redelivered:
            self.redelivered += 1
        if no_ack:
            if self.store is not None and message.stored is not None:
                self._forget((message,))
            else:   # _forget's accounting inline: this runs per message of every no-ack consumer
                source = message.origin or message
                source.holders -= 1
                self.memory.held_bytes -= (QUEUE_ENTRY_BYTES if source.holders
                                           else MESSAGE_OVERHEAD_BYTES + len(message.body))
            delivery = None
        else:
            delivery = Delivery(message, self, channel, consumer,
                                self.delivered if message.order is None else message.order)
            self.unacked.add(delivery)
        if consumer is not None:
            channel.deliver(consumer, message, delivery)
        return delivery

    def get(self, no_ack, channel=None):
        """basic.get for `channel` (None: the management API's, which settles at once): the
        next ready message and its Delivery (None if `no_ack`), or None when there is none.
        The answer says how many are left, so the expired ones now at the head go too. None
        too while the paged head cannot be read (see PAGE_IN_RETRY_SECONDS)."""
        self.touch()
        message = self._next_live()
        while message is None and self.ready.tail and not self.deleted and self._page_in_retry is None:
            self._start_page_in().join()
            message = self._next_live()
        if message is None:
            return None
        delivery = self._hand_out(message, channel, None, no_ack)
        self.drop_expired()
        return message, delivery

    def settle(self, deliveries, requeue, rejected=False):
        """The one end of Deliveries of this queue: each leaves its queue's, channel's and
        consumer's sets of deliveries outstanding. Requeued ones go back to their places,
        flagged redelivered: `order`, the queue's count of deliveries when a message first
        left it, ranks them as they were published, since messages leave a queue in that
        order. The rest are done with: acked, or `rejected` (nack or reject without
        requeue), which dead-letters them. Then consumers fill the windows that opened."""
        messages = self._end_deliveries(deliveries)
        if requeue and not self.deleted:
            self._requeue([message if message.order is not None
                           else message.placed(True, message.expires_at, delivery.order)
                           for delivery, message in zip(deliveries, messages)])
        else:
            self.acked += len(messages)
            self._forget(messages, REJECTED if rejected and not self.deleted else None)
        ready = self.ready
        if ready.fresh or ready.returned:   # the windows these deliveries held are open again
            self.dispatch()

    def _requeue(self, messages):
        """Requeued messages (each this queue's copy, flagged redelivered and ranked by its
        `order`) back in their places."""
        ready = self.ready
        for message in messages:
            ready.put_back(message)
        if self.limited and self.overflow == "drop-head":
            self._drop_head_over_limit()
        if self._ttl_timer is None and ready:
            self._arm_ttl_timer()

    def _end_deliveries(self, deliveries):
        """Take the deliveries out of their queue's, channel's and consumer's sets of
        deliveries outstanding; returns their messages."""
        unacked, messages = self.unacked, []
        for delivery in deliveries:
            unacked.remove(delivery)
            channel = delivery.channel
            if channel is not None:
                tag = delivery.delivery_tag
                del channel.unacked[tag]
                consumer = delivery.consumer
                del (channel.unacked_gets if consumer is None else consumer.unacked)[tag]
            messages.append(delivery.message)
        return messages

    def purge(self):
        """Drop every ready message (unacked ones stay, as in RabbitMQ, and nothing is
        dead-lettered); returns how many."""
        return self._drop_ready()

    def _drop_ready(self):
        """End every ready message, paged ones too; returns how many."""
        ready = self.ready
        count, paged = len(ready), ready.first_paged_keys()
        self._paged_drop_due = False
        self._forget(ready.take_all())
        for store, priority, after_key in paged:
            store.remove_paged(self, after_key, priority)
        return count

    # -- length limits (x-max-length, x-max-length-bytes, x-overflow) -------------------

    def _full_for(self, message):
        """Whether taking `message` would put the ready messages over a limit (RabbitMQ
        counts ready messages only, and asks before trying consumers)."""
        ready = self.ready
        return ((self.max_length is not None and len(ready) + 1 > self.max_length)
                or (self.max_length_bytes is not None and ready.bytes + len(message.body) > self.max_length_bytes))

    def _drop_head_over_limit(self):
        """x-overflow drop-head: the oldest ready messages go (dead-lettered as maxlen)
        until the queue is within its limits again."""
        if self.overflow == "drop-head":
            self._drop_over_limit()

    def _drop_over_limit(self):
        """Drop the oldest ready messages while over a limit. A paged head that nothing
        needs read (a plain queue limited by count, with no dead-letter exchange) leaves
        its store by count at once; otherwise it is read back first (`_page_in` drops on,
        and dead-letters in order), and `_paged_drop_due` says so meanwhile."""
        ready, max_length, max_bytes = self.ready, self.max_length, self.max_length_bytes
        dropped = []
        while (max_length is not None and len(ready) > max_length) or (max_bytes is not None and ready.bytes > max_bytes):
            if not (ready.fresh or ready.returned):
                if not ready.tail:
                    break
                run = None if type(ready) is not ReadyList else ready.next_run()
                if ready.fresh:
                    continue        # the tail began with messages in memory
                if (run is None or max_bytes is not None or self.dead_letter_exchange is not None
                        or run.store is not self.store):    # (the scratch store forgets rows as it reads them)
                    self._paged_drop_due = True
                    self._start_page_in()
                    break
                count = min(run.count, len(ready) - max_length)
                run.store.remove_paged_head(self, run.after_key, count)
                ready.drop_paged_head(run, count)
                self._paged_drops += 1
                continue
            dropped.append(ready.popleft())
        if dropped:
            self._forget(dropped, MAXLEN)

    def _forget(self, messages, reason=None):
        """The one place where messages end in this queue. With a `reason` (rejected,
        expired, maxlen) they are dead-lettered when the queue has a dead-letter exchange:
        before their removal from the store, in the same open batch, so a persistent
        message is kept in its new queues by the transaction that lets it go here."""
        self.memory.held_bytes -= sum(map(self._let_go, messages))
        dead_lettered = reason is not None and self.dead_letter_exchange is not None and bool(messages)
        if dead_lettered:
            self._dead_letter(self, messages, reason)
        if self.store is not None:
            stored = [message for message in messages if message.stored is not None]
            if stored:
                self.store.remove_messages(self, stored, dead_lettered)

    @staticmethod
    def _let_go(message):
        """This queue holds `message` no more; returns the bytes the budget counts no more:
        its place, and its body once the last queue holding it lets it go."""
        source = message.origin or message
        source.holders -= 1
        return QUEUE_ENTRY_BYTES if source.holders else MESSAGE_OVERHEAD_BYTES + len(message.body)

    def _next_consumer(self):
        consumers = self.consumers
        if self.ordered_consumers:
            return self._next_ordered_consumer()
        if len(consumers) == 1:     # the common case, without the turn-taking below
            consumer = consumers[0]
            return consumer if consumer.channel.can_deliver(consumer) else None
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if consumer.channel.can_deliver(consumer):
                return consumer
        return None

    def _next_ordered_consumer(self):
        """With x-single-active-consumer, the first consumer still there is the only one
        served. With consumer priorities (x-priority), the highest-priority consumer that
        has room, in turn among equals (a consumer served goes behind the others)."""
        consumers = self.consumers
        if self.single_active_consumer:
            consumer = consumers[0]
            return consumer if consumer.channel.can_deliver(consumer) else None
        chosen = None
        for consumer in consumers:
            if (chosen is None or consumer.priority > chosen.priority) and consumer.channel.can_deliver(consumer):
                chosen = consumer
        if chosen is not None:
            consumers.remove(chosen)
            consumers.append(chosen)
        return chosen

    # -- consumers ---------------------------------------------------------------------

    def add_consumer(self, consumer):
        if consumer.exclusive and self.consumers or any(c.exclusive for c in self.consumers):
            raise AccessRefused(f"queue '{self.name}' in vhost '{self.vhost_name}' in exclusive use")
        if type(consumer.priority) is not int:
            raise PreconditionFailed(f"invalid arg 'x-priority' for queue '{self.name}' in vhost "
                                     f"'{self.vhost_name}': \"expected integer, got {amqp_type(consumer.priority)}\"")
        self.consumers.append(consumer)
        self.ordered_consumers = self.single_active_consumer or any(c.priority for c in self.consumers)
        self._cancel_expiry()

    def remove_consumer(self, consumer):
        """Returns True when this was the last consumer of an auto-delete queue."""
        self.consumers.remove(consumer)
        self.ordered_consumers = self.single_active_consumer or any(c.priority for c in self.consumers)
        if self.single_active_consumer and self.consumers:
            self.dispatch()     # the next consumer is the active one now
        if not self.consumers:
            self.touch()
            return self.auto_delete
        return False

    # -- expiry (x-expires, x-message-ttl) ------------------------------------------------

    def touch(self):
        """Restart the x-expires clock: the queue was declared, read or left idle."""
        if self.expires is None or self.consumers or self.deleted:
            return
        self._cancel_expiry()
        self._expiry_timer = gevent.spawn_later(self.expires / 1000.0, self._expire)

    def _cancel_expiry(self):
        if self._expiry_timer is not None:
            self._expiry_timer.kill(block=False)
            self._expiry_timer = None

    def _expire(self):
        self._expiry_timer = None
        if not self.consumers and not self.deleted and self._on_expired is not None:
            self._on_expired(self)

    def drop_expired(self):
        """End (dead-letter, if the queue says so) the expired messages at the head, as
        RabbitMQ does when they reach it; returns how many. Called where a count is
        answered or a message taken, and by the TTL timer."""
        expired = self.ready.take_expired(time.monotonic())
        if expired:
            self._forget(expired, EXPIRED)
            self._page_in_if_due()     # the next heads may be paged, and expired too
        return len(expired)

    def _arm_ttl_timer(self):
        """A timer for the head's expiry, so an unread queue does not hold expired messages."""
        expires_at = self.ready.next_expiry()
        if expires_at is not None:
            self._ttl_timer = gevent.spawn_later(max(0.0, expires_at - time.monotonic()), self._ttl_fired)

    def _ttl_fired(self):
        self._ttl_timer = None
        if self.deleted:
            return
        self.drop_expired()
        if self.ready:
            self._arm_ttl_timer()
            if self._ttl_timer is None:
                self._page_in_if_due()      # the head went to disk (page_out) before it expired

    def mark_deleted(self):
        """The queue is gone: its ready messages end with it. Deliveries still unacked end
        when their channel settles them (a requeue then has nowhere to go)."""
        self.deleted = True
        self._drop_ready()
        self._cancel_expiry()
        if self._ttl_timer is not None:
            self._ttl_timer.kill(block=False)
            self._ttl_timer = None

