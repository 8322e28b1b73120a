"""Unit tests of exchange routing: no broker, no network."""

from hypothesis import given, strategies as st

import pytest

from greenmq.errors import InvalidExchangeType, PreconditionFailed
from greenmq.exchange import (DefaultExchange, DirectExchange, FanoutExchange, HeadersExchange,
                      TopicExchange, exchange_class)

# RabbitMQ's own topic-matching table (rabbit's topic exchange unit tests).
TOPIC_BINDINGS = {
    "t1": "a.b.c", "t2": "a.*.c", "t3": "a.#.b", "t4": "a.b.b.c", "t5": "#", "t6": "#.#",
    "t7": "#.b", "t8": "*.*", "t9": "a.*", "t10": "*.b.c", "t11": "a.#", "t12": "a.#.#",
    "t13": "b.b.c", "t14": "a.b.b", "t15": "a.b", "t16": "b.c", "t17": "", "t18": "*.*.*",
    "t19": "vodka.martini", "t20": "a.b.c", "t21": "*.#", "t22": "#.*.#", "t23": "*.#.#",
    "t24": "#.#.#", "t25": "*", "t26": "#.b.#",
}
TOPIC_EXPECTED = {
    "a.b.c": "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26",
    "a.b": "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26",
    "a.b.b": "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26",
    "": "t5 t6 t17 t24",
    "b.c.c": "t5 t6 t18 t21 t22 t23 t24 t26",
    "a.a.a.a.a": "t5 t6 t11 t12 t21 t22 t23 t24",
    "vodka.gin": "t5 t6 t8 t21 t22 t23 t24",
    "vodka.martini": "t5 t6 t8 t19 t21 t22 t23 t24",
    "b.b.c": "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26",
    "nothing.here.at.all": "t5 t6 t21 t22 t23 t24",
    "oneword": "t5 t6 t21 t22 t23 t24 t25",
}


@pytest.fixture
def topic():
    exchange = TopicExchange("t")
    for queue, key in TOPIC_BINDINGS.items():
        exchange.bind(queue, key)
    return exchange


@pytest.mark.parametrize("routing_key", sorted(TOPIC_EXPECTED))
def test_topic_matches_rabbitmq_table(topic, routing_key):
    assert sorted(topic.route(routing_key)) == sorted(TOPIC_EXPECTED[routing_key].split())


def test_topic_unbind_removes_only_that_binding(topic):
    topic.unbind("t5", "#")
    topic.unbind("t6", "#.#")
    assert sorted(topic.route("oneword")) == ["t21", "t22", "t23", "t24", "t25"]
    for queue, key in TOPIC_BINDINGS.items():
        topic.unbind(queue, key)
    assert topic.route("a.b.c") == ()
    assert not topic._trie.children and not topic._trie.destinations


def _reference_match(pattern, words):
    if not pattern:
        return not words
    if pattern[0] == "#":
        return any(_reference_match(pattern[1:], words[i:]) for i in range(len(words) + 1))
    return bool(words) and pattern[0] in ("*", words[0]) and _reference_match(pattern[1:], words[1:])


def _split(key):
    return key.split(".") if key else []


_word = st.sampled_from(["a", "b", "c", ""])
_keys = st.lists(_word, max_size=5).map(".".join)
_patterns = st.lists(st.sampled_from(["a", "b", "*", "#"]), max_size=5).map(".".join)


@given(st.lists(_patterns, min_size=1, max_size=6), st.lists(_keys, min_size=1, max_size=5))
def test_topic_trie_agrees_with_reference_matcher(patterns, keys):
    exchange = TopicExchange("t")
    for i, pattern in enumerate(patterns):
        exchange.bind(i, pattern)
    for key in keys:
        expected = [i for i, pattern in enumerate(patterns) if _reference_match(_split(pattern), _split(key))]
        assert sorted(exchange.route(key)) == expected, (patterns, key)


def test_direct_routes_exact_keys_once_per_queue():
    exchange = DirectExchange("d")
    exchange.bind("q1", "k")
    exchange.bind("q1", "k", {"x": 1})  # a second binding to the same queue: still one copy
    exchange.bind("q2", "other")
    assert exchange.route("k") == ("q1",)
    assert exchange.route("none") == ()


def test_binding_is_idempotent_and_unbind_reports_absence():
    exchange = DirectExchange("d")
    assert exchange.bind("q", "k") is True
    assert exchange.bind("q", "k") is False
    assert exchange.unbind("q", "k") is True
    assert exchange.unbind("q", "k") is False


def test_route_cache_is_invalidated_by_bind_and_unbind():
    exchange = DirectExchange("d")
    assert exchange.route("k") == ()
    exchange.bind("q", "k")
    assert exchange.route("k") == ("q",)
    exchange.unbind("q", "k")
    assert exchange.route("k") == ()


def test_fanout_ignores_routing_key():
    exchange = FanoutExchange("f")
    exchange.bind("q1", "x")
    exchange.bind("q2", "")
    assert exchange.route("anything") == ("q1", "q2")


@pytest.mark.parametrize("arguments, headers, matches", [
    ({"x-match": "all", "format": "pdf", "type": "report"}, {"format": "pdf", "type": "report"}, True),
    ({"x-match": "all", "format": "pdf", "type": "report"}, {"format": "pdf"}, False),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {"format": "pdf"}, True),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {"format": "zip"}, False),
    ({"format": "pdf"}, {"format": "pdf", "extra": 1}, True),            # all is the default
    ({"x-match": "all"}, {}, True),                                     # nothing to match: all holds
    ({"x-match": "any"}, {"a": 1}, False),
    ({"n": 1}, {"n": 1.0}, False),                                      # types must agree
    ({"n": 1}, {"n": True}, False),
    ({"n": None}, {"n": "whatever"}, True),                             # void matches presence
    ({"n": None}, {}, False),
    ({"x-match": "all", "x-k": 1}, {}, True),                           # x- arguments are not matched
    ({"x-match": "all-with-x", "x-k": 1}, {}, False),
    ({"x-match": "any-with-x", "x-k": 1}, {"x-k": 1}, True),
])
def test_headers_matching(arguments, headers, matches):
    exchange = HeadersExchange("h")
    exchange.bind("q", "", arguments)
    assert exchange.route("", {"headers": headers}) == (("q",) if matches else ())


def test_headers_binding_with_bad_x_match_is_refused():
    with pytest.raises(PreconditionFailed):
        HeadersExchange("h").bind("q", "", {"x-match": "some"})


def test_default_exchange_routes_to_the_queue_named_by_the_key():
    queues = {"q": "the queue"}
    exchange = DefaultExchange(queues)
    assert exchange.route("q") == ("the queue",)
    assert exchange.route("other") == ()


def test_unknown_exchange_type_is_command_invalid_closing_the_channel():
    with pytest.raises(InvalidExchangeType) as error:
        exchange_class("x-custom")
    assert error.value.code == 406
