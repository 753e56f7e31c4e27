"""A SUBSCRIBE filter is credited to the FIRST tool (agent order) that grants it, and
takes that tool's QoS cap (issue 6 section 7: a later tool with a '#' template used to
take the credit, and its cap)."""

from __future__ import annotations

from pathlib import Path

from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy

POLICY = """
device_types:
  sensor: {}
tenants:
  acme: {devices: {d1: {type: sensor}, d2: {type: sensor}}}
tools:
  telemetry:
    verb: subscribe
    topic: tenants/{tenant}/devices/{device}/telemetry
    conditions: {max_qos: 1}
  everything:
    verb: subscribe
    topic: tenants/#
    conditions: {max_qos: 0}
  status:
    verb: subscribe
    topic: tenants/{tenant}/devices/{device}/status
    conditions: {max_qos: 2}
agents:
  first-specific: {tenants: [acme], tools: [telemetry, everything]}
  first-hash: {tenants: [acme], tools: [everything, telemetry]}
  two-parts: {tenants: [acme], tools: [telemetry, status]}
"""


def agent(tmp_path: Path, name: str) -> AgentPolicy:
    (tmp_path / "policy.yaml").write_text(POLICY)
    found = CompiledPolicy.load(tmp_path).for_agent(name)
    assert found is not None
    return found


def test_the_first_tool_that_grants_a_filter_takes_the_credit_and_its_cap(
    tmp_path: Path,
) -> None:
    a = agent(tmp_path, "first-specific")
    for topic_filter in ("tenants/acme/devices/d1/telemetry", "tenants/acme/devices/+/telemetry"):
        d = a.decide_subscribe(topic_filter, qos=1)
        assert d.allowed and d.tool == "telemetry" and d.max_qos == 1, topic_filter
        assert d.rule is not None and "tools.telemetry" in d.rule
    # A filter only the later '#' tool grants is still that tool's.
    d = a.decide_subscribe("tenants/acme/devices/d1/status")
    assert d.allowed and d.tool == "everything" and d.max_qos == 0


def test_with_the_hash_tool_first_it_takes_the_credit(tmp_path: Path) -> None:
    a = agent(tmp_path, "first-hash")
    d = a.decide_subscribe("tenants/acme/devices/d1/telemetry", qos=1)
    assert d.allowed and d.tool == "everything" and d.max_qos == 0
    # Receive follows the same order.
    assert a.decide_receive("tenants/acme/devices/d1/telemetry").tool == "everything"


def test_each_tool_keeps_its_own_cap(tmp_path: Path) -> None:
    a = agent(tmp_path, "two-parts")
    # '+' at the last level includes names neither tool reads: refused, not half-granted.
    assert not a.decide_subscribe("tenants/acme/devices/d1/+").allowed
    assert a.decide_subscribe("tenants/acme/devices/+/telemetry").max_qos == 1
    d = a.decide_subscribe("tenants/acme/devices/d1/status", qos=2)
    assert d.allowed and d.tool == "status" and d.max_qos == 2
