"""`iot-guard simulate`: a fleet until Ctrl-C, a live summary, faults from the command line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iot_guard import cli as guard_cli
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker
from simulator.cli import FaultSpec, UsageError

ROOT = Path(__file__).resolve().parents[2]


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], needle: str, timeout: float = 15.0) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line with {needle!r}; saw {seen}") from None
        seen.append(line)
        if needle in line:
            return line


def test_simulate_runs_until_ctrl_c_with_a_live_summary(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    account = mosquitto.guard_account
    password_file = tmp_path / "password"
    password_file.write_text(account.password + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator.cli",
            "simulate",
            "--policy",
            str(ROOT / "device_policies"),
            "--broker",
            f"{mosquitto.host}:{mosquitto.port}",
            "--username",
            account.username,
            "--password-file",
            str(password_file),
            "--fault",
            "offline@acme/therm-002",
            "--fault",
            "latency_s=0.2@globex/*",
            "--telemetry-interval",
            "0.5",
            "--summary-every",
            "0.3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = lines_of(proc)
        assert "simulating 13 devices" in wait_line(lines, "simulating")
        wait_line(lines, "fault offline=True on 1 device(s)")
        summary = wait_line(lines, "online 12/13")
        assert "faults: latency_s=3, offline=1" in summary
        with AgentClient(
            mosquitto.host, mosquitto.port, username=account.username, password=account.password
        ).connect() as spy:
            spy.subscribe("tenants/acme/devices/therm-001/telemetry")
            spy.expect("tenants/acme/devices/therm-001/telemetry")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "stopped: 13 devices" in wait_line(lines, "stopped:")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    # A clean stop leaves every device's retained status "offline".
    with AgentClient(
        mosquitto.host, mosquitto.port, username=account.username, password=account.password
    ).connect() as late:
        late.subscribe("tenants/acme/devices/therm-001/status")
        assert late.expect("tenants/acme/devices/therm-001/status").json()["status"] == "offline"


def test_iot_guard_cli_has_the_simulate_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert guard_cli.main(["simulate", "--broker", "no-port", "--duration", "0"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert guard_cli.main(["simulate", "--broker", "h:1", "--fault", "explode"]) == 2
    assert "unknown fault 'explode'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("offline", FaultSpec("offline", True, "*")),
        ("reject_config=off@acme/*", FaultSpec("reject_config", False, "acme/*")),
        ("drop_rate=0.25@acme/therm-003", FaultSpec("drop_rate", 0.25, "acme/therm-003")),
        ("latency_s=1", FaultSpec("latency_s", 1.0, "*")),
    ],
)
def test_fault_specs_parse(text: str, expected: FaultSpec) -> None:
    assert FaultSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["latency_s", "offline=maybe", "drop_rate=lots", "fire"])
def test_bad_fault_specs_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        FaultSpec.parse(text)


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", "simulate", "--policy",
         str(ROOT / "device_policies"), "--summary-every", "0.2", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_simulate_where_nothing_listens_fails_at_once() -> None:
    """Before: "online 0/13" forever and exit 0."""
    from simulator.broker import free_port

    result = simulate("--broker", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("Connection refused")
    assert "online 0/13" not in result.stdout and "Traceback" not in result.stderr


def test_simulate_against_a_broker_that_refuses_says_the_brokers_reason(
    iot_guard_broker: MosquittoBroker, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("not-the-password\n")
    result = simulate(
        "--broker", f"{iot_guard_broker.host}:{iot_guard_broker.port}",
        "--username", "iot-guard", "--password-file", str(password_file),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"iot-guard simulate: the broker at {iot_guard_broker.host}:{iot_guard_broker.port} "
        "refused account 'iot-guard': Not authorized (reason code 0x87); check --username / "
        "--password-file and the broker's accounts"
    )
    anonymous = simulate("--broker", f"{iot_guard_broker.host}:{iot_guard_broker.port}")
    assert anonymous.returncode == 1 and "refused an anonymous client" in anonymous.stderr

