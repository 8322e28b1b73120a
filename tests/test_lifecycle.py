"""A SIGTERM drains the broker: clients are told why, pending commits are finished."""

import pytest

from greenmq import connection
from tests.broker_process import BrokerProcess

SHUTDOWN = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


def test_sigterm_tells_clients_why_and_keeps_every_message_it_had_taken(tmp_path):
    data_dir = str(tmp_path / "data")
    with BrokerProcess(data_dir=data_dir) as broker:
        client = connection.Connection("127.0.0.1", broker.port)
        channel = client.default_channel
        channel.queue_declare("drained", durable=True)
        for number in range(2000):      # no confirms: the last commits are still pending
            channel.basic_publish("", "drained", b"%d" % number, connection.BasicProperties(delivery_mode=2))
        channel.queue_declare("drained", passive=True)      # the broker has taken them all
        assert broker.stop() == 0
        with pytest.raises(connection.ConnectionClosed) as closed:
            client.process_data_events(5)
        assert (closed.value.code, closed.value.text) == (320, SHUTDOWN)
        log = broker.log()
        assert "shutting down: closing 1 connections" in log and "stopped" in log and "Traceback" not in log
    with BrokerProcess(data_dir=data_dir) as broker, connection.Connection("127.0.0.1", broker.port) as client:
        assert client.default_channel.queue_declare("drained", passive=True).method.message_count == 2000
