"""The Broadcast idiom: producers send to a fanout exchange and do not care who listens;
listeners come and go, each with a temporary queue of its own, and hear only what is sent
while they listen (sports scores, say).

    python examples/broadcast.py listen
    python examples/broadcast.py send "AL 24: FL 7"
"""
import signal
import sys

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C

EXCHANGE = 'score_updates'

conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange=EXCHANGE, exchange_type='fanout', auto_delete=True)

if sys.argv[1:2] == ['send']:
    channel.basic_publish(exchange=EXCHANGE, routing_key='', body=' '.join(sys.argv[2:]) or 'score!')
    conn.close()
elif sys.argv[1:2] == ['listen']:
    queue = channel.queue_declare('', exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, EXCHANGE)
    channel.basic_consume(queue, lambda ch, method, props, body: print(body.decode(), flush=True),
                          auto_ack=True)
    try:
        print(' [*] Listening for score updates', flush=True)
        channel.start_consuming()
    except KeyboardInterrupt:
        conn.close()
else:
    sys.exit(f"Usage: {sys.argv[0]} listen | send MESSAGE")
