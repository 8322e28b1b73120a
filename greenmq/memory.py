"""The broker's memory budget: what it holds is counted, not guessed from RSS (CPython
seldom gives memory back, so RSS stays high long after the messages are gone).

A node's `MemoryBudget.held_bytes` counts what that node holds: its queues' messages
(ready or unacked: queue_store.py adds at enqueue and restore, subtracts where a message
ends; a body shared by several queues counts once), persistent messages the store has
accepted and not yet committed (store/sqlite.py, until the commit is done: a paged message
is held by the store's batch alone), input still arriving (a JSON line or an AMQP content
not yet whole), output waiting for sockets (transport.py) and HTTP publishes being read
(management.py). Above the limit, connections that publish are not read until the
count falls below RESUME_FRACTION of it, while consumers go on draining, as RabbitMQ does
above its vm_memory_high_watermark. The budget decides; transport.py stops reading and
each front end tells its client in its own words.

Above DEFAULT_PAGING_RATIO of the limit memory is short: the budget asks its `page_out`
(the node's, which knows the queues; nothing here does) to free bytes by paging queues to
disk, until the count falls below RESUME_FRACTION of that mark.
"""

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re

import gevent
from gevent.event import Event

log = logging.getLogger("greenmq.memory")

# What a queued message costs beyond its body: its Message object, the bytes object's header
# and its place in one queue. Measured as the broker's RSS growth per message queued, less
# the bodies (bench/memory_accounting.py; CPython 3.11, glibc, messages without properties
# over JSON lines): 150 bytes for 2,000,000 100-byte messages, 151 for 100,000 of 4 KiB;
# 160 rounds that up. (Counted 400 before, the accounted figure was twice the growth for
# small messages.) Properties, a TTL's copy in a queue or an unacked delivery's records cost
# more, which the budget's room (RabbitMQ's 0.4 of the machine) absorbs. One figure, not a
# size per message, so the accounting is one addition per enqueue and one subtraction per
# end. The management API's estimate of a queue's memory uses the same figure.
MESSAGE_OVERHEAD_BYTES = 160

# What each further queue holding a message already held costs: its place in that queue
# (a deque's slot, 8 bytes). Measured the same way: 40,000 4 KiB messages routed to ten
# queues grew RSS by 230 bytes a message beyond the body, the message's 150 and 8 for each
# queue; 16 rounds it up for the deque's blocks.
QUEUE_ENTRY_BYTES = 16

# The ready messages a queue keeps in memory ahead of its consumers when more are queued:
# persistent messages of a durable queue beyond them stay only in the store (their bodies
# leave memory) and are read back in order as the window empties, so a backlog costs disk,
# not memory. 2,048 messages keep a consumer fed across a read of the next batch (a read
# takes a few milliseconds) while 10 queues of 4 KiB messages hold 80 MiB at most ahead.
DEFAULT_QUEUE_WINDOW = 2048

# Nor more bodies' bytes than this ahead: counted in messages alone, a window of 1 MiB
# bodies would be 2 GiB, and a read-back as much at once. By default a 32nd of the memory
# limit, so that 32 full windows are the limit (the count still binds first for bodies up
# to a 2,048th of it: 100 KiB with a 6.4 GiB limit, the default on a 16 GiB machine), but
# at least MIN_QUEUE_WINDOW_BYTES: a few dozen 1 MiB messages keep a consumer fed across a
# read of the next ones. Never over a quarter of a small limit, which one queue must not fill.
QUEUE_WINDOW_SHARE_OF_LIMIT = 32
MIN_QUEUE_WINDOW_BYTES = 32 * 1024 * 1024

# RabbitMQ's vm_memory_high_watermark_paging_ratio: once the held bytes pass this share of
# the limit, memory is short and queues page the ready messages beyond their windows to disk
# (transient ones and those of queues the durable store does not keep go to the scratch
# store, store/scratch.py), long before publishers have to be stopped at the limit itself.
DEFAULT_PAGING_RATIO = 0.5

# While memory is short, how often the count is compared with the paging mark and queues
# asked to page out what they took since: a look per tick, not per message.
PAGING_CHECK_SECONDS = 0.05

# RabbitMQ's default vm_memory_high_watermark: 0.4 of the machine's memory, leaving room
# for the interpreter, the allocator's slack and what the accounting does not see.
DEFAULT_MEMORY_FRACTION = 0.4

# Below this a single batch of reads from a few publishers would overrun the budget.
MIN_MEMORY_LIMIT_BYTES = 1024 * 1024

# Publishers are read again once a tenth of the budget is free: room for a burst from every
# blocked publisher without tripping the limit again at once (each flap costs the clients a
# blocked/unblocked pair), while they wait only as long as consumers take to free a tenth.
RESUME_FRACTION = 0.9

# While publishers are blocked, how often the count is compared with the resume mark:
# checked here rather than at every message's end, which is the hot path.
BLOCKED_CHECK_SECONDS = 0.05

# What RabbitMQ says in connection.blocked when its memory alarm is on.
BLOCKED_REASON = "low on memory"

# After the count has dropped by this much since the last trim, glibc is asked to return
# its free memory to the system: large enough that a trim (which walks the heap) is rare,
# small enough that a consumed or purged queue of some size is given back.
TRIM_AFTER_DROP_BYTES = 64 * 1024 * 1024
# How often the count is compared with its high point since the last trim: a comparison a
# second costs nothing, and memory is given back about a second after a queue empties.
TRIM_CHECK_SECONDS = 1.0

# glibc serves each allocation of 128 KiB and up (a big body, a read of one) with an mmap of
# its own and unmaps it when freed, so every big message costs page faults for fresh pages:
# at 1 MiB bodies, half the broker's system time. Below this size allocations come from the
# heap instead, whose freed pages the next message reuses, and which the trimmer gives back
# after large drops as it does for small messages. 32 MiB is the ceiling glibc's own
# adjustment of the threshold stops at (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems).
HEAP_ALLOCATION_MAX_BYTES = 32 * 1024 * 1024
# Nor does glibc shrink the heap on its own until more is free at its top than the drop the
# trimmer waits for (by default it would at twice the largest buffer freed: a message or two
# of big bodies, given back and faulted in again at the next): giving back is the trimmer's.

# With a small limit both are at most this share of it: a 32 MiB limit never saw a drop of
# 64 MiB, so nothing was trimmed, and glibc kept up to 64 MiB free at the heap's top (a
# transient priority backlog peaked at 77 MiB RSS, bench/paging.py). A quarter of the limit
# is still many batches of messages freed and reused between trims.
TRIM_LIMIT_FRACTION = 0.25

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def machine_memory_bytes():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_queue_window_bytes(limit):
    """The byte window of each queue for a memory limit of `limit` bytes (see
    QUEUE_WINDOW_SHARE_OF_LIMIT)."""
    return max(limit // QUEUE_WINDOW_SHARE_OF_LIMIT, min(MIN_QUEUE_WINDOW_BYTES, limit // 4))


def _bytes(value):
    """Bytes from an integer or a text with a unit (512MiB, 2GB: RabbitMQ's units); None
    for anything else."""
    if type(value) is int:
        return value
    if type(value) is str:
        match = re.fullmatch(r"(\d+)\s*([a-z]*)", value.strip().lower())
        if match and match.group(2) in _UNITS:
            return int(match.group(1)) * _UNITS[match.group(2)]
    return None


def parse_bytes(value):
    """A size in bytes (an integer, or a text with a unit such as 64MiB), 0 or more;
    ValueError saying what is accepted."""
    size = _bytes(value)
    if size is None or size < 0:
        raise ValueError("must be bytes, 0 or more (units such as 64MiB or 1GB allowed)")
    return size


def parse_memory_limit(value):
    """Bytes from an integer, a text with a unit (512MiB, 2GB: RabbitMQ's units) or a
    fraction of the machine's memory (0.4, as vm_memory_high_watermark.relative); ValueError
    saying what is accepted."""
    fraction = None
    limit = _bytes(value)
    if type(value) is float:
        fraction = value
    elif type(value) is str and re.fullmatch(r"\d*\.\d+", value.strip()):
        fraction = float(value)
    if fraction is not None:
        limit = int(fraction * machine_memory_bytes()) if 0 < fraction <= 1 else None
    if limit is None or limit < MIN_MEMORY_LIMIT_BYTES:
        raise ValueError(f"must be bytes of at least {MIN_MEMORY_LIMIT_BYTES} (units such as 512MiB or 2GB "
                         "allowed) or a fraction of the machine's memory such as 0.4")
    return limit


class MemoryBudget:
    """A node's count of the bytes it holds (`held_bytes`), its limit on them and whether
    publishers are blocked by it. One per node, so two brokers in one process (tests, an
    embedding program) each count their own."""

    def __init__(self, limit, queue_window=DEFAULT_QUEUE_WINDOW, paging_ratio=DEFAULT_PAGING_RATIO,
                 queue_window_bytes=None):
        self.held_bytes = 0
        self.limit = limit
        # See DEFAULT_QUEUE_WINDOW and QUEUE_WINDOW_SHARE_OF_LIMIT; queue_store.py reads them.
        self.queue_window = queue_window
        self.queue_window_bytes = (default_queue_window_bytes(limit) if queue_window_bytes is None
                                   else queue_window_bytes)
        # Above 1, never (RabbitMQ's way to turn paging off): publishers stop at the limit.
        self.paging_mark = int(limit * paging_ratio) if paging_ratio <= 1 else float("inf")
        self.paging = False                 # memory is short: queues page beyond their windows
        # page_out(bytes): page queues out until about that many bytes are freed; set by the
        # node, which knows the queues (None: nothing pages).
        self.page_out = None
        self.resume_below = int(limit * RESUME_FRACTION)
        self.blocked = False
        self._unblocked = Event()
        self._unblocked.set()
        self._peak_since_trim = 0       # the high point of held_bytes since the last trim
        # The drop that starts a trim, and what glibc keeps free at the heap's top meanwhile.
        self.trim_after_drop_bytes = min(TRIM_AFTER_DROP_BYTES, int(limit * TRIM_LIMIT_FRACTION))
        self._trimmer = None

    def admits_publishers(self):
        """Whether a publishing connection may be read now: asked between its batches of
        input, so a publisher overruns the limit by one batch at most."""
        if self.blocked:
            return False
        # The high point is kept here, where the count grows, so a queue filled and emptied
        # between two of the trimmer's looks is given back too.
        held_bytes = self.held_bytes
        if held_bytes > self._peak_since_trim:
            self._peak_since_trim = held_bytes
        if held_bytes > self.paging_mark and not self.paging and self.page_out is not None:
            self.paging = True
            gevent.spawn(self._page_while_short)
        if held_bytes <= self.limit:
            return True
        self.blocked = True
        self._unblocked.clear()
        log.warning("memory limit %d bytes reached (%d held): publishers are not read until it falls "
                    "below %d", self.limit, held_bytes, self.resume_below)
        gevent.spawn(self._watch_until_resumed)
        return False

    @contextlib.contextmanager
    def holding(self, size):
        """Count `size` bytes while the block runs: a message that is being read and routed
        outside any connection's input (an HTTP publish)."""
        self.held_bytes += size
        try:
            yield
        finally:
            self.held_bytes -= size

    def wait_until_admitted(self, timeout=None):
        """Whether publishers are admitted again (False: `timeout` seconds passed first)."""
        return self._unblocked.wait(timeout)

    def _watch_until_resumed(self):
        while self.held_bytes >= self.resume_below:
            gevent.sleep(BLOCKED_CHECK_SECONDS)
        self.blocked = False
        self._unblocked.set()
        log.warning("memory held (%d bytes) is below %d again: publishers are read again",
                    self.held_bytes, self.resume_below)

    def _page_while_short(self):
        """Page out while the count is above the paging mark; memory is short until it
        falls below RESUME_FRACTION of the mark (with a mark of 0, for ever)."""
        paging_below = int(self.paging_mark * RESUME_FRACTION)
        while self.held_bytes >= paging_below:
            if self.held_bytes > self.paging_mark:
                self.page_out(self.held_bytes - paging_below)
            gevent.sleep(PAGING_CHECK_SECONDS)
        self.paging = False

    def status(self):
        return {"held_bytes": self.held_bytes, "limit_bytes": self.limit, "publishers_blocked": self.blocked,
                "paging": self.paging}

    # -- giving memory back ---------------------------------------------------------------

    def start_trimming(self):
        """Return freed memory to the system after large drops, where glibc allows, and
        leave freed big buffers in the heap for reuse until then."""
        if _malloc_trim is not None and self._trimmer is None:
            _keep_freed_buffers(self.trim_after_drop_bytes)
            self._trimmer = gevent.spawn(self._trim_after_drops)

    def _trim_after_drops(self):
        self._peak_since_trim = self.held_bytes
        while True:
            gevent.sleep(TRIM_CHECK_SECONDS)
            held = self.held_bytes
            if held > self._peak_since_trim:
                self._peak_since_trim = held    # grown by a restore or output, not a publisher
            elif self._peak_since_trim - held >= self.trim_after_drop_bytes:
                # Off the hub: a trim walks the whole heap.
                gevent.get_hub().threadpool.apply(_malloc_trim, (0,))
                self._peak_since_trim = held


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _keep_freed_buffers(heap_top_kept_bytes):
    """Big allocations from the heap, and no trim of it but the trimmer's until
    `heap_top_kept_bytes` are free at its top (for the whole process: a second node in it
    sets its own)."""
    _mallopt(_M_MMAP_THRESHOLD, HEAP_ALLOCATION_MAX_BYTES)
    _mallopt(_M_TRIM_THRESHOLD, heap_top_kept_bytes)


def _find_libc(function):
    """glibc's `function`, or None where the C library has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_libc("malloc_trim")
_mallopt = _find_libc("mallopt")
