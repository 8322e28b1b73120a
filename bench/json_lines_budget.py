"""Where a GreenMQ broker's time goes per JSON-lines message: its CPU time per message (user
and system, from /proc) in bench/throughput.py's workload (connection.py, one producer to
one consumer, 100-byte transient messages, auto-ack), split by stage after py-spy's
samples of the running broker, as bench/amqp_budget.py does for AMQP.

    pip install py-spy                          # into the same environment
    python bench/json_lines_budget.py           # this checkout's broker (Linux only: /proc)
    python bench/json_lines_budget.py --root DIR    # another checkout's broker, same clients
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from amqp_budget import find_py_spy, print_stages, profiled  # noqa: E402
from tests.broker_process import BrokerProcess  # noqa: E402
from throughput import throughput  # noqa: E402

# Stages by the functions that own them, most specific first; a sample belongs to the first
# found walking its stack from the innermost frame out. The JSON scanner is C: its time
# shows in the frame that calls it.
STAGES = (
    ("output waiting, taken: transport", r"^FrontEndConnection\.(_write|take_output)$"),
    ("deliver line: protocol", r"^(JsonLinesProtocol\.deliver|_message_json)$"),
    ("publish request's fields: protocol", r"^JsonLinesProtocol\.(op_publish|_channel)$"),
    ("lines in (split, checks, JSON): protocol",
     r"^(JSONDecoder\.|_decode_line$|_nesting_depth$|JsonLinesProtocol\.(_handle_line|data_received)$)"),
    ("publish: core (session, message, access)", r"^(Channel\.publish|Message\.|Session\.|Permission\.)"),
    ("route: core (vhost, exchange)", r"^(VirtualHost\.|\w*Exchange\.)"),
    ("deliver out: core (queue_store, session)",
     r"^(Queue\.|ReadyList\.|Channel\.(deliver|can_deliver|update_active|_dispatch_all)|Consumer\.)"),
    ("transport, hub", r"^(_send_ready|_Output\.|SocketMixin\.|Hub\.|connection_handler|sleep)"),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the GreenMQ checkout whose broker.py to measure (default: this one)")
    parser.add_argument("--messages", type=int, default=1_000_000)     # about 1,500 samples
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    py_spy = find_py_spy()
    script = os.path.join(os.path.abspath(args.root), "broker.py") if args.root else "broker.py"
    with BrokerProcess(script=script) as broker, \
            tempfile.TemporaryDirectory(prefix="greenmq-budget-") as directory:
        throughput(broker.port, args.messages // 10, args.size)        # warm up
        rate, user, system, stage_shares = profiled(
            broker.pid, py_spy, os.path.join(directory, "json-lines.txt"), args.messages, STAGES,
            lambda: throughput(broker.port, args.messages, args.size))
        print(f"JSON lines 1 -> 1 ({script}): {rate:,.0f} msg/s; broker CPU per message: {user:.2f} us user, "
              f"{system:.2f} us system")
        print_stages(user, stage_shares, STAGES)


if __name__ == "__main__":
    main()
