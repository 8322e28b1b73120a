"""Property tests of the ready-message containers against a reference model of RabbitMQ's
order: highest priority first (a message's `priority` capped at the queue's maximum, none
counting as 0), publish order within one priority, a requeued message back in its place
within its priority, and expiry at the head of each priority."""

from hypothesis import given, settings
from hypothesis import strategies as st

from greenmq.message import Message
from greenmq.queue_store import ReadyLevels, ReadyList


class Model:
    """RabbitMQ's order stated plainly: sort what is ready by (-priority, publish order)."""

    def __init__(self, max_priority):
        self.max_priority = max_priority
        self.ready = []
        self.published = {}     # a message or its requeued copy -> publish order
        self.count = 0

    def publish(self, message):
        self.published[message] = self.count
        self.count += 1
        self.add(message)

    def requeue(self, message, copy):
        self.published[copy] = self.published[message]
        self.add(copy)

    def level(self, message):
        priority = (message.properties or {}).get("priority") or 0
        return min(priority, self.max_priority)

    def add(self, message):
        self.ready.append(message)

    def order(self):
        return sorted(self.ready, key=lambda m: (-self.level(m), self.published[m]))

    def take(self):
        message = self.order()[0]
        self.ready.remove(message)
        return message

    def expire(self, now):
        """Per priority, the leading messages whose time has come."""
        expired = []
        for level in sorted({self.level(m) for m in self.ready}, reverse=True):
            for message in [m for m in self.order() if self.level(m) == level]:
                if message.expires_at is None or message.expires_at > now:
                    break
                expired.append(message)
                self.ready.remove(message)
        return expired


def new_message(priority, expires_at, size):
    return Message("", "q", b"x" * size, None if priority is None else {"priority": priority}).placed(
        False, expires_at)


operations = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.one_of(st.none(), st.integers(0, 12)),
              st.one_of(st.none(), st.integers(0, 5)), st.integers(0, 4)),
    st.tuples(st.just("get")),
    st.tuples(st.just("requeue"), st.integers(0, 10)),
    st.tuples(st.just("expire"), st.integers(0, 6)),
), max_size=60)


def run(ready, model, steps):
    """Taken messages are requeued as the queue does it: as a copy ranked by how many had
    been taken when the message was first taken."""
    taken = []
    gets = 0
    for step in steps:
        if step[0] == "publish":
            message = new_message(step[1], step[2], step[3])
            ready.append(message)
            model.publish(message)
        elif step[0] == "get":
            if model.ready:
                assert ready.head() is model.order()[0]
                message = ready.popleft()
                assert message is model.take()
                gets += 1
                taken.append((message, gets if message.order is None else message.order))
            else:
                assert not ready and ready.head() is None
        elif step[0] == "requeue":
            if taken:
                message, order = taken.pop(step[1] % len(taken))
                copy = message.placed(True, message.expires_at, order)
                ready.put_back(copy)
                model.requeue(message, copy)
        else:
            assert list(ready.take_expired(step[1])) == model.expire(step[1])
            heads = {model.level(m): m for m in reversed(model.order())}.values()
            assert ready.next_expiry() == min((m.expires_at for m in heads if m.expires_at is not None), default=None)
        assert list(ready) == model.order()
        assert len(ready) == len(model.ready)
        if isinstance(ready, ReadyLevels):
            assert ready.bytes == sum(len(m.body) for m in model.ready)
    assert ready.take_all() == model.order() and len(ready) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10), operations)
def test_priority_levels_keep_rabbitmqs_order(max_priority, steps):
    run(ReadyLevels(max_priority), Model(max_priority), steps)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_a_plain_ready_list_keeps_publish_order_whatever_the_priorities(steps):
    run(ReadyList(), Model(0), steps)
