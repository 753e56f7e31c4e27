"""A guard with the real approvals addon, the webhook sender and the admin server, for the
admin lane's integration and browser tests (real Mosquitto, fleet, SQLite state)."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iot_guard.admin.app import AdminApp
from iot_guard.approvals.addon import ApprovalsAddon
from iot_guard.approvals.webhooks import WebhookNotifier
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
FLOOR_1_PUSH = "tenants/acme/groups/floor-1/config/push"
FLOOR_1 = [f"acme/therm-00{i}" for i in range(1, 6)]


@dataclass
class AdminGuard:
    guard: GuardThread
    approvals: ApprovalsAddon
    admin: AdminApp
    secret: bytes

    @property
    def url(self) -> str:
        return self.admin.url

    def token(self, who: str, role: str = "approver", ttl: float = 600) -> str:
        return issue_token(self.secret, who, ttl_s=ttl, role=role)

    def agent(self, protocol: int = 5) -> AgentClient:
        return AgentClient("127.0.0.1", self.guard.port, username="ops-agent",
                           password=issue_token(self.secret, "ops-agent", ttl_s=300),
                           protocol=protocol).connect()

    def call(self, method: str, path: str, token: str | None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_view(self, request_id: str, done: Callable[[dict[str, Any]], bool],
                  timeout: float = 30) -> dict[str, Any]:
        """Poll the API (bounded) until the request's view satisfies ``done``."""
        deadline = time.monotonic() + timeout
        token = self.token("alice")
        while True:
            status, view = self.call("GET", f"/api/approvals/{request_id}", token)
            assert status == 200, view
            if done(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} is still {view['status']}: {view}")
            time.sleep(0.1)


def held_id(reason: str | None) -> str:
    match = re.match(r"held for approval (\S+): ", reason or "")
    assert match, reason
    return match.group(1)


@contextmanager
def admin_guard(mosquitto: MosquittoBroker, tmp_path: Path, policy: Path = POLICY,
                webhooks: WebhookNotifier | None = None) -> Iterator[AdminGuard]:
    secret = secrets.token_bytes(32)
    approvals = ApprovalsAddon()
    admin = AdminApp("127.0.0.1", 0, secret)
    addons: list[object] = [approvals, webhooks or WebhookNotifier(), admin]
    config = mosquitto.guard_config(policy, secret, tmp_path / "audit.jsonl")
    with GuardThread(config, addons=addons) as guard:
        yield AdminGuard(guard, approvals, admin, secret)
