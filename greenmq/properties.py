"""Message properties as AMQP 0-9-1 defines them, shared by the broker and the client: their
names (what BasicProperties, JSON lines and the core's messages call them) and their form in
pamqp, whose Basic.Properties the AMQP front end and the client's AMQP wire both marshal."""

import datetime

from pamqp import commands as spec

# In the order of the spec's property flags, `type` as pika names it.
PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
    "user_id", "app_id", "cluster_id",
)
# Each name as pamqp's Basic.Properties spells it.
AMQP_NAMES = {name: ("message_type" if name == "type" else name) for name in PROPERTY_NAMES}


def to_amqp(values):
    """A dict of properties (None or empty for none) as pamqp's Basic.Properties; the
    timestamp given as whole seconds since the epoch."""
    if not values:
        return spec.Basic.Properties()
    arguments = {AMQP_NAMES[name]: value for name, value in values.items() if name != "cluster_id"}
    timestamp = arguments.get("timestamp")
    if isinstance(timestamp, int):
        arguments["timestamp"] = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    properties = spec.Basic.Properties(**arguments)
    # Deprecated in 0-9-1 and refused by pamqp's constructor, but passed through unchanged.
    properties.cluster_id = values.get("cluster_id", "")
    return properties


def from_amqp(properties):
    """pamqp's Basic.Properties as a dict of the properties sent (empty for none), the
    timestamp as whole seconds since the epoch."""
    values = {}
    for name, amqp_name in AMQP_NAMES.items():
        value = getattr(properties, amqp_name)
        # pamqp fills in cluster_id as "" when none was sent.
        if value is not None and not (name == "cluster_id" and value == ""):
            values[name] = value
    timestamp = values.get("timestamp")
    if isinstance(timestamp, datetime.datetime):
        values["timestamp"] = int(timestamp.timestamp())
    return values
