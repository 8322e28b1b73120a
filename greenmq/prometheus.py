"""/metrics: the node's gauges and counters in Prometheus's text exposition format 0.0.4.

A format of its own, apart from the management API's JSON: the HTTP front end serves it,
and nothing here knows about HTTP. Scrapes read the core's counters as they stand; nothing
is counted for Prometheus on the per-message path.
"""

import os
import resource

from .stats import MESSAGE_COUNTERS, totals


def resident_bytes():
    """The process's resident memory: /proc on Linux, the peak elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _label(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_COUNTER_HELP = {
    "published": "Messages published (node-wide: accepted for routing; per queue: enqueued).",
    "delivered": "Messages delivered to consumers or fetched with basic.get.",
    "acked": "Deliveries settled without requeue (acknowledged, or rejected without requeue).",
    "redelivered": "Deliveries of messages delivered before.",
    "dead_lettered": "Messages dead-lettered.",
}


def prometheus_text(node, per_queue=True):
    """Prometheus text exposition format 0.0.4: names with the greenmq_ prefix, counters
    ending in _total, seconds and bytes as base units."""
    lines = []

    def metric(name, kind, help_text, samples):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value}")

    queues = [(vhost, queue) for vhost in node.vhosts.values() for queue in vhost.queues.values()]
    sessions = [s for s in node.sessions if not s.closed]
    metric("greenmq_connections", "gauge", "Open client connections.", [("", len(sessions))])
    metric("greenmq_channels", "gauge", "Open channels.", [("", sum(len(s.channels) for s in sessions))])
    metric("greenmq_queues", "gauge", "Queues.", [("", len(queues))])
    metric("greenmq_consumers", "gauge", "Consumers.", [("", sum(len(q.consumers) for _, q in queues))])
    ready = [(vhost, queue, queue.message_count) for vhost, queue in queues]
    metric("greenmq_messages_ready", "gauge", "Messages ready for delivery.", [("", sum(r for _, _, r in ready))])
    metric("greenmq_messages_unacked", "gauge", "Messages delivered and not yet acknowledged.",
           [("", sum(q.unacked_count for _, q in queues))])
    counts = totals(node.vhosts.values())
    for counter in MESSAGE_COUNTERS:
        metric(f"greenmq_messages_{counter}_total", "counter", _COUNTER_HELP[counter], [("", counts[counter])])
    if per_queue:
        labels = [(queue, f'{{vhost="{_label(vhost.name)}",queue="{_label(queue.name)}"}}') for vhost, queue in queues]
        metric("greenmq_queue_messages_ready", "gauge", "Messages ready for delivery, per queue.",
               [(label, count) for (_, label), (_, _, count) in zip(labels, ready)])
        metric("greenmq_queue_messages_unacked", "gauge", "Messages delivered and not yet acknowledged, per queue.",
               [(label, queue.unacked_count) for queue, label in labels])
        metric("greenmq_queue_consumers", "gauge", "Consumers, per queue.",
               [(label, len(queue.consumers)) for queue, label in labels])
        for counter in MESSAGE_COUNTERS:
            metric(f"greenmq_queue_messages_{counter}_total", "counter", _COUNTER_HELP[counter] + " Per queue.",
                   [(label, getattr(queue, counter)) for queue, label in labels])
    histogram = node.store.commit_seconds
    name = "greenmq_store_commit_duration_seconds"
    lines.append(f"# HELP {name} Time to commit one batch of the durable store (one transaction and its fsync).")
    lines.append(f"# TYPE {name} histogram")
    for bound, count in histogram.cumulative():
        lines.append(f'{name}_bucket{{le="{"+Inf" if bound == float("inf") else repr(bound)}"}} {count}')
    lines.append(f"{name}_sum {histogram.sum}")
    lines.append(f"{name}_count {histogram.count}")
    metric("greenmq_process_resident_memory_bytes", "gauge", "Resident memory of the broker process.",
           [("", resident_bytes())])
    memory = node.memory.status()
    metric("greenmq_memory_held_bytes", "gauge", "Memory the broker accounts for: messages held and output "
           "waiting for sockets (what the memory limit applies to).", [("", memory["held_bytes"])])
    metric("greenmq_memory_limit_bytes", "gauge", "The memory limit (--memory-limit).", [("", memory["limit_bytes"])])
    metric("greenmq_publishers_blocked", "gauge", "Publishing connections the broker is not reading, above the "
           "memory limit.", [("", sum(1 for session in node.sessions if getattr(session.sink, "paused", False)))])
    return "\n".join(lines) + "\n"
