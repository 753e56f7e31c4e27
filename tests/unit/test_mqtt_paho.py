"""Cross-checks against paho-mqtt: we parse what paho writes, paho reads what we write.

paho is captured by replacing its private ``_packet_queue`` (the one place every outgoing
packet passes through) so no socket is needed; for paho reading our bytes a local
socketpair stands in for the broker connection.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mc
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iot_guard.mqtt import (
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PropertyId,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscription,
    UnsubAck,
    Will,
    encode,
)
from iot_guard.mqtt.parser import StreamParser


class _FakeSock:
    def close(self) -> None:
        pass


class PahoCapture:
    """A paho Client whose outgoing packets land in ``self.sent`` instead of a socket."""

    def __init__(self, protocol: int, client_id: str = "paho-1") -> None:
        self.client = mc.Client(
            mc.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        self.sent: list[bytes] = []

        def queue(command: int, packet: bytes, mid: int, qos: int, info: Any = None) -> Any:
            self.sent.append(bytes(packet))
            return mc.MQTTErrorCode.MQTT_ERR_SUCCESS

        self.client._packet_queue = queue  # type: ignore[method-assign]
        self.client._sock = _FakeSock()  # type: ignore[assignment]

    def close(self) -> None:
        self.client._sock = None


@pytest.fixture
def paho3() -> Iterator[PahoCapture]:
    cap = PahoCapture(mc.MQTTv311)
    yield cap
    cap.close()


@pytest.fixture
def paho5() -> Iterator[PahoCapture]:
    cap = PahoCapture(mc.MQTTv5)
    yield cap
    cap.close()


def _strip(packet: Any) -> Any:
    return dataclasses.replace(packet, raw=b"")


def _parse_all(chunks: list[bytes], level: int | None = None) -> list[Any]:
    parser = StreamParser(side="server", protocol_level=level)
    packets = []
    for chunk in chunks:
        packets.extend(parser.feed(chunk))
    assert len(packets) == len(chunks)
    for packet, chunk in zip(packets, chunks, strict=True):
        assert packet.raw == chunk  # original bytes kept for unchanged forwarding
    return packets


def _reparse(packet: Any, level: int, side: str = "server") -> Any:
    data = encode(packet, level)
    if isinstance(packet, Connect):
        parser = StreamParser(side="server")
    elif side == "client":
        parser = StreamParser(side="client", protocol_level=level)
        if not isinstance(packet, Connack):
            parser.feed(encode(Connack(), level))
    else:
        parser = StreamParser(side="server", protocol_level=level)
    (out,) = parser.feed(data)
    return out


def test_paho_v311_session_parses_and_reencodes(paho3: PahoCapture) -> None:
    c = paho3.client
    c.username_pw_set("ops-agent", "tok.en")
    c.will_set("tenants/acme/agents/ops/status", b"gone", qos=1, retain=True)
    c._send_connect(45)
    c.publish("tenants/acme/devices/therm-001/shadow/get", b"", qos=0)
    c.publish("tenants/acme/devices/therm-001/shadow/update", b'{"state":{}}', qos=2, retain=True)
    c.subscribe([("tenants/acme/devices/+/telemetry", 1), ("tenants/acme/#", 2)])
    c.unsubscribe(["tenants/acme/#"])
    c._send_puback(17)
    c._send_pubrec(18)
    c._send_pubrel(18)
    c._send_pubcomp(19)
    c._send_pingreq()
    c._send_disconnect()
    packets = _parse_all(paho3.sent)

    connect = packets[0]
    assert connect == Connect(
        client_id="paho-1",
        protocol_level=4,
        clean_start=True,
        keep_alive=45,
        username="ops-agent",
        password=b"tok.en",
        will=Will("tenants/acme/agents/ops/status", b"gone", 1, True),
        raw=paho3.sent[0],
    )
    assert _strip(packets[1]) == Publish("tenants/acme/devices/therm-001/shadow/get", b"")
    pub = packets[2]
    assert (pub.qos, pub.retain, pub.dup, pub.payload) == (2, True, False, b'{"state":{}}')
    assert pub.packet_id is not None and pub.packet_id > 0
    assert [s.topic_filter for s in packets[3].subscriptions] == [
        "tenants/acme/devices/+/telemetry",
        "tenants/acme/#",
    ]
    assert [s.qos for s in packets[3].subscriptions] == [1, 2]
    assert packets[4].topic_filters == ["tenants/acme/#"]
    assert [type(p) for p in packets[5:]] == [PubAck, PubRec, PubRel, PubComp, PingReq, Disconnect]
    assert [p.packet_id for p in packets[5:9]] == [17, 18, 18, 19]

    for packet in packets:
        assert _strip(_reparse(packet, 4)) == _strip(packet)
        # Our canonical v3 encoding is byte-identical to paho's.
        assert encode(packet, 4) == packet.raw


def test_paho_v5_session_with_properties(paho5: PahoCapture) -> None:
    c = paho5.client
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    props.ReceiveMaximum = 20
    props.MaximumPacketSize = 65536
    props.TopicAliasMaximum = 0
    props.RequestProblemInformation = 1
    props.UserProperty = [("tenant", "acme"), ("tenant", "acme"), ("x", "y")]
    c._connect_properties = props
    c._clean_start = False
    c.username_pw_set("ops-agent", "tok")
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 10
    will_props.PayloadFormatIndicator = 1
    will_props.ContentType = "text/plain"
    c.will_set("agents/ops/status", b"offline", 0, False, properties=will_props)
    c._send_connect(60)

    pub_props = Properties(PacketTypes.PUBLISH)
    pub_props.ResponseTopic = "agents/ops/replies"
    pub_props.CorrelationData = b"\x00\x01corr"
    pub_props.MessageExpiryInterval = 30
    pub_props.UserProperty = ("trace", "abc")
    c.publish("tenants/acme/devices/therm-002/config/patch", b"{}", qos=1, properties=pub_props)

    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 268_435_455
    c.subscribe(
        [
            ("tenants/acme/devices/+/status", SubscribeOptions(qos=1, retainHandling=2)),
            ("$share/grp/tenants/acme/#", SubscribeOptions(qos=2, retainAsPublished=True)),
            ("a/b", SubscribeOptions(qos=0, noLocal=True)),
        ],
        properties=sub_props,
    )
    c.unsubscribe(["a/b"])
    disc_props = Properties(PacketTypes.DISCONNECT)
    disc_props.SessionExpiryInterval = 0
    disc_props.ReasonString = "bye"
    c._send_disconnect(PahoReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), disc_props)
    packets = _parse_all(paho5.sent)

    connect = packets[0]
    assert connect.protocol_level == 5 and connect.clean_start is False
    assert connect.properties == {
        PropertyId.SESSION_EXPIRY_INTERVAL: 300,
        PropertyId.RECEIVE_MAXIMUM: 20,
        PropertyId.MAXIMUM_PACKET_SIZE: 65536,
        PropertyId.TOPIC_ALIAS_MAXIMUM: 0,
        PropertyId.REQUEST_PROBLEM_INFORMATION: 1,
        PropertyId.USER_PROPERTY: [("tenant", "acme"), ("tenant", "acme"), ("x", "y")],
    }
    assert connect.will == Will(
        "agents/ops/status",
        b"offline",
        properties={
            PropertyId.WILL_DELAY_INTERVAL: 10,
            PropertyId.PAYLOAD_FORMAT_INDICATOR: 1,
            PropertyId.CONTENT_TYPE: "text/plain",
        },
    )
    pub = packets[1]
    assert pub.topic == "tenants/acme/devices/therm-002/config/patch"
    assert pub.properties == {
        PropertyId.RESPONSE_TOPIC: "agents/ops/replies",
        PropertyId.CORRELATION_DATA: b"\x00\x01corr",
        PropertyId.MESSAGE_EXPIRY_INTERVAL: 30,
        PropertyId.USER_PROPERTY: [("trace", "abc")],
    }
    sub = packets[2]
    assert sub.properties == {PropertyId.SUBSCRIPTION_IDENTIFIER: 268_435_455}
    assert sub.subscriptions == [
        Subscription("tenants/acme/devices/+/status", 1, retain_handling=2),
        Subscription("$share/grp/tenants/acme/#", 2, retain_as_published=True),
        Subscription("a/b", 0, no_local=True),
    ]
    assert packets[3].topic_filters == ["a/b"]
    assert packets[4].properties == {
        PropertyId.SESSION_EXPIRY_INTERVAL: 0,
        PropertyId.REASON_STRING: "bye",
    }
    for packet in packets:
        assert _strip(_reparse(packet, 5)) == _strip(packet)


def test_paho_properties_pack_matches_our_property_encoding() -> None:
    from iot_guard.mqtt.properties import encode_properties, parse_properties

    props = Properties(PacketTypes.CONNACK)
    props.ReasonString = "ok"
    props.AssignedClientIdentifier = "auto-1"
    props.ServerKeepAlive = 120
    props.MaximumQoS = 1
    props.RetainAvailable = 0
    props.WildcardSubscriptionAvailable = 1
    props.SharedSubscriptionAvailable = 0
    props.UserProperty = [("a", "1")]
    packed = props.pack()
    parsed, end = parse_properties(packed, 0, len(packed), 2)
    assert end == len(packed)
    assert parsed == {
        PropertyId.REASON_STRING: "ok",
        PropertyId.ASSIGNED_CLIENT_IDENTIFIER: "auto-1",
        PropertyId.SERVER_KEEP_ALIVE: 120,
        PropertyId.MAXIMUM_QOS: 1,
        PropertyId.RETAIN_AVAILABLE: 0,
        PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
        PropertyId.SHARED_SUBSCRIPTION_AVAILABLE: 0,
        PropertyId.USER_PROPERTY: [("a", "1")],
    }
    reparsed, _ = parse_properties(encode_properties(parsed, 2), 0, len(packed), 2)
    assert reparsed == parsed


class PahoReader:
    """A paho Client reading our bytes from a socketpair, recording its callbacks."""

    def __init__(self, protocol: int) -> None:
        self.ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        self.theirs = theirs
        self.events: list[tuple[Any, ...]] = []
        c = mc.Client(mc.CallbackAPIVersion.VERSION2, client_id="paho-r", protocol=protocol)
        c.on_connect = lambda _c, _u, flags, rc, props: self.events.append(
            ("connect", flags.session_present, rc.value, props)
        )
        c.on_subscribe = lambda _c, _u, mid, rcs, props: self.events.append(
            ("suback", mid, [r.value for r in rcs], props)
        )
        c.on_unsubscribe = lambda _c, _u, mid, rcs, props: self.events.append(
            ("unsuback", mid, [r.value for r in rcs], props)
        )
        c.on_message = lambda _c, _u, msg: self.events.append(
            ("publish", msg.topic, msg.payload, msg.qos, msg.retain, msg.properties)
        )
        c._packet_queue = lambda *a, **k: mc.MQTTErrorCode.MQTT_ERR_SUCCESS  # type: ignore
        c._sock = theirs  # type: ignore[assignment]
        self.client = c

    def deliver(self, data: bytes) -> None:
        self.ours.sendall(data)
        assert self.client.loop_read() == mc.MQTTErrorCode.MQTT_ERR_SUCCESS

    def close(self) -> None:
        self.client._sock = None
        self.ours.close()
        self.theirs.close()


@pytest.mark.parametrize("level", [4, 5])
def test_paho_reads_what_the_guard_writes(level: int) -> None:
    reader = PahoReader(mc.MQTTv5 if level == 5 else mc.MQTTv311)
    try:
        v5 = level == 5
        reader.deliver(
            encode(Connack(0, True, {PropertyId.TOPIC_ALIAS_MAXIMUM: 0} if v5 else {}), level)
        )
        reader.deliver(
            encode(SubAck(7, [1, 0x87], {PropertyId.REASON_STRING: "denied"} if v5 else {}), level)
        )
        reader.deliver(encode(UnsubAck(8, [0x11] if v5 else []), level))
        event_props = {PropertyId.CONTENT_TYPE: "application/json"} if v5 else {}
        reader.deliver(
            encode(
                Publish("$guard/events", b'{"decision":"deny"}', 0, properties=event_props), level
            )
        )
        kinds = [e[0] for e in reader.events]
        assert kinds == ["connect", "suback", "unsuback", "publish"]
        assert reader.events[0][1:3] == (True, 0)
        # paho maps a v3 SUBACK 0x80 failure to its own 128: our 0x87 becomes 0x80 in v3.
        assert reader.events[1][1:3] == (7, [1, 0x87 if v5 else 0x80])
        assert reader.events[2][1] == 8
        if v5:
            assert reader.events[1][3].ReasonString == "denied"
            assert reader.events[2][2] == [0x11]
            assert reader.events[3][5].ContentType == "application/json"
        assert reader.events[3][1:5] == ("$guard/events", b'{"decision":"deny"}', 0, False)
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("level", "code", "wire_code", "paho_name"),
    [
        (5, 0x87, 0x87, "Not authorized"),
        (4, 0x87, 5, "Not authorized"),  # v5 refusal mapped to the v3 return code
        (4, 0x86, 4, "Bad user name or password"),
        (4, 0x88, 3, "Server unavailable"),
    ],
)
def test_paho_reads_refusal_connack(level: int, code: int, wire_code: int, paho_name: str) -> None:
    props = {PropertyId.REASON_STRING: "token expired"} if level == 5 else {}
    data = encode(Connack(code, True, props), level)
    # A refusal never claims a session [MQTT-3.2.2-4] / [MQTT-3.2.2-6].
    assert data[2:4] == bytes((0, wire_code))
    reader = PahoReader(mc.MQTTv5 if level == 5 else mc.MQTTv311)
    try:
        reader.ours.sendall(data)
        reader.client.loop_read()
        assert reader.events[0][0] == "connect"
        assert PahoReasonCode(PacketTypes.CONNACK, paho_name).value == reader.events[0][2]
        if level == 5:
            assert reader.events[0][3].ReasonString == "token expired"
    finally:
        reader.close()


def test_paho_acks_and_disconnect_from_guard_reparse() -> None:
    # Acks the guard writes for refusals (v5 reason code + reason string) survive a
    # round trip through our own parser on the client side too.
    for packet in (
        PubAck(5, 0x87, {PropertyId.REASON_STRING: "not authorized: tool"}),
        PubRec(6, 0x99, {PropertyId.REASON_STRING: "payload"}),
        PubRel(6),
        PubComp(6, 0x92),
        Disconnect(0x94, {PropertyId.REASON_STRING: "topic alias"}),
    ):
        assert _strip(_reparse(packet, 5, side="client")) == packet
