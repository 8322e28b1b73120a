"""The Notify idiom: every consuming system gets every event, even those sent while it was
not running. Each system has a durable queue of its own name bound to a durable fanout
exchange; events are persistent and acknowledged once handled. Run a consumer once to
register its queue; from then on events wait for it.

    python examples/notify.py consume scheduling
    python examples/notify.py consume reporting
    python examples/notify.py produce "given:John surname:Smith"
"""
import signal
import sys

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C

EXCHANGE = 'notify.patient.add'

conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange=EXCHANGE, exchange_type='fanout', durable=True)

if len(sys.argv) >= 2 and sys.argv[1] == 'produce':
    channel.basic_publish(exchange=EXCHANGE, routing_key='', body=' '.join(sys.argv[2:]) or 'given:John surname:Smith',
                          properties=connection.BasicProperties(delivery_mode=2))
    conn.close()
elif len(sys.argv) == 3 and sys.argv[1] == 'consume':
    queue = f'{EXCHANGE}.{sys.argv[2]}'
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue=queue, exchange=EXCHANGE)

    def patient_added(ch, method, properties, body):
        print(f" [{sys.argv[2]}] {body.decode()}", flush=True)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, patient_added)
    try:
        print(f' [*] {sys.argv[2]} waiting for patients', flush=True)
        channel.start_consuming()
    except KeyboardInterrupt:
        conn.close()
else:
    sys.exit(f"Usage: {sys.argv[0]} consume SYSTEM | produce EVENT")
