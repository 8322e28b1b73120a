"""The broker with its store's commits on cue, for tests: `python tests/stalled_commit_broker.py
--port 0 ...`.

- With $STALLED_COMMIT_GATE naming a path: while a FIFO is at that path each commit waits in
  the store's writer thread, before it writes, until the test releases it (`hold`, then
  `release`): a disk that stops and starts again when the test says, with no timing in it.
- With $RETURNING_PUBLISHERS_WAIT_SECONDS: the store waits that long at most for the
  publishers a commit confirmed (sqlite.RETURNING_PUBLISHERS_WAIT_SECONDS), so a test of
  that wait does not depend on the machine's speed.
- With $ENDING_MESSAGES_WAIT_SECONDS: likewise for the wait for new messages to be consumed
  before their commit (sqlite.ENDING_MESSAGES_WAIT_SECONDS).
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
ENDING_WAIT_VARIABLE = "ENDING_MESSAGES_WAIT_SECONDS"
# How long `hold` waits for a commit to reach the gate before the test fails.
STALL_DEADLINE_SECONDS = 60


def _stalled_while_gated(write, gate):
    def patched(self, statements, sync):
        if os.path.exists(gate):
            # Opening a FIFO to read waits for a writer (the test's `hold`); the read ends
            # when `release` closes it.
            with open(gate, "rb") as waiting:
                waiting.read()
        return write(self, statements, sync)
    return patched


def hold(gate):
    """In the test: wait until a commit waits at `gate`, and keep it waiting; returns what
    `release` takes. Opening the FIFO to write meets the writer thread inside it, and its
    read ends only when that end is closed."""
    deadline = time.monotonic() + STALL_DEADLINE_SECONDS
    while True:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:      # ENXIO: no commit waits there yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def release(gate, held):
    """In the test: let the commit `hold` kept go on, and no later one stop at `gate`."""
    os.unlink(gate)
    os.close(held)


if __name__ == "__main__":
    if GATE_VARIABLE in os.environ:
        sqlite.SqliteStore._write = _stalled_while_gated(sqlite.SqliteStore._write, os.environ[GATE_VARIABLE])
    if RETURNING_WAIT_VARIABLE in os.environ:
        sqlite.RETURNING_PUBLISHERS_WAIT_SECONDS = float(os.environ[RETURNING_WAIT_VARIABLE])
    if ENDING_WAIT_VARIABLE in os.environ:
        sqlite.ENDING_MESSAGES_WAIT_SECONDS = float(os.environ[ENDING_WAIT_VARIABLE])
    sys.exit(broker.main())
