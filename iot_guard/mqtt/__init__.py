"""Sans-IO MQTT 3.1.1 / 5.0 codec: packets, stream parser, encoder, topic rules.

Bytes in, packets out (``StreamParser.feed``); packets in, bytes out (``encode``). No I/O.
"""

from .encoder import encode
from .errors import ProtocolError
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .parser import DEFAULT_MAX_PACKET_SIZE, StreamParser
from .properties import PROPERTIES, PropertyId, PropertySpec, PropertyType
from .reason_codes import ConnackV3, ReasonCode
from .topics import split_shared, topic_matches, validate_topic_filter, validate_topic_name

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "PROPERTIES",
    "Auth",
    "Connack",
    "ConnackV3",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "PropertyId",
    "PropertySpec",
    "PropertyType",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "ReasonCode",
    "StreamParser",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "encode",
    "split_shared",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]
