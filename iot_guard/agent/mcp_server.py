"""An MCP server that offers an agent's allowlist as tools and runs them through the guard.

Needs the optional extra ``mcp`` (``pip install 'iot-guard[mcp]'``: the official MCP SDK).
The tools are the export (``format=mcp``) of the agent's policy tools, narrowed by the
token's tool list, plus ``check_approval`` when some call can be held. Each call is run by
:class:`~iot_guard.agent.runtime.AgentRuntime` as the agent's own MQTT client of the guard:
the server holds the agent's token only, never broker credentials, and the guard judges
every message. Results carry ``structuredContent`` (the JSON shown as text too); a refusal
is ``isError: true`` with the guard's reason.

Transports: stdio (an agent runtime starts the server as a subprocess) or streamable HTTP
(``--transport http --listen HOST:PORT``, path ``/mcp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server

from .export import render
from .link import GuardLink, LinkError
from .runtime import (
    CHECK_APPROVAL,
    CHECK_APPROVAL_DESCRIPTION,
    AgentRuntime,
    check_approval_spec_schema,
)

log = logging.getLogger("iot_guard.agent.mcp")

INSTRUCTIONS = (
    "Tools for operating an IoT fleet through iot-guard. The schemas list only what this "
    "agent may do: use the listed tenants, devices and values. In desired/config objects a "
    "null leaves a field unchanged; to delete a desired key or reset a config field name it "
    "in remove_desired / reset. A refused call returns the guard's reason: change the call "
    "as it says. A held call returns an approval id: follow it with check_approval and do "
    "not resend it."
)


def tool_list(runtime: AgentRuntime) -> list[types.Tool]:
    tools = [types.Tool.model_validate(render(spec, "mcp")) for spec in runtime.specs.values()]
    if runtime.may_hold:
        tools.append(
            types.Tool.model_validate(
                {
                    "name": CHECK_APPROVAL,
                    "title": "Check approval",
                    "description": CHECK_APPROVAL_DESCRIPTION,
                    "inputSchema": check_approval_spec_schema(),
                    "annotations": {"readOnlyHint": True, "openWorldHint": True},
                }
            )
        )
    return tools


def build_server(runtime: AgentRuntime, agent_id: str) -> Server[Any]:
    tools = tool_list(runtime)

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        outcome = await runtime.call(params.name, dict(params.arguments or {}))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=outcome.text)],
            structured_content=outcome.data,
            is_error=outcome.is_error,
        )

    return Server(
        "iot-guard",
        version="0.1.0",
        title=f"iot-guard tools for agent {agent_id}",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _warm(runtime: AgentRuntime, tenants: list[str], timeout: float) -> None:
    """Subscribe the read tools' topics once connected (reads then answer at once)."""
    while True:
        try:
            await runtime.link.wait_connected(timeout)
            await runtime.warm(tenants)
            return
        except LinkError as exc:
            log.warning("read tools not subscribed yet: %s", exc)


async def serve(
    runtime: AgentRuntime,
    agent_id: str,
    tenants: list[str],
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """Connect to the guard and serve MCP until the client goes away (stdio) or Ctrl-C."""
    server = build_server(runtime, agent_id)
    await runtime.start()
    warm = asyncio.create_task(_warm(runtime, tenants, runtime.options.ack_timeout))
    try:
        if transport == "stdio":
            from mcp.server.stdio import stdio_server

            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        else:
            import uvicorn

            app = server.streamable_http_app(host=host)
            config = uvicorn.Config(app, host=host, port=port, log_level="warning")
            await uvicorn.Server(config).serve()
    finally:
        warm.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm
        await runtime.close()


def make_runtime(
    specs: list[Any],
    host: str,
    port: int,
    agent_id: str,
    token_file: str,
    max_delay: int = 30,
    **options: Any,
) -> AgentRuntime:
    from pathlib import Path

    from .runtime import RuntimeOptions

    path = Path(token_file)
    link = GuardLink(host, port, agent_id, path.read_text, max_delay=max_delay)
    return AgentRuntime(specs, link, RuntimeOptions(**options))
