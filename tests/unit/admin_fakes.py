"""A small in-memory implementation of the ApprovalService contract (CONTRACTS.md), for the
admin API's unit tests only: the integration and browser tests use the real service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iot_guard.approvals.service import ApprovalError

OPEN = ("pending", "escalated")


def make_view(request_id: str, created_at: float, **overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": request_id, "status": "pending", "level": 1,
        "level_deadline": created_at + 300, "expires_at": created_at + 900,
        "agent_id": "ops-agent", "session_id": "s-1", "token_id": "t-1",
        "tool": "group_config_push", "topic": "tenants/acme/groups/floor-1/config/push",
        "qos": 1, "retain": False, "payload": '{"firmware_channel":"beta"}',
        "payload_sha256": "ab" * 32, "devices": ["acme/t-101", "acme/t-102"],
        "policy_version": "p1", "created_at": created_at, "digest": "cd" * 32,
        "reason": "firmware_channel is high risk", "risk": "high", "rule": "tools.x",
        "changes": [{"field": "firmware_channel", "current": "stable", "proposed": "beta",
                     "risk": "high"}],
        "approvers_at_level": ["alice"], "history": [], "rollout": None,
    }
    view.update(overrides)
    return view


class FakeApprovals:
    def __init__(self, levels: dict[str, set[int]]) -> None:
        self.levels = levels
        self.requests: dict[str, dict[str, Any]] = {}
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.calls: list[tuple[str, str, str, str | None]] = []

    def add(self, view: dict[str, Any]) -> None:
        self.requests[view["id"]] = view
        self._emit(view)

    def _emit(self, view: dict[str, Any]) -> None:
        for callback in list(self.subscribers):
            callback(dict(view))

    async def list(self, status: str | None = None) -> list[dict[str, Any]]:
        views = sorted(self.requests.values(), key=lambda v: -v["created_at"])
        return [dict(v) for v in views if status is None or v["status"] == status]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        view = self.requests.get(request_id)
        return dict(view) if view is not None else None

    def _decide(self, request_id: str, approver: str, status: str, reason: str | None) -> dict:
        self.calls.append((status, request_id, approver, reason))
        view = self.requests.get(request_id)
        if view is None:
            raise ApprovalError(404, f"no approval request {request_id!r}")
        if view["status"] not in OPEN:
            raise ApprovalError(409, f"request {request_id} is {view['status']}")
        if view["level"] not in self.approver_levels(approver):
            raise ApprovalError(403, f"{approver} may not decide at level {view['level']}")
        view["status"] = status
        view["history"] = [*view["history"], {"at": view["created_at"] + 1, "who": approver,
                                              "action": status, "reason": reason}]
        self._emit(view)
        return dict(view)

    async def approve(self, request_id: str, approver: str, reason: str | None = None) -> dict:
        return self._decide(request_id, approver, "approved", reason)

    async def deny(self, request_id: str, approver: str, reason: str) -> dict:
        return self._decide(request_id, approver, "denied", reason)

    async def rollout(self, request_id: str) -> dict[str, Any] | None:
        view = self.requests.get(request_id)
        return view["rollout"] if view is not None else None

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def approver_levels(self, approver: str) -> set[int]:
        return set(self.levels.get(approver, set()))
