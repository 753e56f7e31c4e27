"""Encode packets to bytes for MQTT 3.1.1 (level 4) or 5.0 (level 5).

Output is in the shortest form the spec allows and re-parses to an equal packet. For 3.1.1
the fields v3 has no room for (properties, reason codes of acks, UNSUBACK codes, DISCONNECT
reason) are dropped; a v5 failure code in a SUBACK becomes 0x80 and a v5 CONNACK refusal the
nearest v3 return code. Values the wire cannot carry raise ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    UnsubAck,
    Unsubscribe,
)
from .properties import WILL, encode_properties
from .reason_codes import CONNACK_V5_TO_V3
from .wire import MAX_VARINT, encode_binary, encode_utf8, encode_varint


def _frame(first: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes((first, length)) + body
    if length > MAX_VARINT:
        raise ValueError("packet body exceeds the maximum remaining length")
    return bytes((first,)) + encode_varint(length) + body


def _pid(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier must be 1..65535, got {packet_id!r}")
    return packet_id.to_bytes(2, "big")


def _props(props: dict[int, object], v5: bool, ptype: int) -> bytes:
    # v3.1.1 has no properties; v5 writes at least the property length 0.
    return encode_properties(props, ptype) if v5 else b""


def _code_and_props(code: int, props: dict[int, object], ptype: int) -> bytes:
    """v5 acks, DISCONNECT, AUTH: reason code 0 with no properties may be omitted, and so
    may empty properties after a code (3.4.2.1, 3.14.2.1, 3.15.2.1)."""
    if not props:
        return bytes((code,)) if code else b""
    return bytes((code,)) + encode_properties(props, ptype)


def _connect(p: Connect, level: int) -> bytes:
    v5 = level == 5
    if not v5 and p.password is not None and p.username is None:
        raise ValueError("MQTT 3.1.1 cannot send a password without a username [MQTT-3.1.2-22]")
    if not 0 <= p.keep_alive <= 0xFFFF:
        raise ValueError("keep alive must be 0..65535")
    flags = 0x02 if p.clean_start else 0
    tail = [encode_utf8(p.client_id)]
    if p.will is not None:
        will = p.will
        if will.qos not in (0, 1, 2):
            raise ValueError("will QoS must be 0, 1 or 2")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if v5:
            tail.append(encode_properties(will.properties, WILL))
        tail.append(encode_utf8(will.topic))
        tail.append(encode_binary(will.payload))
    if p.username is not None:
        flags |= 0x80
        tail.append(encode_utf8(p.username))
    if p.password is not None:
        flags |= 0x40
        tail.append(encode_binary(p.password))
    head = encode_utf8(p.protocol_name) + bytes((level, flags)) + p.keep_alive.to_bytes(2, "big")
    return _frame(0x10, head + _props(p.properties, v5, PacketType.CONNECT) + b"".join(tail))


def _connack(p: Connack, level: int) -> bytes:
    code = p.reason_code
    if level == 5:
        # Session Present is 0 with a failure reason code [MQTT-3.2.2-6].
        body = bytes((1 if p.session_present and code < 0x80 else 0, code))
        return _frame(0x20, body + encode_properties(p.properties, PacketType.CONNACK))
    if code > 5:
        if code not in CONNACK_V5_TO_V3:
            raise ValueError(f"no MQTT 3.1.1 return code for CONNACK reason 0x{code:02X}")
        code = CONNACK_V5_TO_V3[code]
    # Session Present is 0 with a non-zero return code [MQTT-3.2.2-4].
    return _frame(0x20, bytes((1 if p.session_present and not code else 0, code)))


def _publish(p: Publish, level: int) -> bytes:
    qos = p.qos
    if qos not in (0, 1, 2):
        raise ValueError("PUBLISH QoS must be 0, 1 or 2 [MQTT-3.3.1-4]")
    # DUP is 0 for QoS 0 [MQTT-3.3.1-2]; a QoS 0 PUBLISH has no packet id.
    first = 0x30 | (qos << 1) | (0x01 if p.retain else 0) | (0x08 if p.dup and qos else 0)
    topic = p.topic.encode("utf-8")
    if len(topic) > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += _pid(p.packet_id)
    body += _props(p.properties, level == 5, PacketType.PUBLISH)
    return _frame(first, body + p.payload)


def _ack(p: PubAck | PubRec | PubRel | PubComp, level: int) -> bytes:
    first = 0x62 if p.TYPE == PacketType.PUBREL else p.TYPE << 4
    body = _pid(p.packet_id)
    if level == 5:
        body += _code_and_props(p.reason_code, p.properties, p.TYPE)
    return _frame(first, body)


def _subscribe(p: Subscribe, level: int) -> bytes:
    if not p.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one filter [MQTT-3.8.3-3]")
    v5 = level == 5
    parts = [_pid(p.packet_id), _props(p.properties, v5, PacketType.SUBSCRIBE)]
    for sub in p.subscriptions:
        if sub.qos not in (0, 1, 2):
            raise ValueError("subscription QoS must be 0, 1 or 2")
        options = sub.qos
        if v5:
            if sub.retain_handling not in (0, 1, 2):
                raise ValueError("retain handling must be 0, 1 or 2")
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        parts.append(encode_utf8(sub.topic_filter))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _suback(p: SubAck, level: int) -> bytes:
    if not p.reason_codes:
        raise ValueError("SUBACK needs at least one reason code")
    codes = p.reason_codes
    if level != 5:
        # v3.1.1 knows only granted QoS 0..2 and 0x80 Failure [MQTT-3.9.3-2].
        codes = [c if c < 0x80 else 0x80 for c in codes]
    return _frame(
        0x90, _pid(p.packet_id) + _props(p.properties, level == 5, PacketType.SUBACK) + bytes(codes)
    )


def _unsubscribe(p: Unsubscribe, level: int) -> bytes:
    if not p.topic_filters:
        raise ValueError("UNSUBSCRIBE needs at least one filter [MQTT-3.10.3-2]")
    parts = [_pid(p.packet_id), _props(p.properties, level == 5, PacketType.UNSUBSCRIBE)]
    parts.extend(encode_utf8(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _unsuback(p: UnsubAck, level: int) -> bytes:
    if level != 5:
        return _frame(0xB0, _pid(p.packet_id))
    if not p.reason_codes:
        raise ValueError("an MQTT 5 UNSUBACK needs one reason code per filter")
    props = encode_properties(p.properties, PacketType.UNSUBACK)
    return _frame(0xB0, _pid(p.packet_id) + props + bytes(p.reason_codes))


def _ping(p: PingReq | PingResp, level: int) -> bytes:
    return bytes((p.TYPE << 4, 0))


def _disconnect_or_auth(p: Disconnect | Auth, level: int) -> bytes:
    first = p.TYPE << 4
    if level != 5:
        if p.TYPE == PacketType.AUTH:
            raise ValueError("AUTH does not exist in MQTT 3.1.1")
        return bytes((first, 0))
    if p.TYPE == PacketType.AUTH and p.reason_code and not p.properties:
        raise ValueError("a non-empty AUTH needs an authentication method (3.15.2.2.2)")
    return _frame(first, _code_and_props(p.reason_code, p.properties, p.TYPE))


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _connect,
    Connack: _connack,
    Publish: _publish,
    PubAck: _ack,
    PubRec: _ack,
    PubRel: _ack,
    PubComp: _ack,
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: _ping,
    PingResp: _ping,
    Disconnect: _disconnect_or_auth,
    Auth: _disconnect_or_auth,
}


def encode(packet: Packet, protocol_level: int) -> bytes:
    """Serialize ``packet`` for a connection of ``protocol_level`` (4 = 3.1.1, 5 = 5.0).

    A CONNECT is written with ``protocol_level`` as its level byte.
    """
    if protocol_level not in (4, 5):
        raise ValueError("protocol_level must be 4 or 5")
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return encoder(packet, protocol_level)
