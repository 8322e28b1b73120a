"""Hello world, the consumer: prints what arrives on 'hello' and acknowledges it.

    python examples/receive.py        (Ctrl-C to stop)
"""
import signal

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C


def callback(channel, method, properties, body):
    print(f" [x] Received {body.decode()!r}", flush=True)
    channel.basic_ack(delivery_tag=method.delivery_tag)


conn = connection.Connection('localhost')
channel = conn.channel()
channel.queue_declare(queue='hello')
channel.basic_consume(queue='hello', on_message_callback=callback)
try:
    print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
