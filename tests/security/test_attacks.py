"""One test per attack an ops agent (or whoever holds its connection) could try.

Each runs against a real, locked-down Mosquitto behind the guard. ``spy`` sees what
reached the broker; ``seen_before_marker`` also proves the guard still serves others.
"""

from __future__ import annotations

import socket
import struct
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iot_guard.mqtt import (
    Connack,
    Disconnect,
    PropertyId,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from tests.rawmqtt import RawMqtt

from .conftest import BrokerSpy, Guarded

SHADOW = "tenants/acme/devices/therm-001/shadow/update"
VALID_UPDATE = b'{"state":{"desired":{"target_temp_c":21}}}'


def agent(guarded: Guarded, level: int = 5, name: str = "ops-agent", **kw: object) -> RawMqtt:
    client = RawMqtt(guarded.port, level=level)
    connack = client.connect(name, guarded.token(name), **kw)  # type: ignore[arg-type]
    assert connack.reason_code == 0, connack
    return client


def publish_qos1(client: RawMqtt, topic: str, payload: bytes, **kw: object) -> PubAck:
    client.send_packet(Publish(topic, payload, qos=1, packet_id=77, **kw))  # type: ignore[arg-type]
    ack = client.read_until(PubAck)
    assert isinstance(ack, PubAck) and ack.packet_id == 77
    return ack


def subscribe(client: RawMqtt, topic_filter: str, qos: int = 0) -> SubAck:
    client.send_packet(Subscribe(5, [Subscription(topic_filter, qos)]))
    ack = client.read_until(SubAck)
    assert isinstance(ack, SubAck)
    return ack


def publish_header(topic: bytes, qos: int = 0, extra: bytes = b"", level: int = 5) -> bytes:
    """A PUBLISH built by hand, so it can carry what the encoder refuses to write."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += b"\x00\x01"
    if level == 5:
        body += b"\x00"  # no properties
    body += extra
    return bytes([0x30 | qos << 1, len(body)]) + body


def test_wildcard_in_publish_topic_is_a_protocol_error(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    client.send(publish_header(b"tenants/acme/devices/+/shadow/update", extra=VALID_UPDATE))
    farewell = client.wait_closed()
    assert isinstance(farewell[-1], Disconnect)
    assert farewell[-1].reason_code in (0x90, 0x81, 0x82)  # [MQTT-3.3.2-2]
    assert spy.seen_before_marker(guarded) == []


def test_hash_subscription_over_a_tenant_is_refused(guarded: Guarded) -> None:
    client = agent(guarded)
    assert subscribe(client, "tenants/acme/#").reason_codes == [0x87]
    assert subscribe(client, "#").reason_codes == [0x87]
    assert subscribe(client, "tenants/acme/devices/+/#").reason_codes == [0x87]
    # '+' where the policy has a variable over all of acme's devices is contained.
    assert subscribe(client, "tenants/acme/devices/+/telemetry", 1).reason_codes == [1]


def test_dollar_topics_are_refused(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    assert subscribe(client, "$SYS/#").reason_codes == [0x87]
    assert subscribe(client, "$SYS/broker/clients/connected").reason_codes == [0x87]
    ack = publish_qos1(client, "$CONTROL/dynamic-security/v1", b'{"commands":[]}')
    assert ack.reason_code == 0x87
    assert spy.seen_before_marker(guarded) == []


def test_shared_subscriptions_are_refused(guarded: Guarded) -> None:
    client = agent(guarded)
    ack = subscribe(client, "$share/g/tenants/acme/devices/+/telemetry")
    assert ack.reason_codes == [0x9E]


def test_will_message_is_authorized_at_connect(guarded: Guarded, spy: BrokerSpy) -> None:
    client = RawMqtt(guarded.port)
    will = Will("tenants/acme/devices/therm-001/commands/reboot", b'{"delay_s":0}')
    connack = client.connect("ops-agent", guarded.token(), will=will)
    assert connack.reason_code == 0x87
    assert "will" in str(connack.properties.get(PropertyId.REASON_STRING))
    client.wait_closed()
    assert spy.seen_before_marker(guarded) == []


def test_retain_is_refused_without_the_condition(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    ack = publish_qos1(client, SHADOW, VALID_UPDATE, retain=True)
    assert ack.reason_code == 0x87
    assert "retain" in str(ack.properties.get(PropertyId.REASON_STRING))
    assert spy.seen_before_marker(guarded) == []


def test_topic_alias_is_refused_with_0x94(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    client.send_packet(Publish(SHADOW, VALID_UPDATE, properties={PropertyId.TOPIC_ALIAS: 1}))
    farewell = client.wait_closed()
    assert isinstance(farewell[-1], Disconnect) and farewell[-1].reason_code == 0x94
    assert spy.seen_before_marker(guarded) == []


def test_response_topic_outside_the_agents_reach_is_refused(
    guarded: Guarded, spy: BrokerSpy
) -> None:
    client = agent(guarded)
    ack = publish_qos1(client, SHADOW, VALID_UPDATE, properties={
        PropertyId.RESPONSE_TOPIC: "tenants/globex/devices/therm-101/telemetry"})
    assert ack.reason_code == 0x87
    assert spy.seen_before_marker(guarded) == []


def test_client_id_of_a_device_cannot_take_over_its_session(guarded: Guarded) -> None:
    broker = guarded.broker
    account = broker.device_account("acme", "therm-001")
    assert account is not None
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acme-therm-001")
    device.username_pw_set(account.username, account.password)
    kicked: list[object] = []
    device.on_disconnect = lambda *a: kicked.append(a)
    accepted = threading.Event()
    device.on_connect = lambda *a: accepted.set()
    assert device.connect(broker.host, broker.port) == 0
    device.loop_start()
    try:
        # connect() returns once CONNECT is sent: until the device's CONNACK is read it is
        # not connected yet, takeover or not (a busy machine made this test fail).
        assert accepted.wait(10), "the broker never accepted the device"
        intruder = agent(guarded, client_id="acme-therm-001")
        # A round trip through the broker on the intruder's session: by the time its
        # SUBACK arrives, a takeover would already have disconnected the device.
        assert subscribe(intruder, "tenants/acme/devices/therm-001/status").reason_codes == [0]
        assert device.is_connected() and not kicked
    finally:
        device.loop_stop()
        device.disconnect()


def test_cross_tenant_publish_and_subscribe_are_refused(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    ack = publish_qos1(client, "tenants/globex/devices/therm-101/shadow/update", VALID_UPDATE)
    assert ack.reason_code == 0x87
    assert subscribe(client, "tenants/globex/devices/+/telemetry").reason_codes == [0x87]
    assert subscribe(client, "tenants/+/devices/+/telemetry").reason_codes == [0x87]
    assert spy.seen_before_marker(guarded) == []


def test_unknown_device_is_refused(guarded: Guarded, spy: BrokerSpy) -> None:
    client = agent(guarded)
    ack = publish_qos1(client, "tenants/acme/devices/therm-999/shadow/update", VALID_UPDATE)
    assert ack.reason_code == 0x87
    assert spy.seen_before_marker(guarded) == []


def test_reply_topics_and_protected_fields_are_not_writable(
    guarded: Guarded, spy: BrokerSpy
) -> None:
    client = agent(guarded)
    forged_reply = publish_qos1(client, SHADOW + "/accepted", b'{"state":{}}')
    assert forged_reply.reason_code == 0x87
    pin = publish_qos1(client, SHADOW, b'{"state":{"desired":{"admin_pin":"0000"}}}')
    assert pin.reason_code == 0x99
    assert "admin_pin" in str(pin.properties.get(PropertyId.REASON_STRING))
    assert spy.seen_before_marker(guarded) == []


@pytest.mark.parametrize(
    "topic",
    [b"tenants/acme/\xff\xfe", b"tenants/acme/\x00/x", b"tenants/\xed\xa0\x80/x"],
    ids=["invalid-utf8", "u0000", "surrogate"],
)
def test_bad_encodings_close_the_connection(
    guarded: Guarded, spy: BrokerSpy, topic: bytes
) -> None:
    client = agent(guarded)
    client.send(publish_header(topic, extra=b"{}"))
    farewell = client.wait_closed()
    assert isinstance(farewell[-1], Disconnect) and farewell[-1].reason_code >= 0x80
    assert spy.seen_before_marker(guarded) == []


def test_oversized_packet_is_refused_before_its_body_is_sent(guarded: Guarded) -> None:
    client = agent(guarded)
    # Fixed header announcing a 10 MB PUBLISH; the body is never sent. The guard must
    # answer from the header alone (it may not buffer 10 MB to find out).
    remaining = 10 * 1024 * 1024
    length = bytearray()
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    client.send(bytes([0x30]) + bytes(length))
    farewell = client.wait_closed()
    assert isinstance(farewell[-1], Disconnect) and farewell[-1].reason_code == 0x95


def test_garbage_before_connect_is_dropped_and_others_are_served(
    guarded: Guarded, spy: BrokerSpy
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64)
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed without an answer
    assert spy.seen_before_marker(guarded) == []


@pytest.mark.parametrize("level", [4, 5])
def test_bad_tokens_are_refused(guarded: Guarded, level: int) -> None:
    expired = guarded.token(ttl_s=1, now=1_000_000.0)
    forged = guarded.token()[:-4] + "AAAA"
    stolen = guarded.token("observer")  # presented as ops-agent
    bad_code = 0x86 if level == 5 else 0x04
    for username, password in (("ops-agent", expired), ("ops-agent", forged),
                               ("ops-agent", stolen), ("ops-agent", None)):
        client = RawMqtt(guarded.port, level=level)
        connack = client.connect(username, password)
        assert isinstance(connack, Connack) and connack.reason_code == bad_code, (password,)
        client.wait_closed()
    client = RawMqtt(guarded.port, level=level)
    unknown = client.connect("mallory", guarded.token("mallory"))
    assert unknown.reason_code == (0x87 if level == 5 else 0x05)


def test_audit_records_every_refusal(guarded: Guarded) -> None:
    client = agent(guarded)
    publish_qos1(client, "tenants/globex/devices/therm-102/config/patch", b'{"mode":"heat"}')
    records = [r for r in guarded.audit()
               if r.get("requested_scope") == "tenants/globex/devices/therm-102/config/patch"]
    assert records, "refusal not audited"
    record = records[-1]
    for key in ("timestamp", "agent_id", "session_id", "tool_name", "action_type",
                "requested_scope", "granted_scope", "resource_id", "result_status", "reason"):
        assert key in record
    assert record["result_status"] == "denied" and record["granted_scope"] is None
    assert record["agent_id"] == "ops-agent" and record["timestamp"].endswith("Z")
