"""Approver and admin tokens from the command line, and the MQTT door refusing them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iot_guard.tokens import ROLES, issue_token, verify_token
from simulator.agent import AgentClient, ConnectRefused

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def iot_guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iot_guard", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "guard.secret"
    path.write_text("s" * 48 + "\n")
    return path


@pytest.mark.parametrize(("flag", "who", "role"), [("--approver", "alice", "approver"),
                                                   ("--admin", "secops", "admin")])
def test_token_issue_for_approvers_and_admins(secret_file: Path, flag: str, who: str,
                                              role: str) -> None:
    result = iot_guard("token", "issue", flag, who, "--secret-file", str(secret_file),
                       "--policy", str(POLICY_DIR), "--ttl", "60")
    assert result.returncode == 0, result.stderr
    claims = verify_token(secret_file.read_text().strip().encode(), result.stdout.strip(),
                          __import__("time").time(), roles=ROLES)
    assert (claims.agent_id, claims.role) == (who, role)


@pytest.mark.parametrize(("args", "words"), [
    (["--approver", "mallory", "--policy", str(POLICY_DIR)], "'mallory' is not listed"),
    (["--admin", "alice", "--policy", str(POLICY_DIR)], "approvals.admins"),
    (["--approver", "alice", "--tools", "x"], "--tools narrows an agent's token"),
])
def test_token_issue_refusals_are_one_line(secret_file: Path, args: list[str],
                                           words: str) -> None:
    result = iot_guard("token", "issue", *args, "--secret-file", str(secret_file))
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_token_issue_takes_exactly_one_subject(secret_file: Path) -> None:
    result = iot_guard("token", "issue", "--agent", "ops-agent", "--approver", "alice",
                       "--secret-file", str(secret_file))
    assert result.returncode == 2 and "not allowed with" in result.stderr


@pytest.mark.integration
def test_an_approver_token_never_opens_an_mqtt_session(guard: Any, guard_secret: bytes) -> None:
    # Even under a name the policy knows as an agent: the role is signed, the door checks it.
    for role in ("approver", "admin"):
        token = issue_token(guard_secret, "ops-agent", 60, role=role)
        client = AgentClient("127.0.0.1", guard.port, username="ops-agent", password=token,
                             protocol=5)
        try:
            with pytest.raises(ConnectRefused) as refused:
                client.connect()
            assert refused.value.reason_code == 0x86  # bad user name or password
        finally:
            client.close()
        audit = Path(guard.server.config.audit_path).read_text()
        assert f"token refused: this is an {role} token; expected agent" in audit
