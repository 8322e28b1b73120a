"""What a paged row costs the scratch store's thread (store/scratch.py), against the other
design it was weighed against: SQLite with its rollback journal in memory and no syncs (rows
written in batches, read back a batch at a time and deleted, in one transaction each) beside
an append-only file of length-prefixed records read back in order. CPU time of this process
(kernel time included), alternated A/B/A/B in one run.

    python bench/scratch_store.py                 # 40,000 rows of 4 KiB
    python bench/scratch_store.py --size 100
    python bench/scratch_store.py --journal OFF   # SQLite's journal as the store once had it
"""

import argparse
import os
import pickle
import sqlite3
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greenmq.store.scratch import JOURNAL_MODE  # noqa: E402

BATCH = 500         # rows written at once, about what a flush takes during a flood
READ_BATCH = 1000   # rows read back at once, as a queue's window asks


def sqlite_rows(directory, count, head, body, journal_mode):
    """(write, read back and delete): CPU seconds, as the scratch store does them."""
    db = sqlite3.connect(os.path.join(directory, "scratch.sqlite3"), isolation_level=None)
    for pragma in (f"journal_mode={journal_mode}", "synchronous=OFF", "cache_size=-2048"):
        db.execute("PRAGMA " + pragma)
    db.executescript("CREATE TABLE paged (key INTEGER PRIMARY KEY, queue INTEGER, head BLOB, body BLOB, "
                     "published_at REAL); CREATE INDEX paged_by_queue ON paged (queue, key);")
    began = time.process_time()
    for start in range(0, count, BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT INTO paged VALUES (?, 1, ?, ?, 0.0)",
                       [(key, head, body) for key in range(start + 1, start + BATCH + 1)])
        db.execute("COMMIT")
    written = time.process_time()
    after = 0
    while True:
        db.execute("BEGIN")
        rows = db.execute("SELECT key, head, body, published_at FROM paged WHERE queue = 1 AND key > ? "
                          "ORDER BY key LIMIT ?", (after, READ_BATCH)).fetchall()
        if rows:
            db.execute("DELETE FROM paged WHERE queue = 1 AND key > ? AND key <= ?", (after, rows[-1][0]))
        db.execute("COMMIT")
        if not rows:
            break
        after = rows[-1][0]
    read = time.process_time()
    db.close()
    return written - began, read - written


def appended_records(directory, count, head, body, journal_mode):
    """(write, read back): CPU seconds; nothing gives the space back."""
    with open(os.path.join(directory, "scratch.log"), "wb+") as log:
        began = time.process_time()
        record = struct.pack(">II", len(head), len(body)) + head
        for _ in range(0, count, BATCH):
            log.write(b"".join(part for _ in range(BATCH) for part in (record, body)))
        log.flush()
        written = time.process_time()
        log.seek(0)
        while True:
            lengths = log.read(8)
            if not lengths:
                break
            head_bytes, body_bytes = struct.unpack(">II", lengths)
            log.read(head_bytes)
            log.read(body_bytes)
        return written - began, time.process_time() - written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--journal", default=JOURNAL_MODE, help="SQLite's journal_mode (default: the store's)")
    args = parser.parse_args()
    head = pickle.dumps(("", "queue", {"delivery_mode": 1}, None, False))
    body = b"x" * args.size
    for name, write in [("SQLite", sqlite_rows), ("append-only", appended_records)] * 2:
        with tempfile.TemporaryDirectory() as directory:
            written, read = write(directory, args.rows, head, body, args.journal)
        print(f"{name:<12} write {written / args.rows * 1e6:5.1f} us a row, read back {read / args.rows * 1e6:5.1f} us "
              f"a row (CPU, {args.rows:,} rows of {args.size} B)")


if __name__ == "__main__":
    main()
