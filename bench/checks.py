"""The check pipeline alone: CPU per request through ``Pipeline.run`` with the checks a
running guard registers (kill switch, rate limits, anomaly detection) on the example
policy, fed a realistic stream. No server, no audit, no I/O.

    python -m bench.checks [--n N] [--repeat R] [--policy DIR]

The stream is what the agents of ``bench.inproc`` and the suite do: mostly shadow updates
(every payload different, many devices), some shadow gets, identify_device commands (a
limited tool: a few are refused), group config pushes (quota per session), publishes on
another tenant's devices (refused: repeated denials, outside tenants), a loop of the same
command (repeated action), subscribes and reconnects; two agents, several sessions, the
clock moving 2 ms a request (baseline windows close as they would). Decisions are taken
from the compiled policy before the clock starts: what is timed is building the
``Request`` (as ``GuardSession._request`` does) and ``Pipeline.run``.

Prints microseconds of CPU per request (best of R), per allowed publish (the shadow
updates alone), and a digest of every verdict, reason, code, rule, observation and alert:
two versions of the checks that answer alike print the same digest.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iot_guard.checks import Pipeline, Request
from iot_guard.checks.alerts import Alerts
from iot_guard.checks.anomaly import AnomalyCheck
from iot_guard.checks.kill_switch import KillSwitchCheck
from iot_guard.checks.rate_limit import RateLimitCheck
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.state import FlagView
from iot_guard.state.ratelimit import LocalRateLimiter

from .args import count
from .procs import REPO
from .workers import shadow_update_payload

T0 = 1_700_000_000.0
STEP_S = 0.002
CONNECTED = Decision(Verdict.ALLOW, "token accepted", 0, "connect")

# (kind, agent, session, topic, payload, qos): one request of the stream.
Step = tuple[str, str, str, str, bytes | None, int]


def stream(n: int) -> list[Step]:
    """A deterministic mix (the same on every run and every version)."""
    steps: list[Step] = []
    sessions = {"ops-agent": ["ops-1", "ops-2", "ops-3"], "globex-agent": ["gx-1"]}
    devices = {"ops-agent": [f"tenants/acme/devices/therm-{k:03d}" for k in range(1, 11)],
               "globex-agent": [f"tenants/globex/devices/therm-{k}" for k in range(101, 104)]}
    groups = {"ops-agent": ["tenants/acme/groups/floor-1", "tenants/acme/groups/floor-2"],
              "globex-agent": ["tenants/globex/groups/lab"]}
    others = {"ops-agent": devices["globex-agent"], "globex-agent": devices["ops-agent"]}
    for i in range(n):
        agent = "ops-agent" if i % 5 else "globex-agent"
        session = sessions[agent][i % len(sessions[agent])]
        own = devices[agent][i % len(devices[agent])]
        slot = i % 100
        if slot < 78:
            steps.append(("publish", agent, session, f"{own}/shadow/update",
                          shadow_update_payload(i), 1))
        elif slot < 84:
            steps.append(("publish", agent, session, f"{own}/shadow/get", b"", 1))
        elif slot < 87:
            steps.append(("publish", agent, session, f"{own}/commands/identify", b"{}", 1))
        elif slot < 88:
            group = groups[agent][i % len(groups[agent])]
            payload = b'{"firmware_channel": "beta"}' if i % 300 == 87 else b'{"mode": "auto"}'
            steps.append(("publish", agent, session, f"{group}/config/push", payload, 1))
        elif slot < 92:
            other = others[agent][i % len(others[agent])]
            steps.append(("publish", agent, session, f"{other}/shadow/update",
                          shadow_update_payload(i), 1))
        elif slot < 95:  # a session of its own stuck in a loop, refused
            steps.append(("publish", "ops-agent", "ops-loop",
                          f"{devices['ops-agent'][0]}/commands/reboot", b"{}", 1))
        elif slot < 99:
            steps.append(("subscribe", agent, session, f"{own}/telemetry", None, 1))
        else:
            steps.append(("connect", agent, f"{session}-re{i}", "127.0.0.1:5000", None, 0))
    return steps


def decide(policy: CompiledPolicy, steps: list[Step]) -> list[Decision]:
    decisions = []
    for kind, agent, _session, topic, payload, qos in steps:
        agent_policy = policy.for_agent(agent)
        assert agent_policy is not None
        if kind == "publish":
            decisions.append(agent_policy.decide_publish(topic, payload or b"", qos, False))
        elif kind == "subscribe":
            decisions.append(agent_policy.decide_subscribe(topic, qos))
        else:
            decisions.append(CONNECTED)
    return decisions


def build(policy: Callable[[], CompiledPolicy]) -> tuple[Pipeline, Alerts]:
    """The pipeline ``GuardServer.start`` builds (no extra checks, enforce mode)."""
    alerts = Alerts()
    return Pipeline([
        KillSwitchCheck(FlagView()),
        RateLimitCheck(LocalRateLimiter(), policy, alerts),
        AnomalyCheck(policy, alerts),
    ]), alerts


def replay(policy: CompiledPolicy, steps: list[Step], decisions: list[Decision],
           *, idle: bool = False) -> tuple[float, list[Any]]:
    """CPU seconds of the loop, and every answer in order: judgements, alerts, then what
    the checks keep (limit hits, alert counts, the counts a fold would store). ``idle``:
    the same loop without the pipeline (its own cost, taken off the figures)."""
    pipeline, alerts = build(lambda: policy)
    out: list[Any] = []
    drain = alerts.drain
    run = pipeline.run
    gc.collect()
    started = time.process_time()
    for i, ((kind, agent, session, topic, payload, qos), decision) in enumerate(
            zip(steps, decisions, strict=True)):
        if idle:
            out.append(decision)
            continue
        # As GuardSession._request builds it.
        request = Request(kind, agent, session, "jti", topic, qos, False, payload)
        out.append(run(request, decision, T0 + i * STEP_S))
        if i % 512 == 0:  # the brakes addon drains on the next loop turn
            out.extend(drain())
    cpu_s = time.process_time() - started
    out.extend(drain())
    _kill, limits, anomaly = pipeline.checks
    assert isinstance(limits, RateLimitCheck) and isinstance(anomaly, AnomalyCheck)
    out += [sorted(limits.hits.items()), sorted(alerts.raised.items()), alerts.suppressed,
            sorted(anomaly.take_counts())]
    return cpu_s, out


def digest(answers: list[Any], policy_dir: Path) -> str:
    """A digest of the answers that does not depend on where the policy lives (rules name
    their file), so two checkouts can be compared."""
    h = hashlib.sha256()
    for item in answers:
        h.update(repr(item).replace(str(policy_dir), "<policy>").encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checks", description=__doc__)
    p.add_argument("--n", type=count, default=100_000)
    p.add_argument("--repeat", type=count, default=5, help="best of this many runs")
    p.add_argument("--policy", type=Path, default=REPO / "device_policies")
    args = p.parse_args(argv)
    policy_dir = args.policy.resolve()
    policy = CompiledPolicy.load(policy_dir)
    steps = stream(args.n)
    decisions = decide(policy, steps)
    # The allowed shadow updates alone: the path bench.inproc measures.
    shadow = [(s, d) for s, d in zip(steps, decisions, strict=True)
              if s[3].endswith("/shadow/update") and d.verdict is Verdict.ALLOW]
    only = ([s for s, _ in shadow], [d for _, d in shadow])
    mixed_s = shadow_s = idle_s = float("inf")
    digests = set()
    for _ in range(args.repeat):
        cpu_s, answers = replay(policy, steps, decisions)
        mixed_s = min(mixed_s, cpu_s)
        digests.add(digest(answers, policy_dir))
        shadow_s = min(shadow_s, replay(policy, *only)[0])
        idle_s = min(idle_s, replay(policy, steps, decisions, idle=True)[0])
    if len(digests) != 1:
        raise RuntimeError(f"runs answered differently: {sorted(digests)}")
    idle = idle_s / len(steps) * 1e6
    print(f"check pipeline CPU (Request + Pipeline.run; the loop's own {idle:.3f} us taken "
          f"off), best of {args.repeat}: {mixed_s / len(steps) * 1e6 - idle:.3f} us per "
          f"request of {args.n:,} mixed; {shadow_s / len(shadow) * 1e6 - idle:.3f} us per "
          f"allowed shadow update ({len(shadow):,} alone); answers digest "
          f"{digests.pop()} ({len(answers):,} items)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
