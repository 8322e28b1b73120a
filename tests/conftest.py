import itertools
import os
import re

import pika
import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess

_names = itertools.count(1)
_RUN = os.urandom(4).hex()


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


# The wires connection.py speaks: GreenMQ's JSON lines, GreenMQ's AMQP port, and the AMQP
# broker named by $GREENMQ_TEST_AMQP_URL (a reference RabbitMQ, say).
CLIENT_WIRES = ["json-lines", "amqp", "amqp-reference"]


def client_url(wire, broker):
    """What connection.Connection is given to speak `wire` (a host name for JSON lines,
    whose port goes apart), or a pytest skip when no reference broker is named."""
    if wire == "json-lines":
        return "127.0.0.1"
    if wire == "amqp":
        return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
    url = os.environ.get("GREENMQ_TEST_AMQP_URL")
    if not url:
        pytest.skip("no reference AMQP broker: set GREENMQ_TEST_AMQP_URL "
                    "(e.g. amqp://guest:guest@127.0.0.1:5682/%2f for a RabbitMQ there)")
    return url


@pytest.fixture(params=CLIENT_WIRES)
def client_wire(request):
    return request.param


@pytest.fixture
def connect(broker, client_wire):
    """Opens connection.py connections over this test's wire (closed after the test), so
    one test body proves the same behaviour over JSON lines and over AMQP."""
    url = client_url(client_wire, broker)
    opened = []

    def connect(**options):
        if client_wire == "json-lines":
            options.setdefault("port", broker.port)
        c = connection.Connection(url, **options)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


@pytest.fixture
def json_lines_only(client_wire):
    """For what only GreenMQ's own protocol has (listings, operator requests)."""
    if client_wire != "json-lines":
        pytest.skip("listings and operator requests are GreenMQ's JSON-lines requests; "
                    "over AMQP they are the management API's")


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
    """A name no other test uses, for queues and exchanges, in this run or an earlier one
    (a reference broker keeps durable queues between runs)."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)[:80]}.{_RUN}.{next(_names)}"


@pytest.fixture(scope="session")
def amqp_url(broker):
    """The AMQP broker the client tests talk to: GreenMQ's, or another one named by
    $GREENMQ_TEST_AMQP_URL (e.g. a reference RabbitMQ: amqp://guest:guest@127.0.0.1:5682/%2f)."""
    return os.environ.get("GREENMQ_TEST_AMQP_URL") or f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"


@pytest.fixture
def against_greenmq():
    """For tests that look inside GreenMQ (its log, its JSON-lines side)."""
    if os.environ.get("GREENMQ_TEST_AMQP_URL"):
        pytest.skip("checks GreenMQ itself, not the broker at $GREENMQ_TEST_AMQP_URL")


@pytest.fixture
def params(amqp_url):
    return pika.URLParameters(amqp_url)


@pytest.fixture
def connections(params):
    """pika connections to the AMQP broker under test, closed after the test."""
    opened = []

    def connect(**overrides):
        p = params
        for key, value in overrides.items():
            setattr(p, key, value)
        connection = pika.BlockingConnection(p)
        opened.append(connection)
        return connection

    yield connect
    for pika_connection in opened:
        if pika_connection.is_open:
            pika_connection.close()
