"""``iot-guard kill`` and ``iot-guard token revoke`` against a running guard: through the
admin API with an admin token, and through the state directory when the API is not used.
Real Mosquitto, stock paho agents, the approvals addon and the admin server."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_guard.admin.app import AdminApp
from iot_guard.approvals.addon import ApprovalsAddon
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import ROLE_ADMIN, ROLE_APPROVER, issue_token
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker, free_port

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
FLOOR_1 = "tenants/acme/groups/floor-1/config/push"

pytestmark = pytest.mark.integration


@pytest.fixture
def guarded(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[dict]:
    secret = secrets.token_bytes(32)
    approvals = ApprovalsAddon()
    admin = AdminApp("127.0.0.1", free_port(), secret)
    config = mosquitto.guard_config(POLICY, secret, tmp_path / "audit.jsonl")
    config.state = tmp_path / "state"
    with GuardThread(config, addons=[approvals, admin]) as guard:
        yield {"guard": guard, "secret": secret, "approvals": approvals, "admin": admin,
               "state": tmp_path / "state", "audit": tmp_path / "audit.jsonl",
               "tmp": tmp_path}


def token_file(where: Path, secret: bytes, role: str, who: str) -> Path:
    path = where / f"{who}.token"
    path.write_text(issue_token(secret, who, role=role))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iot_guard", *args], capture_output=True,
                          text=True, timeout=30)


def agent(g: dict, who: str = "ops-agent") -> AgentClient:
    return AgentClient("127.0.0.1", g["guard"].port, username=who,
                       password=issue_token(g["secret"], who), protocol=5).connect()


def closed_within(client: AgentClient, seconds: float) -> int:
    client._wait(lambda: client.disconnected is not None, seconds, "disconnect")
    assert client.disconnected is not None
    return client.disconnected[0]


def test_kill_through_the_api_disconnects_cancels_approvals_and_is_audited(guarded) -> None:
    g = guarded
    ops = agent(g)
    held = ops.publish(FLOOR_1, {"firmware_channel": "beta"})
    assert held.reason_code == 0x83
    request_id = re.match(r"held for approval (\S+): ", held.reason_string or "").group(1)
    admin_token = token_file(g["tmp"], g["secret"], ROLE_ADMIN, "secops")
    done = cli("kill", "--agent", "ops-agent", "--reason", "runaway agent",
               "--admin", g["admin"].url, "--token-file", str(admin_token))
    assert done.returncode == 0, done.stderr
    assert "kill switch for ops-agent in force" in done.stdout
    assert closed_within(ops, 1.0) == 0x98
    service = g["approvals"].service

    def cancelled() -> bool:
        view = g["guard"].run(lambda: service.get(request_id))
        return view["status"] == "cancelled"

    ops._wait(cancelled, 5, "the held request cancelled by the kill switch")
    records = [json.loads(line) for line in g["audit"].read_text().splitlines()]
    assert any(r.get("result_status") == "kill" and r.get("by") == "secops" for r in records)
    # Idempotent, and lifted the same way.
    again = cli("kill", "--agent", "ops-agent", "--reason", "again",
                "--admin", g["admin"].url, "--token-file", str(admin_token))
    assert again.returncode == 0
    lifted = cli("kill", "--agent", "ops-agent", "--lift",
                 "--admin", g["admin"].url, "--token-file", str(admin_token))
    assert lifted.returncode == 0 and "lifted" in lifted.stdout


def test_only_an_admin_may_pull_the_switch(guarded) -> None:
    g = guarded
    approver = token_file(g["tmp"], g["secret"], ROLE_APPROVER, "alice")
    refused = cli("kill", "--all", "--reason", "x", "--admin", g["admin"].url,
                  "--token-file", str(approver))
    assert refused.returncode == 1
    assert "403" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    missing = cli("kill", "--agent", "ops-agent", "--admin", g["admin"].url,
                  "--token-file", str(approver))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


def test_the_local_path_works_without_the_api(guarded) -> None:
    g = guarded
    ops = agent(g)
    bystander = agent(g, "observer")
    done = cli("token", "revoke", "--agent", "ops-agent", "--reason", "leaked laptop",
               "--state-dir", str(g["state"]))
    assert done.returncode == 0, done.stderr
    # The guard polls its state every 0.25 s; the margin is for a loaded machine.
    assert closed_within(ops, 3.0) == 0x87
    assert bystander.disconnected is None
    everyone = cli("kill", "--all", "--reason", "incident", "--state-dir", str(g["state"]),
                   "--by", "oncall")
    assert everyone.returncode == 0, everyone.stderr
    assert closed_within(bystander, 3.0) == 0x98
