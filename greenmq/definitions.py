"""A broker's topology and accounts as RabbitMQ's definitions JSON (what `rabbitmqctl
export_definitions` writes and `import_definitions` reads), so they move between GreenMQ
and RabbitMQ either way.

An import is checked whole before anything changes: a file with one bad entry is refused
with that entry named, and the broker is left as it was. Importing the same file twice
changes nothing the second time.
"""

from .access import HASHING_ALGORITHM, RABBITMQ_HASHES, Permission, check_password_hash, checked_limits
from .errors import BadSyntax, BrokerError, NotFound, PreconditionFailed
from .exchange import exchange_class
from .vhost import QUEUE_TYPES, check_name

# The RabbitMQ release whose definitions format this is; RabbitMQ reads it as the file's
# format version, GreenMQ's own version goes in product_version.
DEFINITIONS_FORMAT_VERSION = "3.10.8"

# What a RabbitMQ file holds that GreenMQ has no counterpart for yet. Accepted when empty,
# refused otherwise, so nothing a user relies on is dropped without a word.
UNSUPPORTED_SECTIONS = ("policies", "global_parameters", "topic_permissions")

# RabbitMQ keeps a vhost's limits as a runtime parameter of this component and name; of
# the parameters, GreenMQ has these only.
VHOST_LIMITS_COMPONENT, VHOST_LIMITS_PARAMETER = "vhost-limits", "limits"

_KNOWN_SECTIONS = frozenset({"rabbit_version", "rabbitmq_version", "product_name", "product_version",
                             "users", "vhosts", "permissions", "queues", "exchanges", "bindings",
                             "parameters", "explanation"} | set(UNSUPPORTED_SECTIONS))


def export_definitions(node, product, version, rabbitmq_hashes_only=False):
    """Everything an operator declared: users, vhosts, permissions, and exchanges, queues and
    bindings but the broker's own (amq.*, the default exchange, exclusive queues).
    `rabbitmq_hashes_only` leaves out users whose hashes RabbitMQ cannot read (GreenMQ's own
    PBKDF2) with their permissions, as RabbitMQ refuses a whole file for one of them."""
    vhosts = sorted(node.vhosts.values(), key=lambda vhost: vhost.name)
    users = sorted(node.users.values(), key=lambda user: user.name)
    if rabbitmq_hashes_only:
        users = [user for user in users if user.hashing_algorithm in RABBITMQ_HASHES]
    exported = {user.name for user in users}
    return {
        "rabbit_version": DEFINITIONS_FORMAT_VERSION,
        "rabbitmq_version": DEFINITIONS_FORMAT_VERSION,
        "product_name": product,
        "product_version": version,
        "users": [{"name": user.name, "password_hash": user.password_hash,
                   "hashing_algorithm": user.hashing_algorithm, "tags": list(user.tags), "limits": node.user_limits.get(user.name, {})}
                  for user in users],
        "vhosts": [{"name": vhost.name, "limits": [], "metadata": {"description": "", "tags": []}}
                   for vhost in vhosts],
        "permissions": [{"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read}
                        for (user, vhost), p in sorted(node.permissions.items()) if user in exported],
        "topic_permissions": [],
        "parameters": [{"value": vhost.limits, "vhost": vhost.name, "component": VHOST_LIMITS_COMPONENT,
                        "name": VHOST_LIMITS_PARAMETER} for vhost in vhosts if vhost.limits],
        "global_parameters": [], "policies": [],
        "queues": [{"name": q.name, "vhost": vhost.name, "durable": q.durable, "auto_delete": q.auto_delete,
                    "arguments": q.arguments, "type": q.queue_type}
                   for vhost in vhosts for q in vhost.queues.values() if q.exclusive_owner is None],
        "exchanges": [{"name": x.name, "vhost": vhost.name, "type": x.type, "durable": x.durable,
                       "auto_delete": x.auto_delete, "internal": x.internal, "arguments": x.arguments}
                      for vhost in vhosts for x in vhost.exchanges.values() if not _predeclared(x.name)],
        "bindings": [{"source": row["source"], "vhost": vhost.name, "destination": row["destination"],
                      "destination_type": row["destination_kind"], "routing_key": row["routing_key"],
                      "arguments": row["arguments"]}
                     for vhost in vhosts for row in vhost.list_bindings()
                     if row["source"] and not _exclusive(vhost, row["destination"])],
    }


def import_definitions(node, definitions):
    """Check every entry of `definitions` against the file and the broker, then apply them
    all; returns how many of each kind the file held. Raises (with nothing changed) on the
    first bad entry."""
    changes = _plan(node, definitions)
    for change in changes:
        change()
    return {section: len(definitions.get(section) or []) for section in
            ("users", "vhosts", "permissions", "parameters", "exchanges", "queues", "bindings")}


def _predeclared(name):
    return name == "" or name.startswith("amq.")


def _exclusive(vhost, queue_name):
    queue = vhost.queues.get(queue_name)
    return queue is not None and queue.exclusive_owner is not None


# -- checking -------------------------------------------------------------------------

class _Entries:
    """The entries of one section, each a dict whose fields are read with their types
    checked; errors name the section and the entry's position."""

    def __init__(self, definitions, section):
        entries = definitions.get(section)
        entries = [] if entries is None else entries
        if type(entries) is not list:
            raise BadSyntax(f"definitions: '{section}' must be a list")
        self.section = section
        self.entries = entries

    def __iter__(self):
        for index, entry in enumerate(self.entries):
            if type(entry) is not dict:
                raise BadSyntax(f"definitions: {self.section}[{index}] must be an object")
            yield _Entry(self.section, index, entry)


class _Entry:
    _TYPES = {str: "a string", bool: "true or false", dict: "an object", list: "a list"}

    def __init__(self, section, index, fields):
        self.where = f"{section}[{index}]"
        self.fields = fields

    def get(self, name, kind, default=None):
        value = self.fields.get(name, default)
        if value is None and default is None:
            raise BadSyntax(f"definitions: {self.where} has no '{name}'")
        if type(value) is not kind:
            raise BadSyntax(f"definitions: {self.where}: '{name}' must be {self._TYPES[kind]}")
        return value

    def refuse(self, error):
        """The core's error for this entry, with the entry named."""
        return type(error)(f"definitions: {self.where}: {error.text[len(error.name) + 3:]}")   # less "NAME - "


def _plan(node, definitions):
    if type(definitions) is not dict:
        raise BadSyntax("definitions must be a JSON object")
    unknown = sorted(set(definitions) - _KNOWN_SECTIONS)
    if unknown:
        raise BadSyntax(f"definitions: unknown section '{unknown[0]}'")
    for section in UNSUPPORTED_SECTIONS:
        if definitions.get(section):
            raise PreconditionFailed(f"definitions: '{section}' are not supported by GreenMQ; "
                                     "remove them from the file to import the rest")
    changes = []
    users = set(node.users)
    for entry in _Entries(definitions, "users"):
        name = entry.get("name", str)
        password_hash = entry.get("password_hash", str, "")
        algorithm = entry.get("hashing_algorithm", str, "rabbit_password_hashing_sha256")
        tags = entry.get("tags", (list if type(entry.fields.get("tags")) is list else str), "")
        tags = [tag.strip() for tag in tags.split(",")] if type(tags) is str else tags
        tags = [tag for tag in tags if tag]
        if not all(type(tag) is str for tag in tags):
            raise BadSyntax(f"definitions: {entry.where}: 'tags' must be strings")
        if algorithm != HASHING_ALGORITHM and algorithm not in RABBITMQ_HASHES:
            raise PreconditionFailed(f"definitions: {entry.where}: unknown hashing_algorithm '{algorithm}'")
        try:
            check_password_hash(password_hash, algorithm)
        except PreconditionFailed as exc:
            raise entry.refuse(exc) from None
        _check_name(entry, name, "user name")
        limits = _limits(entry, "user", entry.get("limits", dict, {}))
        users.add(name)
        changes.append(lambda name=name, password_hash=password_hash, algorithm=algorithm, tags=tags:
                       node.put_user(name, password_hash, algorithm, tags))
        changes.append(lambda name=name, limits=limits: node.set_limits("user", name, limits))
    vhosts = set(node.vhosts)
    for entry in _Entries(definitions, "vhosts"):
        name = entry.get("name", str)
        _check_name(entry, name, "vhost name")
        if name not in vhosts:
            vhosts.add(name)
            changes.append(lambda name=name: node.add_vhost(name))
    for entry in _Entries(definitions, "parameters"):
        vhost, component = entry.get("vhost", str), entry.get("component", str)
        if (component, entry.get("name", str)) != (VHOST_LIMITS_COMPONENT, VHOST_LIMITS_PARAMETER):
            raise PreconditionFailed(f"definitions: {entry.where}: parameters of component '{component}' are "
                                     f"not supported by GreenMQ; only vhost limits")
        _known(entry, vhost, vhosts, "vhost")
        limits = _limits(entry, "vhost", entry.get("value", dict))
        changes.append(lambda vhost=vhost, limits=limits: node.set_limits("vhost", vhost, limits))
    for entry in _Entries(definitions, "permissions"):
        user, vhost = entry.get("user", str), entry.get("vhost", str)
        _known(entry, user, users, "user")
        _known(entry, vhost, vhosts, "vhost")
        patterns = [entry.get(kind, str) for kind in ("configure", "write", "read")]
        try:
            Permission(*patterns)
        except PreconditionFailed as exc:
            raise entry.refuse(exc) from None
        changes.append(lambda user=user, vhost=vhost, patterns=patterns: node.set_permissions(user, vhost, *patterns))
    exchanges = {}
    for entry in _Entries(definitions, "exchanges"):
        vhost, name = entry.get("vhost", str), entry.get("name", str)
        _known(entry, vhost, vhosts, "vhost")
        declared = {"type_name": entry.get("type", str), "durable": entry.get("durable", bool, True),
                    "auto_delete": entry.get("auto_delete", bool, False),
                    "internal": entry.get("internal", bool, False), "arguments": entry.get("arguments", dict, {})}
        try:
            exchange_class(declared["type_name"])
        except BrokerError as exc:
            raise entry.refuse(exc) from None
        _check_name(entry, name, "exchange name")
        what = f"exchange '{name}' in vhost '{vhost}'"
        properties = (declared["type_name"], declared["durable"], declared["auto_delete"], declared["internal"])
        current = node.vhosts[vhost].exchanges.get(name) if vhost in node.vhosts else None
        if (vhost, name) in exchanges:          # twice in the file
            _same(entry, what, properties, exchanges[vhost, name])
        elif current is not None:
            _same(entry, what, properties, (current.type, current.durable, current.auto_delete, current.internal))
        elif _predeclared(name):
            raise PreconditionFailed(f"definitions: {entry.where}: exchange name '{name}' "
                                     "contains reserved prefix 'amq.*'")
        else:
            changes.append(lambda vhost=vhost, name=name, declared=declared:
                           node.vhosts[vhost].declare_exchange(name, **declared))
        exchanges[vhost, name] = properties
    queues = {}
    for entry in _Entries(definitions, "queues"):
        vhost, name = entry.get("vhost", str), entry.get("name", str)
        _known(entry, vhost, vhosts, "vhost")
        kind = entry.get("type", str, "classic")
        durable, auto_delete = entry.get("durable", bool, True), entry.get("auto_delete", bool, False)
        arguments = entry.get("arguments", dict, {})
        queue_type = arguments.get("x-queue-type", kind)
        queue_class = QUEUE_TYPES.get(queue_type)
        if queue_class is None:
            raise PreconditionFailed(f"definitions: {entry.where}: queue type '{queue_type}'"
                                     " is not supported by GreenMQ; only classic queues and streams")
        if queue_type != "classic" and "x-queue-type" not in arguments:
            arguments = {**arguments, "x-queue-type": queue_type}     # as declared: a redeclare repeats it
        _check_name(entry, name, "queue name")
        if not name or (name.startswith("amq.") and not name.startswith("amq.gen-")):
            raise PreconditionFailed(f"definitions: {entry.where}: queue name '{name}' is not allowed")
        what = f"queue '{name}' in vhost '{vhost}'"
        try:
            queue_class.validate(arguments, durable, False, auto_delete, what)
        except PreconditionFailed as exc:
            raise entry.refuse(exc) from None
        checked = queue_class.accepted_arguments
        properties = (durable, auto_delete) + tuple(arguments.get(a) for a in checked)
        current = node.vhosts[vhost].queues.get(name) if vhost in node.vhosts else None
        if (vhost, name) in queues:             # twice in the file
            _same(entry, what, properties, queues[vhost, name])
        elif current is not None:
            if current.exclusive_owner is not None:
                raise PreconditionFailed(f"definitions: {entry.where}: {what} is an exclusive queue of a connection")
            _same(entry, what, properties,
                  (current.durable, current.auto_delete) + tuple(current.arguments.get(a) for a in checked))
        else:
            changes.append(lambda vhost=vhost, name=name, durable=durable, auto_delete=auto_delete,
                           arguments=arguments:
                           node.vhosts[vhost].declare_queue(name, durable=durable, auto_delete=auto_delete,
                                                            arguments=arguments))
        queues[vhost, name] = properties
    for entry in _Entries(definitions, "bindings"):
        vhost, source = entry.get("vhost", str), entry.get("source", str)
        destination, routing_key = entry.get("destination", str), entry.get("routing_key", str, "")
        arguments = entry.get("arguments", dict, {})
        _known(entry, vhost, vhosts, "vhost")
        destination_type = entry.get("destination_type", str, "queue")
        if destination_type not in ("queue", "exchange"):
            raise PreconditionFailed(f"definitions: {entry.where}: unknown destination_type '{destination_type}'")
        _check_name(entry, routing_key, "routing key")
        if not source:
            continue            # the default exchange's bindings come with the queue
        existing = node.vhosts.get(vhost)
        if (vhost, source) in exchanges:
            exchange = exchange_class(exchanges[vhost, source][0])(source)     # a stand-in, to check with
        elif existing is not None and source in existing.exchanges:
            exchange = existing.exchanges[source]
        else:
            raise NotFound(f"definitions: {entry.where}: no exchange '{source}' in vhost '{vhost}'")
        try:
            exchange._validate_binding(arguments)   # what bind() checks first (a headers exchange's x-match)
        except BrokerError as exc:
            raise entry.refuse(exc) from None
        if destination_type == "exchange":
            if (vhost, destination) not in exchanges and (existing is None or destination not in existing.exchanges):
                raise NotFound(f"definitions: {entry.where}: no exchange '{destination}' in vhost '{vhost}'")
            changes.append(lambda vhost=vhost, source=source, destination=destination, routing_key=routing_key,
                           arguments=arguments:
                           node.vhosts[vhost].bind_exchange(destination, source, routing_key, arguments or None))
            continue
        if (vhost, destination) not in queues and (existing is None or destination not in existing.queues):
            raise NotFound(f"definitions: {entry.where}: no queue '{destination}' in vhost '{vhost}'")
        if existing is not None and _exclusive(existing, destination):
            raise PreconditionFailed(f"definitions: {entry.where}: queue '{destination}' in vhost '{vhost}' "
                                     "is an exclusive queue of a connection")
        changes.append(lambda vhost=vhost, source=source, destination=destination, routing_key=routing_key,
                       arguments=arguments:
                       node.vhosts[vhost].bind(destination, source, routing_key, arguments or None))
    return changes


def _limits(entry, kind, limits):
    try:
        return checked_limits(kind, limits)
    except PreconditionFailed as exc:
        raise entry.refuse(exc) from None


def _check_name(entry, name, kind):
    try:
        check_name(name, kind)
    except PreconditionFailed as exc:
        raise entry.refuse(exc) from None
    if kind in ("user name", "vhost name") and not name:
        raise PreconditionFailed(f"definitions: {entry.where}: a {kind} must not be empty")


def _known(entry, name, names, kind):
    if name not in names:
        raise NotFound(f"definitions: {entry.where}: no {kind} '{name}' (neither in the broker nor in the file)")


def _same(entry, what, declared, current):
    if declared != current:
        raise PreconditionFailed(f"definitions: {entry.where}: {what} exists with other properties "
                                 f"({_shown(current)}) than the file's ({_shown(declared)})")


def _shown(values):
    return ", ".join(str(value) for value in values if value is not None)
