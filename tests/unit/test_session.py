"""The sans-IO guard session: bytes in, actions out, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.mqtt import (
    Connack,
    Connect,
    Disconnect,
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
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.session import (
    Close,
    ExpireAt,
    GuardSession,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    SessionSettings,
    WriteAudit,
)
from iot_guard.tokens import issue_token

SECRET = b"unit-test-secret-unit-test-secret-0123"
NOW = 1_800_000_000.0
POLICY = CompiledPolicy.load(Path(__file__).parents[2] / "device_policies")
SETTINGS = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                           upstream_password=b"broker-pw", max_packet_size=64 * 1024)
TELEMETRY = "tenants/acme/devices/therm-001/telemetry"
SHADOW_UPDATE = "tenants/acme/devices/therm-001/shadow/update"


def token(agent: str = "ops-agent", **kw: object) -> bytes:
    return issue_token(SECRET, agent, now=NOW, **kw).encode()  # type: ignore[arg-type]


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def agent_packets(actions: list, level: int) -> list:
    data = b"".join(a.data for a in of(actions, SendToAgent))
    parser = StreamParser(side="client", protocol_level=level)
    if data and data[0] >> 4 != 2:
        parser.feed(encode(Connack(), level))  # the session is past its CONNACK
    return parser.feed(data)


def broker_packets(actions: list) -> list:
    parser = StreamParser(side="server")
    data = b"".join(a.connect for a in of(actions, OpenUpstream))
    data += b"".join(a.data for a in of(actions, SendToBroker))
    return parser.feed(data)


def broker_packets_after_connect(actions: list, level: int = 5) -> list:
    """Packets the guard sends to the broker once connected (parsed as a server would)."""
    parser = StreamParser(side="server", protocol_level=level)  # past CONNECT
    return parser.feed(b"".join(a.data for a in of(actions, SendToBroker)))


def connected(level: int = 5, agent: str = "ops-agent", **connect_kw: object) -> GuardSession:
    session = GuardSession(POLICY, SETTINGS, "s-1", peer="127.0.0.1:5000")
    connect = Connect(client_id="agent-1", protocol_level=level, username=agent,
                      password=token(agent), **connect_kw)  # type: ignore[arg-type]
    actions = session.from_agent(encode(connect, level), NOW)
    assert of(actions, OpenUpstream), actions
    session.from_broker(encode(Connack(), level), NOW)
    return session


# --------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("level", [4, 5])
def test_connect_is_rewritten_with_guard_credentials_and_namespaced_client_id(level: int) -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    properties = {PropertyId.TOPIC_ALIAS_MAXIMUM: 10} if level == 5 else {}
    connect = Connect(client_id="acme-therm-001", protocol_level=level, username="ops-agent",
                      password=token(), properties=properties)
    actions = session.from_agent(encode(connect, level), NOW)
    (upstream,) = broker_packets(actions)
    assert upstream.username == "iot-guard"
    assert upstream.password == b"broker-pw"
    # The agent can never present a device's client id to the broker.
    assert upstream.client_id == "iotguard:ops-agent:acme-therm-001"
    assert PropertyId.TOPIC_ALIAS_MAXIMUM not in upstream.properties
    (expiry,) = of(actions, ExpireAt)
    assert expiry.timestamp == pytest.approx(NOW + 900, abs=1)
    assert not of(actions, SendToAgent)


@pytest.mark.parametrize(
    ("level", "password", "username", "code"),
    [
        (5, b"not-a-token", "ops-agent", 0x86),
        (4, b"not-a-token", "ops-agent", 0x04),
        (5, None, "globex-agent", 0x86),  # token of ops-agent presented as globex-agent
        (4, None, "globex-agent", 0x04),
    ],
)
def test_bad_tokens_are_refused(level: int, password: bytes | None, username: str,
                                code: int) -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    connect = Connect(client_id="c", protocol_level=level, username=username,
                      password=password or token("ops-agent"))
    actions = session.from_agent(encode(connect, level), NOW)
    (connack,) = agent_packets(actions, level)
    assert connack.reason_code == code
    assert of(actions, Close) and not of(actions, OpenUpstream)


def test_expired_and_foreign_tokens_are_refused() -> None:
    expired = issue_token(SECRET, "ops-agent", ttl_s=10, now=NOW - 100).encode()
    forged = issue_token(b"another-secret-another-secret-012345", "ops-agent", now=NOW).encode()
    for password in (expired, forged):
        session = GuardSession(POLICY, SETTINGS, "s-1")
        connect = Connect(client_id="c", protocol_level=5, username="ops-agent", password=password)
        actions = session.from_agent(encode(connect, 5), NOW)
        (connack,) = agent_packets(actions, 5)
        assert connack.reason_code == 0x86
        assert "token" in connack.properties[PropertyId.REASON_STRING]


@pytest.mark.parametrize(("level", "code"), [(5, 0x87), (4, 0x05)])
def test_unknown_agent_with_a_valid_token_is_not_authorized(level: int, code: int) -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    connect = Connect(client_id="c", protocol_level=level, username="intruder",
                      password=token("intruder"))
    (connack,) = agent_packets(session.from_agent(encode(connect, level), NOW), level)
    assert connack.reason_code == code


def test_will_is_authorized_like_a_publish() -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    will = Will(topic="tenants/acme/devices/therm-001/commands/reboot", payload=b'{"delay_s":0}')
    connect = Connect(client_id="c", protocol_level=5, username="ops-agent", password=token(),
                      will=will)
    actions = session.from_agent(encode(connect, 5), NOW)
    (connack,) = agent_packets(actions, 5)
    assert connack.reason_code == 0x87
    assert "will" in connack.properties[PropertyId.REASON_STRING]
    assert not of(actions, OpenUpstream)


def test_garbage_before_connect_closes_without_forwarding() -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    actions = session.from_agent(b"GET / HTTP/1.1\r\n\r\n", NOW)
    assert of(actions, Close)
    assert not of(actions, OpenUpstream) and not of(actions, SendToBroker)
    assert of(actions, WriteAudit)[0].record["result_status"] == "error"


def test_v5_connack_advertises_no_topic_aliases_and_the_guards_packet_limit() -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    connect = Connect(client_id="c", protocol_level=5, username="ops-agent", password=token())
    session.from_agent(encode(connect, 5), NOW)
    broker_connack = Connack(properties={PropertyId.TOPIC_ALIAS_MAXIMUM: 65535})
    (connack,) = agent_packets(session.from_broker(encode(broker_connack, 5), NOW), 5)
    assert connack.reason_code == 0
    assert PropertyId.TOPIC_ALIAS_MAXIMUM not in connack.properties
    assert connack.properties[PropertyId.MAXIMUM_PACKET_SIZE] == 64 * 1024


# --------------------------------------------------------------------------- PUBLISH


def test_allowed_publish_is_forwarded_as_the_original_bytes_after_its_audit() -> None:
    session = connected()
    raw = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"target_temp_c":21}}}', qos=1,
                         packet_id=7), 5)
    actions = session.from_agent(raw, NOW)
    assert [type(a) for a in actions] == [WriteAudit, SendToBroker]
    assert actions[1].data == raw
    record = actions[0].record
    assert record["result_status"] == "success"
    assert record["tool_name"] == "shadow_update"
    assert record["resource_id"] == "acme/therm-001"
    assert "target_temp_c" not in json.dumps(record)  # payloads are never logged raw


def test_refused_publish_v5_gets_reason_code_and_reason_string() -> None:
    session = connected()
    raw = encode(Publish("tenants/globex/devices/therm-101/shadow/update",
                         b'{"state":{"desired":{"mode":"heat"}}}', qos=1, packet_id=9), 5)
    actions = session.from_agent(raw, NOW)
    assert not of(actions, SendToBroker)
    (ack,) = agent_packets(actions, 5)
    assert isinstance(ack, PubAck) and ack.packet_id == 9 and ack.reason_code == 0x87
    assert ack.properties[PropertyId.REASON_STRING]


def test_invalid_payload_is_refused_with_0x99_naming_the_field() -> None:
    session = connected()
    raw = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"target_temp_c":45}}}', qos=1,
                         packet_id=3), 5)
    (ack,) = agent_packets(session.from_agent(raw, NOW), 5)
    assert ack.reason_code == 0x99
    assert "target_temp_c" in ack.properties[PropertyId.REASON_STRING]


def test_reason_string_is_left_out_when_the_client_asks_for_no_problem_information() -> None:
    session = connected(properties={PropertyId.REQUEST_PROBLEM_INFORMATION: 0})
    raw = encode(Publish("tenants/globex/x", b"", qos=1, packet_id=2), 5)
    (ack,) = agent_packets(session.from_agent(raw, NOW), 5)
    assert ack.reason_code == 0x87 and PropertyId.REASON_STRING not in ack.properties


def test_refused_qos2_publish_completes_the_handshake_locally_in_v3() -> None:
    session = connected(level=4)
    raw = encode(Publish("tenants/globex/x", b"1", qos=2, packet_id=5), 4)
    (rec,) = agent_packets(session.from_agent(raw, NOW), 4)
    assert isinstance(rec, PubRec) and rec.packet_id == 5
    actions = session.from_agent(encode(PubRel(5), 4), NOW)
    (comp,) = agent_packets(actions, 4)
    assert isinstance(comp, PubComp) and comp.packet_id == 5
    assert not of(actions, SendToBroker)  # the broker never heard of packet 5


def test_topic_alias_disconnects_with_0x94() -> None:
    session = connected()
    raw = encode(Publish(TELEMETRY, b"x", properties={PropertyId.TOPIC_ALIAS: 1}), 5)
    actions = session.from_agent(raw, NOW)
    (disconnect,) = agent_packets(actions, 5)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94
    assert of(actions, Close) and not of(actions, SendToBroker)


def test_response_topic_must_be_receivable() -> None:
    session = connected()
    payload = b'{"state":{"desired":{"mode":"heat"}}}'
    bad = Publish(SHADOW_UPDATE, payload, qos=1, packet_id=4,
                  properties={PropertyId.RESPONSE_TOPIC: "tenants/globex/devices/therm-101/x"})
    (ack,) = agent_packets(session.from_agent(encode(bad, 5), NOW), 5)
    assert ack.reason_code == 0x87
    good = Publish(SHADOW_UPDATE, payload, qos=1, packet_id=5, properties={
        PropertyId.RESPONSE_TOPIC: "tenants/acme/devices/therm-001/shadow/update/accepted"})
    assert of(session.from_agent(encode(good, 5), NOW), SendToBroker)


def test_protocol_error_after_connect_disconnects_v5_with_reason() -> None:
    session = connected()
    # PUBLISH with QoS 3 [MQTT-3.3.1-4]
    actions = session.from_agent(bytes([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01]), NOW)
    (disconnect,) = agent_packets(actions, 5)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code >= 0x80
    assert not of(actions, SendToBroker)


# --------------------------------------------------------------------------- deliveries


def test_deliveries_on_unreadable_topics_are_dropped_and_acked_to_the_broker() -> None:
    session = connected()
    ok = encode(Publish(TELEMETRY, b"{}"), 5)
    assert of(session.from_broker(ok, NOW), SendToAgent)[0].data == ok
    foreign = encode(Publish("tenants/globex/devices/therm-101/telemetry", b"{}", qos=1,
                             packet_id=11), 5)
    actions = session.from_broker(foreign, NOW)
    assert not of(actions, SendToAgent)
    (ack,) = broker_packets_after_connect(actions)
    assert isinstance(ack, PubAck) and ack.packet_id == 11


def test_dropped_qos2_delivery_is_completed_with_the_broker() -> None:
    session = connected()
    foreign = encode(Publish("tenants/globex/x", b"1", qos=2, packet_id=12), 5)
    (rec,) = broker_packets_after_connect(session.from_broker(foreign, NOW))
    assert isinstance(rec, PubRec)
    actions = session.from_broker(encode(PubRel(12), 5), NOW)
    assert not of(actions, SendToAgent)
    (comp,) = broker_packets_after_connect(actions)
    assert isinstance(comp, PubComp) and comp.packet_id == 12


# --------------------------------------------------------------------------- SUBSCRIBE


@pytest.mark.parametrize("level", [4, 5])
def test_subscribe_forwards_allowed_filters_and_merges_the_suback(level: int) -> None:
    session = connected(level=level)
    subscribe = Subscribe(21, [
        Subscription("tenants/globex/devices/+/telemetry", 0),
        Subscription("tenants/acme/devices/+/telemetry", 1),
        Subscription("$SYS/#", 0),
        Subscription("tenants/acme/devices/therm-002/status", 1),
    ])
    actions = session.from_agent(encode(subscribe, level), NOW)
    (upstream,) = broker_packets_after_connect(actions, level)
    assert [s.topic_filter for s in upstream.subscriptions] == [
        "tenants/acme/devices/+/telemetry", "tenants/acme/devices/therm-002/status"]
    (suback,) = agent_packets(session.from_broker(encode(SubAck(21, [1, 1]), level), NOW), level)
    refused = 0x87 if level == 5 else 0x80
    assert suback.reason_codes == [refused, 1, refused, 1]


def test_fully_refused_subscribe_is_answered_by_the_guard() -> None:
    session = connected()
    actions = session.from_agent(encode(Subscribe(3, [Subscription("tenants/acme/#")]), 5), NOW)
    assert not of(actions, SendToBroker)
    (suback,) = agent_packets(actions, 5)
    assert suback.reason_codes == [0x87]
    assert "tenants/acme/#" in suback.properties[PropertyId.REASON_STRING]


def test_guard_events_are_answered_locally_and_explain_refusals() -> None:
    session = connected(level=4)
    actions = session.from_agent(encode(Subscribe(1, [Subscription("$guard/events")]), 4), NOW)
    assert not of(actions, SendToBroker)
    (suback,) = agent_packets(actions, 4)
    assert suback.reason_codes == [0]
    actions = session.from_agent(encode(Publish("tenants/globex/devices/therm-101/shadow/update",
                                                b"{}"), 4), NOW)
    (event,) = agent_packets(actions, 4)
    assert event.topic == "$guard/events"
    body = json.loads(event.payload)
    assert body["decision"] == "deny"
    assert body["topic"] == "tenants/globex/devices/therm-101/shadow/update"
    assert body["reason"]
    actions = session.from_agent(encode(Unsubscribe(2, ["$guard/events"]), 4), NOW)
    assert isinstance(agent_packets(actions, 4)[0], UnsubAck)
    assert not of(actions, SendToBroker)


def test_held_group_push_is_refused_until_approvals_exist() -> None:
    session = connected()
    raw = encode(Publish("tenants/acme/groups/floor-1/config/push",
                         b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    actions = session.from_agent(raw, NOW)
    assert not of(actions, SendToBroker)
    (ack,) = agent_packets(actions, 5)
    assert ack.reason_code == 0x87
    assert "approval" in ack.properties[PropertyId.REASON_STRING]
    (audit,) = of(actions, WriteAudit)
    assert audit.record["decision"] == "hold"


def test_token_expiry_disconnects_with_maximum_connect_time() -> None:
    session = connected()
    actions = session.token_expired(NOW + 901)
    (disconnect,) = agent_packets(actions, 5)
    assert disconnect.reason_code == 0xA0
    assert of(actions, Close)


def test_narrowed_token_grants_only_its_tools() -> None:
    session = GuardSession(POLICY, SETTINGS, "s-1")
    connect = Connect(client_id="c", protocol_level=5, username="ops-agent",
                      password=token(tools=["read_telemetry"]))
    session.from_agent(encode(connect, 5), NOW)
    session.from_broker(encode(Connack(), 5), NOW)
    raw = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"mode":"heat"}}}', qos=1,
                         packet_id=1), 5)
    (ack,) = agent_packets(session.from_agent(raw, NOW), 5)
    assert ack.reason_code == 0x87
