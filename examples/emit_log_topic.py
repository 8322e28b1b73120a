"""Topic routing, the producer: a message with a dotted routing key
('<facility>.<severity>') to the topic exchange 'topic_logs'.

    python examples/emit_log_topic.py kern.critical "A critical kernel error"
"""
import sys

import connection

conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='topic_logs', exchange_type='topic')
routing_key = sys.argv[1] if len(sys.argv) > 1 else 'anonymous.info'
message = ' '.join(sys.argv[2:]) or 'Hello World!'
channel.basic_publish(exchange='topic_logs', routing_key=routing_key, body=message)
print(f" [x] Sent {routing_key}:{message!r}")
conn.close()
