import connection
import sys

if __name__ == '__main__':

    #To create a connection, pass in the address of the
    # server where the broker instance is running.
    conn = connection.Connection('localhost')

    #Create an exchange with the name 'topic' and of type direct or fanout.
    conn.create_exchange(name='topic', type='DIRECT')

    #Create a message queue which resides on
    conn.create_queue(name='topic1',exchane_name='topic')

    try:
        while True:
            print("Type the message you want to send to queue1")
            msg = input()
            conn.publish(msg, name='topic1', exchange='topic')
    except KeyboardInterrupt:
        print("Closing...")
        sys.exit(2)
