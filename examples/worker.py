"""Work queue, a worker: takes one task at a time (prefetch 1, so a busy worker gets no
more), works a second per dot, then acknowledges. Run several to share the work; a worker
that dies before acking gives its task back to the others.

    python examples/worker.py [seconds per dot, default 1]
"""
import signal
import sys
import time

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C

SECONDS_PER_DOT = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


def callback(channel, method, properties, body):
    task = body.decode()
    print(f" [x] Received {task!r}", flush=True)
    time.sleep(task.count('.') * SECONDS_PER_DOT)
    print(f" [x] Done {task!r}", flush=True)
    channel.basic_ack(delivery_tag=method.delivery_tag)


conn = connection.Connection('localhost')
channel = conn.channel()
channel.queue_declare(queue='task_queue', durable=True)
channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue='task_queue', on_message_callback=callback)
try:
    print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
