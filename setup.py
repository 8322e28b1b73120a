from setuptools import setup

setup(
    name="greenmq",
    version="0.1.0",
    description="A message broker in Python on gevent, with RabbitMQ's messaging model",
    packages=["greenmq", "greenmq.store"],
    package_data={"greenmq": ["dashboard.html"]},     # the management page, served by management.py
    # The one top-level name: the original scripts' `import connection` (it is greenmq.connection).
    py_modules=["connection"],
    python_requires=">=3.9",
    # tomllib is in the standard library from 3.11; tomli is the same parser for older ones.
    # regex: the API's name filters with a time limit (management.py's REGEX_BUDGET_SECONDS).
    install_requires=["gevent>=23.9", "pamqp>=3.3", "regex>=2022.1", 'tomli>=1.1; python_version < "3.11"'],
    entry_points={"console_scripts": ["greenmq-broker=greenmq.broker:main", "greenmqctl=greenmq.ctl:main"],
                  # pytest loads the plugin by itself wherever GreenMQ is installed.
                  "pytest11": ["greenmq=greenmq.pytest_plugin"]},
)
