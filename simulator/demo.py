"""The demo a newcomer runs first (``make demo``): a scripted ops agent through the guard.

It starts a locked-down Mosquitto, the example fleet (13 virtual thermostats) and the guard,
then an agent that holds nothing but a short-lived token tries, step by step, what an LLM
ops agent would: read telemetry, read another tenant, change a shadow, send a bad value,
grab everything with a wildcard, patch one device, push a high-risk change to a group.
Each step prints what the agent saw (acknowledgement codes, the guard's reason) and what the
device did. A summary table follows; everything started is stopped. Exit status 0 when every
step behaved as expected, 1 otherwise.
"""

from __future__ import annotations

import secrets
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

POLICY = Path(__file__).resolve().parents[1] / "device_policies"
ACME = "tenants/acme/devices"
GLOBEX = "tenants/globex/devices"
WAIT_S = 5.0


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
        GUARD_EVENTS, WAIT_S, where=lambda m: m.json().get("topic") == topic, since=since
    )
    event: dict[str, Any] = message.json()
    return event


def run(out: TextIO = sys.stdout, workdir: Path | None = None) -> int:
    """Run the demo; ``workdir`` (default: a new temp dir) keeps the audit log afterwards."""
    from iot_guard.policy.loader import load_policy
    from iot_guard.proxy.server import GuardThread
    from iot_guard.tokens import issue_token

    demo = Demo(out)
    document = load_policy(POLICY)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="iot-guard-demo-"))
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
    try:
        demo.say(
            f"mosquitto  : 127.0.0.1:{broker.port} (one account per device, ACL, anonymous refused)"
        )
        fleet = Fleet.on_broker(broker, document, telemetry_interval_s=1, boot_time_s=0.3)
        fleet.start(timeout=20)
        demo.say(f"fleet      : {len(fleet.devices)} devices online (acme: 10, globex: 3)")
        secret = secrets.token_bytes(32)
        guard = GuardThread(broker.guard_config(POLICY, secret, workdir / "audit.jsonl"))
        guard.start()
        demo.say(f"guard      : 127.0.0.1:{guard.port} -> broker, audit log {workdir}/audit.jsonl")
        token = issue_token(secret, "ops-agent", ttl_s=600)
        agent = AgentClient(
            "127.0.0.1", guard.port, username="ops-agent", password=token, protocol=5
        ).connect()
        demo.say("agent      : ops-agent (tenant acme), MQTT 5, holding only a 10-minute token")
        agent.subscribe(GUARD_EVENTS)
        _steps(demo, agent, fleet)
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
    if demo.steps:
        demo.table()
    ok = bool(demo.steps) and all(s.ok for s in demo.steps)
    demo.say()
    demo.say("every step behaved as expected" if ok else "some steps did not behave as expected")
    return 0 if ok else 1


def _steps(demo: Demo, agent: AgentClient, fleet: Fleet) -> None:
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

    def group_push() -> tuple[bool, str]:
        since = time.time()
        topic = "tenants/acme/groups/floor-1/config/push"
        ack = agent.publish(topic, {"firmware_channel": "beta"})
        event = _event_for(agent, topic, since)
        members = [fleet.device("acme", f"therm-00{n}") for n in range(1, 6)]
        untouched = all(d.config["firmware_channel"] == "stable" for d in members)
        held = event["decision"] in ("hold", "deny") and not ack.ok
        note = (
            "held for approval (no approval service yet, so it does not go)"
            if event["decision"] == "hold"
            else "refused"
        )
        return held and untouched, (
            f"PUBACK 0x{ack.reason_code:02x}; {note}: {event['reason']}; "
            f"floor-1 firmware {'unchanged' if untouched else 'CHANGED'}"
        )

    demo.step(
        "high-risk group push (firmware beta)",
        "held or refused until approvals exist",
        group_push,
    )


def main() -> int:
    return run(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
