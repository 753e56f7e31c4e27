"""``python -m bench`` (``make bench``): iot-guard against direct Mosquitto, in one run.

Prints each figure as it is measured, then one table: direct, guarded, ratio, goal.
Exit status 0 when every benchmark ran and delivered everything (a missed goal is a
result, not an error); 1 when one lost messages, answered wrongly or could not run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml

from .args import count, counts, positive
from .broker import bench_broker, mosquitto_binary
from .procs import REPO, GuardProcess, PassthroughProcess, raise_fd_limit
from .report import Row, table

BENCHES = ("relay", "shadow", "latency", "load", "idle", "approvals", "decisions", "audit",
           "scale", "inproc")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default=",".join(BENCHES),
                   help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run (~30 s)")
    p.add_argument("--relay-n", type=count, default=200_000, help="QoS 0 messages relayed")
    p.add_argument("--shadow-n", type=count, default=30_000, help="shadow updates published")
    p.add_argument("--window", type=count, default=100, help="QoS 1 messages in flight")
    p.add_argument("--latency-s", type=positive, default=4.0,
                   help="seconds of 1 msg/ms requests per mode")
    p.add_argument("--rate", type=positive, default=1000.0, help="latency requests per second")
    p.add_argument("--load-sessions", type=count, default=200, help="agent sessions under load")
    p.add_argument("--load-rate", type=positive, default=2000.0,
                   help="QoS 1 publishes per second, all load sessions together")
    p.add_argument("--load-s", type=positive, default=5.0, help="seconds measured per load run")
    p.add_argument("--subscribers", type=count, default=50, help="telemetry subscribers under load")
    p.add_argument("--telemetry-rate", type=positive, default=100.0,
                   help="telemetry messages per second under load (each to every subscriber)")
    p.add_argument("--idle-sessions", type=count, default=5000, help="idle sessions held at once")
    p.add_argument("--sizes", type=counts, default="10,100,1000,10000",
                   help="tenant counts for decisions")
    p.add_argument("--policy", type=Path, default=REPO / "device_policies",
                   help="policy directory the guard runs with")
    p.add_argument("--repeat", type=count, default=1,
                   help="run relay, shadow, load and idle direct/guard this many times,"
                        " alternating, and report the median (default 1: one run each)")
    p.add_argument("--profile-guard", type=Path, metavar="FILE",
                   help="run the guard under cProfile and write its stats to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.relay_n, args.shadow_n, args.latency_s = 30_000, 5_000, 1.0
        args.load_s, args.idle_sessions = 2.0, 1000
        args.sizes = [10, 1000]
    if args.profile_guard is not None:
        args.profile_guard = args.profile_guard.resolve()  # the guard runs from the repo root
    args.policy = args.policy.resolve()
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHES}")
    return args


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True,
                             timeout=5)
        mosq = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, RuntimeError, IndexError, subprocess.TimeoutExpired):
        mosq = "mosquitto (version unknown)"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {mosq}, "
        f"uvloop {version('uvloop')}, cedarpy {version('cedarpy')}\n"
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        + ("  (WARNING: something else is using the CPUs; figures will be noisy)"
           if load[0] > 0.7 else "")
    )


def policy_for_benches(source: Path, workdir: Path, sessions: int) -> Path:
    """A copy of the policy whose per-agent connection limit lets ``sessions`` CONNECTs of
    one agent through at once and whose group pushes are not rate-limited (the approvals
    bench parks 1,000 of them); every other rule as it is."""
    from .approvals import lift_push_limits

    target = workdir / "policy"
    shutil.copytree(source, target)
    lift_push_limits(target)
    for path in target.glob("*.yaml"):
        document = yaml.safe_load(path.read_text()) or {}
        connections = (document.get("limits") or {}).get("connections")
        if connections:
            connections["burst"] = max(int(connections.get("burst", 1)), sessions + 200)
            connections["per_minute"] = max(float(connections.get("per_minute", 1)),
                                            60.0 * (sessions + 200))
            path.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def log(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    log("iot-guard benchmarks: guard / direct Mosquitto, measured in this one run")
    log(machine())
    # Before the broker, the guard and the workers start: they inherit it.
    log(f"open files limit (soft): {raise_fd_limit():,}")
    rows: list[Row] = []
    errors: list[str] = []
    network = [b for b in args.only if b not in ("decisions", "audit", "inproc")]
    if network:
        from .approvals import run_approval_timing, run_relay_with_pending
        from .load import run_idle, run_load
        from .relay import Setup, run_latency, run_relay, run_shadow
        from .scale import run_relay_redis

        with tempfile.TemporaryDirectory(prefix="iot-guard-bench-") as tmp:
            workdir = Path(tmp)
            log(f"logs and audit log in {workdir} (removed at exit)")
            # Hundreds (load) to thousands (idle) of one agent's sessions connect at once:
            # the example policy's reconnect-storm limit would refuse them (0x9F).
            policy = policy_for_benches(args.policy, workdir,
                                       max(args.load_sessions, args.idle_sessions))
            with bench_broker(workdir) as broker:
                guard = GuardProcess(policy, broker.port, workdir, args.profile_guard)
                passthrough = None
                try:
                    passthrough = PassthroughProcess(broker.port, workdir)
                    setup = Setup(broker, guard, workdir, guard.token("ops-agent"), passthrough)
                    steps = {
                        "relay": lambda: run_relay(setup, args.relay_n, log, args.repeat),
                        "shadow": lambda: run_shadow(
                            setup, args.shadow_n, args.window, log, args.repeat),
                        "latency": lambda: run_latency(
                            setup, args.rate, args.latency_s, 200, 500, log),
                        "load": lambda: run_load(
                            setup, args.load_sessions, args.load_rate, args.load_s,
                            args.subscribers, args.telemetry_rate, log, args.repeat),
                        "idle": lambda: run_idle(setup, args.idle_sessions, log, args.repeat),
                        "scale": lambda: run_relay_redis(
                            broker, args.policy, workdir, args.relay_n, log, args.repeat),
                        # Last: it leaves 1,000 requests pending in the guard's state.
                        "approvals": lambda: [
                            *run_approval_timing(broker, args.policy, workdir, log),
                            *run_relay_with_pending(setup, args.relay_n, 1000, log, args.repeat),
                        ],
                    }
                    titles = {
                        "relay": "1. QoS 0 relay broker -> agent (publisher, consumer, guard and"
                                 " broker in separate processes)",
                        "shadow": f"2. validated shadow updates agent -> device (QoS 1, at most "
                                  f"{args.window} in flight)",
                        "latency": f"3. round trip shadow/get -> get/accepted at "
                                   f"{args.rate:,.0f} msg/s (direct and guarded links in "
                                   f"alternating blocks of 500)",
                        "load": f"4. QoS 1 ack latency under load: {args.load_sessions} agent"
                                f" sessions publishing {args.load_rate:,.0f} msg/s (allowed and"
                                f" refused mixed) while {args.subscribers} agents receive"
                                f" {args.telemetry_rate:,.0f} telemetry msg/s each",
                        "approvals": "7. approvals: approve call -> first device receives"
                                     " the change; rollout pacing against max_per_minute;"
                                     " the QoS 0 relay with 1,000 requests pending",
                        "scale": "8. QoS 0 relay through a guard with its state on Redis vs"
                                 " the embedded state (two guard processes, alternating runs)",
                        "idle": f"5. memory per session: {args.idle_sessions:,} idle agent"
                                f" sessions held at once (RSS growth over a 200-session"
                                f" baseline)",
                    }
                    for name in network:
                        log(titles[name])
                        try:
                            rows += steps[name]()
                        except (RuntimeError, TimeoutError, OSError) as exc:
                            errors.append(f"{name}: {exc}")
                            log(f"  FAILED: {exc}")
                finally:
                    guard.stop()
                    if passthrough is not None:
                        passthrough.stop()
                from .audit import verify_guard_log

                rows.append(verify_guard_log(guard.audit_path, guard.audit_pub, log))
                if args.profile_guard:
                    log(f"guard profile written to {args.profile_guard} "
                        f"(python -m pstats {args.profile_guard})")
    if "decisions" in args.only:
        from .decisions import run_decisions

        log("6. decision latency: compiled policy vs cedarpy (pre-parsed PolicySet and Entities)"
            " on an equivalent policy, N tenants x 10 devices, one agent per tenant")
        rows += run_decisions(args.sizes, compiled_n=5_000, cedar_n=2_000, passes=5, log=log)
    if "audit" in args.only:
        from .audit import run_audit

        log("7. audit chain: writing chained records (vs plain JSON lines) and verifying them")
        with tempfile.TemporaryDirectory(prefix="iot-guard-bench-audit-") as tmp:
            rows += run_audit(Path(tmp), 20_000 if args.quick else 200_000, 3, log)
    if "inproc" in args.only:
        from .inproc import run_inproc

        log("9. the guard's own CPU per packet, in process (real server, checks, signed chain,"
            " state store; no sockets): what the network figures above cost it")
        rows += run_inproc(args.policy, 10_000 if args.quick else 30_000, log)
    errors += [f"{r.name}: lost messages or wrong answers" for r in rows
               if "[LOSS]" in r.name or "[WRONG]" in r.name]
    log("")
    log(table(rows))
    log(
        "notes: one run each (or the median of --repeat runs, alternating direct,\n"
        "passthrough and guarded), same broker config (queues unbounded, TCP_NODELAY) for all.\n"
        "The passthrough (bench/passthrough.py) is a process that only copies bytes, on the\n"
        "guard's event loop: its '(info)' rows are what any proxy on the path costs on this\n"
        "machine before a packet is judged; the guard's rows against them are its own work.\n"
        "Throughput is msgs/s at the receiving client from its first to its last message;\n"
        "receivers wake per 16 KiB (SO_RCVLOWAT) so they stay cheap, and the CPU lines above\n"
        "show who was busy. On a 2-CPU machine the guarded runs add a busy process (the\n"
        "guard) to the same two CPUs, so the ratios include that contention.\n"
        "Shadow updates: QoS 1 with a bounded in-flight window (PUBACKs come back through the\n"
        "guard). Latency: p50/p99 of 1 request/ms per mode, direct and guarded in alternating\n"
        "blocks. Load: MQTT 5 agents, one paced stream of QoS 1 publishes spread over the\n"
        "sessions, every PUBACK timed (the first second is warm-up, not counted); through\n"
        "the guard a refused publish must get a reason code >= 0x80 and an allowed one\n"
        "< 0x80 (else [WRONG]), and every subscriber must get every telemetry message.\n"
        "Memory: RSS growth of the broker (direct) and of the guard (guarded) from 200 to\n"
        "200 + N connected idle MQTT 5 sessions, each run on a fresh broker (and guard);\n"
        "the guard's figure covers both of its connections per session. Decision timings\n"
        "are the fastest of 5 passes per chunk of 250 calls (summed) with GC off, in the CPU\n"
        "time for both engines; Cedar requests are built before the clock starts, the\n"
        "compiled policy is timed from the raw topic string; 'cached' is the per-packet\n"
        "path of a session that has seen the topic before, 'uncached' the first packet on\n"
        "a topic (answered from the agent's map precomputed at CONNECT when it may use it)."
    )
    log(f"total {time.monotonic() - started:.0f} s")
    for e in errors:
        log(f"ERROR {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
