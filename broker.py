"""`python3 broker.py`: the broker (greenmq/broker.py), started from a checkout."""

import sys

from greenmq.broker import main

if __name__ == "__main__":
    sys.exit(main())
