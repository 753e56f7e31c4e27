"""Approvals benchmarks: approve -> first device, rollout pacing, relay with requests pending.

- ``run_approval_timing``: a guard (in this process, its own loop thread) with the approvals
  addon in front of the bench broker and the simulated fleet. An agent's high-risk group push
  is held; the clock starts when ``approve`` is called on the guard's loop and stops when a
  plain subscriber on the broker receives the first device's patch (what the device gets).
  Pacing: rollouts of a 10-device group at two ``max_per_minute`` settings, timed by the
  same subscriber.
- ``run_relay_with_pending``: the QoS 0 relay (bench.relay) through the guard process with no
  approval request and with 1,000 pending (held through the guard by an agent, stored in
  its SQLite state, each with a live timer).
"""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

from .relay import Setup, relay_once
from .report import Row

ALL = [f"therm-{i:03d}" for i in range(1, 11)]
GROUP_TOPIC = "tenants/acme/groups/{group}/config/push"
PATCH_FILTER = "tenants/acme/devices/+/config/patch"


def bench_policy(source: Path, target: Path, max_per_minute: float) -> Path:
    """The example policy with a 10-device group, long approval timeouts and a rollout
    without canary or bake (so a measurement is pacing and latency only)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    tenants = target / "tenants.yaml"
    text = tenants.read_text()
    text = text.replace(
        "      floor-2: [therm-006",
        "      all: [" + ", ".join(ALL) + "]\n      floor-2: [therm-006",
    )
    tenants.write_text(text)
    tools = target / "tools.yaml"
    text = tools.read_text()
    text = re.sub(r"max_per_minute: [\d.]+", f"max_per_minute: {max_per_minute}", text)
    text = re.sub(r"canary: \d+", "canary: 0", text)
    text = re.sub(r"bake_s: [\d.]+", "bake_s: 0", text)
    tools.write_text(text)
    approvals = target / "approvals.yaml"
    approvals.write_text(re.sub(r"timeout_s: \d+", "timeout_s: 3600", approvals.read_text()))
    lift_push_limits(target)
    return target


def lift_push_limits(policy_dir: Path) -> None:
    """Drop the example's limits on group pushes (5 a minute, 20 a session), which would
    refuse the timing's sixth push and the 1,000 parked for the relay: these benches time
    approvals, rollouts and the relay; bench.brakes times the limits."""
    limits = policy_dir / "limits.yaml"
    if limits.exists():
        document = yaml.safe_load(limits.read_text()) or {}
        ((document.get("limits") or {}).get("tools") or {}).pop("group_config_push", None)
        limits.write_text(yaml.safe_dump(document, sort_keys=False))


def _held_id(reason: str | None) -> str:
    match = re.match(r"held for approval (\S+): ", reason or "")
    if match is None:
        raise RuntimeError(f"the push was not held: {reason}")
    return match.group(1)


def _patches(spy: AgentClient, request_id: str, count: int, timeout: float) -> list[float]:
    """Receive times of the first ``count`` per-device patches of one request."""
    token = f"iotguard:{request_id}"[:64]
    deadline = time.monotonic() + timeout
    while True:
        got = sorted(m.at for m in spy.received(PATCH_FILTER) if m.json().get(
            "clientToken") == token)
        if len(got) >= count:
            return got[:count]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)}/{count} patches of {request_id} within {timeout}s")
        spy.expect(PATCH_FILTER, timeout=max(0.05, deadline - time.monotonic()),
                   since=time.time())


def run_approval_timing(
    broker: MosquittoBroker, policy_source: Path, workdir: Path, log: Callable[[str], None],
    latency_n: int = 10, paces: tuple[float, ...] = (600.0, 120.0),
) -> list[Row]:
    from iot_guard.approvals.addon import ApprovalsAddon
    from iot_guard.policy.loader import load_policy
    from iot_guard.proxy.server import GuardThread
    from iot_guard.tokens import issue_token

    rows: list[Row] = []
    document = load_policy(policy_source)
    with Fleet.on_broker(broker, document, telemetry_interval_s=60, boot_time_s=0.2) as fleet:
        fleet.wait_online(20)
        for index, pace in enumerate((6000.0, *paces)):
            policy = bench_policy(policy_source, workdir / f"policy-{index}", pace)
            secret = secrets.token_bytes(32)
            addon = ApprovalsAddon()
            config = broker.guard_config(policy, secret, workdir / f"audit-{index}.jsonl")
            config.state = workdir / f"state-{index}"
            account = broker.guard_account
            with GuardThread(config, addons=[addon]) as guard, AgentClient(
                broker.host, broker.port, username=account.username,
                password=account.password,
            ).connect() as spy, AgentClient(
                "127.0.0.1", guard.port, username="ops-agent",
                password=issue_token(secret, "ops-agent", ttl_s=600),
            ).connect() as agent:
                spy.subscribe(PATCH_FILTER)
                if index == 0:
                    rows.append(_latency(guard, addon, agent, spy, latency_n, log))
                else:
                    rows.append(_pacing(guard, addon, agent, spy, pace, log))
    return rows


def _approve_timed(guard: Any, addon: Any, request_id: str) -> float:
    """Approve at every level the request needs (a critical one, e.g. a push reaching more
    than approval_above_devices, needs each level in turn); the time of the last call."""

    async def timed() -> float:
        while True:
            view = await addon.service.get(request_id)
            approver = view["approvers_at_level"][0]
            started = time.time()
            view = await addon.service.approve(request_id, approver, "bench")
            if view["status"] != "pending":
                return started

    started: float = guard.run(timed)
    return started


def _latency(guard: Any, addon: Any, agent: AgentClient, spy: AgentClient, n: int,
             log: Callable[[str], None]) -> Row:
    samples: list[float] = []
    for k in range(n):
        value = "beta" if k % 2 == 0 else "stable"
        ack = agent.publish(GROUP_TOPIC.format(group="floor-1"), {"firmware_channel": value})
        request_id = _held_id(ack.reason_string)
        _wait_stored(guard, addon, request_id)
        started = _approve_timed(guard, addon, request_id)
        first = _patches(spy, request_id, 5, 30)[0]
        samples.append((first - started) * 1000)
    p50 = statistics.median(samples)
    worst = max(samples)
    log(f"  approve -> first device: p50 {p50:.1f} ms, max {worst:.1f} ms over {n} approvals"
        f" ({', '.join(f'{s:.1f}' for s in samples)})")
    return Row(f"approve call -> first device receives the change, p50 of {n} (ms)",
               "-", f"{p50:.1f}", "-", "<= 50 ms", p50 <= 50.0)


def _pacing(guard: Any, addon: Any, agent: AgentClient, spy: AgentClient, pace: float,
            log: Callable[[str], None]) -> Row:
    ack = agent.publish(GROUP_TOPIC.format(group="all"), {"firmware_channel": "beta"})
    request_id = _held_id(ack.reason_string)
    _wait_stored(guard, addon, request_id)
    _approve_timed(guard, addon, request_id)
    interval = 60.0 / pace
    times = _patches(spy, request_id, len(ALL), 30 + interval * len(ALL))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60.0
    shortest = min(gaps)
    log(f"  rollout of {len(ALL)} devices at max_per_minute {pace:g}: {achieved:.1f}/min "
        f"achieved; gaps {min(gaps) * 1000:.0f}-{max(gaps) * 1000:.0f} ms (target "
        f"{interval * 1000:.0f} ms)")
    # Starts are paced exactly; what a device receives also carries each start's store
    # write and delivery jitter, so single gaps vary a little: the rate is what counts.
    error = abs(achieved - pace) / pace
    log(f"  shortest gap {shortest * 1000:.0f} ms = {shortest / interval:.2f} x the interval")
    return Row(f"rollout pacing at max_per_minute {pace:g}, {len(ALL)} devices (per min)",
               f"{pace:g}", f"{achieved:.1f}", f"{achieved / pace:.3f}",
               "within 5%, not faster", error <= 0.05 and achieved <= pace * 1.001)


def _wait_stored(guard: Any, addon: Any, request_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while guard.run(lambda: addon.service.get(request_id)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} was not stored within {timeout}s")
        time.sleep(0.005)  # polling the store from outside the guard's loop


def run_relay_with_pending(setup: Setup, n: int, pending: int,
                           log: Callable[[str], None], repeat: int = 1) -> list[Row]:
    """The guard's relay rate with ``pending`` requests against its rate with none: the
    median of ``repeat`` runs each time. The guard's own rates are compared, not its
    ratios to direct: direct runs on this host move by a third from one run to the next,
    and a ratio of two such ratios would measure that instead (direct is logged)."""

    def runs() -> list[dict[str, Any]]:
        return [{mode: relay_once(setup, mode, n) for mode in ("direct", "guard")}
                for _ in range(repeat)]

    before = runs()
    with AgentClient(setup.guard.host, setup.guard.port, username="ops-agent",
                     password=setup.token).connect() as agent:
        for k in range(pending):
            group = "floor-1" if k % 2 else "floor-2"
            ack = agent.publish(GROUP_TOPIC.format(group=group), {"firmware_channel": "beta"})
            if ack.reason_code != 0x83:
                raise RuntimeError(f"push {k} was not held: 0x{ack.reason_code:02x}")
    stored = _count_pending(setup.logdir / "state" / "state.sqlite3", pending, 60)
    after = runs()

    def median(rs: list[dict[str, Any]], mode: str) -> float:
        return float(statistics.median(r[mode]["rate"] for r in rs))

    none, held = median(before, "guard"), median(after, "guard")
    complete = all(r[mode]["received"] == n for r in (*before, *after) for mode in r)
    log(f"  relay through the guard: {none:,.0f} msg/s with no request pending, {held:,.0f} "
        f"with {stored:,} pending (guard/direct {none / median(before, 'direct'):.2f} and "
        f"{held / median(after, 'direct'):.2f})")
    tag = "" if complete else " [LOSS]"
    median_of = "" if repeat == 1 else f", median of {repeat}"
    return [Row(f"QoS0 relay with {stored:,} approval requests pending, through the guard "
                f"(msgs/s{median_of}; 'direct' = none pending){tag}",
                f"{none:,.0f}/s", f"{held:,.0f}/s", f"{held / none:.2f}", ">= 0.9 (unchanged)",
                complete and held >= none * 0.9)]


def _count_pending(db: Path, want: int, timeout: float) -> int:
    """Requests stored as pending (read-only look at the guard's state file)."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                count = conn.execute(
                    "SELECT count(*) FROM records WHERE status = 'pending'").fetchone()[0]
        except sqlite3.Error:
            count = 0
        if count >= want:
            return int(count)
        time.sleep(0.1)  # the guard stores holds in the background
    raise TimeoutError(f"only {count}/{want} requests stored as pending within {timeout}s")
