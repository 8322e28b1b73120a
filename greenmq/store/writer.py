"""The thread SqliteStore commits on: an fsync can take tens of milliseconds, and the hub
must not wait for it (style: never block the hub).

The thread goes from one commit to the next by itself. When a committer greenlet handed
it each commit, every commit paid a round trip through the hub first: with 16 publishers
each waiting for its confirm (load average 2 to 4), waking the thread took 120 us, waking
the hub again 135 us and the committer's turn 190 us on average, against 380 us for the
commit itself, and the thread stood idle three quarters of the time (py-spy).
"""

from collections import deque

import gevent
from gevent import monkey
from gevent.event import Event


class WriterThread:
    """Runs `commit()` in a thread of its own, again and again while it finds something to
    do, and hands what each returned to `committed(outcome)` on the hub, in order.
    `commit` returns (outcome, retry_in): outcome None when there was nothing to do;
    retry_in, when not None, runs it again after that many seconds, woken or not (a
    commit that failed). The hub calls `wake()` after giving it work; that costs a system
    call only when the thread sleeps, not while it commits (it looks again before it
    sleeps)."""

    def __init__(self, commit, committed):
        start_new_thread, allocate_lock = monkey.get_original("_thread", ["start_new_thread", "allocate_lock"])
        self._commit = commit
        self._committed = committed
        # Released to wake the thread. It is free exactly while `_woken` is True, so the hub
        # releases it only once per wake, and the thread clears `_woken` once it has it.
        self._work = allocate_lock()
        self._work.acquire()
        self._woken = False
        self._busy = False           # the thread calls `commit` again before it sleeps
        self._stopping = False
        self._ended = False          # set by the thread as its last act
        self._stopped = Event()
        self._outcomes = deque()     # from the thread to the hub
        self._done = gevent.get_hub().loop.async_()
        self._done.start(self._hand_outcomes)
        start_new_thread(self._serve, ())

    def wake(self):
        """On the hub: `commit` runs (again) after this call."""
        if not self._woken and not self._busy:
            self._woken = True
            self._work.release()

    def stop(self):
        """Wait for the commit in hand to end, and let the thread end."""
        self._stopping = True
        self.wake()
        self._stopped.wait()
        self._done.stop()
        self._done.close()

    def _hand_outcomes(self):
        """On the hub, woken by the thread."""
        outcomes = self._outcomes
        while outcomes:
            self._committed(outcomes.popleft())
        if self._ended:
            self._stopped.set()

    def _serve(self):
        retry_in = None
        while not self._stopping:
            if self._work.acquire(True, -1 if retry_in is None else retry_in):
                self._woken = False
            self._busy = True
            while True:
                outcome, retry_in = self._commit()
                if outcome is None:
                    # The hub gave work and saw this thread busy just before it stopped
                    # being, or it gives work now and sees it not busy and wakes it.
                    self._busy = False
                    outcome, retry_in = self._commit()
                    if outcome is None:
                        break
                    self._busy = True
                self._outcomes.append(outcome)
                self._done.send()
                if retry_in is not None:
                    self._busy = False
                    break
        self._ended = True
        self._done.send()
