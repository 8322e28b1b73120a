"""The route cache of an exchange (results per routing key, until the bindings change):
bounded by ROUTE_CACHE_SIZE however many distinct keys go by, and never wrong. No broker:
what the cache holds cannot be seen from outside a process."""

from greenmq.exchange import ROUTE_CACHE_SIZE, DirectExchange, TopicExchange

# A stream of unique keys (an id in each), three times what the cache may hold.
KEYS = 3 * ROUTE_CACHE_SIZE


def test_a_stream_of_distinct_routing_keys_leaves_the_cache_at_its_bound():
    """A cached route is handed out again as the same result; a recomputed one is a new
    one. Every key still cached when the stream ended was cached at once, so at most
    ROUTE_CACHE_SIZE of them may come back the same."""
    exchange = TopicExchange("orders")
    exchange.bind("audit", "order.#")
    first_routes = [exchange.route(f"order.{number}") for number in range(KEYS)]
    assert exchange.route(f"order.{KEYS - 1}") is first_routes[-1]     # the cache is in use
    still_cached = sum(exchange.route(f"order.{number}") is first_routes[number] for number in range(KEYS))
    assert still_cached <= ROUTE_CACHE_SIZE


def test_routes_stay_right_after_the_cache_is_full_and_when_bindings_change():
    exchange = DirectExchange("jobs")
    exchange.bind("even", "job.0")
    exchange.bind("odd", "job.1")
    for _ in range(2):     # the second round finds the cache full of the first's keys
        for number in range(KEYS):
            assert exchange.route(f"job.{number}") == (("even",) if number == 0 else ("odd",) if number == 1 else ())
    exchange.bind("odd", "job.0")
    exchange.unbind("odd", "job.1")
    assert (exchange.route("job.0"), exchange.route("job.1")) == (("even", "odd"), ())
