from setuptools import setup

setup(
    name="greenmq",
    version="0.1.0",
    description="A message broker in Python on gevent, with RabbitMQ's messaging model",
    py_modules=["access", "amqp_protocol", "broker", "config", "connection", "dead_letter", "definitions",
                "durable_store", "errors", "exchange", "greenmq_testing", "greenmqctl", "logs", "management",
                "memory", "message", "node", "protocol", "pytest_greenmq", "queue_store", "session", "stats",
                "transport", "vhost"],
    data_files=[("share/greenmq", ["dashboard.html"])],      # the management page, served by management.py
    python_requires=">=3.9",
    # tomllib is in the standard library from 3.11; tomli is the same parser for older ones.
    install_requires=["gevent>=23.9", "pamqp>=3.3", 'tomli>=1.1; python_version < "3.11"'],
    entry_points={"console_scripts": ["greenmq-broker=broker:main", "greenmqctl=greenmqctl:main"],
                  # pytest loads the plugin by itself wherever GreenMQ is installed.
                  "pytest11": ["greenmq=pytest_greenmq"]},
)
