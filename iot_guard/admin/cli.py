"""``iot-guard approvals list | show ID | approve ID | deny ID [--reason TEXT]``.

Talks to the admin API of a running guard. Exit codes: 0 done, 1 the server refused (its
message is printed), 2 usage or connection error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ..printable import one_line
from .client import AdminClient, ConnectionFailed, Refused

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
URL_ENV, TOKEN_ENV = "IOT_GUARD_ADMIN_URL", "IOT_GUARD_ADMIN_TOKEN"


class UsageError(Exception):
    pass


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--admin URL`` and ``--token-file F`` (also used by later admin commands)."""
    parser.add_argument("--admin", metavar="URL", help=f"admin API URL (or {URL_ENV})")
    parser.add_argument("--token-file", metavar="F",
                        help=f"file holding an approver/admin token (or {TOKEN_ENV})")


def client_from(args: argparse.Namespace) -> AdminClient:
    url = args.admin or os.environ.get(URL_ENV)
    if not url:
        raise UsageError(f"give --admin URL or set {URL_ENV}")
    if args.token_file:
        from ..tokens import read_credential_file

        try:
            token = read_credential_file(args.token_file)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"give --token-file F or set {TOKEN_ENV}")
    try:
        return AdminClient(url, token)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------- formatting

def _left(view: dict[str, Any], now: float) -> str:
    if view.get("status") not in ("pending", "escalated"):
        return "-"
    deadline = view.get("level_deadline") or view.get("expires_at")
    if not isinstance(deadline, int | float):
        return "?"
    left = int(deadline - now)
    return "due" if left <= 0 else (f"{left // 60}m{left % 60:02d}s" if left >= 60 else f"{left}s")


def _age(created: Any, now: float) -> str:
    if not isinstance(created, int | float):
        return "?"
    age = int(now - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age // size}{unit}"
    return f"{age}s"


def _clean(value: Any) -> str:
    """One line of printable text: a payload cannot move the terminal's cursor."""
    return one_line(value if isinstance(value, str) else json.dumps(value))


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_list(answer: dict[str, Any]) -> str:
    views = answer.get("requests", [])
    if not views:
        return "no approval requests"
    now = float(answer.get("server_time") or time.time())
    rows = [[
        _clean(v.get("id")), _clean(v.get("status")), _clean(v.get("level")),
        _clean(v.get("agent_id")), _clean(v.get("tool")), _clean(v.get("topic")),
        str(len(v.get("devices") or [])), _clean(v.get("risk")), _left(v, now),
        _age(v.get("created_at"), now),
    ] for v in views]
    out = table(["ID", "STATUS", "LEVEL", "AGENT", "TOOL", "TOPIC", "DEVICES", "RISK", "LEFT",
                 "AGE"], rows)
    if answer.get("count", len(views)) > len(views):
        out += f"\n({len(views)} of {answer['count']} shown)"
    return out


def format_view(view: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    fields = [
        ("id", view.get("id")), ("status", view.get("status")), ("level", view.get("level")),
        ("time left", _left(view, now)), ("agent", view.get("agent_id")),
        ("session", view.get("session_id")), ("tool", view.get("tool")),
        ("topic", view.get("topic")), ("qos/retain", f"{view.get('qos')}/{view.get('retain')}"),
        ("risk", view.get("risk")), ("why held", view.get("reason")),
        ("outcome", view.get("outcome")), ("rule", view.get("rule")),
        ("may decide", ", ".join(view.get("approvers_at_level") or [])),
        ("policy", view.get("policy_version")), ("digest", view.get("digest")),
        ("payload", view.get("payload")),
    ]
    lines = [f"{label + ':':<12} {_clean(value)}" for label, value in fields if value is not None]
    changes = view.get("changes") or []
    if changes:
        lines += ["", "changes:", table(["FIELD", "CURRENT", "PROPOSED", "RISK"], [[
            _clean(c.get("field")),
            "unknown" if c.get("current") is None else _clean(c.get("current")),
            _clean(c.get("proposed")), _clean(c.get("risk")),
        ] for c in changes])]
    devices = view.get("devices") or []
    lines += ["", f"devices ({len(devices)}): " + ", ".join(_clean(d) for d in devices)]
    history = view.get("history") or []
    if history:
        lines += ["", "history:", table(["AT", "WHO", "ACTION", "REASON"], [[
            _age(h.get("at"), now) + " ago", _clean(h.get("who")), _clean(h.get("action")),
            _clean(h.get("reason") or ""),
        ] for h in history])]
    rollout = view.get("rollout")
    if rollout:
        counts = ", ".join(f"{k} {v}" for k, v in (rollout.get("counts") or {}).items() if v)
        lines += ["", f"rollout: {_clean(rollout.get('status'))} ({counts})"]
        devices_state = rollout.get("devices") or []
        if devices_state:
            lines.append(table(["DEVICE", "STATUS", "DETAIL"], [[
                _clean(d.get("device")), _clean(d.get("status")), _clean(d.get("detail") or ""),
            ] for d in devices_state]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands

def cmd_list(args: argparse.Namespace) -> int:
    answer = client_from(args).list(args.status, args.limit)
    print(json.dumps(answer, indent=2) if args.json else format_list(answer))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    view = client_from(args).show(args.id)
    print(json.dumps(view, indent=2) if args.json else format_view(view))
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    view = client_from(args).decide(args.id, args.verb, args.reason)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(f"{_clean(view.get('id'))}: {_clean(view.get('status'))}"
              + (f" (level {view.get('level')})" if view.get("status") == "escalated" else ""))
    return EXIT_OK


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000, got {text!r}")
    return int(text)


def register(subparsers: Any) -> None:
    """Add ``approvals`` to the ``iot-guard`` command (called by iot_guard.cli)."""
    approvals = subparsers.add_parser(
        "approvals", help="list, show, approve and deny held actions (admin API)"
    ).add_subparsers(dest="approvals_command", required=True)

    listing = approvals.add_parser("list", help="requests, newest first")
    listing.add_argument("--status", help="e.g. pending, open (pending+escalated), done; a,b")
    listing.add_argument("--limit", type=_limit, default=100, help="at most N (default 100)")
    show = approvals.add_parser("show", help="one request: change, devices, history, rollout")
    show.add_argument("id")
    approve = approvals.add_parser("approve", help="approve at your level")
    approve.add_argument("id")
    approve.add_argument("--reason")
    deny = approvals.add_parser("deny", help="deny (give a reason)")
    deny.add_argument("id")
    deny.add_argument("--reason")
    for parser, handler in ((listing, cmd_list), (show, cmd_show), (approve, cmd_decide),
                            (deny, cmd_decide)):
        add_connection_options(parser)
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        parser.set_defaults(handler=run(handler))
    approve.set_defaults(verb="approve")
    deny.set_defaults(verb="deny")


def run(handler: Any) -> Any:
    """Map the client's errors to exit codes with one line on stderr."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except Refused as err:
            print(f"iot-guard: refused: {err}", file=sys.stderr)
            return EXIT_REFUSED
        except (UsageError, ConnectionFailed) as err:
            print(f"iot-guard: {err}", file=sys.stderr)
            return EXIT_USAGE

    return wrapped
