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
from typing import Any
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
    # What the packet path reads, as plain fields (no model attribute chains, no set
    # lookups per packet): each rule's switch, and the numbers of the counting rules.
    denials_on: bool
    outside_on: bool
    repeat_on: bool
    first_use_on: bool
    spike_on: bool
    repeat_count: int
    spike_window_s: float
    spike_warmup: int
    spike_k: float
    spike_min_count: int


def compile_anomaly(policy: CompiledPolicy) -> CompiledAnomaly:
    doc = policy.document
    rules = doc.anomaly
    tenants = frozenset(doc.tenants)
    names = ("repeated_denials", "outside_tenants", "repeated_action", "first_use",
             "off_hours", "rate_spike")
    on = {name: getattr(rules, name).mode != "off" for name in names}
    where = {name: policy.source.rule(("anomaly", name)) if policy.source is not None
             else f"anomaly.{name}" for name in names}
    spike = rules.rate_spike
    return CompiledAnomaly(
        rules,
        Hours(rules.working_hours) if rules.working_hours is not None and on["off_hours"]
        else None,
        {name: tenants - frozenset(agent.tenants) for name, agent in doc.agents.items()},
        on["first_use"] or on["rate_spike"],
        any(on.values()),
        where,
        on["repeated_denials"], on["outside_tenants"], on["repeated_action"],
        on["first_use"], on["rate_spike"],
        rules.repeated_action.count,
        spike.window_s, spike.warmup_windows, spike.k, spike.min_count,
    )


class _Usage:
    """What the check keeps about one agent's use of one tool, found with two dict
    lookups on names the per-packet path already holds (no key string built per packet).

    ``pending`` is the same list as ``AnomalyCheck._pending[key]`` (the counts a fold
    takes); ``base`` follows ``AnomalyCheck._base[key]`` (set by ``merge_baseline``).
    """

    __slots__ = ("key", "pending", "base", "spiked", "threshold", "threshold_base",
                 "threshold_k")

    def __init__(self, key: str, pending: list[float], base: Baseline | None) -> None:
        self.key = key
        self.pending = pending
        self.base = base
        self.spiked: int | None = None  # the window it alerted in
        # ``base.mean + k * base.stddev`` for the baseline and k it was computed from: a
        # square root per packet saved, again when a fold brings a new baseline.
        self.threshold = 0.0
        self.threshold_base: Baseline | None = None
        self.threshold_k = 0.0


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
        # session -> [kind, topic, payload, times in a row] (one list per session, updated
        # in place: no tuple built per packet).
        self._streaks: dict[str, list[Any]] = {}
        # Baselines as last merged from the store, and counts not folded into it yet:
        # key -> (window, count). ``_closed``: counts of windows that ended before a fold.
        self._base: dict[str, Baseline] = dict(baselines or {})
        self._pending: dict[str, list[float]] = {}
        self._closed: list[tuple[str, int, float]] = []
        self._seen: set[str] = set(self._base)  # agent:tool pairs ever used
        # agent -> tool -> its usage, and the same by baseline key (for merge_baseline).
        # Bounded like ``_pending``: by the policy's agents and tools, names the policy
        # decided (never a string the agent chose).
        self._usage: dict[str, dict[str, _Usage]] = {}
        self._usage_by_key: dict[str, _Usage] = {}

    # ------------------------------------------------------------------ configuration

    def config(self) -> CompiledAnomaly:
        return self._cfg.get()

    @property
    def alpha(self) -> float:
        return self.config().rules.rate_spike.alpha

    # ------------------------------------------------------------------ the packet path

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        # The rules that count every action (repeated action, per-tool counts) have their
        # common case inline: nothing to say costs a few dict lookups and no call.
        per = self._cfg
        cfg = per.value if per.policy() is per.compiled_for else per.refresh()
        if not cfg.active:
            return None
        fired: Decision | None = None
        if decision.verdict is _DENY:
            if cfg.denials_on:
                fired = self._denial(cfg, request, decision, now) or fired
            if cfg.outside_on:
                fired = self._outside(cfg, request, decision, now) or fired
        elif cfg.counts_tools and decision.tool is not None:
            # Count the action for its agent and tool (first_use, rate_spike).
            tools = self._usage.get(request.agent_id)
            usage = tools.get(decision.tool) if tools is not None else None
            if usage is None:
                usage, fired = self._first(cfg, request, decision, now)
            window = int(now // cfg.spike_window_s)
            pending = usage.pending
            if pending[0] != window:
                if pending[1]:
                    self._closed.append((usage.key, int(pending[0]), pending[1]))
                pending[0], pending[1] = window, 0.0
            pending[1] += 1
            if cfg.spike_on and usage.base is not None:
                fired = self._spike(cfg, usage, window, request, decision, now) or fired
        if cfg.repeat_on:
            # The same action (kind, topic and payload) as the session's last one?
            kind, topic, payload = request.kind, request.topic, request.payload
            streak = self._streaks.get(request.session_id)
            if streak is None:
                streak = self._streaks[request.session_id] = [kind, topic, payload, 0]
            elif streak[1] != topic or streak[2] != payload or streak[0] != kind:
                streak[0], streak[1], streak[2], streak[3] = kind, topic, payload, 0
            n = streak[3] = streak[3] + 1
            # At the count, and at each further count in the same streak (a long loop is
            # told again once the cooldown is over; block mode stops it at the first).
            if n % cfg.repeat_count == 0:
                fired = self._repeated(cfg, request, decision, now, n) or fired
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

    def _repeated(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
                  now: float, n: int) -> Decision | None:
        return self._fire(
            cfg, "repeated_action", cfg.rules.repeated_action, request, decision, now,
            lambda: f"agent {request.agent_id} sent the same {request.kind} on "
            f"{request.topic!r} {n} times in a row", request.topic)

    def _spike(self, cfg: CompiledAnomaly, usage: _Usage, window: int, request: Request,
               decision: Decision, now: float) -> Decision | None:
        """The count of this window against the agent's baseline for the tool."""
        base = usage.base
        assert base is not None
        if base.windows < cfg.spike_warmup or usage.spiked == window:
            return None
        current = usage.pending[1] + (base.current if base.window == window else 0.0)
        k = cfg.spike_k
        if usage.threshold_base is not base or usage.threshold_k != k:
            usage.threshold = base.mean + k * base.stddev
            usage.threshold_base, usage.threshold_k = base, k
        if current > usage.threshold and current >= cfg.spike_min_count:
            usage.spiked = window
            spike = cfg.rules.rate_spike
            tool = decision.tool
            return self._fire(
                cfg, "rate_spike", spike, request, decision, now,
                lambda: f"agent {request.agent_id} used tool {tool} {current:g} "
                f"times this window ({spike.window_s:g} s); its baseline is {base.mean:.3g} "
                f"+- {base.stddev:.3g} (k={spike.k:g})", tool or "")
        return None

    def _first(self, cfg: CompiledAnomaly, request: Request, decision: Decision,
               now: float) -> tuple[_Usage, Decision | None]:
        """The first action of an agent with a tool since this check started: its usage
        (counting from now), and the first_use alert if the tool was never used before."""
        tool = decision.tool
        assert tool is not None
        key = baseline_key(request.agent_id, tool)
        fired: Decision | None = None
        if key not in self._seen:
            self._seen.add(key)
            if cfg.first_use_on:
                fired = self._fire(
                    cfg, "first_use", cfg.rules.first_use, request, decision, now,
                    lambda: f"agent {request.agent_id} used tool {tool} for the "
                    "first time", tool)
        pending = self._pending.get(key)
        if pending is None:
            # Window -1 closes nothing: the first count opens the packet's window.
            pending = self._pending[key] = [-1, 0.0]
        usage = _Usage(key, pending, self._base.get(key))
        self._usage.setdefault(request.agent_id, {})[tool] = usage
        self._usage_by_key[key] = usage
        return usage, fired

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
        usage = self._usage_by_key.get(key)
        if usage is not None:
            usage.base = baseline

    def baselines(self) -> dict[str, Baseline]:
        return dict(self._base)

    def forget_session(self, session_id: str) -> None:
        self._streaks.pop(session_id, None)
