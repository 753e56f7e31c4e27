"""Many sessions at once: QoS 1 ack latency under load, and memory per idle session.

Like the other network benchmarks, each figure is taken direct and through the guard in
the same run, on the same broker, with the same client processes; only the endpoint of
the agent-side clients changes.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from .broker import bench_broker
from .procs import GuardProcess, Worker, rss_bytes
from .relay import AGENT, DEVICES, TENANT, Setup, cpu_used, passthrough_row
from .report import Row
from .workers import shadow_update_payload

TELEMETRY_FILTER = f"tenants/{TENANT}/devices/+/telemetry"
_runs = itertools.count(1)

# What the load's agents publish (topic, payload): the guard allows the first list and
# refuses the second (foreign tenant, a command the tool does not grant, an out-of-range
# value); direct, the broker accepts all of it.
ALLOWED = [
    *([f"tenants/{TENANT}/devices/{d}/shadow/update", shadow_update_payload(k).decode()]
      for k, d in enumerate(DEVICES)),
    *([f"tenants/{TENANT}/devices/{d}/shadow/get", ""] for d in DEVICES[:3]),
]
REFUSED = [
    ["tenants/globex/devices/therm-101/shadow/update",
     '{"state":{"desired":{"target_temp_c":21.5}}}'],
    [f"tenants/{TENANT}/devices/therm-002/commands/reboot", '{"delay_s":5}'],
    [f"tenants/{TENANT}/devices/therm-003/shadow/update",
     '{"state":{"desired":{"target_temp_c":99}}}'],
]


def _crowd_endpoint(setup: Setup, mode: str) -> dict[str, Any]:
    ep = setup.agent_endpoint(mode, "")
    del ep["client_id"]  # each session of a crowd gets its own (prefix-index)
    return ep


def load_once(
    setup: Setup, mode: str, sessions: int, rate: float, duration_s: float,
    subscribers: int, telemetry_rate: float, warmup_s: float = 1.0,
) -> dict[str, Any]:
    """One run: ``sessions`` agents publishing at ``rate`` in total while ``subscribers``
    agents receive telemetry published at ``telemetry_rate`` by a device-side client."""
    ticks = int(telemetry_rate * (warmup_s + duration_s))
    workers: list[Worker] = []
    try:
        fanout = Worker("fanout", {
            "endpoint": _crowd_endpoint(setup, mode), "client_prefix": f"bench-sub-{mode}",
            "sessions": subscribers, "filters": [TELEMETRY_FILTER], "expect": ticks,
            "idle_s": 5.0, "timeout_s": warmup_s + duration_s + 60,
        }, setup.logdir, f"load-fanout-{mode}")
        workers.append(fanout)
        fanout.line(60)
        load = Worker("load", {
            "endpoint": _crowd_endpoint(setup, mode), "client_prefix": f"bench-load-{mode}",
            "sessions": sessions, "rate": rate, "warmup_s": warmup_s, "duration_s": duration_s,
            "allowed": ALLOWED, "refused": REFUSED, "expect_refusals": mode == "guard",
        }, setup.logdir, f"load-agents-{mode}")
        workers.append(load)
        load.line(60)
        ticker = Worker("ticker", {
            "endpoint": {"host": setup.broker.host, "port": setup.broker.port},
            "client_prefix": f"bench-ticker-{mode}",
            "topics": [f"tenants/{TENANT}/devices/{d}/telemetry" for d in DEVICES],
            "count": ticks, "rate": telemetry_rate,
        }, setup.logdir, f"load-ticker-{mode}")
        workers.append(ticker)
        ticker.line(30)
        cpu0 = setup.server_cpu(mode)
        ticker.go()
        load.go()
        acks = load.line(warmup_s + duration_s + 60)
        ticker.line(30)
        got = fanout.line(60)
        cpu1 = setup.server_cpu(mode)
    finally:
        for w in workers:
            w.finish()
    return {
        **acks, "telemetry": got, "ticks": ticks, "subscribers": subscribers,
        "cpu": {**cpu_used(cpu0, cpu1), "agents": acks["cpu_s"], "subscribers": got["cpu_s"]},
    }


def run_load(
    setup: Setup, sessions: int, rate: float, duration_s: float, subscribers: int,
    telemetry_rate: float, log: Any, repeat: int = 1,
) -> list[Row]:
    p99: dict[str, list[float]] = {mode: [] for mode in setup.modes}
    p50: dict[str, list[float]] = {mode: [] for mode in setup.modes}
    complete = correct = True
    for k in range(repeat):
        for mode in setup.modes:
            r = load_once(setup, mode, sessions, rate, duration_s, subscribers, telemetry_rate)
            p99[mode].append(r["p99_us"])
            p50[mode].append(r["p50_us"])
            t = r["telemetry"]
            delivered = t["min"] == r["ticks"] and t["max"] == r["ticks"]
            complete = complete and not r["lost"] and delivered
            correct = correct and not r["wrong"] and not r["unexpected_acks"]
            cpu = ", ".join(f"{name} {v:.2f}" for name, v in r["cpu"].items())
            log(f"  load {mode:11}: {r['acked']:,}/{r['sent']:,} acked ({r['wrong']} wrong"
                f" answers), ack p50 {r['p50_us']:.0f} us, p90 {r['p90_us']:.0f} us, p99"
                f" {r['p99_us']:.0f} us, max {r['max_us']:.0f} us over {r['samples']:,};"
                f" telemetry {t['received']:,}/{r['ticks'] * subscribers:,} delivered;"
                f" CPU s over {r['elapsed_s']:.1f} s: {cpu}"
                + (f" [run {k + 1}/{repeat}]" if repeat > 1 else ""))
    d99, g99 = statistics.median(p99["direct"]), statistics.median(p99["guard"])
    d50, g50 = statistics.median(p50["direct"]), statistics.median(p50["guard"])
    tag = ("" if complete else " [LOSS]") + ("" if correct else " [WRONG]")
    med = f", median of {repeat}" if repeat > 1 else ""
    name = (f"QoS1 ack under load: {sessions} agents, {rate:,.0f} msg/s mixed, {subscribers}"
            f" telemetry subscribers")
    rows = [
        Row(f"{name}, p50 (ms){med}{tag}", f"{d50 / 1000:.3f}", f"{g50 / 1000:.3f}",
            f"{(g50 - d50) / 1000:+.3f} ms", "(info)", None),
        Row(f"{name}, p99 (ms){med}{tag}", f"{d99 / 1000:.3f}", f"{g99 / 1000:.3f}",
            f"{(g99 - d99) / 1000:+.3f} ms", "added <= 1 ms",
            complete and correct and g99 - d99 <= 1000),
    ]
    if "passthrough" in p99:
        p = statistics.median(p99["passthrough"])
        rows.append(passthrough_row(f"{d99 / 1000:.3f}", f"{p / 1000:.3f}",
                                    f"{(p - d99) / 1000:+.3f} ms"))
    return rows


def idle_once(setup: Setup, mode: str, sessions: int, warmup: int) -> dict[str, Any]:
    """Memory of the broker and the guard before and after ``sessions`` idle sessions.

    Each run has a broker (and guard) of its own: memory a previous run freed would be
    reused and hide what sessions cost. ``warmup`` sessions connect first, so what the
    first session costs once (imports, caches, the allocator's first arenas) is not
    counted per session.
    """
    workdir = setup.logdir / f"idle-{mode}-{next(_runs)}"
    workdir.mkdir()
    with bench_broker(workdir) as broker:
        guard = (GuardProcess(setup.guard.policy_dir, broker.port, workdir) if mode == "guard"
                 else None)
        try:
            assert broker.pid is not None
            pids = {"broker": broker.pid}
            if guard is not None:
                pids["guard"] = guard.proc.pid
            token = guard.token(AGENT) if guard is not None else setup.token
            local = Setup(broker, guard or setup.guard, workdir, token)
            idle = Worker("idle", {
                "endpoint": _crowd_endpoint(local, mode), "client_prefix": f"bench-idle-{mode}",
                "sessions": sessions, "warmup": warmup,
            }, workdir, "idle")
            try:
                idle.line(60)
                before = {name: rss_bytes(pid) for name, pid in pids.items()}
                idle.go()
                ready = idle.line(300)
                after = {name: rss_bytes(pid) for name, pid in pids.items()}
                idle.go()
                alive = idle.line(120)["alive"]
            finally:
                idle.finish()
        finally:
            if guard is not None:
                guard.stop()
    return {
        "per_session": {name: (after[name] - before[name]) / sessions for name in pids},
        "rss_mb": {name: after[name] / 2**20 for name in pids},
        "connect_s": ready["connect_s"], "alive": alive,
    }


def run_idle(setup: Setup, sessions: int, log: Any, repeat: int = 1,
             warmup: int = 200) -> list[Row]:
    broker_direct: list[float] = []
    guard: list[float] = []
    complete = True
    for k in range(repeat):
        for mode in ("direct", "guard"):
            r = idle_once(setup, mode, sessions, warmup)
            per = r["per_session"]
            (broker_direct if mode == "direct" else guard).append(
                per["broker" if mode == "direct" else "guard"])
            complete = complete and r["alive"] == sessions
            each = ", ".join(f"{name} {v / 1024:.1f} KB" for name, v in per.items())
            rss = ", ".join(f"{name} {v:.0f} MB" for name, v in r["rss_mb"].items())
            log(f"  idle {mode:11}: {r['alive']:,}/{sessions:,} sessions alive, connected in"
                f" {r['connect_s']:.1f} s; memory per session: {each} (RSS {rss})"
                + (f" [run {k + 1}/{repeat}]" if repeat > 1 else ""))
    d, g = statistics.median(broker_direct), statistics.median(guard)
    tag = "" if complete else " [LOSS]"
    med = f", median of {repeat}" if repeat > 1 else ""
    return [Row(
        f"memory per idle session, {sessions:,} sessions (KB; direct = broker){med}{tag}",
        f"{d / 1024:.1f}", f"{g / 1024:.1f}", f"{g / d:.2f}" if d > 0 else "-",
        "guard <= 6 KB", complete and g <= 6 * 1024,
    )]
