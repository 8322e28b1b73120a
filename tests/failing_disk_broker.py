"""The broker with its stores' disks failing on cue, for tests: `python
tests/failing_disk_broker.py --port 0 ...`. The scratch store's SQLite connection is
wrapped so that, while a file is at the path $FAILING_SCRATCH_WRITES names, every write of
paged rows fails as on a full disk, and while one is at $FAILING_SCRATCH_READS, every read of
them fails as on a disk that returns errors; while one is at $FAILING_STORE_READS, every read
of the message store's paged messages fails so. The test makes and removes the files: a disk
that fails and recovers when the test says, with no timing in it.
"""

import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greenmq import broker  # noqa: E402
from greenmq.store import scratch, sqlite  # noqa: E402

WRITES_VARIABLE = "FAILING_SCRATCH_WRITES"
READS_VARIABLE = "FAILING_SCRATCH_READS"
STORE_READS_VARIABLE = "FAILING_STORE_READS"
WRITE_ERROR = "database or disk is full"        # SQLITE_FULL's sentence
READ_ERROR = "disk I/O error"                   # SQLITE_IOERR's


class FailingConnection:
    """An sqlite3 connection whose INSERTs (paging rows out) and SELECTs (reading them back)
    fail while their file is there (None: never); the rest goes to the connection untouched."""

    def __init__(self, db, failing_writes, failing_reads):
        self._db = db
        self._failing = {"INSERT": (failing_writes, WRITE_ERROR), "SELECT": (failing_reads, READ_ERROR)}

    def __getattr__(self, name):
        return getattr(self._db, name)

    def _check(self, sql):
        path, error = self._failing.get(sql.split(None, 1)[0].upper(), (None, None))
        if path is not None and os.path.exists(path):
            raise sqlite3.OperationalError(error)

    def execute(self, sql, *parameters):
        self._check(sql)
        return self._db.execute(sql, *parameters)

    def executemany(self, sql, *parameters):
        self._check(sql)
        return self._db.executemany(sql, *parameters)


def _failing_on_cue(init):
    def patched(self, *args):
        init(self, *args)
        self._db = FailingConnection(self._db, os.environ.get(WRITES_VARIABLE), os.environ.get(READS_VARIABLE))
    return patched


def _store_reads_failing_on_cue(open_reader):
    def patched(self):
        return FailingConnection(open_reader(self), None, os.environ.get(STORE_READS_VARIABLE))
    return patched


scratch.ScratchStore.__init__ = _failing_on_cue(scratch.ScratchStore.__init__)
sqlite.SqliteStore._open_reader = _store_reads_failing_on_cue(sqlite.SqliteStore._open_reader)

if __name__ == "__main__":
    sys.exit(broker.main())
