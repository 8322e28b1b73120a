"""This broker instance as clients see it: its users, its virtual hosts and the sessions
open on it. Front ends authenticate through `open_session`."""

import hmac
import ipaddress

from errors import AccessRefused, NotAllowed
from session import Session
from vhost import VirtualHost

SERVER_NAME = "GreenMQ"
VERSION = "0.1.0"

# As in RabbitMQ, the well-known default account may only log in over loopback, so a broker
# bound to a public address is not open to anyone who knows "guest".
LOOPBACK_USERS = frozenset({"guest"})


class Node:
    def __init__(self, users=None, vhost_names=("/",)):
        self.users = dict(users) if users is not None else {"guest": "guest"}
        self.vhosts = {name: VirtualHost(name) for name in vhost_names}
        self.sessions = set()

    def authenticate(self, username, password, peer, mechanism="PLAIN"):
        expected = self.users.get(username)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise AccessRefused(
                f"Login was refused using authentication mechanism {mechanism}. "
                "For details see the broker logfile.")
        if username in LOOPBACK_USERS and not _is_loopback(peer):
            raise AccessRefused(f"User '{username}' can only connect via localhost")

    def open_session(self, username, password, vhost_name, peer, protocol, sink,
                     client_properties=None, mechanism="PLAIN"):
        self.authenticate(username, password, peer, mechanism)
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotAllowed(f"vhost {vhost_name} not found")
        session = Session(self, vhost, username, peer, protocol, sink, client_properties)
        self.sessions.add(session)
        return session

    def close(self):
        for session in list(self.sessions):
            session.close()


def _is_loopback(peer):
    if peer is None:
        return True
    host = peer[0] if isinstance(peer, tuple) else peer
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
