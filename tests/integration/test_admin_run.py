"""``iot-guard run --admin HOST:PORT``: the admin server inside the guard process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_guard.tokens import issue_token
from simulator.broker import MosquittoBroker, free_port

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
SECRET = "r" * 48

pytestmark = pytest.mark.integration


def wait_listening(proc: subprocess.Popen[str], port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "guard exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


def get(url: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        body, status, headers = err.read(), err.code, dict(err.headers)
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, body.decode(), headers


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)  # `run` refuses a secret others may read
    port, admin_port = free_port(), free_port()
    with MosquittoBroker(auth=False) as broker:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_guard", "run", "--policy", str(POLICY_DIR),
             "--listen", f"127.0.0.1:{port}", "--upstream", f"{broker.host}:{broker.port}",
             "--secret-file", str(secret_file), "--audit-log", str(tmp_path / "audit.jsonl"),
             "--admin", f"127.0.0.1:{admin_port}"],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_listening(proc, admin_port)
            yield f"http://127.0.0.1:{admin_port}", secret_file
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0  # a clean stop, the admin server included


def test_admin_server_runs_inside_the_guard(running: tuple[str, Path]) -> None:
    url, _ = running
    status, page, headers = get(url + "/")
    assert status == 200 and "iot-guard approvals" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, body, headers = get(url + "/api/approvals")
    assert status == 401 and body["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    secret = SECRET.encode()
    # Who is listed comes from the policy the guard runs with.
    status, body, _ = get(url + "/api/whoami", issue_token(secret, "bob", 60, role="approver"))
    assert status == 200 and (body["id"], body["levels"]) == ("bob", [2])
    status, body, _ = get(url + "/api/whoami", issue_token(secret, "secops", 60, role="admin"))
    assert status == 200 and body["role"] == "admin"
    status, body, _ = get(url + "/api/whoami", issue_token(secret, "mallory", 60,
                                                          role="approver"))
    assert status == 403 and "not listed" in body["detail"]
    # The approvals service of `iot-guard run` answers (nothing held yet).
    status, body, _ = get(url + "/api/approvals", issue_token(secret, "alice", 60,
                                                              role="approver"))
    assert status == 200 and body["requests"] == []
    status, body, _ = get(url + "/api/approvals", issue_token(secret, "ops-agent", 60))
    assert status == 403 and "agent token" in body["detail"]
    status, body, _ = get(url + "/api/approvals", issue_token(b"w" * 48, "bob", 60,
                                                              role="approver"))
    assert status == 401 and "signature" in body["detail"]


def test_a_missing_webhook_secret_stops_the_guard_from_starting(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy)
    with (policy / "approvals.yaml").open("a") as f:
        f.write("  webhooks:\n    - url: http://127.0.0.1:9/hook\n"
                "      secret_env: IOT_GUARD_TEST_HOOK_SECRET\n")
    (tmp_path / "s").write_text(SECRET)
    (tmp_path / "s").chmod(0o600)  # `run` refuses a secret others may read
    result = subprocess.run(
        [sys.executable, "-m", "iot_guard", "run", "--policy", str(policy), "--listen",
         f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:1", "--secret-file",
         str(tmp_path / "s"), "--audit-log", str(tmp_path / "a.jsonl")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("iot-guard: cannot start: approvals.webhooks[0]: environment variable "
                    "IOT_GUARD_TEST_HOOK_SECRET is not set")
    assert "Traceback" not in result.stderr
