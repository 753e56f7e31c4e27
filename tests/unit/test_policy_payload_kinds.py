"""Tools with the free-form payload kinds any, json and json_schema, in a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.mqtt import Connect, PropertyId, StreamParser, Will, encode
from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy
from iot_guard.policy.decision import Verdict
from iot_guard.policy.loader import PolicyError
from iot_guard.session import (
    AgentData,
    AgentOpened,
    GuardSession,
    OpenUpstream,
    SendToAgent,
    SessionSettings,
)
from iot_guard.tokens import issue_token

PAYLOAD_INVALID = 0x99

POLICY = """\
tenants:
  acme: {}
tools:
  chat:
    verb: publish
    topic: chat/{tenant}/room
    payload: any
    max_bytes: 16
  events:
    verb: publish
    topics:
      - events/{tenant}
      - events/{tenant}/+x
    payload: json
    max_depth: 2
  orders:
    verb: publish
    topic: orders/{tenant}
    payload: json_schema
    schema_file: schemas/order.json
    conditions: {max_qos: 1}
agents:
  bot: {tenants: [acme], tools: [chat, events, orders]}
"""

ORDER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"item": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
    "required": ["item", "qty"],
}


def write_policy(tmp_path: Path, policy: str = POLICY, schema: str | None = None) -> Path:
    (tmp_path / "policy.yaml").write_text(policy)
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "order.json").write_text(
        schema if schema is not None else json.dumps(ORDER_SCHEMA, indent=2)
    )
    return tmp_path


def bot(tmp_path: Path) -> AgentPolicy:
    policy = CompiledPolicy.load(write_policy(tmp_path, POLICY.replace("/+x", "/x")))
    agent = policy.for_agent("bot")
    assert agent is not None
    return agent


def test_any_carries_text_on_any_topic_layout(tmp_path: Path) -> None:
    a = bot(tmp_path)
    d = a.decide_publish("chat/acme/room", b"hello, world")
    assert d.allowed and d.tool == "chat" and d.resource == "acme"
    too_big = a.decide_publish("chat/acme/room", b"x" * 17)
    assert too_big.reason_code == PAYLOAD_INVALID
    assert too_big.reason == "payload refused by tool chat: payload is 17 bytes; the limit is 16"
    assert not a.decide_publish("chat/other/room", b"hi").allowed


def test_json_needs_one_strict_object(tmp_path: Path) -> None:
    a = bot(tmp_path)
    assert a.decide_publish("events/acme", b'{"kind": "door", "open": true}').allowed
    for bad in (b'{"a": 1, "a": 1}', b'{"a": NaN}', b"[]", b"plain text", b'{"a": {"b": {}}}'):
        d = a.decide_publish("events/acme", bad)
        assert d.reason_code == PAYLOAD_INVALID and d.verdict is Verdict.DENY, bad


def test_json_schema_is_checked_on_every_publish(tmp_path: Path) -> None:
    a = bot(tmp_path)
    assert a.decide_publish("orders/acme", b'{"item": "bolt", "qty": 3}', qos=1).allowed
    d = a.decide_publish("orders/acme", b'{"item": "bolt", "qty": 0}')
    assert d.reason_code == PAYLOAD_INVALID
    assert d.reason == (
        "payload refused by tool orders: payload.qty: 0 is less than the minimum of 1 "
        "(schema schemas/order.json)"
    )
    # The QoS condition still applies before the payload.
    assert "maximum QoS 1" in a.decide_publish("orders/acme", b"{}", qos=2).reason


def test_a_schema_that_does_not_compile_is_a_policy_error_at_its_line(tmp_path: Path) -> None:
    bad = '{\n  "type": "object",\n  "properties": {\n    "qty": {"type": "count"}\n  }\n}\n'
    write_policy(tmp_path, POLICY.replace("/+x", "/x"), bad)
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path / 'schemas/order.json'}:4: tools.orders.schema_file: ")
    assert "schemas/order.json at /properties/qty/type: " in problem


def test_a_schema_file_that_is_not_json_or_missing_or_outside(tmp_path: Path) -> None:
    write_policy(tmp_path, POLICY.replace("/+x", "/x"), '{\n  "type": object\n}')
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert info.value.problems[0].startswith(f"{tmp_path / 'schemas/order.json'}:2: ")
    outside = POLICY.replace("/+x", "/x").replace("schemas/order.json", "../order.json")
    write_policy(tmp_path, outside)
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert "outside the policy directory" in info.value.problems[0]
    assert info.value.problems[0].startswith(f"{tmp_path / 'policy.yaml'}:")
    missing = POLICY.replace("/+x", "/x").replace("schemas/order.json", "schemas/nope.json")
    write_policy(tmp_path, missing)
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert "cannot read" in info.value.problems[0]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (("payload: any\n    max_bytes: 16", "payload: none\n    max_bytes: 16"), "max_bytes"),
        (("payload: json\n    max_depth: 2", "payload: any\n    max_depth: 2"), "max_depth"),
        (("    schema_file: schemas/order.json\n", ""), "schema_file"),
        (("max_bytes: 16", "max_bytes: -1"), "greater than or equal to 0"),
    ],
)
def test_kind_options_are_checked_at_load(
    tmp_path: Path, change: tuple[str, str], why: str
) -> None:
    write_policy(tmp_path, POLICY.replace("/+x", "/x").replace(*change))
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert why in info.value.problems[0]


def test_a_publish_template_with_a_wildcard_is_refused(tmp_path: Path) -> None:
    write_policy(tmp_path)
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert "[MQTT-4.7.1-3]" in info.value.problems[0] or "[MQTT-3.3.2-2]" in info.value.problems[0]


def test_wills_are_judged_by_the_same_kinds(tmp_path: Path) -> None:
    """A CONNECT's will goes through decide_publish in the session: the same tool, kind
    and limits as a PUBLISH (here: `any` with max_bytes 16)."""
    bot(tmp_path)  # writes the policy
    policy = CompiledPolicy.load(tmp_path)
    secret = b"unit-test-secret-unit-test-secret-0123"
    settings = SessionSettings(secret=secret, upstream_username="iot-guard",
                               upstream_password=b"pw", max_packet_size=64 * 1024)

    def connect(will_payload: bytes) -> list[object]:
        session = GuardSession(policy, settings, "s-1")
        session.handle(AgentOpened("127.0.0.1:5000"), 1000.0)
        password = issue_token(secret, "bot", now=1000.0).encode()
        will = Will(topic="chat/acme/room", payload=will_payload)
        connect = Connect(client_id="bot-1", protocol_level=5, username="bot",
                          password=password, will=will)
        return session.handle(AgentData(encode(connect, 5)), 1000.0)

    assert any(isinstance(c, OpenUpstream) for c in connect(b"bot went away"))
    refused = connect(b"bot went away, sadly")
    assert not any(isinstance(c, OpenUpstream) for c in refused)
    data = b"".join(c.data for c in refused if isinstance(c, SendToAgent))
    (connack,) = StreamParser(side="client", protocol_level=5).feed(data)
    assert connack.reason_code >= 0x80  # the session answers a refused will with 0x87
    reason = connack.properties[PropertyId.REASON_STRING]
    assert "will" in reason and "payload is 20 bytes; the limit is 16" in reason
