"""Approval requests as a pure state machine, driven by an explicit clock (no I/O, no sleep)."""

from __future__ import annotations

import dataclasses

import pytest

from iot_guard.approvals.chains import Chain, Level, approver_levels, chain_for
from iot_guard.approvals.request import ApprovalError, ApprovalRequest, Binding, Status
from iot_guard.policy_models import Approvals

T0 = 1_000_000.0
CHAIN = Chain(
    "fleet-change",
    (Level(1, ("alice",), 300.0), Level(2, ("bob",), 300.0), Level(3, ("carol",), 300.0)),
    alert_on_expiry=True,
)
APPROVALS = Approvals.model_validate(
    {
        "approvers": {"alice": {"levels": [1]}, "bob": {"levels": [2]},
                      "carol": {"levels": [3]}, "dan": {"levels": [1, 2]}},
        "chains": {"fleet-change": {"levels": [
            {"approvers": ["alice", "dan"], "timeout_s": 60},
            {"approvers": ["bob", "dan"], "timeout_s": 120},
        ]}},
    }
)


def binding(**changes: object) -> Binding:
    base = Binding(
        agent_id="ops-agent", session_id="s-1", token_id="tok-1", tool="group_config_push",
        topic="tenants/acme/groups/floor-1/config/push", qos=1, retain=False,
        payload=b'{"firmware_channel":"beta"}', devices=("acme/therm-001", "acme/therm-002"),
        policy_version="v1", created_at=T0, expires_at=T0 + 900.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def new(chain: Chain = CHAIN, **changes: object) -> ApprovalRequest:
    b = binding(expires_at=T0 + chain.total_s, **changes)
    return ApprovalRequest.open("apr-1", b, chain, reason="firmware_channel is high risk",
                                risk="high", rule="tools.yaml:60", changes=[], now=T0)


def test_escalates_through_three_levels_and_expires_without_approving() -> None:
    r = new()
    assert (r.status, r.level, r.next_deadline()) == (Status.PENDING, 1, T0 + 300)
    assert not r.tick(T0 + 299.999)
    assert r.tick(T0 + 300)
    assert (r.status, r.level, r.next_deadline()) == (Status.ESCALATED, 2, T0 + 600)
    assert r.view()["approvers_at_level"] == ["bob"]
    r.tick(T0 + 600)
    assert (r.status, r.level, r.next_deadline()) == (Status.ESCALATED, 3, T0 + 900)
    r.tick(T0 + 900)
    assert r.status is Status.EXPIRED and r.next_deadline() is None
    assert r.alert and "a timeout never approves" in (r.outcome or "")
    assert [h["action"] for h in r.history] == ["held", "escalated", "escalated", "expired"]
    assert [h["who"] for h in r.history] == ["guard"] * 4
    # Expired, not denied: and nobody can approve it any more.
    with pytest.raises(ApprovalError) as info:
        r.approve("carol", None, T0 + 901)
    assert info.value.status == 409


def test_a_late_tick_catches_up_every_missed_deadline_and_says_why() -> None:
    r = new()
    assert r.tick(T0 + 10_000, note="the guard was not running at the deadline")
    assert r.status is Status.EXPIRED
    assert all("the guard was not running" in h["reason"] for h in r.history[1:])
    assert len(r.history) == 4


def test_only_the_current_levels_approvers_decide() -> None:
    r = new()
    with pytest.raises(ApprovalError) as info:
        r.approve("bob", None, T0 + 1)
    assert info.value.status == 403 and "level 1" in info.value.message
    r.tick(T0 + 300)
    with pytest.raises(ApprovalError):
        r.approve("alice", None, T0 + 301)  # level 1 is over
    r.approve("bob", "looks right", T0 + 302)
    assert r.status is Status.APPROVED
    assert r.approvals == [(2, "bob")]
    assert r.history[-1] == {"at": T0 + 302, "who": "bob", "action": "approved",
                             "reason": "looks right", "level": 2}


def test_a_second_approval_is_refused_and_changes_nothing() -> None:
    r = new()
    r.approve("alice", None, T0 + 1)
    before = r.to_record()
    with pytest.raises(ApprovalError) as info:
        r.approve("alice", None, T0 + 2)
    assert info.value.status == 409
    assert r.to_record() == before


def test_an_approval_at_the_deadline_is_too_late() -> None:
    r = new()
    with pytest.raises(ApprovalError) as info:
        r.approve("alice", None, T0 + 300)
    assert info.value.status == 403  # it escalated first: alice is not a level 2 approver
    assert r.status is Status.ESCALATED


def test_the_requesting_agent_never_approves() -> None:
    chain = Chain("odd", (Level(1, ("ops-agent",), 60.0),))
    r = new(chain)
    with pytest.raises(ApprovalError) as info:
        r.approve("ops-agent", None, T0 + 1)
    assert info.value.status == 403 and r.status is Status.PENDING


def test_critical_needs_every_level_and_one_person_cannot_approve_twice() -> None:
    chain = chain_for(APPROVALS, "fleet-change", "critical")
    assert chain.every_level and [lv.approvers for lv in chain.levels] == [
        ("alice", "dan"), ("bob", "dan")]
    r = new(chain)
    r.approve("dan", None, T0 + 10)
    assert (r.status, r.level) == (Status.PENDING, 2)
    assert r.next_deadline() == T0 + 10 + 120
    with pytest.raises(ApprovalError) as info:
        r.approve("dan", None, T0 + 11)
    assert info.value.status == 403 and "already approved" in info.value.message
    r.approve("bob", None, T0 + 12)
    assert r.status is Status.APPROVED
    assert r.approvals == [(1, "dan"), (2, "bob")]


def test_deny_needs_a_reason_and_ends_the_request() -> None:
    r = new()
    with pytest.raises(ApprovalError) as info:
        r.deny("alice", " ", T0 + 1)
    assert info.value.status == 400
    r.deny("alice", "not during business hours", T0 + 2)
    assert r.status is Status.DENIED and r.outcome == "not during business hours"
    assert r.next_deadline() is None


def test_cancel_and_the_execution_path() -> None:
    r = new()
    r.cancel("secops", "agent misbehaving", T0 + 1)
    assert r.status is Status.CANCELLED
    r2 = new()
    r2.approve("alice", None, T0 + 1)
    r2.start_execution(T0 + 2)
    with pytest.raises(ApprovalError):
        r2.start_execution(T0 + 3)  # at most once
    with pytest.raises(ApprovalError):
        r2.cancel("secops", "too late", T0 + 3)
    r2.finish(Status.DONE, "5 of 5 devices succeeded", T0 + 4)
    assert r2.status is Status.DONE and r2.is_final


def test_void_only_before_execution() -> None:
    r = new()
    with pytest.raises(ApprovalError):
        r.void("policy changed", T0 + 1)  # not approved yet
    r.approve("alice", None, T0 + 1)
    r.void("the policy changed since the request was made", T0 + 2)
    assert r.status is Status.VOID and "policy changed" in (r.outcome or "")


def test_the_digest_covers_every_bound_field() -> None:
    b = binding()
    changed = {
        "agent_id": "x", "session_id": "x", "token_id": "x", "tool": "x", "topic": "x",
        "qos": 0, "retain": True, "payload": b"{}", "devices": ("acme/therm-001",),
        "policy_version": "v2", "created_at": T0 + 1, "expires_at": T0 + 1,
    }
    for name, value in changed.items():
        assert dataclasses.replace(b, **{name: value}).digest() != b.digest(), name
    assert binding().digest() == b.digest()


def test_record_round_trip_keeps_everything_and_the_digest_checks() -> None:
    r = new()
    r.tick(T0 + 300)
    r.approve("bob", "ok", T0 + 301)
    back = ApprovalRequest.from_record(r.to_record())
    assert back.to_record() == r.to_record()
    assert back.view() == r.view() and back.bound_digest_ok()
    tampered = r.to_record()
    tampered["binding"]["topic"] = "tenants/acme/groups/floor-2/config/push"
    assert not ApprovalRequest.from_record(tampered).bound_digest_ok()


def test_view_has_the_contract_fields_and_binary_payloads_are_base64() -> None:
    r = new(payload=b"\xff\x00")
    view = r.view()
    assert view["payload"] == "/wA=" and view["payload_encoding"] == "base64"
    for key in ("id", "status", "level", "level_deadline", "expires_at", "agent_id", "session_id",
                "token_id", "tool", "topic", "qos", "retain", "payload_sha256", "devices",
                "policy_version", "created_at", "digest", "reason", "risk", "rule", "changes",
                "approvers_at_level", "history", "rollout"):
        assert key in view, key
    assert "payload_encoding" not in new().view()


def test_default_chains_by_risk() -> None:
    medium = chain_for(APPROVALS, None, "medium")
    assert [(lv.number, lv.approvers, lv.timeout_s) for lv in medium.levels] == [
        (1, ("alice", "dan"), 900.0)]
    assert not medium.alert_on_expiry and not medium.every_level
    high = chain_for(APPROVALS, None, "high")
    assert [(lv.number, lv.timeout_s) for lv in high.levels] == [(1, 300.0), (2, 300.0),
                                                                   (3, 300.0)]
    assert high.alert_on_expiry and not high.every_level
    assert chain_for(APPROVALS, None, "critical").every_level
    assert approver_levels(APPROVALS, "dan") == {1, 2}
    assert approver_levels(APPROVALS, "ops-agent") == set()


def test_a_chain_without_approvers_refuses_at_once() -> None:
    chain = chain_for(Approvals(), None, "high")
    r = new(chain)
    assert r.status is Status.DENIED and "no approver" in (r.outcome or "")
