"""This broker instance as clients see it: its users, its virtual hosts and the sessions
open on it. Front ends authenticate through `open_session`."""

import hmac
import ipaddress
import logging
import time

from durable_store import MemoryStore

from errors import AccessRefused, ConnectionForced, NotAllowed, NotFound, PreconditionFailed
from message import continue_sequence_after
from session import Session
from vhost import VirtualHost, check_name

log = logging.getLogger("greenmq")

SERVER_NAME = "GreenMQ"
VERSION = "0.1.0"

# As in RabbitMQ, the well-known default account may only log in over loopback, so a broker
# bound to a public address is not open to anyone who knows "guest".
LOOPBACK_USERS = frozenset({"guest"})

# Who may add and delete virtual hosts, until users carry tags: RabbitMQ's guest is an
# administrator, and may only log in over loopback.
DEFAULT_ADMINISTRATORS = frozenset({"guest"})


class Node:
    def __init__(self, users=None, vhost_names=("/",), store=None, administrators=DEFAULT_ADMINISTRATORS):
        self.users = dict(users) if users is not None else {"guest": "guest"}
        self.administrators = frozenset(administrators)
        self.store = store if store is not None else MemoryStore()
        self.vhosts = {name: VirtualHost(name, self.store) for name in vhost_names}
        self.sessions = set()

    def recover(self):
        """Bring back what the store holds, before any listener opens."""
        started = time.monotonic()
        recovered = self.store.load()
        continue_sequence_after(recovered.last_seq)
        expired = sum(vhost.restore(recovered) for vhost in self.vhosts.values())
        messages = sum(len(queue.ready) for vhost in self.vhosts.values() for queue in vhost.queues.values())
        log.info("recovered %d exchanges, %d queues, %d bindings and %d messages in %.2f s%s%s",
                 len(recovered.exchanges), len(recovered.queues), len(recovered.bindings), messages,
                 time.monotonic() - started, f"; {expired} expired while the broker was down" if expired else "",
                 "" if recovered.clean else "; the last run did not stop cleanly, so every message "
                 "comes back flagged redelivered")

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

    def check_administrator(self, username):
        if username not in self.administrators:
            raise AccessRefused(f"user '{username}' is not an administrator")

    def add_vhost(self, name):
        check_name(name, "vhost name")
        if not name:
            raise PreconditionFailed("a vhost name must not be empty")
        if name in self.vhosts:
            raise PreconditionFailed(f"vhost '{name}' already exists")
        self.vhosts[name] = VirtualHost(name, self.store)

    def delete_vhost(self, name):
        """Delete a virtual host and everything in it. As in RabbitMQ, its connections are
        closed with 320 first, so no client is left talking to a vhost that is gone."""
        vhost = self.vhosts.pop(name, None)
        if vhost is None:
            raise NotFound(f"no vhost '{name}'")
        reason = ConnectionForced(f"vhost '{name}' is deleted")
        for session in [s for s in self.sessions if s.vhost is vhost]:
            session.sink.close(reason)
            session.close()
        vhost.remove_all()

    def close(self):
        """Close every session (their unacked deliveries return to their queues), note which
        stored messages were delivered, and close the store."""
        for session in list(self.sessions):
            session.close()
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                if queue.store is not None:
                    redelivered = [m for m in queue.ready if m.redelivered and m.stored is not None]
                    if redelivered:
                        self.store.mark_redelivered(queue, redelivered)
        self.store.close()


def _is_loopback(peer):
    if peer is None:
        return True
    host = peer[0] if isinstance(peer, tuple) else peer
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
