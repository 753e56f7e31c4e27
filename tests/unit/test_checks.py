"""Checks and the pipeline, pure: requests in, objections out, a fake clock."""

from __future__ import annotations

from typing import Any

from iot_guard.checks import Pipeline, Request
from iot_guard.checks.kill_switch import KillSwitchCheck
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.state import FlagView
from iot_guard.state.records import ALL_AGENTS, FlagSnapshot, Kill, Revocation, VoidBefore

NOW = 1_800_000_000.0
ALLOWED = Decision(Verdict.ALLOW, "token accepted", 0, "connect")


def connect(agent: str = "ops-agent", jti: str = "t-1", iat: float = NOW) -> Request:
    return Request("connect", agent, "s-1", jti, "127.0.0.1:5000", issued_at=iat)


def test_kill_switch_refuses_a_stopped_agent_as_banned() -> None:
    view = FlagView(FlagSnapshot(kills={"ops-agent": Kill("ops-agent", "runaway", "secops", NOW)}))
    check = KillSwitchCheck(view)
    refused = check.check(connect(), ALLOWED, NOW)
    assert refused is not None and refused.reason_code == 0x8A
    assert "runaway" in refused.reason and "secops" in refused.reason
    assert check.check(connect("observer"), ALLOWED, NOW) is None


def test_the_fleet_wide_switch_stops_everyone() -> None:
    view = FlagView(FlagSnapshot(kills={ALL_AGENTS: Kill(ALL_AGENTS, "incident", "oncall", NOW)}))
    refused = KillSwitchCheck(view).check(connect("observer"), ALLOWED, NOW)
    assert refused is not None and "every agent" in refused.reason


def test_revoked_and_voided_tokens_are_refused_as_bad_credentials() -> None:
    view = FlagView(FlagSnapshot(
        revoked={"t-1": Revocation("t-1", "ops-agent", "leaked", NOW, NOW + 900)},
        void_before={"observer": VoidBefore("observer", NOW, "rotated")},
    ))
    check = KillSwitchCheck(view)
    revoked = check.check(connect(jti="t-1"), ALLOWED, NOW)
    assert revoked is not None and revoked.reason_code == 0x86 and "leaked" in revoked.reason
    assert check.check(connect(jti="t-2"), ALLOWED, NOW) is None
    old = check.check(connect("observer", "t-3", iat=NOW - 10), ALLOWED, NOW)
    assert old is not None and old.reason_code == 0x86
    assert check.check(connect("observer", "t-4", iat=NOW + 10), ALLOWED, NOW) is None


def test_pipeline_verdicts_only_get_stricter_and_observers_are_recorded() -> None:
    class Says:
        def __init__(self, name: str, verdict: Verdict, enforce: bool = True) -> None:
            self.name, self.kinds, self.enforce, self.verdict = name, frozenset({"publish"}), \
                enforce, verdict

        def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
            return Decision(self.verdict, self.name, 0x97, "write")

    request = Request("publish", "ops-agent", "s-1", None, "a/b")
    allow = Decision(Verdict.ALLOW, "ok", 0, "write")
    judged = Pipeline([Says("hold", Verdict.HOLD), Says("deny", Verdict.DENY),
                       Says("hold-again", Verdict.HOLD),
                       Says("trial", Verdict.DENY, enforce=False)]).run(request, allow, NOW)
    assert judged.decision.reason == "deny"  # the first deny is the reason given
    assert [(o.check, o.decision.verdict) for o in judged.observed] == [("trial", Verdict.DENY)]
    assert not Pipeline([Says("x", Verdict.DENY)]).wants("receive")


class _Objects:
    """A check that objects when told to (and says nothing otherwise)."""

    name, kinds = "objects", frozenset({"publish"})

    def __init__(self, enforce: bool = True) -> None:
        self.enforce = enforce
        self.verdict: Verdict | None = None

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        if self.verdict is None:
            return None
        return Decision(self.verdict, "objection", 0x97, "write")


def test_request_is_immutable_with_the_documented_defaults() -> None:
    request = Request("publish", "ops-agent", "s-1", None, "a/b")
    assert (request.qos, request.retain, request.payload, request.issued_at) == (
        0, False, None, None)
    try:
        request.topic = "c/d"  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("a check could rewrite the request the next check sees")
    assert request == Request("publish", "ops-agent", "s-1", None, "a/b")


def test_nothing_to_say_is_one_shared_judgement_per_decision() -> None:
    check = _Objects()
    pipeline = Pipeline([check])
    request = Request("publish", "ops-agent", "s-1", None, "a/b")
    allow = Decision(Verdict.ALLOW, "ok", 0, "write")
    first = pipeline.run(request, allow, NOW)
    assert first.decision is allow and first.observed == ()
    assert pipeline.run(request, allow, NOW + 1) is first  # no allocation per packet
    # An equal decision that is another object gets its own (it is what is audited).
    twin = Decision(Verdict.ALLOW, "ok", 0, "write")
    assert pipeline.run(request, twin, NOW).decision is twin
    # An objection is never hidden by the shared answer, nor kept in it (a flood of
    # refusals, each a new decision, leaves the table as it was).
    check.verdict = Verdict.DENY
    kept = dict(pipeline._judged)
    refused = pipeline.run(request, allow, NOW)
    assert refused.decision.verdict is Verdict.DENY and refused.decision.reason == "objection"
    assert pipeline.run(request, allow, NOW) is not refused and pipeline._judged == kept
    check.enforce = False  # observe mode, switched while running: read per packet
    observed = pipeline.run(request, allow, NOW)
    assert observed.decision is allow and [o.check for o in observed.observed] == ["objects"]
    check.verdict = None
    assert pipeline.run(request, allow, NOW) is first


def test_shared_judgements_are_bounded_whatever_the_decisions(monkeypatch: Any) -> None:
    from iot_guard.checks import pipeline as module

    monkeypatch.setattr(module, "JUDGED_CACHE", 8)
    pipeline = Pipeline([_Objects()])
    request = Request("publish", "ops-agent", "s-1", None, "a/b")
    decisions = [Decision(Verdict.ALLOW, f"ok {i}", 0, "write") for i in range(50)]
    for decision in decisions:
        judged = pipeline.run(request, decision, NOW)
        assert judged.decision is decision and judged.observed == ()
        assert len(pipeline._judged) <= 8
