"""The MCP server, driven by the official MCP SDK client over stdio, against the real stack:
Mosquitto, the simulated fleet and the guard (the pytest plugin's fixtures).

The server runs as a subprocess (``python -m iot_guard mcp ...``), exactly as an agent
runtime starts it, holding only the agent's token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from iot_guard.approvals.addon import ApprovalsAddon
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def mcp_client(
    guard_port: int,
    token_file: Path,
    policy_dir: Path,
    *extra: str,
    agent: str = "ops-agent",
) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "iot_guard", "mcp", "--agent", agent,
            "--guard", f"127.0.0.1:{guard_port}", "--token-file", str(token_file),
            "--policy", str(policy_dir), "--reply-timeout", "5", "--read-timeout", "5",
            "--ack-timeout", "5", *extra,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    async with Client(params, read_timeout_seconds=30) as client:
        yield client


def token_file(tmp_path: Path, secret: bytes, agent: str = "ops-agent", ttl: float = 300) -> Path:
    path = tmp_path / f"{agent}.token"
    path.write_text(issue_token(secret, agent, ttl_s=ttl) + "\n")
    return path


def data(result: CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def test_an_mcp_client_runs_the_agents_tools_through_the_guard(
    guard: Any, fleet: Any, guard_secret: bytes, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    tokens = token_file(tmp_path, guard_secret)
    async with mcp_client(guard.port, tokens, iot_guard_policy_dir) as client:
        # 1. The tools: the agent's allowlist, with schemas that name only its tenant.
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {"shadow_update", "shadow_get", "config_patch", "read_status",
                "check_approval"} <= set(listed)
        update_schema = dict(listed["shadow_update"].input_schema)
        assert update_schema["properties"]["tenant"]["enum"] == ["acme"]
        assert "therm-101" not in update_schema["properties"]["device"]["enum"]
        assert "admin_pin" not in update_schema["properties"]["desired"]["properties"]

        # 2. A valid shadow update reaches the device; the device's reply comes back.
        ok = await client.call_tool(
            "shadow_update",
            {"tenant": "acme", "device": "therm-001", "desired": {"target_temp_c": 22}},
        )
        assert not ok.is_error, ok
        assert data(ok)["status"] == "done"
        assert data(ok)["reply_topic"] == "tenants/acme/devices/therm-001/shadow/update/accepted"
        assert data(ok)["reply"]["state"]["desired"] == {"target_temp_c": 22}
        device = fleet.device("acme", "therm-001")
        device.wait_until(lambda d: d.state.desired.get("target_temp_c") == 22, timeout=5)

        # remove_desired deletes a desired key (AWS null), without nulls in the call.
        await client.call_tool(
            "shadow_update",
            {"tenant": "acme", "device": "therm-001", "desired": {"mode": "heat"}},
        )
        device.wait_until(lambda d: d.state.desired.get("mode") == "heat", timeout=5)
        removed = await client.call_tool(
            "shadow_update",
            {"tenant": "acme", "device": "therm-001", "desired": {"mode": None},
             "remove_desired": ["mode"]},
        )
        assert not removed.is_error, removed
        device.wait_until(lambda d: "mode" not in d.state.desired, timeout=5)
        assert device.state.desired.get("target_temp_c") == 22  # null left it unchanged

        # 3. Out of range: the schema says no, and the guard's reason comes back if forced.
        out_of_range = {"tenant": "acme", "device": "therm-001",
                        "desired": {"target_temp_c": 45}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(out_of_range, update_schema)
        refused = await client.call_tool("shadow_update", out_of_range)
        assert refused.is_error
        assert data(refused)["status"] == "refused"
        assert data(refused)["guard_code"].startswith("0x99")
        assert "state.desired.target_temp_c: 45 is above the maximum 30" in data(refused)["reason"]
        assert device.state.desired.get("target_temp_c") == 22

        # 4. Another tenant cannot be formed (not in the schema) and is refused if forced.
        cross = {"tenant": "globex", "device": "therm-101", "desired": {"target_temp_c": 20}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(cross, update_schema)
        forced = await client.call_tool("shadow_update", cross)
        assert forced.is_error
        assert data(forced)["status"] == "refused"
        assert data(forced)["guard_code"].startswith("0x87")
        assert "'globex' is not a tenant of agent ops-agent" in data(forced)["reason"]
        assert "target_temp_c" not in fleet.device("globex", "therm-101").state.desired

        # A value that is not one topic level never becomes a topic.
        sneaky = await client.call_tool(
            "shadow_get", {"tenant": "acme", "device": "therm-001/../therm-002"}
        )
        assert sneaky.is_error and "not a name" in data(sneaky)["error"]

        # 5. A high-risk change is held (not carried out) and the result says so.
        held = await client.call_tool(
            "shadow_update",
            {"tenant": "acme", "device": "therm-002", "desired": {"firmware_channel": "beta"}},
        )
        assert data(held)["status"] == "held", held
        assert "approval" in data(held)["reason"]
        assert "firmware_channel" not in fleet.device("acme", "therm-002").state.desired

        # 6. Read tools: the device's shadow document and its retained status.
        shadow = await client.call_tool("shadow_get", {"tenant": "acme", "device": "therm-001"})
        assert not shadow.is_error, shadow
        assert data(shadow)["reply"]["state"]["desired"]["target_temp_c"] == 22
        status = await client.call_tool("read_status", {"tenant": "acme", "device": "therm-003"})
        assert not status.is_error, status
        assert data(status)["message"]["status"] == "online"
        assert data(status)["retained"] is True

        # A config patch is answered on config/result, matched by its clientToken.
        patched = await client.call_tool(
            "config_patch",
            {"tenant": "acme", "device": "therm-004", "config": {"telemetry_interval_s": 30}},
        )
        assert not patched.is_error, patched
        assert data(patched)["reply"]["status"] == "applied"
        assert data(patched)["reply"]["config"]["telemetry_interval_s"] == 30


async def test_token_near_expiry_is_reported(
    guard: Any, fleet: Any, guard_secret: bytes, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    tokens = token_file(tmp_path, guard_secret, ttl=90)
    async with mcp_client(
        guard.port, tokens, iot_guard_policy_dir, "--token-warn", "600"
    ) as client:
        result = await client.call_tool("read_status", {"tenant": "acme", "device": "therm-001"})
        assert not result.is_error, result
        warning = data(result)["token_warning"]
        assert "token expires in" in warning and "token file" in warning


async def test_the_server_reconnects_after_the_guard_comes_back(
    mosquitto: Any, fleet: Any, guard_secret: bytes, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    config = mosquitto.guard_config(iot_guard_policy_dir, guard_secret, tmp_path / "audit.jsonl")
    first = GuardThread(config).start()
    port = first.port
    tokens = token_file(tmp_path, guard_secret)
    args = {"tenant": "acme", "device": "therm-005"}
    async with mcp_client(
        port, tokens, iot_guard_policy_dir, "--reconnect-max", "1", "--ack-timeout", "2"
    ) as client:
        assert not (await client.call_tool("shadow_get", args)).is_error
        first.stop()
        down = await client.call_tool("shadow_get", args)
        assert down.is_error
        assert "guard" in data(down)["error"]
        second = GuardThread(dataclasses.replace(config, listen_port=port)).start()
        try:
            deadline = time.monotonic() + 20
            while True:
                again = await client.call_tool("shadow_get", args)
                if not again.is_error:
                    break
                assert time.monotonic() < deadline, f"no reconnect within 20 s: {again}"
            assert data(again)["status"] == "done"
        finally:
            second.stop()


async def test_an_expired_token_is_reported_and_a_renewed_one_is_picked_up(
    guard: Any, fleet: Any, guard_secret: bytes, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    tokens = tmp_path / "ops-agent.token"
    tokens.write_text(issue_token(guard_secret, "ops-agent", ttl_s=60, now=time.time() - 90))
    args = {"tenant": "acme", "device": "therm-006"}
    async with mcp_client(
        guard.port, tokens, iot_guard_policy_dir, "--reconnect-max", "1", "--ack-timeout", "2",
    ) as client:
        expired = await client.call_tool("shadow_get", args)
        assert expired.is_error
        error = data(expired)["error"]
        assert "refused the connection (0x86" in error and "token expired" in error, error
        assert "token file" in error
        assert re.search(r"token expired \d+ s ago", data(expired)["token_warning"])
        token_file(tmp_path, guard_secret, ttl=300)  # renew: write the file
        deadline = time.monotonic() + 20
        while True:
            renewed = await client.call_tool("shadow_get", args)
            if not renewed.is_error:
                break
            assert time.monotonic() < deadline, f"renewed token not used: {renewed}"
        assert data(renewed)["status"] == "done"
        assert "token_warning" not in data(renewed)


async def test_the_server_speaks_streamable_http_too(
    guard: Any, fleet: Any, guard_secret: bytes, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    with socket.socket() as probe:  # a free loopback port for the HTTP listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tokens = token_file(tmp_path, guard_secret)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iot_guard", "mcp", "--agent", "ops-agent",
        "--guard", f"127.0.0.1:{guard.port}", "--token-file", str(tokens),
        "--policy", str(iot_guard_policy_dir), "--transport", "http",
        "--listen", f"127.0.0.1:{port}",
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert proc.returncode is None, "the HTTP server exited"
                assert time.monotonic() < deadline, "the HTTP server did not listen"
                await asyncio.sleep(0.1)  # polling a port: bounded by the deadline above
                continue
            writer.close()
            break
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=30) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "shadow_update" in names
            result = await client.call_tool(
                "shadow_get", {"tenant": "acme", "device": "therm-007"}
            )
            assert not result.is_error, result
            assert data(result)["reply_topic"].endswith("/shadow/get/accepted")
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_held_call_is_followed_to_its_outcome_with_check_approval(
    mosquitto: Any, fleet: Any, tmp_path: Path, iot_guard_policy_dir: Path
) -> None:
    secret = secrets.token_bytes(32)
    addon = ApprovalsAddon()
    config = mosquitto.guard_config(iot_guard_policy_dir, secret, tmp_path / "audit.jsonl")
    with GuardThread(config, addons=[addon]) as guard:
        tokens = token_file(tmp_path, secret)
        async with mcp_client(guard.port, tokens, iot_guard_policy_dir) as client:
            held = await client.call_tool(
                "shadow_update",
                {"tenant": "acme", "device": "therm-008",
                 "desired": {"firmware_channel": "beta"}},
            )
            assert not held.is_error, held  # held is not a failure: it waits for a human
            approval_id = data(held)["approval_id"]
            assert data(held)["status"] == "held" and approval_id
            assert "check_approval" in data(held)["next"]
            device = fleet.device("acme", "therm-008")
            assert "firmware_channel" not in device.state.desired

            pending = await client.call_tool("check_approval", {"approval_id": approval_id})
            assert not pending.is_error, pending
            assert data(pending)["state"]["id"] == approval_id
            assert data(pending)["state"]["status"] == "pending"

            view = await asyncio.to_thread(
                guard.run, lambda: addon.service.approve(approval_id, "alice", "ok")
            )
            assert view["status"] == "approved"
            deadline = time.monotonic() + 20
            while True:
                state = data(await client.call_tool(
                    "check_approval", {"approval_id": approval_id}))["state"]
                if state["status"] in ("done", "failed"):
                    break
                assert time.monotonic() < deadline, f"no outcome within 20 s: {state}"
                await asyncio.sleep(0.1)  # polling a state: bounded by the deadline above
            assert state["status"] == "done", state
            device.wait_until(lambda d: d.state.desired.get("firmware_channel") == "beta", 5)
