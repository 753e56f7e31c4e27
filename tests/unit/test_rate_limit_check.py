"""The rate-limit check on the example policy's decisions, with a fake clock (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iot_guard.checks import Pipeline, Request
from iot_guard.checks.alerts import Alerts
from iot_guard.checks.rate_limit import RateLimitCheck, compile_limits
from iot_guard.mqtt import ReasonCode
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.policy.loader import PolicyError, load_policy_source
from iot_guard.policy_models import RISKS, Limits
from iot_guard.state.ratelimit import LocalRateLimiter

POLICY = Path(__file__).parents[2] / "device_policies"
DEV = "tenants/acme/devices/therm-001"
T0 = 1_700_000_000.0
CONNECTED = Decision(Verdict.ALLOW, "token accepted", 0, "connect")


def compiled(limits: dict[str, Any] | None = None) -> CompiledPolicy:
    source = load_policy_source(POLICY)
    if limits is None:
        return CompiledPolicy(source)
    doc = source.document.model_copy(update={"limits": Limits.model_validate(limits)})
    return CompiledPolicy(doc)


class Rig:
    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.alerts = Alerts()
        self.check = RateLimitCheck(LocalRateLimiter(), lambda: self.policy, self.alerts)
        self.pipeline = Pipeline([self.check])

    def publish(self, topic: str, payload: bytes, now: float, *, agent: str = "ops-agent",
                session: str = "s1") -> Decision:
        agent_policy = self.policy.for_agent(agent)
        assert agent_policy is not None
        decision = agent_policy.decide_publish(topic, payload, 1, False)
        request = Request("publish", agent, session, "jti", topic, 1, False, payload)
        return self.pipeline.run(request, decision, now).decision

    def identify(self, now: float, **kw: Any) -> Decision:
        return self.publish(f"{DEV}/commands/identify", b"{}", now, **kw)

    def connect(self, now: float, agent: str = "ops-agent") -> Decision:
        request = Request("connect", agent, f"c{now}", "jti", "127.0.0.1:5000")
        return self.pipeline.run(request, CONNECTED, now).decision

    def subscribe(self, topic_filter: str, now: float, session: str = "s1") -> Decision:
        agent_policy = self.policy.for_agent("ops-agent")
        assert agent_policy is not None
        decision = agent_policy.decide_subscribe(topic_filter, 1)
        request = Request("subscribe", "ops-agent", session, "jti", topic_filter, 1)
        return self.pipeline.run(request, decision, now).decision


def test_example_policy_limits_identify_device_to_20_a_minute_per_agent() -> None:
    rig = Rig(compiled())
    # The burst is included: 20 in a row pass, the 21st is refused, from any session.
    for i in range(20):
        assert rig.identify(T0 + i * 0.01, session=f"s{i % 3}").allowed, i
    refused = rig.identify(T0 + 0.2, session="s9")
    assert refused.verdict is Verdict.DENY
    assert refused.reason_code == ReasonCode.QUOTA_EXCEEDED  # 0x97: PUBACK may not carry 0x96
    assert "identify_device" in refused.reason and "20 per minute" in refused.reason
    assert "per agent" in refused.reason and "frees up in" in refused.reason
    assert refused.rule is not None and "limits.yaml:" in refused.rule
    # One unit every 3 s afterwards (20 per minute): 2.9 s later still refused, 3.1 s fine.
    assert not rig.identify(T0 + 2.9).allowed
    assert rig.identify(T0 + 3.1).allowed
    # Another agent has its own budget; other tools are not limited.
    assert rig.identify(T0 + 0.3, agent="globex-agent").allowed is False  # not its tenant
    assert rig.publish(f"{DEV}/shadow/get", b"", T0 + 0.3).allowed


def test_retry_after_in_the_reason_is_when_the_next_action_passes() -> None:
    rig = Rig(compiled({"tools": {"shadow_get": {"per_agent": {"per_minute": 6, "burst": 2}}}}))
    get = f"{DEV}/shadow/get"
    assert rig.publish(get, b"", T0).allowed and rig.publish(get, b"", T0).allowed
    refused = rig.publish(get, b"", T0 + 1)
    assert not refused.allowed and "frees up in 9 s" in refused.reason
    assert not rig.publish(get, b"", T0 + 9.99).allowed
    assert rig.publish(get, b"", T0 + 10.0).allowed


def test_per_session_rate_and_quota() -> None:
    rig = Rig(compiled({"tools": {"shadow_get": {
        "per_session": {"per_minute": 60, "burst": 3}, "per_session_total": 5}}}))
    get = f"{DEV}/shadow/get"
    assert all(rig.publish(get, b"", T0).allowed for _ in range(3))
    rate = rig.publish(get, b"", T0)
    assert rate.reason_code == 0x97 and "per session" in rate.reason and "3" in rate.reason
    assert rig.publish(get, b"", T0, session="s2").allowed  # another session: its own
    assert rig.publish(get, b"", T0 + 1).allowed and rig.publish(get, b"", T0 + 2).allowed
    quota = rig.publish(get, b"", T0 + 30)  # the rate has room again; the quota does not
    assert quota.reason_code == 0x97 and "5 per session, used up" in quota.reason
    assert "new session" in quota.reason
    # Refused actions do not use the quota: session s2 used 1 of 5.
    assert all(rig.publish(get, b"", T0 + 60 + i, session="s2").allowed for i in range(4))
    assert not rig.publish(get, b"", T0 + 70, session="s2").allowed
    # A session that ended is forgotten (memory follows live sessions).
    rig.check.forget_session("s1")
    assert rig.publish(get, b"", T0 + 120).allowed


def test_risk_class_limit_covers_every_tool_of_the_class() -> None:
    rig = Rig(compiled({"risks": {"low": {"per_agent": {"per_minute": 60, "burst": 2}}}}))
    assert rig.identify(T0).allowed and rig.publish(f"{DEV}/shadow/get", b"", T0).allowed
    refused = rig.publish(f"{DEV}/shadow/get", b"", T0)
    assert refused.reason_code == 0x97 and "low-risk actions" in refused.reason


def test_denied_actions_spend_no_budget() -> None:
    rig = Rig(compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 1}}}}))
    for _ in range(5):  # not its tenant: the policy refuses, the budget stays
        assert rig.identify(T0, agent="globex-agent").reason_code == ReasonCode.NOT_AUTHORIZED
    assert rig.identify(T0).allowed


def test_connection_storm_gets_0x9f() -> None:
    rig = Rig(compiled({"connections": {"per_minute": 30, "burst": 5}}))
    assert all(rig.connect(T0).allowed for _ in range(5))
    storm = rig.connect(T0 + 0.5)
    assert storm.reason_code == ReasonCode.CONNECTION_RATE_EXCEEDED
    assert "reconnect when it frees up in 1.5 s" in storm.reason
    assert rig.connect(T0 + 0.5, agent="observer").allowed  # per agent
    assert rig.connect(T0 + 2.0).allowed


def test_subscription_flood_gets_0x97() -> None:
    rig = Rig(compiled({"subscriptions": {"per_minute": 60, "burst": 3}}))
    assert all(rig.subscribe(f"{DEV}/status", T0).allowed for _ in range(3))
    flood = rig.subscribe(f"{DEV}/status", T0)
    assert flood.reason_code == ReasonCode.QUOTA_EXCEEDED and "subscription" in flood.reason


def test_every_hit_is_counted_and_alerted_once_per_cooldown() -> None:
    rig = Rig(compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 1}}}}))
    assert rig.identify(T0).allowed
    for i in range(50):
        assert not rig.identify(T0 + i * 0.1).allowed
    assert rig.check.hits == {"tool identify_device per agent": 50}
    alerts = rig.alerts.drain()
    assert len(alerts) == 1 and alerts[0].rule == "rate_limit"
    assert alerts[0].agent_id == "ops-agent" and "identify_device" in alerts[0].reason
    assert rig.alerts.suppressed == 49
    assert rig.identify(T0 + 61.5).allowed  # the minute freed one unit
    assert not rig.identify(T0 + 61.6).allowed
    later = rig.alerts.drain()
    assert len(later) == 1 and later[0].suppressed == 49


def test_observe_mode_records_would_deny_and_lets_the_action_through() -> None:
    rig = Rig(compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 1}}}}))
    rig.check.enforce = False
    assert rig.identify(T0).allowed
    request = Request("publish", "ops-agent", "s1", "jti", f"{DEV}/commands/identify", 1,
                      False, b"{}")
    agent = rig.policy.for_agent("ops-agent")
    assert agent is not None
    judged = rig.pipeline.run(request, agent.decide_publish(request.topic, b"{}", 1, False), T0)
    assert judged.decision.allowed
    assert [o.check for o in judged.observed] == ["rate_limit"]
    assert judged.observed[0].decision.reason_code == 0x97


def test_policy_swap_brings_new_limits_and_no_limits_is_free() -> None:
    rig = Rig(compiled({}))
    assert all(rig.identify(T0).allowed for _ in range(100))
    rig.policy = compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 1}}}})
    assert rig.identify(T0).allowed and not rig.identify(T0).allowed


@pytest.mark.parametrize("text, where, words", [
    ("limits:\n  tools:\n    nope: {per_agent: {per_minute: 5}}\n",
     "limits.yaml:3: limits.tools.nope:", "unknown tool 'nope'"),
    ("limits:\n  tools:\n    identify_device: {}\n",
     "limits.yaml:3: limits.tools.identify_device:", "give per_agent"),
    ("limits:\n  connections: {per_minute: 0}\n",
     "limits.yaml:2: limits.connections.per_minute:", "greater than 0"),
    ("limits:\n  risks:\n    extreme: {per_session_total: 3}\n",
     "limits.yaml:3: limits.risks.extreme", ""),
])
def test_limit_errors_name_file_and_line(
    tmp_path: Path, text: str, where: str, words: str
) -> None:
    for part in POLICY.glob("*.yaml"):
        if part.name != "limits.yaml":
            (tmp_path / part.name).write_text(part.read_text())
    (tmp_path / "limits.yaml").write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy_source(tmp_path)
    shown = [p.replace(str(tmp_path) + "/", "") for p in err.value.problems]
    assert any(p.startswith(where) and words in p for p in shown), shown


def test_a_limit_added_by_a_reload_applies_to_the_next_packet() -> None:
    rig = Rig(compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 20}}}}))
    update = f"{DEV}/shadow/get"
    assert all(rig.publish(update, b"", T0).allowed for _ in range(50))  # not limited
    # The reload limits the tool, and its risk class: the very next packet is judged by it.
    rig.policy = compiled({"tools": {"shadow_get": {"per_agent": {"per_minute": 1}}}})
    assert rig.publish(update, b"", T0).allowed
    refused = rig.publish(update, b"", T0)
    assert not refused.allowed and "tool shadow_get, 1 per minute per agent" in refused.reason
    rig.policy = compiled({"risks": {"low": {"per_session_total": 1}}})
    assert rig.publish(update, b"", T0, session="s2").allowed
    quota = rig.publish(update, b"", T0, session="s2")
    assert "quota: low-risk actions, 1 per session" in quota.reason
    # And a reload that lifts the limits frees the next packet.
    rig.policy = compiled({})
    assert rig.publish(update, b"", T0, session="s2").allowed


def test_the_per_action_table_is_the_rule_for_every_tool_and_risk() -> None:
    policy = compiled({"tools": {"identify_device": {"per_agent": {"per_minute": 20}}},
                       "risks": {"low": {"per_session_total": 3},
                                 "high": {"per_agent": {"per_minute": 2}}}})
    limits = compile_limits(policy)
    tools = [None, *policy.document.tools]
    assert {tool for tool, _ in limits.actions} == set(tools)
    assert {risk for _, risk in limits.actions} == {None, *RISKS}
    for (tool, risk), scopes in limits.actions.items():
        expected = [s for s in (limits.tools.get(tool or ""), limits.risks.get(risk or ""))
                    if s is not None]
        assert list(scopes) == expected, (tool, risk)
    # Narrowest first: the tool's own limit before its risk class's.
    assert [s.scope for s in limits.actions[("identify_device", "low")]] == [
        "tool:identify_device", "risk:low"]
    assert limits.actions[("shadow_get", "medium")] == ()


def test_a_tool_the_table_does_not_hold_is_judged_by_the_same_rule() -> None:
    rig = Rig(compiled({"risks": {"high": {"per_agent": {"per_minute": 1}}}}))
    # A decision naming a tool outside the policy's tools (an extra check's, say).
    odd = Decision(Verdict.ALLOW, "ok", 0, "write", "not_a_policy_tool", risk="high")
    request = Request("publish", "ops-agent", "s1", "jti", "a/b", 1, False, b"")
    assert rig.pipeline.run(request, odd, T0).decision is odd
    refused = rig.pipeline.run(request, odd, T0).decision
    assert refused.verdict is Verdict.DENY and "high-risk actions" in refused.reason
    assert refused.tool == "not_a_policy_tool"
