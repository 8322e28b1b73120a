from setuptools import setup

setup(
    name="greenmq",
    version="0.1.0",
    description="A message broker in Python on gevent, with RabbitMQ's messaging model",
    py_modules=["access", "amqp_protocol", "broker", "connection", "durable_store", "errors", "exchange", "greenmq_testing",
                "message", "node", "protocol", "pytest_greenmq", "queue_store", "session", "transport", "vhost"],
    python_requires=">=3.9",
    install_requires=["gevent>=23.9", "pamqp>=3.3"],
    entry_points={"console_scripts": ["greenmq-broker=broker:main"],
                  # pytest loads the plugin by itself wherever GreenMQ is installed.
                  "pytest11": ["greenmq=pytest_greenmq"]},
)
