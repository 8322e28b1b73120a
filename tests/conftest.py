import itertools
import re

import pytest

import connection
from tests.broker_process import BrokerProcess

_names = itertools.count(1)


@pytest.fixture(scope="session")
def broker():
    """One broker for the run; tests keep apart by using `name` for what they declare.
    Its log must end without a traceback: bad input may be refused, never crash it."""
    with BrokerProcess() as process:
        yield process
        log = process.log()
    assert "Traceback" not in log, log


@pytest.fixture
def fresh_broker():
    """A broker of this test's own, for tests that stop it or count everything in it."""
    with BrokerProcess() as process:
        yield process


@pytest.fixture
def conn(broker):
    c = connection.Connection("127.0.0.1", broker.port)
    yield c
    c.close()


@pytest.fixture
def channel(conn):
    return conn.channel()


@pytest.fixture
def name(request):
    """A name no other test uses, for queues and exchanges."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)[:80]}.{next(_names)}"
