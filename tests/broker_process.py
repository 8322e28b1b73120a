"""A real broker in a subprocess on a free port, for tests and benchmarks."""

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READY = re.compile(r'^\{"ready": true.*$', re.MULTILINE)   # the broker's ready line (stdout)
START_TIMEOUT = 20.0


class BrokerProcess:
    """`python broker.py --port 0 ...`, with its log in a file (a pipe nobody reads would
    block the broker once full). `ports` is its ready line: `port` (JSON lines), `amqp_port`,
    and `tls_port` and `amqps_port` when it listens with TLS. Its data directory is
    `data_dir`, or a temporary one that goes when it is closed. `script` runs another
    program in broker.py's place (a wrapper for fault injection); `open_files` starts it
    with that soft limit on open files."""

    def __init__(self, *args, python=sys.executable, data_dir=None, env=None, script="broker.py",
                 open_files=None):
        self.args = list(args)
        self.env = env          # the broker's environment (default: this process's)
        self.python = python
        self.script = script
        self.open_files = open_files
        self.process = None
        self.ports = {}
        self._own_data_dir = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="greenmq-data-") if data_dir is None else data_dir

    def start(self):
        self._log = tempfile.NamedTemporaryFile(prefix="greenmq-broker-", suffix=".log", delete=False)
        # Free ports only: another broker (a reference RabbitMQ, say) may hold 5672.
        command = [self.python, os.path.join(ROOT, self.script), "--port", "0", "--amqp-port", "0",
                   "--http-port", "0", "--data-dir", self.data_dir, *self.args]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env=self.env,
                                        preexec_fn=self._limit_open_files if self.open_files else None)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready = _READY.search(self.log())
            if ready:
                self.ports = json.loads(ready.group(0))
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"broker did not announce its port:\n{self.log()}")

    def _limit_open_files(self):
        """Start with this soft limit on open files, as many systems do (1,024)."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    @property
    def port(self):
        return self.ports["port"]

    @property
    def amqp_port(self):
        return self.ports["amqp_port"]

    @property
    def tls_port(self):
        return self.ports["tls_port"]

    @property
    def amqps_port(self):
        return self.ports["amqps_port"]

    @property
    def http_port(self):
        return self.ports["http_port"]

    @property
    def pid(self):
        return self.process.pid

    @contextlib.contextmanager
    def frozen(self):
        """The broker stopped (SIGSTOP) for the block and let go on after it: what clients
        send meanwhile waits for it, and its first poll then finds all of it at once."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def log(self):
        with open(self._log.name, errors="replace") as log:
            return log.read()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stop the broker; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self):
        """Stop the broker and remove its log (and its data, unless given); closing twice is
        harmless."""
        self.stop()
        if os.path.exists(self._log.name):
            os.unlink(self._log.name)
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()
