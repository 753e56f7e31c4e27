"""What the approvals lane builds on: the policy version, the blast radius condition
(approval_above_devices) and the frozen device list an action reaches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy
from iot_guard.policy.decision import Verdict
from iot_guard.policy.loader import PolicyError

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
GROUP = "tenants/acme/groups/floor-1/config/push"
FLOOR_1 = [f"acme/therm-00{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def ops() -> AgentPolicy:
    agent = CompiledPolicy.load(POLICY_DIR).for_agent("ops-agent")
    assert agent is not None
    return agent


def copy_policy(tmp_path: Path) -> Path:
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    return target


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith(text):
            return number
    raise AssertionError(text)


# --- the example fleet (issue 7: what is held there and what goes straight through) ----------


def test_a_low_risk_push_to_a_group_of_5_goes_straight_through(ops: AgentPolicy) -> None:
    d = ops.decide_publish(GROUP, b'{"mode": "auto"}')
    assert d.allowed and d.risk == "medium"


def test_a_firmware_channel_push_to_a_group_is_held_as_before(ops: AgentPolicy) -> None:
    d = ops.decide_publish(GROUP, b'{"firmware_channel": "beta"}')
    assert d.verdict is Verdict.HOLD and d.risk == "high"
    assert "raised" not in d.reason and "tools.group_config_push)" in (d.rule or "")


# --- blast radius ---------------------------------------------------------------------------------


def radius_policy(tmp_path: Path, limit: int) -> AgentPolicy:
    target = copy_policy(tmp_path)
    tools = target / "tools.yaml"
    tools.write_text(
        tools.read_text().replace("approval_above_devices: 5", f"approval_above_devices: {limit}")
    )
    agent = CompiledPolicy.load(target).for_agent("ops-agent")
    assert agent is not None
    return agent


def test_reaching_more_devices_than_the_limit_raises_risk_one_class(tmp_path: Path) -> None:
    agent = radius_policy(tmp_path, 4)
    d = agent.decide_publish(GROUP, b'{"mode": "auto"}')
    assert d.verdict is Verdict.HOLD and d.risk == "high"
    assert d.reason == (
        "held for human approval: risk high is above the tool's approval threshold medium "
        "(tool group_config_push); raised from medium because it reaches 5 devices, more "
        "than approval_above_devices 4"
    )
    tools = tmp_path / "policy" / "tools.yaml"
    where = line_of(tools, "approval_above_devices:")
    assert d.rule == (
        f"{tools}:{where} (tools.group_config_push.conditions.approval_above_devices)"
    )
    # A high-risk field is raised to critical, and says so.
    firmware = agent.decide_publish(GROUP, b'{"firmware_channel": "beta"}')
    assert firmware.verdict is Verdict.HOLD and firmware.risk == "critical"
    assert "raised from high because it reaches 5 devices" in firmware.reason


def test_at_the_limit_nothing_is_raised(tmp_path: Path) -> None:
    d = radius_policy(tmp_path, 5).decide_publish(GROUP, b'{"mode": "auto"}')
    assert d.allowed and d.risk == "medium"


def test_a_device_topic_reaches_one_device(tmp_path: Path) -> None:
    target = copy_policy(tmp_path)
    tools = target / "tools.yaml"
    tools.write_text(
        tools.read_text().replace(
            "      max_qos: 2                  # exactly-once delivery for config changes\n",
            "      max_qos: 2\n      approval_above_devices: 0\n",
        )
    )
    agent = CompiledPolicy.load(target).for_agent("ops-agent")
    assert agent is not None
    topic = "tenants/acme/devices/therm-001/config/patch"
    # low -> medium: raised, but not above the tool's threshold (medium): it goes.
    d = agent.decide_publish(topic, b'{"mode": "heat"}')
    assert d.allowed and d.risk == "medium"
    # high -> critical: held, saying why.
    held = agent.decide_publish(topic, b'{"firmware_channel": "beta"}')
    assert held.verdict is Verdict.HOLD and held.risk == "critical"
    assert "reaches 1 device, more than approval_above_devices 0" in held.reason


def test_the_limit_is_a_non_negative_integer(tmp_path: Path) -> None:
    target = copy_policy(tmp_path)
    tools = target / "tools.yaml"
    tools.write_text(
        tools.read_text().replace("approval_above_devices: 5", "approval_above_devices: -1")
    )
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(target)
    assert f"{tools}:{line_of(tools, 'approval_above_devices:')}: " in info.value.problems[0]


# --- devices reached ------------------------------------------------------------------


def test_devices_reached_is_the_device_or_the_group_members(ops: AgentPolicy) -> None:
    assert ops.devices_reached(GROUP) == FLOOR_1
    assert ops.devices_reached("tenants/acme/devices/therm-007/config/patch") == [
        "acme/therm-007"
    ]
    assert ops.devices_reached("tenants/acme/devices/therm-007/commands/identify") == [
        "acme/therm-007"
    ]
    # Nothing this agent may publish to reaches nothing.
    for topic in (
        "tenants/globex/groups/lab/config/push",
        "tenants/acme/groups/floor-9/config/push",
        "tenants/acme/devices/therm-001/telemetry",
        "a/+",
        "",
    ):
        assert ops.devices_reached(topic) == [], topic


def test_devices_reached_is_a_fresh_list_each_time(ops: AgentPolicy) -> None:
    first = ops.devices_reached(GROUP)
    first.append("acme/intruder")
    assert ops.devices_reached(GROUP) == FLOOR_1


# --- policy version -------------------------------------------------------------------


def test_version_is_a_sha256_of_the_source_stable_for_the_same_files(tmp_path: Path) -> None:
    a = CompiledPolicy.load(POLICY_DIR).version
    assert len(a) == 64 and int(a, 16) >= 0
    target = copy_policy(tmp_path)
    assert CompiledPolicy.load(target).version == a  # same files, another directory
    tenants = target / "tenants.yaml"
    tenants.write_text(tenants.read_text().replace("floor-1: [therm-001, ", "floor-1: ["))
    assert CompiledPolicy.load(target).version != a
    # A comment is part of the source too: the version names the exact files.
    tenants.write_text(tenants.read_text() + "# reviewed\n")
    b = CompiledPolicy.load(target).version
    assert b != a and CompiledPolicy.load(target).version == b


def test_version_covers_schema_files(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "tenants: {a: {}}\n"
        "tools:\n  t: {verb: publish, topic: 'x/{tenant}', payload: json_schema,"
        " schema_file: s.json}\n"
        "agents:\n  g: {tenants: [a], tools: [t]}\n"
    )
    (tmp_path / "s.json").write_text('{"type": "object"}')
    before = CompiledPolicy.load(tmp_path).version
    (tmp_path / "s.json").write_text('{"type": "array"}')
    assert CompiledPolicy.load(tmp_path).version != before


def test_a_document_policy_has_a_version_too() -> None:
    policy = CompiledPolicy.load(POLICY_DIR)
    a = CompiledPolicy(policy.document).version
    assert a == CompiledPolicy(policy.document).version and len(a) == 64
