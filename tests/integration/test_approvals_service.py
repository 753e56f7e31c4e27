"""The approval service against real parts: the SQLite store, a real Mosquitto, the simulated
fleet, and the executor's own MQTT connection. Held actions are built from the compiled
policy's real decisions."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iot_guard.approvals.executor import ExecutorClient
from iot_guard.approvals.request import ApprovalError
from iot_guard.approvals.service import ApprovalService
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.state import open_state
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
FLOOR_1 = [f"acme/therm-00{i}" for i in range(1, 6)]
BETA = b'{"firmware_channel":"beta"}'

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@dataclass
class Held:
    """A held action as the session's hold seam hands it over."""

    hold_id: str
    agent_id: str
    session_id: str
    token_id: str | None
    tool: str | None
    topic: str
    qos: int
    retain: bool
    payload: bytes
    decision: Decision
    created_at: float
    properties: dict[int, object] = field(default_factory=dict)


def held(policy: CompiledPolicy, hold_id: str, topic: str, payload: bytes = BETA,
         agent: str = "ops-agent") -> Held:
    agent_policy = policy.for_agent(agent)
    assert agent_policy is not None
    decision = agent_policy.decide_publish(topic, payload, 1, False)
    assert decision.verdict is Verdict.HOLD, decision
    return Held(hold_id, agent, "s-1", "tok-1", decision.tool, topic, 1, False, payload,
                decision, time.time())


def policy_copy(tmp_path: Path, timeouts: tuple[float, float, float] | None = None,
                edit: Callable[[str], str] | None = None) -> Path:
    target = tmp_path / "policy"
    shutil.copytree(POLICY, target, dirs_exist_ok=True)
    if timeouts is not None:
        path = target / "approvals.yaml"
        text = path.read_text()
        for who, timeout in zip(("alice", "bob", "carol"), timeouts, strict=True):
            text = re.sub(rf"(approvers: \[{who}\], timeout_s: )\d+", rf"\g<1>{timeout}", text)
        path.write_text(text)
    if edit is not None:
        path = target / "tenants.yaml"
        path.write_text(edit(path.read_text()))
    return target


class Harness:
    def __init__(self, service: ApprovalService, audit: list[dict[str, Any]],
                 notices: list[tuple[str, str, dict[str, Any]]], views: list[dict[str, Any]]):
        self.service = service
        self.audit = audit
        self.notices = notices
        self.views = views
        self.changed = asyncio.Event()

    async def hold_approved(self, request_id: str, topic: str) -> None:
        """The ops agent's beta push to ``topic`` held as ``request_id``, approved by alice."""
        policy = self.policy_box[0]  # type: ignore[attr-defined]
        await self.service.hold(held(policy, request_id, topic))
        await self.service.approve(request_id, "alice")

    async def wait_for(self, request_id: str, *statuses: str, timeout: float = 20) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                view = await self.service.get(request_id)
                assert view is not None
                if view["status"] in statuses:
                    return view
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def harness(broker: MosquittoBroker, state_dir: Path, policy_dir: Path = POLICY,
                  policy: CompiledPolicy | None = None) -> AsyncIterator[Harness]:
    compiled = [policy or CompiledPolicy.load(policy_dir)]
    state = await open_state(state_dir)
    account = broker.guard_account
    # A client id of its own: two guards' executors with one id would take each other's
    # session over on the broker [MQTT-3.1.4-3].
    executor = ExecutorClient(broker.host, broker.port, f"iotguard-exec:{secrets.token_hex(4)}",
                              username=account.username, password=account.password)
    audit: list[dict[str, Any]] = []
    notices: list[tuple[str, str, dict[str, Any]]] = []
    views: list[dict[str, Any]] = []
    service = ApprovalService(
        state.approvals, lambda: compiled[0], executor=executor, audit=audit.append,
        notify=lambda agent, topic, payload: notices.append((agent, topic, json.loads(payload))),
    )
    h = Harness(service, audit, notices, views)
    h.policy_box = compiled  # type: ignore[attr-defined]

    def seen(view: dict[str, Any]) -> None:
        views.append(view)
        h.changed.set()

    service.subscribe(seen)
    await executor.start(wait_s=5)
    await service.start()
    try:
        yield h
    finally:
        await service.stop()
        await executor.stop()
        await state.close()


async def test_approved_group_push_rolls_out_device_by_device(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        view = await h.service.hold(
            held(policy, "apr-roll", "tenants/acme/groups/floor-1/config/push"))
        assert view["status"] == "pending" and view["devices"] == FLOOR_1
        assert view["approvers_at_level"] == ["alice"] and view["level"] == 1
        assert view["changes"] == [{"field": "firmware_channel", "current": None,
                                    "proposed": "beta", "risk": "high"}]
        approved = await h.service.approve("apr-roll", "alice", "change window open")
        assert approved["status"] == "approved"
        done = await h.wait_for("apr-roll", "done", "failed", "aborted")
        assert done["status"] == "done", done["outcome"]
        assert done["rollout"]["counts"]["succeeded"] == 5
        for name in FLOOR_1:
            device = fleet.device("acme", name.split("/")[1])
            assert device.config["firmware_channel"] == "beta"
            assert device.state.reported["firmware_channel"] == "beta"
        # Floor 2 never saw it: the guard published per device, not on a group topic.
        assert fleet.device("acme", "therm-006").config["firmware_channel"] == "stable"
        # Device by device, paced by max_per_minute (60: one a second) after the canary + bake.
        starts = sorted(d["at"] for d in done["rollout"]["devices"])
        executed = [r for r in h.audit if r.get("event") == "approval_execute"]
        assert [r["resource_id"] for r in executed] == FLOOR_1
        assert all(r["agent_id"] == "ops-agent" and r["approval_id"] == "apr-roll"
                   for r in executed)
        assert len(starts) == 5
        # Progress was visible along the way, and the agent was told at each transition.
        progress = [v["rollout"]["counts"]["succeeded"] for v in h.views if v["rollout"]]
        assert progress == sorted(progress) and progress[-1] == 5 and 1 in progress
        statuses = [n[2]["status"] for n in h.notices if n[1] == "$guard/approvals/apr-roll"]
        assert statuses[0] == "pending" and statuses[-1] == "done" and "executing" in statuses
        actions = [r["action"] for r in h.audit if r.get("event") == "approval"]
        assert actions == ["held", "approved", "executing", "done"]


async def test_rollout_aborts_when_devices_reject(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    for name in FLOOR_1:
        assert fleet.set_fault("reject_config", True, target=name) == 1
    async with harness(mosquitto, tmp_path / "state") as h:
        await h.hold_approved("apr-abort", "tenants/acme/groups/floor-1/config/push")
        view = await h.wait_for("apr-abort", "done", "failed", "aborted")
    assert view["status"] == "aborted"
    assert "canary acme/therm-001 rejected" in view["outcome"]
    counts = view["rollout"]["counts"]
    assert (counts["rejected"], counts["cancelled"], counts["succeeded"]) == (1, 4, 0)
    # Nothing more was sent after the abort: only the canary saw a config.
    for name in FLOOR_1[1:]:
        assert "config_rejected" not in fleet.device("acme", name.split("/")[1]).event_names()


async def test_rollout_aborts_at_the_failure_percentage_after_min_executed(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    # The canary succeeds; the next device rejects: 1 of 2 executed failed (50% >= 40%).
    fleet.set_fault("reject_config", True, target="acme/therm-002")
    fleet.set_fault("crash_on_apply", True, target="acme/therm-003")
    async with harness(mosquitto, tmp_path / "state") as h:
        await h.hold_approved("apr-pct", "tenants/acme/groups/floor-1/config/push")
        view = await h.wait_for("apr-pct", "done", "failed", "aborted")
    assert view["status"] == "aborted"
    assert "1 of 2 executed devices failed (50% >= 40%)" in view["outcome"]
    states = {d["device"]: d["status"] for d in view["rollout"]["devices"]}
    assert states == {"acme/therm-001": "succeeded", "acme/therm-002": "rejected",
                      "acme/therm-003": "cancelled", "acme/therm-004": "cancelled",
                      "acme/therm-005": "cancelled"}
    assert fleet.device("acme", "therm-003").boot_count == 1  # never sent: it never crashed


async def test_offline_and_crashing_devices_time_out_and_the_rollout_fails(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    # An offline device and a crash while applying both time out (no result); the others
    # succeed. The abort threshold (40% of at least 2) is reached only by the last device,
    # when nothing is left to stop: the rollout fails instead of aborting.
    fleet.set_fault("offline", True, target="acme/therm-009")
    fleet.device("acme", "therm-009").wait_online(10, online=False)
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-off", "tenants/acme/groups/floor-2/config/push"))
        fleet.set_fault("crash_on_apply", True, target="acme/therm-010")
        await h.service.approve("apr-off", "alice")
        view = await h.wait_for("apr-off", "done", "failed", "aborted", timeout=40)
    states = {d["device"]: (d["status"], d["detail"]) for d in view["rollout"]["devices"]}
    assert states["acme/therm-009"] == ("timed_out", "no result within 5 s")
    assert states["acme/therm-010"][0] == "timed_out"
    assert {states[f"acme/therm-00{i}"][0] for i in (6, 7, 8)} == {"succeeded"}
    assert view["status"] == "failed"
    assert view["outcome"] == ("rollout failed: 3 of 5 devices succeeded (0 failed, 0 rejected, "
                               "2 timed out)")
    assert fleet.device("acme", "therm-010").boot_count == 2  # it did crash while applying


async def test_cancel_list_and_bad_input(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-c1", "tenants/acme/groups/floor-2/config/push"))
        await h.service.hold(held(policy, "apr-c2", "tenants/acme/devices/therm-002/config/patch"))
        assert [v["id"] for v in await h.service.list()] == ["apr-c2", "apr-c1"]
        with pytest.raises(ApprovalError) as bad:
            await h.service.list("bogus")
        assert bad.value.status == 400
        with pytest.raises(ApprovalError) as outsider:
            await h.service.cancel("apr-c1", "mallory", "x")
        assert outsider.value.status == 403
        with pytest.raises(ApprovalError) as no_reason:
            await h.service.cancel("apr-c1", "secops", "")
        assert no_reason.value.status == 400
        view = await h.service.cancel("apr-c1", "secops", "agent under investigation")
        assert view["status"] == "cancelled" and view["outcome"] == "agent under investigation"
        assert [v["id"] for v in await h.service.list("pending")] == ["apr-c2"]
        assert await h.service.rollout("apr-c2") is None
        with pytest.raises(ApprovalError) as unknown:
            await h.service.rollout("nope")
        assert unknown.value.status == 404
        assert h.service.approver_levels("bob") == {2}
        assert h.service.approver_levels("ops-agent") == set()
        record = [r for r in h.audit if r.get("action") == "cancelled"]
        assert record and record[0]["who"] == "secops"
        assert record[0]["reason"] == "agent under investigation"


async def test_second_approval_is_refused_and_an_agent_never_approves(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-2x", "tenants/acme/groups/floor-2/config/push"))
        with pytest.raises(ApprovalError) as agent:
            await h.service.approve("apr-2x", "ops-agent")
        assert agent.value.status == 403
        with pytest.raises(ApprovalError) as wrong_level:
            await h.service.approve("apr-2x", "carol")
        assert wrong_level.value.status == 403
        first, second = await asyncio.gather(
            h.service.approve("apr-2x", "alice"), h.service.approve("apr-2x", "alice"),
            return_exceptions=True,
        )
        outcomes = sorted([type(first).__name__, type(second).__name__])
        assert outcomes == ["ApprovalError", "dict"]
        refused = first if isinstance(first, ApprovalError) else second
        assert isinstance(refused, ApprovalError) and refused.status == 409
        with pytest.raises(ApprovalError) as unknown:
            await h.service.approve("nope", "alice")
        assert unknown.value.status == 404
        await h.wait_for("apr-2x", "done", "failed", "aborted", "void")


async def test_approval_is_void_when_the_group_changed_and_nothing_is_sent(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-void", "tenants/acme/groups/floor-1/config/push"))
        # The operator moves therm-005 out of floor-1 and reloads the policy.
        changed = policy_copy(tmp_path, edit=lambda t: t.replace(
            "floor-1: [therm-001, therm-002, therm-003, therm-004, therm-005]",
            "floor-1: [therm-001, therm-002, therm-003, therm-004]"))
        h.policy_box[0] = CompiledPolicy.load(changed)  # type: ignore[attr-defined]
        await h.service.approve("apr-void", "alice")
        view = await h.wait_for("apr-void", "void")
    assert "the devices it reaches changed" in view["outcome"]
    assert "nothing was sent" in view["outcome"]
    assert not [r for r in h.audit if r.get("event") == "approval_execute"]
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"


async def test_approval_is_void_when_the_policy_changed(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    async with harness(mosquitto, tmp_path / "state") as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-pv", "tenants/acme/devices/therm-003/config/patch"))
        changed = CompiledPolicy.load(policy_copy(tmp_path, timeouts=(301, 300, 300)))
        h.policy_box[0] = changed  # type: ignore[attr-defined]
        await h.service.approve("apr-pv", "alice")
        view = await h.wait_for("apr-pv", "void")
    assert view["outcome"].startswith("the policy changed since it was held")
    assert fleet.device("acme", "therm-003").config["firmware_channel"] == "stable"


async def test_escalates_through_three_levels_to_expiry_with_real_timeouts(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    policy_dir = policy_copy(tmp_path, timeouts=(0.3, 0.3, 0.3))
    async with harness(mosquitto, tmp_path / "state", policy_dir) as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        start = time.time()
        await h.service.hold(held(policy, "apr-esc", "tenants/acme/groups/floor-2/config/push"))
        view = await h.wait_for("apr-esc", "expired", timeout=10)
        took = time.time() - start
    assert 0.85 <= took < 5, took
    actions = [(e["action"], e.get("level")) for e in view["history"]]
    assert actions == [("held", None), ("escalated", 2), ("escalated", 3), ("expired", 3)]
    assert view["alert"] is True and "a timeout never approves" in view["outcome"]
    levels_told = [n[2]["level"] for n in h.notices if n[1] == "$guard/approvals/apr-esc"]
    assert levels_told == [1, 2, 3, 3]


async def test_restart_keeps_pending_requests_resumes_timers_and_expires_the_late(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    short = policy_copy(tmp_path, timeouts=(0.5, 0.5, 0.5))
    async with harness(mosquitto, state_dir, short) as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(held(policy, "apr-late", "tenants/acme/groups/floor-2/config/push"))
    # The guard is down longer than the whole chain of the first request.
    await asyncio.sleep(1.6)  # a deliberate outage length, not synchronisation
    async with harness(mosquitto, state_dir, short) as h:
        view = await h.service.get("apr-late")
        assert view is not None and view["status"] == "expired"
        assert "the guard was not running at the deadline" in view["outcome"]
    # Pending requests survive a restart: their timers resume, and they can be decided.
    resume = policy_copy(tmp_path / "resume", timeouts=(1.5, 0.3, 0.3))
    async with harness(mosquitto, state_dir, resume) as h:
        policy = h.policy_box[0]  # type: ignore[attr-defined]
        await h.service.hold(
            held(policy, "apr-keep", "tenants/acme/devices/therm-004/config/patch"))
        await h.service.hold(held(policy, "apr-timer", "tenants/acme/groups/floor-2/config/push"))
    async with harness(mosquitto, state_dir, resume) as h:
        view = await h.service.get("apr-keep")
        assert view is not None and view["status"] == "pending"
        await h.service.approve("apr-keep", "alice")
        done = await h.wait_for("apr-keep", "done", "failed", "void")
        assert done["status"] == "done", done["outcome"]
        expired = await h.wait_for("apr-timer", "expired", timeout=10)
        assert "not running" not in expired["outcome"]  # its own timer, after the restart
        assert [e["action"] for e in expired["history"]] == [
            "held", "escalated", "escalated", "expired"]
    fleet.device("acme", "therm-004").wait_until(
        lambda d: d.config["firmware_channel"] == "beta", 5, "approved patch")


async def test_a_rollout_cut_by_a_restart_resumes_and_no_device_gets_it_twice(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    async with harness(mosquitto, state_dir) as h:
        await h.hold_approved("apr-rs", "tenants/acme/groups/floor-1/config/push")
        async with asyncio.timeout(20):
            while not any(v["rollout"] and v["rollout"]["counts"]["succeeded"] >= 2
                          for v in h.views):
                h.changed.clear()
                await h.changed.wait()
    # The guard stopped mid-rollout: still executing, some devices never sent.
    async with harness(mosquitto, state_dir) as h:
        view = await h.wait_for("apr-rs", "done", "failed", "aborted", timeout=30)
    assert view["status"] == "done", view["outcome"]
    assert view["rollout"]["counts"]["succeeded"] == 5
    for name in FLOOR_1:
        device = fleet.device("acme", name.split("/")[1])
        assert device.config["firmware_channel"] == "beta"
        applied = [e for e in device.events if e.name == "config_applied"]
        assert len(applied) == 1, (name, applied)  # at most once, even across the restart


async def test_a_second_guard_on_the_same_store_leaves_a_claimed_rollout_alone(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    async with harness(mosquitto, state_dir) as first:
        await first.hold_approved("apr-two", "tenants/acme/groups/floor-1/config/push")
        await first.wait_for("apr-two", "executing")
        # Another guard starts on the same store while the first is carrying it out.
        async with harness(mosquitto, state_dir) as second:
            view = await first.wait_for("apr-two", "done", "failed", "aborted", timeout=30)
            assert not [r for r in second.audit if r.get("event") == "approval_execute"]
    assert view["status"] == "done", view["outcome"]
    for name in FLOOR_1:
        device = fleet.device("acme", name.split("/")[1])
        assert len([e for e in device.events if e.name == "config_applied"]) == 1, name
