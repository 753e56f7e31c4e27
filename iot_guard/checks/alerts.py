"""Alerts raised by checks (a limit hit, an anomaly), handed off the per-packet path.

A check runs synchronously inside a packet's decision, so it cannot write a webhook or
trip the kill switch itself (both wait on I/O). It raises an :class:`Alert` instead: one
append to a bounded queue, O(1). The guard's brakes addon (``proxy/brakes.py``) drains
the queue on the event loop: audit record, log line, ``$guard/events`` to the agent, the
``on_alert`` hook (admin console, webhooks), and for ``block`` the kill switch.

A flood must not become an alert flood: one alert per (rule, agent, subject) within a
cooldown; the ones swallowed are counted and reported with the next alert of that key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# alert: tell; block: tell and stop the agent (kill switch); would_block: a block rule of a
# check in observe mode (told, nothing stopped).
ALERT_MODES = ("alert", "block", "would_block")

# Alerts waiting for the loop beyond this many are dropped (and counted): the drain runs
# on the next loop turn, so this only fills when the loop is starved.
QUEUE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str  # "rate_limit", "repeated_denials", "rate_spike", ...
    agent_id: str
    session_id: str | None
    mode: str  # one of ALERT_MODES
    reason: str  # one sentence for the operator (and the agent's $guard/events)
    at: float
    subject: str = ""  # what it is about: a tool, a limit, a tenant
    details: dict[str, object] = field(default_factory=dict)
    suppressed: int = 0  # alerts of this key swallowed by the cooldown before this one


class Alerts:
    """The queue between checks (producers, on the packet path) and the brakes addon."""

    def __init__(self, cooldown_s: float = 60.0) -> None:
        self.cooldown_s = cooldown_s
        self._queue: deque[Alert] = deque()
        self._last: dict[tuple[str, str, str], float] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}
        self._sweep_at = 1024
        # Called (once per batch) when the queue goes from empty to not empty.
        self.wake: Callable[[], None] | None = None
        # For metrics: alerts raised by (rule, mode), suppressed and dropped.
        self.raised: dict[tuple[str, str], int] = {}
        self.suppressed = 0
        self.dropped = 0

    def cooling(self, rule: str, agent: str, subject: str, now: float,
                cooldown_s: float | None = None) -> bool:
        """True (and counted as suppressed) if an alert of this key went out within the
        cooldown: the caller then need not build the alert at all (a flood's fast path)."""
        key = (rule, agent, subject)
        last = self._last.get(key)
        cooldown = self.cooldown_s if cooldown_s is None else cooldown_s
        if last is not None and now - last < cooldown:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self.suppressed += 1
            return True
        return False

    def raise_alert(self, alert: Alert, cooldown_s: float | None = None) -> bool:
        """Queue ``alert`` unless one of the same key went out within the cooldown;
        returns whether it was queued. Never blocks, never raises."""
        if self.cooling(alert.rule, alert.agent_id, alert.subject, alert.at, cooldown_s):
            return False
        key = (alert.rule, alert.agent_id, alert.subject)
        cooldown = self.cooldown_s if cooldown_s is None else cooldown_s
        if len(self._queue) >= QUEUE_SIZE:
            self.dropped += 1
            return False
        self._last[key] = alert.at
        if len(self._last) >= self._sweep_at:
            self._sweep(alert.at, cooldown)
        swallowed = self._suppressed.pop(key, 0)
        if swallowed:
            alert = Alert(alert.rule, alert.agent_id, alert.session_id, alert.mode, alert.reason,
                          alert.at, alert.subject, alert.details, swallowed)
        counted = (alert.rule, alert.mode)
        self.raised[counted] = self.raised.get(counted, 0) + 1
        was_empty = not self._queue
        self._queue.append(alert)
        if was_empty and self.wake is not None:
            self.wake()
        return True

    def drain(self) -> list[Alert]:
        alerts = list(self._queue)
        self._queue.clear()
        return alerts

    def __len__(self) -> int:
        return len(self._queue)

    def _sweep(self, now: float, cooldown: float) -> None:
        """Forget keys whose cooldown is over (bounded memory whatever the subjects)."""
        for key in [k for k, t in self._last.items() if now - t >= cooldown]:
            del self._last[key]
            self._suppressed.pop(key, None)  # still in the ``suppressed`` total
        self._sweep_at = max(1024, 2 * len(self._last))
