"""The broker's settings: each one a flag, an environment variable GREENMQ_<NAME> and a key
of the TOML file given with --config (greenmq.example.toml documents them all). A flag wins
over the environment, the environment over the file, the file over the default.

A wrong setting stops the start with one line naming it (exit status 2): a broker that
starts with a setting silently ignored is worse than one that does not start.
"""

import argparse
import os

try:
    import tomllib
except ImportError:             # Python < 3.11: the same parser, from PyPI
    import tomli as tomllib

from .lines import max_line_bytes_for
from .message import DEFAULT_MAX_MESSAGE_BYTES
from .node import DEFAULT_CONSUMER_TIMEOUT_MS
from .memory import (DEFAULT_MEMORY_FRACTION, DEFAULT_PAGING_RATIO, DEFAULT_QUEUE_WINDOW, MIN_QUEUE_WINDOW_BYTES,
                     QUEUE_WINDOW_SHARE_OF_LIMIT, parse_bytes, parse_memory_limit)
from .stats import DEFAULT_SAMPLE_INTERVAL_SECONDS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5680          # JSON lines
DEFAULT_AMQP_PORT = 5672     # AMQP 0-9-1, where every AMQP client looks first
DEFAULT_TLS_PORT = 5681      # JSON lines over TLS: next to the plain port
DEFAULT_AMQPS_PORT = 5671    # AMQP over TLS, RabbitMQ's (and IANA's) amqps port
DEFAULT_HTTP_PORT = 15672    # the management API, RabbitMQ's management port, where its tools look first
# How long a JSON-lines client may take to send `hello` (RabbitMQ's handshake_timeout for
# AMQP): a socket that never says who it is holds a file descriptor and memory.
HELLO_TIMEOUT_SECONDS = 10.0
# Beside the broker's working directory, so `python3 broker.py` keeps its messages where
# the next `python3 broker.py` from the same place finds them.
DEFAULT_DATA_DIR = "greenmq-data"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ENVIRONMENT_PREFIX = "GREENMQ_"


class ConfigError(Exception):
    """A setting that cannot be used; the message names it."""


def _port(value):
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535 (0 picks a free one)")
    return value


def _line_bytes(value):
    if type(value) is not int or value < 1024:
        raise ValueError("must be an integer of at least 1024")
    return value


def _message_bytes(value):
    if type(value) is not int or value < 1:
        raise ValueError("must be a positive integer")
    return value


def _seconds(value):
    if type(value) not in (int, float) or not value > 0:
        raise ValueError("must be a number of seconds above 0")
    return value


# RabbitMQ's consumer_timeout takes 0 (none) up to this many milliseconds (a signed 32-bit
# integer) and refuses negative values; so does this.
MAX_CONSUMER_TIMEOUT_MS = 2**31 - 1


def _ratio(value):
    if type(value) not in (int, float) or not value >= 0:
        raise ValueError("must be a number, 0 or more")
    return value


def _milliseconds_or_off(value):
    if type(value) is not int or not 0 <= value <= MAX_CONSUMER_TIMEOUT_MS:
        raise ValueError(f"must be a whole number of milliseconds up to {MAX_CONSUMER_TIMEOUT_MS}, 0 for none")
    return value


def _window(value):
    if type(value) is not int or value < 0:
        raise ValueError("must be a whole number of messages, 0 or more")
    return value


# The checks whose flags and environment values are read as integers.
_INTEGER_CHECKS = (_port, _line_bytes, _message_bytes, _milliseconds_or_off, _window)


def _text(value):
    if type(value) is not str or not value:
        raise ValueError("must be a non-empty string")
    return value


def _host_names(value):
    """Names, comma-separated in a flag or the environment, or a TOML list of strings."""
    names = value.split(",") if type(value) is str else value
    if type(names) is not list or not all(type(name) is str for name in names):
        raise ValueError("must be host names separated by commas (a list of strings in the file)")
    return tuple(name.strip().lower() for name in names if name.strip())


def _bool(value):
    if type(value) is not bool:
        raise ValueError("must be true or false")
    return value


def _log_format(value):
    if value not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return value


def _level(value):
    """RabbitMQ's level names are lower case, Python's upper case: either is taken."""
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.lower()


# name: (check, default, flag help). The flag is --name-with-dashes; a bool that is true by
# default is turned off with --no-name.
SETTINGS = {
    "host": (_text, DEFAULT_HOST, f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for all)"),
    "port": (_port, DEFAULT_PORT, f"JSON-lines port (default {DEFAULT_PORT})"),
    "amqp_port": (_port, DEFAULT_AMQP_PORT, f"AMQP 0-9-1 port (default {DEFAULT_AMQP_PORT})"),
    "amqp": (_bool, True, "do not listen for AMQP clients (neither plain nor TLS)"),
    "plain": (_bool, True, "no plain (unencrypted) listeners: TLS ones only"),
    "tls_cert": (_text, None, "certificate chain (PEM) for the TLS listeners; turns them on"),
    "tls_key": (_text, None, "the certificate's private key (PEM; default: in --tls-cert's file)"),
    "tls_ca": (_text, None, "CA certificates (PEM): clients must present a certificate they signed"),
    "tls_port": (_port, DEFAULT_TLS_PORT, f"JSON-lines over TLS port (default {DEFAULT_TLS_PORT})"),
    "amqps_port": (_port, DEFAULT_AMQPS_PORT, f"AMQP over TLS port (default {DEFAULT_AMQPS_PORT})"),
    "http": (_bool, True, "no management API, dashboard or /metrics"),
    "http_host": (_text, DEFAULT_HOST, f"address of the management API, dashboard and /metrics (default {DEFAULT_HOST})"),
    "http_port": (_port, DEFAULT_HTTP_PORT, f"management HTTP port (default {DEFAULT_HTTP_PORT}; HTTPS with "
                                            "the TLS settings when there are no plain listeners)"),
    "http_allowed_hosts": (_host_names, (), "more names the management API answers to as Host, comma-separated "
                                            "(it always answers to localhost, its own addresses and the machine's "
                                            "name; * for any, behind a proxy that checks)"),
    "stats_interval": (_seconds, DEFAULT_SAMPLE_INTERVAL_SECONDS,
                       "seconds between samples of the message counters behind the API's rates "
                       f"(default {DEFAULT_SAMPLE_INTERVAL_SECONDS:g})"),
    "per_queue_metrics": (_bool, True, "leave per-queue series out of /metrics (for brokers with very many queues)"),
    "max_message_bytes": (_message_bytes, DEFAULT_MAX_MESSAGE_BYTES,
                          f"largest message body accepted, both protocols (default {DEFAULT_MAX_MESSAGE_BYTES})"),
    "max_line_bytes": (_line_bytes, None, "longest JSON line accepted (default: room for a base64 body of "
                                          f"max_message_bytes, {max_line_bytes_for(DEFAULT_MAX_MESSAGE_BYTES)} "
                                          "by default; only more may be given)"),
    "hello_timeout": (_seconds, HELLO_TIMEOUT_SECONDS, "seconds a JSON-lines client may take to send 'hello' "
                                                       f"(default {HELLO_TIMEOUT_SECONDS:g})"),
    "consumer_timeout": (_milliseconds_or_off, DEFAULT_CONSUMER_TIMEOUT_MS,
                         "milliseconds a delivery may stay unacknowledged before its channel is closed "
                         f"with 406 and its messages requeued, as RabbitMQ's consumer_timeout (default "
                         f"{DEFAULT_CONSUMER_TIMEOUT_MS}, 30 minutes; 0 for none)"),
    "memory_limit": (parse_memory_limit, parse_memory_limit(DEFAULT_MEMORY_FRACTION),
                     "above this many bytes of messages and output held, publishers are not read until "
                     "consumers make room: bytes, with a unit (512MiB, 2GB) or a fraction of the machine's "
                     f"memory (default {DEFAULT_MEMORY_FRACTION}, RabbitMQ's vm_memory_high_watermark)"),
    "memory_paging_ratio": (_ratio, DEFAULT_PAGING_RATIO,
                            "share of memory_limit above which queues page the ready messages beyond "
                            "their windows to disk, transient ones too, as RabbitMQ's "
                            f"vm_memory_high_watermark_paging_ratio (default {DEFAULT_PAGING_RATIO}; 0 pages "
                            "always, above 1 never)"),
    "queue_window": (_window, DEFAULT_QUEUE_WINDOW,
                     "ready messages a queue keeps in memory ahead of its consumers; persistent messages "
                     "of a durable queue beyond them wait on disk only, and others too while memory is "
                     "short (see memory_paging_ratio; default "
                     f"{DEFAULT_QUEUE_WINDOW}; x-queue-mode lazy keeps none)"),
    "queue_window_bytes": (parse_bytes, None,
                           "nor more than these bytes of bodies ahead, which bounds each read-back from disk "
                           "too: bytes, with a unit (64MiB) allowed (default a "
                           f"{QUEUE_WINDOW_SHARE_OF_LIMIT}th of memory_limit, at least "
                           f"{MIN_QUEUE_WINDOW_BYTES // 2**20}MiB or a quarter of the limit if that is less)"),
    "data_dir": (_text, DEFAULT_DATA_DIR, "where durable exchanges, queues, bindings, persistent messages, "
                                          f"users and vhosts are kept (default ./{DEFAULT_DATA_DIR})"),
    "in_memory": (_bool, False, "keep nothing on disk: everything lasts only as long as the process"),
    "log_level": (_level, "info", "debug, info, warning or error (default info)"),
    "log_file": (_text, None, "write the log here instead of standard error; reopened on SIGHUP "
                              "or `greenmqctl rotate_logs`"),
    "log_format": (_log_format, "text", "text (default) for people, or json: one object per line with "
                                        "time, level, logger and message, for log collectors"),
}


def make_parser():
    parser = argparse.ArgumentParser(
        prog="broker.py", description="GreenMQ: a message broker with RabbitMQ's model, on gevent.",
        epilog=f"Every setting can also be given as ${ENVIRONMENT_PREFIX}<NAME> (GREENMQ_AMQP_PORT=5673) or as "
               "a key of the --config file (amqp_port = 5673); flags win over the environment, the "
               "environment over the file.")
    parser.add_argument("--config", help=f"TOML settings file (default ${ENVIRONMENT_PREFIX}CONFIG; "
                                          "see greenmq.example.toml)")
    for name, (check, default, help_text) in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if check is _bool and default:
            parser.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_const", const=False,
                                help=help_text)
        elif check is _bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, help=help_text)
        elif check in _INTEGER_CHECKS:
            parser.add_argument(flag, dest=name, type=int, help=help_text)
        elif check in (_seconds, _ratio):
            parser.add_argument(flag, dest=name, type=float, help=help_text)
        else:
            parser.add_argument(flag, dest=name, help=help_text)
    return parser


def load_settings(argv, environ=None):
    """The settings as an argparse Namespace; ConfigError naming the first bad one."""
    environ = os.environ if environ is None else environ
    given = make_parser().parse_args(argv)
    path = given.config or environ.get(ENVIRONMENT_PREFIX + "CONFIG")
    from_file = _read_file(path) if path else {}
    settings = argparse.Namespace(config=path)
    for name, (check, default, _) in SETTINGS.items():
        variable = ENVIRONMENT_PREFIX + name.upper()
        if getattr(given, name) is not None:
            source, value = f"--{name.replace('_', '-')}", getattr(given, name)
        elif variable in environ:
            source, value = f"${variable}", _from_environment(check, environ[variable])
        elif name in from_file:
            source, value = f"'{name}' in {path}", from_file[name]
        else:
            setattr(settings, name, default)
            continue
        try:
            setattr(settings, name, check(value))
        except ValueError as exc:
            raise ConfigError(f"{source} {exc}, not {value!r}") from None
    needed = max_line_bytes_for(settings.max_message_bytes)
    if settings.max_line_bytes is not None and settings.max_line_bytes < needed:
        raise ConfigError(f"max_line_bytes must be at least {needed}, to carry a base64 body of "
                          f"max_message_bytes ({settings.max_message_bytes})")
    if not settings.plain and not settings.tls_cert:
        raise ConfigError("plain = false (--no-plain) needs tls_cert: there would be no listener at all")
    for name in ("tls_key", "tls_ca"):
        if getattr(settings, name) and not settings.tls_cert:
            raise ConfigError(f"{name} is set but tls_cert is not: TLS needs a certificate")
    return settings


def _read_file(path):
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key in document:
        if key not in SETTINGS:
            raise ConfigError(f"unknown key '{key}' in {path}"
                              + (" (the file names settings, not flags: use underscores)" if "-" in key else ""))
    return document


def _from_environment(check, text):
    """Environment values are text: read them as the setting's type."""
    if check is _bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if check in _INTEGER_CHECKS:
        try:
            return int(text)
        except ValueError:
            return text
    if check in (_seconds, _ratio):
        try:
            return float(text)
        except ValueError:
            return text
    return text
