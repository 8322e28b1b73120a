"""The pytest plugin (entry point `pytest11`): installing GreenMQ is all it takes.

Fixtures:
    greenmq        one broker for the test session (greenmq.testing.Broker): `amqp_url`,
                   `host` and `port` (JSON lines), `reset()` to delete what tests declared
    greenmq_vhost  a fresh virtual host of that broker for each test, deleted after it

A failing test that used them gets the broker's log of its run in its report.
Options (command line, or the ini file without the dashes): --greenmq-port for a fixed
AMQP port, --greenmq-url to run the same tests against a broker already running (a
RabbitMQ, say; --greenmq-management-url names its management API, for fresh vhosts, used
only once it shows it serves that broker),
--greenmq-keep-data to keep the broker's directory.
"""

import itertools
import re
import warnings

import pytest

from . import testing

_BROKER = pytest.StashKey()       # config: the session's broker, once started
_LOG_OFFSET = pytest.StashKey()   # item: the broker's log size when the test started
_vhost_numbers = itertools.count(1)


def pytest_addoption(parser):
    group = parser.getgroup("greenmq", "GreenMQ test broker")
    options = (
        ("greenmq_port", "string", "AMQP port for the test broker (default: a free one)"),
        ("greenmq_url", "string", "AMQP URL of a running broker to use instead of starting GreenMQ"),
        ("greenmq_management_url", "string",
         "with --greenmq-url: RabbitMQ's management API, for fresh vhosts (default http://HOST:15672, "
         "used only if it serves that broker)"),
        ("greenmq_keep_data", "bool", "keep the test broker's data directory and log"),
    )
    for name, kind, help_text in options:
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_text)
        else:
            group.addoption(flag, default=None, dest=name, help=help_text)
        parser.addini(name, help_text, type=kind, default=False if kind == "bool" else "")


def _option(config, name):
    value = config.getoption(name)
    return config.getini(name) if value is None else value


@pytest.fixture(scope="session")
def greenmq(pytestconfig):
    """The session's broker: GreenMQ started for this run, or the one at --greenmq-url."""
    url = _option(pytestconfig, "greenmq_url")
    if url:
        yield testing.from_url(url, _option(pytestconfig, "greenmq_management_url") or None)
        return
    port = _option(pytestconfig, "greenmq_port") or "0"
    if not port.isdigit() or int(port) > 65535:
        raise pytest.UsageError(f"greenmq_port must be a port number, not {port!r}")
    with testing.broker(amqp_port=int(port), keep_data=_option(pytestconfig, "greenmq_keep_data")) as broker:
        pytestconfig.stash[_BROKER] = broker
        yield broker


@pytest.fixture
def greenmq_vhost(greenmq, request):
    """A virtual host of this test's own: isolation without restarting the broker. With
    --greenmq-url and no management API the tests share that URL's virtual host instead."""
    if greenmq.admin is None:
        warnings.warn(f"{greenmq.amqp_url} is not a GreenMQ started by this run and no management API "
                      "answers for it: tests share its virtual host and nothing is reset between them")
        yield greenmq
        return
    broker = greenmq.add_vhost(f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)[:100]}-{next(_vhost_numbers)}")
    yield broker
    greenmq.delete_vhost(broker.vhost)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    broker = item.config.stash.get(_BROKER, None)
    item.stash[_LOG_OFFSET] = broker.log_size() if broker else 0
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    broker = item.config.stash.get(_BROKER, None)
    if report.failed and broker is not None and "greenmq" in item.fixturenames:
        report.sections.append(("greenmq broker log", broker.log(item.stash.get(_LOG_OFFSET, 0))))


def pytest_terminal_summary(terminalreporter, config):
    broker = config.stash.get(_BROKER, None)
    if broker is not None and broker.process.keep_data:
        terminalreporter.write_line(f"greenmq: the broker's data and log are kept in {broker.process.directory}")
