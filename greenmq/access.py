"""Who may do what: users with salted password hashes and tags, and the configure, write
and read permissions a user holds in a virtual host, as RabbitMQ has them.

Hashing is slow on purpose; callers run `hash_password` and `User.check_password` off the
gevent hub (node.py does).
"""

import base64
import hashlib
import hmac
import os
import re

from .errors import AccessRefused, PreconditionFailed

def check_user_id(user_id, user):
    """A message's user_id must be its publisher's own name, as RabbitMQ validates it, on
    every wire: a consumer may trust it to say who sent the message."""
    if user_id != user:
        raise PreconditionFailed(f"user_id property set to '{user_id}' but authenticated user was '{user}'")


# PBKDF2-HMAC-SHA256 with this many rounds costs about 75 ms on the 2-core development
# machine: slow enough to make guessing stolen hashes expensive, fast enough for logins
# (which are cached once verified, so reconnecting clients pay it once).
PBKDF2_ITERATIONS = 210_000
SALT_BYTES = 16
HASHING_ALGORITHM = "greenmq_pbkdf2_sha256"
# An imported hash may name its own round count; beyond ten times ours, each login of that
# user would hold a hashing thread for seconds.
MAX_PBKDF2_ITERATIONS = 10 * PBKDF2_ITERATIONS

# RabbitMQ's own algorithms, accepted in imported definitions so users move over with
# their passwords: base64 of a 4-byte salt followed by hash(salt + password).
RABBITMQ_HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}

# The tags RabbitMQ gives meaning to; any other tag is kept and shown but grants nothing.
# A policymaker may do what a management user may, and manage the policies of the vhosts
# it has permissions in.
ADMINISTRATOR, MONITORING, MANAGEMENT, POLICYMAKER = "administrator", "monitoring", "management", "policymaker"

FULL_ACCESS = ".*"

# What an operator may cap, per virtual host and per user, as RabbitMQ's
# `set_vhost_limits` and `set_user_limits` name them. A negative value is no limit and 0
# refuses every new one; what is already open when a limit is set stays open.
LIMITS = {"vhost": ("max-connections", "max-queues"), "user": ("max-connections", "max-channels")}


def checked_limits(kind, limits):
    """`limits` of a vhost or a user (`kind`), refused as RabbitMQ's validation refuses
    them: an unknown name, a value that is not a whole number."""
    if type(limits) is not dict:
        raise PreconditionFailed(f"{kind} limits must be a JSON object such as {{\"{LIMITS[kind][0]}\": 10}}")
    unknown = [name for name in limits if name not in LIMITS[kind]]
    if unknown:
        raise PreconditionFailed(f"Unrecognised terms {unknown} in limits; {kind} limits are "
                                 f"{', '.join(LIMITS[kind])}")
    for name, value in limits.items():
        if type(value) is not int:
            raise PreconditionFailed(f"{name} should be a number, actually was {value!r}")
    return dict(limits)


def limit_reached(limits, name, count):
    """The limit on `name` when `count()` of them are already open, else None; `count` is
    only asked when there is a limit."""
    limit = limits.get(name, -1)
    return limit if limit >= 0 and count() >= limit else None

# Names a permission has allowed, remembered so a publish does not run a regular expression
# per message; bounded, as names with ids in them would otherwise grow it without limit.
ALLOWED_NAMES_KEPT = 4096


def hash_password(password, salt=None):
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"{PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password_hash(password_hash, hashing_algorithm):
    """PreconditionFailed unless `check_password` can read the hash (as imported from
    definitions); the empty hash is a user without a password."""
    if not password_hash:
        return
    try:
        if hashing_algorithm == HASHING_ALGORITHM:
            iterations, salt, digest = password_hash.split("$")
            well_formed = (1 <= int(iterations) <= MAX_PBKDF2_ITERATIONS and base64.b64decode(salt, validate=True)
                           and len(base64.b64decode(digest, validate=True)) == hashlib.sha256().digest_size)
        else:
            salted = base64.b64decode(password_hash, validate=True)
            well_formed = len(salted) == 4 + RABBITMQ_HASHES[hashing_algorithm]().digest_size
    except (ValueError, KeyError):
        well_formed = False
    if not well_formed:
        raise PreconditionFailed(f"password_hash is not a {hashing_algorithm} hash")


class User:
    __slots__ = ("name", "password_hash", "hashing_algorithm", "tags")

    def __init__(self, name, password_hash, hashing_algorithm=HASHING_ALGORITHM, tags=()):
        if hashing_algorithm != HASHING_ALGORITHM and hashing_algorithm not in RABBITMQ_HASHES:
            raise PreconditionFailed(f"unknown hashing algorithm '{hashing_algorithm}' for user '{name}'")
        self.name = name
        self.password_hash = password_hash
        self.hashing_algorithm = hashing_algorithm
        self.tags = tuple(tags)

    def check_password(self, password):
        """Slow for our own hashes: call it off the hub."""
        if not self.password_hash:
            return False        # a user without a password cannot log in with one, as in RabbitMQ
        try:
            if self.hashing_algorithm == HASHING_ALGORITHM:
                iterations, salt, digest = self.password_hash.split("$")
                expected = base64.b64decode(digest)
                actual = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
            else:
                salted = base64.b64decode(self.password_hash)
                salt, expected = salted[:4], salted[4:]
                actual = RABBITMQ_HASHES[self.hashing_algorithm](salt + password.encode()).digest()
        except (ValueError, TypeError):
            return False        # a damaged hash matches no password
        return hmac.compare_digest(expected, actual)

    def has_tag(self, *tags):
        return any(tag in self.tags for tag in tags)


class Permission:
    """A user's rights in one virtual host: three regular expressions over resource names."""

    __slots__ = ("configure", "write", "read", "_patterns", "_allowed", "writable_exchanges")

    def __init__(self, configure=FULL_ACCESS, write=FULL_ACCESS, read=FULL_ACCESS):
        self.configure, self.write, self.read = configure, write, read
        patterns = {}
        for kind, pattern in (("configure", configure), ("write", write), ("read", read)):
            if not isinstance(pattern, str):
                raise PreconditionFailed(f"{kind} permission must be a string")
            try:
                # As in RabbitMQ, the empty pattern is '^$': it allows nothing with a name.
                patterns[kind] = re.compile(pattern or "^$")
            except re.error as exc:
                raise PreconditionFailed(f"{kind} permission '{pattern}' is not a regular expression: {exc}") from None
        self._patterns = patterns
        self._allowed = set()       # (kind, resource, name) checked before
        # Checked on every publish: names already allowed, looked up without a call.
        self.writable_exchanges = set()

    def check(self, kind, resource, name, vhost_name, user):
        """`kind` is configure, write or read; `resource` queue or exchange. As in RabbitMQ
        a pattern may match anywhere in the name, and the default exchange goes by the
        name amq.default."""
        key = (kind, resource, name)
        if key in self._allowed:
            return
        shown = (name or "amq.default") if resource == "exchange" else name
        if self._patterns[kind].search(shown):
            if len(self._allowed) >= ALLOWED_NAMES_KEPT:
                self._allowed.clear()
                self.writable_exchanges.clear()
            self._allowed.add(key)
            if kind == "write" and resource == "exchange":
                self.writable_exchanges.add(name)
            return
        raise AccessRefused(f"access to {resource} '{shown}' in vhost '{vhost_name}' refused for user '{user}'")
