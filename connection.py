"""`import connection`: GreenMQ's blocking client (greenmq/connection.py) under the name the
original scripts import. This module *is* greenmq.connection, not a copy of its names, so
its exceptions and private helpers are the same objects either way."""

import sys

from greenmq import connection

sys.modules[__name__] = connection
