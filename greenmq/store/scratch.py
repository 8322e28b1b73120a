"""The scratch store: where messages that must not outlive the process wait on disk while
memory is short (memory.py's paging mark): transient messages, and every message of a queue
the durable store does not keep (non-durable and exclusive queues). A queue pages them
into its ready list's tail (queue_store.PagedRun) and reads them back in order as their
turn comes, through the same `read_queue` and `remove_paged` as the durable store: by
priority in a priority queue (each row keeps its priority there), with the wall-clock time
the message expires (`expires_at`, as the queue gave it when it took the message), so that
it comes back with the same expiry.

Nothing in it is promised, so it is an SQLite database with no syncs, removed at a clean
stop and wiped at start: a transient message never survives a restart. Its rollback journal
is kept in memory (JOURNAL_MODE), so that a write or a read back the disk fails halfway
leaves the file as it was.
It lives in the data directory, or, with none, in SQLite's private temporary database
(a file in the temp directory that SQLite unlinks at once). Writes collect on the hub and
go to the disk in batches on a thread of the store's own (writer.WriterThread), as do
reads, so the hub never waits for the disk. A row read back is deleted in the same
transaction: from then on the queue holds its message in memory.

When the disk fails, nothing is lost: rows it cannot write stay in memory, counted in the
memory budget (so publishers meet the memory limit's flow control), and are written when it
can take them again; meanwhile queues page nothing more here (`writable`). A read it cannot
do raises StoreReadError with nothing taken, and the queue tries again later. Each failure
is logged once, and its end once.

SQLite reuses the pages of rows read back and finds a queue's next rows by its index. An
append-only file of records costs less (bench/scratch_store.py, 4 KiB rows: about 1 us a
row written and 2 read back, against SQLite's 8 and 10) but needs segments, an index per
queue and their reclaiming to give space back while a queue never empties; with SQLite a
backlog of ten times the limit already goes in and out faster than RabbitMQ's
(bench/paging.py --transient, README).
"""

import logging
import os
import pickle
import sqlite3
import weakref
from itertools import count

import gevent
from gevent.lock import Semaphore

from ..memory import MESSAGE_OVERHEAD_BYTES
from ..message import Message
from . import ReadFailures
from .writer import WriterThread

log = logging.getLogger("greenmq.store")

SCRATCH_FILE = "scratch.sqlite3"

# SQLite's page cache for the scratch database: rows are written once and read once, so a
# cache only holds what is about to be read back; SQLite's 2 MiB default is plenty.
CACHE_KIB = 2048

# After a failed write (full disk) the rows stay in memory, counted in the memory budget so
# that publishers stop before they pile up, and the write is tried again this often.
RETRY_SECONDS = 1.0

# With no journal at all (OFF), SQLite cannot roll a transaction back: a batch the disk
# filled up halfway left the file corrupt ("database disk image is malformed"), and every
# row in it was lost. A journal in memory costs no disk and no sync; SQLite journals only
# the pages a transaction changes that held data before it, which a read back's delete does:
# 4 KiB rows cost about 10 us each read back against 7.5 without, 100-byte ones no more
# (bench/scratch_store.py --journal OFF, 2026-12-07).
JOURNAL_MODE = "MEMORY"

# A row's priority is its queue's level for it (Queue.level_of): 0 in every queue but a
# priority queue, so reading a queue's rows of priority 0 is reading them all there, and one
# index serves both.
_SCHEMA = """
CREATE TABLE paged (key INTEGER PRIMARY KEY, queue INTEGER, priority INTEGER, head BLOB, body BLOB,
                    expires_at REAL);
CREATE INDEX paged_by_queue ON paged (queue, priority, key);
"""
_INSERT = "INSERT INTO paged VALUES (?, ?, ?, ?, ?, ?)"
_READ = ("SELECT key, head, body, expires_at FROM paged WHERE queue = ? AND priority = ? AND key > ? "
         "ORDER BY key LIMIT ?")
_DELETE = "DELETE FROM paged WHERE queue = ? AND priority = ? AND key > ? AND key <= ?"


class ScratchStore:
    """Messages paged by queues while memory is short, keyed in the order they were paged
    (`page`), so that a queue's PagedRun finds its messages as the next ones above a key."""

    def __init__(self, data_dir, memory):
        self.memory = memory            # the node's MemoryBudget: rows not yet written count in it
        self.path = None if data_dir is None else os.path.join(data_dir, SCRATCH_FILE)
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)        # what the last run left, after a kill -9
        self._db = sqlite3.connect("" if self.path is None else self.path, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("PRAGMA secure_delete=FAST")      # as the message store: no zeros written
        self._db.executescript(_SCHEMA)
        self.last_key = 0
        self.messages = 0           # paged and not yet read back nor removed
        self._queue_ids = weakref.WeakKeyDictionary()
        self._next_queue_id = count(1)
        self._rows = []             # written by the next flush, in key order
        self._rows_bytes = 0        # what they count in the memory budget
        self._removals = []         # (queue id, above key, up to key)
        self._writer = None
        self._using_writer = Semaphore()
        self._flusher = None
        self._failing = False       # the last write failed: `_rows` are in memory only
        self._reads = ReadFailures(f"the scratch store {self.path or '(temporary)'}")
        self._closed = False

    def _queue_id(self, queue):
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = next(self._next_queue_id)
        return queue_id

    def page(self, queue, message, priority, expires_at):
        """Keep `message` (not the durable store's) for `queue`, under `priority` there, until
        it is read back with `expires_at` (wall-clock time, or None); returns its key, above
        every key given before."""
        self.last_key += 1
        self.messages += 1
        head = (message.exchange, message.routing_key, message.properties, message.encoded_properties,
                message.redelivered, message.ttl)
        self._rows.append((self.last_key, self._queue_id(queue), priority, pickle.dumps(head), message.body,
                           expires_at))
        size = MESSAGE_OVERHEAD_BYTES + len(message.body)     # as _held_by counts it
        self._rows_bytes += size
        self.memory.held_bytes += size
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_while_pending)
        return self.last_key

    @property
    def writable(self):
        """Whether paging here frees memory: False while rows a write failed on wait in
        memory, where more would only be copies of their messages. Once they are read back,
        the next rows paged find out whether the disk takes them again."""
        return not (self._failing and self._rows)

    def read_queue(self, queue, after_key, limit, priority=None):
        """Up to `limit` messages of `queue` with keys above `after_key`, in key order, as
        [(key, message, None, expires_at)] (no stream pages here, so nothing reads a publish
        time), gone from here once read; of `priority` only (None: a queue without
        priorities, see _SCHEMA). Blocks the calling greenlet, never the hub.
        StoreReadError when the disk cannot be read: nothing was taken."""
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            return []
        priority = priority or 0
        with self._using_writer:
            if self._closed:
                return []       # stopping: nothing in it is kept anyway
            self._flush()
            error, rows = self._writer.run(self._take, queue_id, priority, after_key, limit)
        if error is not None:
            self._reads.failed(error)
        self._reads.succeeded()
        self.messages -= len(rows)
        if self._failing:     # rows not written yet are in memory; those on disk come before them
            in_memory = [(key, head, body, expires_at)
                         for key, owner, level, head, body, expires_at in self._rows
                         if owner == queue_id and level == priority and key > after_key][:limit - len(rows)]
            if in_memory:
                taken = {row[0] for row in in_memory}
                self._keep_rows(lambda row: row[0] not in taken)    # (counts them out of `messages`)
                rows += in_memory
        messages = []
        for key, head, body, expires_at in rows:
            exchange, routing_key, properties, encoded_properties, redelivered, ttl = pickle.loads(head)
            message = Message(exchange, routing_key, body, properties, encoded_properties)
            if ttl is not None or redelivered:
                message = message.placed(redelivered, None)
                message.ttl = ttl
            messages.append((key, message, None, expires_at))
        return messages

    def remove_paged(self, queue, after_key, priority=None):
        """`queue` is done with its messages here above `after_key` (purged or deleted),
        those of `priority` (None: all, in a queue without priorities); those it pages from
        now on stay."""
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            return
        priority = priority or 0
        self._removals.append((queue_id, priority, after_key, self.last_key))
        self._keep_rows(lambda row: row[1] != queue_id or row[2] != priority or row[0] <= after_key)
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_while_pending)

    def _keep_rows(self, keep):
        """Drop the rows waiting to be written that `keep` refuses: no longer wanted."""
        kept = [row for row in self._rows if keep(row)]
        if len(kept) != len(self._rows):
            self.messages -= len(self._rows) - len(kept)
            dropped = self._rows_bytes - _held_by(kept)
            self._rows, self._rows_bytes = kept, self._rows_bytes - dropped
            self.memory.held_bytes -= dropped

    def status(self):
        return {"messages": self.messages, "path": self.path}

    def committed(self):
        """Everything paged so far can be read back (`read_queue` reads it anyway)."""
        return True

    def _flush_while_pending(self):
        try:
            while (self._rows or self._removals) and not self._closed:     # (closed: none is written)
                with self._using_writer:
                    self._flush()
                if self._failing:
                    gevent.sleep(RETRY_SECONDS)
        finally:
            self._flusher = None

    def _flush(self):
        """Write the rows and removals waiting, with the writer in hand. On failure the
        rows stay in memory, still counted, and are tried again."""
        if self._closed or not self._rows and not self._removals:
            return
        if self._writer is None:
            self._writer = WriterThread()
        rows, removals, rows_bytes = self._rows, self._removals, self._rows_bytes
        self._rows, self._removals, self._rows_bytes = [], [], 0
        error, removed = self._writer.run(self._write, rows, removals)
        if error is None:
            self.messages -= removed
            self.memory.held_bytes -= rows_bytes
            if self._failing:
                log.warning("the scratch store %s is writable again", self.path or "(temporary)")
                self._failing = False
            return
        if not self._failing:
            log.error("cannot write the scratch store %s: %s; paged messages stay in memory until it is",
                      self.path or "(temporary)", error)
            self._failing = True
        self._rows, self._removals = rows + self._rows, removals + self._removals
        self._rows_bytes += rows_bytes

    def _write(self, rows, removals):
        """In the writer thread: the rows, then the removals (which never reach rows paged
        after them). Returns (None, how many rows the removals deleted), or (why it failed, 0)."""
        def write(db):
            db.executemany(_INSERT, rows)
            return db.executemany(_DELETE, removals).rowcount if removals else 0
        return self._transaction(write, 0)

    def _take(self, queue_id, priority, after_key, limit):
        """In the writer thread: read the rows and delete them, both or neither. Returns
        (None, the rows) or (why it failed, [])."""
        def take(db):
            rows = db.execute(_READ, (queue_id, priority, after_key, limit)).fetchall()
            if rows:
                db.execute(_DELETE, (queue_id, priority, after_key, rows[-1][0]))
            return rows
        return self._transaction(take, [])

    def _transaction(self, work, failed):
        """In the writer thread: `work(db)` in one transaction. Returns (None, what it
        returned), or (why it failed, `failed`) with the file as it was before."""
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                done = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:   # (SQLite ends some on its own: a full disk's)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            return str(exc), failed
        return None, done

    def close(self):
        """At a clean stop: nothing in it is kept."""
        self._closed = True
        with self._using_writer:        # a write in hand ends first
            if self._writer is not None:
                self._writer.stop()
        self._db.close()
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def _held_by(rows):
    """What rows waiting to be written count in the memory budget: their messages' bodies
    and overhead, as the queues counted them."""
    return sum(MESSAGE_OVERHEAD_BYTES + len(row[4]) for row in rows)
