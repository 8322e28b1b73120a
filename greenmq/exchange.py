"""Exchange types and routing: a routing key and the message's properties (whose headers
a headers exchange matches) in, the destinations a message goes to out.

Exchanges know their bindings and nothing else: no consumers, no sockets, no protocol.
Destinations are queues, or exchanges (exchange-to-exchange bindings), which the virtual
host routes on; results are tuples in binding order with no duplicates, cached per
routing key until the bindings change.
"""

from .errors import InvalidExchangeType, PreconditionFailed

# Route results are cached per routing key. Keys are usually few (queue names, topic
# patterns' instances); the bound keeps a stream of unique keys (ids in keys) from
# growing memory without limit, at the cost of recomputing after each clear.
ROUTE_CACHE_SIZE = 4096


def arguments_key(arguments):
    """A hashable stand-in for a binding's arguments table, equal for equal tables."""
    if not arguments:
        return ()
    return tuple(sorted((k, _freeze(v)) for k, v in arguments.items()))


def _freeze(value):
    if isinstance(value, dict):
        return ("table", arguments_key(value))
    if isinstance(value, list):
        return ("array", tuple(_freeze(v) for v in value))
    return (type(value).__name__, value)


class Exchange:
    """Base for the exchange types: binding bookkeeping and the per-key route cache."""

    type = None
    kind = "exchange"       # as a binding's destination, beside queues
    inapplicable_policy_keys = frozenset()      # every policy may apply to an exchange

    def __init__(self, name, durable=False, auto_delete=False, internal=False, arguments=None):
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.configure(self.arguments)
        # The policy and operator policy that apply (policy.Policy, or None), and the
        # definition they make together.
        self.policy = self.operator_policy = None
        self.policy_definition = {}
        # (destination, routing_key, arguments_key) -> arguments, in binding order.
        self.bindings = {}
        self.forwards = 0               # bindings whose destination is an exchange
        self.bound_exchanges = set()    # exchanges with a binding to this one, to unbind on delete
        self._routes = {}

    def configure(self, settings):
        """Take what a policy may change, by argument name: at declaration the arguments."""
        # Where a message goes that this exchange's bindings route nowhere (its name).
        self.alternate = settings.get("alternate-exchange")

    def bind(self, destination, routing_key, arguments=None):
        """Add a binding; False if an identical one already exists (binding is idempotent)."""
        key = (destination, routing_key, arguments_key(arguments))
        if key in self.bindings:
            return False
        self._validate_binding(arguments)
        self.bindings[key] = arguments or {}
        if isinstance(destination, Exchange):
            self.forwards += 1
        self._binding_added(destination, routing_key, arguments or {})
        self._routes.clear()
        return True

    def has_binding(self, destination, routing_key, arguments=None):
        return (destination, routing_key, arguments_key(arguments)) in self.bindings

    def unbind(self, destination, routing_key, arguments=None):
        """Remove a binding; False if there was none."""
        key = (destination, routing_key, arguments_key(arguments))
        arguments = self.bindings.pop(key, None)
        if arguments is None:
            return False
        if isinstance(destination, Exchange):
            self.forwards -= 1
        self._binding_removed(destination, routing_key, arguments)
        self._routes.clear()
        return True

    def unbind_destination(self, destination):
        """Remove every binding to `destination` (it is being deleted)."""
        for key in [k for k in self.bindings if k[0] is destination]:
            self.unbind(destination, key[1], self.bindings[key])

    def route(self, routing_key, properties=None):
        routes = self._routes.get(routing_key)
        if routes is None:
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            routes = self._routes[routing_key] = tuple(dict.fromkeys(self._match(routing_key)))
        return routes

    def destinations(self):
        return {key[0] for key in self.bindings}

    def _validate_binding(self, arguments):
        pass

    def _binding_added(self, destination, routing_key, arguments):
        pass

    def _binding_removed(self, destination, routing_key, arguments):
        pass



class DirectExchange(Exchange):
    """Routes to the queues bound with exactly the message's routing key."""

    type = "direct"

    def _match(self, routing_key):
        return [dest for dest, key, _ in self.bindings if key == routing_key]


class FanoutExchange(Exchange):
    """Routes to every bound queue; the routing key is ignored."""

    type = "fanout"

    def route(self, routing_key, properties=None):
        return super().route("")

    def _match(self, routing_key):
        return [dest for dest, _, _ in self.bindings]


class TopicExchange(Exchange):
    """Routes by dot-separated words: in a binding key `*` matches exactly one word and
    `#` zero or more. Bindings live in a trie of words, so a lookup costs the length of the
    key, not the number of bindings."""

    type = "topic"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trie = _TopicNode()

    def _binding_added(self, destination, routing_key, arguments):
        node = self._trie
        for word in _words(routing_key):
            node = node.children.setdefault(word, _TopicNode())
        node.destinations[destination] = node.destinations.get(destination, 0) + 1

    def _binding_removed(self, destination, routing_key, arguments):
        path = [self._trie]
        words = _words(routing_key)
        for word in words:
            path.append(path[-1].children[word])
        leaf = path[-1]
        leaf.destinations[destination] -= 1
        if not leaf.destinations[destination]:
            del leaf.destinations[destination]
        for depth in range(len(words), 0, -1):
            node = path[depth]
            if node.children or node.destinations:
                break
            del path[depth - 1].children[words[depth - 1]]

    def _match(self, routing_key):
        words = _words(routing_key)
        found = []
        seen = set()
        _walk(self._trie, words, 0, found, seen)
        return found


class _TopicNode:
    __slots__ = ("children", "destinations")

    def __init__(self):
        self.children = {}
        self.destinations = {}


def _words(key):
    # As in RabbitMQ, the empty key has no words (so `#` matches it and `*` does not).
    return key.split(".") if key else []


def _walk(node, words, i, found, seen):
    if (id(node), i) in seen:
        return
    seen.add((id(node), i))
    hash_node = node.children.get("#")
    if hash_node is not None:
        for j in range(i, len(words) + 1):
            _walk(hash_node, words, j, found, seen)
    if i == len(words):
        found.extend(node.destinations)
        return
    child = node.children.get(words[i])
    if child is not None:
        _walk(child, words, i + 1, found, seen)
    star = node.children.get("*")
    if star is not None:
        _walk(star, words, i + 1, found, seen)


class HeadersExchange(Exchange):
    """Routes by message headers against each binding's arguments: `x-match` = `all`
    (default) or `any`; arguments starting with `x-` are not matched unless `x-match` is
    `all-with-x` or `any-with-x`. Values must agree in type as well (1 does not match 1.0
    or true), and a binding value of None (AMQP void) matches any value of a present
    header, as in RabbitMQ."""

    type = "headers"

    def _validate_binding(self, arguments):
        x_match = (arguments or {}).get("x-match", "all")
        if x_match not in X_MATCH_MODES:
            raise PreconditionFailed(
                f"invalid x-match field value '{x_match}'; expected all, any, all-with-x or any-with-x")

    def route(self, routing_key, properties=None):
        headers = (properties and properties.get("headers")) or {}
        return tuple(dict.fromkeys(
            dest for (dest, _, _), arguments in self.bindings.items()
            if headers_match(arguments, headers)))


X_MATCH_MODES = ("all", "any", "all-with-x", "any-with-x")


def headers_match(arguments, headers):
    x_match = arguments.get("x-match", "all")
    match_any = x_match.startswith("any")
    with_x = x_match.endswith("-with-x")
    matched_any = False
    for name, expected in arguments.items():
        if name == "x-match" or (not with_x and name.startswith("x-")):
            continue
        present = name in headers
        ok = present and (expected is None or _same_value(expected, headers[name]))
        if match_any and ok:
            return True
        if not match_any and not ok:
            return False
        matched_any = matched_any or ok
    return matched_any if match_any else True


def _same_value(a, b):
    return type(a) is type(b) and a == b


class DefaultExchange(DirectExchange):
    """The nameless exchange: every queue is implicitly bound to it by its own name."""

    def __init__(self, queues):
        super().__init__("", durable=True)
        self._queues = queues

    def route(self, routing_key, properties=None):
        queue = self._queues.get(routing_key)
        return (queue,) if queue is not None else ()


EXCHANGE_TYPES = {cls.type: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)}


def exchange_class(type_name):
    cls = EXCHANGE_TYPES.get(type_name)
    if cls is None:
        raise InvalidExchangeType(f"unknown exchange type '{type_name}'")
    return cls
