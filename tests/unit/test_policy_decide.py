"""Per-packet decisions of the compiled policy, against the example fleet and small policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.policy import compiler as compiler_module
from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.policy.loader import PolicyError

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
TOOLS_YAML = POLICY_DIR / "tools.yaml"
DEV = "tenants/acme/devices/therm-001"

NOT_AUTHORIZED = 0x87
PAYLOAD_INVALID = 0x99
SHARED_NOT_ALLOWED = 0x9E
FILTER_INVALID = 0x8F
NAME_INVALID = 0x90


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return CompiledPolicy.load(POLICY_DIR)


@pytest.fixture(scope="module")
def ops(policy: CompiledPolicy) -> AgentPolicy:
    agent = policy.for_agent("ops-agent")
    assert agent is not None
    return agent


def desired(**fields: object) -> bytes:
    return json.dumps({"state": {"desired": fields}}).encode()


def tool_line(name: str) -> int:
    for number, line in enumerate(TOOLS_YAML.read_text().splitlines(), 1):
        if line == f"  {name}:":
            return number
    raise AssertionError(name)


def small_policy(tmp_path: Path, text: str) -> CompiledPolicy:
    (tmp_path / "policy.yaml").write_text(text)
    return CompiledPolicy.load(tmp_path)


def agent_of(policy: CompiledPolicy, agent_id: str) -> AgentPolicy:
    agent = policy.for_agent(agent_id)
    assert agent is not None
    return agent


# --- publish ---------------------------------------------------------------------------------


def test_valid_shadow_update_is_allowed_with_its_rule(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(target_temp_c=21.5), qos=1)
    assert d == Decision(
        Verdict.ALLOW,
        "allowed by tool shadow_update",
        0x00,
        "write",
        tool="shadow_update",
        rule=f"{TOOLS_YAML}:{tool_line('shadow_update')} (tools.shadow_update)",
        resource="acme/therm-001",
        risk="low",
    )
    assert d.allowed


def test_payload_refusal_is_0x99_and_names_the_field(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(target_temp_c=45))
    assert d.verdict is Verdict.DENY and d.reason_code == PAYLOAD_INVALID
    assert d.tool == "shadow_update" and d.resource == "acme/therm-001"
    assert "target_temp_c" in d.reason and "30" in d.reason
    # admin_pin is never writable by an agent
    d = ops.decide_publish(f"{DEV}/config/patch", b'{"admin_pin": "1234"}')
    assert d.reason_code == PAYLOAD_INVALID and "admin_pin" in d.reason


def test_payload_is_checked_on_every_publish_not_cached(ops: AgentPolicy) -> None:
    topic = f"{DEV}/shadow/update"
    assert ops.decide_publish(topic, desired(mode="heat")).allowed
    assert ops.decide_publish(topic, desired(mode="boil")).reason_code == PAYLOAD_INVALID
    assert ops.decide_publish(topic, desired(mode="cool")).allowed


def test_high_risk_field_is_held_for_approval(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(firmware_channel="beta"))
    assert d.verdict is Verdict.HOLD and not d.allowed
    assert d.reason_code == NOT_AUTHORIZED and d.risk == "high"
    assert d.reason.startswith(
        "held for human approval: risk high is above the tool's approval threshold medium"
    )


def test_group_push_medium_goes_high_is_held(ops: AgentPolicy) -> None:
    topic = "tenants/acme/groups/floor-1/config/push"
    low = ops.decide_publish(topic, b'{"mode": "auto"}')
    # the tool's own risk (medium) is the floor of the effective risk; not above medium
    assert low.allowed and low.risk == "medium"
    assert low.resource == "acme/groups/floor-1" and low.action_type == "write"
    high = ops.decide_publish(topic, b'{"firmware_channel": "beta"}')
    assert high.verdict is Verdict.HOLD and high.risk == "high"
    bad = ops.decide_publish(topic, b'{"mode": "boil"}')
    assert bad.reason_code == PAYLOAD_INVALID


def test_decisions_built_on_demand_keep_their_risk_whatever_comes_first(
    policy: CompiledPolicy,
) -> None:
    # A fresh agent, so the first publish to the topic is the uncached one and it is a
    # hold: the allow built afterwards for the same topic must still carry its own risk.
    fresh = AgentPolicy(
        "ops-agent",
        [(t, policy.document.tools[t]) for t in policy.document.agents["ops-agent"].tools],
        frozenset(policy.document.agents["ops-agent"].tenants),
        policy._shared,
    )
    topic = "tenants/acme/groups/floor-1/config/push"
    held = fresh.decide_publish(topic, b'{"firmware_channel": "beta"}')
    assert held.verdict is Verdict.HOLD and held.risk == "high"
    assert held.reason.endswith("threshold medium (tool group_config_push)")
    low = fresh.decide_publish(topic, b'{"mode": "auto"}')
    assert low.allowed and low.risk == "medium"
    assert low.reason == "allowed by tool group_config_push"
    assert low.resource == held.resource == "acme/groups/floor-1"
    # The same outcome again is the same immutable object, not a rebuilt one.
    assert fresh.decide_publish(topic, b'{"mode": "heat"}') is low
    assert fresh.decide_publish(topic, b'{"firmware_channel": "beta"}') is held
    # A QoS outside 0-2 is refused like QoS 2, naming the tool's maximum.
    over = fresh.decide_publish(f"{DEV}/shadow/update", desired(mode="heat"), qos=7)
    assert over.reason.startswith("QoS 2 is above the maximum QoS 1 that tool shadow_update")
    assert over.tool == "shadow_update" and over.resource == "acme/therm-001"


def test_identify_command_is_invoke_and_reboot_is_not_granted(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/commands/identify", b"{}")
    assert d.allowed and d.action_type == "invoke" and d.tool == "identify_device"
    d = ops.decide_publish(f"{DEV}/commands/reboot", b'{"delay_s": 5}')
    assert d.verdict is Verdict.DENY and d.reason_code == NOT_AUTHORIZED
    assert "identify" in d.reason
    d = ops.decide_publish(f"{DEV}/commands/selfdestruct", b"{}")
    assert not d.allowed and "'selfdestruct' is not a command of device" in d.reason


def test_cross_tenant_and_unregistered_devices_are_denied(ops: AgentPolicy) -> None:
    body = desired(mode="heat")
    d = ops.decide_publish("tenants/acme/devices/therm-101/shadow/update", body)
    assert d.reason_code == NOT_AUTHORIZED
    assert "'therm-101' is not a registered device of tenant 'acme'" in d.reason
    d = ops.decide_publish("tenants/globex/devices/therm-101/shadow/update", body)
    assert "'globex' is not a tenant of agent ops-agent" in d.reason
    d = ops.decide_publish("tenants/acme/devices/therm-999/shadow/update", body)
    assert not d.allowed and "therm-999" in d.reason
    d = ops.decide_publish("tenants/acme/groups/lab/config/push", b'{"mode": "heat"}')
    assert not d.allowed and "'lab' is not a group of tenant 'acme'" in d.reason


def test_reply_topics_and_unknown_topics_are_not_publishable(ops: AgentPolicy) -> None:
    for topic in (f"{DEV}/shadow/update/accepted", f"{DEV}/telemetry", "a/b", f"{DEV}/shadow"):
        d = ops.decide_publish(topic, b"{}")
        assert d.verdict is Verdict.DENY and d.reason_code == NOT_AUTHORIZED, topic
        assert d.reason.startswith(f"agent ops-agent has no tool that allows publishing to {topic}")


@pytest.mark.parametrize("topic", ["$SYS/broker/load", "$CONTROL/dynamic-security/v1", "$guard/x"])
def test_dollar_topics_are_reserved(ops: AgentPolicy, topic: str) -> None:
    for d in (
        ops.decide_publish(topic, b""),
        ops.decide_subscribe(topic),
        ops.decide_subscribe(topic.split("/")[0] + "/#"),
        ops.decide_receive(topic),
    ):
        assert d.verdict is Verdict.DENY and d.reason_code == NOT_AUTHORIZED
        assert "'$'" in d.reason and "reserved" in d.reason


def test_wildcards_or_nul_in_a_publish_topic_are_invalid_names(ops: AgentPolicy) -> None:
    for topic in ("tenants/acme/devices/+/shadow/update", "tenants/#", "", "a\x00b"):
        d = ops.decide_publish(topic, b"{}")
        assert d.reason_code == NAME_INVALID and not d.allowed, topic


def test_topic_rules_are_the_codecs_with_one_set_of_codes(
    ops: AgentPolicy, policy: CompiledPolicy
) -> None:
    """Malformed names are 0x90 and malformed filters 0x8F (the codec's rules and wording,
    iot_guard.mqtt.topics), checked before anything else; '$' topics that are well formed
    are then 0x87. Changed on purpose from the hand copy the compiler had: a received
    name with U+0000 or a wildcard under '$', a share name with U+0000 and any topic of an
    unknown agent used to get 0x87 or 0x9E."""
    from iot_guard.mqtt.topics import topic_filter_problem, topic_name_problem

    for topic in ("a\x00b", "$SYS/+", "", "x" * 65536):
        for d in (ops.decide_receive(topic), ops.decide_publish(topic, b"")):
            assert d.reason_code == NAME_INVALID and not d.allowed, topic
            assert d.reason == topic_name_problem(topic)
    for topic_filter in ("$share/g\x00/x", "$share/g+/x", "a/#/b"):
        d = ops.decide_subscribe(topic_filter)
        assert d.reason_code == FILTER_INVALID and d.reason == topic_filter_problem(topic_filter)
    nobody = policy.deny_all("nobody")
    assert nobody.decide_publish("a/+", b"").reason_code == NAME_INVALID
    assert nobody.decide_subscribe("a/#/b").reason_code == FILTER_INVALID
    assert nobody.decide_publish("a/b", b"").reason_code == NOT_AUTHORIZED
    assert ops.decide_receive("$SYS/x").reason_code == NOT_AUTHORIZED


def test_qos_above_the_tool_maximum_is_refused_naming_it(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(mode="heat"), qos=2)
    assert d.reason_code == NOT_AUTHORIZED and "maximum QoS 1" in d.reason
    assert ops.decide_publish(f"{DEV}/shadow/update", desired(mode="heat"), qos=1).allowed


def test_retain_needs_the_condition(ops: AgentPolicy) -> None:
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(mode="heat"), retain=True)
    assert d.reason_code == NOT_AUTHORIZED and "retain" in d.reason


def test_shadow_get_takes_an_empty_payload(ops: AgentPolicy) -> None:
    assert ops.decide_publish(f"{DEV}/shadow/get", b"").allowed
    d = ops.decide_publish(f"{DEV}/shadow/get", b'{"x": 1}')
    assert d.reason_code == PAYLOAD_INVALID and "empty" in d.reason


def test_observer_cannot_publish(policy: CompiledPolicy) -> None:
    observer = agent_of(policy, "observer")
    d = observer.decide_publish(f"{DEV}/shadow/update", desired(mode="heat"))
    assert d.verdict is Verdict.DENY and "agent observer has no tool" in d.reason
    assert observer.decide_subscribe("tenants/acme/devices/+/telemetry").allowed


def test_token_narrowing_intersects_the_allowlist(policy: CompiledPolicy) -> None:
    narrow = policy.for_agent("ops-agent", frozenset({"read_telemetry", "reboot_anything"}))
    assert narrow is not None and narrow.tools == ("read_telemetry",)
    assert narrow.decide_subscribe("tenants/acme/devices/+/telemetry").allowed
    assert not narrow.decide_publish(f"{DEV}/shadow/update", desired(mode="heat")).allowed
    assert not narrow.decide_subscribe("tenants/acme/devices/+/status").allowed
    # a tool the agent lacks grants nothing even if the token names it
    observer = policy.for_agent("observer", frozenset({"shadow_update"}))
    assert observer is not None and observer.tools == ()
    assert not observer.decide_publish(f"{DEV}/shadow/update", desired(mode="heat")).allowed
    # compiled once per (agent, tools)
    assert policy.for_agent("ops-agent", frozenset({"read_telemetry"})) is policy.for_agent(
        "ops-agent", frozenset({"read_telemetry"})
    )


def test_unknown_agent_gets_none_and_deny_all_explains(policy: CompiledPolicy) -> None:
    assert policy.for_agent("mallory") is None
    nobody = policy.deny_all("mallory")
    for d in (
        nobody.decide_publish(f"{DEV}/shadow/update", desired(mode="heat")),
        nobody.decide_subscribe("tenants/acme/devices/therm-001/telemetry"),
        nobody.decide_receive("tenants/acme/devices/therm-001/telemetry"),
    ):
        assert d.verdict is Verdict.DENY and "mallory is not in the policy" in d.reason


def test_agent_without_tools_denies_everything(tmp_path: Path) -> None:
    p = small_policy(tmp_path, "tenants:\n  t: {}\nagents:\n  idle: {tenants: [t]}\n")
    idle = agent_of(p, "idle")
    d = idle.decide_publish("t/x", b"")
    assert d.reason == "agent idle has no tool that allows publishing to t/x"
    assert not idle.decide_subscribe("t/x").allowed
    assert not idle.decide_receive("t/x").allowed


def test_first_matching_tool_in_the_agents_order_wins(tmp_path: Path) -> None:
    text = (POLICY_DIR / "device_types.yaml").read_text() + (
        "tenants:\n  t:\n    devices:\n      d1: {type: thermostat}\n"
        "tools:\n"
        "  strict: {verb: publish, topic: 't/{tenant}/{device}/cfg', payload: config_patch,"
        " conditions: {max_qos: 0}}\n"
        "  loose: {verb: publish, topic: 't/{tenant}/{device}/cfg', payload: config_patch,"
        " risk: medium, conditions: {max_qos: 1}}\n"
        "  retainer: {verb: publish, topic: 't/{tenant}/{device}/cfg', payload: none,"
        " conditions: {retain: true, max_qos: 2}}\n"
        "agents:\n  a: {tenants: [t], tools: [strict, loose, retainer]}\n"
    )
    a = agent_of(small_policy(tmp_path, text), "a")
    topic = "t/t/d1/cfg"
    assert a.decide_publish(topic, b'{"mode": "heat"}', qos=0).tool == "strict"
    # strict refuses QoS 1, loose allows it
    assert a.decide_publish(topic, b'{"mode": "heat"}', qos=1).tool == "loose"
    # all three refuse (QoS, retain, payload): the payload refusal is the most specific
    d = a.decide_publish(topic, b'{"mode": "heat"}', qos=1, retain=True)
    assert d.reason_code == PAYLOAD_INVALID and d.tool == "retainer"
    d = a.decide_publish(topic, b'{"mode": "heat"}', qos=2)
    assert d.reason_code == PAYLOAD_INVALID and d.tool == "retainer"
    d = a.decide_publish(topic, b'{"mode": "boil"}', qos=0)
    assert d.reason_code == PAYLOAD_INVALID and d.tool == "strict"
    assert a.decide_publish(topic, b"", qos=2, retain=True).tool == "retainer"


# --- subscribe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("tenants/acme/devices/therm-001/telemetry", True),
        ("tenants/acme/devices/+/telemetry", True),
        ("tenants/acme/devices/+/status", True),
        ("tenants/acme/devices/+/shadow/update/accepted", True),
        ("tenants/acme/devices/therm-004/config/result", True),
        ("tenants/+/devices/+/telemetry", False),  # globex exists; ops-agent has acme only
        ("tenants/acme/#", False),  # group push topics are under it and not readable
        ("tenants/acme/devices/therm-001/#", False),
        ("tenants/acme/devices/+/shadow/+/accepted", False),  # two literals do not cover '+'
        ("tenants/acme/devices/+/+", False),
        ("tenants/acme/devices/therm-001/shadow/update", False),  # the agent's own publish
        ("tenants/acme/devices/therm-101/telemetry", False),  # globex's device
        ("tenants/acme/devices/therm-999/telemetry", False),  # unregistered
        ("tenants/globex/devices/therm-101/telemetry", False),
        ("#", False),
        ("+/acme/devices/+/telemetry", False),
        ("tenants/acme/devices/+/telemetry/#", False),
        ("tenants/acme/devices/+/telemetry/+", False),
    ],
)
def test_subscribe_containment(ops: AgentPolicy, topic_filter: str, allowed: bool) -> None:
    d = ops.decide_subscribe(topic_filter, qos=2)
    assert d.allowed is allowed, d.reason
    if allowed:
        assert d.max_qos == 1 and d.action_type == "read" and d.reason_code == 0
    else:
        assert d.reason_code == NOT_AUTHORIZED
        assert d.reason.startswith(f"agent ops-agent may not subscribe to {topic_filter}: ")


def test_subscribe_reasons_say_what_is_wrong(ops: AgentPolicy) -> None:
    assert (
        "would include tenants agent ops-agent may not read"
        in ops.decide_subscribe("tenants/+/devices/+/telemetry").reason
    )
    assert "'#' at level 3" in ops.decide_subscribe("tenants/acme/#").reason
    assert (
        "'therm-101' is not a registered device of tenant 'acme'"
        in ops.decide_subscribe("tenants/acme/devices/therm-101/telemetry").reason
    )


def test_subscription_resource_and_rule(ops: AgentPolicy) -> None:
    d = ops.decide_subscribe("tenants/acme/devices/+/telemetry")
    assert d.resource == "acme/+" and d.tool == "read_telemetry"
    assert d.rule == f"{TOOLS_YAML}:{tool_line('read_telemetry')} (tools.read_telemetry)"
    assert ops.decide_subscribe(f"{DEV}/status").resource == "acme/therm-001"


def test_plus_at_tenant_level_is_fine_for_an_agent_with_every_tenant(tmp_path: Path) -> None:
    text = (
        "tenants:\n  a: {devices: {d1: {type: x}}}\n  b: {devices: {d2: {type: x}}}\n"
        "device_types:\n  x: {}\n"
        "tools:\n  r: {verb: subscribe, topic: 't/{tenant}/{device}/v'}\n"
        "agents:\n  both: {tenants: [a, b], tools: [r]}\n  one: {tenants: [a], tools: [r]}\n"
    )
    p = small_policy(tmp_path, text)
    both, one = agent_of(p, "both"), agent_of(p, "one")
    assert both.decide_subscribe("t/+/+/v").allowed
    assert both.decide_subscribe("t/+/d2/v").allowed
    assert not both.decide_subscribe("t/+/+/w").allowed
    assert not one.decide_subscribe("t/+/+/v").allowed
    assert one.decide_subscribe("t/a/+/v").allowed
    # receive is exact: a name that slips through '+' but is not registered is dropped
    assert both.decide_receive("t/a/d1/v").allowed
    assert not both.decide_receive("t/a/d2/v").allowed
    assert not both.decide_receive("t/c/d1/v").allowed


def test_union_of_templates_covers_a_wildcard_only_when_complete(tmp_path: Path) -> None:
    text = (
        "tenants:\n  a: {devices: {d1: {type: x}}}\n  b: {}\n"
        "device_types:\n  x: {}\n"
        "tools:\n"
        "  r1: {verb: subscribe, topics: ['s/{tenant}/{device}/m/one', 's/+/free/k']}\n"
        "  r2: {verb: subscribe, topic: 's/{tenant}/{device}/m/two', conditions: {max_qos: 0}}\n"
        "  any: {verb: subscribe, topic: 'open/+/x', conditions: {max_qos: 2}}\n"
        "  deep: {verb: subscribe, topic: 'logs/{tenant}/#'}\n"
        "agents:\n  g: {tenants: [a], tools: [r1, r2, any, deep]}\n"
    )
    g = agent_of(small_policy(tmp_path, text), "g")
    assert not g.decide_subscribe("s/a/d1/m/+").allowed  # literals one/two do not cover '+'
    both = g.decide_subscribe("s/a/+/m/two")
    assert both.allowed and both.tool == "r2" and both.max_qos == 0
    assert g.decide_subscribe("open/+/x").max_qos == 2  # a template '+' covers a filter '+'
    assert g.decide_subscribe("open/anything/x").allowed
    assert not g.decide_subscribe("open/#").allowed  # '+' never absorbs '#'
    assert not g.decide_subscribe("open/+/#").allowed
    # a template '#' covers '#', '+' and literals below it, and its parent level
    for f in ("logs/a/#", "logs/a/+/+", "logs/a/x/y/z", "logs/a"):
        assert g.decide_subscribe(f).allowed, f
    assert not g.decide_subscribe("logs/+/#").allowed  # ... for the agent's tenants only
    assert g.decide_receive("logs/a").allowed and g.decide_receive("logs/a/1/2").allowed
    assert not g.decide_receive("logs/b/1").allowed
    assert g.decide_subscribe("s/+/free/k").allowed and g.decide_receive("s/zz/free/k").allowed


def test_shared_subscriptions(ops: AgentPolicy, tmp_path: Path) -> None:
    d = ops.decide_subscribe("$share/grp/tenants/acme/devices/+/telemetry")
    assert d.reason_code == SHARED_NOT_ALLOWED and not d.allowed
    for bad in ("$share/grp", "$share//x", "$share/g+/x", "$share/grp/"):
        assert ops.decide_subscribe(bad).reason_code == FILTER_INVALID, bad
    text = (
        "tenants:\n  a: {devices: {d1: {type: x}}}\ndevice_types:\n  x: {}\n"
        "tools:\n  shared: {verb: subscribe, topic: 't/{tenant}/{device}/v',"
        " conditions: {shared_subscription: true}}\n"
        "  plain: {verb: subscribe, topic: 't/{tenant}/{device}/w'}\n"
        "agents:\n  s: {tenants: [a], tools: [shared, plain]}\n"
    )
    s = agent_of(small_policy(tmp_path, text), "s")
    ok = s.decide_subscribe("$share/workers/t/a/+/v")
    assert ok.allowed and ok.tool == "shared"
    no = s.decide_subscribe("$share/workers/t/a/+/w")
    assert no.reason_code == SHARED_NOT_ALLOWED and "plain" in no.reason
    assert s.decide_subscribe("$share/workers/t/a/+/z").reason_code == NOT_AUTHORIZED
    assert s.decide_subscribe("$share/workers/$SYS/#").reason_code == NOT_AUTHORIZED


def test_malformed_filters_are_0x8f(ops: AgentPolicy) -> None:
    for f in ("tenants/#/x", "tenants/acme+/x", "", "a\x00"):
        assert ops.decide_subscribe(f).reason_code == FILTER_INVALID, f


def test_command_wildcard_needs_every_command_of_the_type(tmp_path: Path) -> None:
    text = (POLICY_DIR / "device_types.yaml").read_text() + (
        "tenants:\n  a: {devices: {d1: {type: thermostat}}}\n"
        "tools:\n"
        "  some: {verb: subscribe, topic: 'c/{tenant}/{device}/{command}',"
        " conditions: {commands: [identify]}}\n"
        "  every: {verb: subscribe, topic: 'e/{tenant}/{device}/{command}'}\n"
        "agents:\n  w: {tenants: [a], tools: [some, every]}\n"
    )
    w = agent_of(small_policy(tmp_path, text), "w")
    assert w.decide_subscribe("c/a/d1/identify").allowed
    assert not w.decide_subscribe("c/a/d1/reboot").allowed
    assert not w.decide_subscribe("c/a/d1/+").allowed
    assert not w.decide_subscribe("c/a/+/+").allowed
    assert w.decide_subscribe("e/a/+/+").allowed
    assert not w.decide_subscribe("e/a/d1/fly").allowed
    assert w.decide_receive("c/a/d1/identify").allowed
    assert not w.decide_receive("c/a/d1/reboot").allowed


# --- receive -----------------------------------------------------------------------------------


def test_receive_is_exact(ops: AgentPolicy) -> None:
    d = ops.decide_receive(f"{DEV}/telemetry")
    assert d.allowed and d.tool == "read_telemetry" and d.resource == "acme/therm-001"
    assert d.max_qos == 1 and d.action_type == "read"
    assert ops.decide_receive(f"{DEV}/shadow/get/rejected").tool == "read_shadow"
    for topic in (
        "tenants/acme/devices/therm-101/telemetry",
        "tenants/globex/devices/therm-101/telemetry",
        "tenants/acme/devices/therm-999/telemetry",
        "tenants/acme/groups/floor-1/config/push",
        f"{DEV}/shadow/update",
        f"{DEV}/telemetry/extra",
        "tenants/acme/devices/+/telemetry",
    ):
        assert not ops.decide_receive(topic).allowed, topic


def test_receive_cache_is_bounded(ops: AgentPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = CompiledPolicy.load(POLICY_DIR)
    agent = agent_of(policy, "observer")
    monkeypatch.setattr(compiler_module, "CACHE_LIMIT", 50)
    for i in range(200):
        assert not agent.decide_receive(f"junk/{i}").allowed
        # The bound is on what was decided on demand; the topics decided at CONNECT stay.
        assert len(agent._demand_recv) <= 50 and agent._decided_recv
    assert agent.decide_receive(f"{DEV}/telemetry").allowed


def test_compiling_from_a_document_names_rules_without_lines(policy: CompiledPolicy) -> None:
    bare = CompiledPolicy(policy.document)
    d = agent_of(bare, "ops-agent").decide_receive(f"{DEV}/status")
    assert d.allowed and d.rule == "tools.read_status"


def test_publish_template_with_command_needs_command_payload(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "tools:\n  t: {verb: publish, topic: 'x/{tenant}/{device}/{command}'}\n"
    )
    with pytest.raises(PolicyError, match="needs payload kind command"):
        CompiledPolicy.load(tmp_path)


def test_plus_over_two_kinds_of_variable_needs_each_to_cover(tmp_path: Path) -> None:
    text = (
        "tenants:\n  a: {devices: {d1: {type: x}}, groups: {g1: [d1]}}\n"
        "device_types:\n  x: {}\n"
        "tools:\n"
        "  dev: {verb: subscribe, topics: ['m/{tenant}/{device}/x', 'm/{tenant}/{device}/y']}\n"
        "  grp: {verb: subscribe, topic: 'm/{tenant}/{group}/x'}\n"
        "agents:\n  k: {tenants: [a], tools: [dev, grp]}\n"
    )
    k = agent_of(small_policy(tmp_path, text), "k")
    assert k.decide_subscribe("m/a/+/x").allowed
    # a group name under '+' would reach .../g1/y, which no tool lets k read
    assert not k.decide_subscribe("m/a/+/y").allowed
    assert k.decide_subscribe("m/a/d1/y").allowed and not k.decide_subscribe("m/a/g1/y").allowed


def _types_line(needle: str) -> int:
    path = POLICY_DIR / "device_types.yaml"
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({"target_temp_c": 45}, "target_temp_c", "      target_temp_c:"),
        ({"mode": "warp"}, "mode", "      mode:"),
        ({"admin_pin": "1234"}, "admin_pin", "      admin_pin:"),  # not agent-writable
    ],
)
def test_a_field_refusal_names_the_fields_line_in_the_device_type(
    ops: AgentPolicy, fields: dict[str, object], field: str, needle: str
) -> None:
    """The rule of a payload refusal is the field that refused it (its bounds, its enum, its
    agent_writable) in the device type, not only the tool that carried it."""
    d = ops.decide_publish(f"{DEV}/shadow/update", desired(**fields))
    assert d.verdict is Verdict.DENY and d.reason_code == PAYLOAD_INVALID
    types_yaml = POLICY_DIR / "device_types.yaml"
    assert d.rule == (
        f"{types_yaml}:{_types_line(needle)} (device_types.thermostat.config.{field})"
    )
    # A key no device type declares has no field rule: the tool's stands.
    unknown = ops.decide_publish(f"{DEV}/shadow/update", desired(colour="red"))
    assert unknown.rule == f"{TOOLS_YAML}:{tool_line('shadow_update')} (tools.shadow_update)"
