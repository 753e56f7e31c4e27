"""Rate limits, anomaly detection, metrics and health against a real Mosquitto, the example
fleet and stock paho clients (v5 and v3.1.1)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_guard.admin.metrics import MetricsServer
from iot_guard.checks.anomaly import baseline_key
from iot_guard.proxy.server import GuardThread
from iot_guard.state import open_state
from iot_guard.tokens import issue_token
from simulator.agent import AgentClient, ConnectRefused
from simulator.broker import MosquittoBroker

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
SECRET = b"limits-test-secret-limits-test-secret-0"
ACME = "tenants/acme/devices"
IDENTIFY = f"{ACME}/therm-003/commands/identify"


def policy_with(tmp_path: Path, **files: str) -> Path:
    """The example policy with some files replaced (``limits="..."``, ``anomaly="..."``)."""
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    for name, text in files.items():
        (target / f"{name}.yaml").write_text(text)
    return target


def start(mosquitto: MosquittoBroker, tmp_path: Path, policy: Path = POLICY_DIR,
          addons: tuple[object, ...] = (), **config: object) -> GuardThread:
    cfg = mosquitto.guard_config(policy, SECRET, tmp_path / "audit.jsonl")
    cfg.state = tmp_path / "state"
    for key, value in config.items():
        setattr(cfg, key, value)
    return GuardThread(cfg, addons=addons).start()


def client(guard: GuardThread, agent: str = "ops-agent", protocol: int = 5) -> AgentClient:
    return AgentClient("127.0.0.1", guard.port, username=agent,
                       password=issue_token(SECRET, agent), protocol=protocol)


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def guard(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[GuardThread]:
    thread = start(mosquitto, tmp_path)
    yield thread
    thread.stop()


def test_identify_flood_is_refused_after_20_and_never_reaches_the_device(
    guard: GuardThread, fleet: Any, tmp_path: Path
) -> None:
    device = fleet.device("acme", "therm-003")
    agent = client(guard).connect()
    agent.subscribe("$guard/events", qos=0)
    acks = [agent.publish(IDENTIFY, {}) for _ in range(25)]
    assert [a.reason_code for a in acks[:20]] == [0] * 20
    for refused in acks[20:]:
        assert refused.reason_code == 0x97  # quota exceeded
        assert refused.reason_string is not None
        assert "identify_device, 20 per minute (burst 20) per agent" in refused.reason_string
        assert "frees up in" in refused.reason_string
    # QoS 0: dropped, and the agent is told on $guard/events.
    agent.publish(IDENTIFY, {}, qos=0)
    event = agent.guard_event(where=lambda e: e["decision"] == "deny" and e["reason_code"] == 0x97)
    assert event["tool"] == "identify_device" and "rate limit" in event["reason"]

    def identified() -> int:
        return sum(1 for e in device.events
                   if e.name == "command" and e.detail.get("command") == "identify")

    wait_for("20 identify commands at the device", lambda: identified() == 20)
    # The same v3.1.1 agent from another session shares the agent's budget: refused too.
    v3 = client(guard, protocol=4).connect()
    v3.publish(IDENTIFY, {}, qos=1)
    agent.close()
    v3.close()
    guard.stop()
    assert identified() == 20
    audit = records(tmp_path)
    refused = [r for r in audit if r.get("packet") == "publish" and r.get("reason_code") == 0x97]
    assert len(refused) == 7  # 5 QoS 1, 1 QoS 0, 1 from the v3.1.1 session
    assert all(r["rule"].startswith("guard: rate limit") and "limits.yaml:" in r["rule"]
               for r in refused)
    alerts = [r for r in audit if r.get("packet") == "alert" and r["alert"] == "rate_limit"]
    assert len(alerts) == 1 and alerts[0]["agent_id"] == "ops-agent"  # then the cooldown


def test_subscribe_flood_and_reconnect_storm(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    policy = policy_with(tmp_path, limits=(
        "limits:\n"
        "  connections: {per_minute: 6, burst: 3}\n"
        "  subscriptions: {per_minute: 60, burst: 4}\n"))
    guard = start(mosquitto, tmp_path, policy)
    try:
        agent = client(guard).connect()
        filters = [f"{ACME}/therm-00{i}/status" for i in range(1, 7)]
        assert agent.subscribe(*filters) == [1, 1, 1, 1, 0x97, 0x97]
        client(guard, protocol=4).connect().close()
        client(guard).connect().close()
        with pytest.raises(ConnectRefused) as storm:
            client(guard).connect()  # the 4th CONNECT within a second: 0x9F
        assert storm.value.reason_code == 0x9F
        with pytest.raises(ConnectRefused) as storm_v3:
            client(guard, protocol=4).connect()
        assert storm_v3.value.reason_code == 0x88  # v3 return code 3, as paho names it
        client(guard, "observer").connect().close()  # another agent: its own budget
        agent.close()
    finally:
        guard.stop()
    connects = [r for r in records(tmp_path) if r.get("packet") == "connect"
                and r.get("reason_code") == 0x9F]
    assert len(connects) == 2  # the reason the agent read (v5) is the audited one
    assert all("connection rate limit: 6 per minute (burst 3) per agent" in r["reason"]
               for r in connects)


def test_baselines_survive_a_restart(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    policy = policy_with(tmp_path, anomaly=(
        "anomaly:\n  first_use: {mode: alert}\n"
        "  rate_spike: {mode: alert, window_s: 1, warmup_windows: 3}\n"))
    key = baseline_key("ops-agent", "shadow_get")
    guard = start(mosquitto, tmp_path, policy)
    agent = client(guard).connect()
    for _ in range(4):
        assert agent.publish(f"{ACME}/therm-001/shadow/get", b"").ok
    agent.close()
    guard.stop()  # folds what was counted into the store
    store = _baselines(tmp_path)
    assert key in store and store[key].current >= 1  # 4 actions over one or two windows
    # A new guard on the same state starts from the stored baseline ...
    again = start(mosquitto, tmp_path, policy)
    try:
        warmed = again.call(lambda: again.server.brakes.anomaly.baselines())
        assert warmed[key] == store[key]
        # ... and does not call a tool it used before "used for the first time".
        agent = client(again).connect()
        assert agent.publish(f"{ACME}/therm-001/shadow/get", b"").ok
        agent.close()
    finally:
        again.stop()
    first_use = [r for r in records(tmp_path) if r.get("alert") == "first_use"]
    assert [r["subject"] for r in first_use] == ["shadow_get"]  # the first run only


def _baselines(tmp_path: Path) -> dict[str, Any]:
    import asyncio

    async def read() -> dict[str, Any]:
        state = await open_state(tmp_path / "state")
        try:
            return dict(await state.counters.baselines())
        finally:
            await state.close()

    return asyncio.run(read())


def test_anomaly_alert_goes_to_the_agent_and_block_trips_the_kill_switch(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    policy = policy_with(tmp_path, anomaly=(
        "anomaly:\n"
        "  outside_tenants: {mode: alert}\n"
        "  repeated_action: {mode: block, count: 3}\n"))
    guard = start(mosquitto, tmp_path, policy)
    try:
        agent = client(guard).connect()
        agent.subscribe("$guard/events", qos=0)
        bystander = client(guard, "observer").connect()
        # Alert: told, audited, nothing stopped.
        assert agent.subscribe("tenants/globex/devices/therm-101/telemetry") == [0x87]
        alert = agent.guard_event(where=lambda e: e["decision"] == "alert")
        assert alert["alert"] == "outside_tenants" and "'globex'" in alert["reason"]
        # Block: the third identical action is refused and the agent is stopped.
        topic = f"{ACME}/therm-002/shadow/get"
        assert agent.publish(topic, b"").ok and agent.publish(topic, b"").ok
        started = time.monotonic()
        third = agent.publish(topic, b"")
        assert third.reason_code == 0x87 and "anomaly (repeated_action)" in (
            third.reason_string or "")
        wait_for("the DISCONNECT", lambda: agent.disconnected is not None, 2.0)
        assert agent.disconnected is not None and agent.disconnected[0] == 0x98
        assert time.monotonic() - started < 1.0
        with pytest.raises(ConnectRefused) as banned:
            client(guard).connect()
        assert banned.value.reason_code == 0x8A
        assert bystander.disconnected is None  # another agent goes on
        bystander.close()
    finally:
        guard.stop()
    audit = records(tmp_path)
    kinds = [(r["alert"], r["result_status"]) for r in audit if r.get("packet") == "alert"]
    assert ("outside_tenants", "alert") in kinds and ("repeated_action", "block") in kinds
    assert any(r.get("reason_code") == 0x8A and "anomaly:repeated_action" in r["reason"]
               for r in audit if r.get("packet") == "connect")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_health_scraped_over_http(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    from iot_guard.admin.app import AdminApp

    metrics = MetricsServer("127.0.0.1", 0)
    admin = AdminApp("127.0.0.1", 0, SECRET)
    guard = start(mosquitto, tmp_path, addons=(metrics, admin))
    try:
        agent = client(guard).connect()
        for _ in range(21):
            agent.publish(IDENTIFY, {})
        assert agent.subscribe("tenants/globex/devices/therm-101/status") == [0x87]
        status, text = _get(metrics.url + "/metrics")
        assert status == 200
        lines = text.splitlines()

        def value(prefix: str) -> float:
            found = [ln for ln in lines if ln.startswith(prefix)]
            assert found, f"no {prefix} in /metrics"
            return float(found[0].rsplit(" ", 1)[1])

        assert value('iot_guard_decisions_total{packet="publish",status="success",'
                     'tool="identify_device",verdict="allow"}') == 20
        assert value('iot_guard_refusals_total{packet="publish",reason_code="0x97"}') == 1
        assert value('iot_guard_refusals_total{packet="subscribe",reason_code="0x87"}') == 1
        assert value('iot_guard_limits_hit_total{limit="tool identify_device per agent"}') == 1
        assert value('iot_guard_sessions{state="connected"}') == 1
        assert value("iot_guard_sessions_opened_total") == 1
        assert value('iot_guard_bytes_total{direction="from_agents"}') > 21 * 40
        assert value("iot_guard_kill_switches") == 0
        assert value("iot_guard_approvals_pending") == 0
        assert value('iot_guard_decision_seconds_bucket{le="+Inf"}') >= 23
        assert value("iot_guard_audit_write_seconds_count") >= 23
        assert value('iot_guard_anomalies_total{mode="alert",rule="first_use"}') == 1
        assert "process_resident_memory_bytes" in text
        assert _get(metrics.url + "/healthz") == (200, '{"status": "alive"}')
        status, body = _get(metrics.url + "/readyz")
        report = json.loads(body)
        assert status == 200 and report["ready"] is True
        assert set(report["checks"]) == {"policy", "state", "audit", "upstream"}
        # The admin server serves the same three routes, without a token.
        status, text = _get(admin.url + "/metrics")
        assert status == 200 and "iot_guard_limits_hit_total" in text
        assert _get(admin.url + "/readyz")[0] == 200
        assert _get(admin.url + "/api/whoami")[0] == 401  # its API still wants a token
        agent.close()
    finally:
        guard.stop()


def test_readyz_fails_when_the_upstream_is_down(mosquitto: MosquittoBroker,
                                               tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    metrics = MetricsServer("127.0.0.1", 0)
    guard = start(mosquitto, tmp_path, addons=(metrics,), upstream_port=dead)
    try:
        status, body = _get(metrics.url + "/readyz")
        report = json.loads(body)
        assert status == 503 and report["ready"] is False
        assert report["checks"]["upstream"]["ok"] is False
        assert report["checks"]["upstream"]["address"] == f"127.0.0.1:{dead}"
        assert report["checks"]["policy"]["ok"] and report["checks"]["audit"]["ok"]
        assert _get(metrics.url + "/healthz")[0] == 200  # alive, not ready
    finally:
        guard.stop()


def test_run_metrics_flag_serves_metrics_and_health(tmp_path: Path) -> None:
    from simulator.broker import free_port

    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("b" * 48)
    secret_file.chmod(0o600)
    listen, metrics_port = free_port(), free_port()
    with MosquittoBroker(auth=False) as broker:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_guard", "run", "--policy", str(POLICY_DIR),
             "--listen", f"127.0.0.1:{listen}", "--upstream", f"{broker.host}:{broker.port}",
             "--secret-file", str(secret_file), "--audit-log", str(tmp_path / "audit.jsonl"),
             "--metrics", f"127.0.0.1:{metrics_port}"],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            url = f"http://127.0.0.1:{metrics_port}"

            def up() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    return _get(url + "/healthz")[0] == 200
                except OSError:
                    return False

            wait_for("the metrics port", up, 20.0)
            status, body = _get(url + "/readyz")
            assert status == 200 and json.loads(body)["ready"] is True
            status, text = _get(url + "/metrics")
            assert status == 200 and "iot_guard_sessions_opened_total 0.0" in text
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0


def test_a_limit_in_observe_mode_refuses_nothing_and_audits_would_deny(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    guard = start(mosquitto, tmp_path, observe=frozenset({"rate_limit"}))
    try:
        agent = client(guard).connect()
        assert all(agent.publish(IDENTIFY, {}).ok for _ in range(22))
        agent.close()
    finally:
        guard.stop()
    would = [r for r in records(tmp_path) if r.get("result_status") == "would_deny"]
    assert len(would) == 2 and all(r["reason_code"] == 0x97 for r in would)
    assert all("observe mode: check rate_limit" in r["note"] for r in would)


def test_run_refuses_an_unknown_observed_check(tmp_path: Path) -> None:
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("c" * 48)
    secret_file.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "iot_guard", "run", "--policy", str(POLICY_DIR), "--upstream",
         "127.0.0.1:1883", "--secret-file", str(secret_file), "--observe", "kill_switch"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "iot-guard: --observe: unknown checks ['kill_switch']; known: ['rate_limit', 'anomaly']"]
