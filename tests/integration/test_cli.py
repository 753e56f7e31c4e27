"""The iot-guard command, run as a user runs it (subprocesses, a real broker)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iot_guard.tokens import verify_token
from simulator.broker import MosquittoBroker, free_port
from tests.rawmqtt import RawMqtt

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def iot_guard(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iot_guard", *args], capture_output=True, text=True, timeout=60, **kw
    )  # type: ignore[call-overload]


def test_policy_check_accepts_the_example_fleet() -> None:
    result = iot_guard("policy", "check", str(POLICY_DIR))
    assert result.returncode == 0, result.stderr
    assert "2 tenants, 13 devices" in result.stdout


def test_policy_check_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        "agents:\n  bot:\n    tenants: [acme]\n    tools: [no_such_tool]\n"
    )
    (tmp_path / "tenants.yaml").write_text("tenants:\n  acme: {}\n")
    result = iot_guard("policy", "check", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'agents.yaml'}:4:" in result.stderr
    assert "no_such_tool" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"target_temp_c":21}}}',
            ],
            0,
            "allow",
        ),
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"target_temp_c":"21"}}}',
            ],
            1,
            "target_temp_c",
        ),
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"firmware_channel":"beta"}}}',
            ],
            1,
            "approval",
        ),
        (["--subscribe", "tenants/acme/#"], 1, "deny"),
        (["--receive", "tenants/globex/devices/therm-101/telemetry"], 1, "deny"),
    ],
)
def test_policy_explain(args: list[str], code: int, words: str) -> None:
    result = iot_guard("policy", "explain", str(POLICY_DIR), "--agent", "ops-agent", *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert words in result.stdout


def test_policy_explain_json_matches_the_proxy_decision() -> None:
    result = iot_guard(
        "policy",
        "explain",
        str(POLICY_DIR),
        "--agent",
        "observer",
        "--json",
        "--publish",
        "tenants/acme/devices/therm-001/shadow/get",
    )
    decision = json.loads(result.stdout)
    assert decision["decision"] == "deny" and decision["reason_code"] == 0x87


def test_token_issue_prints_a_verifiable_token(tmp_path: Path) -> None:
    secret_file = tmp_path / "guard.secret"
    secret = iot_guard("token", "secret")
    secret_file.write_text(secret.stdout)
    result = iot_guard(
        "token",
        "issue",
        "--agent",
        "observer",
        "--secret-file",
        str(secret_file),
        "--ttl",
        "60",
        "--tools",
        "read_telemetry",
        "--policy",
        str(POLICY_DIR),
    )
    assert result.returncode == 0, result.stderr
    claims = verify_token(
        secret_file.read_text().strip().encode(), result.stdout.strip(), time.time()
    )
    assert claims.agent_id == "observer" and claims.tools == frozenset({"read_telemetry"})
    refused = iot_guard(
        "token",
        "issue",
        "--agent",
        "observer",
        "--secret-file",
        str(secret_file),
        "--tools",
        "shadow_update",
        "--policy",
        str(POLICY_DIR),
    )
    assert refused.returncode == 2 and "shadow_update" in refused.stderr


def test_run_serves_agents_from_a_config_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("a" * 48)
    port = free_port()
    with MosquittoBroker(auth=False) as broker:
        (tmp_path / "guard.yaml").write_text(
            f"policy: {POLICY_DIR}\nlisten: 127.0.0.1:{port}\n"
            f"upstream: {broker.host}:{broker.port}\nsecret_file: {secret_file}\n"
            f"audit_log: {tmp_path / 'audit.jsonl'}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_guard", "run", "--config", str(tmp_path / "guard.yaml")],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "guard did not listen"
                    time.sleep(0.05)
            token = iot_guard(
                "token", "issue", "--agent", "ops-agent", "--secret-file", str(secret_file)
            ).stdout.strip()
            client = RawMqtt(port)
            assert client.connect("ops-agent", token).reason_code == 0
            client.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("packet") == "connect" and r["result_status"] == "success" for r in records)


def test_run_refuses_to_start_with_a_broken_policy(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "agents.yaml").write_text("agents: [not, a, mapping]\n")
    (tmp_path / "s").write_text("b" * 48)
    result = iot_guard(
        "run",
        "--policy",
        str(tmp_path / "policy"),
        "--upstream",
        "127.0.0.1:1",
        "--secret-file",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    assert "agents.yaml:1" in result.stderr
