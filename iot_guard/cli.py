"""The ``iot-guard`` command: run the proxy, mint tokens, check and explain policies.

Exit codes: 0 ok; 1 refused (a policy that does not load, a decision that denies);
2 a usage or configuration error, always one line per problem and never a traceback.

Subcommands of other parts register themselves: a module of this package listed in
``COMMAND_MODULES``, or any installed distribution through the ``iot_guard.commands`` entry
point group, exposes ``register(subparsers)``. The simulator's ``simulate`` comes in that
way, so this module never imports the simulator (it is optional for the guard).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .audit import AuditError
from .policy_error import PolicyError
from .settings import RunSettings, SettingsError, flag_name, parse_host_port, unknown_env

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2
ENTRY_POINT_GROUP = "iot_guard.commands"
# Modules of this package that add subcommands (each has ``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = (".admin.cli", ".audit.cli", ".agent.cli")

log = logging.getLogger("iot_guard.cli")


class CliError(Exception):
    """A message for the operator; the command exits with EXIT_USAGE."""


def _tool_list(text: str | None) -> list[str] | None:
    """``--tools a,b``: a narrower tool list, as a token carries it (None: not given)."""
    if text is None:
        return None
    tools = [t.strip() for t in text.split(",") if t.strip()]
    if not tools:
        # An empty list must never read as "no narrowing": that would widen the token.
        raise CliError(
            "--tools names no tool: give at least one (a,b) or leave --tools out to keep "
            "all of the agent's tools"
        )
    return tools


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# ----------------------------------------------------------------------------- secrets

def read_secret(path: Path, *, for_run: bool) -> bytes:
    """The signing secret from ``path``; for ``run``, refuse a file others may read."""
    from .tokens import read_secret_file

    try:
        mode = path.stat().st_mode
        secret = read_secret_file(path)
    except OSError as exc:
        raise CliError(
            f"secret file {path}: {_reason(exc)} (make one with "
            f"`iot-guard token secret --out {path}`)"
        ) from None
    except ValueError as exc:
        raise CliError(f"secret file {path}: {exc}") from None
    if for_run and mode & stat.S_IRWXO:
        # Anyone who reads the secret can mint tokens for every agent. Group access is
        # allowed (a service group, e.g. root:iot-guard 0640, is the usual deployment).
        raise CliError(
            f"secret file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod o-rwx {path}` (0600 or 0640)"
        )
    return secret


# ----------------------------------------------------------------------------- run

def _run_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {name: getattr(args, name, None) for name in RunSettings.model_fields}
    if not getattr(args, "upstream_tls", False):
        flags["upstream_tls"] = None  # store_true's False means "not given"
    return flags


def _upstream_password(settings: RunSettings) -> str | None:
    if settings.upstream_password_file is not None:
        from .tokens import read_credential_file

        try:
            return read_credential_file(settings.upstream_password_file)
        except ValueError as exc:
            raise CliError(f"upstream password file {exc}") from None
    if settings.upstream_password is not None:
        return settings.upstream_password.get_secret_value()
    return None


def _check_readable(settings: RunSettings) -> None:
    """Files the guard opens later: say now, in one line, which one is missing."""
    for name in ("tls_cert", "tls_key", "upstream_ca", "audit_key"):
        path = getattr(settings, name)
        if path is not None and not os.access(path, os.R_OK):
            why = "does not exist" if not path.exists() else "is not readable"
            raise CliError(f"{flag_name(name)} {path} {why}")


def load_run_policy(settings: RunSettings) -> Any:
    """The compiled policy, refusing one with no agents (it would refuse everyone)."""
    from .policy.compiler import CompiledPolicy

    policy = CompiledPolicy.load(settings.policy)
    if not policy.document.agents:
        files = len(policy.source.files) if policy.source is not None else 0
        raise PolicyError([
            f"{settings.policy}: no agents in the policy ({files} policy file(s) read): "
            "a guard without agents refuses every connection, so it does not start "
            "(see `iot-guard policy check`)"
        ])
    return policy


def build_config(args: argparse.Namespace) -> tuple[RunSettings, Any, Any]:
    """Settings, GuardConfig and the compiled policy, every check before anything opens."""
    from .proxy.server import GuardConfig

    config_file = args.config
    if isinstance(args.check_config, str):
        if config_file is not None and config_file != args.check_config:
            raise CliError("give the config file once: --config FILE or --check-config FILE")
        config_file = args.check_config
    settings = RunSettings.load(_run_flags(args), config_file)
    secret = read_secret(settings.secret_file, for_run=True)
    password = _upstream_password(settings)
    _check_readable(settings)
    policy = load_run_policy(settings)
    listen, upstream = settings.listen_address, settings.upstream_address
    config = GuardConfig(
        policy_dir=settings.policy,
        listen_host=listen.host, listen_port=listen.port,
        upstream_host=upstream.host, upstream_port=upstream.port,
        secret=secret,
        upstream_username=settings.upstream_username, upstream_password=password,
        audit_path=settings.audit_log,
        audit_key=settings.audit_key,
        audit_checkpoint_records=settings.audit_checkpoint_records,
        audit_checkpoint_seconds=settings.audit_checkpoint_seconds,
        max_packet_size=settings.max_packet_size,
        connect_timeout=settings.connect_timeout,
        read_coalesce_ms=settings.read_coalesce_ms,
        tls_cert=settings.tls_cert, tls_key=settings.tls_key,
        upstream_tls=settings.upstream_tls, upstream_ca=settings.upstream_ca,
        state=settings.state, mode=settings.mode, observe=frozenset(settings.observe),
    )
    return settings, config, policy


def cmd_run(args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .proxy.server import new_event_loop

    settings, config, policy = build_config(args)
    configure_logging(settings.log_level, settings.log_format)
    for name in unknown_env(os.environ):
        log.warning("environment variable %s names no setting; it is ignored", name)
    for path in policy.source.ignored if policy.source is not None else ():
        log.warning("%s: not read (only the policy folder's top-level files are)", path)
    if config.upstream_username is None:
        log.warning(
            "no upstream credentials: the guard logs in to the broker anonymously; set "
            "upstream_username and upstream_password_file (or IOT_GUARD_UPSTREAM_PASSWORD)"
        )
    if args.check_config:
        doc = policy.document
        print(
            f"config ok: listen {settings.listen}, upstream {settings.upstream}, policy "
            f"{settings.policy} ({len(doc.agents)} agents, {len(doc.tools)} tools, "
            f"{sum(len(t.devices) for t in doc.tenants.values())} devices)"
        )
        return EXIT_OK
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_serve(settings, config, policy))
    finally:
        loop.close()


async def _serve(settings: RunSettings, config: Any, policy: Any) -> int:
    import ssl

    from .admin.app import AdminApp
    from .approvals.addon import ApprovalsAddon
    from .approvals.webhooks import WebhookNotifier
    from .proxy.server import GuardServer
    from .proxy.upstream_check import UpstreamChecker
    from .state.records import StateError

    # The upstream check first: its verdict on the guard's broker login is the first line
    # an operator needs. Held actions become approval requests (in the guard's state store);
    # the webhook sender and the admin API follow that service, so they come after it.
    addons: list[object] = [
        UpstreamChecker(settings.upstream_check_interval), ApprovalsAddon(), WebhookNotifier(),
    ]
    admin_at = parse_host_port(settings.admin) if settings.admin else None
    admin = AdminApp(admin_at.host, admin_at.port, config.secret) if admin_at else None
    if admin is not None:
        addons.append(admin)
    if settings.metrics:
        from .admin.metrics import MetricsServer

        at = parse_host_port(settings.metrics)
        addons.append(MetricsServer(at.host, at.port))
    try:
        server = GuardServer(config, policy, addons=addons)  # AuditError: one line (main)
    except ssl.SSLError as exc:  # a TLS file that holds no certificate or key
        raise CliError(f"cannot start: TLS: {exc.reason or exc} (check --tls-cert, "
                       "--tls-key and --upstream-ca)") from None
    # The handlers go in before the listener opens: a client may connect, be served and
    # send SIGTERM while start() still awaits its addons, and that must stop us cleanly
    # (exit 0, audit closed), not kill the process with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    try:
        await server.start()
    except OSError as exc:  # the listen (or admin) address is taken or not ours
        await server.stop()
        ports = "--listen, --admin or --metrics" if admin or settings.metrics else "--listen"
        raise CliError(
            f"cannot start: {_reason(exc)} (is another guard or broker on that port? "
            f"choose another {ports})"
        ) from None
    except (ValueError, StateError) as exc:  # a webhook secret missing; a state store
        await server.stop()                   # that cannot open (--state)
        raise CliError(f"cannot start: {exc}") from None
    if admin is not None:
        log.info("admin API and approval console on %s", admin.url)
    try:
        await stop.wait()
    finally:
        log.info("stopping: closing %d session(s)", len(server.links))
        await server.stop()
    return EXIT_OK


def _reload(server: Any) -> None:
    """SIGHUP (``systemctl reload``, logrotate's postrotate): load the policy again (the old
    one stays in force when the new one does not load; the control plane says why) and
    reopen the audit log at its path."""
    log.info("SIGHUP: reloading the policy and reopening the audit log")
    server.control.reload_policy()
    try:
        server.control.reopen_audit()
    except (AuditError, OSError) as exc:
        # The old descriptor stays open (or the next write fails closed): say so loudly.
        log.error("audit log not reopened: %s", exc)


# ----------------------------------------------------------------------------- tokens

def cmd_token_issue(args: argparse.Namespace) -> int:
    from .tokens import DEFAULT_MAX_TTL_S, ROLE_ADMIN, ROLE_AGENT, ROLE_APPROVER, issue_token

    secret = read_secret(Path(args.secret_file), for_run=False)
    tools = _tool_list(args.tools)
    role, subject = (
        (ROLE_APPROVER, args.approver) if args.approver else
        (ROLE_ADMIN, args.admin) if args.admin else (ROLE_AGENT, args.agent)
    )
    if tools is not None and role != ROLE_AGENT:
        raise CliError("--tools narrows an agent's token; approver and admin tokens have none")
    max_ttl = float(DEFAULT_MAX_TTL_S)
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
                known = ", ".join(sorted(document.agents)) or "none"
                raise CliError(f"agent {subject!r} is not in the policy {args.policy} "
                               f"(agents: {known})")
            unknown = sorted(set(tools or []) - set(document.tools))
            if unknown:
                raise CliError(f"no tools {unknown} in the policy {args.policy}")
            not_granted = sorted(set(tools or []) - set(agent.tools))
            if not_granted:
                raise CliError(f"agent {subject!r} has no tools {not_granted} "
                               f"(its tools: {', '.join(agent.tools) or 'none'})")
            max_ttl = float(agent.max_token_ttl_s)
    if args.ttl > max_ttl:
        where = (f"the agent's max_token_ttl_s in {args.policy}" if args.policy and
                 role == ROLE_AGENT else
                 "the default maximum; pass --policy to use the agent's max_token_ttl_s")
        raise CliError(f"--ttl {args.ttl:g} is longer than {max_ttl:g} s ({where})")
    print(issue_token(secret, subject, ttl_s=args.ttl, tools=tools, role=role))
    return EXIT_OK


def cmd_token_secret(args: argparse.Namespace) -> int:
    from .tokens import new_secret

    secret = new_secret()
    if args.out is None:
        print(secret)
        return EXIT_OK
    path = Path(args.out)
    try:
        # O_EXCL: never overwrite a secret in use (every token signed with it would die);
        # 0600 from the start, so the secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; remove it first to replace the secret") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {_reason(exc)}") from None
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    print(f"wrote a new token secret to {path} (mode 0600)", file=sys.stderr)
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
    for path in policy.source.ignored if policy.source is not None else ():
        print(f"{path}: warning: not read (only the policy folder's top-level files are)",
              file=sys.stderr)
    if not doc.agents:
        print(f"{args.directory}: warning: no agents, so every connection would be refused "
              "(`iot-guard run` does not start with this policy)", file=sys.stderr)
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
        if args.payload is None and decision.tool and not decision.allowed:
            kind = policy.document.tools[decision.tool].payload
            if kind != "none" and "payload" in decision.reason:
                # Without --payload the publish is empty; say that, not what JSON thinks.
                decision = _with_reason(
                    decision, f"payload is missing: tool {decision.tool} needs a {kind} "
                    "payload; give it with --payload '{...}'"
                )
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


def _with_reason(decision: Any, reason: str) -> Any:
    import dataclasses

    return dataclasses.replace(decision, reason=reason)


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from .policy.schema import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to read more, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _host_port_arg(text: str) -> str:
    """argparse type: the text, once it reads as HOST:PORT (settings parse it again)."""
    _host_port(text)
    return text


def _host_port(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT`` as (host, port) (also used by other commands' flags)."""
    try:
        return parse_host_port(text)  # a HostPort: a (host, port) tuple
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name_arg(text: str) -> str:
    """argparse type: an agent, approver or admin id: not blank, one printable line (an
    empty id named nobody, yet a token or a kill switch was issued for it)."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(f"expected an id, got {text!r}")
    return text


def _whole_arg(text: str) -> int:
    """argparse type: a whole number, 0 or more (a count, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _text_arg(text: str) -> str:
    """argparse type: a reason, for the audit log and the agent: not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be blank")
    return text


def _version() -> str:
    try:
        return metadata.version("iot-guard")
    except metadata.PackageNotFoundError:  # a source checkout that was not installed
        return __version__


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run the guard proxy",
        description="Run the guard. Every setting may also come from IOT_GUARD_<NAME> "
        "(e.g. IOT_GUARD_UPSTREAM_USERNAME) or the --config YAML file (keys as below without "
        "the dashes' prefix, e.g. `secret_file:`); flags win over the environment, the "
        "environment over the file. SIGHUP reloads the policy and reopens the audit log.",
    )
    run.add_argument("--config", help="YAML file with any of the settings below")
    run.add_argument("--check-config", nargs="?", const=True, metavar="FILE",
                     help="check the settings, files and policy, then exit (0: ok); "
                     "FILE, when given, is the --config file")
    run.add_argument("--policy", help="policy directory (its top-level *.yaml files)")
    run.add_argument("--listen", type=_host_port_arg,
                     help="HOST:PORT agents connect to (default 127.0.0.1:1884)")
    run.add_argument("--upstream", type=_host_port_arg,
                     help="HOST:PORT of the broker (default 127.0.0.1:1883)")
    run.add_argument("--secret-file", help="token signing secret (not readable by others)")
    run.add_argument("--upstream-username", help="the guard's broker account")
    run.add_argument("--upstream-password-file",
                     help="file with the broker password (or IOT_GUARD_UPSTREAM_PASSWORD)")
    run.add_argument("--audit-log", help="append audit JSON lines here (default: stderr)")
    run.add_argument("--audit-key", help="sign audit checkpoints with this key "
                     "(iot-guard audit keygen); its name is the chain's origin")
    run.add_argument("--audit-checkpoint-records",
                     help="sign a checkpoint every N records (default 1000)")
    run.add_argument("--audit-checkpoint-seconds",
                     help="... and every T seconds when records are unsigned (default 10)")
    run.add_argument("--tls-cert", help="certificate (PEM) for TLS on the listener")
    run.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    run.add_argument("--upstream-tls", action="store_true", help="connect to the broker over TLS")
    run.add_argument("--upstream-ca", help="CA bundle to verify the broker's certificate")
    run.add_argument("--max-packet-size", help="largest packet an agent may send (bytes)")
    run.add_argument("--connect-timeout", help="seconds for a CONNECT and for reaching the broker")
    run.add_argument("--read-coalesce-ms",
                     help="after a broker read of 1 KiB or more, wait this long (or for the "
                     "next write to it) before reading it again (default 1; 0: at once)")
    run.add_argument("--upstream-check-interval",
                     help="seconds between checks of the guard's broker login (default 30)")
    run.add_argument("--state", metavar="DIR|URL",
                     help="state store: a directory (SQLite) or redis://... (default: state/ "
                     "beside the audit log)")
    run.add_argument("--mode", help="enforce (default) | dry-run (refuse nothing, audit all)")
    run.add_argument("--observe", metavar="CHECK,...",
                     help="checks that only observe (audited as would_deny / would_hold)")
    run.add_argument("--admin", metavar="HOST:PORT", type=_host_port_arg,
                     help="serve the admin API and the approval console here (with /metrics, "
                     "/healthz, /readyz)")
    run.add_argument("--metrics", metavar="HOST:PORT", type=_host_port_arg,
                     help="serve /metrics (Prometheus), /healthz and /readyz here")
    run.add_argument("--log-level", help="debug | info (default) | warning | error")
    run.add_argument("--log-format", help="text (default) | json")
    run.set_defaults(handler=cmd_run)


def _add_token(commands: Any) -> Any:
    """``token issue`` and ``token secret``; returns the ``token`` subcommands (others add
    theirs: ``token revoke``)."""
    token = commands.add_parser("token", help="agent tokens").add_subparsers(
        dest="token_command", required=True
    )
    issue = token.add_parser(
        "issue", help="print a signed, short-lived token for an agent, approver or admin"
    )
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", type=_name_arg, help="an agent (MQTT password)")
    who.add_argument("--approver", metavar="ID", type=_name_arg,
                     help="an approver of the policy (admin API)")
    who.add_argument("--admin", metavar="ID", type=_name_arg,
                     help="an admin of the policy (admin API)")
    issue.add_argument("--secret-file", required=True)
    issue.add_argument("--ttl", type=_positive_seconds, default=900.0,
                       help="seconds (default 900; at most the agent's max_token_ttl_s, 24 h "
                       "unless the policy says otherwise)")
    issue.add_argument("--tools", help="comma-separated narrower tool list (not empty)")
    issue.add_argument("--policy", help="check the agent, tools and TTL against this policy")
    issue.set_defaults(handler=cmd_token_issue)
    secret = token.add_parser("secret", help="make a new random signing secret")
    secret.add_argument("--out", metavar="FILE",
                        help="write it to FILE (created with mode 0600; never overwritten) "
                        "instead of printing it")
    secret.set_defaults(handler=cmd_token_secret)
    return token


def _add_policy(commands: Any) -> None:
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


def _add_plugins(commands: Any) -> None:
    """Subcommands of this package's feature modules and of installed distributions."""
    for name in COMMAND_MODULES:
        importlib.import_module(name, __package__).register(commands)
    seen: set[str] = set()
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in seen or entry.name in commands.choices:
            continue  # the same distribution found twice on sys.path (e.g. mid-reinstall)
        seen.add(entry.name)
        try:
            register = entry.load()
        except ImportError as exc:  # a broken plugin must not take the guard's CLI down
            log.warning("iot-guard: command plugin %s not loaded: %s", entry.name, exc)
            continue
        register(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iot-guard",
        description="An MQTT guard between AI ops agents and a device fleet's broker.",
    )
    parser.add_argument("--version", action="version", version=f"iot-guard {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(commands)
    token = _add_token(commands)
    _add_policy(commands)
    from .admin.brakes_cli import register as register_brakes  # kill, token revoke

    register_brakes(commands, token)
    _add_plugins(commands)
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
    except SettingsError as err:
        for problem in err.problems:
            print(f"iot-guard: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, AuditError) as err:
        print(f"iot-guard: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
