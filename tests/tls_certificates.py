"""A throwaway certificate authority, a server certificate for 127.0.0.1 and localhost,
and a client certificate, written as PEM files for the TLS tests."""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, key, issuer, issuer_key, ca=False, names=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def write_certificates(directory):
    """Returns a dict of paths: ca, server_cert, server_key, client_cert, client_key, and
    other_ca (a CA that signed nothing here)."""
    paths = {}

    def save(name, certificate=None, key=None):
        path = paths[name] = os.path.join(directory, f"{name}.pem")
        with open(path, "wb") as file:
            if certificate is not None:
                file.write(certificate.public_bytes(serialization.Encoding.PEM))
            if key is not None:
                file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("GreenMQ test CA", ca_key, "GreenMQ test CA", ca_key, ca=True)
    save("ca", ca)
    other_key = ec.generate_private_key(ec.SECP256R1())
    save("other_ca", _certificate("Another CA", other_key, "Another CA", other_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    save("server_cert", _certificate("localhost", server_key, "GreenMQ test CA", ca_key,
                                     names=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
                                     usage=ExtendedKeyUsageOID.SERVER_AUTH))
    save("server_key", key=server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    save("client_cert", _certificate("greenmq-client", client_key, "GreenMQ test CA", ca_key,
                                     usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    save("client_key", key=client_key)
    return paths
