"""StreamParser: one test per spec rule a broken parser would get wrong.

Packets are built by hand from bytes here so that each test controls exactly the one
field that breaks a rule.
"""

from __future__ import annotations

import time

import pytest

from iot_guard.mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PropertyId,
    ProtocolError,
    PubAck,
    Publish,
    PubRel,
    ReasonCode,
    StreamParser,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    encode,
)
from iot_guard.mqtt.wire import encode_varint

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR


# -- byte builders ---------------------------------------------------------------------------


def s(text: str | bytes) -> bytes:
    """A length-prefixed string; bytes are written as they are (to build bad UTF-8)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return encode_varint(len(body)) + body


def prop_byte(pid: int, value: int) -> bytes:
    return bytes((pid, value))


def prop_u16(pid: int, value: int) -> bytes:
    return bytes((pid,)) + value.to_bytes(2, "big")


def prop_u32(pid: int, value: int) -> bytes:
    return bytes((pid,)) + value.to_bytes(4, "big")


def prop_varint(pid: int, value: int) -> bytes:
    return bytes((pid,)) + encode_varint(value)


def prop_str(pid: int, value: str | bytes) -> bytes:
    return bytes((pid,)) + s(value)


def connect_bytes(
    level: int = 4,
    flags: int = 0x02,
    payload: bytes | None = None,
    properties: bytes = b"\x00",
    name: str = "MQTT",
) -> bytes:
    head = s(name) + bytes((level, flags)) + (60).to_bytes(2, "big")
    if level == 5:
        head += properties
    return frame(0x10, head + (s("agent-1") if payload is None else payload))


def publish_bytes(
    topic: str | bytes,
    payload: bytes = b"hi",
    *,
    first: int = 0x30,
    packet_id: int | None = None,
    properties: bytes | None = None,
) -> bytes:
    body = s(topic)
    if packet_id is not None:
        body += packet_id.to_bytes(2, "big")
    if properties is not None:
        body += properties
    return frame(first, body + payload)


def server(level: int | None = None, **kw: int) -> StreamParser:
    return StreamParser(side="server", protocol_level=level, **kw)  # type: ignore[arg-type]


def client(level: int) -> StreamParser:
    parser = StreamParser(side="client", protocol_level=level)
    parser.feed(frame(0x20, b"\x00\x00" + (b"\x00" if level == 5 else b"")))
    return parser


def refused(parser: StreamParser, data: bytes, code: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parser.feed(data)
    assert info.value.reason_code == code, info.value
    return info.value


def test_a_violation_hands_over_the_packets_before_it_once() -> None:
    # The packets a read completed before the violation are the caller's to handle (what
    # the guard accepted must not be lost with the rest of the read); a later feed raises
    # the same error with none, so nothing is handed over twice.
    parser = server()
    connect = encode(Connect("c", 5), 5)
    publish = encode(Publish("a/b", b"x", 1, packet_id=1), 5)
    err = refused(parser, connect + publish + b"\x00\x00" + publish, ReasonCode.MALFORMED_PACKET)
    assert [type(p) for p in err.before] == [Connect, Publish]
    assert err.protocol_level == 5  # known from the CONNECT before it
    again = refused(parser, publish, ReasonCode.MALFORMED_PACKET)
    assert again.before == []
    # Also for a violation found while parsing a packet, and past the size limit.
    big = StreamParser(side="server", protocol_level=5, max_packet_size=64)  # past CONNECT
    err = refused(big, publish + frame(0x30, b"\x00\x01a" + b"x" * 100),
                  ReasonCode.PACKET_TOO_LARGE)
    assert [type(p) for p in err.before] == [Publish]


# -- fixed header --------------------------------------------------------------------------


def test_remaining_length_longer_than_four_bytes_is_malformed() -> None:
    err = refused(server(4), b"\x30\xff\xff\xff\xff\x01", MALFORMED)
    assert "4 bytes" in str(err)


@pytest.mark.parametrize("length", [b"\x80\x00", b"\x81\x00", b"\xff\x80\x00"])
def test_remaining_length_not_in_shortest_form_is_malformed(length: bytes) -> None:
    # [MQTT-1.5.5-1]: 0x80 0x00 is a two-byte encoding of 0, etc.
    refused(server(4), b"\x30" + length + b"\x00" * 200, MALFORMED)


def test_remaining_length_split_across_feeds_waits_for_more() -> None:
    packet = encode(Publish("t", b"x" * 300), 4)
    parser = server(4)
    assert parser.feed(packet[:2]) == []  # first length byte has the continuation bit
    assert parser.feed(packet[2:3]) == []
    (pub,) = parser.feed(packet[3:])
    assert pub.payload == b"x" * 300 and pub.raw == packet


@pytest.mark.parametrize(
    "first",
    [0x11, 0x18, 0x41, 0x51, 0x60, 0x63, 0x71, 0x80, 0x83, 0xA0, 0xA3, 0xC1, 0xE8],
    ids=lambda b: f"0x{b:02X}",
)
def test_reserved_fixed_header_flags_are_malformed(first: int) -> None:
    # [MQTT-2.2.2-1/2]: flags are fixed per type (PUBREL/SUBSCRIBE/UNSUBSCRIBE 0010).
    parser = server(4) if first >> 4 != 1 else server()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + s("c") if first >> 4 == 1 else b"\x00\x01"
    refused(parser, frame(first, body), MALFORMED)


@pytest.mark.parametrize("first", [0x21, 0x92, 0xB4, 0xD1, 0xE1], ids=lambda b: f"0x{b:02X}")
def test_reserved_flags_of_server_packets_are_malformed(first: int) -> None:
    parser = client(5) if first >> 4 != 2 else StreamParser(side="client", protocol_level=5)
    refused(parser, frame(first, b"\x00\x01\x00\x00"), MALFORMED)


def test_reserved_packet_type_zero_is_malformed() -> None:
    refused(server(4), b"\x00\x00", MALFORMED)


def test_auth_packet_does_not_exist_in_v311() -> None:
    refused(server(4), b"\xf0\x00", MALFORMED)


def test_publish_qos_3_is_malformed() -> None:
    # [MQTT-3.3.1-4]
    refused(server(4), publish_bytes("a/b", first=0x36, packet_id=1), MALFORMED)


def test_dup_on_qos0_publish_is_malformed() -> None:
    # [MQTT-3.3.1-2]
    refused(server(4), publish_bytes("a/b", first=0x38), MALFORMED)


# -- strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"a\xc3", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80"],
    ids=["invalid-byte", "truncated", "overlong-2", "overlong-3", "above-U+10FFFF"],
)
def test_ill_formed_utf8_topic_is_malformed(bad: bytes) -> None:
    refused(server(4), publish_bytes(b"a/" + bad), MALFORMED)


def test_surrogate_code_point_in_topic_is_malformed() -> None:
    # U+D800 encoded as ED A0 80 [MQTT-1.5.4-1]
    refused(server(5), publish_bytes(b"a/\xed\xa0\x80", properties=b"\x00"), MALFORMED)


def test_surrogate_in_subscribe_filter_is_malformed() -> None:
    body = b"\x00\x01" + s(b"a/\xed\xbf\xbf") + b"\x00"
    refused(server(4), frame(0x82, body), MALFORMED)


def test_null_character_in_topic_is_malformed() -> None:
    # [MQTT-1.5.4-2]
    refused(server(4), publish_bytes(b"a/\x00/b"), MALFORMED)


def test_null_character_in_user_property_is_malformed() -> None:
    user = bytes((0x26,)) + s("k") + s(b"v\x00")
    refused(server(5), publish_bytes("a/b", properties=props(user)), MALFORMED)


def test_bad_utf8_in_client_id_is_malformed_with_level_known() -> None:
    err = refused(server(), connect_bytes(5, payload=s(b"\xfe")), MALFORMED)
    assert err.protocol_level == 5  # the caller may answer with a v5 CONNACK 0x81


def test_string_length_past_end_of_packet_is_malformed() -> None:
    refused(server(4), frame(0x30, b"\x00\x09a/b"), MALFORMED)


# -- topics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+/b", "a/b+c", "a#"])
def test_wildcards_in_publish_topic_are_refused(topic: str) -> None:
    # [MQTT-3.3.2-2]
    err = refused(server(4), publish_bytes(topic), ReasonCode.TOPIC_NAME_INVALID)
    assert err.protocol_level == 4


def test_empty_publish_topic_is_refused_in_v311() -> None:
    refused(server(4), publish_bytes(""), ReasonCode.TOPIC_NAME_INVALID)


def test_v5_empty_topic_needs_a_topic_alias() -> None:
    refused(server(5), publish_bytes("", properties=b"\x00"), ReasonCode.TOPIC_NAME_INVALID)
    (pub,) = server(5).feed(publish_bytes("", properties=props(prop_u16(0x23, 3))))
    assert pub.topic == "" and pub.properties == {PropertyId.TOPIC_ALIAS: 3}


@pytest.mark.parametrize(
    "bad_filter",
    [
        "",
        "a/#/b",
        "a#",
        "a/b#",
        "a+",
        "a/+b",
        "$share//a",
        "$share/g",
        "$share/g/",
        "$share/g+/a",
        "$share/g#/a",
    ],
)
def test_invalid_subscribe_filters_are_refused(bad_filter: str) -> None:
    body = b"\x00\x01" + s(bad_filter) + b"\x01"
    refused(server(4), frame(0x82, body), ReasonCode.TOPIC_FILTER_INVALID)


def test_invalid_unsubscribe_filter_is_refused() -> None:
    refused(server(5), frame(0xA2, b"\x00\x01\x00" + s("a/#/b")), ReasonCode.TOPIC_FILTER_INVALID)


def test_will_topic_with_wildcard_is_refused_with_level() -> None:
    payload = s("c") + s("status/#") + s("bye")
    err = refused(server(), connect_bytes(4, flags=0x06, payload=payload), 0x90)
    assert err.protocol_level == 4


# -- packet identifiers and empty payloads ----------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        publish_bytes("a/b", first=0x32, packet_id=0),
        frame(0x82, b"\x00\x00" + s("a/b") + b"\x00"),
        frame(0xA2, b"\x00\x00" + s("a/b")),
        frame(0x40, b"\x00\x00"),
        frame(0x62, b"\x00\x00"),
    ],
    ids=["publish", "subscribe", "unsubscribe", "puback", "pubrel"],
)
def test_packet_identifier_zero_is_refused(data: bytes) -> None:
    # [MQTT-2.2.1-3]
    refused(server(4), data, PROTOCOL)


def test_subscribe_without_filters_is_a_protocol_error() -> None:
    # [MQTT-3.8.3-3]
    refused(server(4), frame(0x82, b"\x00\x01"), PROTOCOL)
    refused(server(5), frame(0x82, b"\x00\x01\x00"), PROTOCOL)


def test_unsubscribe_without_filters_is_a_protocol_error() -> None:
    # [MQTT-3.10.3-2]
    refused(server(4), frame(0xA2, b"\x00\x01"), PROTOCOL)


# -- subscription options ---------------------------------------------------------------------


def test_v5_subscription_option_reserved_bits_are_malformed() -> None:
    # [MQTT-3.8.3-5]
    refused(server(5), frame(0x82, b"\x00\x01\x00" + s("a/b") + b"\x41"), MALFORMED)


def test_v311_subscription_option_reserved_bits_are_malformed() -> None:
    # v3.1.1 has only the QoS bits; no-local (0x04) is reserved there.
    refused(server(4), frame(0x82, b"\x00\x01" + s("a/b") + b"\x04"), MALFORMED)


def test_subscription_qos_3_is_refused() -> None:
    # v5 3.8.3.1: a Protocol Error; v3.1.1 [MQTT-3-8.3-4]: malformed.
    refused(server(5), frame(0x82, b"\x00\x01\x00" + s("a/b") + b"\x03"), PROTOCOL)
    refused(server(4), frame(0x82, b"\x00\x01" + s("a/b") + b"\x03"), MALFORMED)


def test_retain_handling_3_is_a_protocol_error() -> None:
    refused(server(5), frame(0x82, b"\x00\x01\x00" + s("a/b") + b"\x30"), PROTOCOL)


def test_no_local_on_shared_subscription_is_a_protocol_error() -> None:
    refused(server(5), frame(0x82, b"\x00\x01\x00" + s("$share/g/a") + b"\x04"), PROTOCOL)


def test_v5_subscription_options_are_decoded() -> None:
    body = b"\x00\x09\x00" + s("a/+") + b"\x2e" + s("$share/g/b/#") + b"\x01"
    (sub,) = server(5).feed(frame(0x82, body))
    assert sub == Subscribe(
        9,
        [Subscription("a/+", 2, True, True, 2), Subscription("$share/g/b/#", 1)],
        raw=frame(0x82, body),
    )


# -- properties -----------------------------------------------------------------------------


def test_duplicate_property_is_a_protocol_error() -> None:
    dup = props(prop_u32(0x02, 10), prop_u32(0x02, 20))
    refused(server(5), publish_bytes("a/b", properties=dup), PROTOCOL)


def test_duplicate_subscription_identifier_in_subscribe_is_a_protocol_error() -> None:
    body = b"\x00\x01" + props(prop_varint(0x0B, 1), prop_varint(0x0B, 2)) + s("a") + b"\x00"
    refused(server(5), frame(0x82, body), PROTOCOL)


def test_repeatable_properties_keep_order() -> None:
    user = [bytes((0x26,)) + s(k) + s(v) for k, v in (("b", "1"), ("a", "2"), ("b", "3"))]
    sub_ids = [prop_varint(0x0B, 7), prop_varint(0x0B, 300)]
    (pub,) = client(5).feed(publish_bytes("a/b", properties=props(*user, *sub_ids)))
    assert pub.properties == {
        PropertyId.USER_PROPERTY: [("b", "1"), ("a", "2"), ("b", "3")],
        PropertyId.SUBSCRIPTION_IDENTIFIER: [7, 300],
    }


def test_subscription_identifier_in_client_publish_is_a_protocol_error() -> None:
    # [MQTT-3.3.4-6]: only a server puts Subscription Identifiers in PUBLISH.
    refused(server(5), publish_bytes("a/b", properties=props(prop_varint(0x0B, 1))), PROTOCOL)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (publish_bytes("a/b", properties=props(prop_u32(0x11, 5))), "session expiry in PUBLISH"),
        (publish_bytes("a/b", properties=props(prop_u32(0x18, 5))), "will delay in PUBLISH"),
        (frame(0x40, b"\x00\x01\x00" + props(prop_u16(0x23, 1))), "topic alias in PUBACK"),
        (frame(0xE0, b"\x00" + props(prop_byte(0x24, 1))), "maximum QoS in DISCONNECT"),
        (publish_bytes("a/b", properties=props(prop_byte(0x7F, 1))), "unknown identifier"),
        (publish_bytes("a/b", properties=props(prop_byte(0x81, 1))), "two-byte identifier"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_property_not_allowed_in_packet_is_malformed(data: bytes, where: str) -> None:
    refused(server(5), data, MALFORMED)


def test_will_only_property_in_connect_properties_is_malformed() -> None:
    err = refused(server(), connect_bytes(5, properties=props(prop_u32(0x18, 5))), MALFORMED)
    assert err.protocol_level == 5


def test_connect_only_property_in_will_properties_is_malformed() -> None:
    payload = s("c") + props(prop_u32(0x11, 5)) + s("w/t") + s("x")
    refused(server(), connect_bytes(5, flags=0x06, payload=payload), MALFORMED)


@pytest.mark.parametrize(
    "data",
    [
        publish_bytes("a/b", properties=props(prop_byte(0x01, 2))),  # payload format
        publish_bytes("a/b", properties=props(prop_u16(0x23, 0))),  # topic alias 0
        publish_bytes("a/b", properties=props(prop_str(0x08, "r/#"))),  # response topic
        frame(0x82, b"\x00\x01" + props(prop_varint(0x0B, 0)) + s("a") + b"\x00"),  # sub id 0
    ],
    ids=["payload-format-2", "topic-alias-0", "response-topic-wildcard", "subscription-id-0"],
)
def test_invalid_property_values_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        server(5).feed(data)
    assert info.value.reason_code in (PROTOCOL, ReasonCode.TOPIC_NAME_INVALID)


@pytest.mark.parametrize(
    "prop",
    [prop_u16(0x21, 0), prop_u32(0x27, 0), prop_byte(0x17, 2), prop_byte(0x19, 5)],
    ids=["receive-maximum-0", "maximum-packet-size-0", "request-problem-2", "request-resp-5"],
)
def test_invalid_connect_property_values_are_protocol_errors(prop: bytes) -> None:
    err = refused(server(), connect_bytes(5, properties=props(prop)), PROTOCOL)
    assert err.protocol_level == 5


def test_authentication_data_without_method_is_a_protocol_error() -> None:
    auth_data = bytes((0x16,)) + s(b"\x01\x02")
    refused(server(), connect_bytes(5, properties=props(auth_data)), PROTOCOL)


def test_maximum_qos_2_in_connack_is_a_protocol_error() -> None:
    parser = StreamParser(side="client", protocol_level=5)
    refused(parser, frame(0x20, b"\x00\x00" + props(prop_byte(0x24, 2))), PROTOCOL)


def test_property_length_past_end_of_packet_is_malformed() -> None:
    refused(server(5), frame(0x40, b"\x00\x01\x00\x09\x1f"), MALFORMED)


# -- CONNECT ---------------------------------------------------------------------------------


def test_first_packet_must_be_connect() -> None:
    # [MQTT-3.1.0-1]
    err = refused(server(), encode(Publish("a/b", b"x"), 4), PROTOCOL)
    assert err.protocol_level is None  # no level known: close without CONNACK


def test_second_connect_is_a_protocol_error() -> None:
    # [MQTT-3.1.0-2]
    parser = server()
    (connect,) = parser.feed(connect_bytes(5))
    assert connect.protocol_level == 5 and parser.protocol_level == 5
    err = refused(parser, connect_bytes(5), PROTOCOL)
    assert err.protocol_level == 5


@pytest.mark.parametrize(
    ("name", "level"),
    [("MQTT", 3), ("MQIsdp", 3), ("MQTT", 6), ("MQTT", 0), ("MQTX", 4), ("mqtt", 5)],
)
def test_unsupported_protocol_name_or_level(name: str, level: int) -> None:
    err = refused(
        server(), connect_bytes(level, name=name), ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    )
    assert err.protocol_level == level  # level 3 -> the caller answers v3 CONNACK 0x01


def test_connect_reserved_flag_is_malformed() -> None:
    # [MQTT-3.1.2-3]
    refused(server(), connect_bytes(4, flags=0x03), MALFORMED)


@pytest.mark.parametrize(
    "flags", [0x0A, 0x12, 0x22], ids=["will-qos1-no-will", "will-qos2-no-will", "will-retain"]
)
def test_will_qos_or_retain_without_will_flag_is_malformed(flags: int) -> None:
    # [MQTT-3.1.2-13], [MQTT-3.1.2-15]
    refused(server(), connect_bytes(4, flags=flags), MALFORMED)


def test_will_qos_3_is_malformed() -> None:
    # [MQTT-3.1.2-14]
    payload = s("c") + s("w/t") + s("bye")
    refused(server(), connect_bytes(4, flags=0x1E, payload=payload), MALFORMED)


def test_password_without_username_is_refused_in_v311_only() -> None:
    # [MQTT-3.1.2-22]; MQTT 5 allows a password alone (3.1.2.9).
    payload = s("c") + s(b"secret")
    refused(server(), connect_bytes(4, flags=0x42, payload=payload), MALFORMED)
    (connect,) = server().feed(connect_bytes(5, flags=0x42, payload=payload))
    assert connect.username is None and connect.password == b"secret"


def test_connect_with_trailing_bytes_is_malformed() -> None:
    refused(server(), connect_bytes(4, payload=s("c") + b"\x00"), MALFORMED)


def test_connect_missing_declared_username_is_malformed() -> None:
    refused(server(), connect_bytes(4, flags=0x82, payload=s("c")), MALFORMED)


def test_connect_fields_decoded() -> None:
    payload = s("agent-7") + s("w/t") + s(b"\x00\xff") + s("ops-agent") + s(b"tok")
    data = connect_bytes(4, flags=0xF4 & ~0x10 | 0x08, payload=payload)
    (connect,) = server().feed(data)
    assert connect.client_id == "agent-7"
    assert connect.clean_start is False
    assert connect.will is not None
    assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) == (
        "w/t",
        b"\x00\xff",
        1,
        True,
    )
    assert (connect.username, connect.password) == ("ops-agent", b"tok")
    assert connect.raw == data


# -- direction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet", [Connack(), SubAck(1, [0]), UnsubAck(1, [0]), PingResp()], ids=lambda p: p.TYPE.name
)
def test_server_side_refuses_packets_only_a_server_sends(packet: object) -> None:
    refused(server(5), encode(packet, 5), PROTOCOL)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "packet",
    [Connect("c", 5), Subscribe(1, [Subscription("a")]), Unsubscribe(1, ["a"]), PingReq()],
    ids=lambda p: p.TYPE.name,
)
def test_client_side_refuses_packets_only_a_client_sends(packet: object) -> None:
    refused(client(5), encode(packet, 5), PROTOCOL)  # type: ignore[arg-type]


def test_client_side_first_packet_must_be_connack() -> None:
    # [MQTT-3.2.0-1]
    parser = StreamParser(side="client", protocol_level=4)
    refused(parser, encode(Publish("a/b"), 4), PROTOCOL)


def test_client_side_second_connack_is_a_protocol_error() -> None:
    refused(client(4), encode(Connack(), 4), PROTOCOL)


def test_client_side_v5_auth_may_precede_connack() -> None:
    parser = StreamParser(side="client", protocol_level=5)
    auth = Auth(0x18, {PropertyId.AUTHENTICATION_METHOD: "SCRAM", 0x16: b"\x01"})
    (got,) = parser.feed(encode(auth, 5))
    assert got.properties == auth.properties
    (ack,) = parser.feed(encode(Connack(), 5))
    assert isinstance(ack, Connack)


def test_auth_without_method_is_a_protocol_error() -> None:
    refused(client(5), frame(0xF0, b"\x18\x00"), PROTOCOL)


def test_connack_reserved_acknowledge_flags_are_malformed() -> None:
    # [MQTT-3.2.2-1]
    refused(StreamParser(side="client", protocol_level=4), frame(0x20, b"\x02\x00"), MALFORMED)


def test_v311_connack_reserved_return_code_is_refused() -> None:
    refused(StreamParser(side="client", protocol_level=4), frame(0x20, b"\x00\x06"), PROTOCOL)


def test_connack_session_present_with_refusal_is_a_protocol_error() -> None:
    # [MQTT-3.2.2-4] (3.1.1) and [MQTT-3.2.2-6] (5.0)
    refused(StreamParser(side="client", protocol_level=4), frame(0x20, b"\x01\x05"), PROTOCOL)
    p5 = StreamParser(side="client", protocol_level=5)
    refused(p5, frame(0x20, b"\x01\x87\x00"), PROTOCOL)


def test_v5_connack_properties_decoded() -> None:
    parser = StreamParser(side="client", protocol_level=5)
    body = b"\x01\x00" + props(prop_u16(0x22, 10), prop_byte(0x24, 1), prop_str(0x12, "auto"))
    (ack,) = parser.feed(frame(0x20, body))
    assert ack == Connack(
        0,
        True,
        {
            PropertyId.TOPIC_ALIAS_MAXIMUM: 10,
            PropertyId.MAXIMUM_QOS: 1,
            PropertyId.ASSIGNED_CLIENT_IDENTIFIER: "auto",
        },
        frame(0x20, body),
    )


def test_v311_server_never_sends_disconnect() -> None:
    refused(client(4), b"\xe0\x00", PROTOCOL)


def test_server_disconnect_with_session_expiry_is_a_protocol_error() -> None:
    # [MQTT-3.14.2-2]
    refused(client(5), frame(0xE0, b"\x00" + props(prop_u32(0x11, 0))), PROTOCOL)


def test_suback_codes_checked_per_version() -> None:
    refused(client(4), frame(0x90, b"\x00\x01\x87"), PROTOCOL)  # v3: 0,1,2,0x80 only
    refused(client(5), frame(0x90, b"\x00\x01\x00\x03"), PROTOCOL)
    refused(client(5), frame(0x90, b"\x00\x01\x00"), PROTOCOL)  # no codes at all
    (ack,) = client(5).feed(frame(0x90, b"\x00\x01\x00\x00\x87\x9e"))
    assert ack.reason_codes == [0, 0x87, 0x9E]


def test_v311_unsuback_has_no_payload() -> None:
    refused(client(4), frame(0xB0, b"\x00\x01\x00"), MALFORMED)
    (ack,) = client(4).feed(frame(0xB0, b"\x00\x01"))
    assert ack == UnsubAck(1, [], raw=frame(0xB0, b"\x00\x01"))


# -- acks, trailing bytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [frame(0x40, b"\x00\x01\x00"), b"\xc0\x01\x00", b"\xe0\x01\x00", frame(0x70, b"\x00\x01\x00")],
    ids=["puback", "pingreq", "disconnect", "pubcomp"],
)
def test_v311_trailing_bytes_are_malformed(data: bytes) -> None:
    refused(server(4), data, MALFORMED)


def test_v5_ack_trailing_bytes_after_properties_are_malformed() -> None:
    refused(server(5), frame(0x40, b"\x00\x01\x00\x00\xaa"), MALFORMED)


def test_v5_ack_short_forms() -> None:
    parser = server(5)
    got = parser.feed(
        frame(0x40, b"\x00\x05") + frame(0x40, b"\x00\x06\x83") + frame(0x62, b"\x00\x07\x92\x00")
    )
    assert [(p.packet_id, p.reason_code, p.properties) for p in got] == [
        (5, 0, {}),
        (6, 0x83, {}),
        (7, 0x92, {}),
    ]
    assert isinstance(got[2], PubRel)


def test_v5_ack_reason_code_not_allowed_is_refused() -> None:
    refused(server(5), frame(0x40, b"\x00\x01\x92"), PROTOCOL)  # 0x92 is PUBREL/PUBCOMP only
    refused(server(5), frame(0x62, b"\x00\x01\x87"), PROTOCOL)


@pytest.mark.parametrize("code", [0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x9B, 0x9C, 0x9D, 0x9E, 0xA0])
def test_v5_client_disconnect_with_a_server_only_reason_code_is_refused(code: int) -> None:
    # 3.14.2.1 "sent by": these codes are the server's; a client sending one breaks the spec.
    refused(server(5), frame(0xE0, bytes([code])), PROTOCOL)


def test_v5_reason_codes_are_checked_against_the_sender_side() -> None:
    refused(server(5), frame(0x40, b"\x00\x01\x10"), PROTOCOL)  # "no matching subscribers"
    refused(server(5), frame(0x50, b"\x00\x01\x10"), PROTOCOL)
    assert server(5).feed(frame(0xE0, b"\x04"))[0].reason_code == 0x04  # client: with will
    assert server(5).feed(frame(0xE0, b"\x98"))[0].reason_code == 0x98  # either side
    broker = client(5)
    assert broker.feed(frame(0x40, b"\x00\x01\x10"))[0].reason_code == 0x10
    assert broker.feed(frame(0xE0, b"\x8B"))[0].reason_code == 0x8B
    refused(client(5), frame(0xE0, b"\x04"), PROTOCOL)  # only a client asks for its will


def test_v5_disconnect_forms() -> None:
    parser = server(5)
    got = parser.feed(b"\xe0\x00")
    assert got == [Disconnect(0, {}, b"\xe0\x00")]
    parser = server(5)
    assert parser.feed(b"\xe0\x01\x04")[0].reason_code == 4
    refused(server(5), b"\xe0\x01\x05", PROTOCOL)


# -- packet size -----------------------------------------------------------------------------


def test_oversize_packet_refused_from_its_fixed_header_alone() -> None:
    parser = server(5, max_packet_size=1024)
    header = b"\x30" + encode_varint(10_000_000)  # a 10 MB PUBLISH announced
    err = refused(parser, header, ReasonCode.PACKET_TOO_LARGE)
    assert err.protocol_level == 5
    assert len(parser._buf) == 0  # nothing kept


def test_max_packet_size_counts_the_whole_packet() -> None:
    exact = encode(Publish("t", b"x" * 100), 4)
    (pub,) = server(4, max_packet_size=len(exact)).feed(exact)
    assert pub.payload == b"x" * 100
    refused(server(4, max_packet_size=len(exact) - 1), exact, ReasonCode.PACKET_TOO_LARGE)


# -- stream behaviour ------------------------------------------------------------------------


def _session_v5() -> list[bytes]:
    return [
        encode(Connect("agent", 5, properties={PropertyId.RECEIVE_MAXIMUM: 5}), 5),
        encode(Publish("tenants/acme/x", b"p" * 200, 1, packet_id=1), 5),
        encode(Subscribe(2, [Subscription("a/#", 1)], {PropertyId.SUBSCRIPTION_IDENTIFIER: 9}), 5),
        encode(PubAck(3, 0x83, {PropertyId.REASON_STRING: "r"}), 5),
        encode(Publish("big", b"z" * 20000), 5),
        encode(PingReq(), 5),
        encode(Unsubscribe(4, ["a/#"]), 5),
        encode(Disconnect(), 5),
    ]


def test_byte_at_a_time_equals_one_shot() -> None:
    chunks = _session_v5()
    stream = b"".join(chunks)
    one_shot = server().feed(stream)
    parser = server()
    trickled = []
    for index in range(len(stream)):
        trickled.extend(parser.feed(stream[index : index + 1]))
    assert trickled == one_shot
    assert [p.raw for p in one_shot] == chunks


def test_arbitrary_chunking_keeps_order_and_leftovers() -> None:
    stream = b"".join(_session_v5())
    parser = server()
    got = []
    for start in range(0, len(stream), 7):
        got.extend(parser.feed(stream[start : start + 7]))
    assert [type(p).__name__ for p in got] == [
        "Connect",
        "Publish",
        "Subscribe",
        "PubAck",
        "Publish",
        "PingReq",
        "Unsubscribe",
        "Disconnect",
    ]


def test_memoryview_and_bytearray_input_give_bytes_fields() -> None:
    data = encode(Publish("a/b", b"payload", 1, packet_id=3), 4)
    for wrapped in (bytearray(data), memoryview(data)):
        (pub,) = server(4).feed(wrapped)  # type: ignore[arg-type]
        assert type(pub.payload) is bytes and type(pub.raw) is bytes
        assert pub.raw == data


def test_parser_is_dead_after_an_error() -> None:
    parser = server(4)
    first = refused(parser, publish_bytes("a/#"), ReasonCode.TOPIC_NAME_INVALID)
    assert parser.dead
    with pytest.raises(ProtocolError) as again:
        parser.feed(encode(PingReq(), 4))  # valid, but the connection is over
    assert again.value is first


def test_packets_before_an_error_in_the_same_chunk_are_not_returned() -> None:
    parser = server(4)
    with pytest.raises(ProtocolError):
        parser.feed(encode(Publish("ok"), 4) + publish_bytes("bad/#"))


def test_protocol_error_attributes() -> None:
    err = ProtocolError(0x82, "boom", 5)
    assert (err.reason_code, err.message, err.protocol_level, str(err)) == (0x82, "boom", 5, "boom")


def test_constructor_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        StreamParser(side="client")
    with pytest.raises(ValueError):
        StreamParser(side="server", protocol_level=3)
    with pytest.raises(ValueError):
        StreamParser(side="proxy")  # type: ignore[arg-type]


def test_large_publish_parse_has_no_per_byte_work() -> None:
    # A per-byte Python loop over a 256 KB payload would take tens of milliseconds.
    data = encode(Publish("tenants/acme/devices/therm-001/telemetry", b"x" * 262_144), 5)
    parser = server(5)
    start = time.perf_counter()
    for _ in range(50):
        parser.feed(data)
    assert (time.perf_counter() - start) / 50 < 0.005


# -- one packet per read ----------------------------------------------------------------------

_TOPIC = s("tenants/acme/devices/therm-001/telemetry")
ONE_READ = [
    ("client", encode(PubAck(7), 5)),  # the common ack, 4 bytes
    ("client", frame(0x40, b"\x00\x07\x10")),  # with a reason code
    ("client", frame(0x40, b"\x00\x07\x10\x00\x00")),  # trailing byte: malformed
    ("client", frame(0x40, b"\x00\x00")),  # packet id 0
    ("client", frame(0xD0, b"")),  # PINGRESP, remaining length 0
    ("client", frame(0x30, _TOPIC + b"\x00" + b"x" * 40)),  # 1-byte remaining length
    ("client", frame(0x30, _TOPIC + b"\x00" + b"x" * 300)),  # 2 bytes
    ("client", frame(0x30, _TOPIC + b"\x00" + b"x" * 20000)),  # 3 bytes: the loop's
    ("client", frame(0x36, _TOPIC + b"\x00\x01\x00{}")),  # QoS 3
    ("client", frame(0x30, s("a/+") + b"\x00")),  # a wildcard in a topic name
    ("client", frame(0x30, _TOPIC)),  # no properties length
    ("client", b"\x40\x82\x00" + b"\x00" * 2),  # remaining length not in shortest form
    ("client", b"\x00\x00"),  # reserved packet type 0
    ("client", frame(0x80, b"\x00\x01" + s("a/b") + b"\x00")),  # SUBSCRIBE from a server
    ("server", frame(0x32, _TOPIC + b"\x00\x05\x00" + b"y" * 200)),
    ("server", encode(Connect("again", 5), 5)),  # a second CONNECT
    ("server", frame(0x90, b"\x00\x01\x00")),  # SUBACK from a client
]


def _outcome(parser: StreamParser, chunks: list[bytes]) -> tuple[object, ...]:
    try:
        packets: object = [p for chunk in chunks for p in parser.feed(chunk)]
    except ProtocolError as err:
        packets = (err.reason_code, err.message, err.protocol_level)
    after = encode(PubAck(9), 5)
    try:
        later: object = parser.feed(after)
    except ProtocolError as err:
        later = err.message
    return packets, parser.dead, later


@pytest.mark.parametrize(("side", "data"), ONE_READ)
@pytest.mark.parametrize("limit", [None, 100])
def test_a_read_of_one_whole_packet_parses_as_the_stream_does(
    side: str, data: bytes, limit: int | None
) -> None:
    # One whole packet in a read has a short way; the same bytes in two reads go the
    # loop's way: the same packets, the same error, the same state after (``limit``: a
    # packet over the maximum size is refused the same either way).
    def parser() -> StreamParser:
        made = StreamParser(side=side, protocol_level=5,  # type: ignore[arg-type]
                            max_packet_size=limit or 268_435_460)
        if side == "client":
            made.feed(encode(Connack(), 5))
        return made

    assert _outcome(parser(), [data]) == _outcome(parser(), [data[:1], data[1:]])
