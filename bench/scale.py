"""Scale-out (issue 11): the QoS 0 relay through a guard whose state is on Redis against
the same relay through a guard with the embedded state, in one run.

The per-packet path never waits on the state store (flags and rate buckets are local
views kept current off the path), so moving the state to Redis must not slow the relay:
goal >= 0.95x. Two guard processes in front of one broker, each with its own work dir,
measured in alternating runs (embedded, Redis, embedded, ...); the median of each.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from simulator.broker import MosquittoBroker
from simulator.redis_server import RedisServer

from .procs import GuardProcess
from .relay import Setup, relay_once
from .report import Row

GOAL = 0.95


def run_relay_redis(broker: MosquittoBroker, policy: Path, workdir: Path, n: int,
                    log: Callable[[str], None], repeat: int = 1) -> list[Row]:
    rates: dict[str, list[float]] = {"embedded": [], "redis": []}
    cpu_us: dict[str, list[float]] = {"embedded": [], "redis": []}  # guard CPU per message
    complete = True
    with RedisServer() as redis:
        guards: dict[str, GuardProcess] = {}
        try:
            for name, state in (("embedded", None), ("redis", redis.url(prefix="bench"))):
                home = workdir / f"scale-{name}"
                home.mkdir()
                guards[name] = GuardProcess(policy, broker.port, home, state=state)
            setups = {name: Setup(broker, g, g.workdir, g.token("ops-agent"))
                      for name, g in guards.items()}
            for k in range(max(1, repeat)):
                # Alternating order, so a drift of the machine's load favours neither.
                order = list(setups.items()) if k % 2 == 0 else list(setups.items())[::-1]
                for name, setup in order:
                    r = relay_once(setup, "guard", n)
                    rates[name].append(r["rate"])
                    cpu_us[name].append(r["cpu"]["guard"] / n * 1e6)
                    complete = complete and r["received"] == n
                    log(f"  relay via guard, {name:8} state: {r['received']:,}/{n:,} received, "
                        f"{r['rate']:,.0f} msg/s, guard CPU {cpu_us[name][-1]:.2f} us/msg"
                        + (f" [run {k + 1}]" if repeat > 1 else ""))
        finally:
            for g in guards.values():
                g.stop()
    embedded = statistics.median(rates["embedded"])
    shared = statistics.median(rates["redis"])
    ratio = shared / embedded if embedded else 0.0
    med = f", median of {repeat}" if repeat > 1 else ""
    tag = "" if complete else " [LOSS]"
    # The guard's CPU per relayed message: what the backend could add to the packet path,
    # and far less sensitive than msgs/s to other load on the machine's two CPUs.
    cpu_e, cpu_r = statistics.median(cpu_us["embedded"]), statistics.median(cpu_us["redis"])
    log(f"  Redis / embedded: {ratio:.3f} (msgs/s); guard CPU per message {cpu_r:.2f} vs "
        f"{cpu_e:.2f} us")
    return [
        Row(f"QoS0 relay, state on Redis vs embedded (msgs/s; 'direct' = embedded){med}{tag}",
            f"{embedded:,.0f}/s", f"{shared:,.0f}/s", f"{ratio:.2f}", f">= {GOAL}",
            complete and ratio >= GOAL),
        # Informational: CPU time is read in 10 ms ticks, so +-0.1 us/msg per 100k run.
        Row(f"QoS0 relay, guard CPU per message, Redis vs embedded (us){med}{tag}",
            f"{cpu_e:.2f}", f"{cpu_r:.2f}", f"{cpu_e / cpu_r:.2f}" if cpu_r else "-",
            "(speed, informational)", None),
    ]
