"""The demo a newcomer runs first (``make demo``): a scripted ops agent through the guard.

It starts a locked-down Mosquitto, the example fleet (13 virtual thermostats) and the guard,
then an agent that holds nothing but a short-lived token tries, step by step, what an LLM
ops agent would: read telemetry, read another tenant, change a shadow, send a bad value,
grab everything with a wildcard, patch one device, push a high-risk change to a group. The
group push is held for a human: an approver approves it with ``iot-guard approvals approve``
and the guard rolls it out device by device; a second push is denied, a third expires after
escalating through three levels (the demo's copy of the policy has short timeouts).
Each step prints what the agent saw (acknowledgement codes, the guard's reason) and what the
device did. A summary table follows; everything started is stopped. Exit status 0 when every
step behaved as expected, 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .agent import GUARD_EVENTS, AgentClient
from .broker import BrokerUnavailable, MosquittoBroker
from .fleet import Fleet
from .registry import registry_devices

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "device_policies"
ACME = "tenants/acme/devices"
GLOBEX = "tenants/globex/devices"
WAIT_S = 5.0
FLOOR_1 = "tenants/acme/groups/floor-1/config/push"
APPROVALS = "$guard/approvals/"
# Approval levels in the demo's policy copy (seconds): level 1 long enough for the CLI to
# approve, levels 2 and 3 short so the third push visibly escalates and expires.
DEMO_TIMEOUTS = {"alice": 8, "bob": 1, "carol": 1}


def demo_policy(workdir: Path) -> Path:
    """device_policies with short approval timeouts (everything else as it is)."""
    target = workdir / "policy"
    shutil.copytree(POLICY, target, dirs_exist_ok=True)
    path = target / "approvals.yaml"
    text = path.read_text()
    for who, timeout in DEMO_TIMEOUTS.items():
        text = re.sub(rf"(approvers: \[{who}\], timeout_s: )\d+", rf"\g<1>{timeout}", text)
    path.write_text(text)
    return target


class ApproverCli:
    """``iot-guard approvals ...`` as an approver types it, against the guard's admin API."""

    def __init__(self, url: str, token_file: Path) -> None:
        self.url = url
        self.token_file = token_file

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return subprocess.run(
            [sys.executable, "-m", "iot_guard.cli", "approvals", *args,
             "--admin", self.url, "--token-file", str(self.token_file)],
            capture_output=True, text=True, timeout=60, env=env,
        )


@dataclass
class Step:
    title: str
    expected: str
    got: str = "(not run)"
    ok: bool = False


class Demo:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.steps: list[Step] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, expected: str, body: Callable[[], tuple[bool, str]]) -> None:
        n = len(self.steps) + 1
        step = Step(title, expected)
        self.steps.append(step)
        self.say()
        self.say(f"── Step {n}: {title}")
        self.say(f"   expected: {expected}")
        try:
            step.ok, step.got = body()
        except Exception as exc:  # a failed step is reported, the demo goes on
            step.ok, step.got = False, f"{type(exc).__name__}: {exc}"
        self.say(f"   {'✔' if step.ok else '✘'} {step.got}")

    def table(self) -> None:
        rows = [
            (str(i), s.title, s.expected, "ok" if s.ok else "FAIL", _first_clause(s.got))
            for i, s in enumerate(self.steps, 1)
        ]
        head = ("#", "step", "expected", "result", "what the agent got")
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        self.say()
        self.say("Summary")
        for row in [head, *rows]:
            self.say(
                "  "
                + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )


def _first_clause(text: str, limit: int = 40) -> str:
    first = text.split(";", 1)[0].split(": ", 1)[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _event_for(agent: AgentClient, topic: str, since: float) -> dict[str, Any]:
    """The guard's explanation (on $guard/events) for a refusal on ``topic``."""
    message = agent.expect(
        GUARD_EVENTS, WAIT_S, since=since,
        # Alerts (decision "alert") share the topic; the refusal's own event is wanted.
        where=lambda m: m.json().get("topic") == topic and m.json().get("decision") != "alert",
    )
    event: dict[str, Any] = message.json()
    return event


class AlertLog(logging.Handler):
    """The guard's alerts (its ``iot_guard.alerts`` log), shown after the steps."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(out: TextIO = sys.stdout, workdir: Path | None = None) -> int:
    """Run the demo in ``workdir``, which keeps the audit log and the broker's log
    afterwards; without one, in a temp folder that is removed at the end."""
    if workdir is not None:
        return _run(out, workdir)
    with tempfile.TemporaryDirectory(prefix="iot-guard-demo-") as temporary:
        return _run(out, Path(temporary))


def _run(out: TextIO, workdir: Path) -> int:
    from iot_guard.admin.app import AdminApp
    from iot_guard.admin.directory import PolicyDirectory
    from iot_guard.approvals.addon import ApprovalsAddon
    from iot_guard.policy.loader import load_policy
    from iot_guard.proxy.server import GuardThread
    from iot_guard.tokens import ROLE_APPROVER, issue_token

    demo = Demo(out)
    document = load_policy(POLICY)
    demo.say("iot-guard demo: an AI ops agent, a guard, and a fleet of 13 virtual thermostats")
    demo.say(f"policy: {POLICY}")
    try:
        (workdir / "broker").mkdir(parents=True, exist_ok=True)
        broker = MosquittoBroker(registry_devices(document), workdir=workdir / "broker")
        broker.start()
    except BrokerUnavailable as exc:
        demo.say(f"cannot start Mosquitto: {exc}")
        return 1
    fleet: Fleet | None = None
    guard: GuardThread | None = None
    agent: AgentClient | None = None
    alerts = AlertLog()
    logging.getLogger("iot_guard.alerts").addHandler(alerts)
    try:
        demo.say(
            f"mosquitto  : 127.0.0.1:{broker.port} (one account per device, ACL, anonymous refused)"
        )
        fleet = Fleet.on_broker(broker, document, telemetry_interval_s=1, boot_time_s=0.3)
        fleet.start(timeout=20)
        demo.say(f"fleet      : {len(fleet.devices)} devices online (acme: 10, globex: 3)")
        secret = secrets.token_bytes(32)
        policy_dir = demo_policy(workdir)
        approvals = ApprovalsAddon()  # in the guard's own state store
        holder: list[GuardThread] = []
        admin = AdminApp(
            "127.0.0.1", 0, secret,
            PolicyDirectory(lambda: holder[0].server.policy.document, approvals.service),
            approvals=approvals.service,
        )
        config = broker.guard_config(policy_dir, secret, workdir / "audit.jsonl")
        guard = GuardThread(config, addons=[approvals, admin])
        holder.append(guard)
        guard.start()
        demo.say(f"guard      : 127.0.0.1:{guard.port} -> broker, audit log {workdir}/audit.jsonl")
        demo.say(f"admin API  : {admin.url} (approvals: alice level 1, bob 2, carol 3)")
        token_file = workdir / "alice.token"
        token_file.write_text(issue_token(secret, "alice", ttl_s=600, role=ROLE_APPROVER))
        token_file.chmod(0o600)
        token = issue_token(secret, "ops-agent", ttl_s=600)
        agent = AgentClient(
            "127.0.0.1", guard.port, username="ops-agent", password=token, protocol=5
        ).connect()
        demo.say("agent      : ops-agent (tenant acme), MQTT 5, holding only a 10-minute token")
        agent.subscribe(GUARD_EVENTS)
        agent.subscribe(APPROVALS + "+")
        _steps(demo, agent, fleet, ApproverCli(admin.url, token_file))
    finally:
        demo.say()
        demo.say("stopping the agent, the guard, the fleet and Mosquitto ...")
        if agent is not None:
            agent.close()
        if guard is not None:
            guard.stop()
        if fleet is not None:
            fleet.stop()
        broker.close()
        logging.getLogger("iot_guard.alerts").removeHandler(alerts)
    if demo.steps:
        demo.table()
    if alerts.lines:
        demo.say()
        demo.say("alerts the guard raised (also in the audit log and on $guard/events):")
        for line in alerts.lines:
            demo.say(f"  {line}")
    ok = bool(demo.steps) and all(s.ok for s in demo.steps)
    demo.say()
    demo.say("every step behaved as expected" if ok else "some steps did not behave as expected")
    return 0 if ok else 1


def _notice(agent: AgentClient, request_id: str, statuses: tuple[str, ...],
            timeout: float = WAIT_S) -> dict[str, Any]:
    """The agent's latest notice on ``$guard/approvals/<id>`` with one of ``statuses``."""
    message = agent.expect(
        APPROVALS + request_id, timeout, where=lambda m: m.json()["status"] in statuses
    )
    notice: dict[str, Any] = message.json()
    return notice


def _held_id(reason: str | None) -> str | None:
    match = re.match(r"held for approval (\S+): ", reason or "")
    return match.group(1) if match else None


def _steps(demo: Demo, agent: AgentClient, fleet: Fleet, approver: ApproverCli) -> None:
    t1 = f"{ACME}/therm-001"
    device1 = fleet.device("acme", "therm-001")

    def read_telemetry() -> tuple[bool, str]:
        codes = agent.subscribe(f"{t1}/telemetry")
        if codes != [1]:
            return False, f"SUBACK {codes}"
        reading = agent.expect(f"{t1}/telemetry", WAIT_S).json()
        return True, (
            f"SUBACK granted; therm-001 reads {reading['temperature_c']} °C "
            f"(target {reading['target_temp_c']}, mode {reading['mode']})"
        )

    demo.step("read telemetry", "allowed: the agent receives readings", read_telemetry)

    def other_tenant() -> tuple[bool, str]:
        since = time.time()
        topic = f"{GLOBEX}/therm-101/telemetry"
        codes = agent.subscribe(topic)
        event = _event_for(agent, topic, since)
        return codes == [0x87], f"SUBACK 0x{codes[0]:02x}; guard: {event['reason']}"

    demo.step("read another tenant", "refused with 0x87 and a reason", other_tenant)

    def shadow_update() -> tuple[bool, str]:
        agent.subscribe(f"{t1}/shadow/update/accepted", f"{t1}/shadow/update/rejected")
        update = {"state": {"desired": {"target_temp_c": 22.5}}, "clientToken": "demo-1"}
        ack = agent.publish(f"{t1}/shadow/update", update)
        if not ack.ok:
            return False, f"PUBACK 0x{ack.reason_code:02x} {ack.reason_string}"
        reported = agent.expect(
            f"{t1}/shadow/update/accepted",
            WAIT_S,
            where=lambda m: m.json()["state"].get("reported", {}).get("target_temp_c") == 22.5,
        ).json()
        state = device1.state
        return state.reported["target_temp_c"] == 22.5 and not state.delta, (
            f"PUBACK success; therm-001 applied it and reported target_temp_c=22.5 "
            f"(shadow version {reported['version']})"
        )

    demo.step("valid shadow update", "forwarded; the device applies and reports", shadow_update)

    def out_of_range() -> tuple[bool, str]:
        since = time.time()
        before = device1.state
        bad = {"state": {"desired": {"target_temp_c": 45}}}
        ack = agent.publish(f"{t1}/shadow/update", bad)
        event = _event_for(agent, f"{t1}/shadow/update", since)
        unchanged = device1.state == before
        return ack.reason_code == 0x99 and unchanged, (
            f"PUBACK 0x{ack.reason_code:02x}: {ack.reason_string or event['reason']}; "
            f"device {'unchanged' if unchanged else 'CHANGED'}"
        )

    demo.step("out-of-range value (45 °C)", "refused with 0x99 naming the field", out_of_range)

    def wildcard() -> tuple[bool, str]:
        since = time.time()
        codes = agent.subscribe("tenants/#")
        event = _event_for(agent, "tenants/#", since)
        return codes == [0x87], f"SUBACK 0x{codes[0]:02x}; guard: {event['reason']}"

    demo.step("wildcard grab tenants/#", "refused: it reaches beyond the agent's tools", wildcard)

    def config_patch() -> tuple[bool, str]:
        agent.subscribe(f"{t1}/config/result")
        ack = agent.publish(f"{t1}/config/patch", {"mode": "heat", "clientToken": "demo-2"})
        if not ack.ok:
            return False, f"PUBACK 0x{ack.reason_code:02x} {ack.reason_string}"
        result = agent.expect(
            f"{t1}/config/result", WAIT_S, where=lambda m: m.json().get("clientToken") == "demo-2"
        ).json()
        return result["status"] == "applied" and device1.config["mode"] == "heat", (
            f"PUBACK success; config/result {result['status']} (mode={result['config']['mode']})"
        )

    demo.step("config patch to one device", "applied; result echoes the clientToken", config_patch)

    members = [fleet.device("acme", f"therm-00{n}") for n in range(1, 6)]
    held: dict[str, str] = {}

    def group_push() -> tuple[bool, str]:
        ack = agent.publish(FLOOR_1, {"firmware_channel": "beta"})
        request_id = _held_id(ack.reason_string)
        if ack.reason_code != 0x83 or request_id is None:
            return False, f"PUBACK 0x{ack.reason_code:02x} {ack.reason_string}"
        held["first"] = request_id
        notice = _notice(agent, request_id, ("pending",))
        untouched = all(d.config["firmware_channel"] == "stable" for d in members)
        return untouched, (
            f"PUBACK 0x83; held for approval {request_id} (the agent has the id); "
            f"$guard/approvals/{request_id}: {notice['status']} at level {notice['level']}, "
            f"{len(notice['devices'])} devices; floor-1 firmware "
            f"{'unchanged' if untouched else 'CHANGED'}"
        )

    demo.step("high-risk group push (firmware beta)", "held; the agent sees the id", group_push)

    def approve_and_roll_out() -> tuple[bool, str]:
        request_id = held.get("first")
        if request_id is None:
            return False, "nothing was held"
        since = time.time()
        cli = approver("approve", request_id, "--reason", "change window open")
        demo.say(f"   $ iot-guard approvals approve {request_id} --reason 'change window open'")
        for line in (cli.stdout + cli.stderr).strip().splitlines()[:3]:
            demo.say(f"     {line}")
        if cli.returncode != 0:
            return False, f"the CLI exited {cli.returncode}: {cli.stderr.strip()}"
        seen: set[tuple[int, int]] = set()
        final: dict[str, Any] = {}
        last = since
        while not final:
            # Each notice in turn, as the agent receives it (bounded: fails loudly).
            message = agent.expect(APPROVALS + request_id, 30, since=last)
            last = message.at + 1e-6
            n = message.json()
            if n.get("rollout"):
                c = n["rollout"]["counts"]
                key = (c["succeeded"], c["in_progress"])
                if key not in seen:
                    seen.add(key)
                    demo.say(f"   rollout: {c['succeeded']}/5 succeeded, "
                             f"{c['in_progress']} in progress, {c['queued']} queued")
            if n["status"] in ("done", "failed", "aborted", "void"):
                final = n
        reported = [d.state.reported.get("firmware_channel") for d in members]
        ok = final["status"] == "done" and reported == ["beta"] * 5
        return ok, (
            f"approved by alice; {final['status']}: {final['outcome']}; devices report "
            f"firmware_channel {sorted({str(r) for r in reported})}"
        )

    demo.step(
        "approve it with the CLI",
        "rolled out device by device; devices report beta",
        approve_and_roll_out,
    )

    def denied() -> tuple[bool, str]:
        ack = agent.publish(FLOOR_1, {"firmware_channel": "stable"})
        request_id = _held_id(ack.reason_string)
        if request_id is None:
            return False, f"PUBACK 0x{ack.reason_code:02x} {ack.reason_string}"
        cli = approver("deny", request_id, "--reason", "not during business hours")
        demo.say(f"   $ iot-guard approvals deny {request_id} --reason 'not during business hours'")
        if cli.returncode != 0:
            return False, f"the CLI exited {cli.returncode}: {cli.stderr.strip()}"
        notice = _notice(agent, request_id, ("denied",))
        unchanged = all(d.config["firmware_channel"] == "beta" for d in members)
        return unchanged, (
            f"held {request_id}; denied by alice: {notice['outcome']}; floor-1 "
            f"{'unchanged' if unchanged else 'CHANGED'}"
        )

    demo.step("a second push, denied", "denied with the reason; nothing sent", denied)

    def expires() -> tuple[bool, str]:
        topic = "tenants/acme/groups/floor-2/config/push"
        ack = agent.publish(topic, {"firmware_channel": "beta"})
        request_id = _held_id(ack.reason_string)
        if request_id is None:
            return False, f"PUBACK 0x{ack.reason_code:02x} {ack.reason_string}"
        notice = _notice(agent, request_id, ("expired",), timeout=DEMO_TIMEOUTS["alice"] + 15)
        levels = [m.json()["level"] for m in agent.received(APPROVALS + request_id)]
        floor_2 = [fleet.device("acme", f"therm-0{n:02d}") for n in range(6, 11)]
        unchanged = all(d.config["firmware_channel"] == "stable" for d in floor_2)
        return unchanged and notice["status"] == "expired", (
            f"held {request_id}; escalated through levels {sorted(set(levels))}; expired: "
            f"{notice['outcome']}; floor-2 {'unchanged' if unchanged else 'CHANGED'}"
        )

    demo.step("a third push nobody answers", "escalates 1 -> 2 -> 3, then expires", expires)

    def rate_limit() -> tuple[bool, str]:
        # The example policy: identify_device 20 a minute per agent, burst included.
        topic = f"{ACME}/therm-003/commands/identify"
        since = time.time()
        acks = [agent.publish(topic, {}) for _ in range(21)]
        passed = sum(ack.ok for ack in acks[:20])
        last = acks[20]
        event = _event_for(agent, topic, since)
        ok = passed == 20 and last.reason_code == 0x97 and event["decision"] == "deny"
        return ok, (
            f"{passed} of 20 identified; 21st PUBACK 0x{last.reason_code:02x}: "
            f"{last.reason_string}"
        )

    demo.step("21 identify commands in a minute", "20 pass, the 21st refused with 0x97",
              rate_limit)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m simulator.demo", description=__doc__)
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="run in DIR and keep the audit log and broker log there (default: a temp "
        "folder, removed at the end)",
    )
    args = parser.parse_args(argv)
    return run(sys.stdout, args.keep)


if __name__ == "__main__":
    sys.exit(main())
