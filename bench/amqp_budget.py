"""Where a GreenMQ broker's time goes per AMQP message: the broker's CPU time per published
message (user and system, from /proc) in each workload of amqp_broker_bound.py, split by
stage after py-spy's samples of the running broker.

    pip install py-spy                 # into the same environment
    python bench/amqp_budget.py        # starts GreenMQ itself (Linux only: /proc)

A sample belongs to the first stage found walking its stack from the innermost frame out;
samples of the hub's thread pool count only when they hash passwords (logins).
"""

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from amqp_broker_bound import WORKLOADS, byte_size, messages_for  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402

# Stages by the functions that own them, most specific first.
STAGES = (
    ("frames in: AMQP front end", r"^(AmqpConnection\.(?!deliver|_send_content|take_output)|decode_|_decode_)"),
    ("deliver out: AMQP front end",
     r"^(AmqpConnection\.(deliver|_send_content)|deliver_method|_encoded_short_string|_encode_properties"
     r"|FrontEndConnection\._write)$"),
    ("publish: core (session, message, access)", r"^(Channel\.publish|Message\.|Session\.check|Permission\.)"),
    ("route: core (vhost, exchange)", r"^(VirtualHost\.|\w*Exchange\.)"),
    ("deliver out: core (queue_store, session)", r"^(Queue\.|ReadyList\.|Channel\.(deliver|can_deliver)|Consumer\.)"),
    ("ack: core (session)", r"^Channel\.(ack|_take|_redispatch|_settle)"),
    ("transport, hub", r"^(_send_ready|_Output\.|SocketMixin\.|Hub\.|connection_handler|sleep|\w+\.take_output)"),
)
SAMPLES_PER_SECOND = 250


def stage_of(frames, stages=STAGES):
    """The stage of one sampled stack (outermost frame first), or None to leave it out."""
    names = [re.sub(r" \(.*\)$", "", frame) for frame in frames]
    if any(name.startswith("_WorkerGreenlet") for name in names):
        return "logins (password hashing)" if any("check_password" in name for name in names) else None
    for name in reversed(names):
        for stage, pattern in stages:
            if re.search(pattern, name):
                return stage
    return "other"


def shares(raw_path, stages=STAGES):
    """Each stage's share of the samples in py-spy's raw output."""
    counts, total = collections.Counter(), 0
    with open(raw_path) as raw:
        for line in raw:
            stack, _, count = line.rstrip().rpartition(" ")
            stage = stage_of(stack.split(";"), stages)
            if stage is not None:
                counts[stage] += int(count)
                total += int(count)
    return {stage: count / total for stage, count in counts.items()} if total else {}


def cpu_seconds(pid):
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def find_py_spy():
    """py-spy's path (on PATH or beside this Python), or None after saying what is missing."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if not py_spy:
        print("py-spy not found (pip install py-spy): CPU time only, no stages")
    return py_spy


def profiled(pid, py_spy, raw_path, messages, stages, run):
    """run(), with process `pid` sampled by py-spy (if given) into `raw_path` meanwhile:
    (its result, user and system microseconds of `pid` per message, each stage's share)."""
    sampler = None
    if py_spy:
        sampler = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND),
                                    "--nonblocking", "--format", "raw", "--output", raw_path],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    user_before, system_before = cpu_seconds(pid)
    result = run()
    user_after, system_after = cpu_seconds(pid)
    if sampler is not None:
        sampler.send_signal(signal.SIGINT)
        sampler.wait()
    per_message = 1e6 / messages
    return (result, (user_after - user_before) * per_message, (system_after - system_before) * per_message,
            shares(raw_path, stages) if sampler is not None and os.path.exists(raw_path) else {})


def print_stages(user, stage_shares, stages=STAGES):
    for stage in [stage for stage, _ in stages] + ["logins (password hashing)", "other"]:
        if stage in stage_shares:
            print(f"    {stage:42} {stage_shares[stage] * user:6.2f} us  ({stage_shares[stage]:.0%})")


def measure(broker, url, workload, args, py_spy, directory):
    return profiled(broker.pid, py_spy, os.path.join(directory, f"{workload}.txt"), args.messages, STAGES,
                    lambda: WORKLOADS[workload](url, args))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, help="per workload (default: fewer for big bodies)")
    parser.add_argument("--size", type=byte_size, default=100, help="body size, e.g. 100, 64KiB, 1MiB")
    args = parser.parse_args()
    args.messages = args.messages or messages_for(args.size)
    py_spy = find_py_spy()
    with BrokerProcess() as broker, tempfile.TemporaryDirectory(prefix="greenmq-budget-") as directory:
        url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"
        for workload in ("no-ack", "acked", "fanout"):
            result, user, system, stage_shares = measure(broker, url, workload, args, py_spy, directory)
            (name, rate), = result.items()
            print(f"{name}: {rate:,.0f}; broker CPU per published message: {user:.2f} us user, "
                  f"{system:.2f} us system")
            print_stages(user, stage_shares)


if __name__ == "__main__":
    main()
