"""The README's commands, run as written after `make run`: the operator's `.venv/bin/greenmqctl`
lines against a broker of their own, and the command lines the README shows for the broker."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.broker_process import ROOT, BrokerProcess

TIMEOUT = 60
VENV_BIN = os.path.dirname(sys.executable)      # the virtualenv `make` made (.venv/bin)


def readme():
    with open(os.path.join(ROOT, "README.md")) as text:
        return text.read()


def readme_command_lines(program):
    """Every indented README line that runs `program` (a path under .venv/bin), comments off."""
    lines = re.findall(rf"^    ({re.escape(program)}\b.*)$", readme(), re.M)
    return [line.split("  #")[0].strip() for line in lines]


def run(line, port, stdin=""):
    """A README line as a shell would run it from the checkout, `.venv/bin` meaning this
    virtualenv, pointed at `port` by the environment as the README says."""
    words = shlex.split(line)
    words[0] = os.path.join(VENV_BIN, os.path.basename(words[0]))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENMQ_")}
    environment["GREENMQ_PORT"] = str(port)
    return subprocess.run(words, input=stdin, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                          env=environment)


def test_every_greenmqctl_command_in_the_readme_is_a_command_it_has():
    lines = readme_command_lines(".venv/bin/greenmqctl")
    assert len(lines) >= 10, lines
    for line in lines:
        words = shlex.split(line)
        if "[" in line:             # an optional argument, as usage lines write it
            words = [word for word in words if not word.startswith("[")]
        result = run(shlex.join(words + ["--help"]), port=1)
        assert result.returncode == 0 and "usage:" in result.stdout, (line, result.stdout, result.stderr)


def test_the_readmes_operator_walkthrough_runs_as_written():
    """Looking in, then "Before listening on other interfaces": its users, tags, vhost and
    permissions, the passwords typed on standard input."""
    lines = readme_command_lines(".venv/bin/greenmqctl")
    looking = [line for line in lines if re.search(r" (status|list_queues|list_bindings)\b", line)]
    making = [line for line in lines if re.search(r" (add_user|set_user_tags|set_permissions|add_vhost) ", line)]
    assert len(looking) == 4 and len(making) == 6, (looking, making)
    with BrokerProcess("--in-memory") as broker:
        for line in looking + making:
            result = run(line, broker.port, stdin="s3cret\n" if " add_user " in line else "")
            assert result.returncode == 0, (line, result.stdout, result.stderr)
        listed = run(".venv/bin/greenmqctl list_user_permissions shop-app --json", broker.port)
    assert listed.returncode == 0, listed.stderr
    assert [row["vhost"] for row in json.loads(listed.stdout)] == ["shop"]


@pytest.mark.parametrize("line", [".venv/bin/python broker.py --help", ".venv/bin/greenmqctl --help"])
def test_the_readmes_help_commands_run_as_written(line):
    assert f"`{line}`" in readme() or f"    {line}" in readme()
    result = run(line, port=1)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
