"""The ``iot-guard`` command: run the proxy, mint tokens, check and explain policies."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .audit import AuditError
from .policy.loader import PolicyError

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _tool_list(text: str | None) -> list[str] | None:
    """``--tools a,b``: a narrower tool list, as a token carries it (None: no narrowing)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


class CliError(Exception):
    """A message for the operator; the command exits with EXIT_USAGE."""


# ----------------------------------------------------------------------------- run

RUN_SETTINGS = (
    "policy", "listen", "upstream", "secret_file", "upstream_username",
    "upstream_password_file", "audit_log", "tls_cert", "tls_key", "upstream_tls",
    "upstream_ca", "max_packet_size", "audit_key", "audit_checkpoint_records",
    "audit_checkpoint_seconds", "admin", "metrics", "mode", "observe",
)


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings from --config FILE, overridden by what the command line gives."""
    settings: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"{path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CliError(f"{path}:1: the config file must be a mapping of settings")
        unknown = sorted(set(k.replace("-", "_") for k in loaded) - set(RUN_SETTINGS))
        if unknown:
            raise CliError(f"{path}: unknown settings {unknown}; known: {list(RUN_SETTINGS)}")
        settings.update({k.replace("-", "_"): v for k, v in loaded.items()})
    for name in RUN_SETTINGS:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            settings[name] = value
    return settings


def _reopen_audit(server: Any) -> None:
    """SIGHUP: continue the audit chain in a new file at the same path (after logrotate)."""
    try:
        server.control.reopen_audit()
    except AuditError as exc:  # the old file stays in use: nothing is lost
        logging.getLogger("iot_guard").error("audit log not reopened: %s", exc)


OBSERVABLE_CHECKS = ("rate_limit", "anomaly")  # the kill switch always enforces


def _mode(s: dict[str, Any]) -> str:
    mode = str(s.get("mode", "enforce"))
    if mode not in ("enforce", "dry-run"):
        raise CliError(f"mode must be enforce or dry-run, not {mode!r}")
    return mode


def _observe(s: dict[str, Any]) -> frozenset[str]:
    names = frozenset(_tool_list(str(s["observe"])) or ()) if s.get("observe") else frozenset()
    unknown = sorted(names - set(OBSERVABLE_CHECKS))
    if unknown:
        raise CliError(f"--observe: unknown checks {unknown}; known: {list(OBSERVABLE_CHECKS)}")
    return names


def cmd_run(args: argparse.Namespace) -> int:
    from .approvals.addon import ApprovalsAddon
    from .proxy.server import GuardConfig, GuardServer, new_event_loop
    from .tokens import read_secret_file

    s = _run_settings(args)
    for required in ("policy", "upstream", "secret_file"):
        if required not in s:
            raise CliError(f"--{required.replace('_', '-')} is required (or set it in --config)")
    listen = _host_port(str(s.get("listen", "127.0.0.1:1884")))
    upstream = _host_port(str(s["upstream"]))
    try:
        secret = read_secret_file(s["secret_file"])
    except (OSError, ValueError) as exc:
        raise CliError(f"secret file: {exc}") from exc
    username = s.get("upstream_username") or os.environ.get("IOT_GUARD_UPSTREAM_USERNAME")
    password = os.environ.get("IOT_GUARD_UPSTREAM_PASSWORD")
    if s.get("upstream_password_file"):
        password = Path(s["upstream_password_file"]).read_text().strip()
    def path(name: str) -> Path | None:
        return Path(s[name]) if s.get(name) else None

    config = GuardConfig(
        policy_dir=Path(s["policy"]),
        listen_host=listen[0], listen_port=listen[1],
        upstream_host=upstream[0], upstream_port=upstream[1],
        secret=secret, upstream_username=username, upstream_password=password,
        audit_path=path("audit_log"),
        audit_key=path("audit_key"),
        audit_checkpoint_records=int(s.get("audit_checkpoint_records", 1000)),
        audit_checkpoint_seconds=float(s.get("audit_checkpoint_seconds", 10.0)),
        max_packet_size=int(s.get("max_packet_size", 256 * 1024)),
        tls_cert=path("tls_cert"),
        tls_key=path("tls_key"),
        upstream_tls=bool(s.get("upstream_tls", False)),
        upstream_ca=path("upstream_ca"),
        mode=_mode(s), observe=_observe(s),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    admin_at = _host_port(str(s["admin"])) if s.get("admin") else None
    metrics_at = _host_port(str(s["metrics"])) if s.get("metrics") else None

    async def serve() -> None:
        from .admin import AdminApp
        from .approvals.webhooks import WebhookNotifier

        # Held actions become approval requests (in the guard's state store); the webhook
        # sender and the admin API follow that service, so they come after it.
        addons: list[object] = [ApprovalsAddon(), WebhookNotifier()]
        admin = AdminApp(admin_at[0], admin_at[1], secret) if admin_at else None
        if admin is not None:
            addons.append(admin)
        if metrics_at is not None:
            from .admin.metrics import MetricsServer

            addons.append(MetricsServer(*metrics_at))
        server = GuardServer(config, addons=addons)
        try:
            await server.start()
        except (OSError, ValueError) as exc:  # a busy admin port, a webhook secret missing
            await server.stop()
            raise CliError(f"cannot start: {exc}") from None
        print(f"iot-guard listening on {config.listen_host}:{server.port}, upstream "
              f"{config.upstream_host}:{config.upstream_port}", file=sys.stderr, flush=True)
        if admin is not None:
            print(f"iot-guard admin API and approval console on {admin.url}", file=sys.stderr,
                  flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reopen_audit, server)  # logrotate's postrotate
        await stop.wait()
        await server.stop()

    loop = new_event_loop()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    return EXIT_OK


# ----------------------------------------------------------------------------- tokens

def cmd_token_issue(args: argparse.Namespace) -> int:
    from .tokens import ROLE_ADMIN, ROLE_AGENT, ROLE_APPROVER, issue_token, read_secret_file

    try:
        secret = read_secret_file(args.secret_file)
    except (OSError, ValueError) as exc:
        raise CliError(f"secret file: {exc}") from exc
    tools = _tool_list(args.tools)
    role, subject = (
        (ROLE_APPROVER, args.approver) if args.approver else
        (ROLE_ADMIN, args.admin) if args.admin else (ROLE_AGENT, args.agent)
    )
    if tools is not None and role != ROLE_AGENT:
        raise CliError("--tools narrows an agent's token; approver and admin tokens have none")
    if args.policy:
        from .policy.loader import load_policy

        document = load_policy(args.policy)
        if role != ROLE_AGENT:
            from .admin.directory import listed_problem

            problem = listed_problem(document, role, subject)
            if problem:
                raise CliError(f"{problem} ({args.policy})")
        else:
            agent = document.agents.get(subject)
            if agent is None:
                raise CliError(f"agent {subject!r} is not in the policy {args.policy}")
            extra = sorted(set(tools or []) - set(agent.tools))
            if extra:
                raise CliError(f"agent {subject!r} has no tools {extra}")
    print(issue_token(secret, subject, ttl_s=args.ttl, tools=tools, role=role))
    return EXIT_OK


def cmd_token_secret(args: argparse.Namespace) -> int:
    from .tokens import new_secret

    print(new_secret())
    return EXIT_OK


# ----------------------------------------------------------------------------- policy

def cmd_policy_check(args: argparse.Namespace) -> int:
    from .policy.compiler import CompiledPolicy

    policy = CompiledPolicy.load(args.directory)
    doc = policy.document
    devices = sum(len(t.devices) for t in doc.tenants.values())
    print(f"{args.directory}: ok: {len(doc.tenants)} tenants, {devices} devices, "
          f"{len(doc.device_types)} device types, {len(doc.tools)} tools, "
          f"{len(doc.agents)} agents")
    if not doc.agents:
        print(f"{args.directory}: warning: no agents, so every connection will be refused",
              file=sys.stderr)
    return EXIT_OK


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from .policy.compiler import CompiledPolicy
    from .policy.decision import Verdict
    from .session.feedback import explain_json, explain_text

    policy = CompiledPolicy.load(args.directory)
    tools = _tool_list(args.tools)
    agent = policy.for_agent(args.agent, frozenset(tools) if tools is not None else None)
    if agent is None:
        print(f"deny: agent {args.agent!r} is not in the policy (every action is denied)")
        return EXIT_DENIED
    if args.publish is not None:
        payload = (args.payload or "").encode()
        decision = agent.decide_publish(args.publish, payload, args.qos, args.retain)
        what = f"publish {args.publish}"
    elif args.subscribe is not None:
        decision = agent.decide_subscribe(args.subscribe, args.qos)
        what = f"subscribe {args.subscribe}"
    else:
        decision = agent.decide_receive(args.receive)
        what = f"receive {args.receive}"
    # The same rendering as the audit record and the $guard/events payload.
    render = explain_json if args.json else explain_text
    print(render(decision, args.agent, what))
    return EXIT_OK if decision.verdict is Verdict.ALLOW else EXIT_DENIED


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from .policy.schema import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iot-guard",
        description="An MQTT guard between AI ops agents and a device fleet's broker.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the guard proxy")
    run.add_argument("--config", help="YAML file with any of the settings below")
    run.add_argument("--policy", help="policy directory (YAML files)")
    run.add_argument("--listen", help="HOST:PORT agents connect to (default 127.0.0.1:1884)")
    run.add_argument("--upstream", help="HOST:PORT of the broker")
    run.add_argument("--secret-file", help="file holding the token signing secret")
    run.add_argument("--upstream-username", help="broker account (or IOT_GUARD_UPSTREAM_USERNAME)")
    run.add_argument("--upstream-password-file",
                     help="file with the broker password (or IOT_GUARD_UPSTREAM_PASSWORD)")
    run.add_argument("--audit-log", help="append audit JSON lines here (default: stderr)")
    run.add_argument("--audit-key", help="sign audit checkpoints with this key "
                     "(iot-guard audit keygen); its name is the chain's origin")
    run.add_argument("--audit-checkpoint-records", type=int,
                     help="sign a checkpoint every N records (default 1000)")
    run.add_argument("--audit-checkpoint-seconds", type=float,
                     help="... and every T seconds when records are unsigned (default 10)")
    run.add_argument("--tls-cert", help="certificate (PEM) for TLS on the listener")
    run.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    run.add_argument("--upstream-tls", action="store_true", help="connect to the broker over TLS")
    run.add_argument("--upstream-ca", help="CA bundle to verify the broker's certificate")
    run.add_argument("--max-packet-size", type=int, help="largest packet an agent may send")
    run.add_argument("--admin", metavar="HOST:PORT",
                     help="serve the admin API and the approval console here (with /metrics, "
                     "/healthz, /readyz)")
    run.add_argument("--mode", choices=("enforce", "dry-run"),
                     help="dry-run: decide everything, refuse nothing the policy or the "
                     "checks would refuse (audited as would_deny / would_hold)")
    run.add_argument("--observe", metavar="CHECKS",
                     help="comma-separated checks run in observe mode while the rest enforce "
                     "(rate_limit, anomaly)")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve /metrics (Prometheus), /healthz and /readyz here")
    run.set_defaults(handler=cmd_run)

    token = commands.add_parser("token", help="agent tokens").add_subparsers(
        dest="token_command", required=True
    )
    issue = token.add_parser(
        "issue", help="print a signed, short-lived token for an agent, approver or admin"
    )
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="an agent (MQTT password)")
    who.add_argument("--approver", metavar="ID", help="an approver of the policy (admin API)")
    who.add_argument("--admin", metavar="ID", help="an admin of the policy (admin API)")
    issue.add_argument("--secret-file", required=True)
    issue.add_argument("--ttl", type=float, default=900, help="seconds (default 900)")
    issue.add_argument("--tools", help="comma-separated narrower tool list")
    issue.add_argument("--policy", help="check the agent and tools against this policy")
    issue.set_defaults(handler=cmd_token_issue)
    secret = token.add_parser("secret", help="print a new random signing secret")
    secret.set_defaults(handler=cmd_token_secret)

    policy = commands.add_parser("policy", help="check and explain policies").add_subparsers(
        dest="policy_command", required=True
    )
    check = policy.add_parser("check", help="validate a policy directory")
    check.add_argument("directory")
    check.set_defaults(handler=cmd_policy_check)
    explain = policy.add_parser("explain", help="decide one request exactly as the proxy would")
    explain.add_argument("directory")
    explain.add_argument("--agent", required=True)
    what = explain.add_mutually_exclusive_group(required=True)
    what.add_argument("--publish", metavar="TOPIC")
    what.add_argument("--subscribe", metavar="FILTER")
    what.add_argument("--receive", metavar="TOPIC")
    explain.add_argument("--payload", help="publish payload (JSON text)")
    explain.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    explain.add_argument("--retain", action="store_true")
    explain.add_argument("--tools", help="comma-separated narrower tool list (as in a token)")
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.set_defaults(handler=cmd_policy_explain)
    schema = policy.add_parser("schema", help="print the policy format's JSON Schema")
    schema.set_defaults(handler=cmd_policy_schema)

    from .admin.cli import register as register_approvals
    from .audit.cli import register as register_audit

    register_approvals(commands)
    from .admin.brakes_cli import register as register_brakes  # kill, token revoke

    register_brakes(commands, token)
    register_audit(commands)

    from .agent.cli import register as register_agent_side  # tools export, mcp

    register_agent_side(commands)
    try:
        from simulator.cli import register
    except ImportError:  # the simulator ships in the same distribution; keep the CLI usable
        pass
    else:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PolicyError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"policy refused: {len(err.problems)} problem(s)", file=sys.stderr)
        return EXIT_DENIED
    except (CliError, AuditError) as err:
        print(f"iot-guard: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
