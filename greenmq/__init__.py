"""GreenMQ: a message broker in Python on gevent, with RabbitMQ's messaging model.

Everything lives in this package, so that installing GreenMQ next to a project's own
modules (a `config.py`, a `connection.py`) shadows nothing and is shadowed by nothing.
The broker starts with `greenmq-broker` or `python3 -m greenmq.broker`; the blocking client
is `greenmq.connection`, also installed as the top-level `connection` for the original
scripts' `import connection`.
"""
