"""Message rates without per-message cost, and the latency histograms behind /metrics.

The core keeps plain integer counters (Queue.published/delivered/acked/redelivered/
dead_lettered, VirtualHost.published, each bumped once per message); a `RateSampler`
reads them every few seconds and keeps the rates of the last interval, so the hot path
never does more than an increment whatever is watching.
"""

import bisect
import time

import gevent

# The per-queue message counters (plain integers on Queue), in the order samplers read them.
# Named here, by what reads them, so that measuring imports nothing of the core it measures.
MESSAGE_COUNTERS = ("published", "delivered", "acked", "redelivered", "dead_lettered")

# RabbitMQ's management agent samples every 5 s: rates stay smooth and sampling 10,000
# queues (a few milliseconds) costs nothing that matters. --stats-interval changes it.
DEFAULT_SAMPLE_INTERVAL_SECONDS = 5.0


def totals(vhosts):
    """The vhosts' counters: publishes as routed (one per message, however many queues it
    reached), the rest summed over their queues, living and deleted."""
    counts = dict.fromkeys(MESSAGE_COUNTERS, 0)
    published = 0
    for vhost in vhosts:
        published += vhost.published
        for counter, value in vhost.deleted_queue_counts.items():
            counts[counter] += value
        for queue in vhost.queues.values():
            for counter in MESSAGE_COUNTERS:
                counts[counter] += getattr(queue, counter)
    counts["published"] = published
    return counts


class RateSampler:
    """Per second rates of the node's, each vhost's and each queue's counters over the last
    interval."""

    def __init__(self, node, interval=DEFAULT_SAMPLE_INTERVAL_SECONDS):
        self.node = node
        self.interval = interval
        self._vhost_rates = {}      # vhost -> rates dict
        self._vhost_counts = {vhost: totals((vhost,)) for vhost in node.vhosts.values()}
        self._queue_rates = {}      # queue -> rates tuple in MESSAGE_COUNTERS order
        self._queue_counts = {}
        self._sampled_at = time.monotonic()
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self):
        while True:
            gevent.sleep(self.interval)
            self.sample()

    def sample(self):
        now = time.monotonic()
        elapsed = max(now - self._sampled_at, 1e-6)
        vhost_counts, vhost_rates = {}, {}
        for vhost in self.node.vhosts.values():
            counts = vhost_counts[vhost] = totals((vhost,))
            previous = self._vhost_counts.get(vhost)
            if previous is not None:
                vhost_rates[vhost] = {counter: (counts[counter] - previous[counter]) / elapsed
                                      for counter in MESSAGE_COUNTERS}
        queue_counts, queue_rates = {}, {}
        previous_counts = self._queue_counts
        for vhost in self.node.vhosts.values():
            for queue in vhost.queues.values():
                current = tuple(getattr(queue, counter) for counter in MESSAGE_COUNTERS)
                queue_counts[queue] = current
                previous = previous_counts.get(queue)
                if previous is not None:
                    queue_rates[queue] = tuple((c - p) / elapsed for c, p in zip(current, previous))
        self._vhost_counts, self._vhost_rates = vhost_counts, vhost_rates
        self._queue_counts, self._queue_rates = queue_counts, queue_rates
        self._sampled_at = now

    def rates(self, vhosts):
        """The vhosts' rates together."""
        summed = dict.fromkeys(MESSAGE_COUNTERS, 0.0)
        for vhost in vhosts:
            for counter, rate in self._vhost_rates.get(vhost, {}).items():
                summed[counter] += rate
        return summed

    def queue_rates(self, queue):
        rates = self._queue_rates.get(queue)
        return dict(zip(MESSAGE_COUNTERS, rates)) if rates else dict.fromkeys(MESSAGE_COUNTERS, 0.0)


class LatencyHistogram:
    """Cumulative buckets of durations in seconds, as Prometheus histograms count them."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)     # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds):
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self):
        """(upper bound, observations at or below it) pairs, ending with +Inf."""
        total, rows = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            rows.append((bound, total))
        return rows
