"""Rate limits and anomaly detection in a running guard: the two checks, and the work they
hand off the packet path (issue 8 §2, §3).

- Alerts (``checks.alerts``) are delivered on the next loop turn: an audit record
  (``packet: "alert"``), a log line on ``iot_guard.alerts``, a ``$guard/events`` event to
  the agent's sessions that subscribed to it, and the ``on_alert`` addon hook (the admin
  console's live events, webhooks). A ``block`` alert also trips the kill switch for the
  agent (``state.flags.kill``), which ends its sessions within a second and refuses it at
  the door until an operator lifts it.
- Baselines: every ``fold_s`` seconds (and at stop) the anomaly check's counts are folded
  into the counter store (``fold_baseline``: atomic, durable, shared by several guards),
  and the merged baselines go back to the check. At start the stored baselines warm the
  check, so they survive a restart.

Nothing here runs inside a packet's decision: a slow store delays a fold, never a packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from ..audit import AuditError, utc_iso
from ..checks.alerts import Alert, Alerts
from ..checks.anomaly import AnomalyCheck
from ..checks.rate_limit import RateLimitCheck
from ..session.feedback import EVENTS_TOPIC
from ..state import StateError

if TYPE_CHECKING:
    from .control import SessionInfo
    from .server import GuardServer

log = logging.getLogger("iot_guard.alerts")

FOLD_S = 2.0


def alert_record(alert: Alert, mode: str) -> dict[str, Any]:
    """The audit record of an alert (``mode``: the guard's enforce / dry-run)."""
    record: dict[str, Any] = {
        "timestamp": utc_iso(alert.at), "packet": "alert", "result_status": alert.mode,
        "alert": alert.rule, "agent_id": alert.agent_id, "session_id": alert.session_id,
        "reason": alert.reason, "subject": alert.subject or None, "mode": mode,
        **{k: v for k, v in alert.details.items() if k not in ("mode", "packet")},
    }
    if alert.suppressed:
        record["suppressed"] = alert.suppressed
    return record


def alert_event(alert: Alert) -> bytes:
    """What the agent reads on ``$guard/events``: the same shape as a refusal event."""
    return json.dumps({
        "decision": "alert", "alert": alert.rule, "mode": alert.mode, "action":
        alert.details.get("action"), "topic": alert.details.get("topic"), "tool":
        alert.details.get("tool"), "reason": alert.reason, "timestamp": utc_iso(alert.at),
    }, separators=(",", ":")).encode()


class Brakes:
    """Built by the server at start (``open``) and closed at stop (``close``); also an
    addon for ``on_session_closed`` (per-session memory is let go with the session)."""

    def __init__(self, *, fold_s: float = FOLD_S) -> None:
        self.fold_s = fold_s
        self.alerts = Alerts()
        self.rate_limit: RateLimitCheck | None = None
        self.anomaly: AnomalyCheck | None = None
        self.folds = 0
        self.fold_errors = 0
        self.kills = 0
        self._server: GuardServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._kills: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def open(self, server: GuardServer) -> tuple[RateLimitCheck, AnomalyCheck]:
        """Build the checks on the server's state; stored baselines warm the anomaly check
        before the first packet (StateError: the guard does not start, fail closed)."""
        assert server.state is not None, "the state is opened first"
        self._server = server
        counters = server.state.counters
        baselines = await counters.baselines()
        self.rate_limit = RateLimitCheck(counters.limiter, lambda: server.policy, self.alerts)
        self.anomaly = AnomalyCheck(lambda: server.policy, self.alerts, baselines)
        loop = asyncio.get_running_loop()
        self.alerts.wake = lambda: self._schedule(loop)
        self._task = loop.create_task(self._fold_forever(), name="iot-guard-baselines")
        return self.rate_limit, self.anomaly

    async def close(self) -> None:
        """Fold what was counted and deliver what was raised, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None and self.anomaly is not None:
            await self.fold()
            self.deliver()
            if self._kills:
                await asyncio.gather(*self._kills, return_exceptions=True)

    # ------------------------------------------------------------------ hooks

    def on_session_closed(self, info: SessionInfo) -> None:
        if self.rate_limit is not None:
            self.rate_limit.forget_session(info.session_id)
        if self.anomaly is not None:
            self.anomaly.forget_session(info.session_id)

    # ------------------------------------------------------------------ baselines

    async def _fold_forever(self) -> None:
        while True:
            await asyncio.sleep(self.fold_s)
            try:
                await self.fold()
            except Exception:  # a bug in one fold must not end the folding
                self.fold_errors += 1
                log.exception("baseline fold failed")

    async def fold(self) -> int:
        """Fold the counts taken since the last fold into the store; returns how many keys.
        A store that cannot answer keeps the counts for the next fold."""
        assert self._server is not None and self._server.state is not None
        anomaly = self.anomaly
        assert anomaly is not None
        counters = self._server.state.counters
        counts = anomaly.take_counts()
        alpha = anomaly.alpha
        for i, (key, window, count) in enumerate(counts):
            try:
                baseline = await counters.fold_baseline(key, window, count, alpha)
            except StateError as exc:
                self.fold_errors += 1
                log.warning("baselines not stored (kept for the next fold): %s", exc)
                anomaly.restore(counts[i:])
                return i
            anomaly.merge_baseline(key, baseline)
        if counts:
            self.folds += 1
        return len(counts)

    # ------------------------------------------------------------------ alerts

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.deliver)

    def deliver(self) -> None:
        """Deliver every queued alert (runs on the loop, after the packet that raised it)."""
        self._scheduled = False
        server = self._server
        if server is None:
            return
        for alert in self.alerts.drain():
            try:
                server.audit.write(alert_record(alert, server.config.mode))
            except AuditError as exc:
                # The packet path fails closed on its own audit writes; an alert that
                # cannot be recorded is still logged and still acts.
                log.error("alert not audited: %s", exc)
            log.warning("ALERT %s (%s) agent=%s session=%s: %s%s", alert.rule, alert.mode,
                        alert.agent_id, alert.session_id, alert.reason,
                        f" (+{alert.suppressed} suppressed)" if alert.suppressed else "",
                        extra={"alert": alert.rule, "agent_id": alert.agent_id,
                               "alert_mode": alert.mode})
            server.control.notify(alert.agent_id, EVENTS_TOPIC, alert_event(alert))
            server.hooks.call("on_alert", alert)
            if alert.mode == "block":
                task = asyncio.get_running_loop().create_task(self._block(alert))
                self._kills.add(task)
                task.add_done_callback(self._kills.discard)

    async def _block(self, alert: Alert) -> None:
        server = self._server
        assert server is not None and server.state is not None
        try:
            # The flag watch ends the agent's sessions (DISCONNECT 0x98) within a second.
            await server.state.flags.kill(alert.agent_id, alert.reason, f"anomaly:{alert.rule}")
        except StateError as exc:
            log.error("anomaly block of %s failed, the agent is NOT stopped: %s",
                      alert.agent_id, exc)
            return
        self.kills += 1
