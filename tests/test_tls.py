"""TLS listeners for both protocols, with a certificate authority the tests make."""

import socket
import ssl
import subprocess
import sys

import pika
import pytest

from greenmq import connection
from tests.broker_process import ROOT, BrokerProcess
from tests.greenmqctl_process import greenmqctl
from tests.tls_certificates import write_certificates

TLS_PORTS = ("--tls-port", "0", "--amqps-port", "0")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return write_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(certificates):
    with BrokerProcess("--in-memory", "--tls-cert", certificates["server_cert"], "--tls-key",
                       certificates["server_key"], *TLS_PORTS) as broker:
        yield broker
        log = broker.log()
    assert "Traceback" not in log, log


def client_context(certificates, with_certificate=False):
    context = ssl.create_default_context(cafile=certificates["ca"])
    if with_certificate:
        context.load_cert_chain(certificates["client_cert"], certificates["client_key"])
    return context


def test_pika_publishes_and_consumes_over_amqps(tls_broker, certificates):
    parameters = pika.ConnectionParameters("localhost", tls_broker.amqps_port,
                                           ssl_options=pika.SSLOptions(client_context(certificates), "localhost"))
    with pika.BlockingConnection(parameters) as client:
        channel = client.channel()
        channel.queue_declare("tls-pika")
        channel.basic_publish("", "tls-pika", b"over TLS")
        assert channel.basic_get("tls-pika", auto_ack=True)[2] == b"over TLS"


def test_connection_py_speaks_amqp_over_tls_given_an_amqps_url(tls_broker, certificates):
    url = f"amqps://guest:guest@localhost:{tls_broker.amqps_port}/%2f"
    with pytest.raises(ssl.SSLCertVerificationError):       # verified by default: our CA is unknown
        connection.Connection(url)
    with connection.Connection(url, ssl=client_context(certificates)) as client:
        channel = client.channel()
        channel.queue_declare("tls-amqp")
        channel.confirm_delivery()
        for number in range(200):       # enough to need more than one TLS record each way
            channel.basic_publish("", "tls-amqp", b"x" * 1000 + str(number).encode())
        got = [channel.basic_get("tls-amqp", auto_ack=True)[2] for _ in range(200)]
        assert got == [b"x" * 1000 + str(number).encode() for number in range(200)]


def test_connection_py_speaks_json_lines_over_tls(tls_broker, certificates):
    with connection.Connection("127.0.0.1", tls_broker.tls_port, ssl=client_context(certificates)) as client:
        channel = client.channel()
        channel.queue_declare("tls-json")
        for number in range(200):       # enough to need more than one TLS record each way
            channel.basic_publish("", "tls-json", b"x" * 1000 + str(number).encode())
        got = [channel.basic_get("tls-json", auto_ack=True)[2] for _ in range(200)]
        assert got == [b"x" * 1000 + str(number).encode() for number in range(200)]
    # the plain listeners are still there
    with connection.Connection("127.0.0.1", tls_broker.port) as client:
        assert client.default_channel.queue_declare("tls-json", passive=True).method.message_count == 0


def test_greenmqctl_over_tls(tls_broker, certificates):
    result = greenmqctl(tls_broker.tls_port, "--tls-ca", certificates["ca"], "-q", "list_vhosts")
    assert result.returncode == 0 and result.stdout.split() == ["name", "/"], result.stderr
    untrusted = greenmqctl(tls_broker.tls_port, "--tls-ca", certificates["other_ca"], "status")
    assert untrusted.returncode == 69 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_a_client_speaking_plain_to_a_tls_port_is_dropped_and_others_served(tls_broker, certificates):
    with socket.create_connection(("127.0.0.1", tls_broker.tls_port), timeout=10) as plain:
        plain.sendall(b'{"op":"hello"}\n')
        try:
            answer = plain.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""     # the broker hung up; it did not answer in the clear
    with connection.Connection("127.0.0.1", tls_broker.tls_port, ssl=client_context(certificates)):
        pass
    assert "TLS handshake with 127.0.0.1:" in tls_broker.log()


def test_with_a_client_ca_only_clients_with_a_signed_certificate_get_in_and_plain_ports_can_be_off(certificates):
    with BrokerProcess("--in-memory", "--tls-cert", certificates["server_cert"], "--tls-key",
                       certificates["server_key"], "--tls-ca", certificates["ca"], "--no-plain",
                       *TLS_PORTS) as broker:
        assert broker.ports["port"] is None and broker.ports["amqp_port"] is None
        assert "listening for JSON-lines clients" not in broker.log()
        # TLS 1.3 checks the client's certificate after the client's side of the handshake:
        # the refusal comes as the connection's end when the client first reads.
        with pytest.raises((ssl.SSLError, OSError, connection.ConnectionClosed)):
            with connection.Connection("127.0.0.1", broker.tls_port, ssl=client_context(certificates)) as client:
                client.call("status")
        with connection.Connection("127.0.0.1", broker.tls_port,
                                   ssl=client_context(certificates, with_certificate=True)) as client:
            assert client.call("status")["product"] == "GreenMQ"
        parameters = pika.ConnectionParameters("localhost", broker.amqps_port, ssl_options=pika.SSLOptions(
            client_context(certificates, with_certificate=True), "localhost"))
        with pika.BlockingConnection(parameters) as client:
            assert client.channel().queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
        assert "Traceback" not in broker.log()


@pytest.mark.parametrize("flags, message", [
    (("--tls-cert", "/no/such/cert.pem"), "tls_cert: cannot load /no/such/cert.pem"),
    (("--tls-key", "/no/such/key.pem"), "tls_key is set but tls_cert is not"),
    (("--no-plain",), "plain = false (--no-plain) needs tls_cert"),
])
def test_bad_tls_settings_stop_the_start_with_the_setting_named(flags, message, tmp_path):
    result = subprocess.run([sys.executable, "broker.py", "--in-memory", "--port", "0", "--amqp-port", "0", *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start(certificates):
    result = subprocess.run([sys.executable, "broker.py", "--in-memory", "--port", "0", "--amqp-port", "0",
                             "--tls-cert", certificates["server_cert"], "--tls-key", certificates["client_key"]],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "tls_cert: cannot load" in result.stderr and "Traceback" not in result.stderr
