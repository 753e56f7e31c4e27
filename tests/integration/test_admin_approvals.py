"""The admin API, its event stream, the CLI and webhooks against the real approvals service
in a running guard (real Mosquitto, simulated fleet, SQLite state)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from iot_guard.approvals.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    WebhookNotifier,
    verify_signature,
)
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

from .admin_harness import FLOOR_1, FLOOR_1_PUSH, POLICY, AdminGuard, admin_guard, held_id

pytestmark = pytest.mark.integration


@pytest.fixture
def ag(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[AdminGuard]:
    with admin_guard(mosquitto, tmp_path) as guard:
        yield guard


def cli(ag: AdminGuard, *args: str, who: str = "alice") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IOT_GUARD_ADMIN_URL=ag.url, IOT_GUARD_ADMIN_TOKEN=ag.token(who))
    return subprocess.run([sys.executable, "-m", "iot_guard", "approvals", *args],
                          capture_output=True, text=True, timeout=60, env=env)


class EventReader:
    """Reads /api/events in a thread; ``wait`` blocks (bounded) for a matching event."""

    def __init__(self, url: str, token: str) -> None:
        request = urllib.request.Request(url + "/api/events")
        request.add_header("Authorization", f"Bearer {token}")
        self.response = urllib.request.urlopen(request, timeout=30)
        self.events: list[tuple[str, Any]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name = ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    with self.changed:
                        self.events.append((name, json.loads(line[6:])))
                        self.changed.notify_all()
        except (OSError, ValueError, AttributeError):
            pass  # closed by the test (http.client drops its file object on close)

    def wait(self, predicate: Any, timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(predicate(e) for e in self.events),
                                         timeout), self.events

    def close(self) -> None:
        self.response.close()


def test_a_held_push_decided_through_the_api_and_cli(ag: AdminGuard, fleet: Fleet) -> None:
    events = EventReader(ag.url, ag.token("bob"))
    try:
        with ag.agent() as ops:
            result = ops.publish(FLOOR_1_PUSH, {"firmware_channel": "beta"})
            assert result.reason_code == 0x83
            request_id = held_id(result.reason_string)
        events.wait(lambda e: e[0] == "approval" and e[1]["id"] == request_id)
        status, listing = ag.call("GET", "/api/approvals?status=pending", ag.token("alice"))
        assert status == 200 and [v["id"] for v in listing["requests"]] == [request_id]
        view = listing["requests"][0]
        assert view["devices"] == FLOOR_1 and view["agent_id"] == "ops-agent"
        assert view["changes"][0]["field"] == "firmware_channel"
        assert view["changes"][0]["proposed"] == "beta" and view["changes"][0]["risk"] == "high"

        # Refusals: an agent's token, an approver of another level (the service's rule).
        status, body = ag.call("POST", f"/api/approvals/{request_id}/approve",
                               ag.token("ops-agent", role="agent"))
        assert status == 403 and "agent token" in body["detail"]
        status, body = ag.call("POST", f"/api/approvals/{request_id}/approve", ag.token("bob"))
        assert status == 403 and body["error"] == "forbidden"
        assert ag.wait_view(request_id, lambda v: True)["status"] == "pending"

        shown = cli(ag, "show", request_id)
        assert shown.returncode == 0 and "firmware_channel" in shown.stdout
        assert "devices (5): acme/therm-001" in shown.stdout
        approved = cli(ag, "approve", request_id, "--reason", "change window")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.strip() == f"{request_id}: approved"
        again = cli(ag, "approve", request_id)
        assert again.returncode == 1 and "HTTP 409" in again.stderr

        done = ag.wait_view(request_id, lambda v: v["status"] in ("done", "failed", "aborted"))
        assert done["status"] == "done", done
        status, rollout = ag.call("GET", f"/api/approvals/{request_id}/rollout", ag.token("bob"))
        assert status == 200 and rollout["counts"]["succeeded"] == 5
        for name in FLOOR_1:
            device = fleet.device("acme", name.split("/")[1])
            assert device.config["firmware_channel"] == "beta"
        # Every transition reached the live stream, rollout progress included.
        events.wait(lambda e: e[0] == "approval" and e[1]["status"] == "done")
        statuses = [v["status"] for name, v in events.events if name == "approval"]
        assert statuses[0] == "pending" and "approved" in statuses and "executing" in statuses
        history = [(h["who"], h["action"]) for h in done["history"]]
        assert ("alice", "approved") in history
        listed = cli(ag, "list", "--status", "done")
        assert listed.returncode == 0 and request_id in listed.stdout
    finally:
        events.close()


def test_a_denial_from_the_cli_reaches_the_agent(ag: AdminGuard, fleet: Fleet) -> None:
    with ag.agent() as ops:
        ops.subscribe("$guard/approvals/+")
        request_id = held_id(ops.publish(FLOOR_1_PUSH, {"firmware_channel": "beta"})
                             .reason_string)
        ops.expect(f"$guard/approvals/{request_id}")
        denied = cli(ag, "deny", request_id, "--reason", "not during the audit")
        assert denied.returncode == 0, denied.stderr
        notice = ops.expect(f"$guard/approvals/{request_id}",
                            where=lambda m: m.json()["status"] == "denied").json()
        assert notice["outcome"] == "not during the audit"
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"
    missing = cli(ag, "deny", "no-such-id", "--reason", "x")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint: the first POST gets a 500, then 200s."""

    received: list[tuple[dict[str, str], bytes, float]] = []
    fail_first = True

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body, time.time()))
        status = 500 if Receiver.fail_first else 200
        Receiver.fail_first = False
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhooks_sign_every_transition_of_a_real_request(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    policy = tmp_path / "policy"
    shutil.copytree(POLICY, policy)
    with (policy / "approvals.yaml").open("a") as f:
        f.write(f"  webhooks:\n    - url: http://127.0.0.1:{server.server_port}/hook\n"
                "      secret_env: TEST_HOOK_SECRET\n")
    notifier = WebhookNotifier(base_delay_s=0.05, environ={"TEST_HOOK_SECRET": "hook-secret"})
    try:
        with admin_guard(mosquitto, tmp_path, policy, webhooks=notifier) as ag, \
                ag.agent() as ops:
            request_id = held_id(ops.publish(FLOOR_1_PUSH, {"firmware_channel": "beta"})
                                 .reason_string)
            status, _ = ag.call("POST", f"/api/approvals/{request_id}/deny", ag.token("alice"),
                                {"reason": "no"})
            assert status == 200
            deadline = time.monotonic() + 15
            while len({json.loads(b)["type"] for _, b, _ in Receiver.received}) < 2:
                assert time.monotonic() < deadline, Receiver.received
                time.sleep(0.05)
    finally:
        server.shutdown()
    types = [json.loads(body)["type"] for _, body, _ in Receiver.received]
    # The first delivery got a 500 and was retried under the same delivery id.
    assert types == ["approval.pending", "approval.pending", "approval.denied"]
    first, retry = Receiver.received[0][0], Receiver.received[1][0]
    assert first[DELIVERY_HEADER] == retry[DELIVERY_HEADER]
    for headers, body, at in Receiver.received:
        verify_signature(b"hook-secret", headers[SIGNATURE_HEADER], body, at)
        data = json.loads(body)
        assert data["request"]["id"] == request_id and "payload" not in data["request"]
    assert "denied by alice: no" in json.loads(Receiver.received[-1][1])["text"]
