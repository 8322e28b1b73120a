"""Headers routing, a receiver: gets messages whose headers match all (or any) of the
given name=value pairs.

    python examples/receive_headers.py all format=pdf type=report
    python examples/receive_headers.py any format=pdf format=zip
"""
import signal
import sys

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C


def callback(channel, method, properties, body):
    print(f" [x] {properties.headers}:{body.decode()!r}", flush=True)


if len(sys.argv) < 3 or sys.argv[1] not in ('all', 'any'):
    sys.exit(f"Usage: {sys.argv[0]} all|any name=value...")
match, pairs = sys.argv[1], [arg.split('=', 1) for arg in sys.argv[2:]]
conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='reports', exchange_type='headers')
queue_name = channel.queue_declare('', exclusive=True).method.queue
if match == 'all':
    channel.queue_bind(queue_name, 'reports', '', arguments={'x-match': 'all', **dict(pairs)})
else:
    for name, value in pairs:   # one binding per pair: a table cannot repeat a name
        channel.queue_bind(queue_name, 'reports', '', arguments={'x-match': 'any', name: value})
channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
try:
    print(' [*] Waiting for reports. To exit press CTRL+C', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
