"""The signed audit chain written by a real guard in front of a real Mosquitto."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from iot_guard.mqtt import PubAck, Publish
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from simulator.broker import MosquittoBroker, free_port
from tests.rawmqtt import RawMqtt

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
TOPIC = "tenants/acme/devices/therm-001/shadow/get"


def iot_guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iot_guard", *args], capture_output=True,
                          text=True, timeout=60)


def keygen(tmp_path: Path, origin: str) -> Path:
    result = iot_guard("audit", "keygen", "--out", str(tmp_path / "keys"), "--origin", origin)
    assert result.returncode == 0, result.stderr
    return tmp_path / "keys"


def publish_acked(port: int, secret: bytes, packet_id: int) -> None:
    client = RawMqtt(port)
    assert client.connect("ops-agent", issue_token(secret, "ops-agent")).reason_code == 0
    client.send_packet(Publish(TOPIC, b"", qos=1, packet_id=packet_id))
    ack = client.read_until(PubAck)
    assert isinstance(ack, PubAck) and ack.reason_code < 0x80  # 0x10: no subscribers yet
    client.close()


def decisions(*paths: Path) -> list[dict]:
    lines = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    return [r for r in lines if "audit" not in r]


def test_guard_signs_its_chain_across_a_rotation(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    keys = keygen(tmp_path, "guard-it.test/audit")
    secret = b"audit-chain-secret-audit-chain-secret-0"
    log = tmp_path / "audit.jsonl"
    config = dataclasses.replace(
        mosquitto.guard_config(POLICY_DIR, secret, log), audit_key=keys / "audit.key",
        audit_checkpoint_records=3,
    )
    with GuardThread(config) as guard:
        publish_acked(guard.port, secret, 1)
        log.rename(tmp_path / "audit.jsonl.1")  # logrotate's move, then the control plane:
        assert guard.call(guard.server.audit.reopen)
        publish_acked(guard.port, secret, 2)
    rotated = tmp_path / "audit.jsonl.1"
    result = iot_guard("audit", "verify", str(log), str(rotated), "--pubkey",
                       str(keys / "audit.pub"))
    assert result.returncode == 0, result.stderr
    assert "guard-it.test/audit: ok:" in result.stdout and "in 2 file(s)" in result.stdout
    # The decisions themselves are in the verified chain, in both files.
    for path in (rotated, log):
        assert any(r.get("requested_scope") == TOPIC and r["decision"] == "allow"
                   for r in decisions(path)), path


def _start_guard(args: list[str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "iot_guard", "run", *args],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline, "guard did not listen"
            time.sleep(0.05)  # polling a port that is not open yet


def test_cli_guard_restarts_on_its_log_and_the_chain_verifies(tmp_path: Path) -> None:
    keys = keygen(tmp_path, "guard-cli.test/audit")
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("c" * 48)
    secret_file.chmod(0o600)  # `run` refuses a secret others may read
    log = tmp_path / "audit.jsonl"
    port = free_port()
    with MosquittoBroker(auth=False) as broker:
        args = ["--policy", str(POLICY_DIR), "--listen", f"127.0.0.1:{port}",
                "--upstream", f"{broker.host}:{broker.port}", "--secret-file", str(secret_file),
                "--audit-log", str(log), "--audit-key", str(keys / "audit.key")]
        for run in (1, 2):
            proc = _start_guard(args, port)
            try:
                publish_acked(port, b"c" * 48, run)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
            result = iot_guard("audit", "verify", str(log), "--pubkey", str(keys / "audit.pub"))
            assert result.returncode == 0, result.stderr
    reasons = [r["reason"] for r in map(json.loads, log.read_text().splitlines())
               if r.get("audit") == "open"]
    assert reasons == ["start", "restart"]
    assert len([r for r in decisions(log) if r.get("requested_scope") == TOPIC]) == 2
    # A truncated tail of the real log is reported, exit 1, one line naming the file.
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))
    result = iot_guard("audit", "verify", str(log), "--pubkey", str(keys / "audit.pub"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"{log}:{len(lines) - 2}: the last ")
    assert result.stderr.count("\n") == 1


def test_sighup_continues_the_chain_in_a_new_file_as_logrotate_expects(tmp_path: Path) -> None:
    keys = keygen(tmp_path, "guard-hup.test/audit")
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("h" * 48)
    secret_file.chmod(0o600)  # `run` refuses a secret others may read
    log, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    port = free_port()
    with MosquittoBroker(auth=False) as broker:
        proc = _start_guard(
            ["--policy", str(POLICY_DIR), "--listen", f"127.0.0.1:{port}",
             "--upstream", f"{broker.host}:{broker.port}", "--secret-file", str(secret_file),
             "--audit-log", str(log), "--audit-key", str(keys / "audit.key")], port)
        try:
            publish_acked(port, b"h" * 48, 1)
            log.rename(rotated)  # logrotate's create mode: move, then postrotate kill -HUP
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not (log.exists() and b'"reason":"rotate"' in log.read_bytes()):
                assert time.monotonic() < deadline, "no new audit file after SIGHUP"
                time.sleep(0.05)  # polling a file another process writes
            publish_acked(port, b"h" * 48, 2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    assert b'"audit":"checkpoint"' in rotated.read_bytes().splitlines()[-1]  # old file signed
    result = iot_guard("audit", "verify", str(log), str(rotated), "--pubkey",
                       str(keys / "audit.pub"))
    assert result.returncode == 0, result.stderr
    assert "in 2 file(s)" in result.stdout
    assert [len([r for r in decisions(p) if r.get("requested_scope") == TOPIC])
            for p in (rotated, log)] == [1, 1]
