"""The settings file, the environment and flags: which wins, and what is refused."""

import os
import re
import subprocess
import sys
import tempfile

import pytest

from greenmq import config
from greenmq import connection
from tests.broker_process import ROOT, BrokerProcess

EXAMPLE = os.path.join(ROOT, "greenmq.example.toml")


def environment(**variables):
    """This process's environment without GREENMQ_ settings, plus `variables`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GREENMQ_")}
    env.update(variables)
    return env


def max_message_bytes(broker):
    """A setting every client sees: hello's answer carries it."""
    with connection.Connection("127.0.0.1", broker.port) as client:
        return client.server_properties["max_message_bytes"]


@pytest.mark.parametrize("in_environment, on_the_command_line, expected", [
    (False, False, 5000),       # the file's
    (True, False, 6000),        # the environment over the file
    (True, True, 7000),         # the flag over both
    (False, True, 7000),
])
def test_flags_win_over_the_environment_and_the_environment_over_the_file(
        tmp_path, in_environment, on_the_command_line, expected):
    settings = tmp_path / "greenmq.toml"
    settings.write_text('max_message_bytes = 5000\nin_memory = true\nlog_level = "warning"\n')
    env = environment(GREENMQ_MAX_MESSAGE_BYTES="6000") if in_environment else environment()
    flags = ("--max-message-bytes", "7000") if on_the_command_line else ()
    with BrokerProcess("--config", str(settings), *flags, env=env) as broker:
        assert max_message_bytes(broker) == expected
        assert "listening for" not in broker.log()   # the file's other settings apply too


def test_the_config_file_can_be_named_by_the_environment(tmp_path):
    settings = tmp_path / "greenmq.toml"
    settings.write_text("max_message_bytes = 4096\nin_memory = true\n")
    with BrokerProcess(env=environment(GREENMQ_CONFIG=str(settings))) as broker:
        assert max_message_bytes(broker) == 4096


def start_refused(*args, env=None):
    """The broker's one-line refusal to start. No other flags: they would win over what is
    tested; the working directory is a temporary one, should it start after all."""
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run([sys.executable, os.path.join(ROOT, "broker.py"), *args], cwd=directory,
                                capture_output=True, text=True, timeout=20, env=env or environment())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("content, message", [
    ("colour = 'green'\n", "unknown key 'colour' in"),
    ("amqp-port = 5673\n", "unknown key 'amqp-port' in"),
    ("port = 'five'\n", "'port' in .* must be between 0 and 65535"),
    ("port = 70000\n", "'port' in .* must be between 0 and 65535"),
    ("max_line_bytes = 10\n", "'max_line_bytes' in .* must be an integer of at least 1024"),
    ("max_line_bytes = 4096\n", "max_line_bytes must be at least 180005548, to carry a base64 body"),
    ("max_message_bytes = 0\n", "'max_message_bytes' in .* must be a positive integer"),
    ("hello_timeout = 0\n", "'hello_timeout' in .* must be a number of seconds above 0"),
    ("in_memory = 'yes'\n", "'in_memory' in .* must be true or false"),
    ("log_level = 'loud'\n", "'log_level' in .* must be one of debug, info, warning, error"),
    ("host = ''\n", "'host' in .* must be a non-empty string"),
    ("port = \n", "is not valid TOML"),
    ("[section]\nport = 1\n", "unknown key 'section' in"),
])
def test_a_bad_config_file_is_refused_with_the_key_named(tmp_path, content, message):
    settings = tmp_path / "greenmq.toml"
    settings.write_text(content)
    assert re.search(message, start_refused("--config", str(settings)))


def test_a_missing_config_file_and_bad_environment_values_are_refused(tmp_path):
    assert "cannot read the config file /no/such.toml" in start_refused("--config", "/no/such.toml")
    assert "$GREENMQ_MAX_LINE_BYTES must be an integer of at least 1024, not 'lots'" in start_refused(
        env=environment(GREENMQ_MAX_LINE_BYTES="lots"))
    assert "$GREENMQ_IN_MEMORY must be true or false" in start_refused(env=environment(GREENMQ_IN_MEMORY="maybe"))


def test_the_example_file_documents_every_setting_and_is_accepted(tmp_path):
    text = open(EXAMPLE).read()
    for name in config.SETTINGS:
        assert re.search(rf"^(# )?{name} = ", text, re.MULTILINE), f"{name} is not in {EXAMPLE}"
    settings = config.load_settings(["--config", EXAMPLE], environ={})
    for name, (_, default, _) in config.SETTINGS.items():
        assert getattr(settings, name) == default, name       # the file shows the defaults
    uncommented = "\n".join(line.lstrip("# ") for line in text.splitlines() if re.match(r"^# \w+ = ", line))
    (tmp_path / "uncommented.toml").write_text(uncommented)      # the commented-out keys are valid too
    settings = config.load_settings(["--config", str(tmp_path / "uncommented.toml")], environ={})
    assert settings.tls_cert == "/etc/greenmq/server.pem" and settings.log_file == "/var/log/greenmq/greenmq.log"


def test_help_lists_every_setting_as_a_flag():
    result = subprocess.run([sys.executable, "broker.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    for name, (check, default, _) in config.SETTINGS.items():
        flag = ("--no-" if default is True else "--") + name.replace("_", "-")
        assert flag in result.stdout, flag


def test_log_levels_are_taken_in_either_case_and_kept_lower_case():
    assert config.load_settings(["--log-level", "WARNING"], environ={}).log_level == "warning"
    assert config.load_settings([], environ={"GREENMQ_LOG_LEVEL": "Debug"}).log_level == "debug"
