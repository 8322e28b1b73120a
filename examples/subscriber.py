import connection

def print_message(msg):
    print(msg)
    print('\n\n\n')

if __name__ == '__main__':

    conn = connection.Connection('localhost')
    #Subscribe to the default queue by not providing details
    #like queue name
    conn.subscribe(callback=print_message)
