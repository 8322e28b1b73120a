"""Headers routing, the producer: a message whose headers, not its routing key, decide
where it goes (exchange 'reports', type headers).

    python examples/emit_headers.py format=pdf type=report "Q3 numbers"
"""
import sys

import connection

headers = dict(arg.split('=', 1) for arg in sys.argv[1:] if '=' in arg)
message = ' '.join(arg for arg in sys.argv[1:] if '=' not in arg) or 'Hello World!'
conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='reports', exchange_type='headers')
channel.basic_publish(exchange='reports', routing_key='', body=message,
                      properties=connection.BasicProperties(headers=headers))
print(f" [x] Sent {headers}:{message!r}")
conn.close()
