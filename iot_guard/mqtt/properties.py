"""MQTT 5 properties (spec 2.2.2): ids, wire types, where each may appear, parse/encode.

Properties are a plain ``dict[int, object]`` keyed by property id. Values are int, str or
bytes; USER_PROPERTY is ``list[tuple[str, str]]`` (order kept, may repeat);
SUBSCRIPTION_IDENTIFIER is ``list[int]`` in PUBLISH (it may repeat there [MQTT-3.3.4-4])
and a plain int in SUBSCRIBE.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from .packets import PacketType
from .topics import validate_topic_name
from .wire import (
    MAX_VARINT,
    Buffer,
    encode_binary,
    encode_utf8,
    encode_varint,
    malformed,
    protocol_error,
    read_binary,
    read_u16,
    read_u32,
    read_utf8,
    read_varint,
)

# Pseudo packet type for the Will Properties in a CONNECT payload (0 is a reserved type).
WILL = 0


class PropertyId(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(IntEnum):
    BYTE = 1
    TWO_BYTE_INT = 2
    FOUR_BYTE_INT = 3
    VARINT = 4
    UTF8 = 5
    BINARY = 6
    STRING_PAIR = 7


class PropertySpec(NamedTuple):
    wire_type: PropertyType
    packets: frozenset[int]  # PacketType values, plus WILL for the will properties


_P = PacketType
_T = PropertyType
_ACKS = (_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP)


def _in(*packets: int) -> frozenset[int]:
    return frozenset(int(p) for p in packets)


# Spec 2.2.2.2, table 2-4.
PROPERTIES: dict[int, PropertySpec] = {
    PropertyId.PAYLOAD_FORMAT_INDICATOR: PropertySpec(_T.BYTE, _in(_P.PUBLISH, WILL)),
    PropertyId.MESSAGE_EXPIRY_INTERVAL: PropertySpec(_T.FOUR_BYTE_INT, _in(_P.PUBLISH, WILL)),
    PropertyId.CONTENT_TYPE: PropertySpec(_T.UTF8, _in(_P.PUBLISH, WILL)),
    PropertyId.RESPONSE_TOPIC: PropertySpec(_T.UTF8, _in(_P.PUBLISH, WILL)),
    PropertyId.CORRELATION_DATA: PropertySpec(_T.BINARY, _in(_P.PUBLISH, WILL)),
    PropertyId.SUBSCRIPTION_IDENTIFIER: PropertySpec(_T.VARINT, _in(_P.PUBLISH, _P.SUBSCRIBE)),
    PropertyId.SESSION_EXPIRY_INTERVAL: PropertySpec(
        _T.FOUR_BYTE_INT, _in(_P.CONNECT, _P.CONNACK, _P.DISCONNECT)
    ),
    PropertyId.ASSIGNED_CLIENT_IDENTIFIER: PropertySpec(_T.UTF8, _in(_P.CONNACK)),
    PropertyId.SERVER_KEEP_ALIVE: PropertySpec(_T.TWO_BYTE_INT, _in(_P.CONNACK)),
    PropertyId.AUTHENTICATION_METHOD: PropertySpec(_T.UTF8, _in(_P.CONNECT, _P.CONNACK, _P.AUTH)),
    PropertyId.AUTHENTICATION_DATA: PropertySpec(_T.BINARY, _in(_P.CONNECT, _P.CONNACK, _P.AUTH)),
    PropertyId.REQUEST_PROBLEM_INFORMATION: PropertySpec(_T.BYTE, _in(_P.CONNECT)),
    PropertyId.WILL_DELAY_INTERVAL: PropertySpec(_T.FOUR_BYTE_INT, _in(WILL)),
    PropertyId.REQUEST_RESPONSE_INFORMATION: PropertySpec(_T.BYTE, _in(_P.CONNECT)),
    PropertyId.RESPONSE_INFORMATION: PropertySpec(_T.UTF8, _in(_P.CONNACK)),
    PropertyId.SERVER_REFERENCE: PropertySpec(_T.UTF8, _in(_P.CONNACK, _P.DISCONNECT)),
    PropertyId.REASON_STRING: PropertySpec(
        _T.UTF8, _in(_P.CONNACK, *_ACKS, _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH)
    ),
    PropertyId.RECEIVE_MAXIMUM: PropertySpec(_T.TWO_BYTE_INT, _in(_P.CONNECT, _P.CONNACK)),
    PropertyId.TOPIC_ALIAS_MAXIMUM: PropertySpec(_T.TWO_BYTE_INT, _in(_P.CONNECT, _P.CONNACK)),
    PropertyId.TOPIC_ALIAS: PropertySpec(_T.TWO_BYTE_INT, _in(_P.PUBLISH)),
    PropertyId.MAXIMUM_QOS: PropertySpec(_T.BYTE, _in(_P.CONNACK)),
    PropertyId.RETAIN_AVAILABLE: PropertySpec(_T.BYTE, _in(_P.CONNACK)),
    PropertyId.USER_PROPERTY: PropertySpec(
        _T.STRING_PAIR,
        _in(
            _P.CONNECT,
            _P.CONNACK,
            _P.PUBLISH,
            WILL,
            *_ACKS,
            _P.SUBSCRIBE,
            _P.SUBACK,
            _P.UNSUBSCRIBE,
            _P.UNSUBACK,
            _P.DISCONNECT,
            _P.AUTH,
        ),
    ),
    PropertyId.MAXIMUM_PACKET_SIZE: PropertySpec(_T.FOUR_BYTE_INT, _in(_P.CONNECT, _P.CONNACK)),
    PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE: PropertySpec(_T.BYTE, _in(_P.CONNACK)),
    PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE: PropertySpec(_T.BYTE, _in(_P.CONNACK)),
    PropertyId.SHARED_SUBSCRIPTION_AVAILABLE: PropertySpec(_T.BYTE, _in(_P.CONNACK)),
}

# Byte properties whose only legal values are 0 and 1 (a Protocol Error otherwise).
_BOOLEAN_BYTES = frozenset(
    {
        PropertyId.PAYLOAD_FORMAT_INDICATOR,  # [MQTT-3.3.2.3.2]
        PropertyId.REQUEST_PROBLEM_INFORMATION,  # 3.1.2.11.7
        PropertyId.REQUEST_RESPONSE_INFORMATION,  # 3.1.2.11.6
        PropertyId.MAXIMUM_QOS,  # 3.2.2.3.4: 0 or 1
        PropertyId.RETAIN_AVAILABLE,
        PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
        PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
# Integer properties for which 0 is a Protocol Error.
_NON_ZERO = frozenset(
    {
        PropertyId.SUBSCRIPTION_IDENTIFIER,  # 3.8.2.1.2
        PropertyId.RECEIVE_MAXIMUM,  # 3.1.2.11.3
        PropertyId.MAXIMUM_PACKET_SIZE,  # 3.1.2.11.4
        PropertyId.TOPIC_ALIAS,  # [MQTT-3.3.2-8]
    }
)

_USER = PropertyId.USER_PROPERTY
_SUB_ID = PropertyId.SUBSCRIPTION_IDENTIFIER
_AUTH_METHOD = PropertyId.AUTHENTICATION_METHOD
_AUTH_DATA = PropertyId.AUTHENTICATION_DATA


def _check_value(pid: int, value: object) -> None:
    if pid in _BOOLEAN_BYTES and value not in (0, 1):
        raise protocol_error(f"property 0x{pid:02X} must be 0 or 1, got {value!r}")
    if pid in _NON_ZERO and value == 0:
        raise protocol_error(f"property 0x{pid:02X} must not be 0")
    if pid == PropertyId.RESPONSE_TOPIC:
        # The Response Topic is a Topic Name: no wildcards [MQTT-3.3.2-14].
        validate_topic_name(str(value))


def parse_properties(
    buf: Buffer, i: int, end: int, packet_type: int
) -> tuple[dict[int, object], int]:
    """Read a property length and the properties after it (spec 2.2.2)."""
    length, i = read_varint(buf, i, end)
    stop = i + length
    if stop > end:
        raise malformed("property length runs past the end of the packet")
    props: dict[int, object] = {}
    if not length:
        return props, stop
    while i < stop:
        pid = buf[i]  # all defined ids are < 0x80, so one byte of the varint id
        i += 1
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise malformed(f"unknown property identifier 0x{pid:02X}")
        if packet_type not in spec.packets:
            # An identifier not valid for the packet type is a Malformed Packet (2.2.2.2).
            where = "will" if packet_type == WILL else PacketType(packet_type).name
            raise malformed(f"property {PropertyId(pid).name} not allowed in {where}")
        wire = spec.wire_type
        value: object
        if wire is _T.BYTE:
            if i >= stop:
                raise malformed("truncated property")
            value = buf[i]
            i += 1
        elif wire is _T.TWO_BYTE_INT:
            value, i = read_u16(buf, i, stop)
        elif wire is _T.FOUR_BYTE_INT:
            value, i = read_u32(buf, i, stop)
        elif wire is _T.VARINT:
            value, i = read_varint(buf, i, stop)
        elif wire is _T.UTF8:
            value, i = read_utf8(buf, i, stop)
        elif wire is _T.BINARY:
            value, i = read_binary(buf, i, stop)
        else:
            key, i = read_utf8(buf, i, stop)
            val, i = read_utf8(buf, i, stop)
            value = (key, val)
        _check_value(pid, value)
        if pid == _USER or (pid == _SUB_ID and packet_type == PacketType.PUBLISH):
            props.setdefault(pid, []).append(value)  # type: ignore[attr-defined]
        elif pid in props:
            # Including any other property more than once is a Protocol Error (2.2.2.2).
            raise protocol_error(f"property {PropertyId(pid).name} appears more than once")
        else:
            props[pid] = value
    if _AUTH_DATA in props and _AUTH_METHOD not in props:
        # Authentication Data without an Authentication Method is a Protocol Error (3.1.2.11.10).
        raise protocol_error("authentication data without an authentication method")
    return props, stop


def _encode_value(wire: PropertyType, value: object) -> bytes:
    if wire is _T.BYTE:
        return bytes((int(value),))  # type: ignore[call-overload]
    if wire is _T.TWO_BYTE_INT:
        return int(value).to_bytes(2, "big")  # type: ignore[call-overload]
    if wire is _T.FOUR_BYTE_INT:
        return int(value).to_bytes(4, "big")  # type: ignore[call-overload]
    if wire is _T.VARINT:
        return encode_varint(int(value))  # type: ignore[call-overload]
    if wire is _T.UTF8:
        return encode_utf8(str(value))
    if wire is _T.BINARY:
        return encode_binary(bytes(value))  # type: ignore[call-overload]
    pair: tuple[str, str] = value  # type: ignore[assignment]
    return encode_utf8(pair[0]) + encode_utf8(pair[1])


def encode_properties(props: dict[int, object], packet_type: int) -> bytes:
    """Property length + properties; raises ValueError for a property the packet can't carry."""
    if not props:
        return b"\x00"
    out = bytearray()
    for pid, value in props.items():
        spec = PROPERTIES.get(pid)
        if spec is None or packet_type not in spec.packets:
            raise ValueError(f"property 0x{int(pid):02X} cannot be sent in packet {packet_type}")
        head = bytes((int(pid),))
        repeated = pid == _USER or (pid == _SUB_ID and isinstance(value, list))
        for item in value if repeated else (value,):  # type: ignore[attr-defined]
            out += head
            out += _encode_value(spec.wire_type, item)
    if len(out) > MAX_VARINT:
        raise ValueError("properties too long")
    return encode_varint(len(out)) + bytes(out)


__all__ = [
    "PROPERTIES",
    "WILL",
    "PropertyId",
    "PropertySpec",
    "PropertyType",
    "encode_properties",
    "parse_properties",
]
