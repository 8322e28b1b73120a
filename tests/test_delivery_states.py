"""A state machine test of unacknowledged deliveries: Hypothesis drives a core node
through declares, consumers with prefetch windows, gets, publishes, acks, nacks and
rejects (single and multiple, requeued or not), cancels, channel and connection closes and
queue deletes, and after every step compares each count the broker keeps (per channel,
per consumer, per queue, ready, totals, memory held) with a model that knows only which
deliveries are outstanding and which messages are ready."""

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from greenmq.errors import PreconditionFailed
from greenmq.memory import MESSAGE_OVERHEAD_BYTES
from greenmq.node import Node

QUEUES = ("q1", "q2")
CHANNELS = ((0, 1), (0, 2), (1, 1))     # (connection, channel number)
PEER = ("127.0.0.1", 1)
# Windows that fill are where deliveries wait, so small ones come first (0 is none).
PREFETCH = st.sampled_from((1, 2, 0))


class Sink:
    def __init__(self):
        self.deliveries = []        # (channel number, consumer tag, delivery tag, message)
        self.cancelled = []

    def deliver(self, channel_number, consumer_tag, delivery_tag, message):
        self.deliveries.append((channel_number, consumer_tag, delivery_tag, message))

    def consumer_cancelled(self, channel_number, consumer_tag):
        self.cancelled.append((channel_number, consumer_tag))

    def message_returned(self, channel_number, reply_code, reply_text, message):
        raise AssertionError("nothing here is published mandatory")

    def publish_confirmed(self, channel_number, delivery_tag, multiple, ack):
        raise AssertionError("nothing here is in confirm mode")


class ModelChannel:
    """What a channel should hold: its outstanding deliveries by tag, as
    (queue incarnation, consumer tag or None for basic.get, body), and its windows."""

    def __init__(self, core):
        self.core = core
        self.outstanding = {}
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.consumers = {}         # consumer tag -> (queue incarnation, no_ack, prefetch)

    def consumer_deliveries(self):
        return sum(1 for _, consumer_tag, _ in self.outstanding.values() if consumer_tag is not None)


class Deliveries(RuleBasedStateMachine):
    """The model: for each queue incarnation the bodies ready in it; for each channel its
    outstanding deliveries. A queue deleted and declared again is a new incarnation, and
    what is requeued to a deleted one is gone."""

    @initialize()
    def start(self):
        self.node = Node()
        self.held_before = self.node.memory.held_bytes
        self.sinks = {}
        self.sessions = {}
        self.channels = {}          # channel key -> ModelChannel
        publisher_session = self.node.open_session(self.node.users["guest"], "/", PEER, "test", Sink())
        self.publisher = publisher_session.open_channel(1)
        self.vhost = self.publisher.vhost
        self.incarnation = {}       # queue name -> its current incarnation (an int)
        self.incarnations = 0
        self.ready = {}             # incarnation -> Counter of bodies ready in it
        self.requeued = set()       # bodies that went back to a queue once: redelivered
        self.bodies = 0
        self.consumer_tags = 0
        self.seen = {}              # connection -> deliveries of its sink already taken in
        for key in CHANNELS:
            self.open_channel(key)
        for name in QUEUES:
            self.declare(name)

    # -- helpers ---------------------------------------------------------------------

    def connection(self, index):
        session = self.sessions.get(index)
        if session is None:
            sink = self.sinks[index] = Sink()
            session = self.sessions[index] = self.node.open_session(
                self.node.users["guest"], "/", PEER, "test", sink)
            self.seen[index] = 0
        return session

    def take_in_deliveries(self):
        """What the sinks received since the last step, into the model."""
        for index, sink in self.sinks.items():
            for number, consumer_tag, tag, message in sink.deliveries[self.seen[index]:]:
                channel = self.channels[index, number]
                incarnation, no_ack, prefetch = channel.consumers[consumer_tag]
                self.take_from_ready(incarnation, message)
                if not no_ack:
                    channel.outstanding[tag] = (incarnation, consumer_tag, message.body)
                    mine = sum(1 for _, other, _ in channel.outstanding.values() if other == consumer_tag)
                    assert not prefetch or mine <= prefetch, f"{consumer_tag} went past its prefetch"
                    assert not channel.global_prefetch or channel.consumer_deliveries() <= channel.global_prefetch
            self.seen[index] = len(sink.deliveries)
            for number, consumer_tag in sink.cancelled:
                if (index, number) in self.channels:
                    self.channels[index, number].consumers.pop(consumer_tag, None)
            sink.cancelled.clear()

    def take_from_ready(self, incarnation, message):
        ready = self.ready[incarnation]
        assert ready[message.body] == 1, f"{message.body} was not ready"
        assert message.redelivered == (message.body in self.requeued)
        del ready[message.body]

    def end(self, channel, tags, requeue):
        for tag in tags:
            incarnation, _, body = channel.outstanding.pop(tag)
            if requeue and incarnation in self.ready:
                self.ready[incarnation][body] = 1
                self.requeued.add(body)

    def with_outstanding(self):
        return sorted(key for key, channel in self.channels.items() if channel.outstanding)

    # -- topology --------------------------------------------------------------------

    @rule(name=st.sampled_from(QUEUES))
    def declare(self, name):
        self.vhost.declare_queue(name)
        if name not in self.incarnation:
            self.incarnations += 1
            self.incarnation[name] = self.incarnations
            self.ready[self.incarnations] = Counter()

    @precondition(lambda self: self.incarnation)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.incarnation)))
        count = self.vhost.delete_queue(name)
        incarnation = self.incarnation.pop(name)
        assert count == len(self.ready.pop(incarnation))
        self.take_in_deliveries()

    # -- channels --------------------------------------------------------------------

    def open_channel(self, key):
        self.channels[key] = ModelChannel(self.connection(key[0]).open_channel(key[1]))

    @rule(key=st.sampled_from(CHANNELS))
    def close_channel(self, key):
        """Close a channel, and open a fresh one with its number (the machine's channels
        are always open, so no step is spent opening them)."""
        channel = self.channels.pop(key)
        self.sessions[key[0]].close_channel(key[1])
        self.end(channel, list(channel.outstanding), requeue=True)
        self.take_in_deliveries()
        self.open_channel(key)

    @rule(index=st.sampled_from(sorted({key[0] for key in CHANNELS})))
    def close_connection(self, index):
        """The client goes, and comes back on a fresh connection."""
        self.sessions.pop(index).close()
        for key in [key for key in self.channels if key[0] == index]:
            channel = self.channels.pop(key)
            self.end(channel, list(channel.outstanding), requeue=True)
        self.take_in_deliveries()
        del self.sinks[index], self.seen[index]
        for key in CHANNELS:
            if key[0] == index:
                self.open_channel(key)

    @rule(key=st.sampled_from(CHANNELS), prefetch=PREFETCH, global_=st.booleans())
    def change_qos(self, key, prefetch, global_):
        self.qos(key, prefetch, global_)

    def qos(self, key, prefetch, global_):
        channel = self.channels[key]
        channel.core.qos(prefetch, global_)
        if global_:
            channel.global_prefetch = prefetch
        else:
            channel.consumer_prefetch = prefetch
            for tag, (incarnation, no_ack, _) in channel.consumers.items():
                channel.consumers[tag] = (incarnation, no_ack, prefetch)
        self.take_in_deliveries()

    # -- messages --------------------------------------------------------------------

    @rule(name=st.sampled_from(QUEUES), count=st.sampled_from((3, 1, 2)))
    def publish(self, name, count):
        for _ in range(count):
            self.bodies += 1
            body = b"m%d" % self.bodies
            if name in self.incarnation:
                self.ready[self.incarnation[name]][body] = 1
            self.publisher.publish("", name, body)
            self.take_in_deliveries()

    @precondition(lambda self: self.incarnation)
    @rule(data=st.data(), key=st.sampled_from(CHANNELS), no_ack=st.booleans(), prefetch=PREFETCH,
          global_=st.booleans())
    def consume(self, data, key, no_ack, prefetch, global_):
        """Consume with a prefetch window: the channel's qos first, as clients do."""
        self.qos(key, prefetch, global_)
        channel = self.channels[key]
        name = data.draw(st.sampled_from(sorted(self.incarnation)))
        self.consumer_tags += 1
        tag = f"c{self.consumer_tags}"
        channel.consumers[tag] = (self.incarnation[name], no_ack, channel.consumer_prefetch)
        channel.core.consume(name, tag, no_ack=no_ack)
        self.take_in_deliveries()

    @precondition(lambda self: any(channel.consumers for channel in self.channels.values()))
    @rule(data=st.data(), requeue=st.booleans())
    def cancel(self, data, requeue):
        key = data.draw(st.sampled_from([key for key in sorted(self.channels) if self.channels[key].consumers]))
        channel = self.channels[key]
        tag = data.draw(st.sampled_from(sorted(channel.consumers)))
        assert channel.core.cancel(tag, requeue_unacked=requeue)
        del channel.consumers[tag]
        if requeue:
            self.end(channel, [t for t, (_, consumer_tag, _) in channel.outstanding.items() if consumer_tag == tag],
                     requeue=True)
        self.take_in_deliveries()

    @precondition(lambda self: self.incarnation)
    @rule(data=st.data(), key=st.sampled_from(CHANNELS), no_ack=st.booleans())
    def get(self, data, key, no_ack):
        channel = self.channels[key]
        name = data.draw(st.sampled_from(sorted(self.incarnation)))
        incarnation = self.incarnation[name]
        got = channel.core.get(name, no_ack)
        if not self.ready[incarnation]:
            assert got is None
            return
        tag, message, left = got
        self.take_from_ready(incarnation, message)
        assert left == len(self.ready[incarnation])
        if not no_ack:
            channel.outstanding[tag] = (incarnation, None, message.body)

    @precondition(lambda self: any(channel.outstanding for channel in self.channels.values()))
    @rule(data=st.data(), how=st.sampled_from(["ack", "nack", "reject"]), multiple=st.booleans(),
          requeue=st.booleans(), everything=st.booleans())
    def settle(self, data, how, multiple, requeue, everything):
        channel = self.channels[data.draw(st.sampled_from(self.with_outstanding()))]
        tag = data.draw(st.sampled_from(sorted(channel.outstanding)))
        if how == "reject":
            multiple = False
        if multiple and everything:
            tag = 0     # multiple with tag 0: everything outstanding on the channel
        if how == "ack":
            channel.core.ack(tag, multiple)
            requeue = False
        elif how == "nack":
            channel.core.nack(tag, multiple, requeue)
        else:
            channel.core.reject(tag, requeue)
        settled = [t for t in channel.outstanding if t <= tag or tag == 0] if multiple else [tag]
        self.end(channel, settled, requeue)
        self.take_in_deliveries()

    @rule(key=st.sampled_from(CHANNELS))
    def ack_an_unknown_tag(self, key):
        channel = self.channels[key]
        unknown = max(channel.outstanding, default=0) + 1000
        with pytest.raises(PreconditionFailed):
            channel.core.ack(unknown)

    @rule(key=st.sampled_from(CHANNELS))
    def recover(self, key):
        channel = self.channels[key]
        channel.core.recover()
        self.end(channel, list(channel.outstanding), requeue=True)
        self.take_in_deliveries()

    # -- what must hold after every step ---------------------------------------------

    @invariant()
    def each_channel_holds_its_outstanding_deliveries_by_tag(self):
        for channel in self.channels.values():
            core = channel.core
            assert sorted(core.unacked) == sorted(channel.outstanding)
            for tag, delivery in core.unacked.items():
                incarnation, consumer_tag, body = channel.outstanding[tag]
                assert delivery.delivery_tag == tag and delivery.message.body == body
                assert (delivery.consumer.tag if delivery.consumer else None) == consumer_tag
            assert len(core.unacked_gets) == sum(1 for _, consumer_tag, _ in channel.outstanding.values()
                                                 if consumer_tag is None)

    @invariant()
    def each_consumer_counts_its_own_outstanding_deliveries(self):
        for channel in self.channels.values():
            consumers = {delivery.consumer for delivery in channel.core.unacked.values() if delivery.consumer}
            consumers.update(channel.core.consumers.values())
            for consumer in consumers:
                assert len(consumer.unacked) == sum(1 for _, consumer_tag, _ in channel.outstanding.values()
                                                    if consumer_tag == consumer.tag)
            assert sorted(channel.core.consumers) == sorted(channel.consumers)

    @invariant()
    def each_queue_counts_its_ready_messages_and_outstanding_deliveries(self):
        outstanding = Counter(incarnation for channel in self.channels.values()
                              for incarnation, _, _ in channel.outstanding.values())
        queues = {delivery.queue: channel.outstanding[tag][0] for channel in self.channels.values()
                  for tag, delivery in channel.core.unacked.items()}
        queues.update({self.vhost.queues[name]: incarnation for name, incarnation in self.incarnation.items()})
        assert sorted(self.vhost.queues) == sorted(self.incarnation)
        for queue, incarnation in queues.items():
            assert queue.unacked_count == outstanding[incarnation]
            assert queue.message_count == len(self.ready.get(incarnation, ()))
            assert sorted(m.body for m in queue.ready) == sorted(self.ready.get(incarnation, ()))

    @invariant()
    def totals_agree_with_the_model(self):
        current = set(self.incarnation.values())
        deliveries = [record for channel in self.channels.values() for record in channel.outstanding.values()]
        ready = sum(len(self.ready[incarnation]) for incarnation in current)
        assert self.node.status()["messages"] == ready + sum(1 for record in deliveries if record[0] in current)
        held = [body for incarnation in current for body in self.ready[incarnation]]
        held += [body for _, _, body in deliveries]
        assert self.node.memory.held_bytes - self.held_before == sum(len(body) + MESSAGE_OVERHEAD_BYTES for body in held)

    @invariant()
    def no_consumer_with_room_is_left_idle_while_its_queue_has_ready_messages(self):
        for channel in self.channels.values():
            channel_full = channel.global_prefetch and channel.consumer_deliveries() >= channel.global_prefetch
            for tag, (incarnation, no_ack, prefetch) in channel.consumers.items():
                if not self.ready.get(incarnation):
                    continue
                mine = sum(1 for _, consumer_tag, _ in channel.outstanding.values() if consumer_tag == tag)
                assert not no_ack and (channel_full or (prefetch and mine >= prefetch)), \
                    f"consumer {tag} has room while its queue holds {sorted(self.ready[incarnation])}"

    def teardown(self):
        for session in list(self.node.sessions):
            session.close()


Deliveries.TestCase.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)
test_unacked_counts_agree_with_the_deliveries_outstanding = Deliveries.TestCase
