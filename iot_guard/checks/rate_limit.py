"""Rate limits and quotas from the policy's ``limits`` section (issue 8 §2).

Per packet: a few GCRA takes on the store's local limiter (``state.counters.limiter``,
O(1), never waits; shared across guards through the store's leases, issue 11) and, for a
per-session quota, one dict increment. Keys name what a bucket counts::

    c|{agent}                   connections of an agent
    s|{session}                 subscription filters of a session
    a|{agent}|{scope}           actions of an agent      (scope: tool:NAME or risk:CLASS)
    s|{session}|{scope}         actions of a session

What a refusal carries: 0x97 quota exceeded (PUBACK/PUBREC and SUBACK), 0x9F connection
rate exceeded (CONNACK). MQTT 5 names 0x96 "message rate too high", but it is a
DISCONNECT code only: a PUBACK/PUBREC may carry 0x97 and not 0x96 [MQTT-3.4.2.1], and
clients (paho, this guard's own parser) refuse a PUBACK with 0x96 as malformed. The reason
string says which limit it was and when it frees up, so the agent can wait and retry.

Only actions the policy let through (allowed or held) spend budget: a refusal costs the
agent nothing more. Quotas count actions that passed every limit. Rates are taken
narrowest first (session, then agent; tool, then risk), so a session's own limit refuses
before the agent's shared budget is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..mqtt import ReasonCode
from ..policy.compiler import CompiledPolicy
from ..policy.decision import Decision, Verdict
from ..policy_models import ActionLimit, Limits, Rate
from ..state import RateLimit, RateLimiter
from .alerts import Alert, Alerts
from .base import PerPolicy, Request

_DENY = Verdict.DENY  # a module constant: an Enum class attribute costs a descriptor call


def rate_limit(rate: Rate) -> RateLimit:
    return RateLimit(rate.per_minute, rate.burst)


def describe(rate: RateLimit) -> str:
    per = f"{rate.per_minute:g} per minute"
    return per if rate.burst == 1 else f"{per} (burst {rate.burst})"


@dataclass(frozen=True, slots=True)
class _Scope:
    """One limited thing (a tool or a risk class), compiled from an ``ActionLimit``."""

    scope: str  # "tool:identify_device" / "risk:high": the bucket key's last part
    label: str  # "tool identify_device" / "high-risk actions": for reasons
    rule: str  # where it is written: "device_policies/limits.yaml:4 (limits.tools.x)"
    per_session: RateLimit | None
    per_agent: RateLimit | None
    total: int | None


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    connections: RateLimit | None
    connections_rule: str
    subscriptions: RateLimit | None
    subscriptions_rule: str
    tools: dict[str, _Scope]
    risks: dict[str, _Scope]
    empty: bool  # nothing limited: the check returns at once


def compile_limits(policy: CompiledPolicy) -> CompiledLimits:
    limits: Limits = policy.document.limits

    def rule(*path: str) -> str:
        if policy.source is not None:
            return policy.source.rule(("limits", *path))
        return ".".join(("limits", *path))

    def scope(kind: str, name: str, label: str, limit: ActionLimit) -> _Scope:
        return _Scope(
            f"{kind}:{name}", label, rule(f"{kind}s", name),
            rate_limit(limit.per_session) if limit.per_session else None,
            rate_limit(limit.per_agent) if limit.per_agent else None,
            limit.per_session_total,
        )

    return CompiledLimits(
        rate_limit(limits.connections) if limits.connections else None, rule("connections"),
        rate_limit(limits.subscriptions) if limits.subscriptions else None,
        rule("subscriptions"),
        {name: scope("tool", name, f"tool {name}", lim) for name, lim in limits.tools.items()},
        {risk: scope("risk", risk, f"{risk}-risk actions", lim)
         for risk, lim in limits.risks.items()},
        not (limits.connections or limits.subscriptions or limits.tools or limits.risks),
    )


def _when(seconds: float) -> str:
    if math.isinf(seconds):
        return "never: one action costs more than the whole burst"
    return f"frees up in {max(seconds, 0.001):.3g} s"


class RateLimitCheck:
    name = "rate_limit"
    kinds = frozenset({"connect", "publish", "subscribe"})
    enforce = True

    def __init__(
        self, limiter: RateLimiter, policy: Callable[[], CompiledPolicy], alerts: Alerts
    ) -> None:
        self._limiter = limiter
        self._alerts = alerts
        self._limits = PerPolicy(policy, compile_limits)
        # Per-session quotas: (session, scope) -> actions that passed. Forgotten when the
        # session ends (``forget_session``), so memory follows live sessions.
        self._used: dict[str, dict[str, int]] = {}
        # For metrics: refusals by the limit that refused ("tool identify_device per agent").
        self.hits: dict[str, int] = {}

    def limits(self) -> CompiledLimits:
        """The limits of the policy in force (recompiled once after a policy swap)."""
        return self._limits.get()

    def forget_session(self, session_id: str) -> None:
        self._used.pop(session_id, None)

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        limits = self.limits()
        if limits.empty or decision.verdict is _DENY:
            return None
        kind = request.kind
        if kind == "connect":
            rate = limits.connections
            if rate is None:
                return None
            grant = self._limiter.try_take("c|" + request.agent_id, rate, now)
            if grant.ok:
                return None
            return self._refuse(
                request, decision, now, "connections per agent", limits.connections_rule,
                f"connection rate limit: {describe(rate)} per agent; reconnect when it "
                f"{_when(grant.retry_after)}", ReasonCode.CONNECTION_RATE_EXCEEDED,
            )
        if kind == "subscribe" and limits.subscriptions is not None:
            rate = limits.subscriptions
            grant = self._limiter.try_take("s|" + request.session_id, rate, now)
            if not grant.ok:
                return self._refuse(
                    request, decision, now, "subscriptions per session",
                    limits.subscriptions_rule,
                    f"subscription rate limit: {describe(rate)} filters per session; "
                    f"{_when(grant.retry_after)}", ReasonCode.QUOTA_EXCEEDED,
                )
        tool_scope = limits.tools.get(decision.tool) if decision.tool else None
        risk_scope = limits.risks.get(decision.risk) if decision.risk else None
        if tool_scope is None and risk_scope is None:
            return None
        used = self._used.get(request.session_id)
        for scope in (tool_scope, risk_scope):
            if scope is None or scope.total is None:
                continue
            if used is not None and used.get(scope.scope, 0) >= scope.total:
                return self._refuse(
                    request, decision, now, f"{scope.label} per session (total)", scope.rule,
                    f"quota: {scope.label}, {scope.total} per session, used up; it frees up "
                    "in a new session", ReasonCode.QUOTA_EXCEEDED,
                )
        for scope in (tool_scope, risk_scope):
            if scope is None:
                continue
            rate = scope.per_session
            if rate is not None:
                grant = self._limiter.try_take(
                    f"s|{request.session_id}|{scope.scope}", rate, now)
                if not grant.ok:
                    return self._refuse(
                        request, decision, now, f"{scope.label} per session", scope.rule,
                        f"rate limit: {scope.label}, {describe(rate)} per session; "
                        f"{_when(grant.retry_after)}", ReasonCode.QUOTA_EXCEEDED,
                    )
            rate = scope.per_agent
            if rate is not None:
                grant = self._limiter.try_take(f"a|{request.agent_id}|{scope.scope}", rate, now)
                if not grant.ok:
                    return self._refuse(
                        request, decision, now, f"{scope.label} per agent", scope.rule,
                        f"rate limit: {scope.label}, {describe(rate)} per agent; "
                        f"{_when(grant.retry_after)}", ReasonCode.QUOTA_EXCEEDED,
                    )
        for scope in (tool_scope, risk_scope):
            if scope is not None and scope.total is not None:
                if used is None:
                    used = self._used[request.session_id] = {}
                used[scope.scope] = used.get(scope.scope, 0) + 1
        return None

    def _refuse(
        self, request: Request, decision: Decision, now: float, limit: str, rule: str,
        reason: str, code: int,
    ) -> Decision:
        self.hits[limit] = self.hits.get(limit, 0) + 1
        # Never silent: the session audits the refusal and tells the agent; the operator
        # gets an alert (one per agent and limit per cooldown, the rest counted).
        if not self._alerts.cooling("rate_limit", request.agent_id, limit, now):
            self._alerts.raise_alert(Alert(
                "rate_limit", request.agent_id, request.session_id,
                "alert" if self.enforce else "would_block", reason, now, subject=limit,
                details={"limit": limit, "rule": rule, "action": request.kind,
                         "topic": request.topic},
            ))
        action = "connect" if request.kind == "connect" else decision.action_type
        return Decision(Verdict.DENY, reason, int(code), action, decision.tool,
                        f"guard: rate limit, {rule}", decision.resource, decision.risk)
