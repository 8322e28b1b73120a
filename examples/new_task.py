"""Work queue, the producer: a persistent task on the durable queue 'task_queue'.
Each dot in the message is a second of work for the worker.

    python examples/new_task.py First message.
"""
import sys

import connection

conn = connection.Connection('localhost')
channel = conn.channel()
channel.queue_declare(queue='task_queue', durable=True)
message = ' '.join(sys.argv[1:]) or 'Hello World!'
channel.basic_publish(exchange='', routing_key='task_queue', body=message,
                      properties=connection.BasicProperties(delivery_mode=2))  # persistent
print(f" [x] Sent {message!r}")
conn.close()
