"""encode(): exact bytes where the spec fixes them, and every packet re-parses equal."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from iot_guard.mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PropertyId,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamParser,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)

USER = PropertyId.USER_PROPERTY
REASON = PropertyId.REASON_STRING

CLIENT_SENT = [
    Connect("agent-1", 4, True, 30, "ops-agent", b"tok", Will("s/t", b"bye", 2, True)),
    Connect("", 5, False, 0, None, b"pw-only", None, properties={PropertyId.RECEIVE_MAXIMUM: 1}),
    Connect(
        "agent-2",
        5,
        will=Will("w", b"", 0, False, {PropertyId.WILL_DELAY_INTERVAL: 9, USER: [("a", "b")]}),
        properties={
            PropertyId.AUTHENTICATION_METHOD: "token",
            PropertyId.AUTHENTICATION_DATA: b"\x00",
        },
    ),
    Publish("tenants/acme/devices/therm-001/shadow/update", b'{"state":{}}', 1, True, True, 77),
    Publish("t", b"", 2, packet_id=65535, properties={PropertyId.CONTENT_TYPE: "json"}),
    Publish("ünïcødé/✓", b"\x00" * 70000),
    Subscribe(5, [Subscription("a/+", 1, True, True, 2), Subscription("$share/g/#", 2)]),
    Subscribe(6, [Subscription("x")], {PropertyId.SUBSCRIPTION_IDENTIFIER: 12, USER: [("k", "v")]}),
    Unsubscribe(7, ["a/+", "b"], {USER: [("k", "v")]}),
    PubAck(1),
    PubAck(2, 0x87, {REASON: "not authorized: tool shadow-update"}),
    PubRec(3, 0x99),
    PubRel(3),
    PubComp(3, 0x92, {REASON: "gone"}),
    PingReq(),
    Disconnect(),
    Disconnect(0x04, {PropertyId.SESSION_EXPIRY_INTERVAL: 0}),
    Auth(0x19, {PropertyId.AUTHENTICATION_METHOD: "SCRAM"}),
]

SERVER_SENT = [
    Connack(0, True, {PropertyId.TOPIC_ALIAS_MAXIMUM: 0, PropertyId.MAXIMUM_QOS: 1}),
    SubAck(5, [0, 1, 2, 0x80]),
    SubAck(6, [0x87, 0x9E], {REASON: "$share refused"}),
    UnsubAck(7, [0, 0x11]),
    PingResp(),
    Publish("a/b", b"x", 1, packet_id=9, properties={PropertyId.SUBSCRIPTION_IDENTIFIER: [1, 2]}),
    Disconnect(0x8B, {PropertyId.SERVER_REFERENCE: "other:1883"}),
]


def _expected_v3(packet: Any) -> Any:
    """What a v3.1.1 peer can see of ``packet``: no properties, no ack reason codes."""
    changes: dict[str, Any] = {}
    if hasattr(packet, "properties"):
        changes["properties"] = {}
    if isinstance(packet, PubAck | PubRec | PubRel | PubComp | Disconnect):
        changes["reason_code"] = 0
    if isinstance(packet, UnsubAck):
        changes["reason_codes"] = []
    if isinstance(packet, Subscribe):
        # v3.1.1 subscription options carry only the QoS.
        changes["subscriptions"] = [
            Subscription(x.topic_filter, x.qos) for x in packet.subscriptions
        ]
    if isinstance(packet, SubAck):
        changes["reason_codes"] = [c if c < 0x80 else 0x80 for c in packet.reason_codes]
    if isinstance(packet, Connect):
        changes["protocol_level"] = 4
        if packet.will is not None:
            changes["will"] = dataclasses.replace(packet.will, properties={})
    return dataclasses.replace(packet, **changes)


def _parse_one(data: bytes, level: int, side: str, packet: Any) -> Any:
    if isinstance(packet, Connect):
        parser = StreamParser(side="server")
    elif side == "client":
        parser = StreamParser(side="client", protocol_level=level)
        if not isinstance(packet, Connack):
            parser.feed(encode(Connack(), level))
    else:
        parser = StreamParser(side="server", protocol_level=level)
    (out,) = parser.feed(data)
    assert out.raw == data
    return dataclasses.replace(out, raw=b"")


@pytest.mark.parametrize("packet", CLIENT_SENT, ids=lambda p: type(p).__name__)
def test_client_packets_round_trip_v5(packet: Any) -> None:
    if isinstance(packet, Connect):
        packet = dataclasses.replace(packet, protocol_level=5)  # encode() writes the given level
    assert _parse_one(encode(packet, 5), 5, "server", packet) == packet


@pytest.mark.parametrize("packet", SERVER_SENT, ids=lambda p: type(p).__name__)
def test_server_packets_round_trip_v5(packet: Any) -> None:
    assert _parse_one(encode(packet, 5), 5, "client", packet) == packet


@pytest.mark.parametrize(
    "packet",
    [
        p
        for p in CLIENT_SENT
        if not isinstance(p, Auth) and not (isinstance(p, Connect) and p.username is None)
    ],
    ids=lambda p: type(p).__name__,
)
def test_client_packets_round_trip_v311_dropping_v5_fields(packet: Any) -> None:
    assert _parse_one(encode(packet, 4), 4, "server", packet) == _expected_v3(packet)


@pytest.mark.parametrize(
    "packet",
    [p for p in SERVER_SENT if not isinstance(p, Disconnect)]
    + [SubAck(1, [0x87, 0x8F, 2]), UnsubAck(2, [0x11])],
    ids=lambda p: type(p).__name__,
)
def test_server_packets_round_trip_v311_dropping_v5_fields(packet: Any) -> None:
    expected = _expected_v3(packet)
    if isinstance(expected, Publish):
        expected.properties = {}
    assert _parse_one(encode(packet, 4), 4, "client", packet) == expected


def test_v5_acks_use_the_short_forms() -> None:
    # Reason code 0 and no properties may be omitted; no properties -> no property length.
    assert encode(PubAck(5), 5) == b"\x40\x02\x00\x05"
    assert encode(PubAck(5, 0x87), 5) == b"\x40\x03\x00\x05\x87"
    assert encode(PubRel(5), 5) == b"\x62\x02\x00\x05"
    with_reason = encode(PubRec(5, 0x87, {REASON: "no"}), 5)
    assert with_reason == b"\x50\x09\x00\x05\x87\x05\x1f\x00\x02no"
    assert encode(Disconnect(), 5) == b"\xe0\x00"
    assert encode(Disconnect(0x94), 5) == b"\xe0\x01\x94"


def test_v311_acks_drop_reason_and_properties() -> None:
    assert encode(PubAck(5, 0x87, {REASON: "no"}), 4) == b"\x40\x02\x00\x05"
    assert encode(UnsubAck(5, [0x11]), 4) == b"\xb0\x02\x00\x05"
    assert encode(Disconnect(0x81), 4) == b"\xe0\x00"


def test_v311_connack_maps_v5_refusals_and_clears_session_present() -> None:
    assert encode(Connack(0, True), 4) == b"\x20\x02\x01\x00"
    assert encode(Connack(0x86, True), 4) == b"\x20\x02\x00\x04"
    assert encode(Connack(0x87), 4) == b"\x20\x02\x00\x05"
    assert encode(Connack(2), 4) == b"\x20\x02\x00\x02"
    with pytest.raises(ValueError):
        encode(Connack(0x97), 4)  # no v3 return code says "quota exceeded"


def test_connect_bytes_match_the_spec_example() -> None:
    # Spec 3.1.2.10 style: protocol name, level, flags, keep alive, then the payload.
    data = encode(Connect("c", 4, True, 10, "u", b"p"), 4)
    assert data == b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x0a\x00\x01c\x00\x01u\x00\x01p"


@pytest.mark.parametrize(
    ("size", "header"), [(127, 2), (128, 3), (16383, 3), (16384, 4), (2_097_152, 5)]
)
def test_remaining_length_uses_the_shortest_encoding(size: int, header: int) -> None:
    body_overhead = 2 + 1  # topic length + 1-byte topic
    data = encode(Publish("t", b"x" * (size - body_overhead)), 4)
    assert len(data) == header + size


def test_qos0_publish_never_carries_dup_or_packet_id() -> None:
    # [MQTT-3.3.1-2]: DUP is 0 for QoS 0; a QoS 0 PUBLISH has no Packet Identifier.
    assert encode(Publish("t", b"", 0, dup=True, packet_id=4), 4) == b"\x30\x03\x00\x01t"


@pytest.mark.parametrize(
    ("packet", "level"),
    [
        (Publish("t", b"", 1), 4),  # QoS 1 needs a packet id
        (Publish("t", b"", 1, packet_id=0), 4),
        (Publish("t", b"", 3, packet_id=1), 4),
        (Publish("t" * 70000), 4),
        (PubAck(70000), 4),
        (Connect("c", 4, password=b"p"), 4),  # [MQTT-3.1.2-22]
        (Auth(), 4),
        (Auth(0x18), 5),  # a non-empty AUTH needs a method
        (Subscribe(1, []), 5),
        (Unsubscribe(1, []), 5),
        (SubAck(1, []), 5),
        (UnsubAck(1, []), 5),
        (Publish("t", properties={PropertyId.SESSION_EXPIRY_INTERVAL: 1}), 5),
        (Subscribe(1, [Subscription("a", retain_handling=3)]), 5),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v),
)
def test_unencodable_packets_raise_value_error(packet: Any, level: int) -> None:
    with pytest.raises(ValueError):
        encode(packet, level)


def test_encode_rejects_unknown_level_and_non_packets() -> None:
    with pytest.raises(ValueError):
        encode(PingReq(), 3)
    with pytest.raises(TypeError):
        encode("PINGREQ", 4)  # type: ignore[arg-type]


def test_unchanged_parsed_packet_can_be_forwarded_by_raw_bytes() -> None:
    # A v5 PUBACK with an explicit 0 reason code and empty properties is legal on the wire;
    # raw keeps that exact form while encode() would shorten it.
    original = b"\x40\x04\x00\x05\x00\x00"
    (ack,) = StreamParser(side="server", protocol_level=5).feed(original)
    assert ack.raw == original
    assert encode(ack, 5) == b"\x40\x02\x00\x05"
