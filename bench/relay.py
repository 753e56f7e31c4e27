"""The three network benchmarks: direct Mosquitto vs the same traffic through the guard.

Every figure is taken in one run with the same broker, the same client processes and the
same message counts; only the endpoint of the agent-side client changes: the broker, a
passthrough process that only copies bytes (the price of any proxy on this machine; an
"(info)" row), or the guard.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.broker import MosquittoBroker

from .procs import GuardProcess, PassthroughProcess, Worker, cpu_seconds
from .report import Row

TENANT = "acme"
DEVICES = [f"therm-{i:03d}" for i in range(1, 11)]
AGENT = "ops-agent"
# The order a bench runs its modes in, every repetition (the passthrough where the setup
# has one).
MODES = ("direct", "passthrough", "guard")


@dataclass
class Setup:
    broker: MosquittoBroker
    guard: GuardProcess
    logdir: Path
    token: str
    passthrough: PassthroughProcess | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if m != "passthrough" or self.passthrough is not None)

    def server_cpu(self, mode: str = "guard") -> dict[str, float]:
        """CPU seconds used so far by the broker and by the proxy of ``mode``, by name: the
        passthrough in its runs, else the guard (next to nothing in a direct run)."""
        assert self.broker.pid is not None
        if mode == "passthrough":
            assert self.passthrough is not None
            name, proxy = "passthrough", self.passthrough.proc
        else:
            name, proxy = "guard", self.guard.proc
        return {"broker": cpu_seconds(self.broker.pid), name: cpu_seconds(proxy.pid)}

    def broker_endpoint(self, client_id: str) -> dict[str, Any]:
        return {"host": self.broker.host, "port": self.broker.port, "client_id": client_id}

    def agent_endpoint(self, mode: str, client_id: str) -> dict[str, Any]:
        """Where the agent-side client connects: the broker itself, the passthrough in front
        of it (the broker sees what it sees direct), or the guard as ops-agent."""
        if mode == "direct":
            return self.broker_endpoint(client_id)
        if mode == "passthrough":
            assert self.passthrough is not None
            return {**self.broker_endpoint(client_id), "port": self.passthrough.port}
        return {
            "host": self.guard.host, "port": self.guard.port, "client_id": client_id,
            "username": AGENT, "password": self.token,
        }


def _rate(count: int, first_ns: int, last_ns: int) -> float:
    # Messages after the first one, over the time from the first to the last arrival.
    span = (last_ns - first_ns) / 1e9
    return (count - 1) / span if count > 1 and span > 0 else 0.0


def _receiver_then_sender(
    setup: Setup, mode: str, receiver: Worker, start_sender: Callable[[], Worker]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """The sender's and the receiver's results, and the servers' CPU seconds in between.

    The sender starts only once the receiver is subscribed: nothing sent can be missed.
    """
    sender: Worker | None = None
    try:
        receiver.line(30)
        cpu0 = setup.server_cpu(mode)
        sender = start_sender()
        sender.line(30)
        sent = sender.line(120)
        got = receiver.line(120)
        cpu1 = setup.server_cpu(mode)
    finally:
        receiver.finish()
        if sender is not None:
            sender.finish()
    return sent, got, cpu_used(cpu0, cpu1)


def passthrough_row(direct: str, through: str, ratio: str) -> Row:
    """The figure of the row above it, taken through the passthrough: the part of that
    figure any proxy process costs on this machine, before the guard's own work."""
    return Row("  same through a passthrough (copies bytes, judges nothing)", direct, through,
               ratio, "(info)", None)


def passthrough_rate_row(rate: dict[str, float]) -> list[Row]:
    """``passthrough_row`` for a median rate per mode; none without a passthrough run."""
    if "passthrough" not in rate:
        return []
    through = rate["passthrough"] / rate["direct"] if rate["direct"] else 0.0
    return [passthrough_row(fmt_rate(rate["direct"]), fmt_rate(rate["passthrough"]),
                            f"{through:.2f}")]


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process of ``Setup.server_cpu`` used between the two readings."""
    return {name: after[name] - before[name] for name in before}


def relay_once(setup: Setup, mode: str, n: int) -> dict[str, Any]:
    """N QoS 0 telemetry messages from a device-side publisher to the agent-side consumer."""
    consumer = Worker(
        "count",
        {**setup.agent_endpoint(mode, f"bench-relay-consumer-{mode}"),
         "filters": [f"tenants/{TENANT}/devices/+/telemetry"], "expect": n, "idle_s": 3.0},
        setup.logdir, f"relay-consumer-{mode}",
    )
    sent, got, cpu = _receiver_then_sender(setup, mode, consumer, lambda: Worker(
        "blast",
        {**setup.broker_endpoint(f"bench-relay-publisher-{mode}"),
         "topics": [f"tenants/{TENANT}/devices/{d}/telemetry" for d in DEVICES],
         "count": n},
        setup.logdir, f"relay-publisher-{mode}",
    ))
    return {
        "received": got["count"],
        "rate": _rate(got["count"], got["first_ns"], got["last_ns"]),
        "span_s": (got["last_ns"] - sent["start_ns"]) / 1e9,
        "cpu": {**cpu, "publisher": sent["cpu_s"], "consumer": got["cpu_s"]},
    }


def shadow_once(setup: Setup, mode: str, n: int, window: int) -> dict[str, Any]:
    """N valid shadow updates, QoS 1 with ``window`` in flight, counted at the device side."""
    topic = f"tenants/{TENANT}/devices/therm-001/shadow/update"
    device = Worker(
        "count",
        {**setup.broker_endpoint(f"bench-shadow-device-{mode}"), "filters": [topic],
         "expect": n, "idle_s": 3.0},
        setup.logdir, f"shadow-device-{mode}",
    )
    acked, got, cpu = _receiver_then_sender(setup, mode, device, lambda: Worker(
        "qos1",
        {**setup.agent_endpoint(mode, f"bench-shadow-agent-{mode}"), "topic": topic,
         "count": n, "window": window},
        setup.logdir, f"shadow-agent-{mode}",
    ))
    return {
        "received": got["count"],
        "acked": acked["acked"],
        "rate": _rate(got["count"], got["first_ns"], got["last_ns"]),
        "agent_rate": acked["acked"] / ((acked["end_ns"] - acked["start_ns"]) / 1e9),
        "span_s": (got["last_ns"] - acked["start_ns"]) / 1e9,
        "cpu": {**cpu, "agent": acked["cpu_s"], "device": got["cpu_s"]},
    }


def fmt_cpu(r: dict[str, Any]) -> str:
    """CPU seconds per process over the run's wall time: who was busy on the 2 cores."""
    parts = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items())
    return f"CPU s over {r['span_s']:.2f} s wall: {parts}"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def _alternate(
    once: Any, modes: tuple[str, ...], repeat: int, log: Any, describe: Any
) -> tuple[dict[str, float], bool, list[dict[str, Any]]]:
    """Run each of ``modes`` in turn, ``repeat`` times: the median rate per mode,
    completeness, and the guarded runs' results."""
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    guarded: list[dict[str, Any]] = []
    complete = True
    for k in range(repeat):
        for mode in modes:
            r = once(mode)
            rates[mode].append(r["rate"])
            if mode == "guard":
                guarded.append(r)
            complete = complete and r["complete"]
            log(describe(mode, r) + (f" [run {k + 1}/{repeat}]" if repeat > 1 else ""))
    return {mode: statistics.median(v) for mode, v in rates.items()}, complete, guarded


def run_relay(setup: Setup, n: int, log: Any, repeat: int = 1) -> list[Row]:
    def once(mode: str) -> dict[str, Any]:
        r = relay_once(setup, mode, n)
        return {**r, "complete": r["received"] == n}

    def describe(mode: str, r: dict[str, Any]) -> str:
        return (f"  relay {mode:11}: {r['received']:,}/{n:,} received, {r['rate']:,.0f} msg/s at"
                f" the consumer; {fmt_cpu(r)}")

    rate, complete, guarded = _alternate(once, setup.modes, repeat, log, describe)
    ratio = rate["guard"] / rate["direct"] if rate["direct"] else 0.0
    med = f", median of {repeat}" if repeat > 1 else ""
    tag = "" if complete else " [LOSS]"
    # CPU per relayed message in the guarded runs: the guard's against Mosquitto's own
    # (which serves the publisher and the guard's upstream connection in that run).
    broker_us = statistics.median(r["cpu"]["broker"] / n * 1e6 for r in guarded)
    guard_us = statistics.median(r["cpu"]["guard"] / n * 1e6 for r in guarded)
    rows = [
        Row(f"QoS0 relay broker->agent, {n:,} x ~100 B (msgs/s){med}{tag}",
            fmt_rate(rate["direct"]), fmt_rate(rate["guard"]), f"{ratio:.2f}", ">= 0.9",
            complete and ratio >= 0.9),
        Row(f"QoS0 relay CPU per message, guarded run (us; direct = broker){med}{tag}",
            f"{broker_us:.2f}", f"{guard_us:.2f}", f"{guard_us / broker_us:.2f}"
            if broker_us else "-", "guard <= broker", complete and guard_us <= broker_us),
    ]
    rows[1:1] = passthrough_rate_row(rate)
    return rows


def run_shadow(setup: Setup, n: int, window: int, log: Any, repeat: int = 1) -> list[Row]:
    def once(mode: str) -> dict[str, Any]:
        r = shadow_once(setup, mode, n, window)
        return {**r, "complete": r["received"] == n and r["acked"] == n}

    def describe(mode: str, r: dict[str, Any]) -> str:
        return (f"  shadow {mode:11}: {r['received']:,}/{n:,} at the device, {r['acked']:,} acked,"
                f" {r['rate']:,.0f} msg/s at the device ({r['agent_rate']:,.0f} acked/s at the"
                f" agent); {fmt_cpu(r)}")

    rate, complete, _ = _alternate(once, setup.modes, repeat, log, describe)
    ratio = rate["guard"] / rate["direct"] if rate["direct"] else 0.0
    name = f"shadow updates agent->device, QoS1 window {window} (msgs/s)"
    if repeat > 1:
        name += f", median of {repeat}"
    if not complete:
        name += " [LOSS]"
    return [
        Row(name, fmt_rate(rate["direct"]), fmt_rate(rate["guard"]), f"{ratio:.2f}", ">= 0.8",
            complete and ratio >= 0.8),
        *passthrough_rate_row(rate),
    ]


def run_latency(
    setup: Setup, rate: float, duration_s: float, warmup: int, block: int, log: Any
) -> list[Row]:
    responder = Worker(
        "responder",
        {**setup.broker_endpoint("bench-latency-responder"),
         "filters": [f"tenants/{TENANT}/devices/+/shadow/get"]},
        setup.logdir, "latency-responder",
    )
    agent: Worker | None = None
    try:
        responder.line(30)
        agent = Worker(
            "latency",
            {"endpoints": {mode: setup.agent_endpoint(mode, f"bench-latency-agent-{mode}")
                           for mode in setup.modes},
             # A device per mode: no link may receive another's replies.
             "topics": {mode: f"tenants/{TENANT}/devices/{DEVICES[k]}/shadow/get"
                        for k, mode in enumerate(MODES) if mode in setup.modes},
             "rate": rate, "duration_s": duration_s, "warmup": warmup, "block": block},
            setup.logdir, "latency-agent",
        )
        agent.line(30)
        res = agent.line(2 * duration_s + 60)
    finally:
        if agent is not None:
            agent.finish()
        responder.stop()
    for mode, r in res.items():
        log(f"  latency {mode:11}: {r['received']:,}/{r['sent']:,} replies "
            f"({r['bad_order']} out of order), p50 {r['p50_us']:.0f} us, p90 {r['p90_us']:.0f}"
            f" us, p99 {r['p99_us']:.0f} us, max {r['max_us']:.0f} us, mean {r['mean_us']:.0f}"
            f" us over {r['samples']:,} samples")
    d, g = res["direct"], res["guard"]
    complete = all(r["received"] == r["sent"] and not r["bad_order"] for r in res.values())
    added50 = (g["p50_us"] - d["p50_us"]) / 1000
    added99 = (g["p99_us"] - d["p99_us"]) / 1000
    tag = "" if complete else " [LOSS]"
    rows = [
        Row(f"round trip p50 at {rate:,.0f} msg/s (ms){tag}", f"{d['p50_us'] / 1000:.3f}",
            f"{g['p50_us'] / 1000:.3f}", f"{added50:+.3f} ms", "(info)", None),
        Row(f"round trip p99 at {rate:,.0f} msg/s (ms){tag}", f"{d['p99_us'] / 1000:.3f}",
            f"{g['p99_us'] / 1000:.3f}", f"{added99:+.3f} ms", "added <= 0.3 ms",
            complete and added99 <= 0.3),
    ]
    if "passthrough" in res:
        p = res["passthrough"]
        rows.append(passthrough_row(f"{d['p99_us'] / 1000:.3f}", f"{p['p99_us'] / 1000:.3f}",
                                    f"{(p['p99_us'] - d['p99_us']) / 1000:+.3f} ms"))
    return rows
