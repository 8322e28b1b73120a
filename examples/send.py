"""Hello world, the producer: one message to the queue 'hello'.

    python examples/send.py [message]
"""
import sys

import connection

conn = connection.Connection('localhost')
channel = conn.channel()
channel.queue_declare(queue='hello')
message = ' '.join(sys.argv[1:]) or 'Hello World!'
channel.basic_publish(exchange='', routing_key='hello', body=message)
print(f" [x] Sent {message!r}")
conn.close()
