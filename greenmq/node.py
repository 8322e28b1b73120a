"""This broker instance as clients see it: its users and their permissions, its virtual
hosts, the limits of both, and the sessions open on it, all restored from the durable
store at start.

Front ends log a client in with `authenticate` and then `open_session`."""

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import time

import gevent

from . import definitions
from .access import (ADMINISTRATOR, FULL_ACCESS, HASHING_ALGORITHM, LIMITS, POLICYMAKER, Permission, User,
                     checked_limits, hash_password, limit_reached)
from .store.memory import MemoryStore
from .store.scratch import ScratchStore
from .errors import AccessRefused, BadSyntax, ConnectionForced, NotAllowed, NotFound, PreconditionFailed
from .memory import (DEFAULT_MEMORY_FRACTION, DEFAULT_PAGING_RATIO, DEFAULT_QUEUE_WINDOW, MemoryBudget,
                     parse_memory_limit)
from .policy import OPERATOR_POLICY
from .session import Session
from .vhost import VirtualHost, check_name

log = logging.getLogger("greenmq")

SERVER_NAME = "GreenMQ"
VERSION = "0.1.0"

# As in RabbitMQ, the well-known default account may only log in over loopback, so a broker
# bound to a public address is not open to anyone who knows "guest".
LOOPBACK_USERS = frozenset({"guest"})
DEFAULT_USER, DEFAULT_PASSWORD, DEFAULT_VHOST = "guest", "guest", "/"

# Failed logins from one address are answered ever more slowly (doubling from the second,
# up to the cap) while they keep coming within the window: a password guesser gets a few
# tries a second at most, a person who mistyped barely notices.
LOGIN_FAILURE_WINDOW_SECONDS = 60.0
LOGIN_FAILURE_FIRST_DELAY_SECONDS = 0.1
LOGIN_FAILURE_MAX_DELAY_SECONDS = 5.0

# consumer_timeout, as RabbitMQ's: a channel whose oldest unacked delivery is older than
# this is closed with 406 and its deliveries requeued. 30 minutes, RabbitMQ's default since
# 3.8.15; 0 turns it off. Checked once per tick of the node's coarse clock, which is
# cheap (one look per channel), and fine enough for a timeout counted in minutes.
DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
CONSUMER_TIMEOUT_CHECK_SECONDS = 1

# Logins verified once are remembered by a fast keyed digest of the password, so clients
# that reconnect often (Celery workers, pooled producers) do not pay the slow hash each time.
_VERIFIED_KEY = os.urandom(32)
_verified = set()   # (password_hash, keyed digest of the password)
VERIFIED_LOGINS_KEPT = 10_000


class Node:
    def __init__(self, store=None, memory_limit=None, queue_window=DEFAULT_QUEUE_WINDOW,
                 paging_ratio=DEFAULT_PAGING_RATIO, scratch_dir=None, queue_window_bytes=None):
        """`scratch_dir`: where the scratch store's file goes (None: a temporary one);
        `queue_window_bytes` None: derived from the memory limit (memory.py)."""
        self.store = store if store is not None else MemoryStore()
        self.memory = MemoryBudget(parse_memory_limit(DEFAULT_MEMORY_FRACTION) if memory_limit is None
                                   else memory_limit, queue_window, paging_ratio, queue_window_bytes)
        self.memory.page_out = self._page_out
        self.store.counts_in(self.memory)
        self.scratch = ScratchStore(scratch_dir, self.memory)
        self.users = {}             # name -> User
        self.permissions = {}       # (user name, vhost name) -> Permission
        self.vhosts = {}
        self.user_limits = {}       # user name -> its limits, for users that have any
        self.sessions = set()
        self._login_failures = {}   # peer address -> (failures in a row, time of the last)
        self.started = time.monotonic()
        # Seconds counted by the consumer-timeout checker's ticks: deliveries record it instead
        # of reading the clock each. Counting ticks (each at least a second) rather than reading
        # the time means a channel is never closed before its delivery is really that old.
        self.clock = 0
        self._consumer_timeout_checker = None
        self._recover()

    # -- start ---------------------------------------------------------------------------

    def _recover(self):
        """Bring back what the store holds; on the very first start, the guest user with
        full rights on the default virtual host, as RabbitMQ sets itself up."""
        started = time.monotonic()
        recovered = self.store.load()
        for name, password_hash, algorithm, tags in recovered.users:
            self.users[name] = User(name, password_hash, algorithm, tags)
        for name in recovered.vhosts:
            self.vhosts[name] = VirtualHost(name, self.store, self.memory, self.scratch)
        for user, vhost, configure, write, read in recovered.permissions:
            self.permissions[user, vhost] = Permission(configure, write, read)
        for kind, name, limits in recovered.limits:
            self._keep_limits(kind, name, limits)
        if recovered.first_start:
            self.add_vhost(DEFAULT_VHOST)
            self.add_user(DEFAULT_USER, _default_password_hash(), [ADMINISTRATOR], hashed=True)
            self.set_permissions(DEFAULT_USER, DEFAULT_VHOST, FULL_ACCESS, FULL_ACCESS, FULL_ACCESS)
        expired = sum(vhost.restore(recovered) for vhost in self.vhosts.values())
        messages = sum(len(queue.ready) for vhost in self.vhosts.values() for queue in vhost.queues.values())
        log.info("recovered %d exchanges, %d queues, %d bindings and %d messages in %.2f s%s%s",
                 len(recovered.exchanges), len(recovered.queues), len(recovered.bindings), messages,
                 time.monotonic() - started, f"; {expired} expired while the broker was down" if expired else "",
                 "" if recovered.clean else "; the last run did not stop cleanly, so every message "
                 "comes back flagged redelivered")

    # -- memory ----------------------------------------------------------------------------

    def _page_out(self, excess):
        """Memory is short (the budget asks): queues page what they hold beyond their
        windows, the longest first, until `excess` bytes are freed; if that is not enough,
        they page most of their windows too (Queue.page_out's `deep`)."""
        queues = sorted((queue for vhost in self.vhosts.values() for queue in vhost.queues.values()),
                        key=lambda queue: len(queue.ready), reverse=True)
        freed = 0
        for deep in (False, True):
            for queue in queues:
                if freed >= excess:
                    return
                freed += queue.page_out(deep)

    # -- logging in ----------------------------------------------------------------------

    def authenticate(self, username, password, peer, mechanism="PLAIN"):
        """The User these credentials name, or AccessRefused; refusals are logged with the
        user name, the peer and why, and repeated ones from one address slowed down."""
        user = self.users.get(username)
        if user is None or not _password_matches(user, password):
            self._refuse_login(username, peer, mechanism, "unknown user" if user is None else "wrong password")
        if username in LOOPBACK_USERS and not _is_loopback(peer):
            self._refuse_login(username, peer, mechanism, "this user may only connect via localhost",
                               AccessRefused(f"User '{username}' can only connect via localhost"))
        self._login_failures.pop(_host(peer), None)
        return user

    def _refuse_login(self, username, peer, mechanism, reason, refusal=None):
        log.warning("login refused for user '%s' from %s (%s): %s", username, _shown(peer), mechanism, reason)
        host = _host(peer)
        failures, last = self._login_failures.get(host, (0, 0.0))
        now = time.monotonic()
        failures = failures + 1 if now - last < LOGIN_FAILURE_WINDOW_SECONDS else 1
        self._login_failures[host] = (failures, now)
        if failures > 1:
            gevent.sleep(min(LOGIN_FAILURE_FIRST_DELAY_SECONDS * 2 ** (failures - 2), LOGIN_FAILURE_MAX_DELAY_SECONDS))
        raise refusal or AccessRefused(
            f"Login was refused using authentication mechanism {mechanism}. For details see the broker logfile.")

    def open_session(self, user, vhost_name, peer, protocol, sink, client_properties=None):
        """A session for an authenticated `user` in a virtual host it has permissions in."""
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotAllowed(f"vhost {vhost_name} not found")
        permission = self.permissions.get((user.name, vhost_name))
        if permission is None:
            raise NotAllowed(f"access to vhost '{vhost_name}' refused for user '{user.name}'")
        limit = limit_reached(vhost.limits, "max-connections",
                              lambda: sum(1 for s in self.sessions if s.vhost is vhost))
        if limit is not None:
            raise NotAllowed(f"access to vhost '{vhost_name}' refused for user '{user.name}': "
                             f"connection limit ({limit}) is reached")
        limit = limit_reached(self.user_limits.get(user.name, {}), "max-connections",
                              lambda: sum(1 for s in self.sessions if s.user == user.name))
        if limit is not None:
            raise NotAllowed(f"connection refused for user '{user.name}': user connection limit ({limit}) is reached")
        session = Session(self, vhost, user.name, permission, peer, protocol, sink, client_properties)
        self.sessions.add(session)
        return session

    def check_channel_limit(self, username):
        """Before a channel opens: a user's `max-channels` counts their channels on every
        connection, as RabbitMQ counts them."""
        limit = limit_reached(self.user_limits.get(username, {}), "max-channels",
                              lambda: sum(len(s.channels) for s in self.sessions if s.user == username))
        if limit is not None:
            raise NotAllowed(f"number of channels opened for user '{username}' has reached the maximum "
                             f"allowed user limit of ({limit})")

    def check_tag(self, username, *tags):
        """For operators' requests: the user must hold one of `tags`; administrators may do
        anything."""
        user = self.users.get(username)
        if user is None or not user.has_tag(ADMINISTRATOR, *tags):
            raise AccessRefused(f"user '{username}' has none of the tags {', '.join((ADMINISTRATOR,) + tags)}")

    def check_policy_access(self, username, vhost_name, kind):
        """As RabbitMQ: operator policies are administrators' alone; policies are also
        policymakers', in the vhosts they hold permissions in."""
        if kind == OPERATOR_POLICY:
            self.check_tag(username)
            return
        self.check_tag(username, POLICYMAKER)
        self.vhost(vhost_name)
        if not self.users[username].has_tag(ADMINISTRATOR) and (username, vhost_name) not in self.permissions:
            raise AccessRefused(f"access to vhost '{vhost_name}' refused for user '{username}'")

    # -- users and permissions -----------------------------------------------------------

    def add_user(self, name, password, tags=(), hashed=False, hashing_algorithm=HASHING_ALGORITHM):
        """`password` is the clear text (hashed here, off the hub) unless `hashed`."""
        check_name(name, "user name")
        if not name:
            raise PreconditionFailed("a user name must not be empty")
        if name in self.users:
            raise PreconditionFailed(f"user '{name}' already exists")
        self.put_user(name, password if hashed else _hashed(password), hashing_algorithm, tags)

    def put_user(self, name, password_hash, hashing_algorithm=HASHING_ALGORITHM, tags=()):
        """Add or replace a user by its password hash (as definitions carry it)."""
        self.users[name] = User(name, password_hash, hashing_algorithm, tags)
        self.store.put_user(name, password_hash, hashing_algorithm, tags)

    def user(self, name):
        user = self.users.get(name)
        if user is None:
            raise NotFound(f"no user '{name}'")
        return user

    def delete_user(self, name):
        self.user(name)
        del self.users[name]
        self.user_limits.pop(name, None)
        for key in [key for key in self.permissions if key[0] == name]:
            del self.permissions[key]
        self.store.delete_user(name)

    def change_password(self, name, password):
        user = self.user(name)
        self.put_user(name, _hashed(password), HASHING_ALGORITHM, user.tags)

    def clear_password(self, name):
        """The user can no longer log in with a password, as `rabbitmqctl clear_password`."""
        user = self.user(name)
        self.put_user(name, "", HASHING_ALGORITHM, user.tags)

    def set_user_tags(self, name, tags):
        user = self.user(name)
        self.put_user(name, user.password_hash, user.hashing_algorithm, tags)

    def set_permissions(self, user_name, vhost_name, configure, write, read):
        self.user(user_name)
        self.vhost(vhost_name)
        permission = self.permissions[user_name, vhost_name] = Permission(configure, write, read)
        self.store.put_permission(user_name, vhost_name, configure, write, read)
        self._apply_permission(user_name, vhost_name, permission)

    def clear_permissions(self, user_name, vhost_name):
        self.user(user_name)
        self.vhost(vhost_name)
        if self.permissions.pop((user_name, vhost_name), None) is not None:
            self.store.delete_permission(user_name, vhost_name)
            self._apply_permission(user_name, vhost_name, Permission("", "", ""))

    def _apply_permission(self, user_name, vhost_name, permission):
        """Open sessions go by the new rights from their next operation, as in RabbitMQ."""
        for session in self.sessions:
            if session.user == user_name and session.vhost.name == vhost_name:
                session.permission = permission

    # -- virtual hosts -------------------------------------------------------------------

    def vhost(self, name):
        vhost = self.vhosts.get(name)
        if vhost is None:
            raise NotFound(f"no vhost '{name}'")
        return vhost

    def add_vhost(self, name):
        check_name(name, "vhost name")
        if not name:
            raise PreconditionFailed("a vhost name must not be empty")
        if name in self.vhosts:
            raise PreconditionFailed(f"vhost '{name}' already exists")
        self.vhosts[name] = VirtualHost(name, self.store, self.memory, self.scratch)
        self.store.put_vhost(name)

    def delete_vhost(self, name):
        """Delete a virtual host and everything in it. As in RabbitMQ, its connections are
        closed with 320 first, so no client is left talking to a vhost that is gone."""
        vhost = self.vhost(name)
        del self.vhosts[name]
        reason = ConnectionForced(f"vhost '{name}' is deleted")
        for session in [s for s in self.sessions if s.vhost is vhost]:
            session.sink.close(reason)
            session.close()
        vhost.remove_all()
        for key in [key for key in self.permissions if key[1] == name]:
            del self.permissions[key]
        self.store.delete_vhost(name)

    # -- limits ----------------------------------------------------------------------------

    def limits(self, kind, name):
        """The limits of a vhost or a user (`kind`), which must exist."""
        _check_limits_kind(kind)
        if kind == "vhost":
            return self.vhost(name).limits
        self.user(name)
        return self.user_limits.get(name, {})

    def set_limits(self, kind, name, limits):
        """Replace a vhost's or a user's limits, as `set_vhost_limits` / `set_user_limits`
        do; {} clears them. They count from the next connection, channel or queue."""
        self.limits(kind, name)
        limits = checked_limits(kind, limits)
        self._keep_limits(kind, name, limits)
        self.store.put_limits(kind, name, limits)

    def _keep_limits(self, kind, name, limits):
        if kind == "vhost":
            self.vhosts[name].limits = limits
        elif limits:
            self.user_limits[name] = limits
        else:
            self.user_limits.pop(name, None)

    def list_limits(self, kind, name=None):
        """The vhosts (or users) with limits, or the one named, as RabbitMQ's API lists them."""
        _check_limits_kind(kind)
        names = [name] if name is not None else self.vhosts if kind == "vhost" else self.user_limits
        return [{kind: holder, "value": limits} for holder in names
                for limits in [self.limits(kind, holder)] if limits]

    # -- what operators see ----------------------------------------------------------------

    def status(self):
        return {"product": SERVER_NAME, "version": VERSION, "pid": os.getpid(),
                "uptime_seconds": round(time.monotonic() - self.started, 1),
                "vhosts": len(self.vhosts), "users": len(self.users), "connections": len(self.sessions),
                "queues": sum(len(vhost.queues) for vhost in self.vhosts.values()),
                "messages": sum(queue.message_count + queue.unacked_count
                                for vhost in self.vhosts.values() for queue in vhost.queues.values()),
                "data_dir": getattr(self.store, "path", None), "memory": self.memory.status(),
                "scratch": self.scratch.status()}

    def list_users(self):
        return [{"user": user.name, "tags": list(user.tags)} for user in self.users.values()]

    def vhost_row(self, vhost):
        """A virtual host as every listing shows it (JSON lines, greenmqctl, the HTTP API)."""
        return {"name": vhost.name, "queues": len(vhost.queues),
                "messages": sum(q.message_count + q.unacked_count for q in vhost.queues.values()),
                "connections": sum(1 for s in self.sessions if s.vhost is vhost)}

    def list_vhosts(self):
        return [self.vhost_row(vhost) for vhost in self.vhosts.values()]

    def list_permissions(self, vhost=None, user=None):
        """Every permission, or those in one vhost, or of one user (which must exist)."""
        if vhost is not None:
            self.vhost(vhost)
        if user is not None:
            self.user(user)
        return [{"user": user_name, "vhost": vhost_name, "configure": p.configure, "write": p.write,
                 "read": p.read}
                for (user_name, vhost_name), p in self.permissions.items()
                if vhost in (None, vhost_name) and user in (None, user_name)]

    def list_connections(self):
        return [{"name": s.name, "user": s.user, "vhost": s.vhost.name, "protocol": s.protocol,
                 "channels": len(s.channels), "client_properties": s.client_properties}
                for s in self.sessions]

    def list_channels(self):
        return [{"connection": s.name, "number": c.number, "user": s.user, "vhost": s.vhost.name,
                 "consumers": len(c.consumers), "messages_unacknowledged": len(c.unacked),
                 "prefetch_count": c.consumer_prefetch_count, "global_prefetch_count": c.global_prefetch_count,
                 "confirm": c.confirming}
                for s in self.sessions for c in s.channels.values()]

    def export_definitions(self, rabbitmq_hashes_only=False):
        """Users, vhosts, permissions and topology in RabbitMQ's definitions format."""
        return definitions.export_definitions(self, SERVER_NAME, VERSION, rabbitmq_hashes_only)

    def import_definitions(self, document):
        """Apply a definitions document, all of it or (on any bad entry) none of it."""
        return definitions.import_definitions(self, document)

    def close_connection(self, name, reason):
        """As `rabbitmqctl close_connection`: the client is told 320 and why."""
        sessions = [s for s in self.sessions if s.name == name]
        if not sessions:
            raise NotFound(f"no connection '{name}'")
        for session in sessions:
            session.sink.close(ConnectionForced(reason))
            session.close()

    # -- consumer timeout ----------------------------------------------------------------

    def start_consumer_timeout(self, timeout_ms=DEFAULT_CONSUMER_TIMEOUT_MS):
        """Close channels holding a delivery unacked for longer than `timeout_ms` (None or 0:
        never), as RabbitMQ's consumer_timeout does, on a timer as RabbitMQ checks it."""
        if timeout_ms:
            self._consumer_timeout_checker = gevent.spawn(self._check_consumer_timeouts, timeout_ms)

    def _check_consumer_timeouts(self, timeout_ms):
        while True:
            gevent.sleep(CONSUMER_TIMEOUT_CHECK_SECONDS)
            self.clock = now = self.clock + CONSUMER_TIMEOUT_CHECK_SECONDS
            # A channel's unacked deliveries are in delivery order, so its first is its oldest.
            timed_out = [channel for session in self.sessions for channel in session.channels.values()
                         if channel.unacked
                         and (now - next(iter(channel.unacked.values())).delivered_at) * 1000 > timeout_ms]
            for channel in timed_out:
                if not channel.closed:
                    channel.session.sink.channel_closed(channel.number, PreconditionFailed(
                        f"delivery acknowledgement on channel {channel.number} timed out. Timeout value used: "
                        f"{timeout_ms} ms. This timeout value can be configured, see consumers doc guide to "
                        "learn more"))

    # -- stop ----------------------------------------------------------------------------

    def close(self):
        """Close every session (their unacked deliveries return to their queues), note which
        stored messages were delivered, and close the store."""
        if self._consumer_timeout_checker is not None:
            self._consumer_timeout_checker.kill()
        for session in list(self.sessions):
            session.close()
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                if queue.store is not None:
                    redelivered = [m for m in queue.ready if m.redelivered and m.stored is not None]
                    if redelivered:
                        self.store.mark_redelivered(queue, redelivered)
        self.store.close()
        self.scratch.close()


def _check_limits_kind(kind):
    if kind not in LIMITS:
        raise BadSyntax(f"limits are of a vhost or a user, not of a '{kind}'")


def _hashed(password):
    if not isinstance(password, str):
        raise PreconditionFailed("a password must be a string")
    return gevent.get_hub().threadpool.apply(hash_password, (password,))


def _password_matches(user, password):
    key = (user.password_hash, hmac.new(_VERIFIED_KEY, password.encode(), hashlib.sha256).digest())
    if key in _verified:
        return True
    if not gevent.get_hub().threadpool.apply(user.check_password, (password,)):
        return False
    if len(_verified) >= VERIFIED_LOGINS_KEPT:
        _verified.clear()
    _verified.add(key)
    return True


@functools.cache
def _default_password_hash():
    """The first start's guest/guest, hashed (with a salt of its own) once per process that
    needs it: nodes made in one process share it, and a broker starting on a store that is
    already set up never spends the 50 ms."""
    return hash_password(DEFAULT_PASSWORD)


def _host(peer):
    return peer[0] if isinstance(peer, tuple) else peer


def _shown(peer):
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _is_loopback(peer):
    if peer is None:
        return True
    try:
        return ipaddress.ip_address(_host(peer).split("%")[0]).is_loopback
    except ValueError:
        return False
