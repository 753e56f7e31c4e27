"""Day two with `iot-guard run`: the upstream check, SIGHUP, the console log (issue 9, 6-8).

Each test runs the guard as an operator does (a subprocess) in front of a real Mosquitto and
reads its console log line by line, with bounded waits that fail naming what was missing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iot_guard.tokens import issue_token
from simulator.agent import AgentClient, ConnectRefused
from simulator.broker import MosquittoBroker, find_tool, free_port

ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "device_policies"
SECRET = "s" * 48


class Guard:
    """``iot-guard run`` in a subprocess; its stderr lines arrive in a queue."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._used: set[int] = set()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 15.0) -> str:
        """The first line containing ``needle`` not returned before, among the lines already
        read or the ones still to come (start-up lines come in no fixed order)."""
        for i, line in enumerate(self.seen):
            if i not in self._used and needle in line:
                self._used.add(i)
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line with {needle!r}; saw {self.seen}") from None
            self.seen.append(line)
            if needle in line:
                self._used.add(len(self.seen) - 1)
                return line

    def agent(self, agent_id: str = "ops-agent") -> AgentClient:
        token = issue_token(SECRET.encode(), agent_id, ttl_s=300)
        return AgentClient("127.0.0.1", self.port, username=agent_id, password=token)


@contextmanager
def running_guard(
    tmp_path: Path, broker: MosquittoBroker, password: str, *extra: str, policy: Path = POLICY_DIR
) -> Iterator[Guard]:
    secret = tmp_path / "guard.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    port = free_port()
    env = {**os.environ, "IOT_GUARD_UPSTREAM_PASSWORD": password, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iot_guard", "run", "--policy", str(policy), "--listen",
         f"127.0.0.1:{port}", "--upstream", f"{broker.host}:{broker.port}",
         "--upstream-username", broker.guard_account.username, "--secret-file", str(secret),
         "--audit-log", str(tmp_path / "audit.jsonl"), *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    guard = Guard(proc, port)
    try:
        guard.wait_line("iot-guard listening on")
        yield guard
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    from iot_guard.policy.loader import load_policy
    from simulator.registry import registry_devices

    with MosquittoBroker(registry_devices(load_policy(POLICY_DIR))) as started:
        yield started


def test_a_wrong_upstream_password_is_said_at_start_and_its_recovery_too(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Before: "listening" and nothing else; agents got 0x88 with the reason only in the
    audit file."""
    with running_guard(
        tmp_path, broker, "wrong-password", "--upstream-check-interval", "0.3"
    ) as guard:
        line = guard.wait_line(f"upstream {broker.host}:{broker.port}")
        assert "ERROR" in line
        assert "the broker refused the guard's account 'iot-guard': not authorized (0x87)" in line
        assert "check upstream_username / upstream_password_file" in line
        assert "agents are refused with 0x88" in line
        # The broker operator fixes the account (the guard's password is now the right one)
        # and reloads Mosquitto: the guard notices on its next check.
        tool = find_tool("mosquitto_passwd")
        assert tool, "mosquitto_passwd comes with Mosquitto"
        subprocess.run([tool, "-b", str(broker.workdir / "passwd"), "iot-guard",
                        "wrong-password"], check=True, capture_output=True)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGHUP)  # Mosquitto reloads its password file
        recovered = guard.wait_line("recovered")
        assert "INFO" in recovered and "the broker accepts the guard's account" in recovered
        with guard.agent().connect():
            pass
    errors = [line for line in guard.seen if "ERROR upstream" in line]
    assert len(errors) == 1, errors  # once per outage, not once per check


def test_no_upstream_credentials_is_a_warning(tmp_path: Path) -> None:
    with MosquittoBroker(auth=False) as open_broker:
        secret = tmp_path / "guard.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        result = subprocess.run(
            [sys.executable, "-m", "iot_guard", "run", "--check-config", "--policy",
             str(POLICY_DIR), "--upstream", f"{open_broker.host}:{open_broker.port}",
             "--secret-file", str(secret)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "WARNING no upstream credentials" in result.stderr


def test_the_console_log_tells_each_agents_story_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with running_guard(tmp_path, broker, broker.guard_account.password) as guard:
        guard.wait_line("the broker accepts the guard's account 'iot-guard' (MQTT 5)")
        with guard.agent() as agent:
            agent.connect()
            connected = guard.wait_line("agent ops-agent connected")
            assert "INFO" in connected and "from 127.0.0.1:" in connected
            assert agent.subscribe("tenants/globex/devices/therm-101/telemetry") == [0x87]
        disconnected = guard.wait_line("agent ops-agent disconnected")
        assert "1 request(s) refused in the session" in disconnected
        token = issue_token(SECRET.encode(), "ops-agent", ttl_s=300)
        with pytest.raises(ConnectRefused):
            AgentClient("127.0.0.1", guard.port, username="observer", password=token).connect()
        refused = guard.wait_line("refused CONNECT")
        assert "(0x86)" in refused or "(0x87)" in refused
    listening = [line for line in guard.seen if "listening" in line]
    assert len(listening) == 1, guard.seen


def test_sighup_reloads_the_policy_keeps_a_broken_one_out_and_reopens_the_audit_log(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy)
    agents = policy / "agents.yaml"
    with running_guard(tmp_path, broker, broker.guard_account.password, policy=policy) as guard:
        with guard.agent("observer").connect():
            pass
        # 1. The observer is taken out of the policy: after SIGHUP it cannot connect.
        original = agents.read_text()
        assert "  observer:\n" in original
        agents.write_text(original.replace("  observer:\n", "  retired-observer:\n", 1))
        guard.proc.send_signal(signal.SIGHUP)
        guard.wait_line(f"policy {policy} reloaded")
        with pytest.raises(ConnectRefused) as refused:
            guard.agent("observer").connect()
        assert refused.value.reason_code == 0x87
        # 2. A policy that does not load: the guard says why and keeps the last good one.
        agents.write_text("agents: [this is not: a mapping\n")
        guard.proc.send_signal(signal.SIGHUP)
        line = guard.wait_line("not reloaded")
        assert "the previous one stays in force" in line and "agents.yaml:" in line
        assert guard.proc.poll() is None
        with guard.agent("ops-agent").connect():
            pass
        # 3. logrotate moved the audit log away: SIGHUP starts a new file at the path.
        audit = tmp_path / "audit.jsonl"
        audit.rename(tmp_path / "audit.jsonl.1")
        guard.proc.send_signal(signal.SIGHUP)
        guard.wait_line("audit log reopened")
        with guard.agent("ops-agent").connect():
            pass
        guard.wait_line("agent ops-agent disconnected")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r.get("packet") == "connect" and r.get("agent_id") == "ops-agent"
               for r in records)
