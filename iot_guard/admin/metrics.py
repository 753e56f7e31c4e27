"""``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``: routes for the admin server, or
a small server of their own (``iot-guard run --metrics HOST:PORT``).

Nothing here touches the packet path: a custom collector reads the guard's plain counters
(``proxy/stats.py``, the brakes' hit and alert counts, the flags' view, the live links)
when Prometheus scrapes, and builds the metric families then.

These routes need no token (Prometheus and orchestrator probes call them); they reveal
counts by agent-facing names (tools, reason codes), so keep the port private.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from ..proxy.stats import Histogram
from .server import bound_port, http_url

if TYPE_CHECKING:
    from ..proxy.server import GuardServer

log = logging.getLogger("iot_guard.admin")

GuardSource = Callable[[], "GuardServer | None"]
OPEN_APPROVALS = ("pending", "escalated")
UPSTREAM_TIMEOUT_S = 1.0
STORE_TIMEOUT_S = 1.0


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(),
                                 sum_value=histogram.sum)


class GuardCollector:
    """Metric families built from the guard's counters at scrape time."""

    def __init__(self, server: GuardServer) -> None:
        self.server = server
        self.approvals_pending: int | None = None  # refreshed before each scrape

    def describe(self) -> list[Metric]:
        return []  # nothing is collected at registration

    def collect(self) -> Iterator[Metric]:
        server = self.server
        stats = server.stats
        decisions = CounterMetricFamily(
            "iot_guard_decisions", "Audited decisions by packet kind, verdict, tool and status "
            "(status: success, denied, would_deny, would_hold ...).",
            labels=["packet", "verdict", "tool", "status"])
        refusals = CounterMetricFamily(
            "iot_guard_refusals", "Refused actions by MQTT reason code and packet kind.",
            labels=["reason_code", "packet"])
        by_decision: dict[tuple[str, str, str, str], int] = {}
        by_code: dict[tuple[str, str], int] = {}
        for (packet, verdict, tool, code, status), n in list(stats.records.items()):
            if packet in ("guard", "alert") or verdict is None:
                continue  # the guard's own start/chain lines and alerts are counted apart
            key = (str(packet), str(verdict), tool or "", str(status))
            by_decision[key] = by_decision.get(key, 0) + n
            if status == "denied" and isinstance(code, int) and code >= 0x80:
                code_key = (f"0x{code:02X}", str(packet))
                by_code[code_key] = by_code.get(code_key, 0) + n
        for labels, n in sorted(by_decision.items()):
            decisions.add_metric(list(labels), n)
        for code_labels, n in sorted(by_code.items()):
            refusals.add_metric(list(code_labels), n)
        yield decisions
        yield refusals

        sessions = GaugeMetricFamily("iot_guard_sessions", "Live agent sessions by state.",
                                     labels=["state"])
        states: dict[str, int] = {}
        for link in list(server.links):
            name = link.session.state.value
            states[name] = states.get(name, 0) + 1
        for name, n in sorted(states.items()):
            sessions.add_metric([name], n)
        yield sessions
        yield CounterMetricFamily("iot_guard_sessions_opened", "Agent connections accepted "
                                  "by the listener.", value=stats.sessions_opened)
        relayed = CounterMetricFamily("iot_guard_bytes", "Bytes read, by side.",
                                      labels=["direction"])
        relayed.add_metric(["from_agents"], stats.bytes_from_agents)
        relayed.add_metric(["from_broker"], stats.bytes_from_broker)
        yield relayed
        yield CounterMetricFamily(
            "iot_guard_broker_reads_coalesced", "Pauses in reading a broker connection after "
            "a large read (read_coalesce_ms), so a stream arrives in fewer reads.",
            value=stats.broker_reads_coalesced)
        if self.approvals_pending is not None:
            yield GaugeMetricFamily("iot_guard_approvals_pending", "Approval requests waiting "
                                    "for a human (pending or escalated).",
                                    value=self.approvals_pending)

        brakes = server.brakes
        limits = CounterMetricFamily("iot_guard_limits_hit", "Actions refused by a rate limit "
                                     "or quota, by limit.", labels=["limit"])
        if brakes.rate_limit is not None:
            for limit, n in sorted(brakes.rate_limit.hits.items()):
                limits.add_metric([limit], n)
        yield limits
        anomalies = CounterMetricFamily("iot_guard_anomalies", "Anomaly alerts raised, by rule "
                                        "and mode (alert, block, would_block).",
                                        labels=["rule", "mode"])
        for (rule, mode), n in sorted(brakes.alerts.raised.items()):
            if rule != "rate_limit":
                anomalies.add_metric([rule, mode], n)
        yield anomalies
        yield CounterMetricFamily("iot_guard_alerts_suppressed", "Alerts not sent because one "
                                  "of the same rule, agent and subject went out within the "
                                  "cooldown.", value=brakes.alerts.suppressed)
        yield CounterMetricFamily("iot_guard_anomaly_blocks", "Kill switches tripped by "
                                  "anomaly rules in block mode.", value=brakes.kills)
        if server.state is not None:
            kills = server.state.flags.view.snapshot.kills
            yield GaugeMetricFamily("iot_guard_kill_switches", "Kill switches in force "
                                    "(an agent's or the fleet-wide one).", value=len(kills))
        yield _histogram("iot_guard_audit_write_seconds", "Time of one audit write (a batch "
                         "of records, one os.write) on the packet path.", stats.audit_latency)
        yield CounterMetricFamily("iot_guard_audit_failures", "Audit writes that failed (the "
                                  "session was closed, nothing forwarded).",
                                  value=stats.audit_failures)
        yield _histogram("iot_guard_decision_seconds", "Time the session took to decide one "
                         "event (one read of bytes: usually one packet; a timer; a control "
                         "request), before any I/O.", stats.decision_latency)


class Metrics:
    """One Prometheus registry per guard (never the process-global one: tests and tools
    run several guards in one process)."""

    def __init__(self, server: GuardServer) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = GuardCollector(server)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    async def render(self) -> bytes:
        self.collector.approvals_pending = await approvals_pending(self.server)
        return bytes(generate_latest(self.registry))


async def approvals_pending(server: GuardServer) -> int | None:
    """Open approval requests in the store (a read at scrape time; None if it fails)."""
    if server.state is None:
        return None
    try:
        records = await asyncio.wait_for(
            server.state.approvals.list(OPEN_APPROVALS), STORE_TIMEOUT_S)
    except Exception as exc:  # a metric left out, never a failed scrape
        log.warning("metrics: approvals not counted: %s", exc)
        return None
    return len(records)


async def readiness(server: GuardServer) -> dict[str, Any]:
    """Each condition for serving agents: policy loaded, state open, audit writable,
    upstream broker reachable (a TCP connect within a second)."""
    checks: dict[str, Any] = {}
    document = server.policy.document if server.policy is not None else None
    checks["policy"] = (
        {"ok": True, "agents": len(document.agents)} if document is not None
        else {"ok": False, "detail": "no policy loaded"})
    checks["state"] = (
        {"ok": True, "location": server.state.location} if server.state is not None
        else {"ok": False, "detail": "state store not open"})
    problem = server.audit.health()
    checks["audit"] = {"ok": problem is None, **({"detail": problem} if problem else {})}
    config = server.config
    where = f"{config.upstream_host}:{config.upstream_port}"
    started = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(config.upstream_host, config.upstream_port),
            UPSTREAM_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        checks["upstream"] = {"ok": False, "address": where,
                              "detail": str(exc) or type(exc).__name__}
    else:
        writer.close()
        checks["upstream"] = {"ok": True, "address": where,
                              "connect_ms": round((time.perf_counter() - started) * 1000, 2)}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


def routes(guard: GuardSource) -> list[web.RouteDef]:
    """``/metrics``, ``/healthz``, ``/readyz`` for the guard ``guard()`` returns (None until
    it started: then metrics and readiness answer 503)."""
    registries: dict[int, Metrics] = {}

    def metrics_of(server: GuardServer) -> Metrics:
        found = registries.get(id(server))
        if found is None or found.server is not server:
            found = registries[id(server)] = Metrics(server)
        return found

    async def metrics(request: web.Request) -> web.Response:
        server = guard()
        if server is None:
            return web.json_response({"error": "unavailable", "detail": "guard not started"},
                                     status=503)
        body = await metrics_of(server).render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        # Alive: the event loop answers (a wedged loop answers nothing).
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        server = guard()
        if server is None:
            return web.json_response({"ready": False, "detail": "guard not started"},
                                     status=503)
        report = await readiness(server)
        return web.json_response(report, status=200 if report["ready"] else 503)

    return [web.get("/metrics", metrics), web.get("/healthz", healthz),
            web.get("/readyz", readyz)]


class MetricsServer:
    """``--metrics HOST:PORT``: the three routes on a port of their own, as a guard addon
    (for when the admin API is not run, or is exposed more widely than metrics should)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.requested_port = port
        self._guard: GuardServer | None = None
        self.app = web.Application()
        self.app.router.add_routes(routes(lambda: self._guard))
        self._runner: web.AppRunner | None = None

    async def start(self, server: GuardServer) -> None:
        self._guard = server
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.requested_port,
                          reuse_address=True).start()
        log.info("iot-guard metrics and health on %s", self.url)

    @property
    def port(self) -> int:
        return bound_port(self._runner, "metrics server")

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
