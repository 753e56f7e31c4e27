"""What the brakes cost: the relay and shadow benchmarks through a guard with rate limits,
every anomaly rule and a signed audit chain on, against one with none of them, each
against direct Mosquitto in the same run.

    python -m bench.brakes [--relay-n N] [--shadow-n N] [--window W] [--repeat R]

Both guards run the example fleet's policy (``device_policies``) with a signed audit chain
(``GuardProcess`` always passes an audit key): "off" without its ``limits`` and ``anomaly``
files; "on" with every anomaly rule in alert mode (rate spikes and off hours included) and
limits on the benchmark's tools that are high enough never to refuse (so every packet pays
for the takes, none is refused).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .args import count
from .broker import bench_broker
from .procs import REPO, GuardProcess
from .relay import Setup, run_relay, run_shadow
from .report import Row, table

LIMITS = """\
limits:
  connections: {per_minute: 600000, burst: 100000}
  subscriptions: {per_minute: 600000, burst: 100000}
  tools:
    shadow_update:
      per_agent: {per_minute: 60000000, burst: 1000000}
      per_session: {per_minute: 60000000, burst: 1000000}
      per_session_total: 100000000
  risks:
    low: {per_agent: {per_minute: 60000000, burst: 1000000}}
"""

ANOMALY = """\
anomaly:
  repeated_denials: {mode: alert, count: 10, window_s: 60}
  outside_tenants: {mode: alert}
  repeated_action: {mode: alert, count: 10}
  first_use: {mode: alert}
  rate_spike: {mode: alert, window_s: 1, warmup_windows: 3}
  off_hours: {mode: alert}
  working_hours: {timezone: UTC, days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00",
                  end: "23:59"}
"""


def policies(workdir: Path) -> tuple[Path, Path]:
    off, on = workdir / "policy-off", workdir / "policy-on"
    for target in (off, on):
        shutil.copytree(REPO / "device_policies", target)
    for name in ("limits.yaml", "anomaly.yaml"):
        (off / name).unlink(missing_ok=True)
    (on / "limits.yaml").write_text(LIMITS)
    (on / "anomaly.yaml").write_text(ANOMALY)
    return off, on


def log(text: str) -> None:
    print(text, flush=True)


def session_cost(policy_dir: Path, n: int = 20_000) -> float:
    """Microseconds one session takes to decide one valid shadow update (QoS 1), checks
    included, in this process: the per-packet cost without the network's noise."""
    import time

    from iot_guard.checks import Pipeline
    from iot_guard.checks.alerts import Alerts
    from iot_guard.checks.anomaly import AnomalyCheck
    from iot_guard.checks.rate_limit import RateLimitCheck
    from iot_guard.mqtt import Connack, Connect, Publish, encode
    from iot_guard.policy.compiler import CompiledPolicy
    from iot_guard.session import AgentData, AgentOpened, BrokerData, GuardSession, SessionSettings
    from iot_guard.state.ratelimit import LocalRateLimiter
    from iot_guard.tokens import issue_token, new_secret

    policy = CompiledPolicy.load(policy_dir)
    alerts = Alerts()
    pipeline = Pipeline([RateLimitCheck(LocalRateLimiter(), lambda: policy, alerts),
                         AnomalyCheck(lambda: policy, alerts)])
    secret = new_secret().encode()
    session = GuardSession(policy, SessionSettings(secret=secret), "bench-1", pipeline=pipeline)
    now = time.time()
    session.handle(AgentOpened("127.0.0.1:1"), now)
    token = issue_token(secret, "ops-agent", ttl_s=3600).encode()
    session.handle(AgentData(encode(Connect("c", 5, username="ops-agent", password=token), 5)),
                   now)
    session.handle(BrokerData(encode(Connack(0), 5)), now)
    topic = "tenants/acme/devices/therm-001/shadow/update"
    body = b'{"state":{"desired":{"target_temp_c":21}}}'
    packets = [AgentData(encode(Publish(topic, body, 1, packet_id=i % 60000 + 1), 5))
               for i in range(n)]
    started = time.perf_counter()
    for i, packet in enumerate(packets):
        session.handle(packet, now + i * 0.001)
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.brakes", description=__doc__)
    p.add_argument("--relay-n", type=count, default=200_000)
    p.add_argument("--shadow-n", type=count, default=30_000)
    p.add_argument("--window", type=count, default=100)
    p.add_argument("--repeat", type=count, default=1)
    p.add_argument("--session-only", action="store_true",
                   help="only the in-process decision cost (no broker)")
    args = p.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="iot-guard-bench-brakes-") as tmp:
        workdir = Path(tmp)
        off_policy, on_policy = policies(workdir)
        # Alternating, best of 5: the machine's other load only ever adds time.
        costs: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(5):
            costs["off"].append(session_cost(off_policy))
            costs["on"].append(session_cost(on_policy))
        off_us, on_us = min(costs["off"]), min(costs["on"])
        log(f"session decision per shadow update: brakes off {off_us:.1f} us, on {on_us:.1f} us")
        rows.append(Row("session decides one shadow update, in process (us, best of 5)",
                        f"{off_us:.1f}", f"{on_us:.1f}", f"{on_us / off_us:.2f}",
                        "off / on", None))
        if args.session_only:
            log(table(rows))
            return 0
        with bench_broker(workdir) as broker:
            for label, policy in (("brakes off", off_policy), ("brakes on ", on_policy)):
                run_dir = workdir / label.strip().replace(" ", "-")
                run_dir.mkdir()
                guard = GuardProcess(policy, broker.port, run_dir)
                try:
                    setup = Setup(broker, guard, run_dir, guard.token("ops-agent"))
                    log(f"{label}: relay")
                    relay = run_relay(setup, args.relay_n, log, args.repeat)
                    log(f"{label}: shadow updates")
                    shadow = run_shadow(setup, args.shadow_n, args.window, log, args.repeat)
                finally:
                    guard.stop()
                for row in (*relay, *shadow):
                    row.name = f"[{label}] {row.name}"
                    rows.append(row)
    log("")
    log(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
