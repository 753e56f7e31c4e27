"""Approvals through a running guard: the agent's side of a held action, end to end.

A real Mosquitto, the simulated fleet, a guard with the approvals addon (SQLite state in a
temp dir), and stock MQTT clients as agents.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_guard.approvals.addon import ApprovalsAddon
from iot_guard.approvals.request import ApprovalError
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

from .admin_harness import held_id

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
FLOOR_1 = "tenants/acme/groups/floor-1/config/push"

pytestmark = pytest.mark.integration


@pytest.fixture
def approvals_guard(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> Iterator[tuple[GuardThread, ApprovalsAddon, bytes]]:
    secret = secrets.token_bytes(32)
    addon = ApprovalsAddon()  # uses the guard's own state store
    config = mosquitto.guard_config(POLICY, secret, tmp_path / "audit.jsonl")
    with GuardThread(config, addons=[addon]) as guard:
        yield guard, addon, secret


def agent(guard: GuardThread, secret: bytes, protocol: int = 5) -> AgentClient:
    token = issue_token(secret, "ops-agent", ttl_s=300)
    return AgentClient("127.0.0.1", guard.port, username="ops-agent", password=token,
                       protocol=protocol).connect()


def hold_firmware_push(
    guard: GuardThread, addon: ApprovalsAddon, secret: bytes
) -> tuple[str, list[dict[str, Any]]]:
    """A firmware channel push to floor-1, held: its request id and the pending requests."""
    with agent(guard, secret) as ops:
        request_id = held_id(ops.publish(FLOOR_1, {"firmware_channel": "beta"}).reason_string)
    views = guard.run(lambda: addon.service.list("pending"))
    assert [v["id"] for v in views] == [request_id]
    return request_id, views


def wait_for_status(
    guard: GuardThread, addon: ApprovalsAddon, request_id: str, status: str
) -> dict[str, Any]:
    """The request's view once it has ``status`` (10 s, else fail with the status it has)."""
    deadline = time.monotonic() + 10
    while (view := guard.run(lambda: addon.service.get(request_id)))["status"] != status:
        assert time.monotonic() < deadline, view["status"]
        time.sleep(0.02)  # polling the guard's store from the test thread
    return view


def test_held_group_push_is_parked_approved_and_rolled_out_by_the_guard(
    approvals_guard: tuple[GuardThread, ApprovalsAddon, bytes], fleet: Fleet
) -> None:
    guard, addon, secret = approvals_guard
    with agent(guard, secret) as ops:
        assert ops.subscribe("$guard/approvals/+") == [0]
        result = ops.publish(FLOOR_1, {"firmware_channel": "beta"})
        assert result.reason_code == 0x83  # held is never success
        request_id = held_id(result.reason_string)
        notice = ops.expect(f"$guard/approvals/{request_id}").json()
        assert notice["status"] == "pending" and notice["level"] == 1
        assert notice["devices"] == [f"acme/therm-00{i}" for i in range(1, 6)]
        view: dict[str, Any] = guard.run(
            lambda: addon.service.approve(request_id, "alice", "ok"))
        assert view["status"] == "approved"
        done = ops.expect(f"$guard/approvals/{request_id}", timeout=20,
                          where=lambda m: m.json()["status"] in ("done", "failed", "aborted"))
        assert done.json()["status"] == "done", done.json()
        assert done.json()["rollout"]["counts"]["succeeded"] == 5
        for i in range(1, 6):
            device = fleet.device("acme", f"therm-00{i}")
            assert device.state.reported["firmware_channel"] == "beta"
        # The agent never re-sends: a second identical publish is a new request, not a ride.
        again = ops.publish(FLOOR_1, {"firmware_channel": "beta"})
        assert again.reason_code == 0x83 and held_id(again.reason_string) != request_id


def test_low_risk_group_push_goes_straight_through(
    approvals_guard: tuple[GuardThread, ApprovalsAddon, bytes], fleet: Fleet
) -> None:
    guard, addon, secret = approvals_guard
    with agent(guard, secret) as ops:
        assert ops.publish(FLOOR_1, {"mode": "cool"}).reason_code == 0
        for i in range(1, 6):
            fleet.device("acme", f"therm-00{i}").wait_until(
                lambda d: d.config["mode"] == "cool", 5, "group push")
    assert guard.run(lambda: addon.service.list()) == []


def test_a_reconnecting_agent_gets_its_open_requests_on_subscribe(
    approvals_guard: tuple[GuardThread, ApprovalsAddon, bytes], fleet: Fleet
) -> None:
    guard, addon, secret = approvals_guard
    with agent(guard, secret, protocol=4) as first:
        result = first.publish(FLOOR_1, {"firmware_channel": "beta"})
        assert result.reason_code == 0  # MQTT 3.1.1 gets its plain ack ...
    views = guard.run(lambda: addon.service.list("pending"))
    assert len(views) == 1  # ... and the action is parked all the same
    request_id = views[0]["id"]
    with agent(guard, secret) as second:
        second.subscribe("$guard/approvals/#")
        notice = second.expect(f"$guard/approvals/{request_id}").json()
        assert notice["status"] == "pending" and notice["id"] == request_id
        guard.run(lambda: addon.service.deny(request_id, "alice", "not today"))
        denied = second.expect(f"$guard/approvals/{request_id}",
                               where=lambda m: m.json()["status"] == "denied").json()
        assert denied["outcome"] == "not today"
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"


def test_a_killed_agents_request_is_cancelled_and_can_no_longer_be_approved(
    approvals_guard: tuple[GuardThread, ApprovalsAddon, bytes], fleet: Fleet
) -> None:
    guard, addon, secret = approvals_guard
    request_id, _ = hold_firmware_push(guard, addon, secret)
    state = guard.server.state
    assert state is not None
    guard.run(lambda: state.flags.kill("ops-agent", "runaway agent", "secops"))
    view = wait_for_status(guard, addon, request_id, "cancelled")
    assert "kill switch: runaway agent" in json.dumps(view["history"])
    with pytest.raises(ApprovalError) as refused:
        guard.run(lambda: addon.service.approve(request_id, "alice"))
    assert refused.value.status == 409
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"


def test_an_approval_whose_token_was_revoked_is_void_and_nothing_is_sent(
    approvals_guard: tuple[GuardThread, ApprovalsAddon, bytes], fleet: Fleet
) -> None:
    guard, addon, secret = approvals_guard
    request_id, views = hold_firmware_push(guard, addon, secret)
    token_id = views[0]["token_id"]
    state = guard.server.state
    assert state is not None and token_id
    guard.run(lambda: state.flags.revoke(token_id, expires_at=time.time() + 600,
                                         reason="leaked in a log", agent="ops-agent"))
    guard.run(lambda: addon.service.approve(request_id, "alice"))
    view = wait_for_status(guard, addon, request_id, "void")
    assert view["outcome"].startswith(f"the token that asked for it is void (token {token_id} "
                                      "revoked: leaked in a log)")
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"
