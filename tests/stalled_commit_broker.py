"""The broker with its store's commits on cue, for tests: `python tests/stalled_commit_broker.py
--port 0 ...`.

- With $STALLED_COMMIT_GATE naming a path: while a FIFO is at that path each commit waits in
  the store's writer thread, before it writes, until the test calls `release`: a disk that
  stops and starts again when the test says, with no timing in it.
- With $RETURNING_PUBLISHERS_WAIT_SECONDS: the store waits that long at most for the
  publishers a commit confirmed (sqlite.RETURNING_PUBLISHERS_WAIT_SECONDS), so a test of
  that wait does not depend on the machine's speed.
"""

import errno
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greenmq import broker  # noqa: E402
from greenmq.store import sqlite  # noqa: E402

GATE_VARIABLE = "STALLED_COMMIT_GATE"
RETURNING_WAIT_VARIABLE = "RETURNING_PUBLISHERS_WAIT_SECONDS"
# How long `release` waits for a commit to reach the gate before the test fails.
RELEASE_DEADLINE_SECONDS = 60


def _stalled_while_gated(write, gate):
    def patched(self, statements, sync):
        if os.path.exists(gate):
            # Opening a FIFO to read waits for a writer (the test's `release`); its close
            # ends the read.
            with open(gate, "rb") as waiting:
                waiting.read()
        return write(self, statements, sync)
    return patched


def release(gate):
    """In the test: let the commit waiting at `gate` go on, and no later one stop there.
    Opening the FIFO to write meets the writer thread inside it, so the gate is removed
    only once that commit is past the check."""
    deadline = time.monotonic() + RELEASE_DEADLINE_SECONDS
    while True:
        try:
            writing = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:      # ENXIO: no commit waits there yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    os.unlink(gate)
    os.close(writing)


if __name__ == "__main__":
    if GATE_VARIABLE in os.environ:
        sqlite.SqliteStore._write = _stalled_while_gated(sqlite.SqliteStore._write, os.environ[GATE_VARIABLE])
    if RETURNING_WAIT_VARIABLE in os.environ:
        sqlite.RETURNING_PUBLISHERS_WAIT_SECONDS = float(os.environ[RETURNING_WAIT_VARIABLE])
    sys.exit(broker.main())
