"""Topic routing, a receiver: binds its own queue with each binding key given, where '*'
stands for one word and '#' for any number of words.

    python examples/receive_logs_topic.py "kern.*" "*.critical"
"""
import signal
import sys

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C


def callback(channel, method, properties, body):
    print(f" [x] {method.routing_key}:{body.decode()!r}", flush=True)


binding_keys = sys.argv[1:]
if not binding_keys:
    sys.exit(f"Usage: {sys.argv[0]} [binding_key]...")
conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='topic_logs', exchange_type='topic')
queue_name = channel.queue_declare('', exclusive=True).method.queue
for binding_key in binding_keys:
    channel.queue_bind(exchange='topic_logs', queue=queue_name, routing_key=binding_key)
channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
try:
    print(' [*] Waiting for logs. To exit press CTRL+C', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
