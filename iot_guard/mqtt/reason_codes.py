"""MQTT 5 reason codes (spec 2.4) and MQTT 3.1.1 CONNACK return codes (spec 3.2.2.3)."""

from __future__ import annotations

from enum import IntEnum

from .packets import PacketType


class ReasonCode(IntEnum):
    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnackV3(IntEnum):
    """MQTT 3.1.1 CONNACK return codes (spec 3.2.2.3, table 3.1)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


# Which reason codes each v5 packet may carry (spec 2.4 table 2-6 and each packet's
# reason code table). Anything else in a received packet is refused.
CONNACK_CODES = frozenset(
    {
        0x00,
        0x80,
        0x81,
        0x82,
        0x83,
        0x84,
        0x85,
        0x86,
        0x87,
        0x88,
        0x89,
        0x8A,
        0x8C,
        0x90,
        0x95,
        0x97,
        0x99,
        0x9A,
        0x9B,
        0x9C,
        0x9D,
        0x9F,
    }
)
PUBACK_CODES = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
PUBREC_CODES = PUBACK_CODES
PUBREL_CODES = frozenset({0x00, 0x92})
PUBCOMP_CODES = PUBREL_CODES
SUBACK_CODES = frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2})
UNSUBACK_CODES = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
DISCONNECT_CODES = frozenset(
    {
        0x00,
        0x04,
        0x80,
        0x81,
        0x82,
        0x83,
        0x87,
        0x89,
        0x8B,
        0x8D,
        0x8E,
        0x8F,
        0x90,
        0x93,
        0x94,
        0x95,
        0x96,
        0x97,
        0x98,
        0x99,
        0x9A,
        0x9B,
        0x9C,
        0x9D,
        0x9E,
        0x9F,
        0xA0,
        0xA1,
        0xA2,
    }
)
AUTH_CODES = frozenset({0x00, 0x18, 0x19})

# The same sets keyed by packet type, for a parser that checks a code by the packet's type.
CODES_BY_PACKET: dict[int, frozenset[int]] = {
    PacketType.CONNACK: CONNACK_CODES,
    PacketType.PUBACK: PUBACK_CODES,
    PacketType.PUBREC: PUBREC_CODES,
    PacketType.PUBREL: PUBREL_CODES,
    PacketType.PUBCOMP: PUBCOMP_CODES,
    PacketType.SUBACK: SUBACK_CODES,
    PacketType.UNSUBACK: UNSUBACK_CODES,
    PacketType.DISCONNECT: DISCONNECT_CODES,
    PacketType.AUTH: AUTH_CODES,
}

# The "sent by" column of each v5 reason code table: codes only one side may send. A
# parser refuses a code the peer it reads may not send (a client DISCONNECT with 0x8B
# "server shutting down" is a protocol error, not something to forward).
_SERVER_ONLY: dict[int, frozenset[int]] = {
    PacketType.PUBACK: frozenset({0x10}),  # 3.4.2.1: "sent only by the Server"
    PacketType.PUBREC: frozenset({0x10}),  # 3.5.2.1
    PacketType.DISCONNECT: frozenset(  # 3.14.2.1
        {0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2}
    ),
}
_CLIENT_ONLY: dict[int, frozenset[int]] = {
    PacketType.DISCONNECT: frozenset({0x04}),  # disconnect with will message
    PacketType.AUTH: frozenset({0x19}),  # re-authenticate (3.15.2.1)
}
# What a parser accepts, by the side it reads: a server reads what clients send.
CODES_FROM_CLIENT: dict[int, frozenset[int]] = {
    ptype: codes - _SERVER_ONLY.get(ptype, frozenset()) for ptype, codes in CODES_BY_PACKET.items()
}
CODES_FROM_SERVER: dict[int, frozenset[int]] = {
    ptype: codes - _CLIENT_ONLY.get(ptype, frozenset()) for ptype, codes in CODES_BY_PACKET.items()
}

# v3.1.1 SUBACK return codes [MQTT-3.9.3-2]: granted QoS 0..2 or 0x80 failure.
SUBACK_V3_CODES = frozenset({0x00, 0x01, 0x02, 0x80})

# v5 CONNACK reason code -> nearest v3.1.1 return code, for encoding a refusal to a
# 3.1.1 client with the same code the policy layer uses for v5.
CONNACK_V5_TO_V3: dict[int, int] = {
    0x00: ConnackV3.ACCEPTED,
    0x84: ConnackV3.UNACCEPTABLE_PROTOCOL_VERSION,
    0x85: ConnackV3.IDENTIFIER_REJECTED,
    0x86: ConnackV3.BAD_USERNAME_OR_PASSWORD,
    0x87: ConnackV3.NOT_AUTHORIZED,
    0x8A: ConnackV3.NOT_AUTHORIZED,
    0x8C: ConnackV3.BAD_USERNAME_OR_PASSWORD,
    0x88: ConnackV3.SERVER_UNAVAILABLE,
    0x89: ConnackV3.SERVER_UNAVAILABLE,
    0x9C: ConnackV3.SERVER_UNAVAILABLE,
    0x9D: ConnackV3.SERVER_UNAVAILABLE,
    0x9F: ConnackV3.SERVER_UNAVAILABLE,
}
