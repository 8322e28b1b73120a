"""Streams (x-queue-type stream), as RabbitMQ's AMQP 0-9-1 clients use them: an
append-only log whose messages stay after they are read.

Every message a stream takes is kept in the store, whatever its delivery mode, in a copy of
its own (so dropping old ones never touches another queue's), and gets the next offset:
0, 1, 2, ... never reused. What the stream holds in memory is small: its segments (first
offset and key, bytes, newest publish time), a sparse index from offsets to store keys
(an entry every INDEX_INTERVAL messages and at each segment's start) and the newest
messages (`tail`), which include every one the store has not committed yet. A consumer
starts where its `x-stream-offset` says and reads on from there: from the tail when it is
close behind the newest message, else from the store in batches (`Store.read_queue`)
as its prefetch window opens. Acks only open the window again.

Retention (x-max-length-bytes, x-max-age) drops whole segments, oldest first, when a
segment is full and the next begins (and when the settings change), always keeping the
newest one, as RabbitMQ truncates its logs; x-stream-max-segment-size-bytes sizes them.
"""

import bisect
import datetime
import operator
import time
from collections import deque

import gevent

from .errors import PreconditionFailed, Unsupported
from .message import Message
from .policy import NOT_FOR_STREAMS, age_seconds
from .queue_store import (CLASSIC_REFUSED_ARGUMENTS, PAGE_IN_RETRY_SECONDS, QUEUE_ARGUMENTS, Queue, _integer, _string,
                          amqp_type)
from .store import Stored, StoreReadError

# RabbitMQ's default x-stream-max-segment-size-bytes: 500 MB per segment.
DEFAULT_SEGMENT_BYTES = 500_000_000

# An index entry per this many offsets: a consumer starting at an offset reads at most this
# many messages it skips, and a stream of 1,000,000 messages keeps about 1,000 entries.
INDEX_INTERVAL = 1024

# Messages read from the store at once for a consumer behind the tail: enough that the
# thread-pool hop costs little per message, few enough that three consumers reading a
# long stream hold a few MB at most; fewer when the stream's messages are large, so
# that a batch holds about READ_BATCH_BYTES.
READ_BATCH = 1000
READ_BATCH_BYTES = 4 * 1024 * 1024

# The newest messages kept in memory once committed, so consumers keeping up never read
# the store: at most this many, and about this many bytes of bodies; the uncommitted ones
# are kept whatever their number.
TAIL_MESSAGES = 1000
TAIL_BYTES = 8 * 1024 * 1024


LEADER_LOCATORS = ("client-local", "balanced", "random", "least-leaders")


def _max_age(value, arguments):
    if type(value) is not str:
        return f"{{unacceptable_type,{amqp_type(value)}}}"
    # RabbitMQ 3.10 closes the connection with 541 INTERNAL_ERROR for some malformed ages
    # ("bad"); GreenMQ refuses them all as it refuses "10x".
    return None if age_seconds(value) is not None else "invalid_max_age"


# The arguments a stream takes, each with RabbitMQ's check of its value; a redeclare must
# repeat them alike. Leader locator and cluster size only matter in a cluster: accepted,
# checked, no effect here.
STREAM_ARGUMENTS = {     # in the order RabbitMQ compares them on a redeclare
    "x-max-length-bytes": _integer(),
    "x-queue-type": QUEUE_ARGUMENTS["x-queue-type"],
    "x-max-age": _max_age,
    "x-stream-max-segment-size-bytes": _integer(zero=False),
    "x-queue-leader-locator": _string(LEADER_LOCATORS, "invalid_queue_locator_arg"),
    "x-initial-cluster-size": _integer(zero=False),
}
# What other queue types take and streams refuse, as RabbitMQ does.
REFUSED_ARGUMENTS = tuple(name for name in (*QUEUE_ARGUMENTS, *CLASSIC_REFUSED_ARGUMENTS)
                          if name not in STREAM_ARGUMENTS)


class Segment:
    """A run of the log that retention drops whole."""

    __slots__ = ("first_offset", "first_key", "bytes", "last_published")

    def __init__(self, first_offset, first_key):
        self.first_offset = first_offset
        self.first_key = first_key
        self.bytes = 0
        self.last_published = 0.0


class ReadPosition:
    """Where one consumer reads the log: the offset it is given next, the key of the one
    before (to read on from in the store), and what was read ahead for it."""

    __slots__ = ("offset", "after_key", "not_before", "read_ahead", "reading", "generation")

    def __init__(self, offset, not_before=None):
        self.offset = offset
        self.after_key = None           # unknown: found through the index
        self.not_before = not_before    # a publish time: earlier messages are passed over
        self.read_ahead = deque()       # (key, message, published_at, expires_at) from the store, from `offset` on
        self.reading = False
        self.generation = 0             # moves on when the position jumps: a read in flight is dropped

    def seek(self, offset):
        self.offset = offset
        self.after_key = None
        self.read_ahead.clear()
        self.generation += 1


class _Dropped:
    """What `Store.remove_messages` needs of a message retention dropped: its record."""

    __slots__ = ("stored",)

    def __init__(self, key):
        self.stored = Stored(key, 1)


_offset_of = operator.itemgetter(0)
_published_at = operator.itemgetter(2)


class StreamQueue(Queue):
    queue_type = "stream"
    rabbit_type = "rabbit_stream_queue"
    accepted_arguments = STREAM_ARGUMENTS
    refused_arguments = REFUSED_ARGUMENTS
    keeps_own_copies = True
    inapplicable_policy_keys = NOT_FOR_STREAMS

    def __init__(self, vhost_name, name, durable=True, exclusive_owner=None, auto_delete=False,
                 arguments=None, on_expired=None, store=None, dead_letter=None, memory=None, scratch=None):
        self.first_offset = self.next_offset = 0
        self.log_bytes = 0
        self.segments = deque()
        self.index = []                 # (offset, key, published_at), in offset order
        self.tail = deque()             # (offset, message, published_at): the newest messages
        self.tail_bytes = 0             # of their bodies
        self.committed_offset = 0       # the offsets below it are committed in the store
        self._commits = deque()         # [store batch, offsets below this end in it] not yet committed
        self.positions = {}             # consumer -> its ReadPosition
        self._remover = None            # the greenlet removing what retention dropped
        super().__init__(vhost_name, name, durable, exclusive_owner, auto_delete, arguments,
                         on_expired, store, dead_letter, memory, scratch)
        self.what = f"queue '{name}' in vhost '{vhost_name}'"

    @classmethod
    def validate(cls, arguments, durable, exclusive, auto_delete, what):
        """RabbitMQ's refusals of a stream's declaration: its properties first, then the
        arguments other queue types take, then the values of its own."""
        for refused, name in ((exclusive, "exclusive-owner"), (not durable, "non-durable"),
                              (auto_delete, "auto-delete")):
            if refused:
                raise PreconditionFailed(f"invalid property '{name}' for {what}")
        for name in cls.refused_arguments:
            if name in arguments:
                raise PreconditionFailed(f"invalid arg '{name}' for {what} of queue type {cls.rabbit_type}")
        super().validate(arguments, durable, exclusive, auto_delete, what)

    def configure(self, settings):
        """Retention and segment size, which policies may change too; a classic queue's
        settings mean nothing to a stream."""
        super().configure({})
        self.retention_bytes = settings.get("x-max-length-bytes")
        self.retention_seconds = age_seconds(settings.get("x-max-age"))
        self.segment_bytes = settings.get("x-stream-max-segment-size-bytes", DEFAULT_SEGMENT_BYTES)
        self._apply_retention()

    @property
    def message_count(self):
        return self.next_offset - self.first_offset

    # -- the log -----------------------------------------------------------------------

    def enqueue(self, message):
        """Append to the log, in the store; False (the publisher's nack) while the store
        cannot take it."""
        store = self.store
        if not store.available:
            return False
        self.published += 1
        kept = Message(message.exchange, message.routing_key, message.body, message.properties,
                       message.encoded_properties)
        store.add_message(kept, (self,))
        published_at = time.time()
        offset = self.next_offset
        if self._append(kept.stored.key, len(message.body), published_at):
            self._apply_retention()
        self.tail.append((offset, kept, published_at))     # until committed, and while among the newest
        self.tail_bytes += len(message.body)
        commits = self._commits
        if commits and commits[-1][0] == store.open_batch:
            commits[-1][1] = offset + 1
        else:
            commits.append([store.open_batch, offset + 1])
            store.after_commit(self._committed)
        if self.positions:
            self.dispatch()
        return True

    def _append(self, key, size, published_at):
        """Give the message the next offset; True when it began a new segment."""
        offset = self.next_offset
        self.next_offset = offset + 1
        segments = self.segments
        segment = segments[-1] if segments else None
        began = segment is None or (segment.bytes and segment.bytes + size > self.segment_bytes)
        if began:
            segment = Segment(offset, key)
            segments.append(segment)
        if began or offset % INDEX_INTERVAL == 0:
            self.index.append((offset, key, published_at))
        segment.bytes += size
        segment.last_published = published_at
        self.log_bytes += size
        return began

    def _committed(self, batch, ok):
        """The store committed `batch`: the messages in it may leave the tail."""
        if not ok:
            return      # tried again with the next batch, whose commit says so
        commits = self._commits
        while commits and commits[0][0] <= batch:
            self.committed_offset = commits.popleft()[1]
        tail = self.tail
        while ((len(tail) > TAIL_MESSAGES or self.tail_bytes > TAIL_BYTES)
               and tail[0][0] < self.committed_offset):
            self.tail_bytes -= len(tail.popleft()[1].body)

    def _apply_retention(self):
        """Drop the oldest segments, never the newest, while the log is over its bytes or
        its oldest segment over its age."""
        segments, dropped = self.segments, False
        too_old = None if self.retention_seconds is None else time.time() - self.retention_seconds
        while len(segments) > 1 and (
                (self.retention_bytes is not None and self.log_bytes > self.retention_bytes)
                or (too_old is not None and segments[0].last_published < too_old)):
            self.log_bytes -= segments.popleft().bytes
            dropped = True
        if not dropped:
            return
        start = segments[0]
        self.first_offset = start.first_offset
        index = self.index
        del index[:bisect.bisect_left(index, start.first_offset, key=_offset_of)]
        tail = self.tail
        while tail and tail[0][0] < start.first_offset:
            self.tail_bytes -= len(tail.popleft()[1].body)
        for position in self.positions.values():
            if position.offset < start.first_offset:
                position.seek(start.first_offset)
        self.store.put_stream_start(self.vhost_name, self.name, start.first_offset, start.first_key)
        if self._remover is None:
            self._remover = gevent.spawn(self._remove_dropped)

    def _remove_dropped(self):
        """Remove from the store what retention dropped, once committed (the store reads
        back committed messages only), in batches, until it has caught up."""
        store = self.store
        try:
            while not self.deleted:
                store.committed()
                start_key = self.segments[0].first_key
                while not self.deleted:
                    keys = [key for key, *_ in store.read_queue(self, 0, READ_BATCH) if key < start_key]
                    if not keys:
                        break
                    store.remove_messages(self, [_Dropped(key) for key in keys])
                if self.deleted or self.segments[0].first_key == start_key:
                    break
        except StoreReadError:      # (the store logs it) the next drop by retention goes on
            pass
        finally:
            self._remover = None

    def recover(self, start):
        """At start, before any client: offsets, segments and the index rebuilt from the
        store, which is read once, in batches. `start` is where retention left the log
        (first offset, its key), None if it never dropped anything; what it dropped and
        the store still holds goes now."""
        first_offset, first_key = start or (0, 0)
        self.first_offset = self.next_offset = first_offset
        dropped, after_key = [], 0
        while True:
            rows = self.store.read_queue(self, after_key, READ_BATCH)
            if not rows:
                break
            for key, message, published_at, _ in rows:
                if key < first_key:
                    dropped.append(_Dropped(key))
                else:
                    self._append(key, len(message.body), published_at)
            after_key = rows[-1][0]
        if dropped:
            self.store.remove_messages(self, dropped)
        self.committed_offset = self.next_offset
        self._apply_retention()

    # -- consumers -----------------------------------------------------------------------

    def add_consumer(self, consumer):
        """RabbitMQ's stream consumers ack, with a prefetch window of their own (checked
        first, as RabbitMQ 3.10 does)."""
        if not consumer.prefetch_count:
            raise PreconditionFailed(f"consumer prefetch count is not set for '{self.what}'")
        if consumer.no_ack:
            raise Unsupported(f"automatic acknowledgement not supported by stream queues {self.what}")
        if consumer.channel.global_prefetch_count:
            raise Unsupported(f"{self.what} does not support global qos")
        position = self._position(consumer.arguments.get("x-stream-offset", "next"))
        super().add_consumer(consumer)
        self.positions[consumer] = position

    def _position(self, start):
        """Where a consumer's `x-stream-offset` starts it: "first", "last", "next", an
        offset (clamped to the log, as RabbitMQ does), a timestamp, or an interval back from
        now ("1h")."""
        if start == "first":
            return ReadPosition(self.first_offset)
        if start == "last":     # RabbitMQ: its last chunk; here the last message
            return ReadPosition(max(self.first_offset, self.next_offset - 1))
        if start == "next":
            return ReadPosition(self.next_offset)
        if type(start) is int:
            return ReadPosition(min(max(start, self.first_offset), self.next_offset))
        if isinstance(start, datetime.datetime):
            if start.tzinfo is None:
                start = start.replace(tzinfo=datetime.timezone.utc)
            return self._position_at(start.timestamp())
        seconds = age_seconds(start)
        if seconds is None:
            # RabbitMQ 3.10 closes the connection with 541 INTERNAL_ERROR here.
            raise PreconditionFailed(
                f"invalid arg 'x-stream-offset' for {self.what}: {start!r} is not first, last, next, an "
                "offset, a timestamp or an interval such as 1h")
        return self._position_at(time.time() - seconds)

    def _position_at(self, published_at):
        """The first message published at `published_at` or later: read from the index
        entry before it, passing over the earlier ones."""
        index = self.index
        at = bisect.bisect_left(index, published_at, key=_published_at) - 1
        if at < 0:
            return ReadPosition(self.first_offset)
        return ReadPosition(index[at][0], published_at)

    def remove_consumer(self, consumer):
        self.positions.pop(consumer, None)
        return super().remove_consumer(consumer)

    def dispatch(self):
        for consumer, position in self.positions.items():
            self._feed(consumer, position)

    def _feed(self, consumer, position):
        """Deliver to `consumer` while its window has room and the log has more: from
        what was read ahead, else from the tail, else start reading ahead."""
        channel, read_ahead, tail = consumer.channel, position.read_ahead, self.tail
        while position.offset < self.next_offset and channel.can_deliver(consumer):
            offset = position.offset
            if read_ahead:
                key, message, published_at, _ = read_ahead.popleft()
            elif tail and offset >= tail[0][0]:
                _, message, published_at = tail[offset - tail[0][0]]
                key = message.stored.key
            else:
                if not position.reading:
                    position.reading = True
                    gevent.spawn(self._read_ahead, consumer, position)
                return
            position.offset = offset + 1
            position.after_key = key
            if position.not_before is not None:
                if published_at < position.not_before:
                    continue
                position.not_before = None
            self._hand_out(message.at_offset(offset), channel, consumer, False)

    def _read_ahead(self, consumer, position):
        """Read the next batch of the log for `consumer` from the store, then go on feeding it."""
        generation, after_key, skip = position.generation, position.after_key, 0
        try:
            if after_key is None:
                index = self.index
                entry = index[max(0, bisect.bisect_right(index, position.offset, key=_offset_of) - 1)]
                after_key, skip = entry[1] - 1, position.offset - entry[0]
            rows = self.store.read_queue(self, after_key, skip + self._read_batch())
        except StoreReadError:      # (the store logs it) this consumer's feed tries again later
            gevent.spawn_later(PAGE_IN_RETRY_SECONDS, self.dispatch)
            return
        finally:
            position.reading = False
        if position.generation != generation or self.positions.get(consumer) is not position:
            return      # it moved on meanwhile (retention, cancel): its next feed reads again
        position.read_ahead.extend(rows[skip:])
        if len(rows) > skip:
            self._feed(consumer, position)

    def _read_batch(self):
        """How many messages to read at once: READ_BATCH, fewer for large messages."""
        count = self.next_offset - self.first_offset
        if not count or self.log_bytes <= READ_BATCH_BYTES:
            return READ_BATCH
        return max(1, min(READ_BATCH, READ_BATCH_BYTES * count // self.log_bytes))

    # -- settling and what streams refuse --------------------------------------------------

    def settle(self, deliveries, requeue, rejected=False):
        """Acks (and a channel's end) only open the window: the log keeps its messages."""
        if rejected:
            raise Unsupported(f"basic.nack and basic.reject not supported by stream queues {self.what}")
        settled = self._end_deliveries(deliveries)
        if not requeue:
            self.acked += len(settled)
        if self.positions:
            self.dispatch()

    def get(self, no_ack, channel=None):
        raise Unsupported(f"basic.get not supported by stream queues {self.what}")

    def purge(self):
        raise Unsupported(f"queue.purge not supported by stream queues {self.what}")

    def mark_deleted(self):
        super().mark_deleted()
        self.positions.clear()
