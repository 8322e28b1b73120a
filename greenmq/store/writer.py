"""The thread SqliteStore commits on: an fsync can take tens of milliseconds, and the hub
must not wait for it (style: never block the hub)."""

import gevent
from gevent import monkey
from gevent.hub import Waiter


class WriterThread:
    """A thread of the store's own that runs one call at a time for a waiting greenlet. A
    lock wakes it and an async watcher wakes the greenlet: a round trip of about 35 us
    here, against about 60 us through the hub's thread pool (its task queue, result
    object and worker greenlet)."""

    def __init__(self):
        start_new_thread, allocate_lock = monkey.get_original("_thread", ["start_new_thread", "allocate_lock"])
        self._call = None           # (function, args), or None to stop
        self._outcome = None        # (True, result) or (False, exception)
        self._ready = allocate_lock()
        self._ready.acquire()
        self._done = gevent.get_hub().loop.async_()
        start_new_thread(self._serve, ())

    def run(self, function, *args):
        """`function(*args)` in the thread; the calling greenlet waits, the hub goes on."""
        self._hand_over((function, args))
        (finished, value), self._outcome = self._outcome, None
        if not finished:
            raise value
        return value

    def stop(self):
        """Wait for the call in hand to end, and let the thread end."""
        self._hand_over(None)

    def _hand_over(self, call):
        waiter = Waiter()
        self._done.start(waiter.switch, None)
        try:
            self._call = call
            self._ready.release()
            waiter.get()
        finally:
            self._done.stop()

    def _serve(self):
        while True:
            self._ready.acquire()
            call = self._call
            if call is None:
                self._done.send()
                return
            function, args = call
            try:
                self._outcome = (True, function(*args))
            except BaseException as exc:
                self._outcome = (False, exc)
            # Nothing of a call outlives it here: a commit's statements hold its bodies, which
            # leave the memory budget's count once written.
            self._call = call = function = args = None
            self._done.send()
