"""Approvals across several guards on one Redis and one Mosquitto (issue 11): a request held
on one guard is seen, timed and decided on the other; an approved request is carried out by
exactly one guard, even when both see the approval at once; a rollout survives the death of
the guard running it; a hold made while Redis is down fails closed and the agent is told.

Real redis-server, Mosquitto and simulated fleet from the harness; guards as GuardThreads
and, where one must die without cleaning up, as a process killed with SIGKILL."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iot_guard.admin.app import AdminApp
from iot_guard.admin.client import AdminClient, Refused
from iot_guard.approvals.addon import EXECUTOR_PREFIX, ApprovalsAddon
from iot_guard.approvals.request import ApprovalError, ApprovalRequest
from iot_guard.proxy.server import GuardThread
from iot_guard.state import open_state
from iot_guard.tokens import ROLE_ADMIN, ROLE_APPROVER, issue_token
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker, free_port
from simulator.fleet import Fleet
from simulator.redis_server import RedisServer

from .admin_harness import held_id

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
FLOOR_1 = "tenants/acme/groups/floor-1/config/push"
DEVICES = [f"therm-00{i}" for i in range(1, 6)]
LEASE_S = 1.5
T = TypeVar("T")

pytestmark = pytest.mark.integration


class Guard:
    """One guard of the pair: the thread, its approvals addon, its audit log."""

    def __init__(self, mosquitto: MosquittoBroker, url: str, audit: Path, secret: bytes,
                 policy: Path = POLICY, *, admin: bool = False) -> None:
        self.audit = audit
        self.addon = ApprovalsAddon(lease_s=LEASE_S)
        self.admin = AdminApp("127.0.0.1", 0, secret) if admin else None
        config = mosquitto.guard_config(policy, secret, audit)
        config.state = url
        addons: list[object] = [self.addon, *([self.admin] if self.admin else [])]
        self.thread = GuardThread(config, addons=addons).start()

    @property
    def service(self) -> Any:
        return self.addon.service

    def run(self, make: Callable[[], Any], timeout: float = 5.0) -> Any:
        return self.thread.run(make, timeout)

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def secret() -> bytes:
    return secrets.token_hex(32).encode()  # text: a guard process reads it from a file


@contextmanager
def guard_pair(mosquitto: MosquittoBroker, url: str, tmp_path: Path, secret: bytes,
               policy: Path = POLICY) -> Iterator[tuple[Guard, Guard]]:
    """Guards A and B on one store, auditing to a.jsonl and b.jsonl; both stopped after."""
    a = Guard(mosquitto, url, tmp_path / "a.jsonl", secret, policy)
    try:
        b = Guard(mosquitto, url, tmp_path / "b.jsonl", secret, policy)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def two_guards(mosquitto: MosquittoBroker, redis_server: RedisServer, tmp_path: Path,
               secret: bytes) -> Iterator[tuple[Guard, Guard]]:
    with guard_pair(mosquitto, redis_server.fresh_url(), tmp_path, secret) as pair:
        yield pair


def agent(port: int, secret: bytes, protocol: int = 5) -> AgentClient:
    return AgentClient("127.0.0.1", port, username="ops-agent",
                       password=issue_token(secret, "ops-agent", ttl_s=300),
                       protocol=protocol).connect()


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {value!r})")
        time.sleep(0.02)


class GuardProcess:
    """``iot-guard run --state redis://... --admin ...`` in a process of its own, to be
    killed with SIGKILL: no clean stop, no claim released."""

    def __init__(self, mosquitto: MosquittoBroker, secret: bytes, state: str,
                 workdir: Path) -> None:
        workdir.mkdir()
        secret_file, password_file = workdir / "secret", workdir / "upstream.password"
        secret_file.write_text(secret.decode() + "\n")
        password_file.write_text(mosquitto.guard_account.password + "\n")
        for f in (secret_file, password_file):
            f.chmod(0o600)
        self.port, admin_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.audit = workdir / "audit.jsonl"
        with (workdir / "guard.log").open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iot_guard", "run", "--policy", str(POLICY),
                 "--listen", f"127.0.0.1:{self.port}",
                 "--upstream", f"{mosquitto.host}:{mosquitto.port}",
                 "--upstream-username", mosquitto.guard_account.username,
                 "--upstream-password-file", str(password_file),
                 "--secret-file", str(secret_file), "--state", state,
                 "--audit-log", str(self.audit), "--admin", f"127.0.0.1:{admin_port}"],
                stdout=subprocess.DEVNULL, stderr=log)
        self.log = workdir / "guard.log"
        for port in (self.port, admin_port):
            eventually(lambda p=port: self._listening(p), 20, f"the guard listens on {port}")

    def _listening(self, port: int) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def status_of(guard: Guard, request_id: str) -> str | None:
    view = guard.run(lambda: guard.service.get(request_id))
    return view["status"] if view else None


def audit_records(path: Path) -> list[dict[str, Any]]:
    """Every record of one guard's audit log (JSON lines), in order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def executions(*audits: Path) -> list[tuple[str, str]]:
    """(guard's executor client id, device) of every publish a guard carried out."""
    return [(record["client_id"], record["resource_id"])
            for path in audits for record in audit_records(path)
            if record.get("event") == "approval_execute"]


def hold_on(guard: Guard, secret: bytes, seen_by: Guard | None = None) -> str:
    """The ops agent's floor-1 push through ``guard``, held: its request id (once
    ``seen_by``, the other guard, sees it pending)."""
    with agent(guard.thread.port, secret) as ops:
        request_id = held_id(ops.publish(FLOOR_1, {"firmware_channel": "beta"}).reason_string)
    if seen_by is not None:
        eventually(lambda: status_of(seen_by, request_id) == "pending", 3, "B sees the request")
    return request_id


def rollout_of(guard: Guard, request_id: str) -> dict[str, str]:
    """Each device's rollout status (device name without tenant), as the store has it."""
    store = guard.thread.server.state
    assert store is not None
    states = guard.run(lambda: store.approvals.rollout(request_id)) or []
    return {s.device.split("/")[1]: s.status for s in states}


def await_rollout_under_way(guard: Guard, request_id: str) -> None:
    """Until the canary is done and at least two devices are still to go."""
    eventually(lambda: (r := rollout_of(guard, request_id)) and r.get("therm-001") == "succeeded"
               and list(r.values()).count("queued") >= 2, 15, "rollout under way")


def patches_received(fleet: Fleet, name: str) -> int:
    """How many config patches addressed to the device itself reached it."""
    return sum(
        1 for e in fleet.device("acme", name).events
        if e.detail.get("source") == "device"
        or (e.name == "rejected" and e.detail.get("topic") == "config/patch")
    )


def test_held_on_a_approved_through_b_is_carried_out_once_and_a_tells_its_agent(
    two_guards: tuple[Guard, Guard], fleet: Fleet, secret: bytes
) -> None:
    a, b = two_guards
    with agent(a.thread.port, secret) as ops:
        ops.subscribe("$guard/approvals/+")
        request_id = held_id(ops.publish(FLOOR_1, {"firmware_channel": "beta"}).reason_string)
        # B learns of the request A parked, and follows its deadline too.
        eventually(lambda: status_of(b, request_id) == "pending", 3, "B sees the request")
        eventually(lambda: b.thread.call(lambda: request_id in b.service._timers), 3,
                   "B armed the request's timer")
        view = b.run(lambda: b.service.approve(request_id, "alice", "go"))
        assert view["status"] == "approved"
        with pytest.raises(ApprovalError) as again:  # A knows: the second approval is refused
            a.run(lambda: a.service.approve(request_id, "alice"))
        assert again.value.status == 409
        # The agent is on A; B decided it. Whichever guard wins the claim carries it out
        # (every guard that sees an approval tries); both show the stored progress and A
        # tells its agent every step.
        progress = ops.expect(f"$guard/approvals/{request_id}", timeout=20,
                              where=lambda m: m.json()["status"] == "executing"
                              and (m.json()["rollout"] or {}).get("counts", {})
                              .get("succeeded", 0) >= 1).json()
        assert progress["rollout"]["counts"]["succeeded"] < len(DEVICES)  # seen mid-way
        on_a = eventually(lambda: (r := a.run(lambda: a.service.rollout(request_id)))
                          and r["counts"]["succeeded"] >= 1 and r, 10, "A shows the progress")
        assert [d["device"] for d in on_a["devices"]] == [f"acme/{d}" for d in DEVICES]
        done = ops.expect(f"$guard/approvals/{request_id}", timeout=20,
                          where=lambda m: m.json()["status"] in ("done", "failed", "aborted"))
        assert done.json()["status"] == "done", done.json()
    runs = executions(a.audit, b.audit)
    assert sorted(device for _, device in runs) == [f"acme/{d}" for d in DEVICES]
    executors = {who for who, _ in runs}
    assert len(executors) == 1  # one guard carried it out
    assert executors <= {a.addon.executor.client_id, b.addon.executor.client_id}
    for name in DEVICES:
        assert patches_received(fleet, name) == 1, name
        assert fleet.device("acme", name).state.reported["firmware_channel"] == "beta"
    # The decision is audited once, by the guard that took it.
    approvals_in = {
        path.name: [r["action"] for r in audit_records(path)
                    if r.get("event") == "approval" and r.get("approval_id") == request_id]
        for path in (a.audit, b.audit)
    }
    assert approvals_in["a.jsonl"].count("held") == 1 and "approved" not in approvals_in["a.jsonl"]
    assert approvals_in["b.jsonl"].count("approved") == 1 and "held" not in approvals_in["b.jsonl"]


def test_both_guards_see_the_approval_at_once_and_one_carries_it_out(
    two_guards: tuple[Guard, Guard], fleet: Fleet, secret: bytes, redis_server: RedisServer
) -> None:
    a, b = two_guards
    request_id = hold_on(a, secret, seen_by=b)
    # A third party (an approver on a guard that then went away) writes the approval to the
    # store: both guards learn of it from the doorbell at the same moment and both try.
    store_url = a.thread.server.state.location  # type: ignore[union-attr]
    import asyncio

    async def approve_in_store() -> None:
        state = await open_state(store_url, poll_s=0)
        try:
            record = await state.approvals.get(request_id)
            assert record is not None
            request = ApprovalRequest.from_record(record.body)
            request.approve("alice", "from elsewhere", time.time())
            assert await state.approvals.update(request_id, "pending", status="approved",
                                                changes=request.to_record())
        finally:
            await state.close()

    asyncio.run(approve_in_store())
    eventually(lambda: status_of(a, request_id) in ("done", "failed", "aborted"), 20,
               "the rollout ends")
    assert status_of(a, request_id) == "done"
    runs = executions(a.audit, b.audit)
    assert sorted(device for _, device in runs) == [f"acme/{d}" for d in DEVICES]
    assert len({who for who, _ in runs}) == 1, runs  # one executor
    for name in DEVICES:
        assert patches_received(fleet, name) == 1, name


def test_a_request_held_on_a_escalates_on_b_after_a_is_gone(
    mosquitto: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, secret: bytes,
    fleet: Fleet,
) -> None:
    # Level timeouts of 1 s (the same policy on both guards: the policy version binds).
    policy = tmp_path / "policy"
    shutil.copytree(POLICY, policy)
    chains = policy / "approvals.yaml"
    chains.write_text(chains.read_text().replace("timeout_s: 300", "timeout_s: 1"))
    with guard_pair(mosquitto, redis_server.fresh_url(), tmp_path, secret, policy) as (a, b):
        request_id = hold_on(a, secret, seen_by=b)
        a.stop()  # A's timers are gone with it; B's run the deadlines
        view = eventually(lambda: (v := b.run(lambda: b.service.get(request_id)))
                          and v["status"] == "expired" and v, 8, "expired through B")
        actions = [h["action"] for h in view["history"]]
        assert actions.count("escalated") == 2, actions
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"


def test_a_rollout_survives_the_death_of_the_guard_running_it(
    mosquitto: MosquittoBroker, redis_server: RedisServer, tmp_path: Path, secret: bytes,
    fleet: Fleet,
) -> None:
    url = redis_server.fresh_url()
    victim = GuardProcess(mosquitto, secret, url, tmp_path / "victim")
    survivor: Guard | None = None
    try:
        with agent(victim.port, secret) as ops:
            request_id = held_id(
                ops.publish(FLOOR_1, {"firmware_channel": "beta"}).reason_string)
        # Approved through the victim's admin API: it claims the request and rolls it out.
        approver = issue_token(secret, "alice", ttl_s=300, role=ROLE_APPROVER)
        client = AdminClient(victim.admin_url, approver)

        def parked() -> bool:  # the hold is stored just after the agent's answer
            try:
                return client.show(request_id)["status"] == "pending"
            except Refused:
                return False

        eventually(parked, 5, "the victim parked the request")
        client.decide(request_id, "approve", "go")
        # The survivor joins once the victim runs it: every guard that sees an approval
        # tries to claim it, so a survivor running already could win the claim itself.
        eventually(lambda: client.show(request_id)["status"] == "executing", 15,
                   "the victim carries it out")
        survivor = Guard(mosquitto, url, tmp_path / "survivor.jsonl", secret)
        store = survivor.thread.server.state
        assert store is not None
        # Kill it once the canary is done and the rest is still to go.
        await_rollout_under_way(survivor, request_id)
        record = survivor.run(lambda: store.approvals.get(request_id))
        assert record.status == "executing" and record.owner.startswith(EXECUTOR_PREFIX)
        assert record.owner != survivor.service.instance  # the victim runs it
        victim.kill()
        at_death = rollout_of(survivor, request_id)
        killed_at = time.monotonic()
        eventually(lambda: status_of(survivor, request_id) in ("done", "failed", "aborted"),
                   30, "the survivor finishes the rollout")
        took = time.monotonic() - killed_at
        final = rollout_of(survivor, request_id)
        view = survivor.run(lambda: survivor.service.get(request_id))
        assert view["status"] == "done", view
        record = survivor.run(lambda: store.approvals.get(request_id))
        assert record.owner is None  # released at the end
    finally:
        victim.kill()
        if survivor is not None:
            survivor.stop()
    # Never twice: each device got its patch at most once, and every device still queued
    # when the victim died got it exactly once, from the survivor.
    for name in DEVICES:
        assert patches_received(fleet, name) <= 1, name
        if at_death[name] == "queued":
            assert patches_received(fleet, name) == 1, name
            assert final[name] == "succeeded", final
        if at_death[name] == "succeeded":
            assert patches_received(fleet, name) == 1, name
    runs = executions(victim.audit, tmp_path / "survivor.jsonl")
    devices = [device for _, device in runs]
    assert len(devices) == len(set(devices)), runs
    resumed = {device.split("/")[1] for who, device in runs
               if who == survivor.addon.executor.client_id}
    assert resumed == {n for n, s in at_death.items() if s == "queued"}
    assert took < 20, took  # the victim's lease (6 s, iot-guard run's default) ran out first


def test_a_hold_while_redis_is_down_fails_closed_and_the_agent_is_told(
    mosquitto: MosquittoBroker, tmp_path: Path, secret: bytes, fleet: Fleet
) -> None:
    with RedisServer() as own:
        a = Guard(mosquitto, own.url(prefix="down"), tmp_path / "a.jsonl", secret, admin=True)
        assert a.admin is not None
        approver = AdminClient(a.admin.url, issue_token(secret, "alice", role=ROLE_APPROVER))
        admin = AdminClient(a.admin.url, issue_token(secret, "secops", role=ROLE_ADMIN))
        try:
            with agent(a.thread.port, secret) as ops:
                ops.subscribe("$guard/approvals/+")
                ops.subscribe("$guard/events")
                own.stop()
                result = ops.publish(FLOOR_1, {"firmware_channel": "beta"})
                assert result.reason_code == 0x83  # held, never success
                request_id = held_id(result.reason_string)
                notice = ops.expect(f"$guard/approvals/{request_id}", timeout=10).json()
                assert notice["status"] == "failed"
                assert "unreachable" in notice["outcome"]
                assert "nothing was sent" in notice["outcome"]
                event = ops.expect("$guard/events", timeout=5,
                                   where=lambda m: m.json().get("approval_id") == request_id
                                   and "failed" in m.json()["reason"]).json()
                assert event["decision"] == "deny", event
                # Nothing can be decided or changed meanwhile: a clear 503, JSON, one line.
                with pytest.raises(ApprovalError) as down:
                    a.run(lambda: a.service.list(), timeout=10)
                assert down.value.status == 503 and "unreachable" in down.value.message
                for call in (approver.list, lambda: approver.decide(request_id, "approve", None),
                             lambda: admin.call("POST", "/api/kill",
                                                {"agent": "observer", "reason": "test"})):
                    with pytest.raises(Refused) as refused:
                        call()
                    assert refused.value.status == 503, refused.value
                    assert "unreachable" in refused.value.detail
                own.start()
                # Back: the same agent's next hold is parked again.
                again = ops.publish(FLOOR_1, {"firmware_channel": "beta"})
                second = held_id(again.reason_string)
                eventually(lambda: status_of(a, second) == "pending", 10, "parked after recovery")
        finally:
            a.stop()
    records = audit_records(tmp_path / "a.jsonl")
    failed = [r for r in records if r.get("approval_id") == request_id]
    assert [r["action"] for r in failed] == ["failed"] and failed[0]["alert"] is True
    assert not [r for r in records if r.get("event") == "approval_execute"]
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"


def test_a_rollout_paused_by_redis_going_away_resumes_when_it_is_back(
    mosquitto: MosquittoBroker, tmp_path: Path, secret: bytes, fleet: Fleet
) -> None:
    with RedisServer() as own:
        a = Guard(mosquitto, own.url(prefix="pause"), tmp_path / "a.jsonl", secret)
        try:
            request_id = hold_on(a, secret)
            eventually(lambda: status_of(a, request_id) == "pending", 5, "parked")
            a.run(lambda: a.service.approve(request_id, "alice", "go"))
            await_rollout_under_way(a, request_id)
            own.stop()
            # Nothing is sent while the state is unreachable: no device gets a patch the
            # store does not know it was sent.
            sent_before = {n: patches_received(fleet, n) for n in DEVICES}
            time.sleep(LEASE_S * 2)  # an outage longer than the lease (not a synchronisation)
            assert {n: patches_received(fleet, n) for n in DEVICES} == sent_before
            own.start()  # appendonly: the rollout's stored states survived
            eventually(lambda: status_of(a, request_id) in ("done", "failed", "aborted"),
                       30, "the rollout finishes after Redis is back")
            assert status_of(a, request_id) == "done", a.run(lambda: a.service.get(request_id))
            final = rollout_of(a, request_id)
        finally:
            a.stop()
    for name in DEVICES:
        assert patches_received(fleet, name) <= 1, name
        if sent_before[name] == 0 and final[name] == "succeeded":
            assert patches_received(fleet, name) == 1
    assert sum(patches_received(fleet, n) for n in DEVICES) >= 4  # the queued ones went
    runs = [device for _, device in executions(tmp_path / "a.jsonl")]
    assert len(runs) == len(set(runs)), runs


def test_a_kill_on_one_guard_aborts_the_rollout_the_other_is_running(
    two_guards: tuple[Guard, Guard], fleet: Fleet, secret: bytes
) -> None:
    a, b = two_guards
    request_id = hold_on(a, secret, seen_by=b)
    b.run(lambda: b.service.approve(request_id, "alice", "go"))  # B claims and runs it
    state = a.thread.server.state
    assert state is not None
    await_rollout_under_way(a, request_id)
    a.run(lambda: state.flags.kill("ops-agent", "runaway", "secops"))  # pulled on A
    view = eventually(lambda: (v := a.run(lambda: a.service.get(request_id)))
                      and v["status"] in ("aborted", "done", "failed") and v, 10,
                      "the rollout on B stops")
    assert view["status"] == "aborted" and "kill switch" in view["outcome"], view
    final = rollout_of(a, request_id)
    assert "queued" not in final.values() and "cancelled" in final.values(), final
    for name, status in final.items():
        assert patches_received(fleet, name) == (0 if status == "cancelled" else 1), name


def test_a_guard_stopped_for_an_upgrade_hands_its_rollout_over_at_once(
    two_guards: tuple[Guard, Guard], fleet: Fleet, secret: bytes
) -> None:
    a, b = two_guards
    request_id = hold_on(a, secret, seen_by=b)
    b.run(lambda: b.service.approve(request_id, "alice", "go"))
    state = a.thread.server.state
    assert state is not None
    await_rollout_under_way(a, request_id)
    b.stop()  # a clean stop (rolling upgrade): B releases its claim instead of aborting
    record = a.run(lambda: state.approvals.get(request_id))
    assert record.status == "executing"  # not aborted by the stop
    assert record.owner in (None, a.service.instance)  # released (A may have it already)
    # A takes it over within its scan interval, not after a lease.
    eventually(lambda: (r := a.run(lambda: state.approvals.get(request_id)))
               and r.owner == a.service.instance, LEASE_S, "A claims it")
    eventually(lambda: status_of(a, request_id) in ("done", "failed", "aborted"), 20,
               "A finishes the rollout")
    assert status_of(a, request_id) == "done"
    for name in DEVICES:
        assert patches_received(fleet, name) <= 1, name
    runs = [device for _, device in executions(a.audit, b.audit)]
    assert len(runs) == len(set(runs)), runs
