from setuptools import setup

setup(
    name="greenmq",
    version="0.1.0",
    description="A message broker in Python on gevent, with RabbitMQ's messaging model",
    py_modules=["amqp_protocol", "broker", "connection", "errors", "exchange", "message", "node",
                "protocol", "queue_store", "session", "transport", "vhost"],
    python_requires=">=3.9",
    install_requires=["gevent>=23.9", "pamqp>=3.3"],
    entry_points={"console_scripts": ["greenmq-broker=broker:main"]},
)
