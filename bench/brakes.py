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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.brakes", description=__doc__)
    p.add_argument("--relay-n", type=int, default=200_000)
    p.add_argument("--shadow-n", type=int, default=30_000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="iot-guard-bench-brakes-") as tmp:
        workdir = Path(tmp)
        off_policy, on_policy = policies(workdir)
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
