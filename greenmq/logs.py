"""The broker's log file: reopened on SIGHUP or an operator's request, so that logrotate
(or a person) can move it away and the broker writes on in a new file of the same name."""

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time (UTC, ISO 8601), level, logger
    and message, and the exception when there is one."""

    def format(self, record):
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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
