"""greenmqctl: look into and manage a running GreenMQ broker, with rabbitmqctl's command
names, columns and habits, over the broker's JSON-lines port.

    greenmqctl list_queues -p / name messages consumers
    greenmqctl add_user app 's3cret' && greenmqctl set_permissions -p / app '^app\\.' '^app\\.' '^app\\.'
    greenmqctl export_definitions topology.json

Where the broker is and who asks: --host/--port/--user/--password/--vhost, or
$GREENMQ_HOST, $GREENMQ_PORT, $GREENMQ_USER, $GREENMQ_PASSWORD, $GREENMQ_VHOST; --tls with
--tls-ca (and --tls-cert/--tls-key for a client certificate) for a TLS port.

Exit status: 0 done; 64 wrong usage; 65 the broker refused the request (not found,
precondition failed...) or a file was unreadable; 69 the broker cannot be reached;
77 login or permission refused (403).
"""

import argparse
import getpass
import json
import os
import ssl
import sys

from . import connection

EXIT_USAGE, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_NO_PERMISSION = 64, 65, 69, 77
DEFAULT_HOST = "127.0.0.1"


class CommandFailed(Exception):
    """A one-line error for stderr and the exit status that goes with it."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


# -- listings: (op, what rabbitmqctl calls the rows, every column, the default columns) ---

def _peer(row, index):
    host, _, port = row["name"].rpartition(":")
    return (host, int(port) if port.isdigit() else port)[index]


# Columns whose values the core names otherwise, or that are computed from a row.
_DERIVED = {
    "source_name": lambda row: row["source"],
    "source_kind": lambda row: "exchange",
    "destination_name": lambda row: row["destination"],
    "queue_name": lambda row: row["queue"],
    "consumer_count": lambda row: row["consumers"],
    "peer_host": lambda row: _peer(row, 0),
    "peer_port": lambda row: _peer(row, 1),
    "state": lambda row: "running",
}

LISTINGS = {
    "list_exchanges": ("list_exchanges", "exchanges", True,
                       ["name", "type", "durable", "auto_delete", "internal", "arguments"], ["name", "type"]),
    "list_queues": ("list_queues", "queues", True,
                    ["name", "type", "messages", "messages_ready", "messages_unacknowledged", "consumers", "durable",
                     "auto_delete", "exclusive", "arguments"], ["name", "messages"]),
    "list_bindings": ("list_bindings", "bindings", True,
                      ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key",
                       "arguments"],
                      ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key",
                       "arguments"]),
    "list_consumers": ("list_consumers", "consumers", True,
                       ["queue_name", "connection", "channel", "consumer_tag", "ack_required", "exclusive",
                        "prefetch_count", "arguments"],
                       ["queue_name", "connection", "channel", "consumer_tag", "ack_required", "prefetch_count",
                        "arguments"]),
    "list_connections": ("list_connections", "connections", False,
                         ["name", "user", "vhost", "protocol", "channels", "peer_host", "peer_port", "state",
                          "client_properties"], ["user", "peer_host", "peer_port", "state"]),
    "list_channels": ("list_channels", "channels", False,
                      ["connection", "number", "user", "vhost", "consumer_count", "messages_unacknowledged",
                       "prefetch_count", "global_prefetch_count", "confirm"],
                      ["connection", "number", "user", "consumer_count", "messages_unacknowledged"]),
    "list_vhosts": ("list_vhosts", "vhosts", False, ["name", "queues", "connections"], ["name"]),
    "list_users": ("list_users", "users", False, ["user", "tags"], ["user", "tags"]),
}


def _cell(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        if value and all(isinstance(item, str) for item in value) and isinstance(value, list):
            return f"[{', '.join(value)}]"      # tags, as rabbitmqctl shows them
        return json.dumps(value, separators=(",", ":")) if value else "[]"
    return str(value)


def _table(columns, rows):
    """Aligned columns under a header, for people."""
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    lines = [columns] + cells
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


# -- the commands -------------------------------------------------------------------------

def run_listing(conn, args, out):
    op, what, per_vhost, columns, defaults = LISTINGS[args.command]
    selected = args.columns or defaults
    unknown = [column for column in selected if column not in columns]
    if unknown:
        raise CommandFailed(f"Error: invalid column '{unknown[0]}' for {args.command}; "
                            f"valid columns: {', '.join(columns)}", EXIT_USAGE)
    fields = {"vhost": args.vhost} if per_vhost else {}
    rows = conn.call(op, **fields)["items"]
    rows = [{column: (_DERIVED[column](row) if column in _DERIVED else row.get(column)) for column in selected}
            for row in rows]
    if args.json:
        out(json.dumps(rows))
        return
    if not args.quiet:
        out(f"Listing {what}{f' for vhost {args.vhost}' if per_vhost else ''} ...")
    out(_table(selected, rows))


def run_status(conn, args, out):
    status = conn.call("status")
    status.pop("ok", None)
    status.pop("id", None)
    if args.json:
        out(json.dumps(status))
        return
    if not args.quiet:
        out("Status of the node ...")
    out("\n".join(f"{key}: {value}" for key, value in status.items()))


def run_permissions(conn, args, out):
    per_user = args.command == "list_user_permissions"
    rows = conn.call("list_permissions", **({"user": args.user} if per_user else {"vhost": args.vhost}))["items"]
    columns = ["vhost" if per_user else "user", "configure", "write", "read"]
    rows = [{column: row[column] for column in columns} for row in rows]
    if args.json:
        out(json.dumps(rows))
        return
    if not args.quiet:
        out(f'Listing permissions for user "{args.user}" ...' if per_user
            else f'Listing permissions for vhost "{args.vhost}" ...')
    out(_table(columns, rows))


def _limits_of(args):
    """The JSON definition `set_vhost_limits` and `set_user_limits` take."""
    try:
        return json.loads(args.definition)
    except ValueError as exc:
        raise CommandFailed(f"Error: the limits must be JSON such as '{{\"max-connections\": 10}}': {exc}",
                            EXIT_USAGE) from None


def run_clear_user_limits(conn, args, out):
    """As rabbitmqctl: one limit by name, or `all`."""
    if not args.quiet and not args.json:
        out(f'Clearing "{args.limit_name}" limit for user "{args.username}" ...')
    limits = {}
    if args.limit_name != "all":
        for row in conn.call("list_limits", kind="user", name=args.username)["items"]:
            limits = {name: value for name, value in row["value"].items() if name != args.limit_name}
    conn.call("limits.set", kind="user", name=args.username, limits=limits)


def run_list_limits(conn, args, out):
    kind = "vhost" if args.command == "list_vhost_limits" else "user"
    name = (None if args.global_limits else args.vhost) if kind == "vhost" else args.username
    rows = conn.call("list_limits", kind=kind, **({} if name is None else {"name": name}))["items"]
    if args.json:
        out(json.dumps(rows))
        return
    if not args.quiet:
        out(f'Listing limits for {kind} "{name}" ...' if name is not None else f"Listing limits for all {kind}s ...")
    out(_table([kind, "value"], rows))


def _password(args):
    """The password argument, or (as rabbitmqctl) read from the terminal or standard input."""
    if args.password_arg is not None:
        return args.password_arg
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\n")


def run_export(conn, args, out):
    reply = conn.call("definitions.export", rabbitmq_hashes_only=args.for_rabbitmq)
    if reply.get("users_left_out"):
        print(f"Warning: left out users whose password hashes RabbitMQ cannot check: "
              f"{', '.join(reply['users_left_out'])} (set their passwords there)", file=sys.stderr)
    document = json.dumps(reply["definitions"], indent=2)
    if args.file == "-":
        out(document)
        return
    try:
        with open(args.file, "w") as file:
            file.write(document + "\n")
    except OSError as exc:
        raise CommandFailed(f"Error: cannot write {args.file}: {exc.strerror or exc}", EXIT_REFUSED) from None
    if not args.quiet:
        out(f'Exported definitions for the node to "{args.file}"')


def run_import(conn, args, out):
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file) as file:
                text = file.read()
    except OSError as exc:
        raise CommandFailed(f"Error: cannot read {args.file}: {exc.strerror or exc}", EXIT_REFUSED) from None
    except UnicodeDecodeError:
        raise CommandFailed(f"Error: {args.file} is not UTF-8 text", EXIT_REFUSED) from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CommandFailed(f"Error: {args.file} is not valid JSON: {exc}", EXIT_REFUSED) from None
    if type(document) is not dict:
        raise CommandFailed(f"Error: {args.file} must hold a JSON object (RabbitMQ's definitions)", EXIT_REFUSED)
    imported = conn.call("definitions.import", definitions=document)["imported"]
    if args.json:
        out(json.dumps(imported))
    elif not args.quiet:
        out(f'Imported definitions from "{args.file}": '
            + ", ".join(f"{count} {section}" for section, count in imported.items()))


# Messages a shovel moves between two confirms: the target's commits are shared this wide.
SHOVEL_WINDOW = 500
# A source queue that has given nothing for this long is taken to be empty.
SHOVEL_IDLE_SECONDS = 2.0


def run_shovel(conn, args, out):
    """Move the messages waiting in a queue here to a queue on another AMQP broker; each is
    acked here (and so removed) only once that broker has confirmed it. A run cut short
    leaves the rest here, returned to the queue: run it again (a message confirmed there
    but not yet acked here is moved twice: at least once, never lost)."""
    target_queue = args.target_queue or args.queue
    if args.window < 1:
        raise CommandFailed("Error: --window must be at least 1", EXIT_USAGE)
    source = conn.channel()
    waiting = source.queue_declare(args.queue, passive=True).message_count
    if not waiting:
        out(json.dumps({"moved": 0}) if args.json else f'Queue "{args.queue}" has no messages waiting')
        return
    try:
        target = connection.Connection(args.target_url, client_properties={"product": "greenmqctl shovel"})
    except connection.BrokerError as exc:
        raise _refused(exc) from None
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"Error: unable to connect to {args.target_url}: {exc}", EXIT_UNAVAILABLE) from None
    try:
        destination = target.channel()
        destination.queue_declare(target_queue, passive=True)      # it must exist there (definitions)
        destination.confirm_delivery(window=args.window)
        source.basic_qos(prefetch_count=args.window)
        tag = acked = 0
        for method, properties, body in source.consume(args.queue, inactivity_timeout=SHOVEL_IDLE_SECONDS):
            if method is not None:
                destination.basic_publish("", target_queue, body, properties)
                tag = method.delivery_tag
            if tag > acked and (method is None or tag % args.window == 0 or tag >= waiting):
                try:
                    destination.wait_for_confirms()
                except connection.NackError as exc:
                    raise CommandFailed(f"Error: {args.target_url} refused messages ({exc}); they stay here, "
                                        f"{acked} moved", EXIT_REFUSED) from None
                source.basic_ack(tag, multiple=True)
                acked = tag
                if not args.quiet:
                    out(f"Moved {acked} of {waiting} messages")
                    sys.stdout.flush()
            if method is None or acked >= waiting:
                break
    finally:
        target.close()
    if args.json:
        out(json.dumps({"moved": acked}))
    elif not args.quiet:
        out(f'Moved {acked} messages from "{args.queue}" to "{target_queue}" at {args.target_url}')


def _simple(announce, op, **field_names):
    """A command that sends one request built from its arguments and says what it does."""
    def run(conn, args, out):
        fields = {field: (getter(args) if callable(getter) else getattr(args, getter))
                  for field, getter in field_names.items()}
        if not args.quiet and not args.json:
            shown = {key: _cell(value) if isinstance(value, list) else value for key, value in vars(args).items()}
            out(announce.format(**shown) + " ...")
        reply = conn.call(op, **fields)
        if args.json:
            out(json.dumps({key: value for key, value in reply.items() if key not in ("ok", "id")}))
    return run


# name -> (help, arguments as (name, argparse options), runner, logs in to the -p vhost)
COMMANDS = {
    "status": ("the broker's version, uptime and counts", [], run_status, False),
    "add_user": ("add a user (the password is read from standard input when not given)",
                 [("username", {}), ("password_arg", {"nargs": "?", "metavar": "password"})],
                 _simple('Adding user "{username}"', "user.add", user="username", password=_password), False),
    "delete_user": ("delete a user and their permissions", [("username", {})],
                    _simple('Deleting user "{username}"', "user.delete", user="username"), False),
    "change_password": ("set a user's password",
                        [("username", {}), ("password_arg", {"nargs": "?", "metavar": "password"})],
                        _simple('Changing password for user "{username}"', "user.change_password",
                                user="username", password=_password), False),
    "clear_password": ("remove a user's password: they can no longer log in with one", [("username", {})],
                       _simple('Clearing password for user "{username}"', "user.clear_password",
                               user="username"), False),
    "set_user_tags": ("set a user's tags (administrator, monitoring, management); none clears them",
                      [("username", {}), ("tags", {"nargs": "*"})],
                      _simple('Setting tags for user "{username}" to {tags}', "user.set_tags",
                              user="username", tags="tags"), False),
    "add_vhost": ("add a virtual host (you get full permissions on it)", [("vhost_name", {"metavar": "vhost"})],
                  _simple('Adding vhost "{vhost_name}"', "vhost.add", vhost="vhost_name"), False),
    "delete_vhost": ("delete a virtual host and everything in it; its connections are closed",
                     [("vhost_name", {"metavar": "vhost"})],
                     _simple('Deleting vhost "{vhost_name}"', "vhost.delete", vhost="vhost_name"), False),
    "set_permissions": ("set a user's configure, write and read regular expressions in a vhost (-p)",
                        [("username", {}), ("configure", {}), ("write", {}), ("read", {})],
                        _simple('Setting permissions for user "{username}" in vhost "{vhost}"', "permissions.set",
                                user="username", vhost="vhost", configure="configure", write="write",
                                read="read"), False),
    "clear_permissions": ("remove a user's permissions in a vhost (-p)", [("username", {})],
                          _simple('Clearing permissions for user "{username}" in vhost "{vhost}"',
                                  "permissions.clear", user="username", vhost="vhost"), False),
    "list_permissions": ("the users' permissions in a vhost (-p)", [], run_permissions, False),
    "list_user_permissions": ("a user's permissions in every vhost", [("user", {})], run_permissions, False),
    "set_vhost_limits": ("set a vhost's (-p) limits, replacing its others: JSON such as "
                         "'{\"max-connections\": 10, \"max-queues\": 100}'; negative is no limit, 0 refuses all",
                         [("definition", {})],
                         _simple('Applying limits for vhost "{vhost}"', "limits.set", kind=lambda _: "vhost",
                                 name="vhost", limits=_limits_of), False),
    "clear_vhost_limits": ("remove a vhost's (-p) limits", [],
                           _simple('Clearing vhost "{vhost}" limits', "limits.set", kind=lambda _: "vhost",
                                   name="vhost", limits=lambda _: {}), False),
    "list_vhost_limits": ("a vhost's (-p) limits, or with --global every vhost's",
                          [("--global", {"action": "store_true", "dest": "global_limits",
                                         "help": "the limits of every vhost that has some"})],
                          run_list_limits, False),
    "set_user_limits": ("set a user's limits, replacing their others: JSON such as "
                        "'{\"max-connections\": 10, \"max-channels\": 20}'; negative is no limit, 0 refuses all",
                        [("username", {}), ("definition", {})],
                        _simple('Setting user limits to "{definition}" for user "{username}"', "limits.set",
                                kind=lambda _: "user", name="username", limits=_limits_of), False),
    "clear_user_limits": ("remove one of a user's limits (max-connections, max-channels) or all",
                          [("username", {}), ("limit_name", {"metavar": "limit-name|all"})],
                          run_clear_user_limits, False),
    "list_user_limits": ("a user's limits, or every user's that has some",
                         [("username", {"nargs": "?", "metavar": "user"})], run_list_limits, False),
    "purge_queue": ("remove a queue's ready messages (-p vhost; logs in to it, so the user needs "
                    "read permission there)", [("queue", {})],
                    _simple('Purging queue "{queue}" in vhost "{vhost}"', "queue.purge", queue="queue"), True),
    "delete_queue": ("delete a queue (-p vhost; logs in to it, so the user needs configure permission there)",
                     [("queue", {}), ("--if-empty", {"action": "store_true", "help": "only if it has no messages"}),
                      ("--if-unused", {"action": "store_true", "help": "only if it has no consumers"})],
                     _simple('Deleting queue "{queue}" in vhost "{vhost}"', "queue.delete", queue="queue",
                             if_empty="if_empty", if_unused="if_unused"), True),
    "close_connection": ("close a client's connection (its name as list_connections shows it) with a reason",
                         [("connection_name", {"metavar": "connection"}), ("explanation", {})],
                         _simple('Closing connection "{connection_name}", reason: {explanation}',
                                 "connection.close", name="connection_name", reason="explanation"), False),
    "export_definitions": ("write users, vhosts, permissions, exchanges, queues and bindings as "
                           "RabbitMQ's definitions JSON to a file ('-': standard output)",
                           [("file", {}), ("--for-rabbitmq", {
                               "action": "store_true",
                               "help": "leave out users with GreenMQ's own password hashes, which RabbitMQ "
                                       "refuses (and their permissions)"})], run_export, False),
    "import_definitions": ("apply a definitions JSON file (from GreenMQ or RabbitMQ; '-': standard input); "
                           "all of it or, on any error, none of it", [("file", {})], run_import, False),
    "shovel": ("move the messages waiting in a queue (-p vhost) to a queue on another AMQP broker, "
               "removing each here once that broker confirmed it; run again after a failure",
               [("queue", {}), ("target_url", {"metavar": "amqp-url"}),
                ("target_queue", {"nargs": "?", "metavar": "target-queue", "help": "default: the same name"}),
                ("--window", {"type": int, "default": SHOVEL_WINDOW,
                              "help": f"messages between two confirms (default {SHOVEL_WINDOW})"})],
               run_shovel, True),
    "rotate_logs": ("make the broker reopen its log file (after moving it away)", [],
                    _simple("Reopening the broker's log file", "logs.reopen"), False),
}
for _name, (_op, _what, _per_vhost, _columns, _defaults) in LISTINGS.items():
    COMMANDS[_name] = (f"list {_what}{' in a vhost (-p)' if _per_vhost else ''}; columns: {', '.join(_columns)} "
                       f"(default: {' '.join(_defaults)})", [("columns", {"nargs": "*", "metavar": "column"})],
                       run_listing, False)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"Error: {message} (see {self.prog} --help)\n")


def _add_options(parser, suppress):
    """The options every command takes, before or after its name. After it (`suppress`),
    they only override when given."""
    def default(value):
        return argparse.SUPPRESS if suppress else value
    env = os.environ.get
    parser.add_argument("--host", default=default(env("GREENMQ_HOST", DEFAULT_HOST)),
                        help="the broker's address (default $GREENMQ_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default(None),
                        help=f"its JSON-lines port (default $GREENMQ_PORT or {connection.DEFAULT_PORT})")
    parser.add_argument("-u", "--user", dest="login_user", default=default(env("GREENMQ_USER", "guest")),
                        help="log in as (default $GREENMQ_USER or guest)")
    parser.add_argument("--password", dest="login_password", default=default(env("GREENMQ_PASSWORD", "guest")),
                        help="the password (default $GREENMQ_PASSWORD or guest; the environment keeps it "
                             "out of the process list)")
    parser.add_argument("--vhost", dest="login_vhost", default=default(env("GREENMQ_VHOST", "/")),
                        help="the vhost to log in to (default $GREENMQ_VHOST or /)")
    parser.add_argument("-p", dest="vhost", metavar="VHOST", default=default("/"),
                        help="the vhost a command is about (default /)")
    parser.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")
    parser.add_argument("--tls-ca", default=default(env("GREENMQ_TLS_CA")),
                        help="CA certificate to verify the broker with (default $GREENMQ_TLS_CA or the "
                             "system's); implies --tls")
    parser.add_argument("--tls-cert", default=default(env("GREENMQ_TLS_CERT")),
                        help="client certificate, for a broker that asks for one (implies --tls)")
    parser.add_argument("--tls-key", default=default(env("GREENMQ_TLS_KEY")), help="the client certificate's key")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON for scripts instead of tables")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="no informational lines, only results")


def make_parser():
    parser = _Parser(prog="greenmqctl", description=__doc__.split("\n\n")[0],
                     epilog="`greenmqctl COMMAND --help` describes a command.")
    _add_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for name in sorted(COMMANDS):
        help_text, arguments, _, _ = COMMANDS[name]
        command = commands.add_parser(name, help=help_text, description=help_text)
        for argument, options in arguments:
            command.add_argument(argument, **options)
        _add_options(command, suppress=True)
    return parser


def _tls_context(args):
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    context = ssl.create_default_context(cafile=args.tls_ca)
    if args.tls_cert:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def main(argv=None, out=print):
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _, _, run, in_vhost = COMMANDS[args.command]
    try:
        port = _port(args)
        where = f"{args.host}:{port}"
        try:
            tls = _tls_context(args)
        except (OSError, ssl.SSLError) as exc:
            raise CommandFailed(f"Error: cannot load the TLS certificates: {exc}", EXIT_USAGE) from None
        try:
            conn = connection.Connection(args.host, port, args.login_user, args.login_password,
                                         args.vhost if in_vhost else args.login_vhost, ssl=tls,
                                         client_properties={"product": "greenmqctl"})
        except connection.BrokerError as exc:
            raise _refused(exc) from None
        except (OSError, ValueError) as exc:
            raise CommandFailed(f"Error: unable to connect to {where}: {getattr(exc, 'strerror', None) or exc}",
                                EXIT_UNAVAILABLE) from None
        try:
            run(conn, args, out)
        except connection.BrokerError as exc:
            raise _refused(exc) from None
        finally:
            conn.close()
    except CommandFailed as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except (OSError, ValueError) as exc:
        print(f"Error: lost the connection to {where}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def _port(args):
    if args.port is not None:
        return args.port
    text = os.environ.get(connection.PORT_ENVIRONMENT_VARIABLE, str(connection.DEFAULT_PORT))
    try:
        return int(text)
    except ValueError:
        raise CommandFailed(f"Error: ${connection.PORT_ENVIRONMENT_VARIABLE} must be a port number, not {text!r}",
                            EXIT_USAGE) from None


def _refused(exc):
    if exc.code is None:
        return CommandFailed(f"Error: {exc.text}", EXIT_UNAVAILABLE)
    return CommandFailed(f"Error: {exc.text}", EXIT_NO_PERMISSION if exc.code == 403 else EXIT_REFUSED)


if __name__ == "__main__":
    sys.exit(main())
