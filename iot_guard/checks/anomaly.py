"""Anomaly detection from the policy's ``anomaly`` section (issue 8 §3).

Rules, each ``alert`` / ``block`` / ``off``:

- ``repeated_denials``: ``count`` refusals of one agent within ``window_s`` (a sliding
  window: the last ``count`` refusal times, O(1) per refusal);
- ``outside_tenants``: a refused action whose topic names a registered tenant that is not
  one of the agent's (probing another customer's devices);
- ``repeated_action``: the same action (kind, topic and payload) ``count`` times in a row
  in one session (an agent stuck in a loop);
- ``first_use``: an agent uses a tool it never used before (remembered in the baselines,
  so across restarts);
- ``off_hours``: any action outside the policy's ``working_hours``;
- ``rate_spike``: an agent's count of one tool in the current window more than ``k``
  standard deviations above its baseline, an exponentially weighted mean and variance of
  the count per window (``state.baseline.fold``), once it covers ``warmup_windows``.

The check is sans-IO and synchronous: it counts in memory and raises alerts
(``alerts.Alerts``). Baselines are folded into the state store off the packet path by the
brakes addon: it takes ``take_counts()`` every few seconds, calls
``CounterStore.fold_baseline`` (atomic; several guards add to one baseline) and gives the
merged result back with ``merge_baseline``. ``block`` rules also refuse the action that
fired them (0x87 not authorized) and the addon trips the kill switch for the agent; in
observe mode (dry run, ``--observe anomaly``) they are recorded as would_deny and stop
nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from ..mqtt import ReasonCode
from ..policy.compiler import CompiledPolicy
from ..policy.decision import Decision, Verdict
from ..policy_models import WEEKDAYS, Anomaly, AnomalyRule, WorkingHours
from ..state import Baseline
from .alerts import Alert, Alerts
from .base import PerPolicy, Request

_DENY = Verdict.DENY  # a module constant: an Enum class attribute costs a descriptor call


def baseline_key(agent: str, tool: str) -> str:
    """The counter store key of an agent's baseline for one tool (names hold no ':')."""
    return f"{agent}:{tool}"


class Hours:
    """Working hours as a predicate on a Unix time, answered once per minute."""

    def __init__(self, hours: WorkingHours) -> None:
        self.zone = ZoneInfo(hours.timezone)
        self.days = frozenset(WEEKDAYS.index(d) for d in hours.days)
        self.start = _minutes(hours.start)
        self.end = _minutes(hours.end)
        self._minute = -1
        self._inside = True

    def inside(self, now: float) -> bool:
        minute = int(now // 60)
        if minute != self._minute:  # local time only when the minute changes
            self._minute = minute
            self._inside = self._compute(now)
        return self._inside

    def _compute(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, self.zone)
        at = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= at < self.end
        # Overnight (22:00-06:00): the early hours belong to the previous day's shift.
        if at >= self.start:
            return day in self.days
        return at < self.end and (day - 1) % 7 in self.days


def _outside_reason(request: Request, tenant: str) -> str:
    return (f"agent {request.agent_id} tried {request.kind} on {request.topic!r} of tenant "
            f"{tenant!r}, not one of its tenants")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True, slots=True)
class CompiledAnomaly:
    rules: Anomaly
    hours: Hours | None
    foreign: dict[str, frozenset[str]]  # agent -> registered tenants that are not its own
    counts_tools: bool  # first_use or rate_spike: count actions per agent+tool
    active: bool
    where: dict[str, str]  # rule name -> "file:line (anomaly.<rule>)"
    on: frozenset[str]  # the rules not off (read per packet: no model attribute chains)


def compile_anomaly(policy: CompiledPolicy) -> CompiledAnomaly:
    doc = policy.document
    rules = doc.anomaly
    tenants = frozenset(doc.tenants)
    names = ("repeated_denials", "outside_tenants", "repeated_action", "first_use",
             "off_hours", "rate_spike")
    on = {name: getattr(rules, name).mode != "off" for name in names}
    where = {name: policy.source.rule(("anomaly", name)) if policy.source is not None
             else f"anomaly.{name}" for name in names}
    return CompiledAnomaly(
        rules,
        Hours(rules.working_hours) if rules.working_hours is not None and on["off_hours"]
        else None,
        {name: tenants - frozenset(agent.tenants) for name, agent in doc.agents.items()},
        on["first_use"] or on["rate_spike"],
        any(on.values()),
        where,
        frozenset(name for name, active in on.items() if active),
    )


class AnomalyCheck:
    name = "anomaly"
    kinds = frozenset({"publish", "subscribe"})
    enforce = True

    def __init__(
        self,
        policy: Callable[[], CompiledPolicy],
        alerts: Alerts,
        baselines: Mapping[str, Baseline] | None = None,
    ) -> None:
        self._alerts = alerts
        self._cfg = PerPolicy(policy, compile_anomaly)
        self._denials: dict[str, deque[float]] = {}
        self._streaks: dict[str, tuple[tuple[str, str, bytes | None], int]] = {}
        # Baselines as last merged from the store, and counts not folded into it yet:
        # key -> (window, count). ``_closed``: counts of windows that ended before a fold.
        self._base: dict[str, Baseline] = dict(baselines or {})
        self._pending: dict[str, list[float]] = {}
        self._closed: list[tuple[str, int, float]] = []
        self._seen: set[str] = set(self._base)  # agent:tool pairs ever used
        self._spiked: dict[str, int] = {}  # key -> window it alerted in

    # ------------------------------------------------------------------ configuration

    def config(self) -> CompiledAnomaly:
        return self._cfg.get()

    @property
    def window_s(self) -> float:
        return self.config().rules.rate_spike.window_s

    @property
    def alpha(self) -> float:
        return self.config().rules.rate_spike.alpha

    # ------------------------------------------------------------------ the packet path

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        cfg = self.config()
        if not cfg.active:
            return None
        on = cfg.on
        fired: Decision | None = None
        if decision.verdict is _DENY:
            if "repeated_denials" in on:
                fired = self._denial(cfg, request, decision, now) or fired
            if "outside_tenants" in on:
                fired = self._outside(cfg, request, decision, now) or fired
        elif cfg.counts_tools and decision.tool is not None:
            fired = self._count(cfg, request, decision, now) or fired
        if "repeated_action" in on:
            fired = self._repeat(cfg, request, decision, now) or fired
        if cfg.hours is not None and not cfg.hours.inside(now):
            agent = request.agent_id
            fired = self._fire(cfg, "off_hours", cfg.rules.off_hours, request, decision, now,
                               lambda: f"agent {agent} acts outside working hours",
                               "") or fired
        return fired

    def _denial(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
                now: float) -> Decision | None:
        rule = cfg.rules.repeated_denials
        times = self._denials.get(request.agent_id)
        if times is None or times.maxlen != rule.count:
            times = self._denials[request.agent_id] = deque(times or (), maxlen=rule.count)
        times.append(now)
        if len(times) == rule.count and now - times[0] <= rule.window_s:
            return self._fire(
                cfg, "repeated_denials", rule, request, decision, now,
                lambda: f"agent {request.agent_id} was refused {rule.count} times within "
                f"{rule.window_s:g} s (last: {decision.reason})", "")
        return None

    def _outside(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
                 now: float) -> Decision | None:
        foreign = cfg.foreign.get(request.agent_id)
        if not foreign:
            return None
        for level in request.topic.split("/"):
            if level in foreign:
                return self._fire(
                    cfg, "outside_tenants", cfg.rules.outside_tenants, request, decision, now,
                    partial(_outside_reason, request, level), level)
        return None

    def _repeat(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
                now: float) -> Decision | None:
        rule = cfg.rules.repeated_action
        action = (request.kind, request.topic, request.payload)
        last = self._streaks.get(request.session_id)
        n = last[1] + 1 if last is not None and last[0] == action else 1
        self._streaks[request.session_id] = (action, n)
        # At the count, and at each further count in the same streak (a long loop is
        # told again once the cooldown is over; block mode stops it at the first).
        if n % rule.count == 0:
            return self._fire(
                cfg, "repeated_action", rule, request, decision, now,
                lambda: f"agent {request.agent_id} sent the same {request.kind} on "
                f"{request.topic!r} {n} times in a row", request.topic)
        return None

    def _count(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
               now: float) -> Decision | None:
        assert decision.tool is not None
        key = baseline_key(request.agent_id, decision.tool)
        fired: Decision | None = None
        if key not in self._seen:
            self._seen.add(key)
            if cfg.rules.first_use.mode != "off":
                fired = self._fire(
                    cfg, "first_use", cfg.rules.first_use, request, decision, now,
                    lambda: f"agent {request.agent_id} used tool {decision.tool} for the "
                    "first time", decision.tool)
        spike = cfg.rules.rate_spike
        window = int(now // spike.window_s)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [window, 0.0]
        elif pending[0] != window:
            if pending[1]:
                self._closed.append((key, int(pending[0]), pending[1]))
            pending[0], pending[1] = window, 0.0
        pending[1] += 1
        if spike.mode == "off":
            return fired
        base = self._base.get(key)
        if base is None or base.windows < spike.warmup_windows or self._spiked.get(key) == window:
            return fired
        current = pending[1] + (base.current if base.window == window else 0.0)
        threshold = base.mean + spike.k * base.stddev
        if current > threshold and current >= spike.min_count:
            self._spiked[key] = window
            return self._fire(
                cfg, "rate_spike", spike, request, decision, now,
                lambda: f"agent {request.agent_id} used tool {decision.tool} {current:g} "
                f"times this window ({spike.window_s:g} s); its baseline is {base.mean:.3g} "
                f"+- {base.stddev:.3g} (k={spike.k:g})", decision.tool) or fired
        return fired

    def _fire(
        self, cfg: CompiledAnomaly, name: str, rule: AnomalyRule | object, request: Request,
        decision: Decision, now: float, reason: Callable[[], str], subject: str,
    ) -> Decision | None:
        """Raise the rule's alert (``reason`` is built only when the alert is sent: under a
        flood most are swallowed by the cooldown) and, in block mode, refuse the action."""
        mode: str = getattr(rule, "mode", "alert")
        blocking = mode == "block"
        alerts = self._alerts
        why = ""
        if not alerts.cooling(name, request.agent_id, subject, now, cfg.rules.cooldown_s):
            why = reason()
            alert_mode = "alert" if not blocking else (
                "block" if self.enforce else "would_block")
            alerts.raise_alert(Alert(
                name, request.agent_id, request.session_id, alert_mode, f"anomaly: {why}",
                now, subject=subject,
                details={"rule": cfg.where[name], "action": request.kind,
                         "topic": request.topic, "tool": decision.tool},
            ), cfg.rules.cooldown_s)
        if not blocking:
            return None
        # Blocked: this action is refused now; the kill switch stops the rest (addon).
        return Decision(Verdict.DENY, f"anomaly ({name}): {why or reason()}; the agent is "
                        "stopped",
                        ReasonCode.NOT_AUTHORIZED, decision.action_type, decision.tool,
                        f"guard: anomaly, {cfg.where[name]}", decision.resource,
                        decision.risk)

    # ------------------------------------------------------------------ off the path

    def take_counts(self) -> list[tuple[str, int, float]]:
        """Counts to fold into the store since the last call: (key, window, count)."""
        taken = self._closed
        self._closed = []
        for key, pending in self._pending.items():
            if pending[1]:
                taken.append((key, int(pending[0]), pending[1]))
                pending[1] = 0.0
        return taken

    def restore(self, counts: list[tuple[str, int, float]]) -> None:
        """Counts a fold could not store: kept for the next one (nothing is lost)."""
        self._closed.extend(counts)

    def merge_baseline(self, key: str, baseline: Baseline) -> None:
        """The store's baseline after a fold (every guard's counts of the open window)."""
        self._base[key] = baseline
        self._seen.add(key)

    def baselines(self) -> dict[str, Baseline]:
        return dict(self._base)

    def forget_session(self, session_id: str) -> None:
        self._streaks.pop(session_id, None)
