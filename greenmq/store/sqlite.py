"""The store in an SQLite database in WAL mode, one file in the data directory.

Writes collect in an open batch, and one committer greenlet hands each batch to the
store's writer thread as one transaction ending in one fsync. Whatever arrives while a
commit is in flight shares the next one (group commit), so the commit rate follows the
load; the publishers a commit confirmed are waited for a little before the next, so that
publishers each waiting for their confirm share one commit rather than alternate between
two; acks alone wait a little for a commit that happens anyway; and where consumers ack
most messages before their commit would end, a commit waits a little for the acks of the
messages it would write, which then are never written and are confirmed at the ack.
"""

import fcntl
import functools
import logging
import os
import sqlite3
import time
from itertools import chain

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from ..message import Message, properties_from_json, properties_to_json, ttl_of
from . import ReadFailures, Recovered, Store, StoreError, Stored, canonical_arguments, expiries
from .writer import WriterThread

log = logging.getLogger("greenmq.store")

# Bumped whenever the schema changes meaning; a database from a newer version is refused
# rather than misread.
FORMAT_VERSION = 1
DATABASE_FILE = "greenmq.sqlite3"
# Held (flock) by the broker using the data directory. Not SQLite's exclusive locking
# mode, which would also shut out the store's own read connection (read_queue).
LOCK_FILE = "greenmq.lock"

# SQLite's page cache, per connection (the writer thread's and read_queue's), in KiB: its
# default of 2,000 KiB, named here as the bound it is. Both connections keep theirs full, and
# the memory budget does not count them (the room under the limit does); a commit appends to
# the last pages of two b-trees and a read walks one queue's places in key order, so a larger
# cache would buy little.
CACHE_KIB = 2048

# After a failed commit (full disk, read-only or vanished data directory) the committer
# tries again on this schedule, doubling up to the cap: soon enough that publishers get
# going again within seconds of the disk coming back, rarely enough not to spin.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0

# Messages of one publisher mostly carry the same properties, so the JSON text of each
# wire encoding seen is kept for the next message like it; bounded, as a stream of unique
# headers (ids in them) would otherwise grow it without limit.
PROPERTIES_TEXT_CACHE_SIZE = 1024

# Acks need no fsync (one lost in a crash brings its message back, flagged redelivered), so
# their removals wait up to this long for a commit that has to happen anyway. Long enough
# that the next publish of a publisher waiting for each confirm (0.2 to 1 ms after the
# confirm) carries them: one commit per message, not two, +10% in bench/durable.py.
# Short, since with confirms outstanding acks are better off in a commit of their own
# soon: at 0.1 s the pipelined workload lost 15%, at 5 ms nothing measurable.
REMOVALS_DELAY_SECONDS = 0.005

# What a message accepted and not yet committed costs the store beyond its body: its row and
# place in the open batch (about 390 bytes, tracemalloc over 20,000 messages) and its
# parameters in the statements that write it (about 90). Counted in the node's memory budget
# until the commit is done, with the body: a paged message is held by the batch alone.
UNWRITTEN_MESSAGE_OVERHEAD_BYTES = 480

# After a commit, the publishers it confirmed (each waiting for its confirm before its next
# publish) are given this long to publish again before the next commit starts, so that
# publishers woken together share one commit: without it the first publish back started
# the next commit alone, and 16 such publishers settled into two groups of about 8 sharing
# alternate commits (bench/durable.py --publishers 16: 7 confirmed channels a commit, 15
# to 16 with it, and a third of the commits; 4 publishers: a fifth of the commits and a
# third less broker CPU a message). A raw publisher answers its confirm in
# 0.1-0.3 ms here; 1 ms bounds what one that does not come back (done, or busy) costs the
# others, under a typical commit of 0.5-2 ms.
RETURNING_PUBLISHERS_WAIT_SECONDS = 0.001
# A publisher that did not come back within that wait is not waited for again until it
# publishes within the wait of its confirm once more: an occasional publisher beside busy
# ones would otherwise cost each of its commits' successors the whole wait. The hashes of
# this many such publishers are kept, the oldest forgotten first.
LATE_PUBLISHERS_KEPT = 4096

# When consumers usually ack new messages before their commit would end (at least half of
# them, as last counted), a commit waits up to this long for the messages it would write
# to end first: those it need never write, and their publishers hear their confirms at the
# ack (Channel._ended_before_write), as RabbitMQ's store, which writes after an interval,
# confirms most messages of a work queue with idle consumers. Sixteen publishers each
# waiting for its confirm, one consumer acking: 12,000-13,000 msg/s without the wait and
# 4,000 fsyncs for 64,000 messages, 16,700-19,900 msg/s and 600-660 fsyncs with a wait of
# 1 ms (18,400 and 900 with 0.5 ms), bench/durable.py --publishers 16 --c-publishers.
# Where nobody consumes, or acks come later, nothing waits.
ENDING_MESSAGES_WAIT_SECONDS = 0.001
# The share of a commit's new messages ended before or while it is written from which the
# next commit waits for them.
ENDING_FIRST_SHARE = 0.5

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE vhosts (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT, hashing_algorithm TEXT, tags TEXT) WITHOUT ROWID;
CREATE TABLE permissions (user TEXT, vhost TEXT, configure TEXT, write TEXT, read TEXT,
                          PRIMARY KEY (user, vhost)) WITHOUT ROWID;
CREATE TABLE exchanges (vhost TEXT, name TEXT, type TEXT, auto_delete INTEGER, internal INTEGER,
                        arguments TEXT, PRIMARY KEY (vhost, name)) WITHOUT ROWID;
CREATE TABLE queues (id INTEGER PRIMARY KEY, vhost TEXT, name TEXT, auto_delete INTEGER,
                     arguments TEXT, UNIQUE (vhost, name));
CREATE TABLE bindings (vhost TEXT, source TEXT, destination TEXT, routing_key TEXT, arguments TEXT,
                       destination_kind TEXT,
                       PRIMARY KEY (vhost, source, destination, routing_key, arguments, destination_kind))
                       WITHOUT ROWID;
CREATE TABLE messages (seq INTEGER PRIMARY KEY, exchange TEXT, routing_key TEXT, properties TEXT,
                       amqp_properties BLOB, body BLOB, published_at REAL);
CREATE TABLE queue_messages (queue_id INTEGER, seq INTEGER, redelivered INTEGER,
                             priority INTEGER NOT NULL DEFAULT 0, expires_at REAL,
                             PRIMARY KEY (queue_id, seq)) WITHOUT ROWID;
"""

# Added later, as the tables below were: a message's priority in a priority queue (its
# `priority` capped at the queue's x-max-priority; 0 elsewhere), so a priority's paged
# messages are read back on their own (read_queue). A store written before gains it when
# opened, filled in from the messages' properties for the priority queues (see `load`).
_PLACES_PRIORITY_COLUMN = "ALTER TABLE queue_messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"
_FILL_PLACES_PRIORITY = ("UPDATE queue_messages SET priority = MIN(?, COALESCE((SELECT json_extract("
                         "m.properties, '$.priority') FROM messages m WHERE m.seq = queue_messages.seq), 0)) "
                         "WHERE queue_id = ?")
# Added later too: when the message expires in its queue (wall-clock time, NULL: never), as
# the queue gave it when it took the message (store.expiries). The places of a store written
# before have none kept, which this value says: their expiry is worked out as it was then,
# from the publish time and the queue's TTL when read back (read_queue).
EXPIRY_NOT_KEPT = -1.0
_PLACES_EXPIRY_COLUMN = f"ALTER TABLE queue_messages ADD COLUMN expires_at REAL DEFAULT {EXPIRY_NOT_KEPT}"

# Added after format 1 was out: a store written before has no such table, and gains it
# when opened, so limits need no new format version.
_LIMITS_TABLE = """CREATE TABLE IF NOT EXISTS limits (kind TEXT, name TEXT, limits TEXT,
                                                   PRIMARY KEY (kind, name)) WITHOUT ROWID"""
# Likewise added later: where each truncated stream's log starts (put_stream_start).
_STREAM_STARTS_TABLE = """CREATE TABLE IF NOT EXISTS stream_starts (queue_id INTEGER PRIMARY KEY,
                                                                 first_offset INTEGER, first_key INTEGER)"""
_READ_QUEUE = ("SELECT q.seq, m.exchange, m.routing_key, m.properties, m.amqp_properties, m.body, "
               "m.published_at, q.expires_at, q.redelivered FROM queue_messages q JOIN messages m ON m.seq = q.seq "
               "WHERE q.queue_id = ? AND q.seq > ? {} ORDER BY q.seq LIMIT ?")
# A priority's places only; SQLite walks the queue's places in key order and skips the
# other priorities' (small rows, no bodies read).
_OF_PRIORITY = "AND q.priority = ?"
_PAGED_BYTES = ("SELECT COALESCE(SUM(LENGTH(m.body)), 0) FROM (SELECT q.seq FROM queue_messages q "
                "WHERE q.queue_id = ? AND q.seq > ? {} ORDER BY q.seq LIMIT ?) q JOIN messages m ON m.seq = q.seq")
_PAGED_SIZES = ("SELECT q.priority, COUNT(*), COALESCE(SUM(LENGTH(m.body)), 0) FROM queue_messages q "
                "JOIN messages m ON m.seq = q.seq WHERE q.queue_id = ? GROUP BY q.priority")

# Added later still, as the limits table was.
# A policy's priority is kept as JSON text: RabbitMQ takes any number there, and SQLite's
# INTEGER holds 64 bits.
_POLICIES_TABLE = """CREATE TABLE IF NOT EXISTS policies (vhost TEXT, kind TEXT, name TEXT, pattern TEXT,
                                                       apply_to TEXT, priority TEXT, definition TEXT,
                                                       PRIMARY KEY (vhost, kind, name)) WITHOUT ROWID"""

# Messages, their places and removals are written several rows to a statement: the writer
# thread gives up the GIL around every statement (executemany: every row), and under a busy
# hub each time it wants it back it may wait for the hub's next system call. Runs of 256,
# 128, ... 1 rows: a batch of n rows takes at most log2(n) + n / 256 statements, from few
# texts, which SQLite keeps prepared; 256 rows of a message are 1,792 variables, far under
# SQLite's limit of 32,766.
MAX_ROWS_PER_STATEMENT = 256
_INSERT_MESSAGES = ("INSERT INTO messages VALUES ", "(?, ?, ?, ?, ?, ?, ?)", "")
BODY_COLUMN = 5
_INSERT_PLACES = ("INSERT INTO queue_messages (queue_id, seq, redelivered, priority, expires_at) VALUES ",
                  "(?, ?, 0, ?, ?)", "")
_DELETE_PLACES = ("DELETE FROM queue_messages WHERE queue_id = ? AND seq IN (", "?", ")")
_DELETE_MESSAGES = ("DELETE FROM messages WHERE seq IN (", "?", ")")

# A prepared statement keeps a copy of its last parameters until it runs again (Python's
# sqlite3 resets a statement after use, and a reset leaves its bindings), and its cache
# keeps one prepared statement per text: 128 rows of 1 MiB bodies stayed 128 MiB of SQLite's
# memory, counted nowhere, long after their commit (a backlog of 1 MiB bodies held 550 MiB
# RSS against a 256 MiB limit). So a statement carries at most STATEMENT_BODY_BYTES of
# bodies, or one body, and what the statements keep stays under 10 MiB: the one-row
# statement, when it carried a larger body (up to the largest message), runs once more with
# an empty row, deleted at once in the same transaction. Bodies of BIG_BODY_BYTES or more go
# in statements of their own, so that one of them does not shorten a batch of small ones.
# (One row to each statement cost 16 KiB bodies half their publish rate once the writer
# thread was the bound, bench/paging.py --size 16384: each statement costs it the GIL.)
STATEMENT_BODY_BYTES = 1024 * 1024
BIG_BODY_BYTES = 16 * 1024
_EMPTY_ROW_SEQ = -1         # no message's: their keys count up from 1
_UNBIND_ONE_ROW_INSERT = [
    ("".join(_INSERT_MESSAGES), (_EMPTY_ROW_SEQ, "", "", None, None, b"", 0)),      # the one-row text
    ("DELETE FROM messages WHERE seq = ?", (_EMPTY_ROW_SEQ,))]

# A message no queue's place holds any more; each place is looked up by its primary key
# (queue_id, seq), one per queue, rather than by scanning the places.
_UNHELD = ("NOT EXISTS (SELECT 1 FROM queue_messages q WHERE q.queue_id IN (SELECT id FROM queues) "
           "AND q.seq = messages.seq)")
_UNHELD_ELSEWHERE = ("NOT EXISTS (SELECT 1 FROM queue_messages q WHERE q.queue_id IN (SELECT id FROM queues) "
                     "AND q.queue_id != ? AND q.seq = messages.seq)")
# The keys of a queue's first places above a key (remove_paged_head).
_FIRST_PLACES = "SELECT seq FROM queue_messages WHERE queue_id = ? AND seq > ? ORDER BY seq LIMIT ?"
_DELETE_UNHELD_MESSAGES = ("DELETE FROM messages WHERE seq IN (", "?", ") AND " + _UNHELD)
_MARK_REDELIVERED = "UPDATE queue_messages SET redelivered = 1 WHERE queue_id = ? AND seq = ?"


class _Batch:
    """Writes waiting for one commit, in the order they must run: messages and their
    places first, then what ended, then definitions in the order they were made."""

    __slots__ = ("number", "new_messages", "unwritten_bytes", "removed_places", "removed_messages",
                 "removed_if_unheld", "definitions", "callbacks")

    def __init__(self, number):
        self.number = number
        # seq -> [row, queue ids, None or {queue id: (its priority there, its expiry there)},
        # None or (callback, argument) of on_end_before_write]; dropped again if acked in time
        self.new_messages = {}
        self.unwritten_bytes = 0    # of the messages added, counted in the memory budget until committed
        self.removed_places = []    # (queue id, seq)
        self.removed_messages = []  # (seq,)
        self.removed_if_unheld = [] # (seq,) of messages some queue paged: gone once no place holds them
        self.definitions = []       # (sql, parameters)
        self.callbacks = {}

    def __bool__(self):
        return bool(self.writes() or self.callbacks)

    def writes(self):
        return bool(self.new_messages or self.removed_places or self.removed_messages or self.removed_if_unheld
                    or self.definitions)

    def statements(self):
        """(sql, parameters) in the order they must run."""
        statements = []
        if self.new_messages:
            rows, big_rows = [], []
            for pending in self.new_messages.values():
                row = pending[0]
                (big_rows if len(row[BODY_COLUMN]) >= BIG_BODY_BYTES else rows).append(row)
            for some in (rows, big_rows):
                if some:
                    largest = max(len(row[BODY_COLUMN]) for row in some)
                    statements += _rows_at_once(_INSERT_MESSAGES, some, most=_rows_a_statement(largest))
                    if largest > STATEMENT_BODY_BYTES:
                        statements += _UNBIND_ONE_ROW_INSERT
            statements += _rows_at_once(_INSERT_PLACES, [
                (queue_id, seq, *places[queue_id]) if places else (queue_id, seq, 0, None)
                for seq, (_, queue_ids, places, _) in self.new_messages.items() for queue_id in queue_ids])
        if self.removed_places:
            by_queue = {}
            for queue_id, seq in self.removed_places:
                by_queue.setdefault(queue_id, []).append((seq,))
            for queue_id, seqs in by_queue.items():
                statements += _rows_at_once(_DELETE_PLACES, seqs, (queue_id,))
        if self.removed_messages:
            statements += _rows_at_once(_DELETE_MESSAGES, self.removed_messages)
        if self.removed_if_unheld:
            statements += _rows_at_once(_DELETE_UNHELD_MESSAGES, self.removed_if_unheld)
        return statements + self.definitions

    def must_sync(self):
        """Only what ended may wait for a later fsync: an ack lost in a crash brings its
        message back, flagged redelivered, which at-least-once allows; everything else
        (new messages, definitions) is synced before its commit counts as done."""
        return bool(self.new_messages or self.definitions)


class SqliteStore(Store):
    """The store on disk: what the broker keeps in `data_dir` outlives the process."""

    def __init__(self, data_dir):
        super().__init__()
        self.path = os.path.join(data_dir, DATABASE_FILE)
        try:
            os.makedirs(data_dir, exist_ok=True)
            # One broker per data directory: the first one holds the lock until it stops.
            self._lock = open(os.path.join(data_dir, LOCK_FILE), "a")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise StoreError(f"the message store {self.path} is in use by another process "
                                 "(another GreenMQ with the same --data-dir?)") from None
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # Debian's SQLite zeroes every freed page (secure_delete on), so a consumed 1 MiB
            # body cost a megabyte of zeros through the WAL and a checkpoint: the draining of
            # a big-body backlog ran at half RabbitMQ's rate on those writes. FAST zeroes only
            # what costs no extra write; RabbitMQ's own files keep consumed messages until
            # compaction too.
            self._db.execute("PRAGMA secure_delete=FAST")
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self._created = not tables
            if not tables:
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT INTO meta VALUES ('format_version', ?), ('clean_stop', 1)", (FORMAT_VERSION,))
            version = dict(self._db.execute("SELECT key, value FROM meta")).get("format_version")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreError(f"the message store {self.path} is in use by another process "
                                 "(another GreenMQ with the same --data-dir?)") from None
            raise StoreError(f"cannot open the message store {self.path}: {_reason(exc)}") from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the message store {self.path}: {_reason(exc)}") from None
        if version != FORMAT_VERSION:
            raise StoreError(
                f"the message store {self.path} has format version {version!r}, and this GreenMQ "
                f"reads version {FORMAT_VERSION}; use the GreenMQ that wrote it or another --data-dir")
        try:
            self._db.execute(_LIMITS_TABLE)
            self._db.execute(_POLICIES_TABLE)
            self._db.execute(_STREAM_STARTS_TABLE)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(queue_messages)")}
            # A store from before: its priority queues' places get their priorities in `load`.
            self._places_lack_priorities = "priority" not in columns
            if self._places_lack_priorities:
                self._db.execute(_PLACES_PRIORITY_COLUMN)
            if "expires_at" not in columns:
                self._db.execute(_PLACES_EXPIRY_COLUMN)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the message store {self.path}: {_reason(exc)}") from None
        self._inode = os.stat(self.path).st_ino
        self._queue_ids = {}         # (vhost, name) -> id of a durable queue's row
        self._properties_text = {}   # a message's encoded properties -> their JSON text
        self._next_queue_id = 1
        self._batch = _Batch(self.open_batch)
        self._failed = None          # the batch that could not be committed, to try again
        self._wakeup = Event()
        self._woken = False
        self._removals_timer = None  # wakes the committer for removals nothing else took
        self._idle = Event()         # set while nothing waits to be committed
        self._idle.set()
        self._committer = None
        # The publishers the last commit confirmed that have not published again, and the
        # event set once they all have (after_commit(again=True)).
        self._returning = None
        self._returned = Event()
        # hash(callback) -> when the last commit confirmed it, of the publishers not waited for
        self._late = {}
        # New messages kept and those that ended before their commit did, since the last
        # commit of new messages began; whether commits wait for new messages to end
        # (ENDING_...); the key
        # of the first new message of the commit under way, and the event set once the
        # open batch holds no new message.
        self._added = self._ended_first = 0
        self._wait_for_ends = False
        self._writing_from_key = None
        self._all_ended = Event()
        self._writer = None
        self._synchronous_full = True  # the connection's synchronous setting, as the writer thread left it
        self._closed = False
        self._reader = None          # read_queue's connection, opened on first use
        self._reading = Semaphore()  # one read at a time on it
        self._reads = ReadFailures(f"the message store {self.path}")
        self._read_properties = {}   # properties text -> (properties, their TTL)
        # After a crash any message stored before it may have been delivered: read_queue
        # flags those with keys up to this one redelivered (0: none).
        self._redelivered_up_to = 0

    # -- definitions ---------------------------------------------------------------------

    def _define(self, sql, parameters):
        self._batch.definitions.append((sql, parameters))
        self._wake()

    def put_vhost(self, name):
        self._define("INSERT OR REPLACE INTO vhosts VALUES (?)", (name,))

    def delete_vhost(self, name):
        for name_of_queue in [queue for vhost, queue in self._queue_ids if vhost == name]:
            self.delete_queue(name, name_of_queue)
        self._define("DELETE FROM limits WHERE kind = 'vhost' AND name = ?", (name,))
        self._define("DELETE FROM policies WHERE vhost = ?", (name,))
        for sql in ("DELETE FROM vhosts WHERE name = ?", "DELETE FROM permissions WHERE vhost = ?",
                    "DELETE FROM exchanges WHERE vhost = ?", "DELETE FROM bindings WHERE vhost = ?"):
            self._define(sql, (name,))

    def put_user(self, name, password_hash, hashing_algorithm, tags):
        self._define("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)",
                     (name, password_hash, hashing_algorithm, properties_to_json(list(tags))))

    def delete_user(self, name):
        self._define("DELETE FROM users WHERE name = ?", (name,))
        self._define("DELETE FROM permissions WHERE user = ?", (name,))
        self._define("DELETE FROM limits WHERE kind = 'user' AND name = ?", (name,))

    def put_permission(self, user, vhost, configure, write, read):
        self._define("INSERT OR REPLACE INTO permissions VALUES (?, ?, ?, ?, ?)", (user, vhost, configure, write, read))

    def delete_permission(self, user, vhost):
        self._define("DELETE FROM permissions WHERE user = ? AND vhost = ?", (user, vhost))

    def put_limits(self, kind, name, limits):
        if limits:
            self._define("INSERT OR REPLACE INTO limits VALUES (?, ?, ?)", (kind, name, properties_to_json(limits)))
        else:
            self._define("DELETE FROM limits WHERE kind = ? AND name = ?", (kind, name))

    def put_policy(self, vhost, kind, name, pattern, apply_to, priority, definition):
        self._define("INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (vhost, kind, name, pattern, apply_to, properties_to_json(priority),
                      properties_to_json(definition)))

    def delete_policy(self, vhost, kind, name):
        self._define("DELETE FROM policies WHERE vhost = ? AND kind = ? AND name = ?", (vhost, kind, name))

    def put_exchange(self, vhost, name, type_name, auto_delete, internal, arguments):
        self._define("INSERT OR REPLACE INTO exchanges VALUES (?, ?, ?, ?, ?, ?)",
                     (vhost, name, type_name, auto_delete, internal, properties_to_json(arguments)))

    def delete_exchange(self, vhost, name):
        self._define("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (vhost, name))
        self._define("DELETE FROM bindings WHERE vhost = ? AND (source = ? OR "
                     "(destination = ? AND destination_kind = 'exchange'))", (vhost, name, name))

    def put_queue(self, vhost, name, auto_delete, arguments):
        queue_id = self._queue_ids[vhost, name] = self._next_queue_id
        self._next_queue_id += 1
        self._define("INSERT INTO queues VALUES (?, ?, ?, ?, ?)",
                     (queue_id, vhost, name, auto_delete, properties_to_json(arguments)))

    def delete_queue(self, vhost, name):
        queue_id = self._queue_ids.pop((vhost, name), None)
        if queue_id is None:
            return
        self._define("DELETE FROM queues WHERE id = ?", (queue_id,))
        # Its messages no other queue holds go with it, even those whose deliveries are still
        # out (they can only end now): so no message outlives every queue, and a start after
        # a crash has nothing to look for.
        self._define("DELETE FROM messages WHERE seq IN (SELECT seq FROM queue_messages WHERE queue_id = ?) "
                     "AND " + _UNHELD_ELSEWHERE, (queue_id, queue_id))
        self._define("DELETE FROM queue_messages WHERE queue_id = ?", (queue_id,))
        self._define("DELETE FROM stream_starts WHERE queue_id = ?", (queue_id,))
        self._define("DELETE FROM bindings WHERE vhost = ? AND destination = ? AND destination_kind = 'queue'",
                     (vhost, name))

    def put_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        self._define("INSERT OR REPLACE INTO bindings VALUES (?, ?, ?, ?, ?, ?)",
                     (vhost, source, destination, routing_key, canonical_arguments(arguments), destination_kind))

    def delete_binding(self, vhost, source, destination, routing_key, arguments, destination_kind):
        self._define("DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination = ? "
                     "AND routing_key = ? AND arguments = ? AND destination_kind = ?",
                     (vhost, source, destination, routing_key, canonical_arguments(arguments), destination_kind))

    # -- messages ------------------------------------------------------------------------

    def add_message(self, message, queues):
        key = self._record(message, queues).key
        properties = message.properties
        batch = self._batch
        size = UNWRITTEN_MESSAGE_OVERHEAD_BYTES + len(message.body)
        batch.unwritten_bytes += size
        self.memory.held_bytes += size
        self._added += 1
        now = time.time()
        queue_ids = [self._queue_ids[queue.vhost_name, queue.name] for queue in queues]
        prioritised = properties and properties.get("priority")
        expires = expiries(message, queues, now)
        places = None
        if prioritised or expires:
            places = {queue_id: (queue.level_of(message) if prioritised else 0, expires and expires[at])
                      for at, (queue_id, queue) in enumerate(zip(queue_ids, queues))}
        batch.new_messages[key] = [
            (key, message.exchange, message.routing_key, self._properties_json(message),
             message.encoded_properties, message.body, now),
            queue_ids, places, None]
        self._wake()

    def on_end_before_write(self, message, callback, argument):
        pending = self._batch.new_messages.get(message.stored.key) if message.stored else None
        if pending is not None:
            pending[3] = (callback, argument)

    def _properties_json(self, message):
        if message.properties is None:
            return None
        encoded = message.encoded_properties
        if encoded is None:
            return properties_to_json(message.properties)
        text = self._properties_text.get(encoded)
        if text is None:
            if len(self._properties_text) >= PROPERTIES_TEXT_CACHE_SIZE:
                self._properties_text.clear()
            text = self._properties_text[encoded] = properties_to_json(message.properties)
        return text

    def remove_messages(self, queue, messages, dead_lettered=False):
        batch = self._batch
        self.message_writes += 1
        new_messages = batch.new_messages
        queue_id = None if queue.deleted else self._queue_ids.get((queue.vhost_name, queue.name))
        writing_from, ended = self._writing_from_key, None
        for message in messages:
            stored = message.stored
            if stored.refs is not None:
                stored.refs -= 1
            seq = stored.key
            pending = new_messages.get(seq)
            if pending is not None:
                # Not written yet: it need never be, once no queue holds it.
                if stored.refs != 0:
                    if queue_id is None:
                        continue
                    pending[1].remove(queue_id)
                    if pending[1]:
                        continue
                del new_messages[seq]
                self._ended_first += 1
                if not new_messages:
                    self._all_ended.set()
                if pending[3] is not None and not dead_lettered:
                    if ended is None:
                        ended = []
                    ended.append(pending[3])
                continue
            if writing_from is not None and seq >= writing_from:
                self._ended_first += 1      # one commit too late
            if queue_id is not None:
                batch.removed_places.append((queue_id, seq))
            if stored.refs == 0:
                batch.removed_messages.append((seq,))
            elif stored.refs is None:
                batch.removed_if_unheld.append((seq,))
        self._wake_soon()
        for callback, argument in ended or ():
            callback(argument)

    def read_queue(self, queue, after_key, limit, priority=None):
        """On a connection of its own in the hub's thread pool: WAL lets it read while the
        writer thread commits."""
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is None:
            return []
        rows = self._read(_READ_QUEUE, queue_id, after_key, priority, limit)
        decoded = self._read_properties
        if len(decoded) >= PROPERTIES_TEXT_CACHE_SIZE:
            decoded.clear()
        messages, crashed_up_to = [], self._redelivered_up_to
        for seq, exchange, routing_key, properties, amqp_properties, body, published_at, expires_at, redelivered in rows:
            ttl = None
            if properties is not None:
                properties_and_ttl = decoded.get(properties)
                if properties_and_ttl is None:
                    value = properties_from_json(properties)
                    properties_and_ttl = decoded[properties] = (value, ttl_of(value))
                properties, ttl = properties_and_ttl
            message = Message(exchange, routing_key, body, properties, amqp_properties)
            redelivered = redelivered == 1 or seq <= crashed_up_to
            if ttl is not None or redelivered:
                message = message.placed(redelivered, None)
                message.ttl = ttl
            message.stored = Stored(seq, None)     # other queues may hold it: the places say
            if expires_at == EXPIRY_NOT_KEPT:
                queue_ttl = queue.effective_ttl(message)
                expires_at = None if queue_ttl is None else published_at + queue_ttl / 1000.0
            messages.append((seq, message, published_at, expires_at))
        return messages

    def _read(self, sql, queue_id, after_key, priority, *more):
        """`sql` (with a {} where a priority's filter goes) on the read connection, one
        read at a time, in the hub's thread pool; its rows."""
        if priority is None:
            sql, parameters = sql.format(""), (queue_id, after_key, *more)
        else:
            sql, parameters = sql.format(_OF_PRIORITY), (queue_id, after_key, priority, *more)
        with self._reading:
            error, rows = gevent.get_hub().threadpool.apply(self._read_rows, (sql, parameters))
        if error is not None:
            self._reads.failed(error)
        self._reads.succeeded()
        return rows

    def _read_rows(self, sql, parameters):
        """In a pool thread: (None, the rows), or (why, None) when the disk failed the read
        (returned, not raised: the pool would print it as a crash)."""
        try:
            if self._reader is None:
                self._reader = self._open_reader()
            return None, self._reader.execute(sql, parameters).fetchall()
        except (sqlite3.Error, OSError) as exc:
            return _reason(exc), None

    def _open_reader(self):
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only=1")
        reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return reader

    def paged_bytes(self, queue, after_key, count, priority=None):
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is None or not self.committed():
            return 0
        return self._read(_PAGED_BYTES, queue_id, after_key, priority, count)[0][0]

    def paged_sizes(self, queue):
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is None:
            return {}
        with self._reading:
            error, rows = gevent.get_hub().threadpool.apply(self._read_rows, (_PAGED_SIZES, (queue_id,)))
        if error is not None:       # at start: as a store that cannot be opened
            raise StoreError(f"cannot read the message store {self.path}: {error}")
        return {priority: (count, size) for priority, count, size in rows}

    def remove_paged(self, queue, after_key, priority=None):
        """As definitions, so they run in order with a deletion of the queue; up to the last
        key kept so far, as a batch writes its new messages before its definitions and a
        message published after the purge may share its commit."""
        self.message_writes += 1
        keys = (after_key, self.last_key)
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is not None:
            if priority is None:
                self._define("DELETE FROM queue_messages WHERE queue_id = ? AND seq > ? AND seq <= ?",
                             (queue_id, *keys))
            else:
                self._define("DELETE FROM queue_messages WHERE queue_id = ? AND seq > ? AND seq <= ? "
                             "AND priority = ?", (queue_id, *keys, priority))
        self._define("DELETE FROM messages WHERE seq > ? AND seq <= ? AND " + _UNHELD, keys)

    def remove_paged_head(self, queue, after_key, count):
        """As definitions, as remove_paged: the messages no other queue holds, then the places."""
        self.message_writes += 1
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is None:
            return
        self._define("DELETE FROM messages WHERE seq IN (" + _FIRST_PLACES + ") AND " + _UNHELD_ELSEWHERE,
                     (queue_id, after_key, count, queue_id))
        self._define("DELETE FROM queue_messages WHERE queue_id = ? AND seq IN (" + _FIRST_PLACES + ")",
                     (queue_id, queue_id, after_key, count))

    def put_stream_start(self, vhost, name, first_offset, first_key):
        self._define("INSERT OR REPLACE INTO stream_starts VALUES (?, ?, ?)",
                     (self._queue_ids[vhost, name], first_offset, first_key))

    def mark_redelivered(self, queue, messages):
        queue_id = self._queue_ids.get((queue.vhost_name, queue.name))
        if queue_id is not None:
            for message in messages:
                self._define(_MARK_REDELIVERED, (queue_id, message.stored.key))

    # -- commits -------------------------------------------------------------------------

    def after_commit(self, callback, again=False):
        callbacks = self._batch.callbacks
        if callback not in callbacks:
            callbacks[callback] = again
            returning = self._returning
            if returning and callback in returning:
                returning.discard(callback)
                if not returning:
                    self._returned.set()
            elif again and self._late:
                confirmed_at = self._late.get(hash(callback))
                if confirmed_at is not None and time.monotonic() - confirmed_at < RETURNING_PUBLISHERS_WAIT_SECONDS:
                    del self._late[hash(callback)]
        self._wake()

    def _wake(self):
        if not self._woken:
            self._woken = True
            if self._committer is None:
                self._committer = gevent.spawn(self._commit_loop)
            self._idle.clear()
            self._wakeup.set()

    def _wake_soon(self):
        """Removals need no fsync and nobody waits for them: they go with the next commit
        something else asks for, or on their own REMOVALS_DELAY_SECONDS later. A publisher
        waiting for each confirm then rarely waits behind a commit of acks alone."""
        self._idle.clear()
        if not self._woken and self._removals_timer is None:
            self._removals_timer = gevent.get_hub().loop.timer(REMOVALS_DELAY_SECONDS)
            self._removals_timer.start(self._wake)

    def _commit_loop(self):
        """One commit at a time; what arrives meanwhile waits for the next, and so, a
        little, do the publishers the last one confirmed."""
        self._writer = WriterThread()
        retry_in = RETRY_FIRST_SECONDS
        while True:
            if self._failed is None:
                self._wakeup.wait()
            else:
                self._wakeup.wait(retry_in)
            if self._returning and not self._returned.wait(RETURNING_PUBLISHERS_WAIT_SECONDS):
                self._late.update(dict.fromkeys(map(hash, self._returning)))
                while len(self._late) > LATE_PUBLISHERS_KEPT:
                    del self._late[next(iter(self._late))]
            self._returning = None
            self._returned.clear()
            if self._wait_for_ends and self._batch.new_messages and not self._batch.definitions:
                self._all_ended.clear()
                self._all_ended.wait(ENDING_MESSAGES_WAIT_SECONDS)
            self._wakeup.clear()
            self._woken = False
            if self._removals_timer is not None:
                self._removals_timer.close()
                self._removals_timer = None
            batch, self._batch = self._batch, _Batch(self.open_batch + 1)
            self.open_batch += 1
            if self._added:     # a commit of removals alone says nothing of the next one
                self._wait_for_ends = self._ended_first >= self._added * ENDING_FIRST_SHARE
                self._added = self._ended_first = 0
            self._writing_from_key = next(iter(batch.new_messages), None)
            if self._failed is not None:
                batch = _merged(self._failed, batch)
            # The rows are made here, so the thread runs little Python (and waits little for the GIL).
            error = None
            if batch.writes():
                started = time.monotonic()
                error = self._writer.run(self._write, batch.statements(), batch.must_sync())
                self.commit_seconds.observe(time.monotonic() - started)
            self._writing_from_key = None
            if error is None:
                self.memory.held_bytes -= batch.unwritten_bytes
                if self._failed is not None:
                    log.warning("the message store %s is writable again", self.path)
                    self._failed = None
                    self.available = True
                    retry_in = RETRY_FIRST_SECONDS
            else:
                if self._failed is None:
                    log.error("cannot write the message store %s: %s; persistent messages are "
                              "refused until it is writable again", self.path, error)
                else:
                    retry_in = min(retry_in * 2, RETRY_MAX_SECONDS)
                self._failed = batch
                self.available = False
            waiting, late, now = self._batch.callbacks, self._late, time.monotonic()
            self._returning = returning = set()
            for callback, again in batch.callbacks.items():
                if again and callback not in waiting:
                    if hash(callback) in late:
                        late[hash(callback)] = now
                    else:
                        returning.add(callback)
            for callback in batch.callbacks:
                callback(batch.number, error is None)
            batch.callbacks = {}
            if not self._batch:
                self._idle.set()
            # Not kept while the next batch fills: a written batch holds its bodies (a batch of
            # 1 MiB messages kept 56 MiB, counted nowhere, until the next commit).
            batch = None

    def _write(self, statements, sync):
        """In the writer thread: `statements` as one transaction. Returns None, or why it failed."""
        db = self._db
        try:
            if os.stat(self.path).st_ino != self._inode:
                raise OSError("the database file was replaced")
            # WAL is written in order, so the next synced commit also syncs this one's frames.
            # Set only when it changes: each statement costs the thread the GIL twice more.
            if sync != self._synchronous_full:
                db.execute("PRAGMA synchronous=" + ("FULL" if sync else "NORMAL"))
                self._synchronous_full = sync
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, parameters in statements:
                    db.execute(sql, parameters)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, OverflowError) as exc:
            # OverflowError: a number SQLite cannot hold; the writes that carry numbers from
            # outside keep them as JSON text, so this is a bug, reported as a failed commit
            # rather than a writer that dies.
            return _reason(exc)
        return None

    # -- recovery and stop ---------------------------------------------------------------

    def load(self):
        db = self._db
        recovered = Recovered()
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            recovered.clean = meta.get("clean_stop") == 1
            db.execute("UPDATE meta SET value = 0 WHERE key = 'clean_stop'")
            recovered.first_start = self._created
            recovered.vhosts = [name for name, in db.execute("SELECT name FROM vhosts")]
            recovered.users = [(name, password_hash, algorithm, tuple(properties_from_json(tags)))
                               for name, password_hash, algorithm, tags in db.execute("SELECT * FROM users")]
            recovered.permissions = list(db.execute("SELECT user, vhost, configure, write, read FROM permissions"))
            recovered.limits = [(kind, name, properties_from_json(limits))
                                for kind, name, limits in db.execute("SELECT kind, name, limits FROM limits")]
            recovered.policies = [row[:5] + (properties_from_json(row[5]), properties_from_json(row[6]))
                                  for row in db.execute(
                "SELECT vhost, kind, name, pattern, apply_to, priority, definition FROM policies")]
            for vhost, name, type_name, auto_delete, internal, arguments in db.execute(
                    "SELECT vhost, name, type, auto_delete, internal, arguments FROM exchanges"):
                recovered.exchanges.append((vhost, name, type_name, bool(auto_delete), bool(internal),
                                            properties_from_json(arguments)))
            queues = {}
            for queue_id, vhost, name, auto_delete, arguments in db.execute(
                    "SELECT id, vhost, name, auto_delete, arguments FROM queues ORDER BY id"):
                self._queue_ids[vhost, name] = queue_id
                self._next_queue_id = queue_id + 1
                queues[queue_id] = [vhost, name, bool(auto_delete), properties_from_json(arguments), 0]
                max_priority = queues[queue_id][3].get("x-max-priority")
                if self._places_lack_priorities and type(max_priority) is int and max_priority > 0:
                    db.execute(_FILL_PLACES_PRIORITY, (max_priority, queue_id))
            for queue_id, first_offset, first_key in db.execute("SELECT * FROM stream_starts"):
                if queue_id in queues:
                    vhost, name = queues[queue_id][:2]
                    recovered.stream_starts[vhost, name] = (first_offset, first_key)
            for row in db.execute("SELECT vhost, source, destination, routing_key, arguments, destination_kind "
                                  "FROM bindings"):
                recovered.bindings.append(row[:4] + (properties_from_json(row[4]), row[5]))
            # A count per queue, each a range of the places' primary key; the messages
            # stay on disk, read back by each queue as it needs them (read_queue).
            for queue_id, queue in queues.items():
                queue[4] = db.execute("SELECT COUNT(*) FROM queue_messages WHERE queue_id = ?",
                                      (queue_id,)).fetchone()[0]
            self.last_key = db.execute("SELECT MAX(seq) FROM messages").fetchone()[0] or 0
            if not recovered.clean:
                self._redelivered_up_to = self.last_key
            recovered.queues = [tuple(queue) for queue in queues.values()]
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(f"cannot read the message store {self.path}: {_reason(exc)}") from None
        return recovered

    def flush(self):
        """Block the calling greenlet until everything written so far has been tried once."""
        if self._batch:
            self._wake()
        self._idle.wait()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._returning = None      # no publisher comes back to a broker that stops
        self._returned.set()
        self.flush()
        if self._committer is not None:
            self._committer.kill()
        if self._writer is not None:
            self._writer.stop()
        try:
            if self._failed is None:
                self._db.execute("UPDATE meta SET value = 1 WHERE key = 'clean_stop'")
            else:
                log.error("stopping with writes the message store %s could not take; they are lost, "
                          "and messages may return after the next start", self.path)
            self._db.close()
            if self._reader is not None:
                self._reader.close()
            self._lock.close()
        except sqlite3.Error as exc:
            log.error("cannot close the message store %s cleanly: %s", self.path, _reason(exc))


def _merged(first, second):
    """A failed batch and the one after it, to be tried as one."""
    first.number = second.number
    first.unwritten_bytes += second.unwritten_bytes
    for seq, pending in second.new_messages.items():
        first.new_messages[seq] = pending
    first.removed_places += second.removed_places
    first.removed_messages += second.removed_messages
    first.removed_if_unheld += second.removed_if_unheld
    first.definitions += second.definitions
    first.callbacks = second.callbacks
    return first


def _rows_at_once(statement, rows, first=(), most=MAX_ROWS_PER_STATEMENT):
    """(sql, parameters) writing `rows` (tuples) in runs of `most`, then halves, down to 1;
    `statement` is (start, one row's placeholders, end), and `first` the parameters of
    `start`."""
    statements, start, size = [], 0, most
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        statements.append((_rows_sql(*statement, size), [*first, *chain.from_iterable(rows[start:start + size])]))
        start += size
    return statements


def _rows_a_statement(largest):
    """How many messages whose largest body is `largest` bytes one statement may write:
    MAX_ROWS_PER_STATEMENT, halved until they carry at most STATEMENT_BODY_BYTES of bodies,
    down to 1."""
    most = MAX_ROWS_PER_STATEMENT
    while most > 1 and most * largest > STATEMENT_BODY_BYTES:
        most //= 2
    return most


@functools.lru_cache(maxsize=None)      # four kinds of statement, nine sizes each
def _rows_sql(start, row, end, count):
    return start + ", ".join([row] * count) + end


def _reason(exc):
    return str(exc) or type(exc).__name__
