"""Publish/subscribe, a receiver: a fresh server-named queue of its own, bound to 'logs',
deleted when the receiver goes. Every running receiver gets every log line.

    python examples/receive_logs.py > logs_from_greenmq.log
"""
import signal

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C


def callback(channel, method, properties, body):
    print(f" [x] {body.decode()!r}", flush=True)


conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='logs', exchange_type='fanout')
queue_name = channel.queue_declare(queue='', exclusive=True).method.queue
channel.queue_bind(exchange='logs', queue=queue_name)
channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
try:
    print(' [*] Waiting for logs. To exit press CTRL+C', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
