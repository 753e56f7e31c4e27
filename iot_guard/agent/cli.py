"""``iot-guard tools export`` and ``iot-guard mcp`` (hooked into ``iot_guard.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .export import DEFAULT_MAX_ENUM, FORMATS
from .tools import ExportError

EXIT_USAGE = 2


class AgentCliError(Exception):
    """A one-line message for the operator; the command exits with 2."""


def _cli_error(message: str) -> Exception:
    return AgentCliError(message)


def _one_line_errors(handler: Any) -> Any:
    """Print ``iot-guard: message`` and exit 2 instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except (AgentCliError, ExportError) as exc:
            print(f"iot-guard: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _tool_list(text: str | None) -> list[str] | None:
    from iot_guard.cli import _tool_list as parse

    return parse(text)


def _load(directory: str) -> Any:
    from iot_guard.policy.compiler import CompiledPolicy

    if not Path(directory).is_dir():
        raise _cli_error(f"{directory}: not a policy directory")
    return CompiledPolicy.load(directory)


def cmd_tools_export(args: argparse.Namespace) -> int:
    from .export import export_tools

    policy = _load(args.directory)
    try:
        tools = export_tools(
            policy, args.agent, args.format, _tool_list(args.token_tools), args.max_enum
        )
    except ExportError as exc:
        raise _cli_error(str(exc)) from exc
    print(json.dumps(tools, indent=2, ensure_ascii=False))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from iot_guard.tokens import TokenError, read_credential_file, unverified_claims

    from .tools import agent_tool_specs

    try:
        from .mcp_server import make_runtime, serve
    except ImportError as exc:
        raise _cli_error(
            f"the MCP server needs the optional extra: pip install 'iot-guard[mcp]' ({exc})"
        ) from exc
    host, port = args.guard
    policy = _load(args.policy)
    try:
        token = read_credential_file(args.token_file)
    except ValueError as exc:
        raise _cli_error(str(exc)) from None
    try:
        claims = unverified_claims(token)
    except TokenError as exc:
        raise _cli_error(f"{args.token_file}:1: {exc}") from exc
    if claims.agent_id != args.agent:
        raise _cli_error(
            f"{args.token_file}:1: the token is for agent {claims.agent_id!r}, not {args.agent!r}"
        )
    try:
        # The token's narrower tool list narrows what the model is offered, as the guard
        # narrows what it allows.
        specs = agent_tool_specs(policy, args.agent, claims.tools)
    except ExportError as exc:
        raise _cli_error(str(exc)) from exc
    tenants = sorted(policy.document.agents[args.agent].tenants)
    listen_host, listen_port = args.listen
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    runtime = make_runtime(
        specs, host, port, args.agent, args.token_file,
        reply_timeout=args.reply_timeout, read_timeout=args.read_timeout,
        ack_timeout=args.ack_timeout, token_warn_s=args.token_warn,
        max_delay=args.reconnect_max,
    )
    try:
        asyncio.run(
            serve(runtime, args.agent, tenants, args.transport, listen_host, listen_port)
        )
    except KeyboardInterrupt:
        return 130
    return 0


def register(commands: Any) -> None:
    """Add ``tools`` and ``mcp`` to the ``iot-guard`` subcommands."""
    # Loaded: this is called from its build_parser. The argument types are the CLI's own.
    from iot_guard.cli import _host_port, _name_arg, _positive_seconds, _whole_arg

    tools = commands.add_parser(
        "tools", help="an agent's allowlist as LLM tool definitions"
    ).add_subparsers(dest="tools_command", required=True)
    export = tools.add_parser(
        "export", help="print the agent's tools as OpenAI / Anthropic / MCP / JSON Schema"
    )
    export.add_argument("directory", help="policy directory")
    export.add_argument("--agent", required=True, type=_name_arg)
    export.add_argument("--token-tools", help="comma-separated narrower tool list (as a token)")
    export.add_argument("--format", choices=FORMATS, default="jsonschema")
    export.add_argument(
        "--max-enum", type=_whole_arg, default=None,
        help="longest list of registry names before the name pattern replaces it "
        f"(default per format: {DEFAULT_MAX_ENUM})",
    )
    export.set_defaults(handler=_one_line_errors(cmd_tools_export))

    mcp = commands.add_parser(
        "mcp", help="serve an agent's tools over MCP, run through the guard (extra: mcp)"
    )
    mcp.add_argument("--agent", required=True, type=_name_arg)
    mcp.add_argument("--guard", required=True, type=_host_port, help="HOST:PORT of the guard")
    mcp.add_argument("--token-file", required=True,
                     help="file with the agent's token (re-read on every reconnect)")
    mcp.add_argument("--policy", required=True, help="policy directory (the tools' schemas)")
    mcp.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    mcp.add_argument("--listen", default=("127.0.0.1", 8765), type=_host_port,
                     help="HOST:PORT for --transport http (path /mcp)")
    mcp.add_argument("--reply-timeout", type=_positive_seconds, default=10.0,
                     help="seconds to wait for a device's reply (default 10)")
    mcp.add_argument("--read-timeout", type=_positive_seconds, default=10.0,
                     help="seconds a read tool waits for a first message (default 10)")
    mcp.add_argument("--ack-timeout", type=_positive_seconds, default=10.0,
                     help="seconds to wait for the guard's answer or a connection (default 10)")
    mcp.add_argument("--token-warn", type=_positive_seconds, default=120.0,
                     help="report a token expiring within this many seconds (default 120)")
    mcp.add_argument("--reconnect-max", type=int, default=30,
                     help="longest wait between reconnect attempts, in seconds: the wait "
                     "starts at 1 s and doubles (default 30)")
    mcp.set_defaults(handler=_one_line_errors(cmd_mcp))
