"""Policies and operator policies, as RabbitMQ 3.10 has them: per vhost, a name, a
regular expression over queue and exchange names, what it applies to, a priority and a
definition of settings. Of the policies matching a queue or an exchange the one with the
highest priority applies, alone; of the operator policies likewise, and the two merge.

What a queue makes of them is one dict keyed by argument names ("x-message-ttl", ...),
its declared arguments merged with the effective definition as RabbitMQ merges them
(`settings`), which the virtual host hands to `Queue.configure` (or `Exchange.configure`).
Nothing here touches a queue.

Refusals carry RabbitMQ's texts, values written as Erlang prints them (`<<"x">>`), since
that is what operators search for.
"""

import re

import regex

from .errors import NotFound, PreconditionFailed

APPLY_TO = ("queues", "exchanges", "all")

# A policy's pattern may spend this long on one name before it is taken not to match: a
# backtracking pattern such as ^(a|aa)+$ doubles its time with each character of a name,
# and the hub waits while it runs (as for the API's name filters, management.py; the
# `regex` module keeps `re`'s syntax and takes a timeout). Plain patterns take microseconds.
MATCH_BUDGET_SECONDS = 0.01
POLICY, OPERATOR_POLICY = "policy", "operator_policy"     # RabbitMQ's component names
KINDS = (POLICY, OPERATOR_POLICY)

# A max-age (policy, x-max-age, a stream's x-stream-offset interval): a number and one of
# these units, in seconds, as RabbitMQ's check_max_age takes it.
_AGE_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
_AGE = re.compile(r"([0-9]+)([YMDhms])")


def erlang(value):
    """`value` as Erlang's ~p prints the term RabbitMQ decoded it to."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, list):
        return "[" + ",".join(erlang(item) for item in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{erlang(k)} => {erlang(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def age_seconds(value):
    """A max-age ("7D", "12h") in seconds, or None when it is not one."""
    match = _AGE.fullmatch(value) if type(value) is str else None
    return None if match is None else int(match[1]) * _AGE_UNITS[match[2]]


def _integer(minimum, sentence):
    def check(value):
        return None if type(value) is int and value >= minimum else f"{erlang(value)} {sentence}"
    return check


def _string(sentence):
    def check(value):
        return None if type(value) is str else f"{erlang(value)} {sentence}"
    return check


def _one_of(choices, sentence):
    def check(value):
        return None if type(value) is str and value in choices else f"{erlang(value)} {sentence}"
    return check


def _max_age(value):
    return None if age_seconds(value) is not None else f"{erlang(value)} is not a valid max age"


def _ha_params(value):
    return None     # checked with ha-mode, which says what it takes


def _smaller(policy_value, argument):
    return min(policy_value, argument)


def _argument_wins(policy_value, argument):
    return argument


def _shorter_age(policy_value, argument):
    return min(policy_value, argument, key=lambda age: age_seconds(age) or 0)


class Key:
    """One setting a definition may hold: its check, the argument it becomes (None: it
    changes nothing on one node), and which wins when a queue argument sets it too."""

    __slots__ = ("check", "argument", "merge")

    def __init__(self, check, argument, merge=_argument_wins):
        self.check, self.argument, self.merge = check, argument, merge


# Every key RabbitMQ 3.10 validates, with its texts. The lower of the queue's argument and
# the policy's value wins for limits and times (rabbit_amqqueue_process's res_min, the
# streams' and quorum queues' min); for the rest the queue's own argument wins (res_arg),
# as an exchange's alternate-exchange argument beats its policy's.
# ha-*: classic mirroring, which needs a cluster; accepted, and on one node it does nothing.
KEYS = {
    "alternate-exchange": Key(_string("is not a valid alternate exchange name"), "alternate-exchange"),
    "dead-letter-exchange": Key(_string("is not a valid dead letter exchange name"), "x-dead-letter-exchange"),
    "dead-letter-routing-key": Key(_string("is not a valid dead letter routing key"),
                                   "x-dead-letter-routing-key"),
    "message-ttl": Key(_integer(0, "is not a valid message TTL"), "x-message-ttl", _smaller),
    "expires": Key(_integer(1, "is not a valid queue expiry"), "x-expires", _smaller),
    "max-length": Key(_integer(0, "is not a valid maximum length"), "x-max-length", _smaller),
    "max-length-bytes": Key(_integer(0, "is not a valid maximum length in bytes"), "x-max-length-bytes", _smaller),
    "max-in-memory-length": Key(_integer(0, "is not a valid maximum memory in bytes"), "x-max-in-memory-length",
                                _smaller),
    "max-in-memory-bytes": Key(_integer(0, "is not a valid maximum memory in bytes"), "x-max-in-memory-bytes",
                               _smaller),
    "overflow": Key(_one_of(("drop-head", "reject-publish", "reject-publish-dlx"), "is not a valid overflow value"),
                    "x-overflow"),
    "queue-mode": Key(_one_of(("default", "lazy"), "is not a valid queue-mode value"), "x-queue-mode"),
    "queue-version": Key(lambda value: None if type(value) is int and value in (1, 2)
                         else f"{erlang(value)} is not a valid queue-version value", "x-queue-version"),
    "queue-master-locator": Key(_one_of(("client-local", "min-masters", "random"),
                                        "invalid queue-master-locator value"), "x-queue-master-locator"),
    "delivery-limit": Key(_integer(0, "is not a valid delivery limit"), "x-delivery-limit", _smaller),
    "dead-letter-strategy": Key(_one_of(("at-most-once", "at-least-once"), "is not a valid dead letter strategy"),
                                "x-dead-letter-strategy"),
    "queue-leader-locator": Key(_one_of(("client-local", "random", "least-leaders", "balanced"),
                                        "is not a valid queue leader locator value"), "x-queue-leader-locator"),
    "initial-cluster-size": Key(_integer(0, "is not a valid cluster size"), "x-quorum-initial-group-size"),
    "max-age": Key(_max_age, "x-max-age", _shorter_age),
    "stream-max-segment-size-bytes": Key(_integer(0, "is not a valid segment size"),
                                         "x-stream-max-segment-size-bytes", _smaller),
    "ha-mode": Key(_one_of(("all", "exactly", "nodes"), "is not a valid ha-mode value"), None),
    "ha-params": Key(_ha_params, None),
    "ha-sync-mode": Key(_one_of(("manual", "automatic"), "is not a valid ha-sync-mode value"), None),
    "ha-sync-batch-size": Key(_integer(1, "is not a valid ha-sync-batch-size value"), None),
    "ha-promote-on-shutdown": Key(_one_of(("when-synced", "always"), "is not a valid ha-promote-on-shutdown value"),
                                  None),
    "ha-promote-on-failure": Key(_one_of(("when-synced", "always"), "is not a valid ha-promote-on-failure value"),
                                 None),
}

# What an operator policy may set: RabbitMQ's operator_policy_validator keys, each merged
# with the policy's (or argument's) value by taking the lower.
OPERATOR_KEYS = ("expires", "message-ttl", "max-length", "max-length-bytes", "max-in-memory-length",
                 "max-in-memory-bytes", "delivery-limit")

# Keys that make a policy not apply to a classic queue at all (rabbit_classic_queue's
# is_policy_applicable): they belong to quorum queues and streams. A queue type of its
# own says its list by `Queue.inapplicable_policy_keys`.
NOT_FOR_CLASSIC_QUEUES = frozenset({"delivery-limit", "dead-letter-strategy", "queue-leader-locator",
                                    "initial-cluster-size", "max-age", "stream-max-segment-size-bytes"})
# And a quorum queue (rabbit_quorum_queue's is_policy_applicable, read off RabbitMQ 3.10):
# classic-only tuning, mirroring, and streams' keys.
NOT_FOR_QUORUM_QUEUES = frozenset({
    "queue-mode", "queue-master-locator", "ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size",
    "ha-promote-on-shutdown", "ha-promote-on-failure", "max-age", "stream-max-segment-size-bytes",
    "initial-cluster-size"})
# And a stream: every key but these four (read off RabbitMQ 3.10, by whether its management
# API names the policy on a stream).
NOT_FOR_STREAMS = frozenset(KEYS) - {"max-length-bytes", "max-age", "stream-max-segment-size-bytes",
                                     "queue-leader-locator"}


def _invalid(reason):
    return PreconditionFailed(f"Validation failed\n\n{reason}\n")


def _check_ha(definition):
    """rabbit_mirror_queue_misc's checks across the ha-* keys."""
    mode = definition.get("ha-mode")
    if mode is None:
        if any(key in definition for key in ("ha-params", "ha-sync-mode", "ha-promote-on-shutdown")):
            return "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
        return None
    params = definition.get("ha-params")
    if mode == "all" and params is not None:
        return 'ha-mode="all" does not take parameters'
    if mode == "exactly" and not (type(params) is int and params > 0):
        return ('ha-mode="exactly" takes an integer, none given' if params is None
                else f'ha-mode="exactly" takes an integer, {erlang(params)} given')
    if mode == "nodes" and not (type(params) is list and params and all(type(n) is str for n in params)):
        return ('ha-mode="nodes" takes a list of strings, none given' if params is None
                else f'ha-mode="nodes" takes a list of strings, {erlang(params)} given')
    return None


def check_definition(definition, kind=POLICY):
    """The definition as given, or PreconditionFailed with RabbitMQ's reason: the known keys
    in order of their names, then the ones it does not know."""
    if type(definition) is not dict:
        raise _invalid(f"definition must be a dictionary: {erlang(definition)}")
    if not definition:
        raise _invalid("no policy provided")
    known = KEYS if kind == POLICY else {key: KEYS[key] for key in OPERATOR_KEYS}
    for key in sorted(definition):
        if key in known:
            reason = known[key].check(definition[key])
            if reason is not None:
                raise _invalid(reason)
    reason = _check_ha(definition) if kind == POLICY else None
    if reason is not None:
        raise _invalid(reason)
    unknown = sorted(key for key in definition if key not in known)
    if unknown:
        raise _invalid("[" + ",".join(f"{{{erlang(key)},{erlang(definition[key])}}}" for key in unknown)
                       + "] are not recognised policy settings")
    return definition


class Policy:
    """One policy or operator policy (`kind`) of a vhost, checked as RabbitMQ checks it."""

    __slots__ = ("vhost", "kind", "name", "pattern", "apply_to", "priority", "definition", "_regex")

    def __init__(self, vhost, kind, name, pattern, definition, priority=0, apply_to="all"):
        if type(priority) not in (int, float):
            raise _invalid(f"priority should be a number, actually was {erlang(priority)}")
        if type(pattern) is not str:
            raise _invalid(f"pattern should be regular expression but is invalid: {erlang(pattern)}")
        try:
            self._regex = regex.compile(pattern)
        except regex.error as exc:
            raise _invalid(f"pattern should be regular expression but is invalid: {exc}") from None
        if apply_to not in APPLY_TO:
            raise _invalid(f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'")
        self.vhost, self.kind, self.name = vhost, kind, name
        self.pattern, self.apply_to, self.priority = pattern, apply_to, priority
        self.definition = check_definition(definition, kind)

    def row(self):
        """As RabbitMQ's API and list_policies show it."""
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern, "apply-to": self.apply_to,
                "definition": self.definition, "priority": self.priority}

    def matches(self, target):
        """Whether it applies to `target` (a queue or an exchange), none of whose
        `inapplicable_policy_keys` it may hold; a pattern over MATCH_BUDGET_SECONDS does not match."""
        if (self.apply_to not in ("all", target.kind + "s")
                or target.inapplicable_policy_keys.intersection(self.definition)):
            return False
        try:
            return self._regex.search(target.name, timeout=MATCH_BUDGET_SECONDS) is not None
        except TimeoutError:
            return False


class Policies:
    """A vhost's policies and operator policies, by name."""

    def __init__(self, vhost):
        self.vhost = vhost
        self.by_kind = {POLICY: {}, OPERATOR_POLICY: {}}

    def put(self, kind, name, pattern, definition, priority=0, apply_to="all"):
        policies = self._of(kind)
        policies[name] = policy = Policy(self.vhost, kind, name, pattern, definition, priority, apply_to)
        return policy

    def delete(self, kind, name):
        if self._of(kind).pop(name, None) is None:
            raise NotFound(f"no {kind.replace('_', ' ')} '{name}' in vhost '{self.vhost}'")

    def list(self, kind):
        """By name, the same before and after a restart."""
        return [policy.row() for policy in sorted(self._of(kind).values(), key=lambda policy: policy.name)]

    def _of(self, kind):
        policies = self.by_kind.get(kind)
        if policies is None:
            raise NotFound(f"no kind of policy '{kind}'; the kinds are {', '.join(KINDS)}")
        return policies

    def winner(self, kind, target):
        """The policy of `kind` that applies to `target`: the highest priority among those
        matching. RabbitMQ breaks a tie by its table's internal order, which nobody can
        rely on; here the name that sorts first wins, the same after every restart."""
        best = None
        for policy in self.by_kind[kind].values():
            if policy.matches(target) and (
                    best is None or (-policy.priority, policy.name) < (-best.priority, best.name)):
                best = policy
        return best


def effective_definition(policy, operator_policy):
    """The definition that applies: the policy's, with each operator policy key merged in
    (the lower value, as rabbit_policies:merge_policy_value)."""
    definition = dict(policy.definition) if policy is not None else {}
    if operator_policy is not None:
        for key, value in operator_policy.definition.items():
            definition[key] = min(definition[key], value) if key in definition else value
    return definition


def settings(arguments, definition):
    """A queue's (or exchange's) settings by argument name: its declared `arguments` with
    the effective `definition` merged in, each key as RabbitMQ resolves it against an
    argument of the same meaning."""
    merged = dict(arguments)
    for key, value in definition.items():
        argument = KEYS[key].argument
        if argument is None:
            continue
        merged[argument] = KEYS[key].merge(value, arguments[argument]) if argument in arguments else value
    return merged
