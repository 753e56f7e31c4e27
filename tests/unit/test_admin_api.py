"""The admin HTTP API on loopback against an in-memory ApprovalService contract: status
codes, JSON errors, filters, decisions, console files and headers, live events, CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from iot_guard.admin.app import AdminApp
from iot_guard.admin.cli import format_list, format_view
from iot_guard.cli import main
from iot_guard.tokens import issue_token

from .admin_fakes import FakeApprovals, make_view

SECRET = b"admin-api-secret-admin-api-secret-0042"
NOW = 1_800_000_000.0
LEVELS = {"alice": {1}, "bob": {2}, "carol": {3}}


class Directory:
    def __init__(self, service: FakeApprovals) -> None:
        self.service = service

    def approver_levels(self, approver: str) -> set[int]:
        return self.service.approver_levels(approver)

    def is_admin(self, admin: str) -> bool:
        return admin == "secops"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def bearer(subject: str, role: str = "approver", ttl: float = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, subject, ttl, role=role, now=NOW)}"}


class Env:
    def __init__(self, app: AdminApp, service: FakeApprovals, clock: Clock,
                 http: aiohttp.ClientSession) -> None:
        self.app, self.service, self.clock, self.http = app, service, clock, http
        self.url = app.url

    async def call(self, method: str, path: str, who: str | None = "alice", role: str = "approver",
                   **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(bearer(who, role))
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as r:
            body = await r.read()
            try:
                data = json.loads(body)
            except ValueError:
                data = body.decode()
            return r.status, data, r


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    service = FakeApprovals(LEVELS)
    service.add(make_view("r-old", NOW - 100, status="done"))
    service.add(make_view("r-1", NOW - 10))
    service.add(make_view("r-2", NOW - 5, status="escalated", level=2,
                          approvers_at_level=["bob"]))
    clock = Clock()
    app = AdminApp("127.0.0.1", 0, SECRET, Directory(service), service, clock=clock)
    await app.start()
    async with aiohttp.ClientSession() as http:
        yield Env(app, service, clock, http)
    await app.stop()


@pytest.mark.asyncio
async def test_no_data_without_a_token(env: Env) -> None:
    for method, path in (("GET", "/api/approvals"), ("GET", "/api/approvals/r-1"),
                         ("POST", "/api/approvals/r-1/approve"), ("GET", "/api/events"),
                         ("GET", "/api/approvals/r-1/rollout"), ("GET", "/api/whoami")):
        status, data, response = await env.call(method, path, who=None)
        assert status == 401, path
        assert data["error"] == "unauthorized" and "Bearer" in data["detail"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.service.calls == []


@pytest.mark.asyncio
async def test_agent_and_unlisted_tokens_are_403(env: Env) -> None:
    status, data, _ = await env.call("POST", "/api/approvals/r-1/approve", who="ops-agent",
                                     role="agent")
    assert (status, data["error"]) == (403, "forbidden") and "agent token" in data["detail"]
    status, data, _ = await env.call("GET", "/api/approvals", who="mallory")
    assert status == 403 and "not listed" in data["detail"]
    assert env.service.calls == []


@pytest.mark.asyncio
async def test_list_newest_first_with_status_filters(env: Env) -> None:
    status, data, _ = await env.call("GET", "/api/approvals")
    assert status == 200 and [v["id"] for v in data["requests"]] == ["r-2", "r-1", "r-old"]
    assert data["server_time"] == NOW
    _, data, _ = await env.call("GET", "/api/approvals?status=pending")
    assert [v["id"] for v in data["requests"]] == ["r-1"]
    _, data, _ = await env.call("GET", "/api/approvals?status=open")
    assert [v["id"] for v in data["requests"]] == ["r-2", "r-1"]
    _, data, _ = await env.call("GET", "/api/approvals?status=done,escalated&limit=1")
    assert [v["id"] for v in data["requests"]] == ["r-2"] and data["count"] == 2
    status, data, _ = await env.call("GET", "/api/approvals?status=bogus")
    assert status == 400 and "bogus" in data["detail"]
    status, data, _ = await env.call("GET", "/api/approvals?limit=0")
    assert status == 400 and "limit" in data["detail"]


@pytest.mark.asyncio
async def test_show_and_rollout(env: Env) -> None:
    status, data, _ = await env.call("GET", "/api/approvals/r-1")
    assert status == 200 and data["changes"][0]["proposed"] == "beta"
    status, data, _ = await env.call("GET", "/api/approvals/nope")
    assert (status, data["error"]) == (404, "not_found")
    status, data, _ = await env.call("GET", "/api/approvals/r-1/rollout")
    assert status == 404 and "no rollout" in data["detail"]
    env.service.requests["r-old"]["rollout"] = {"status": "done", "counts": {"succeeded": 2},
                                                "devices": []}
    status, data, _ = await env.call("GET", "/api/approvals/r-old/rollout")
    assert status == 200 and data["counts"] == {"succeeded": 2}


@pytest.mark.asyncio
async def test_approve_and_deny_pass_who_and_why_to_the_service(env: Env) -> None:
    status, data, _ = await env.call("POST", "/api/approvals/r-1/approve",
                                     json={"reason": " looks right "})
    assert status == 200 and data["status"] == "approved"
    assert env.service.calls[-1] == ("approved", "r-1", "alice", "looks right")
    status, data, _ = await env.call("POST", "/api/approvals/r-2/deny", who="bob")
    assert status == 200 and data["status"] == "denied"
    assert env.service.calls[-1] == ("denied", "r-2", "bob", "no reason given")


@pytest.mark.asyncio
async def test_service_refusals_keep_their_status_and_message(env: Env) -> None:
    await env.call("POST", "/api/approvals/r-1/approve")
    status, data, _ = await env.call("POST", "/api/approvals/r-1/approve")  # second approve
    assert (status, data["error"]) == (409, "conflict") and "approved" in data["detail"]
    status, data, _ = await env.call("POST", "/api/approvals/r-2/approve")  # alice at level 2
    assert status == 403 and "level 2" in data["detail"]
    status, data, _ = await env.call("POST", "/api/approvals/zzz/deny", json={"reason": "x"})
    assert status == 404


@pytest.mark.asyncio
async def test_an_admin_may_look_but_not_decide_without_levels(env: Env) -> None:
    status, _, _ = await env.call("GET", "/api/approvals", who="secops", role="admin")
    assert status == 200
    status, data, _ = await env.call("POST", "/api/approvals/r-1/approve", who="secops",
                                     role="admin")
    assert status == 403 and "not an approver" in data["detail"]


@pytest.mark.asyncio
async def test_bad_bodies_get_clear_400s(env: Env) -> None:
    path = "/api/approvals/r-1/approve"
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'["x"]', "application/json", 400, "JSON object"),
        (b'{"reason": 5}', "application/json", 400, "string"),
        (b'{"reason": "x", "approver": "carol"}', "application/json", 400, "unknown fields"),
        (json.dumps({"reason": "x" * 1001}).encode(), "application/json", 400, "longer"),
        (b"reason=x", "application/x-www-form-urlencoded", 415, "JSON"),
        (b"x" * 70_000, "application/json", 413, ""),
    ]
    for body, kind, want, text in cases:
        status, data, _ = await env.call("POST", path, data=body,
                                         headers={"Content-Type": kind})
        assert status == want, (body[:30], data)
        assert isinstance(data, dict) and text in data["detail"] and data["error"]
    assert env.service.calls == []
    status, data, _ = await env.call("DELETE", "/api/approvals/r-1")
    assert status == 405 and data["error"] == "method_not_allowed"


@pytest.mark.asyncio
async def test_whoami(env: Env) -> None:
    status, data, _ = await env.call("GET", "/api/whoami", who="bob")
    assert status == 200 and data["id"] == "bob" and data["levels"] == [2]


@pytest.mark.asyncio
async def test_console_page_loads_without_a_token_and_forbids_inline_script(env: Env) -> None:
    status, html, response = await env.call("GET", "/", who=None)
    assert status == 200 and "iot-guard approvals" in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in html and 'src="/static/console.js"' in html
    status, script, response = await env.call("GET", "/static/console.js", who=None)
    assert status == 200 and response.content_type == "text/javascript"
    assert "innerHTML" not in script.replace("never innerHTML", "")
    for path in ("/static/../server.py", "/static/index.html", "/static/%2e%2e%2fapp.py"):
        status, _, _ = await env.call("GET", path, who=None)
        assert status == 404, path


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if len(events) == count:
                return events
    raise AssertionError(f"stream ended after {events}")


@pytest.mark.asyncio
async def test_events_stream_every_transition(env: Env) -> None:
    async with env.http.get(env.url + "/api/events", headers=bearer("alice")) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        hello = await asyncio.wait_for(read_events(response, 1), 5)
        assert hello == [("hello", {"server_time": NOW})]
        status, _, _ = await env.call("POST", "/api/approvals/r-1/approve")
        assert status == 200
        ((name, view),) = await asyncio.wait_for(read_events(response, 1), 5)
        assert name == "approval" and (view["id"], view["status"]) == ("r-1", "approved")
    assert env.app.events.connections == 0 or await wait_for_no_connections(env)


async def wait_for_no_connections(env: Env) -> bool:
    for _ in range(200):
        if env.app.events.connections == 0:
            return True
        await asyncio.sleep(0.01)
    raise AssertionError("the stream of a closed client is still registered")


@pytest.mark.asyncio
async def test_a_stream_ends_when_its_token_expires(env: Env) -> None:
    headers = {"Authorization": "Bearer " + issue_token(SECRET, "alice", 20, role="approver",
                                                        now=NOW)}
    async with env.http.get(env.url + "/api/events", headers=headers) as response:
        await asyncio.wait_for(read_events(response, 1), 5)
        env.clock.now = NOW + 30
        env.service.add(make_view("r-3", NOW))  # wakes the stream, which sees the clock
        events = await asyncio.wait_for(read_events(response, 2), 5)
        assert events[-1][0] == "expired"


@pytest.mark.asyncio
async def test_without_an_approvals_service_the_api_says_so_after_auth() -> None:
    app = AdminApp("127.0.0.1", 0, SECRET, Directory(FakeApprovals(LEVELS)))
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(app.url + "/api/approvals") as response:
                assert response.status == 401
            async with http.get(app.url + "/api/approvals/x", headers=bearer("alice")) as r:
                assert r.status == 503
                assert (await r.json())["detail"] == (
                    "the approvals service is not running in this guard")
    finally:
        await app.stop()


def test_tables_are_readable_and_strip_control_characters() -> None:
    view = make_view("r-9", NOW - 90, topic="tenants/acme/\x1b[2Jx")
    text = format_list({"requests": [view], "count": 1, "server_time": NOW})
    header, row = text.splitlines()
    assert header.split() == ["ID", "STATUS", "LEVEL", "AGENT", "TOOL", "TOPIC", "DEVICES",
                              "RISK", "LEFT", "AGE"]
    assert "\x1b" not in row and "r-9" in row and "3m30s" in row and "1m" in row
    view["changes"].append({"field": "mode", "current": None, "proposed": "heat", "risk": "low"})
    shown = format_view(view, now=NOW)
    changes = shown.split("FIELD")[1].splitlines()
    assert changes[1].split() == ["firmware_channel", "stable", "beta", "high"]
    assert changes[2].split() == ["mode", "unknown", "heat", "low"]  # null: not known
    assert "devices (2): acme/t-101, acme/t-102" in shown


@pytest.mark.asyncio
async def test_cli_talks_to_the_api_with_exit_codes(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "alice.token"
    token_file.write_text(bearer("alice")["Authorization"].split()[1] + "\n")
    opts = ["--admin", env.url, "--token-file", str(token_file)]

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await cli("approvals", "list", "--status", "open", *opts)
    assert code == 0 and out.splitlines()[0].startswith("ID") and len(out.splitlines()) == 3
    code, out, _ = await cli("approvals", "show", "r-1", *opts)
    assert code == 0 and "why held:" in out and "firmware_channel" in out
    code, out, _ = await cli("approvals", "approve", "r-1", "--reason", "ok", *opts)
    assert (code, out.strip()) == (0, "r-1: approved")
    code, _, err = await cli("approvals", "approve", "r-1", *opts)  # again: 409
    assert code == 1 and err.startswith("iot-guard: refused:") and "409" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli("approvals", "deny", "nope", "--reason", "x", *opts)
    assert code == 1 and "404" in err
    # The environment instead of options; a refused token; an unreachable server.
    monkeypatch.setenv("IOT_GUARD_ADMIN_URL", env.url)
    monkeypatch.setenv("IOT_GUARD_ADMIN_TOKEN", bearer("ops-agent", "agent")["Authorization"][7:])
    code, _, err = await cli("approvals", "list")
    assert code == 1 and "agent token" in err
    code, _, err = await cli("approvals", "list", "--admin", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:  # argparse: exit 2, one line
        await cli("approvals", "list", "--limit", "0")
    assert usage.value.code == 2 and "1 to 1000" in capsys.readouterr().err
    code, _, err = await cli("approvals", "list", "--token-file", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1


@pytest.mark.asyncio
async def test_a_slow_reader_is_told_to_resync_instead_of_being_waited_for() -> None:
    from iot_guard.admin import events

    hub = events.EventHub(Clock())
    queue: asyncio.Queue[object] = asyncio.Queue(events.QUEUE_SIZE)
    hub._queues.add(queue)  # a connected stream that reads nothing
    for i in range(events.QUEUE_SIZE + 1):
        hub.publish("approval", {"id": f"r-{i}"})  # never blocks
    assert queue.qsize() == 1 and queue.get_nowait() is events._RESYNC
    hub.publish("approval", {"id": "next"})
    assert queue.get_nowait() == ("approval", {"id": "next"})
    await hub.close()
    assert queue.get_nowait() is events._CLOSE
