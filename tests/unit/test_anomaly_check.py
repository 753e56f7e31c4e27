"""The anomaly check on the example policy's decisions, with a fake clock (no network)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iot_guard.checks import Pipeline, Request
from iot_guard.checks.alerts import Alert, Alerts
from iot_guard.checks.anomaly import AnomalyCheck, Hours, baseline_key
from iot_guard.mqtt import ReasonCode
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.policy.loader import load_policy_source
from iot_guard.policy_models import Anomaly, WorkingHours
from iot_guard.state import Baseline
from iot_guard.state.baseline import fold

POLICY = Path(__file__).parents[2] / "device_policies"
DEV = "tenants/acme/devices/therm-001"
# Monday 2024-01-08 10:00 UTC
MONDAY_10 = datetime(2024, 1, 8, 10, 0, tzinfo=UTC).timestamp()


def compiled(anomaly: dict[str, Any]) -> CompiledPolicy:
    doc = load_policy_source(POLICY).document
    return CompiledPolicy(doc.model_copy(update={"anomaly": Anomaly.model_validate(anomaly)}))


class Rig:
    def __init__(self, anomaly: dict[str, Any], baselines: dict[str, Baseline] | None = None,
                 enforce: bool = True) -> None:
        self.policy = compiled(anomaly)
        self.alerts = Alerts()
        self.check = AnomalyCheck(lambda: self.policy, self.alerts, baselines)
        self.check.enforce = enforce
        self.pipeline = Pipeline([self.check])
        self.observed: list[Any] = []

    def publish(self, topic: str, payload: bytes, now: float, agent: str = "ops-agent",
                session: str = "s1") -> Decision:
        agent_policy = self.policy.for_agent(agent)
        assert agent_policy is not None
        decision = agent_policy.decide_publish(topic, payload, 1, False)
        judged = self.pipeline.run(
            Request("publish", agent, session, "jti", topic, 1, False, payload), decision, now)
        self.observed.extend(judged.observed)
        return judged.decision

    def get(self, now: float, device: str = DEV, **kw: Any) -> Decision:
        return self.publish(f"{device}/shadow/get", b"", now, **kw)

    def fired(self) -> list[Alert]:
        return self.alerts.drain()


def test_repeated_denials_within_the_window() -> None:
    rig = Rig({"repeated_denials": {"count": 10, "window_s": 60}})
    foreign = "tenants/globex/devices/therm-101"
    for i in range(9):
        assert not rig.get(MONDAY_10 + i * 5, foreign).allowed
    assert rig.fired() == []
    rig.get(MONDAY_10 + 50, foreign)  # the 10th refusal within 50 s
    (alert,) = rig.fired()
    assert alert.rule == "repeated_denials" and alert.mode == "alert"
    assert "refused 10 times within 60 s" in alert.reason
    # Ten refusals spread over more than the window are no anomaly.
    slow = Rig({"repeated_denials": {"count": 10, "window_s": 60}})
    for i in range(30):
        slow.get(MONDAY_10 + i * 7, foreign)
    assert slow.fired() == []


def test_outside_tenants_names_the_tenant_and_ignores_unknown_words() -> None:
    rig = Rig({"outside_tenants": {}})
    rig.get(MONDAY_10, "tenants/globex/devices/therm-101")
    (alert,) = rig.fired()
    assert alert.rule == "outside_tenants" and alert.subject == "globex"
    rig.get(MONDAY_10, "tenants/acme/devices/nope")  # refused, but no other tenant named
    rig.get(MONDAY_10, "tenants/initech/devices/x")  # not a registered tenant
    assert rig.fired() == []


def test_same_action_ten_times_in_a_row() -> None:
    rig = Rig({"repeated_action": {"count": 10}})
    topic = f"{DEV}/commands/identify"
    for i in range(9):
        rig.publish(topic, b"{}", MONDAY_10 + i)
    rig.get(MONDAY_10 + 9)  # another action breaks the streak
    for i in range(9):
        rig.publish(topic, b"{}", MONDAY_10 + 10 + i)
    assert rig.fired() == []
    rig.publish(topic, b"{}", MONDAY_10 + 20)
    (alert,) = rig.fired()
    assert alert.rule == "repeated_action" and "10 times in a row" in alert.reason
    # Each session has its own streak, and a closed session is forgotten.
    rig.check.forget_session("s1")
    rig.publish(topic, b"{}", MONDAY_10 + 21)
    assert rig.fired() == []


def test_first_use_of_a_tool_once_and_not_for_a_tool_already_in_the_baselines() -> None:
    known = {baseline_key("ops-agent", "shadow_get"): Baseline(1.0, 0.5, 20, 0, 0.0)}
    rig = Rig({"first_use": {}}, known)
    rig.get(MONDAY_10)  # known from the stored baselines (a previous run)
    assert rig.fired() == []
    rig.publish(f"{DEV}/commands/identify", b"{}", MONDAY_10)
    rig.publish(f"{DEV}/commands/identify", b"{}", MONDAY_10 + 1)
    (alert,) = rig.fired()
    assert alert.rule == "first_use" and alert.subject == "identify_device"
    rig.get(MONDAY_10 + 1, agent="globex-agent")  # refused: a refusal is no use of a tool
    assert rig.fired() == []


def test_off_hours() -> None:
    hours = {"timezone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"],
             "start": "08:00", "end": "18:00"}
    rig = Rig({"off_hours": {}, "working_hours": hours})
    rig.get(MONDAY_10)  # 11:00 in Berlin
    assert rig.fired() == []
    rig.get(MONDAY_10 + 8 * 3600)  # 19:00 in Berlin
    (alert,) = rig.fired()
    assert alert.rule == "off_hours"
    sunday = datetime(2024, 1, 7, 12, 0, tzinfo=UTC).timestamp()
    assert not Hours(WorkingHours.model_validate(hours)).inside(sunday)
    night = Hours(WorkingHours(timezone="UTC", days=["mon"], start="22:00", end="06:00"))
    assert night.inside(MONDAY_10 + 12 * 3600 + 5)  # Monday 22:00
    assert night.inside(MONDAY_10 + 18 * 3600)  # Tuesday 04:00: Monday's night shift
    assert not night.inside(MONDAY_10 + 21 * 3600)  # Tuesday 07:00
    assert not night.inside(MONDAY_10)  # Monday 10:00


def test_rate_spike_against_a_baseline_after_warm_up() -> None:
    spike = {"rate_spike": {"k": 3, "window_s": 60, "warmup_windows": 10, "min_count": 5,
                            "alpha": 0.2}}
    key = baseline_key("ops-agent", "shadow_get")
    # A baseline built by the store's own fold: 2-4 actions a minute for 30 minutes.
    base: Baseline | None = None
    start = int(MONDAY_10 // 60) - 30
    for w in range(30):
        base = fold(base, start + w, float(2 + w % 3), 0.2)
    assert base is not None and base.windows >= 10
    rig = Rig(spike, {key: base})
    now = (start + 30) * 60.0
    threshold = base.mean + 3 * base.stddev
    n = 0
    while n <= threshold:
        assert rig.fired() == [], n
        rig.get(now + n * 0.5)
        n += 1
    (alert,) = rig.fired()
    assert alert.rule == "rate_spike" and "baseline" in alert.reason
    for i in range(20):  # once per window
        rig.get(now + 20 + i)
    assert rig.fired() == []
    # Not warmed up: no alert, however many.
    cold = Rig(spike, {key: Baseline(0.1, 0.01, 3, start + 29, 0.0)})
    for i in range(50):
        cold.get(now + i)
    assert [a.rule for a in cold.fired()] == []


def test_counts_are_taken_for_folding_and_merged_back() -> None:
    rig = Rig({"rate_spike": {"window_s": 60}})
    w = int(MONDAY_10 // 60)
    for i in range(3):
        rig.get(w * 60.0 + i)
    rig.publish(f"{DEV}/commands/identify", b"{}", w * 60.0 + 5)
    rig.get(w * 60.0 + 61)  # the next window
    taken = sorted(rig.check.take_counts())
    assert taken == [("ops-agent:identify_device", w, 1.0), ("ops-agent:shadow_get", w, 3.0),
                     ("ops-agent:shadow_get", w + 1, 1.0)]
    assert rig.check.take_counts() == []
    rig.check.restore(taken[:1])  # a fold that failed keeps its counts
    assert rig.check.take_counts() == taken[:1]
    merged = Baseline(2.0, 1.0, 12, w + 1, 4.0)
    rig.check.merge_baseline("ops-agent:shadow_get", merged)
    assert rig.check.baselines()["ops-agent:shadow_get"] == merged


def test_block_refuses_and_asks_for_the_kill_switch() -> None:
    rig = Rig({"repeated_action": {"mode": "block", "count": 3}})
    assert rig.get(MONDAY_10).allowed and rig.get(MONDAY_10 + 1).allowed
    refused = rig.get(MONDAY_10 + 2)
    assert refused.verdict is Verdict.DENY and refused.reason_code == ReasonCode.NOT_AUTHORIZED
    assert "anomaly (repeated_action)" in refused.reason and "stopped" in refused.reason
    (alert,) = rig.fired()
    assert alert.mode == "block" and alert.agent_id == "ops-agent"
    # An action the policy already refused keeps the policy's reason (the first deny
    # stays); the block alert still goes out.
    rig = Rig({"outside_tenants": {"mode": "block"}})
    refused = rig.get(MONDAY_10, "tenants/globex/devices/therm-101")
    assert "is not a tenant of agent ops-agent" in refused.reason
    assert [a.mode for a in rig.fired()] == ["block"]


def test_block_in_observe_mode_is_would_deny_and_stops_nothing() -> None:
    rig = Rig({"first_use": {"mode": "block"}}, enforce=False)
    assert rig.get(MONDAY_10).allowed
    assert [o.check for o in rig.observed] == ["anomaly"]
    (alert,) = rig.fired()
    assert alert.mode == "would_block"


def test_alert_mode_never_changes_a_decision() -> None:
    rig = Rig({"first_use": {}, "repeated_action": {"count": 2}})
    assert all(rig.get(MONDAY_10 + i).allowed for i in range(5))
    assert {a.rule for a in rig.fired()} == {"first_use", "repeated_action"}


def test_every_rule_off_by_default() -> None:
    rig = Rig({})
    for i in range(50):
        rig.get(MONDAY_10 + i, "tenants/globex/devices/therm-101")
        rig.get(MONDAY_10 + i)
    assert rig.fired() == [] and rig.check.take_counts() == []


@pytest.mark.parametrize("section, problem", [
    ({"off_hours": {}}, "off_hours needs working_hours"),
    ({"working_hours": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
    ({"working_hours": {"start": "25:00"}}, "should match pattern"),
    ({"first_use": {"mode": "shout"}}, "'alert', 'block' or 'off'"),
])
def test_bad_anomaly_sections_are_refused(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Anomaly.model_validate(section)


def test_a_policy_swap_rebuilds_the_rules_for_the_next_packet() -> None:
    rig = Rig({"repeated_action": {"count": 10}})
    for i in range(3):
        rig.get(MONDAY_10 + i)
    assert rig.fired() == []
    rig.policy = compiled({"repeated_action": {"count": 4}})
    rig.get(MONDAY_10 + 3)  # the 4th in a row: the new count applies at once
    assert [a.rule for a in rig.fired()] == ["repeated_action"]
    rig.policy = compiled({})  # every rule off: nothing counted, nothing fired
    for i in range(20):
        rig.get(MONDAY_10 + 10 + i)
    assert rig.fired() == [] and rig.check.take_counts() == []
    rig.policy = compiled({"first_use": {}})
    rig.get(MONDAY_10 + 40)
    assert [a.rule for a in rig.fired()] == ["first_use"]


def test_the_same_action_means_same_kind_topic_and_payload() -> None:
    rig = Rig({"repeated_action": {"count": 3}})
    topic = f"{DEV}/commands/identify"
    rig.publish(topic, b"{}", MONDAY_10)
    rig.publish(topic, b"{}", MONDAY_10 + 1)
    rig.publish(topic, b'{"x":1}', MONDAY_10 + 2)  # another payload: a new streak
    rig.publish(topic, b'{"x":1}', MONDAY_10 + 3)
    agent = rig.policy.for_agent("ops-agent")
    assert agent is not None
    # Another kind on the same topic string breaks it too.
    subscribe = Request("subscribe", "ops-agent", "s1", "jti", topic, 1, False, b'{"x":1}')
    rig.check.check(subscribe, agent.decide_subscribe(topic, 1), MONDAY_10 + 4)
    rig.publish(topic, b'{"x":1}', MONDAY_10 + 5)
    rig.publish(topic, b'{"x":1}', MONDAY_10 + 6)
    assert rig.fired() == []
    rig.publish(topic, b'{"x":1}', MONDAY_10 + 7)
    (alert,) = rig.fired()
    assert "3 times in a row" in alert.reason
    for i in range(3):  # the streak goes on: the 6th fires again, within the cooldown
        rig.publish(topic, b'{"x":1}', MONDAY_10 + 8 + i)
    assert rig.fired() == [] and rig.alerts.suppressed == 1


def _warm(mean_count: float, windows: int, last: int) -> Baseline:
    base: Baseline | None = None
    for w in range(windows):
        base = fold(base, last - windows + 1 + w, mean_count, 0.2)
    assert base is not None
    return base


def test_a_baseline_merged_after_the_first_action_is_used_at_once() -> None:
    spike = {"rate_spike": {"k": 3, "window_s": 60, "warmup_windows": 10, "min_count": 5}}
    key = baseline_key("ops-agent", "shadow_get")
    w = int(MONDAY_10 // 60)
    rig = Rig(spike)  # no stored baseline: nothing to compare with
    for i in range(30):
        rig.get(w * 60.0 + i)
    assert rig.fired() == []
    # A fold brings a quiet baseline (2 a minute) with the open window's 30 folded in by
    # another guard: the next action of this window is far above it.
    rig.check.merge_baseline(key, Baseline(2.0, 0.0, 20, w, 30.0))
    rig.get(w * 60.0 + 31)
    (alert,) = rig.fired()
    assert alert.rule == "rate_spike" and "61 times this window" in alert.reason
    # A later fold with a busy baseline: the same rate is no spike in the next window.
    busy = _warm(200.0, 30, w)
    rig.check.merge_baseline(key, busy)
    for i in range(100):
        rig.get((w + 1) * 60.0 + i * 0.5)
    assert rig.fired() == []


def test_a_swap_that_changes_k_applies_to_the_next_packet() -> None:
    key = baseline_key("ops-agent", "shadow_get")
    w = int(MONDAY_10 // 60)
    base = Baseline(4.0, 1.0, 20, w - 1, 0.0)  # 4 +- 1 a minute
    rig = Rig({"rate_spike": {"k": 50, "window_s": 60, "min_count": 5}}, {key: base})
    for i in range(20):
        rig.get(w * 60.0 + i)
    assert rig.fired() == []  # 20 < 4 + 50 * 1
    rig.policy = compiled({"rate_spike": {"k": 3, "window_s": 60, "min_count": 5}})
    rig.get(w * 60.0 + 21)
    (alert,) = rig.fired()
    assert alert.rule == "rate_spike" and "(k=3)" in alert.reason
