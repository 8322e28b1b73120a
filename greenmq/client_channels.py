"""What a client wire must remember to reopen a channel the broker closed (on an error over
AMQP, a consumer timeout over either wire) so that the Channel goes on as before: the
requests that set the channel up (confirm mode, prefetch), to send again, and how many
messages its earlier lives published in confirm mode, because the broker numbers the
confirms of a reopened channel from 1 again while the Channel's numbers go on."""

import collections

# Requests the broker's closing of a channel undoes, repeated when it is reopened.
CHANNEL_SETTINGS = ("confirm.select", "qos")


class ReopenedChannels:
    def __init__(self):
        self.settings = collections.defaultdict(dict)   # channel -> op -> request, to repeat
        self._published = collections.Counter()         # channel -> publishes in confirm mode
        self.tag_offset = collections.Counter()         # channel -> publishes of its earlier lives

    def requested(self, channel, op, fields):
        """Note a request that sets the channel up."""
        if op in CHANNEL_SETTINGS:
            self.settings[channel][op] = fields

    def published(self, channel):
        """Count a publish, which the broker confirms when the channel is in confirm mode."""
        if "confirm.select" in self.settings.get(channel, ()):
            self._published[channel] += 1

    def closed(self, channel):
        """The broker closed `channel`: the events that tell the Channel (its consumers and
        deliveries are gone; the messages it will never confirm are nacked), and the
        requests that set it up again."""
        events = [{"event": "channel_reopened", "channel": channel}]
        unconfirmed = self._published[channel]
        if unconfirmed > self.tag_offset[channel]:
            events.append({"event": "nack", "channel": channel, "delivery_tag": unconfirmed, "multiple": True})
        self.tag_offset[channel] = unconfirmed
        return events, list(self.settings[channel].items())
