"""greenmqctl run as an operator runs it: a subprocess, with the broker's port in its
environment."""

import json
import os
import subprocess
import sys

from tests.broker_process import ROOT

TIMEOUT = 30


def greenmqctl(port, *args, input=None, env=None):
    """The finished process (returncode, stdout, stderr as text)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GREENMQ_")}
    environment.update({"GREENMQ_PORT": str(port)}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "greenmq.ctl", *args], input=input,
                          capture_output=True, text=True, timeout=TIMEOUT, env=environment, cwd=ROOT)


def greenmqctl_json(port, *args, **options):
    """The command's --json output, parsed; it must succeed."""
    result = greenmqctl(port, *args, "--json", **options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def failed(result, status):
    """The one-line error of a command that must fail with `status`."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]
