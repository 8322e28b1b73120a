"""The management HTTP API, the dashboard and /metrics (written by prometheus.py): an HTTP
front end over the core.

JSON shaped like RabbitMQ's management API where the two overlap, so scripts and client
libraries written for RabbitMQ's /api read GreenMQ too. Served by gevent's own WSGI server
(gevent.pywsgi): it runs on the broker's one hub beside the AMQP and JSON-lines
listeners and adds no dependency; a framework would buy routing and JSON helpers, about
forty lines here, at the price of a dependency and a second way to run greenlets.

Logins are HTTP basic auth with the broker's users. As in RabbitMQ, a user needs the
management, monitoring or administrator tag to use the API at all; management users see
only the vhosts they hold permissions in (and only their own connections), monitoring and
administrator users see everything, only administrators see and change users, vhosts,
permissions, limits and definitions, and operations on queues and exchanges need the same configure / write /
read permissions as over AMQP. Errors from the core keep their sentence and get the HTTP
status that says the same thing.

Safe to leave open in a browser: a page from another site can make the browser send
"simple" requests here (a form POST, a text/plain fetch) without asking, carrying any Basic
credentials the browser remembers, and a DNS-rebinding page can even read the answers. So
a body must be declared JSON (which no cross-site page can send unasked), a POST must
declare one even when it has no body, the Host must be one of the broker's own names, and
no 401 asks the browser for credentials it would then remember and send for any site.
"""

import base64
import binascii
import functools
import json
import logging
import os
import socket
import ssl
import time
from urllib.parse import parse_qs, unquote

import regex
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from .access import ADMINISTRATOR, LIMITS, MANAGEMENT, MONITORING, POLICYMAKER, check_password_hash, check_user_id
from .errors import AccessRefused, BadSyntax, BrokerError, NotFound, PublishRefused
from .memory import MESSAGE_OVERHEAD_BYTES
from .message import json_value, new_message, properties_from_request
from .node import SERVER_NAME, VERSION
from .policy import OPERATOR_POLICY, POLICY
from .prometheus import prometheus_text, resident_bytes
from .request_fields import base64_bytes, field, string_list
from .stats import MESSAGE_COUNTERS, totals
from .vhost import exchange_row, queue_row

log = logging.getLogger("greenmq.management")

# Request bodies are read whole; definitions of a large broker are a few megabytes, so this
# refuses only what cannot be a real request.
MAX_BODY_BYTES = 32 * 1024 * 1024

# POST .../get hands out at most this many messages at once (a debugging aid, not a consumer).
MAX_GET_COUNT = 10_000

# A queue's `memory` is an estimate: the core counts the bytes it holds node-wide (memory.py,
# for the memory limit) but per queue only the ready bodies of queues with priorities or
# x-max-length-bytes, as a count for every queue would cost on every message. The estimate
# is the ready messages in memory (paged ones cost next to nothing) times (the budget's
# per-message overhead plus the head message's body), plus this for the queue itself.
QUEUE_OVERHEAD_BYTES = 2_000

# A `use_regex` name filter may spend this much of the hub, all names together, before the
# request is refused: a backtracking pattern such as (a+)+$ doubles its time with each
# character of a name, and every client waits while it runs. Python's `re` cannot be
# stopped, and a thread would hold the GIL all the same; the `regex` module takes a timeout
# and keeps the syntax users wrote for `re` (RabbitMQ bounds its PCRE filters the same way,
# with a match limit). Plain patterns over thousands of names take well under a millisecond.
REGEX_BUDGET_SECONDS = 0.005

# Host names every broker answers to: a DNS-rebinding page's Host is its own domain, never
# one of these. The listener's address, the address a connection arrived at and the
# machine's name are added; http_allowed_hosts adds more ("*": any, behind a proxy that checks).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

NODE_NAME = f"greenmq@{socket.gethostname()}"
# Beside this module, installed or not (setup.py's package_data).
DASHBOARD_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.html")

# HTTP statuses for the core's reply codes; any other code is a refused request (400).
_HTTP_STATUS = {403: 403, 404: 404, 405: 409, 506: 503, 541: 500}
_REASONS = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
            401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found",
            405: "405 Method Not Allowed", 409: "409 Conflict", 413: "413 Payload Too Large",
            415: "415 Unsupported Media Type", 421: "421 Misdirected Request",
            500: "500 Internal Server Error", 503: "503 Service Unavailable"}
_ERROR_NAMES = {400: "bad_request", 401: "not_authorised", 403: "not_authorised", 404: "not_found",
                405: "method_not_allowed", 409: "resource_locked", 413: "payload_too_large",
                415: "unsupported_media_type", 421: "misdirected_request",
                500: "internal_error", 503: "service_unavailable"}
# RabbitMQ's words for a publish a full x-overflow reject-publish queue refused.
_PUBLISH_REFUSED = "rejected Unable to publish message. Check queue limits."

_json = json.JSONEncoder(separators=(",", ":"), default=json_value).encode


class HttpError(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Request:
    """One HTTP request as the handlers see it: who asks, the path's segments, the query."""

    def __init__(self, environ, user):
        self.environ = environ
        self.user = user
        self.method = environ["REQUEST_METHOD"]
        self.query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}

    @property
    def sees_everything(self):
        return self.user.has_tag(ADMINISTRATOR, MONITORING)

    @property
    def content_length(self):
        try:
            return int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None

    def body(self):
        """The JSON object the request carries; 400 unless it is one."""
        length = self.content_length
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        declared = self.environ.get("CONTENT_TYPE", "")
        if (length or self.method == "POST") and declared.partition(";")[0].strip().lower() != "application/json":
            # RabbitMQ's 415 (its definitions import); a form or text/plain POST is what
            # another site's page can make a browser send unasked.
            raise HttpError(415, f"the request body must be JSON, sent as Content-Type: application/json "
                                 f"(not {declared or 'none'!r})")
        raw = self.environ["wsgi.input"].read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"malformed JSON body: {exc}") from None
        if type(value) is not dict:
            raise HttpError(400, "the JSON body must be an object")
        return value


class ManagementApi:
    """The WSGI application: routes, authentication and the translation of errors."""

    def __init__(self, node, sampler, per_queue_metrics=True, host=None, allowed_hosts=()):
        self.node = node
        self.sampler = sampler
        self.per_queue_metrics = per_queue_metrics
        self.allowed_hosts = {name.lower() for name in (*LOOPBACK_HOSTS, socket.gethostname(), host, *allowed_hosts)
                              if name}
        self.routes = []        # (method, pattern segments, handler)
        for method, pattern, handler in _ROUTES:
            self.routes.append((method, tuple(pattern.strip("/").split("/")), handler))

    def __call__(self, environ, start_response):
        try:
            self._check_host(environ)
            status, payload, content_type = self._respond(environ)
        except HttpError as exc:
            status, payload, content_type = exc.status, _error(exc.status, exc.reason), "application/json"
        except BrokerError as exc:
            status = _HTTP_STATUS.get(exc.code, 400)
            payload, content_type = _error(status, exc.text), "application/json"
        # No WWW-Authenticate on a 401, unlike RabbitMQ: the challenge makes a browser prompt
        # and then send the remembered credentials with any site's request to this origin.
        # API clients send their credentials unasked; the dashboard asks for them itself.
        headers = [("Cache-Control", "no-cache")]
        if payload:     # as RabbitMQ, answers without a body (201, 204) name no type
            headers.append(("Content-Type", content_type))
        start_response(_REASONS.get(status, f"{status} Error"), headers)
        return [payload]

    def _check_host(self, environ):
        """421 unless the request names this broker: a page that rebinds its own domain to
        this address sends that domain as Host. Without a Host (HTTP/1.0) no browser asked."""
        host = environ.get("HTTP_HOST")
        if host is None or "*" in self.allowed_hosts:
            return
        name = _host_name(host)
        if name in self.allowed_hosts or name == environ.get("greenmq.local_address"):
            return
        raise HttpError(421, f"Host '{host}' is not a name of this broker; if it is one, add it to "
                             "http_allowed_hosts (--http-allowed-hosts)")

    def _respond(self, environ):
        raw_path = environ["RAW_URI"]
        segments = tuple(unquote(segment) for segment in raw_path.split("?", 1)[0].strip("/").split("/"))
        method = environ["REQUEST_METHOD"]
        if segments in (("",), ("dashboard",)) and method == "GET":
            return 200, _dashboard(), "text/html; charset=utf-8"
        if segments == ("metrics",) and method == "GET":
            return 200, prometheus_text(self.node, self.per_queue_metrics).encode(), \
                "text/plain; version=0.0.4; charset=utf-8"
        handler, params, path_known = None, None, False
        for route_method, pattern, route_handler in self.routes:
            params = _match(pattern, segments)
            if params is not None:
                path_known = True
                if route_method == method:
                    handler = route_handler
                    break
        if handler is None:
            if path_known:
                raise HttpError(405, f"method {method} not allowed here")
            raise HttpError(404, "Object Not Found")
        request = Request(environ, self._authenticate(environ))
        result = handler(self, request, **params)
        status, payload = result if type(result) is tuple else (200, result)
        return status, _json(payload).encode() if payload is not None else b"", "application/json"

    def _authenticate(self, environ):
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise HttpError(401, "Not_Authorized: send HTTP basic credentials")
        try:
            username, separator, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise HttpError(401, "Not_Authorized: malformed basic credentials") from None
        peer = (environ.get("REMOTE_ADDR"), int(environ.get("REMOTE_PORT") or 0))
        try:
            user = self.node.authenticate(username, password, peer, mechanism="HTTP basic")
        except AccessRefused as exc:
            raise HttpError(401, exc.text) from None
        if not user.has_tag(ADMINISTRATOR, MONITORING, MANAGEMENT, POLICYMAKER):
            raise HttpError(403, f"Not_Authorized: user '{username}' has no management, monitoring "
                                 "or administrator tag")
        return user

    # -- access ------------------------------------------------------------------------

    def visible_vhosts(self, request):
        if request.sees_everything:
            return list(self.node.vhosts.values())
        return [vhost for name, vhost in self.node.vhosts.items()
                if (request.user.name, name) in self.node.permissions]

    def vhost(self, request, name):
        """The named vhost, if it exists (404) and the user may see it (403)."""
        vhost = self.node.vhost(name)
        if not request.sees_everything and (request.user.name, name) not in self.node.permissions:
            raise AccessRefused(f"access to vhost '{name}' refused for user '{request.user.name}'")
        return vhost

    def check(self, request, vhost, kind, resource, name):
        """The user's `kind` (configure, write, read) permission on a queue or exchange."""
        permission = self.node.permissions.get((request.user.name, vhost.name))
        if permission is None:
            raise AccessRefused(f"access to vhost '{vhost.name}' refused for user '{request.user.name}'")
        permission.check(kind, resource, name, vhost.name, request.user.name)

    def require_administrator(self, request):
        self.node.check_tag(request.user.name)

    def require_monitoring(self, request):
        self.node.check_tag(request.user.name, MONITORING)


def _match(pattern, segments):
    if len(pattern) != len(segments):
        return None
    params = {}
    for expected, actual in zip(pattern, segments):
        if expected.startswith("{"):
            params[expected[1:-1]] = actual
        elif expected != actual:
            return None
    return params


def _host_name(host):
    """The name in a Host header, without its port or brackets, as the allowed names are kept."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


def _error(status, reason):
    return _json({"error": _ERROR_NAMES.get(status, "error"), "reason": reason}).encode()


def _dashboard():
    try:
        with open(DASHBOARD_FILE, "rb") as page:
            return page.read()
    except OSError as exc:
        raise HttpError(404, f"the dashboard page is not installed ({DASHBOARD_FILE}: {exc.strerror})") from None


# -- shapes ----------------------------------------------------------------------------------

def _rate_details(counts, rates):
    """RabbitMQ's message_stats: each count with its `_details` rate per second."""
    stats = {}
    for name, counter in (("publish", "published"), ("deliver_get", "delivered"), ("ack", "acked"),
                          ("redeliver", "redelivered"), ("dead_lettered", "dead_lettered")):
        stats[name] = counts[counter]
        stats[name + "_details"] = {"rate": round(rates[counter], 2)}
    # GreenMQ counts basic.get with consumer deliveries; `deliver` is what clients read.
    stats["deliver"], stats["deliver_details"] = stats["deliver_get"], stats["deliver_get_details"]
    return stats


def queue_json(api, vhost, row):
    """A queue's row as JSON lines lists it, with what the API adds: rates and memory."""
    queue = vhost.queues[row["name"]]
    ready = queue.ready
    head = ready.head()
    counts = {counter: getattr(queue, counter) for counter in MESSAGE_COUNTERS}
    return {**row, "vhost": vhost.name, "node": NODE_NAME, "state": "running",
            "memory": QUEUE_OVERHEAD_BYTES
            + (len(ready) - ready.paged_count()) * (MESSAGE_OVERHEAD_BYTES + (len(head.body) if head else 0)),
            "message_stats": _rate_details(counts, api.sampler.queue_rates(queue))}


def exchange_json(vhost, row):
    name = row["name"]
    return {**row, "vhost": vhost.name,
            "user_who_performed_action": "rmq-internal" if name.startswith("amq.") or not name else ""}


def binding_json(vhost, row):
    return {"source": row["source"], "vhost": vhost.name, "destination": row["destination"],
            "destination_type": row["destination_kind"], "routing_key": row["routing_key"],
            "arguments": row["arguments"], "properties_key": properties_key(row["routing_key"], row["arguments"])}


def _bindings(vhost, **wanted):
    """The vhost's binding rows with the `wanted` values, in the API's shape; a queue and an
    exchange may share a name, so a destination is asked for with its kind."""
    return [binding_json(vhost, row) for row in vhost.list_bindings()
            if all(row[member] == value for member, value in wanted.items())]


def properties_key(routing_key, arguments):
    """Names one binding in a URL, as RabbitMQ's `properties_key`: the routing key ("~"
    when empty), then a digest of the arguments when there are any."""
    key = routing_key.replace("%", "%25").replace("~", "%7E") if routing_key else "~"
    if arguments:
        digest = base64.urlsafe_b64encode(
            json.dumps(arguments, sort_keys=True, default=json_value).encode()).decode()[:16]
        key += "~" + digest
    return key


def _exchange_name(name):
    return "" if name == "amq.default" else name


# -- handlers ---------------------------------------------------------------------------------

def overview(api, request):
    vhosts = api.visible_vhosts(request)
    queues = [queue for vhost in vhosts for queue in vhost.queues.values()]
    sessions = _visible_sessions(api, request)
    ready = sum(queue.message_count for queue in queues)
    unacked = sum(queue.unacked_count for queue in queues)
    return {"management_version": VERSION, "product_name": SERVER_NAME, "product_version": VERSION,
            "node": NODE_NAME, "cluster_name": NODE_NAME,
            "statistics_db_event_queue": 0, "sample_interval_seconds": api.sampler.interval,
            "object_totals": {"connections": len(sessions),
                              "channels": sum(len(s.channels) for s in sessions),
                              "exchanges": sum(len(vhost.exchanges) for vhost in vhosts),
                              "queues": len(queues),
                              "consumers": sum(len(queue.consumers) for queue in queues)},
            "queue_totals": {"messages": ready + unacked, "messages_ready": ready,
                             "messages_unacknowledged": unacked},
            "message_stats": _rate_details(totals(vhosts), api.sampler.rates(vhosts))}


def whoami(api, request):
    return {"name": request.user.name, "tags": list(request.user.tags)}


def nodes(api, request):
    api.require_monitoring(request)
    return [node_json(api)]


def node_detail(api, request, name):
    api.require_monitoring(request)
    if name != NODE_NAME:
        raise NotFound(f"no node '{name}'")
    return node_json(api)


def node_json(api):
    status = api.node.status()
    return {"name": NODE_NAME, "type": "disc", "running": True, "uptime": int(status["uptime_seconds"] * 1000),
            "mem_used": resident_bytes(), "os_pid": str(status["pid"]), "product": SERVER_NAME,
            "version": VERSION, "partitions": []}


def _visible_sessions(api, request):
    sessions = [s for s in api.node.sessions if not s.closed]
    if request.sees_everything:
        return sessions
    return [s for s in sessions if s.user == request.user.name]


def _connection_json(row, session):
    peer = session.peer if isinstance(session.peer, tuple) else (None, None)
    return {**row, "node": NODE_NAME, "state": "running", "peer_host": peer[0], "peer_port": peer[1]}


def connections(api, request):
    sessions = {s.name: s for s in _visible_sessions(api, request)}
    return [_connection_json(row, sessions[row["name"]]) for row in api.node.list_connections()
            if row["name"] in sessions]


def connection_detail(api, request, name):
    for row in connections(api, request):
        if row["name"] == name:
            return row
    raise NotFound(f"no connection '{name}'")


def close_connection(api, request, name):
    """As in RabbitMQ: a user may close its own connections, an administrator any."""
    if connection_detail(api, request, name)["user"] != request.user.name:
        api.require_administrator(request)
    api.node.close_connection(name, request.environ.get("HTTP_X_REASON") or "Closed via management API")
    return 204, None


def channels(api, request):
    names = {s.name for s in _visible_sessions(api, request)}
    return [{**row, "name": f"{row['connection']} ({row['number']})", "node": NODE_NAME,
             "connection_details": {"name": row["connection"]}}
            for row in api.node.list_channels() if row["connection"] in names]


def consumers(api, request, vhost=None):
    vhosts = [api.vhost(request, vhost)] if vhost is not None else api.visible_vhosts(request)
    return [{**row, "queue": {"name": row["queue"], "vhost": v.name},
             "channel_details": {"name": f"{row['connection']} ({row['channel']})", "number": row["channel"],
                                 "connection_name": row["connection"]}}
            for v in vhosts for row in v.list_consumers()]


# exchanges

def exchanges(api, request, vhost=None):
    vhosts = [api.vhost(request, vhost)] if vhost is not None else api.visible_vhosts(request)
    return [exchange_json(v, row) for v in vhosts for row in v.list_exchanges()]


def exchange_detail(api, request, vhost, name):
    v = api.vhost(request, vhost)
    return exchange_json(v, exchange_row(v.exchange(_exchange_name(name))))


def put_exchange(api, request, vhost, name):
    v = api.vhost(request, vhost)
    body = request.body()
    type_name = field(body, "type", str, "direct")
    existed = name in v.exchanges
    api.check(request, v, "configure", "exchange", name)
    v.declare_exchange(name, type_name, durable=field(body, "durable", bool, True),
                       auto_delete=field(body, "auto_delete", bool, False),
                       internal=field(body, "internal", bool, False), arguments=field(body, "arguments", dict, {}))
    return (204 if existed else 201), None


def delete_exchange(api, request, vhost, name):
    v = api.vhost(request, vhost)
    v.exchange(_exchange_name(name))
    api.check(request, v, "configure", "exchange", name)
    v.delete_exchange(name, if_unused=request.query.get("if-unused") == "true")
    return 204, None


def publish(api, request, vhost, name):
    # The message counts in the memory budget from its first byte read, as over AMQP.
    with api.node.memory.holding(min(request.content_length, MAX_BODY_BYTES)):
        return _publish(api, request, vhost, name)


def _publish(api, request, vhost, name):
    v = api.vhost(request, vhost)
    name = _exchange_name(name)
    body = request.body()
    routing_key = field(body, "routing_key", str)
    payload = field(body, "payload", str)
    encoding = field(body, "payload_encoding", str, "string")
    if encoding == "string":
        data = payload.encode()
    elif encoding == "base64":
        data = base64_bytes(payload, "payload")
    else:
        raise BadSyntax("field 'payload_encoding' must be 'string' or 'base64'")
    properties = properties_from_request(field(body, "properties", dict, {}))
    v.exchange(name)
    api.check(request, v, "write", "exchange", name)
    if properties is not None and "user_id" in properties:
        check_user_id(properties["user_id"], request.user.name)
    try:
        # Answered once a persistent message is on disk, as a confirm would be.
        return {"routed": v.store.durably(v.publish, name, new_message(name, routing_key, data, properties)) > 0}
    except PublishRefused:
        raise HttpError(400, _PUBLISH_REFUSED) from None


def exchange_bindings_source(api, request, vhost, name):
    v = api.vhost(request, vhost)
    name = _exchange_name(name)
    v.exchange(name)
    return _bindings(v, source=name)


def exchange_bindings_destination(api, request, vhost, name):
    """The exchange-to-exchange bindings (exchange.bind) that lead to this exchange."""
    v = api.vhost(request, vhost)
    name = _exchange_name(name)
    v.exchange(name)
    return _bindings(v, destination=name, destination_kind="exchange")


# queues

def queues(api, request, vhost=None):
    vhosts = [api.vhost(request, vhost)] if vhost is not None else api.visible_vhosts(request)
    rows = [(v, row) for v in vhosts for row in v.list_queues()]
    name_filter = request.query.get("name")
    if name_filter and request.query.get("use_regex") == "true":
        rows = _matching(rows, name_filter)
    elif name_filter:
        rows = [(v, row) for v, row in rows if name_filter in row["name"]]
    return [queue_json(api, v, row) for v, row in rows]


def _matching(rows, pattern):
    """The (vhost, row) pairs whose name the regular expression finds, within REGEX_BUDGET_SECONDS."""
    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        raise HttpError(400, f"'name' is not a regular expression: {exc}") from None
    deadline = time.monotonic() + REGEX_BUDGET_SECONDS
    try:
        return [(v, row) for v, row in rows
                if compiled.search(row["name"], timeout=max(0.0, deadline - time.monotonic()))]
    except TimeoutError:
        raise HttpError(400, f"the 'name' pattern took more than {REGEX_BUDGET_SECONDS * 1000:g} ms; "
                             "a simpler one (fewer nested repeats) will do") from None


def _queue(api, request, vhost, name):
    v = api.vhost(request, vhost)
    queue = v.queues.get(name)
    if queue is None:
        raise NotFound(f"no queue '{name}' in vhost '{v.name}'")
    return v, queue


def queue_detail(api, request, vhost, name):
    v, queue = _queue(api, request, vhost, name)
    return queue_json(api, v, queue_row(queue))


def put_queue(api, request, vhost, name):
    v = api.vhost(request, vhost)
    body = request.body()
    if not name:
        raise BadSyntax("a queue declared through the API needs a name")
    existed = name in v.queues
    api.check(request, v, "configure", "queue", name)
    v.declare_queue(name, durable=field(body, "durable", bool, True), auto_delete=field(body, "auto_delete", bool, False),
                    arguments=field(body, "arguments", dict, {}))
    return (204 if existed else 201), None


def delete_queue(api, request, vhost, name):
    v, _ = _queue(api, request, vhost, name)
    api.check(request, v, "configure", "queue", name)
    v.delete_queue(name, if_unused=request.query.get("if-unused") == "true",
                   if_empty=request.query.get("if-empty") == "true")
    return 204, None


def purge(api, request, vhost, name):
    v, _ = _queue(api, request, vhost, name)
    api.check(request, v, "read", "queue", name)
    v.purge_queue(name)
    return 204, None


_ACK_MODES = {"ack_requeue_true": True, "reject_requeue_true": True,
              "ack_requeue_false": False, "reject_requeue_false": False}


def get_messages(api, request, vhost, name):
    """As RabbitMQ's "Get messages": take up to `count` and settle them as `ackmode` says."""
    v, _ = _queue(api, request, vhost, name)
    body = request.body()
    count = field(body, "count", int, 1)
    ackmode = field(body, "ackmode", str, "ack_requeue_true")
    encoding = field(body, "encoding", str, "auto")
    truncate = field(body, "truncate", int, None)
    if not 1 <= count <= MAX_GET_COUNT:
        raise BadSyntax(f"field 'count' must be between 1 and {MAX_GET_COUNT}")
    if ackmode not in _ACK_MODES:
        raise BadSyntax(f"field 'ackmode' must be one of {', '.join(_ACK_MODES)}")
    if encoding not in ("auto", "base64"):
        raise BadSyntax("field 'encoding' must be 'auto' or 'base64'")
    api.check(request, v, "read", "queue", name)
    queue = v.queue(name)
    taken = []      # (message, delivery) as the queue gave them
    while len(taken) < count:
        got = queue.get(no_ack=False)
        if got is None:
            break
        taken.append(got)
    remaining = queue.message_count
    if taken:
        queue.settle([delivery for _, delivery in taken], _ACK_MODES[ackmode])
    return [_got_json(message, remaining + len(taken) - i - 1, encoding, truncate)
            for i, (message, _) in enumerate(taken)]


def _got_json(message, message_count, encoding, truncate):
    body = message.body if truncate is None else message.body[:max(truncate, 0)]
    payload, payload_encoding = None, "base64"
    if encoding == "auto":
        try:
            payload, payload_encoding = body.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    if payload is None:
        payload = base64.b64encode(body).decode("ascii")
    return {"payload_bytes": len(message.body), "redelivered": message.redelivered, "exchange": message.exchange,
            "routing_key": message.routing_key, "message_count": message_count,
            "properties": message.properties or {}, "payload": payload, "payload_encoding": payload_encoding}


def queue_bindings(api, request, vhost, name):
    v, _ = _queue(api, request, vhost, name)
    return _bindings(v, destination=name, destination_kind="queue")


# bindings

def bindings(api, request, vhost=None):
    vhosts = [api.vhost(request, vhost)] if vhost is not None else api.visible_vhosts(request)
    return [binding_json(v, row) for v in vhosts for row in v.list_bindings()]


def _binding_rows(api, request, vhost, exchange, queue):
    v = api.vhost(request, vhost)
    exchange = _exchange_name(exchange)
    v.exchange(exchange)
    if queue not in v.queues:
        raise NotFound(f"no queue '{queue}' in vhost '{v.name}'")
    return v, exchange, _bindings(v, source=exchange, destination=queue, destination_kind="queue")


def bindings_between(api, request, vhost, exchange, queue):
    return _binding_rows(api, request, vhost, exchange, queue)[2]


def add_binding(api, request, vhost, exchange, queue):
    v = api.vhost(request, vhost)
    body = request.body()
    routing_key = field(body, "routing_key", str, "")
    arguments = field(body, "arguments", dict, {})
    api.check(request, v, "write", "queue", queue)
    api.check(request, v, "read", "exchange", exchange)
    v.bind(queue, exchange, routing_key, arguments)
    return 201, None


def _binding(api, request, vhost, exchange, queue, props):
    v, exchange, rows = _binding_rows(api, request, vhost, exchange, queue)
    for row in rows:
        if row["properties_key"] == props:
            return v, row
    raise NotFound(f"no binding '{props}' from exchange '{exchange}' to queue '{queue}' in vhost '{v.name}'")


def binding_detail(api, request, vhost, exchange, queue, props):
    return _binding(api, request, vhost, exchange, queue, props)[1]


def delete_binding(api, request, vhost, exchange, queue, props):
    v, row = _binding(api, request, vhost, exchange, queue, props)
    api.check(request, v, "write", "queue", queue)
    api.check(request, v, "read", "exchange", exchange)
    v.unbind(queue, row["source"], row["routing_key"], row["arguments"])
    return 204, None


# users, vhosts, permissions

def _user_json(user):
    return {"name": user.name, "tags": list(user.tags), "password_hash": user.password_hash,
            "hashing_algorithm": user.hashing_algorithm}


def users(api, request):
    api.require_administrator(request)
    return [_user_json(user) for user in api.node.users.values()]


def user_detail(api, request, name):
    api.require_administrator(request)
    return _user_json(api.node.user(name))


def put_user(api, request, name):
    api.require_administrator(request)
    body = request.body()
    tags = body.get("tags")
    if type(tags) is str:       # RabbitMQ's API takes a comma-separated string too
        tags = [tag.strip() for tag in tags.split(",") if tag.strip()]
    else:
        tags = string_list(body, "tags")
    password = field(body, "password", str, None)
    password_hash = field(body, "password_hash", str, None)
    algorithm = field(body, "hashing_algorithm", str, "rabbit_password_hashing_sha256")
    node = api.node
    existed = name in node.users
    if password_hash is not None:
        check_password_hash(password_hash, algorithm)
        node.put_user(name, password_hash, algorithm, tags)
    elif password is not None and existed:
        node.set_user_tags(name, tags)
        node.change_password(name, password)
    elif password is not None:
        node.add_user(name, password, tags)
    elif existed:
        node.set_user_tags(name, tags)
    else:
        raise BadSyntax("a new user needs 'password' or 'password_hash'")
    return (204 if existed else 201), None


def delete_user(api, request, name):
    api.require_administrator(request)
    api.node.delete_user(name)
    return 204, None


def _vhost_json(api, vhost):
    return {**api.node.vhost_row(vhost), "tracing": False}


def vhosts(api, request):
    return [_vhost_json(api, v) for v in api.visible_vhosts(request)]


def vhost_detail(api, request, name):
    return _vhost_json(api, api.vhost(request, name))


def put_vhost(api, request, name):
    api.require_administrator(request)
    request.body()
    if name in api.node.vhosts:
        return 204, None
    api.node.add_vhost(name)
    return 201, None


def delete_vhost(api, request, name):
    api.require_administrator(request)
    api.node.delete_vhost(name)
    return 204, None


def permissions(api, request, vhost=None, user=None):
    """All of them, a vhost's or a user's."""
    api.require_administrator(request)
    return api.node.list_permissions(vhost=vhost, user=user)


def permission_detail(api, request, vhost, user):
    api.require_administrator(request)
    for row in api.node.list_permissions(vhost=vhost, user=user):
        return row
    raise NotFound(f"user '{user}' has no permissions in vhost '{vhost}'")


def put_permission(api, request, vhost, user):
    api.require_administrator(request)
    body = request.body()
    existed = (user, vhost) in api.node.permissions
    api.node.set_permissions(user, vhost, *(field(body, kind, str)
                                            for kind in ("configure", "write", "read")))
    return (204 if existed else 201), None


def delete_permission(api, request, vhost, user):
    api.require_administrator(request)
    permission_detail(api, request, vhost, user)
    api.node.clear_permissions(user, vhost)
    return 204, None


def limits(api, request, kind, holder=None):
    """Every vhost's (or user's) limits, or one's, as RabbitMQ lists them: only those set."""
    api.require_administrator(request)
    return api.node.list_limits(kind, holder)


def put_limit(api, request, kind, holder, name):
    """One limit, the others kept; the body is {"value": N}."""
    api.require_administrator(request)
    value = field(request.body(), "value", int)
    api.node.set_limits(kind, holder, {**api.node.limits(kind, holder), name: value})
    return 204, None


def delete_limit(api, request, kind, holder, name):
    api.require_administrator(request)
    current = api.node.limits(kind, holder)
    if name not in current:
        raise NotFound(f"{kind} '{holder}' has no limit '{name}'")
    api.node.set_limits(kind, holder, {key: value for key, value in current.items() if key != name})
    return 204, None


def policies(api, request, kind, vhost=None):
    """The policies (or operator policies: `kind`) of one vhost, or of every vhost the
    user may manage them in."""
    if vhost is not None:
        api.node.check_policy_access(request.user.name, vhost, kind)
        return api.node.vhost(vhost).list_policies(kind)
    api.node.check_tag(request.user.name, *(() if kind == OPERATOR_POLICY else (POLICYMAKER,)))
    everywhere = kind == OPERATOR_POLICY or request.user.has_tag(ADMINISTRATOR)
    return [row for v in api.node.vhosts.values() if everywhere or (request.user.name, v.name) in api.node.permissions
            for row in v.list_policies(kind)]


def policy_detail(api, request, kind, vhost, name):
    for row in policies(api, request, kind, vhost):
        if row["name"] == name:
            return row
    raise NotFound(f"no {kind.replace('_', ' ')} '{name}' in vhost '{vhost}'")


def put_policy(api, request, kind, vhost, name):
    """RabbitMQ's body: pattern and definition, optionally priority and apply-to."""
    api.node.check_policy_access(request.user.name, vhost, kind)
    body = request.body()
    missing = [key for key in ("pattern", "definition") if key not in body]
    if missing:
        raise BadSyntax(f"[{{key_missing,{missing[0]}}}]")
    v = api.node.vhost(vhost)
    existed = name in v.policies.by_kind[kind]
    v.set_policy(kind, name, body["pattern"], body["definition"], body.get("priority", 0), body.get("apply-to", "all"))
    return (204 if existed else 201), None


def delete_policy(api, request, kind, vhost, name):
    api.node.check_policy_access(request.user.name, vhost, kind)
    api.node.vhost(vhost).clear_policy(kind, name)
    return 204, None


def get_definitions(api, request):
    api.require_administrator(request)
    return api.node.export_definitions()


def post_definitions(api, request):
    api.require_administrator(request)
    api.node.import_definitions(request.body())
    return 204, None


_ROUTES = [
    ("GET", "/api/overview", overview),
    ("GET", "/api/whoami", whoami),
    ("GET", "/api/nodes", nodes),
    ("GET", "/api/nodes/{name}", node_detail),
    ("GET", "/api/connections", connections),
    ("GET", "/api/connections/{name}", connection_detail),
    ("DELETE", "/api/connections/{name}", close_connection),
    ("GET", "/api/channels", channels),
    ("GET", "/api/consumers", consumers),
    ("GET", "/api/consumers/{vhost}", consumers),
    ("GET", "/api/exchanges", exchanges),
    ("GET", "/api/exchanges/{vhost}", exchanges),
    ("GET", "/api/exchanges/{vhost}/{name}", exchange_detail),
    ("PUT", "/api/exchanges/{vhost}/{name}", put_exchange),
    ("DELETE", "/api/exchanges/{vhost}/{name}", delete_exchange),
    ("POST", "/api/exchanges/{vhost}/{name}/publish", publish),
    ("GET", "/api/exchanges/{vhost}/{name}/bindings/source", exchange_bindings_source),
    ("GET", "/api/exchanges/{vhost}/{name}/bindings/destination", exchange_bindings_destination),
    ("GET", "/api/queues", queues),
    ("GET", "/api/queues/{vhost}", queues),
    ("GET", "/api/queues/{vhost}/{name}", queue_detail),
    ("PUT", "/api/queues/{vhost}/{name}", put_queue),
    ("DELETE", "/api/queues/{vhost}/{name}", delete_queue),
    ("DELETE", "/api/queues/{vhost}/{name}/contents", purge),
    ("POST", "/api/queues/{vhost}/{name}/get", get_messages),
    ("GET", "/api/queues/{vhost}/{name}/bindings", queue_bindings),
    ("GET", "/api/bindings", bindings),
    ("GET", "/api/bindings/{vhost}", bindings),
    ("GET", "/api/bindings/{vhost}/e/{exchange}/q/{queue}", bindings_between),
    ("POST", "/api/bindings/{vhost}/e/{exchange}/q/{queue}", add_binding),
    ("GET", "/api/bindings/{vhost}/e/{exchange}/q/{queue}/{props}", binding_detail),
    ("DELETE", "/api/bindings/{vhost}/e/{exchange}/q/{queue}/{props}", delete_binding),
    ("GET", "/api/users", users),
    ("GET", "/api/users/{name}", user_detail),
    ("PUT", "/api/users/{name}", put_user),
    ("DELETE", "/api/users/{name}", delete_user),
    ("GET", "/api/users/{user}/permissions", permissions),
    ("GET", "/api/vhosts", vhosts),
    ("GET", "/api/vhosts/{name}", vhost_detail),
    ("PUT", "/api/vhosts/{name}", put_vhost),
    ("DELETE", "/api/vhosts/{name}", delete_vhost),
    ("GET", "/api/vhosts/{vhost}/permissions", permissions),
    ("GET", "/api/permissions", permissions),
    ("GET", "/api/permissions/{vhost}/{user}", permission_detail),
    ("PUT", "/api/permissions/{vhost}/{user}", put_permission),
    ("DELETE", "/api/permissions/{vhost}/{user}", delete_permission),
    *((method, f"/api/{kind}-limits{path}", functools.partial(handler, kind=kind))
      for kind in LIMITS
      for method, path, handler in (("GET", "", limits), ("GET", "/{holder}", limits),
                                    ("PUT", "/{holder}/{name}", put_limit),
                                    ("DELETE", "/{holder}/{name}", delete_limit))),
    *((method, f"/api/{prefix}{path}", functools.partial(handler, kind=kind))
      for prefix, kind in (("policies", POLICY), ("operator-policies", OPERATOR_POLICY))
      for method, path, handler in (("GET", "", policies), ("GET", "/{vhost}", policies),
                                    ("GET", "/{vhost}/{name}", policy_detail), ("PUT", "/{vhost}/{name}", put_policy),
                                    ("DELETE", "/{vhost}/{name}", delete_policy))),
    ("GET", "/api/definitions", get_definitions),
    ("POST", "/api/definitions", post_definitions),
]


# -- the server ---------------------------------------------------------------------------------

# What gevent answers a request it cannot read (its own constant is private).
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-length: 0\r\n\r\n"


class _RawPathHandler(WSGIHandler):
    """Keeps the path as sent in RAW_URI: vhost names hold slashes ('/' is %2F), which
    PATH_INFO has already decoded into path separators."""

    def get_environ(self):
        environ = super().get_environ()
        environ["RAW_URI"] = self.path
        # The address this connection reached (the listener's may be 0.0.0.0): a name for Host.
        environ["greenmq.local_address"] = self.socket.getsockname()[0]
        return environ

    def _handle_client_error(self, exc):
        """Bytes that are not HTTP (a port scan, an AMQP or TLS client at the wrong port):
        gevent's 400 and one WARNING naming the peer, not the bytes, which may hold anything
        (gevent's own hook for invalid requests logs them at ERROR)."""
        log.warning("HTTP connection from %s:%s sent something that is not an HTTP request; answered 400",
                    *self.client_address[:2])
        return "400", _BAD_REQUEST


class _Server(WSGIServer):
    def wrap_socket_and_handle(self, client_socket, address):
        """A client that fails the TLS handshake (plain HTTP on the HTTPS port, an untrusted
        certificate) is logged in a line and dropped, not reported with a traceback."""
        try:
            return super().wrap_socket_and_handle(client_socket, address)
        except (ssl.SSLError, OSError) as exc:
            log.info("HTTPS connection from %s:%s failed: %s", address[0], address[1], exc)


def management_server(node, sampler, host, port, per_queue_metrics=True, tls=None, allowed_hosts=()):
    """A not yet started WSGIServer for the API (HTTPS with an ssl context `tls`); handlers
    in a pool, so stopping kills them. Requests must name `host`, a loopback name, the
    machine or one of `allowed_hosts` as their Host."""
    extra = {"ssl_context": tls} if tls is not None else {}
    return _Server((host, port), ManagementApi(node, sampler, per_queue_metrics, host, allowed_hosts), spawn=Pool(),
                   handler_class=_RawPathHandler, log=None, error_log=log, **extra)
