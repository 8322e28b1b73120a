"""The Request/Response idiom, the caller: sends a request with reply_to set to its own
exclusive, server-named queue and waits for the answer carrying its correlation_id.
Start examples/rpc_server.py first.

    python examples/rpc_client.py "John Smith"
"""
import sys
import uuid

import connection


def call(channel, request, timeout=10.0):
    reply_queue = channel.queue_declare('', exclusive=True, auto_delete=True).method.queue
    correlation_id = str(uuid.uuid4())
    channel.basic_publish(exchange='api', routing_key='add_patient', body=request,
                          properties=connection.BasicProperties(reply_to=reply_queue, correlation_id=correlation_id))
    for method, properties, body in channel.consume(reply_queue, auto_ack=True, inactivity_timeout=timeout):
        if method is None:
            raise TimeoutError(f"no answer in {timeout} s")
        if properties.correlation_id == correlation_id:
            return body.decode()


conn = connection.Connection('localhost')
try:
    print(f" [.] Got {call(conn.channel(), ' '.join(sys.argv[1:]) or 'John Smith')!r}")
except (connection.NotFound, TimeoutError) as exc:   # NotFound: no exchange 'api' yet
    sys.exit(f"no answer ({exc}): is examples/rpc_server.py running?")
conn.close()
