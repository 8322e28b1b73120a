"""GreenMQ installed as a user installs it: from a clone of this checkout, not editable, into
a fresh virtualenv, next to a project whose own modules have the everyday names GreenMQ's
modules once had at the top level (config.py, connection.py...). The README's plugin
examples pass there, and the project's modules stay its own."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from tests.broker_process import ROOT
from tests.test_pytest_plugin import readme_example

# Names a project may well have; each was one of GreenMQ's top-level modules, and a project's
# own config.py once made the test broker die with an ImportError.
PROJECT_MODULES = ("config", "errors", "logs", "session", "message", "stats", "memory", "node",
                   "connection", "transport")
# A fresh virtualenv with gevent, pamqp, pytest, kombu and pika from the package index (or
# pip's cache): tens of seconds, minutes on a cold cache and a slow link.
INSTALL_TIMEOUT_SECONDS = 600
RUN_TIMEOUT_SECONDS = 120


def _run(command, cwd, timeout=RUN_TIMEOUT_SECONDS):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV") and not k.startswith("GREENMQ_")}
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _clone(destination):
    """The files of this checkout that git would put in a clone (tracked, and new ones not
    ignored), so uncommitted work is what gets installed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = pathlib.Path(ROOT, name)
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


@pytest.fixture(scope="module")
def virtualenv(tmp_path_factory):
    """A fresh virtualenv holding GreenMQ (from a clone, not editable) and the clients the
    README's examples use; its python."""
    where = tmp_path_factory.mktemp("installed")
    clone = where / "greenmq"
    _clone(clone)
    code, output = _run([sys.executable, "-m", "venv", str(where / "venv")], where)
    assert code == 0, output
    python = str(where / "venv" / "bin" / "python")
    code, output = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(clone),
                         "pytest", "kombu", "pika"], where, INSTALL_TIMEOUT_SECONDS)
    assert code == 0, output
    return python


@pytest.fixture
def project(tmp_path):
    """A user's project: modules of its own named like GreenMQ's, each saying whose it is."""
    for module in PROJECT_MODULES:
        (tmp_path / f"{module}.py").write_text('OWNER = "the project"\n')
    return tmp_path


def _installed_top_level_names(python):
    """What the installed distribution puts at the top of site-packages (its RECORD)."""
    code, output = _run([python, "-c", "import importlib.metadata as m; print('\\n'.join(str(f) for f in "
                         "m.distribution('greenmq').files))"], os.path.dirname(python))
    assert code == 0, output
    tops = {name.split("/")[0] for name in output.split()}
    return {top for top in tops if not top.endswith(".dist-info") and top not in ("..", "__pycache__")}


def test_installing_adds_the_package_and_the_one_module_of_the_original_scripts(virtualenv):
    assert _installed_top_level_names(virtualenv) == {"greenmq", "connection.py"}


def test_a_project_with_modules_named_like_greenmqs_runs_the_readmes_plugin_examples(virtualenv, project):
    for name in ("test_orders.py", "test_orders_unittest.py"):
        (project / name).write_text(readme_example(name))
    (project / "test_own_modules.py").write_text(
        "import importlib\n\n\n"
        "def test_the_projects_modules_are_its_own(greenmq):\n"
        f"    for name in {PROJECT_MODULES!r}:\n"
        "        module = importlib.import_module(name)\n"
        "        assert module.OWNER == 'the project', module\n")
    code, output = _run([virtualenv, "-m", "pytest", "-p", "no:cacheprovider", "-q"], project)
    assert code == 0 and "3 passed" in output, output
    code, output = _run([virtualenv, "test_orders_unittest.py"], project)
    assert code == 0 and "Ran 1 test" in output, output


def test_the_installed_commands_start_from_a_projects_directory(virtualenv, project):
    bin_dir = os.path.dirname(virtualenv)
    for command in ([os.path.join(bin_dir, "greenmq-broker"), "--help"],
                    [os.path.join(bin_dir, "greenmqctl"), "--help"],
                    [virtualenv, "-m", "greenmq.broker", "--help"],
                    [virtualenv, "-m", "greenmq.ctl", "--help"]):
        code, output = _run(command, project)
        assert code == 0 and "usage:" in output, (command, output)


# What GreenMQ's own modules may import besides the standard library and themselves.
DEPENDENCIES = {"gevent", "pamqp", "pytest", "regex", "tomli"}


def test_greenmqs_modules_import_no_top_level_name_of_their_own_or_a_projects():
    package = pathlib.Path(ROOT, "greenmq")
    strays = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            strays += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}" for name in names
                       if name.split(".")[0] not in sys.stdlib_module_names | DEPENDENCIES | {"greenmq"}]
    assert strays == []
