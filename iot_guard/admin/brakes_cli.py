"""``iot-guard kill`` and ``iot-guard token revoke``: through the admin API (an admin
token), or straight into the state store when the API is unreachable (``--state-dir DIR``
or ``--state URL``: the guard sees the change within its poll interval)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..state import ALL_AGENTS, StateError, open_state
from ..tokens import DEFAULT_MAX_TTL_S
from .cli import EXIT_OK, UsageError, add_connection_options, client_from, run


def register(subparsers: Any, token_subparsers: Any) -> None:
    # Loaded: this is called from its build_parser. The argument types are the CLI's own.
    from ..cli import _name_arg, _positive_seconds, _text_arg

    kill = subparsers.add_parser(
        "kill", help="stop an agent (or every agent) now: refuse, disconnect, cancel approvals")
    who = kill.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", type=_name_arg)
    who.add_argument("--all", action="store_true", help="every agent")
    kill.add_argument("--reason", help="why (required to kill; shown to the agent)")
    kill.add_argument("--lift", action="store_true",
                      help="lift the switch (tokens issued before the kill stay void)")
    _local_options(kill)
    kill.set_defaults(handler=run(cmd_kill))

    revoke = token_subparsers.add_parser(
        "revoke", help="revoke one token (JTI) or every token of an agent issued before now")
    revoke.add_argument("jti", nargs="?", help="the token's id (jti claim)")
    revoke.add_argument("--agent", metavar="ID", type=_name_arg,
                        help="void every token of ID issued before now")
    revoke.add_argument("--expires-at", type=_positive_seconds,
                        help="the token's exp (epoch seconds)")
    revoke.add_argument("--reason", required=True, type=_text_arg)
    _local_options(revoke)
    revoke.set_defaults(handler=run(cmd_revoke))


def _local_options(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    parser.add_argument("--state-dir", metavar="DIR",
                        help="write to the guard's state directly (when the API is down)")
    parser.add_argument("--state", metavar="URL", help="the same for a redis:// state")
    parser.add_argument("--by", default="local operator",
                        help="who acts, for the audit log (with --state-dir/--state)")


def _local(args: argparse.Namespace) -> str | None:
    return args.state or args.state_dir


def _offline(spec: str, act: Any) -> Any:
    async def go() -> Any:
        state = await open_state(spec, poll_s=0)
        try:
            return await act(state)
        finally:
            await state.close()

    try:
        return asyncio.run(go())
    except StateError as exc:
        raise UsageError(str(exc)) from None


def cmd_kill(args: argparse.Namespace) -> int:
    agent = ALL_AGENTS if args.all else args.agent
    if not args.lift and not (args.reason and args.reason.strip()):
        raise UsageError("give --reason: it goes to the audit log and to the agent")
    spec = _local(args)
    if spec:
        if args.lift:
            answer = {"lifted": _offline(spec, lambda s: s.flags.lift(agent, args.by))}
        else:
            kill = _offline(spec, lambda s: s.flags.kill(agent, args.reason, args.by))
            answer = {"kill": {"agent": kill.agent, "reason": kill.reason, "by": kill.by,
                               "at": kill.at}}
    else:
        body: dict[str, Any] = {"all": True} if args.all else {"agent": args.agent}
        if args.reason:
            body["reason"] = args.reason
        client = client_from(args)
        answer = client.call("POST", "/api/kill/lift" if args.lift else "/api/kill", body)
    who = "every agent" if args.all else args.agent
    if args.lift:
        print(f"kill switch for {who} {'lifted' if answer.get('lifted') else 'was not in force'}")
    else:
        print(f"kill switch for {who} in force: {json.dumps(answer['kill'])}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    if bool(args.jti) == bool(args.agent):
        raise UsageError("give a token id (JTI) or --agent ID, not both")
    spec = _local(args)
    if spec:
        if args.jti:
            expires = args.expires_at or time.time() + DEFAULT_MAX_TTL_S
            _offline(spec, lambda s: s.flags.revoke(args.jti, expires_at=expires,
                                                    reason=args.reason, agent=None))
        else:
            _offline(spec, lambda s: s.flags.void_tokens_before(args.agent, time.time(),
                                                                args.reason))
    else:
        body: dict[str, Any] = {"reason": args.reason}
        if args.jti:
            body["jti"] = args.jti
            if args.expires_at:
                body["expires_at"] = args.expires_at
        else:
            body["agent"] = args.agent
        client_from(args).call("POST", "/api/tokens/revoke", body)
    print(f"revoked {args.jti}" if args.jti else
          f"every token of {args.agent} issued before now is void", file=sys.stdout)
    return EXIT_OK
