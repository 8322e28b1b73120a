"""The broker's log file: reopened on SIGHUP or an operator's request, so that logrotate
(or a person) can move it away and the broker writes on in a new file of the same name."""

import logging


class ReopenableFileHandler(logging.FileHandler):
    def reopen(self):
        with self.lock:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()


def reopen_log_files():
    """Reopen every log file the broker writes; returns their paths."""
    reopened = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
            reopened.append(handler.baseFilename)
    return reopened
