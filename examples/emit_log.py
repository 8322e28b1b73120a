"""Publish/subscribe, the producer: a log line to the fanout exchange 'logs'.

    python examples/emit_log.py [message]
"""
import sys

import connection

conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='logs', exchange_type='fanout')
message = ' '.join(sys.argv[1:]) or 'info: Hello World!'
channel.basic_publish(exchange='logs', routing_key='', body=message)
print(f" [x] Sent {message!r}")
conn.close()
