"""The Request/Response idiom, the responder: serves 'add_patient' requests from the direct
exchange 'api' and answers each on the queue named by its reply_to, with the request's
correlation_id. Exchange and queue are auto-delete, as in the idiom: with no responder
running, requests fail at once instead of piling up.

    python examples/rpc_server.py
"""
import signal

import connection

signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C


def add_patient(channel, method, properties, body):
    reply = f"added {body.decode()}"
    channel.basic_publish(exchange='', routing_key=properties.reply_to, body=reply,
                          properties=connection.BasicProperties(correlation_id=properties.correlation_id))
    print(f" [.] {reply}", flush=True)


conn = connection.Connection('localhost')
channel = conn.channel()
channel.exchange_declare(exchange='api', exchange_type='direct', auto_delete=True)
channel.queue_declare(queue='add_patient', auto_delete=True)
channel.queue_bind(exchange='api', queue='add_patient', routing_key='add_patient')
channel.basic_consume(queue='add_patient', on_message_callback=add_patient, auto_ack=True)
try:
    print(' [*] Awaiting requests', flush=True)
    channel.start_consuming()
except KeyboardInterrupt:
    conn.close()
