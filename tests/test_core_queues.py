"""Unit tests of queues and channels through the core API, with a sink that records what a
front end would send. No broker process, no network."""

import gevent
import pytest

from greenmq.store.memory import MemoryStore
from greenmq.errors import AccessRefused, NotFound, PreconditionFailed, ResourceLocked
from greenmq.node import Node


class RecordingSink:
    def __init__(self):
        self.deliveries = []      # (channel, consumer_tag, delivery_tag, body, redelivered)
        self.cancelled = []
        self.returned = []
        self.confirms = []

    def deliver(self, channel_number, consumer_tag, delivery_tag, message):
        self.deliveries.append((channel_number, consumer_tag, delivery_tag, message.body, message.redelivered))

    def consumer_cancelled(self, channel_number, consumer_tag):
        self.cancelled.append((channel_number, consumer_tag))

    def message_returned(self, channel_number, reply_code, reply_text, message):
        self.returned.append((reply_code, reply_text, message.body))

    def publish_confirmed(self, channel_number, delivery_tag, multiple, ack):
        self.confirms.append((delivery_tag, multiple, ack))

    def bodies(self, consumer_tag=None):
        return [d[3] for d in self.deliveries if consumer_tag in (None, d[1])]


@pytest.fixture
def node():
    return Node()


PEER = ("127.0.0.1", 1)


def login(node, sink, user="guest", password="guest", vhost="/"):
    return node.open_session(node.authenticate(user, password, PEER), vhost, PEER, "test", sink)


def open_channel(node, number=1):
    sink = RecordingSink()
    return login(node, sink).open_channel(number), sink


def publish(channel, queue, *bodies):
    for body in bodies:
        channel.publish("", queue, body)


def test_consumers_of_one_queue_take_turns(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.consume("q", "c1", no_ack=True)
    ch.consume("q", "c2", no_ack=True)
    publish(ch, "q", b"1", b"2", b"3", b"4")
    assert sink.bodies("c1") == [b"1", b"3"]
    assert sink.bodies("c2") == [b"2", b"4"]


def test_prefetch_holds_messages_until_acked(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.qos(2)
    ch.consume("q", "c")
    publish(ch, "q", b"1", b"2", b"3")
    assert sink.bodies() == [b"1", b"2"]
    assert ch.vhost.queues["q"].message_count == 1
    ch.ack(1)
    assert sink.bodies() == [b"1", b"2", b"3"]


def test_fair_dispatch_sends_work_to_the_idle_consumer(node):
    busy, busy_sink = open_channel(node, 1)
    idle, idle_sink = open_channel(node, 2)
    busy.vhost.declare_queue("q")
    for ch in (busy, idle):
        ch.qos(1)
    busy.consume("q", "busy")
    idle.consume("q", "idle")
    publish(busy, "q", b"1", b"2", b"3", b"4")
    assert busy_sink.bodies() == [b"1"] and idle_sink.bodies() == [b"2"]
    for tag in (1, 2, 3):
        idle.ack(tag)
    assert busy_sink.bodies() == [b"1"]
    assert idle_sink.bodies() == [b"2", b"3", b"4"]


def test_global_prefetch_is_shared_by_the_channels_consumers(node):
    ch, sink = open_channel(node)
    for q in ("a", "b"):
        ch.vhost.declare_queue(q)
    ch.qos(1, global_=True)
    ch.consume("a", "ca")
    ch.consume("b", "cb")
    publish(ch, "a", b"a1")
    publish(ch, "b", b"b1")
    assert sink.bodies() == [b"a1"]
    ch.ack(1)
    assert sink.bodies() == [b"a1", b"b1"]


def test_qos_raised_while_consuming_applies_at_once(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.qos(1)
    ch.consume("q", "c")
    publish(ch, "q", b"1", b"2", b"3")
    assert len(sink.deliveries) == 1
    ch.qos(3)
    assert len(sink.deliveries) == 3


def test_unacked_messages_return_in_order_with_redelivered_flag_when_channel_closes(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1", b"2", b"3", b"4")
    ch.consume("q", "c")
    ch.ack(2)
    ch.session.close_channel(1)
    queue = ch.vhost.queues["q"]
    assert [(m.body, m.redelivered) for m in queue.ready] == [(b"1", True), (b"3", True), (b"4", True)]
    other, other_sink = open_channel(node, 1)
    other.consume("q", "c2", no_ack=True)
    assert [(d[3], d[4]) for d in other_sink.deliveries] == [(b"1", True), (b"3", True), (b"4", True)]


def test_requeued_messages_go_back_before_later_ones(node):
    a, a_sink = open_channel(node, 1)
    b = a.session.open_channel(2)
    a.vhost.declare_queue("q")
    a.qos(2)
    b.qos(2)
    a.consume("q", "ca")
    b.consume("q", "cb")
    publish(a, "q", b"1", b"2", b"3", b"4", b"5", b"6")
    # ca holds 1 and 3, cb holds 2 and 4; 5 and 6 wait.
    a.session.close_channel(2)   # 2 and 4 return first...
    a.nack(0, multiple=True)     # ...then 1 and 3, each back in its original place
    queue = a.vhost.queues["q"]
    delivered_since = [d[3] for d in a_sink.deliveries[4:]]
    assert delivered_since == [b"1", b"2"]   # ca's window refilled from the head, in order
    assert [m.body for m in queue.ready] == [b"3", b"4", b"5", b"6"]


def test_ack_multiple_settles_everything_up_to_the_tag(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1", b"2", b"3")
    ch.consume("q", "c")
    ch.ack(2, multiple=True)
    assert list(ch.unacked) == [3]
    assert ch.vhost.queues["q"].unacked_count == 1
    ch.ack(0, multiple=True)
    assert not ch.unacked and ch.vhost.queues["q"].unacked_count == 0


def test_unknown_and_repeated_delivery_tags_are_refused(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1")
    ch.consume("q", "c")
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 7"):
        ch.ack(7)
    ch.ack(1)
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 1"):
        ch.ack(1)


def test_nack_without_requeue_drops_and_reject_with_requeue_redelivers(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1", b"2")
    got = ch.get("q")
    ch.nack(got[0], requeue=False)
    tag, message, left = ch.get("q")
    assert (message.body, left) == (b"2", 0)
    ch.reject(tag, requeue=True)
    tag, message, _ = ch.get("q")
    assert (message.body, message.redelivered) == (b"2", True)
    assert ch.get("q") is None


def test_cancel_keeps_unacked_unless_asked_to_requeue(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1", b"2")
    ch.qos(1)
    ch.consume("q", "c1")
    ch.cancel("c1")
    assert ch.vhost.queues["q"].message_count == 1
    ch.ack(1)           # still ackable after cancel, as in AMQP
    ch.consume("q", "c2")
    assert sink.bodies("c2") == [b"2"]
    ch.cancel("c2", requeue_unacked=True)
    assert [(m.body, m.redelivered) for m in ch.vhost.queues["q"].ready] == [(b"2", True)]


def test_exclusive_queue_belongs_to_its_connection(node):
    owner, _ = open_channel(node)
    other, _ = open_channel(node)
    queue = owner.vhost.declare_queue("", exclusive=True, owner=owner.session)
    with pytest.raises(ResourceLocked):
        other.consume(queue.name)
    with pytest.raises(ResourceLocked):
        other.vhost.declare_queue(queue.name, owner=other.session)
    owner.session.close()
    assert queue.name not in owner.vhost.queues


def test_auto_delete_queue_goes_with_its_last_consumer(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q", auto_delete=True)
    ch.consume("q", "c1")
    ch.consume("q", "c2")
    ch.cancel("c1")
    assert "q" in ch.vhost.queues
    ch.cancel("c2")
    assert "q" not in ch.vhost.queues


def test_deleting_a_queue_cancels_its_consumers(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.consume("q", "c")
    ch.vhost.delete_queue("q")
    assert sink.cancelled == [(1, "c")]
    assert not ch.consumers


def test_exclusive_consumer_refuses_others(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.consume("q", "c1", exclusive=True)
    with pytest.raises(AccessRefused):
        ch.consume("q", "c2")


def test_redeclare_with_other_flags_is_a_precondition_error(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q", durable=True)
    with pytest.raises(PreconditionFailed, match="inequivalent arg 'durable' for queue 'q' in vhost '/'"):
        ch.vhost.declare_queue("q", durable=False)
    ch.vhost.declare_exchange("x", "fanout")
    with pytest.raises(PreconditionFailed, match="inequivalent arg 'type'"):
        ch.vhost.declare_exchange("x", "direct")
    assert ch.vhost.declare_exchange("x", "fanout").type == "fanout"


def test_reserved_names_and_default_exchange_are_protected(node):
    vhost = open_channel(node)[0].vhost
    with pytest.raises(AccessRefused):
        vhost.declare_exchange("amq.custom", "direct")
    with pytest.raises(AccessRefused):
        vhost.delete_exchange("amq.direct")
    with pytest.raises(AccessRefused):
        vhost.bind("q", "", "k")
    assert vhost.declare_exchange("amq.direct", "direct", durable=True).name == "amq.direct"


def test_delete_if_unused_and_if_empty(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q")
    publish(ch, "q", b"1")
    with pytest.raises(PreconditionFailed, match="not empty"):
        ch.vhost.delete_queue("q", if_empty=True)
    ch.consume("q", "c", no_ack=True)
    with pytest.raises(PreconditionFailed, match="in use"):
        ch.vhost.delete_queue("q", if_unused=True)
    ch.vhost.declare_exchange("x", "fanout")
    ch.vhost.bind("q", "x")
    with pytest.raises(PreconditionFailed, match="exchange 'x' in vhost '/' in use"):
        ch.vhost.delete_exchange("x", if_unused=True)


def test_auto_delete_exchange_goes_with_its_last_binding(node):
    vhost = open_channel(node)[0].vhost
    vhost.declare_exchange("x", "fanout", auto_delete=True)
    vhost.declare_queue("q")
    vhost.bind("q", "x")
    vhost.delete_queue("q")
    assert "x" not in vhost.exchanges


def test_mandatory_unroutable_message_is_returned_and_confirmed(node):
    ch, sink = open_channel(node)
    ch.confirm_select()
    ch.publish("", "nowhere", b"m", mandatory=True)
    with pytest.raises(NotFound):
        ch.publish("missing-exchange", "", b"m")
    ch.publish("", "nowhere", b"m")
    ch.publish("", "nowhere", b"m")
    assert sink.confirms == []                  # confirms wait for the front end's flush
    ch.session.flush_confirms()
    assert sink.returned == [(312, "NO_ROUTE", b"m")]
    assert sink.confirms == [(1, False, True), (2, False, False), (4, True, True)]


def test_user_id_must_be_the_authenticated_user(node):
    ch, _ = open_channel(node)
    with pytest.raises(PreconditionFailed, match="user_id property set to 'mallory'"):
        ch.publish("", "q", b"m", {"user_id": "mallory"})


def test_message_ttl_expires_waiting_messages(node):
    ch, sink = open_channel(node)
    queue = ch.vhost.declare_queue("q", arguments={"x-message-ttl": 20})
    publish(ch, "q", b"old")
    ch.publish("", "q", b"short", {"expiration": "0"})
    gevent.sleep(0.05)
    assert queue.message_count == 0
    publish(ch, "q", b"fresh")
    ch.consume("q", "c", no_ack=True)
    assert sink.bodies() == [b"fresh"]


def test_unused_queue_with_x_expires_is_deleted(node):
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q", arguments={"x-expires": 30})
    ch.consume("q", "c")
    gevent.sleep(0.06)
    assert "q" in ch.vhost.queues       # in use: kept
    ch.cancel("c")
    gevent.sleep(0.06)
    assert "q" not in ch.vhost.queues


def test_unwritable_session_holds_messages_in_the_queue(node):
    ch, sink = open_channel(node)
    ch.vhost.declare_queue("q")
    ch.consume("q", "c", no_ack=True)
    ch.session.set_writable(False)
    publish(ch, "q", b"1", b"2")
    assert sink.bodies() == [] and ch.vhost.queues["q"].message_count == 2
    ch.session.set_writable(True)
    assert sink.bodies() == [b"1", b"2"]


def test_waiting_messages_share_one_copy_of_their_routing_key(node):
    """Memory per queued message is a benchmark target; a key string per message costs a fifth of it."""
    ch, _ = open_channel(node)
    ch.vhost.declare_queue("q.keys")
    for _ in range(3):
        ch.publish("", "".join(["q.", "keys"]), b"x")   # a new string object each time, as a decoder makes
    keys = [message.routing_key for message in ch.vhost.queues["q.keys"].ready]
    assert len(keys) == 3 and all(key is keys[0] for key in keys)


def test_a_per_message_ttl_behind_a_message_without_one_expires_at_the_head(node):
    """RabbitMQ's rule: expiry happens at the head, so "short" outlives its TTL behind "plain"."""
    ch, sink = open_channel(node)
    queue = ch.vhost.declare_queue("q")
    publish(ch, "q", b"plain")
    ch.publish("", "q", b"short", {"expiration": "0"})
    publish(ch, "q", b"kept")
    assert queue.message_count == 3
    _, message, _ = ch.get("q", no_ack=True)
    assert message.body == b"plain"
    assert queue.message_count == 1
    ch.consume("q", "c", no_ack=True)
    assert sink.bodies() == [b"kept"]


def dead_letter_pair(ch):
    """A queue whose messages expire at once into "dead", and "dead"."""
    dead = ch.vhost.declare_queue("dead")
    queue = ch.vhost.declare_queue("q", arguments={"x-message-ttl": 0, "x-dead-letter-exchange": "",
                                                   "x-dead-letter-routing-key": "dead"})
    return queue, dead


def test_reading_a_queues_counts_ends_no_message(node):
    """A count is a number: the expired message is dropped by the TTL timer or by
    drop_expired, not by whoever reads how many are ready."""
    ch, _ = open_channel(node)
    queue, dead = dead_letter_pair(ch)
    publish(ch, "q", b"expired")
    assert queue.message_count == 1 and [row["messages_ready"] for row in ch.vhost.list_queues()] == [0, 1]
    assert node.status()["messages"] == 1 and dead.message_count == 0
    assert queue.drop_expired() == 1
    assert queue.message_count == 0 and [m.body for m in dead.ready] == [b"expired"]


def test_answers_that_count_ready_messages_leave_out_expired_ones(node):
    """declare-ok, get-ok, delete-ok and delete's if-empty check count what is left, so
    the expired messages at the head are dead-lettered first."""
    ch, _ = open_channel(node)
    queue, dead = dead_letter_pair(ch)
    publish(ch, "q", b"1")
    assert ch.vhost.declare_queue("q", passive=True).message_count == 0
    publish(ch, "q", b"2")
    assert ch.vhost.declare_queue("q", arguments=queue.arguments).message_count == 0
    publish(ch, "q", b"3")
    assert ch.get("q") is None
    publish(ch, "q", b"4")
    ch.vhost.delete_queue("q", if_empty=True)
    dead_letter_pair(ch)
    publish(ch, "q", b"5")
    assert ch.vhost.delete_queue("q") == 0
    assert [m.body for m in dead.ready] == [b"1", b"2", b"3", b"4", b"5"]


def test_messages_that_expired_while_the_broker_was_down_are_dead_lettered_at_start():
    """Expiry after a restart is expiry as always: through the dead-letter exchange, whose
    bindings are back by then, and out of the store only once kept in their new queue."""
    store = MemoryStore()
    ch, _ = open_channel(Node(store=store))
    ch.vhost.declare_queue("dead", durable=True)
    ch.vhost.declare_queue("short", durable=True, arguments={
        "x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    ch.publish("", "short", b"gone while down", {"delivery_mode": 2})
    held = store.messages["/", "short"]
    for key, (message, published_at, expires_at, redelivered, priority) in held.items():
        held[key] = (message, published_at, expires_at - 2.0, redelivered, priority)    # as if two seconds went by
    queues = Node(store=store).vhosts["/"].queues
    assert queues["short"].message_count == 0 and store.messages["/", "short"] == {}
    assert [m.body for m in queues["dead"].ready] == [b"gone while down"]
    assert len(store.messages["/", "dead"]) == 1


# -- paged queues: the pager is a greenlet of its own, so until the test yields, a paged
# head has not been read back ----------------------------------------------------------------

def paging_channel():
    return open_channel(Node(store=MemoryStore(), queue_window=2))


def publish_persistent(ch, queue, bodies):
    for body in bodies:
        ch.publish("", queue, body, {"delivery_mode": 2})


def test_drop_head_on_a_paged_head_counts_at_once_and_drops_before_it_delivers():
    ch, sink = paging_channel()
    dead = ch.vhost.declare_queue("dead")       # holds all in memory
    limited = ch.vhost.declare_queue("limited", durable=True, arguments={
        "x-max-length": 3, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    publish_persistent(ch, "limited", [b"%d" % n for n in range(10)])
    assert limited.ready.tail and limited.message_count == 3     # the paged head is not read back yet
    ch.consume("limited", "c", no_ack=True)
    gevent.idle()       # the pager reads the head back, drops it, then delivers
    assert sink.bodies("c") == [b"7", b"8", b"9"]
    assert [m.body for m in dead.ready] == [b"%d" % n for n in range(7)]


def test_a_ttl_of_0_drops_at_once_in_a_lazy_queue():
    ch, _ = paging_channel()
    lazy = ch.vhost.declare_queue("lazy", durable=True, arguments={"x-queue-mode": "lazy", "x-message-ttl": 0})
    publish_persistent(ch, "lazy", [b"a", b"b"])
    assert lazy.message_count == 0 and not lazy.ready.tail


def test_a_priority_queue_holds_no_more_ahead_than_its_window_whatever_its_priorities():
    ch, _ = open_channel(Node(store=MemoryStore(), queue_window=12))
    queue = ch.vhost.declare_queue("prio", durable=True, arguments={"x-max-priority": 5})
    for n in range(60):
        ch.publish("", "prio", b"%d" % n, {"delivery_mode": 2, "priority": n % 6})
    assert len(list(queue.ready)) <= 12 and queue.message_count == 60


def test_drop_head_without_a_dead_letter_exchange_drops_paged_heads_from_the_store_unread():
    store = MemoryStore()
    ch, _ = open_channel(Node(store=store, queue_window=2))
    limited = ch.vhost.declare_queue("limited", durable=True, arguments={"x-max-length": 3})
    publish_persistent(ch, "limited", [b"%d" % n for n in range(10)])
    # Gone from the store at once, with no read back (no pager started).
    assert limited.message_count == 3 and len(store.messages["/", "limited"]) == 3 and limited._pager is None
    assert [ch.get("limited", no_ack=True)[1].body for _ in range(3)] == [b"7", b"8", b"9"]


# -- the window in bytes: big bodies beyond it are paged, and a read-back brings no more ------

BODY_BYTES = 1000
BYTE_WINDOW = 10 * BODY_BYTES      # ten bodies, in a window of 2,048 messages


class ReadsWatched(MemoryStore):
    """A MemoryStore that records, at each read-back, the bodies' bytes a queue holds ahead
    with what it read (the read happens before the queue takes the rows in)."""

    def __init__(self):
        super().__init__()
        self.ahead_after_reads = []

    def read_queue(self, queue, after_key, limit, priority=None):
        rows = super().read_queue(queue, after_key, limit, priority)
        level = queue.ready if priority is None else queue.ready.levels[priority]
        self.ahead_after_reads.append(level.fresh_bytes + sum(len(message.body) for _, message, *_ in rows))
        return rows


def big_bodies(n):
    return [b"%03d" % number + b"x" * (BODY_BYTES - 3) for number in range(n)]


def test_a_queue_of_big_bodies_holds_its_byte_window_ahead_and_reads_back_no_more():
    store = ReadsWatched()
    ch, sink = open_channel(Node(store=store, queue_window_bytes=BYTE_WINDOW))
    queue = ch.vhost.declare_queue("big", durable=True)
    bodies = big_bodies(60)
    publish_persistent(ch, "big", bodies)
    assert len(queue.ready.fresh) == 10 and queue.ready.fresh_bytes == BYTE_WINDOW and queue.message_count == 60
    ch.qos(3)
    ch.consume("big", "c")
    acked = 0
    for _ in range(1000):       # each ack opens the prefetch window; the pager reads as it empties
        for delivery in sink.deliveries[acked:]:
            ch.ack(delivery[2])
            acked += 1
        if acked == len(bodies):
            break
        gevent.idle()
    assert sink.bodies("c") == bodies
    assert len(store.ahead_after_reads) >= 5 and max(store.ahead_after_reads) <= BYTE_WINDOW


def test_a_backlog_of_big_bodies_read_back_at_start_reads_its_byte_window_only():
    """At start a plain queue knows only how many messages it has on disk, not their bytes:
    the first read asks the store for the bytes of what it would read."""
    store = ReadsWatched()
    ch, _ = open_channel(Node(store=store, queue_window_bytes=BYTE_WINDOW))
    ch.vhost.declare_queue("big", durable=True)
    bodies = big_bodies(60)
    publish_persistent(ch, "big", bodies)
    store.ahead_after_reads.clear()
    queue = Node(store=store, queue_window_bytes=BYTE_WINDOW).vhosts["/"].queues["big"]
    assert queue.message_count == 60 and 0 < queue.ready.fresh_bytes <= BYTE_WINDOW
    assert [queue.get(no_ack=True)[0].body for _ in range(60)] == bodies
    assert max(store.ahead_after_reads) <= BYTE_WINDOW


@pytest.mark.parametrize("arguments, share", [({"x-queue-mode": "lazy"}, BYTE_WINDOW),
                                              ({"x-max-priority": 1}, BYTE_WINDOW // 2)], ids=["lazy", "priority"])
def test_lazy_and_priority_queues_read_back_big_bodies_within_their_byte_window(arguments, share):
    """A lazy queue reads PAGE_IN_MIN messages when it runs dry, but no more bytes than the
    window; each of a priority queue's priorities holds and reads its share of it."""
    store = ReadsWatched()
    ch, _ = open_channel(Node(store=store, queue_window_bytes=BYTE_WINDOW))
    queue = ch.vhost.declare_queue("big", durable=True, arguments=arguments)
    bodies = big_bodies(60)
    for number, body in enumerate(bodies):
        ch.publish("", "big", body, {"delivery_mode": 2, "priority": number % 2})
    assert sum(len(message.body) for message in queue.ready) <= BYTE_WINDOW
    taken = [queue.get(no_ack=True)[0].body for _ in range(60)]
    assert sorted(taken) == bodies and queue.message_count == 0
    assert max(store.ahead_after_reads) <= share
