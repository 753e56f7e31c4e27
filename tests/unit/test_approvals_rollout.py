"""The rollout state machine: per-device states, canary, abort criteria (pure, fake clock)."""

from __future__ import annotations

from iot_guard.approvals.rollout import RolloutSpec, RolloutState, result_status

DEVICES = [f"acme/therm-00{i}" for i in range(1, 6)]


def spec(canary: int = 0, failure_pct: float | None = 40, min_executed: int = 2,
         failure_types: tuple[str, ...] = ("failed", "rejected", "timed_out")) -> RolloutSpec:
    return RolloutSpec(
        device_topic="tenants/{tenant}/devices/{device}/config/patch",
        result_topic="tenants/{tenant}/devices/{device}/config/result",
        max_per_minute=60, canary=canary, bake_s=1, device_timeout_s=5,
        failure_pct=failure_pct, min_executed=min_executed,
        failure_types=frozenset(failure_types),
    )


def test_topics_and_the_result_filter() -> None:
    s = spec()
    assert s.topic_for("acme/therm-001") == "tenants/acme/devices/therm-001/config/patch"
    assert s.result_topic_for("acme/therm-001") == "tenants/acme/devices/therm-001/config/result"
    assert s.result_filter() == "tenants/+/devices/+/config/result"
    assert s.interval_s == 1.0


def test_every_device_succeeds_and_the_rollout_is_done() -> None:
    r = RolloutState.plan(spec(), DEVICES, 0.0)
    for t, d in enumerate(DEVICES):
        assert r.next_queued() == d
        r.start(d, t)
        assert r.result(d, "succeeded", None, t + 0.1)
    assert r.next_queued() is None and r.all_ended()
    assert r.conclude() == "done"
    assert r.counts()["succeeded"] == 5


def test_abort_after_min_executed_at_the_failure_percentage() -> None:
    r = RolloutState.plan(spec(failure_pct=50, min_executed=2), DEVICES, 0.0)
    r.start(DEVICES[0], 1)
    r.result(DEVICES[0], "rejected", "fault", 1.1)
    assert r.status == "running"  # 1 executed < min_executed 2
    r.start(DEVICES[1], 2)
    r.start(DEVICES[2], 2.5)
    r.result(DEVICES[1], "succeeded", None, 2.1)
    assert r.status == "aborted" and "1 of 2 executed devices failed (50% >= 50%)" in (
        r.reason or "")
    c = r.counts()
    assert (c["cancelled"], c["in_progress"], c["rejected"], c["succeeded"]) == (2, 1, 1, 1)
    assert r.next_queued() is None  # nothing more is sent
    # The device in progress keeps its own outcome.
    assert r.result(DEVICES[2], "succeeded", None, 3)
    assert r.conclude() == "aborted"


def test_only_the_chosen_failure_types_count() -> None:
    r = RolloutState.plan(spec(failure_pct=50, min_executed=2, failure_types=("rejected",)),
                          DEVICES, 0.0)
    for d in DEVICES[:2]:
        r.start(d, 1)
        r.result(d, "timed_out", "no result within 5 s", 6)
    assert r.status == "running"
    for d in DEVICES[2:]:
        r.start(d, 7)
        r.result(d, "succeeded", None, 7.1)
    assert r.conclude() == "failed" and "2 timed out" in (r.reason or "")


def test_a_failed_canary_aborts_at_once() -> None:
    r = RolloutState.plan(spec(canary=1, failure_pct=None), DEVICES, 0.0)
    assert r.canaries == (DEVICES[0],)
    r.start(DEVICES[0], 0)
    assert not r.canaries_settled()
    r.result(DEVICES[0], "rejected", "fault: device rejects every config", 0.1)
    assert r.status == "aborted" and r.reason and r.reason.startswith("canary acme/therm-001")
    assert r.counts()["cancelled"] == 4


def test_criteria_met_with_nothing_left_to_send_is_a_failed_rollout_not_an_abort() -> None:
    r = RolloutState.plan(spec(failure_pct=40, min_executed=2), DEVICES[:2], 0.0)
    r.start(DEVICES[0], 0)
    r.start(DEVICES[1], 1)
    r.result(DEVICES[0], "succeeded", None, 1)
    r.result(DEVICES[1], "timed_out", "no result within 5 s", 6)
    assert r.status == "running" and r.conclude() == "failed"
    assert r.reason == "1 of 2 devices succeeded (0 failed, 0 rejected, 1 timed out)"


def test_late_and_duplicate_results_are_ignored() -> None:
    r = RolloutState.plan(spec(), DEVICES, 0.0)
    assert not r.result(DEVICES[0], "succeeded", None, 0)  # never started
    r.start(DEVICES[0], 0)
    assert r.result(DEVICES[0], "timed_out", "no result", 5)
    assert not r.result(DEVICES[0], "succeeded", None, 6)
    assert r.devices[DEVICES[0]].status == "timed_out"


def test_result_documents() -> None:
    assert result_status(b'{"status":"applied"}') == ("succeeded", None)
    assert result_status(b'{"status":"rejected","reason":"fault"}') == ("rejected", "fault")
    assert result_status(b'{"status":"invalid","reason":"bad"}') == ("failed", "bad")
    assert result_status(b"nope")[0] == "failed"
