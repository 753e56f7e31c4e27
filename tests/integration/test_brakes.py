"""Kill switch, token revocation and dry-run mode against a real Mosquitto and stock paho
clients (v3.1.1 and v5)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_guard.proxy.server import GuardThread
from iot_guard.state import ALL_AGENTS, open_state
from iot_guard.tokens import issue_token, verify_token
from simulator.agent import AgentClient, ConnectRefused
from simulator.broker import MosquittoBroker

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
SECRET = b"brakes-test-secret-brakes-test-secret-0"
DEVICE = "tenants/acme/devices/therm-001"


def start(mosquitto: MosquittoBroker, tmp_path: Path, addons: tuple[object, ...] = (),
          **config: object) -> GuardThread:
    cfg = mosquitto.guard_config(POLICY_DIR, SECRET, tmp_path / "audit.jsonl")
    cfg.state = tmp_path / "state"
    for key, value in config.items():
        setattr(cfg, key, value)
    return GuardThread(cfg, addons=addons).start()


@pytest.fixture
def guard(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[GuardThread]:
    thread = start(mosquitto, tmp_path)
    yield thread
    thread.stop()


def client(guard: GuardThread, agent: str = "ops-agent", protocol: int = 5,
           token: str | None = None) -> AgentClient:
    return AgentClient("127.0.0.1", guard.port, username=agent,
                       password=token or issue_token(SECRET, agent), protocol=protocol)


def closed_within(agent: AgentClient, seconds: float) -> tuple[int, str]:
    agent._wait(lambda: agent.disconnected is not None, seconds, "disconnect")
    assert agent.disconnected is not None
    return agent.disconnected


def test_kill_ends_live_sessions_within_a_second_and_refuses_new_ones(guard, tmp_path) -> None:
    v5, v3 = client(guard).connect(), client(guard, protocol=4).connect()
    other = client(guard, "observer").connect()
    old_token = issue_token(SECRET, "ops-agent")
    started = time.monotonic()
    guard.run(lambda: guard.server.state.flags.kill("ops-agent", "runaway agent", "secops"))
    assert closed_within(v5, 1.0)[0] == 0x98  # MQTT 5 DISCONNECT administrative action
    closed_within(v3, 1.0)
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectRefused) as refused:
        client(guard).connect()
    assert refused.value.reason_code == 0x8A  # banned
    assert other.disconnected is None and other.subscribe(f"{DEVICE}/status") == [1]
    # Lifted: tokens issued before the kill stay void; a new token works.
    guard.run(lambda: guard.server.state.flags.lift("ops-agent", "secops"))
    with pytest.raises(ConnectRefused) as void:
        client(guard, token=old_token).connect()
    assert void.value.reason_code == 0x86
    # iat has 1 s resolution and a token of the kill's second is void too (fail closed):
    # a token minted a second on stands for one issued after the kill.
    later = issue_token(SECRET, "ops-agent", now=time.time() + 1.5)
    client(guard, token=later).connect().close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("reason_code") == 0x98 and "runaway agent" in r.get("reason", "")
               for r in records)


def test_the_local_kill_path_works_without_the_guards_api(guard, tmp_path) -> None:
    """Another process (the CLI with --state-dir) writes the flag; the guard sees it."""
    agent = client(guard).connect()
    killed = threading.Event()

    async def kill_from_outside() -> None:
        state = await open_state(tmp_path / "state")
        try:
            await state.flags.kill(ALL_AGENTS, "stop everything", "oncall")
        finally:
            await state.close()
        killed.set()

    threading.Thread(target=asyncio.run, args=(kill_from_outside(),)).start()
    assert killed.wait(5)
    assert closed_within(agent, 1.5)[0] == 0x98


def test_a_revoked_token_ends_its_sessions_and_is_refused(guard) -> None:
    token = issue_token(SECRET, "ops-agent")
    claims = verify_token(SECRET, token.encode(), time.time())
    revoked = client(guard, token=token).connect()
    fresh = client(guard).connect()
    guard.run(lambda: guard.server.state.flags.revoke(
        claims.token_id, expires_at=claims.expires_at, reason="leaked", agent="ops-agent"))
    assert closed_within(revoked, 1.0)[0] == 0x87
    assert fresh.disconnected is None  # another token of the same agent is fine
    with pytest.raises(ConnectRefused) as refused:
        client(guard, token=token).connect()
    assert refused.value.reason_code == 0x86


def test_dry_run_forwards_what_enforce_refuses_and_says_so(mosquitto, tmp_path) -> None:
    guard = start(mosquitto, tmp_path, mode="dry-run")
    try:
        spy = AgentClient("127.0.0.1", mosquitto.port, username=mosquitto.guard_account.username,
                          password=mosquitto.guard_account.password, protocol=5).connect()
        spy.subscribe("tenants/globex/devices/therm-101/config/patch", qos=1)
        agent = client(guard).connect()
        result = agent.publish("tenants/globex/devices/therm-101/config/patch",
                               {"mode": "heat"})
        assert result.reason_code < 0x80  # forwarded, not refused
        spy.expect("tenants/globex/devices/therm-101/config/patch", timeout=5)
        records = [r for r in map(json.loads, (tmp_path / "audit.jsonl").read_text().splitlines())
                   if "audit" not in r]  # decisions, not the chain's own lines
        assert records[0]["result_status"] == "start" and records[0]["mode"] == "dry-run"
        assert any(r.get("result_status") == "would_deny" for r in records)
        assert all(r["mode"] == "dry-run" for r in records)
        spy.close()
        agent.close()
    finally:
        guard.stop()


def test_a_kill_is_an_alert_for_the_addons(mosquitto, tmp_path) -> None:
    seen: list[object] = []
    arrived = threading.Event()

    class Console:
        def on_alert(self, alert: object) -> None:
            seen.append(alert)
            arrived.set()

    guard = start(mosquitto, tmp_path, addons=(Console(),))
    try:
        guard.run(lambda: guard.server.state.flags.kill("ops-agent", "runaway", "secops"))
        assert arrived.wait(5)
        alert = seen[0]
        assert (alert.rule, alert.agent_id, alert.mode) == ("kill_switch", "ops-agent", "block")
        assert "runaway" in alert.reason and "secops" in alert.reason
    finally:
        guard.stop()
