"""MQTT control packets as plain dataclasses (shared by 3.1.1 and 5.0).

``properties`` is a ``dict[int, object]`` keyed by PropertyId (empty for 3.1.1); ``raw``
holds the packet's exact bytes (fixed header included) when it was parsed, so a packet
that passes the guard unchanged is forwarded as it came; it is empty when built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


def _props() -> dict[int, object]:
    return {}


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict[int, object] = field(default_factory=_props)


@dataclass(slots=True)
class Connect:
    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str
    protocol_level: int = 4
    clean_start: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    protocol_name: str = "MQTT"
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class Connack:
    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    reason_code: int = 0  # v3.1.1: the CONNACK return code
    session_present: bool = False
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class Publish:
    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class _PublishAck:
    """The four QoS 1/2 acknowledgements share one layout (spec 3.4-3.7)."""

    packet_id: int
    reason_code: int = 0
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class PubAck(_PublishAck):
    TYPE: ClassVar[PacketType] = PacketType.PUBACK


@dataclass(slots=True)
class PubRec(_PublishAck):
    TYPE: ClassVar[PacketType] = PacketType.PUBREC


@dataclass(slots=True)
class PubRel(_PublishAck):
    TYPE: ClassVar[PacketType] = PacketType.PUBREL


@dataclass(slots=True)
class PubComp(_PublishAck):
    TYPE: ClassVar[PacketType] = PacketType.PUBCOMP


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[Subscription]
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class SubAck:
    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int]
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class Unsubscribe:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[str]
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class UnsubAck:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # always empty in 3.1.1
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class PingReq:
    TYPE: ClassVar[PacketType] = PacketType.PINGREQ
    raw: bytes = b""


@dataclass(slots=True)
class PingResp:
    TYPE: ClassVar[PacketType] = PacketType.PINGRESP
    raw: bytes = b""


@dataclass(slots=True)
class Disconnect:
    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


@dataclass(slots=True)
class Auth:
    TYPE: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: dict[int, object] = field(default_factory=_props)
    raw: bytes = b""


Packet = (
    Connect
    | Connack
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)
