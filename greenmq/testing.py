"""A throwaway GreenMQ broker for test suites: real AMQP 0-9-1, ready in a fraction of a second.

    from greenmq import testing

    with testing.broker() as b:
        connection = kombu.Connection(b.amqp_url)
        ...

The broker runs as a child process on free ports with a temporary directory (its data
directory and its log). When the block ends, by success, an exception or Ctrl-C, the broker
stops and the directory goes. The child never outlives its parent: on Linux the kernel
sends it SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG), so start brokers
from a thread that lives as long as they should (the main thread, usually). A SIGTERM to
the parent stops its brokers and removes their files before the parent dies of it.

pytest users get the same objects as fixtures (greenmq/pytest_plugin.py).
"""

import atexit
import base64
import contextlib
import ctypes
import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from urllib.parse import quote, unquote, urlsplit

from . import connection

# A cold start (imports from a cold disk cache on a loaded CI machine) takes seconds, a warm
# one under a second; past this the broker is taken to be stuck.
START_TIMEOUT_SECONDS = 30.0
# The broker stops in milliseconds on SIGTERM; one that does not in this time is killed.
STOP_TIMEOUT_SECONDS = 10.0

# RabbitMQ's management API, where vhosts are added for tests run against a RabbitMQ. A
# local one answers in milliseconds; this bounds the wait for one that is not there. What
# answers on this port may be another broker (`make run`, a RabbitMQ on its default ports):
# it is used only once it shows it serves the AMQP URL's broker (see `_ManagementApi.serves`).
MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT_SECONDS = 5.0

DATA_DIR_ENVIRONMENT_VARIABLE = "GREENMQ_DATA_DIR"
PR_SET_PDEATHSIG = 1     # from <linux/prctl.h>

_running = set()         # brokers started and not yet stopped, for atexit and SIGTERM
_vhost_numbers = itertools.count(1)


class GreenMQTestingError(RuntimeError):
    """The broker could not be started, or cannot do what was asked (a broker found by URL)."""


class Broker:
    """A broker as a test talks to it: where it listens and in which virtual host.

    `amqp_url` is for AMQP clients (kombu, pika, Celery), `host` and `port` for GreenMQ's
    JSON-lines protocol (`connect()`). Brokers for other virtual hosts of the same process
    come from `add_vhost()`."""

    def __init__(self, process, admin, host, port, amqp_port, vhost="/", username="guest", password="guest",
                 scheme="amqp"):
        self.process = process          # the _BrokerProcess, None for a broker found by URL
        self.admin = admin              # what adds vhosts and resets: None when nothing can
        self.host = host
        self.port = port
        self.amqp_port = amqp_port
        self.vhost = vhost
        self.username = username
        self.password = password
        self.scheme = scheme

    def __repr__(self):
        return f"<greenmq.testing.Broker {self.amqp_url}>"

    @property
    def amqp_url(self):
        return (f"{self.scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
                f"{self.host}:{self.amqp_port}/{quote(self.vhost, safe='')}")

    @property
    def data_dir(self):
        return self.process.data_dir if self.process else None

    @property
    def log_path(self):
        return self.process.log_path if self.process else None

    def log(self, offset=0):
        """The broker's log from byte `offset` on ("" for a broker found by URL)."""
        return self.process.log(offset) if self.process else ""

    def log_size(self):
        return self.process.log_size() if self.process else 0

    def connect(self):
        """A JSON-lines client connection (connection.Connection) to this virtual host."""
        return connection.Connection(self.host, self.port, self.username, self.password, self.vhost)

    def reset(self):
        """Delete every queue and exchange declared in this virtual host (the predeclared
        amq.* exchanges stay). Exclusive queues of connections still open are left to go
        with their connection."""
        self._admin("reset").reset(self.vhost)

    def add_vhost(self, name=None):
        """A new, empty virtual host of the same broker (named here when `name` is None)."""
        name = name or f"test-{os.getpid()}-{next(_vhost_numbers)}"
        self._admin("add a vhost").add_vhost(name)
        return Broker(self.process, self.admin, self.host, self.port, self.amqp_port, name,
                      self.username, self.password, self.scheme)

    def delete_vhost(self, name):
        """Delete a virtual host with everything in it; its clients are disconnected (320)."""
        self._admin("delete a vhost").delete_vhost(name)

    def _admin(self, what):
        if self.admin is None:
            raise GreenMQTestingError(f"cannot {what} at {self.amqp_url}: that needs a GreenMQ started "
                                      "here or RabbitMQ's management API")
        return self.admin

    def stop(self):
        """Stop the broker and remove its files (unless kept); stopping twice is harmless."""
        if self.process is not None:
            self.process.stop()


def _declared(exchange_name):
    """Not one every vhost has: the default exchange and amq.* stay."""
    return bool(exchange_name) and not exchange_name.startswith("amq.")


class _JsonLinesAdmin:
    """Administers a GreenMQ over its JSON-lines port, as the guest administrator."""

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def _connect(self, vhost="/"):
        return connection.Connection(self.host, self.port, virtual_host=vhost)

    def add_vhost(self, name):
        with self._connect() as admin:
            admin.add_vhost(name)

    def delete_vhost(self, name):
        with self._connect() as admin:
            admin.delete_vhost(name)

    def reset(self, vhost):
        with self._connect(vhost) as admin:
            channel = admin.default_channel
            for queue in admin.list_queues():
                try:
                    channel.queue_delete(queue["name"])
                except connection.ResourceLocked:
                    pass
            for exchange in admin.list_exchanges():
                if _declared(exchange["name"]):
                    channel.exchange_delete(exchange["name"])


class _ManagementApi:
    """Administers a RabbitMQ over its HTTP management API, so the same tests get fresh
    vhosts and resets there too."""

    def __init__(self, url, username, password):
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    @classmethod
    def reachable(cls, url, username, password):
        """The API at `url`, or None if it does not answer as RabbitMQ's management API."""
        api = cls(url, username, password)
        try:
            api._call("GET", "/api/whoami")
        except (OSError, ValueError):
            return None
        return api

    def serves(self, amqp_url):
        """Whether this API is the one of the broker at `amqp_url`, and not of another broker
        on the same machine. RabbitMQ's overview lists its listeners: one for AMQP must be
        on the URL's port. An API without that list must show the connection this opens to
        the URL, named so that no other can be taken for it (GreenMQ lists its connections
        as they open)."""
        parts = urlsplit(amqp_url)
        listeners = self._call("GET", "/api/overview").get("listeners")
        if listeners is not None:
            port = parts.port or connection.AMQP_PORTS[parts.scheme]
            return any(listener.get("protocol") in ("amqp", "amqp/ssl") and listener.get("port") == port
                       for listener in listeners)
        name = f"greenmq-testing-{os.urandom(8).hex()}"
        with connection.Connection(amqp_url, client_properties={"product": "greenmq-testing",
                                                                "connection_name": name}):
            opened = self._call("GET", "/api/connections?columns=client_properties")
        return any(row.get("client_properties", {}).get("connection_name") == name for row in opened)

    def _call(self, method, path, body=None):
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers,
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT_SECONDS) as response:
            text = response.read()
        return json.loads(text) if text else None

    def add_vhost(self, name):
        # RabbitMQ gives the account that adds a vhost every permission on it.
        self._call("PUT", f"/api/vhosts/{quote(name, safe='')}", {})

    def delete_vhost(self, name):
        self._call("DELETE", f"/api/vhosts/{quote(name, safe='')}")

    def reset(self, vhost):
        vhost = quote(vhost, safe="")
        for queue in self._call("GET", f"/api/queues/{vhost}?columns=name,exclusive"):
            if not queue["exclusive"]:       # refused (400); it goes with its connection
                self._call("DELETE", f"/api/queues/{vhost}/{quote(queue['name'], safe='')}")
        for exchange in self._call("GET", f"/api/exchanges/{vhost}?columns=name"):
            if _declared(exchange["name"]):
                self._call("DELETE", f"/api/exchanges/{vhost}/{quote(exchange['name'], safe='')}")


def start(host="127.0.0.1", port=0, amqp_port=0, keep_data=False, log_level="info", python=sys.executable):
    """Start a broker and return its `Broker` once it accepts AMQP clients; stop it with
    `stop()`. Port 0 picks a free port. With `keep_data` its directory (data and log) is
    left for a post-mortem."""
    process = _BrokerProcess(python, keep_data)
    _running.add(process)
    try:
        # The management API on a free port too, so test brokers never contend for 15672.
        ready = process.start(["--host", host, "--port", str(port), "--amqp-port", str(amqp_port),
                               "--http-port", "0", "--log-level", log_level])
    except BaseException:
        process.stop()
        raise
    return Broker(process, _JsonLinesAdmin(ready["host"], ready["port"]), ready["host"], ready["port"],
                  ready["amqp_port"])


@contextlib.contextmanager
def broker(**options):
    """`with broker() as b:` a broker for the block; `start`'s options."""
    started = start(**options)
    try:
        yield started
    finally:
        started.stop()


def from_url(amqp_url, management_url=None):
    """A `Broker` for a broker that is already running (a RabbitMQ, say), to run the same
    tests against it. It has no JSON-lines port and no log. Vhosts and resets go through
    RabbitMQ's management API at `management_url` (by default port 15672 of the same host,
    with the same account) when it answers for that broker; without it they are refused.
    A `management_url` given that answers for another broker is an error; the default one
    is then left alone."""
    parts = urlsplit(amqp_url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ValueError(f"not an AMQP URL: {amqp_url!r}")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    username, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    admin = _ManagementApi.reachable(management_url or f"http://{parts.hostname}:{MANAGEMENT_PORT}",
                                     username, password)
    if admin is not None and not admin.serves(amqp_url):
        if management_url:
            raise GreenMQTestingError(f"the management API at {management_url} is not the one of the broker "
                                      f"at {amqp_url.split('@')[-1]}, but of another broker")
        admin = None
    return Broker(None, admin, parts.hostname, None, parts.port or connection.AMQP_PORTS[parts.scheme],
                  vhost, username, password, parts.scheme)


class _BrokerProcess:
    """The child process and its directory: `data/` (GREENMQ_DATA_DIR) and `broker.log`."""

    def __init__(self, python, keep_data):
        self.python = python
        self.keep_data = keep_data
        self.directory = tempfile.mkdtemp(prefix="greenmq-test-")
        self.data_dir = os.path.join(self.directory, "data")
        self.log_path = os.path.join(self.directory, "broker.log")
        self.child = None

    def start(self, args):
        """Run the broker and wait, blocked on its stdout, for the line saying it is ready."""
        os.mkdir(self.data_dir)
        _stop_brokers_on_sigterm()
        environment = dict(os.environ, **{DATA_DIR_ENVIRONMENT_VARIABLE: self.data_dir})
        with open(self.log_path, "wb") as log:
            # Its own session: a Ctrl-C at the terminal reaches the test run, which then
            # stops the broker in order, after its own teardown. Its own directory: `-m` puts
            # the working directory first on the path, and a project's own config.py or
            # connection.py there must not stand in for GreenMQ's modules.
            self.child = subprocess.Popen(
                [self.python, "-m", "greenmq.testing",
                 str(os.getpid()), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=environment,
                cwd=self.directory, start_new_session=True)
        with self.child.stdout, selectors.DefaultSelector() as selector:
            selector.register(self.child.stdout, selectors.EVENT_READ)
            line = b""
            while not line.endswith(b"\n"):
                if not selector.select(START_TIMEOUT_SECONDS):
                    raise GreenMQTestingError(f"the broker did not say it was ready within "
                                              f"{START_TIMEOUT_SECONDS:.0f} s:\n{self.log()}")
                chunk = os.read(self.child.stdout.fileno(), 4096)
                if not chunk:
                    self.child.wait(STOP_TIMEOUT_SECONDS)
                    raise GreenMQTestingError(f"the broker exited with {self.child.returncode}:\n{self.log()}")
                line += chunk
        return json.loads(line)

    def log(self, offset=0):
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def stop(self):
        _running.discard(self)
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        if not self.keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)


def _child_main():
    """The child: die with the parent, then be the broker."""
    parent_pid, args = int(sys.argv[1]), sys.argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent_pid:
        sys.exit("the parent died while the broker started")
    from . import broker as broker_process
    sys.exit(broker_process.main(args))


def _stop_all():
    for process in list(_running):
        process.stop()


atexit.register(_stop_all)


def _stop_brokers_on_sigterm():
    """By default SIGTERM ends a Python process without unwinding: the child would still
    die with it, but its files would stay. Where nobody else handles SIGTERM, stop the
    brokers first, then die of the signal as before."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _stop_all_and_die)


def _stop_all_and_die(signum, frame):
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if __name__ == "__main__":
    _child_main()
