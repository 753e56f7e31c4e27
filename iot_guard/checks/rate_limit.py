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
from ..policy.decision import decision as new_decision
from ..policy_models import RISKS, ActionLimit, Limits, Rate
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
class _Refusal:
    """What a refusal by one limit says, worded once per policy: a flood is refused packet
    after packet, and only when the limit frees up is new each time."""

    limit: str  # "tool identify_device per agent": the metrics' label, the alert's subject
    rule: str  # where it is written: "device_policies/limits.yaml:4 (limits.tools.x)"
    reason: str  # the reason up to when it frees up (all of it for a quota)
    code: int  # the MQTT 5 reason code
    decided_by: str  # the decision's rule: "guard: rate limit, <rule>"


def _refusal(limit: str, rule: str, reason: str, code: int) -> _Refusal:
    return _Refusal(limit, rule, reason, int(code), f"guard: rate limit, {rule}")


@dataclass(frozen=True, slots=True)
class _Scope:
    """One limited thing (a tool or a risk class), compiled from an ``ActionLimit``."""

    scope: str  # "tool:identify_device" / "risk:high": the bucket key's last part
    per_session: RateLimit | None
    per_agent: RateLimit | None
    total: int | None
    # The refusal of each limit of the scope that is set.
    per_session_refusal: _Refusal | None
    per_agent_refusal: _Refusal | None
    total_refusal: _Refusal | None


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    connections: RateLimit | None
    connections_refusal: _Refusal | None
    subscriptions: RateLimit | None
    subscriptions_refusal: _Refusal | None
    tools: dict[str, _Scope]
    risks: dict[str, _Scope]
    empty: bool  # nothing limited: the check returns at once
    # (tool, risk) of a decision -> the scopes that limit it, narrowest first (tool, then
    # risk); empty: nothing to take. Every tool of the policy (and None) with every risk
    # class (and None), so an action costs one lookup (``_scopes`` for any other pair).
    actions: dict[tuple[str | None, str | None], tuple[_Scope, ...]]


def _scopes(tools: dict[str, _Scope], risks: dict[str, _Scope], tool: str | None,
            risk: str | None) -> tuple[_Scope, ...]:
    """The scopes limiting an action of ``tool`` at ``risk``: its tool's, then its risk
    class's (narrowest first), those the policy limits."""
    tool_scope = tools.get(tool) if tool else None
    risk_scope = risks.get(risk) if risk else None
    return tuple(scope for scope in (tool_scope, risk_scope) if scope is not None)


def compile_limits(policy: CompiledPolicy) -> CompiledLimits:
    limits: Limits = policy.document.limits

    def rule(*path: str) -> str:
        if policy.source is not None:
            return policy.source.rule(("limits", *path))
        return ".".join(("limits", *path))

    def scope(kind: str, name: str, label: str, limit: ActionLimit) -> _Scope:
        where = rule(f"{kind}s", name)
        per_session = rate_limit(limit.per_session) if limit.per_session else None
        per_agent = rate_limit(limit.per_agent) if limit.per_agent else None
        total = limit.per_session_total
        return _Scope(
            f"{kind}:{name}", per_session, per_agent, total,
            _refusal(f"{label} per session", where,
                     f"rate limit: {label}, {describe(per_session)} per session; ",
                     ReasonCode.QUOTA_EXCEEDED) if per_session else None,
            _refusal(f"{label} per agent", where,
                     f"rate limit: {label}, {describe(per_agent)} per agent; ",
                     ReasonCode.QUOTA_EXCEEDED) if per_agent else None,
            _refusal(f"{label} per session (total)", where,
                     f"quota: {label}, {total} per session, used up; it frees up in a new "
                     "session", ReasonCode.QUOTA_EXCEEDED) if total is not None else None,
        )

    tools = {name: scope("tool", name, f"tool {name}", lim) for name, lim in limits.tools.items()}
    risks: dict[str, _Scope] = {risk: scope("risk", risk, f"{risk}-risk actions", lim)
                                for risk, lim in limits.risks.items()}
    connections = rate_limit(limits.connections) if limits.connections else None
    subscriptions = rate_limit(limits.subscriptions) if limits.subscriptions else None
    return CompiledLimits(
        connections,
        _refusal("connections per agent", rule("connections"),
                 f"connection rate limit: {describe(connections)} per agent; reconnect when "
                 "it ", ReasonCode.CONNECTION_RATE_EXCEEDED) if connections else None,
        subscriptions,
        _refusal("subscriptions per session", rule("subscriptions"),
                 f"subscription rate limit: {describe(subscriptions)} filters per session; ",
                 ReasonCode.QUOTA_EXCEEDED) if subscriptions else None,
        tools,
        risks,
        not (limits.connections or limits.subscriptions or limits.tools or limits.risks),
        {(tool, risk): _scopes(tools, risks, tool, risk)
         for tool in (None, *policy.document.tools) for risk in (None, *RISKS)},
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

    def forget_session(self, session_id: str) -> None:
        self._used.pop(session_id, None)

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        per = self._limits
        limits = per.value if per.policy() is per.compiled_for else per.refresh()
        if limits.empty or decision.verdict is _DENY:
            return None
        kind = request.kind
        if kind == "connect":
            rate = limits.connections
            if rate is None:
                return None
            grant = self._limiter.try_take("c|" + request.agent_id, rate, now)
            if grant.granted:  # ``Grant.ok`` without the property call, per take
                return None
            assert limits.connections_refusal is not None
            return self._refuse(request, decision, now, limits.connections_refusal,
                                _when(grant.retry_after))
        if kind == "subscribe" and limits.subscriptions is not None:
            grant = self._limiter.try_take("s|" + request.session_id, limits.subscriptions, now)
            if not grant.granted:
                assert limits.subscriptions_refusal is not None
                return self._refuse(request, decision, now, limits.subscriptions_refusal,
                                    _when(grant.retry_after))
        tool, risk = decision.tool, decision.risk
        scopes = limits.actions.get((tool, risk))
        if scopes is None:  # a pair the table does not hold: the same rule, on demand
            scopes = _scopes(limits.tools, limits.risks, tool, risk)
        if not scopes:
            return None
        used = self._used.get(request.session_id)
        if used is not None:
            for scope in scopes:
                if scope.total is not None and used.get(scope.scope, 0) >= scope.total:
                    assert scope.total_refusal is not None
                    return self._refuse(request, decision, now, scope.total_refusal, "")
        for scope in scopes:
            rate = scope.per_session
            if rate is not None:
                grant = self._limiter.try_take(
                    f"s|{request.session_id}|{scope.scope}", rate, now)
                if not grant.granted:
                    assert scope.per_session_refusal is not None
                    return self._refuse(request, decision, now, scope.per_session_refusal,
                                        _when(grant.retry_after))
            rate = scope.per_agent
            if rate is not None:
                grant = self._limiter.try_take(f"a|{request.agent_id}|{scope.scope}", rate, now)
                if not grant.granted:
                    assert scope.per_agent_refusal is not None
                    return self._refuse(request, decision, now, scope.per_agent_refusal,
                                        _when(grant.retry_after))
        for scope in scopes:
            if scope.total is not None:
                if used is None:
                    used = self._used[request.session_id] = {}
                used[scope.scope] = used.get(scope.scope, 0) + 1
        return None

    def _refuse(self, request: Request, decision: Decision, now: float, refusal: _Refusal,
                when: str) -> Decision:
        """The refusal by one limit; ``when``: when it frees up, ends the reason."""
        limit = refusal.limit
        reason = refusal.reason + when
        self.hits[limit] = self.hits.get(limit, 0) + 1
        # Never silent: the session audits the refusal and tells the agent; the operator
        # gets an alert (one per agent and limit per cooldown, the rest counted).
        if not self._alerts.cooling("rate_limit", request.agent_id, limit, now):
            self._alerts.raise_alert(Alert(
                "rate_limit", request.agent_id, request.session_id,
                "alert" if self.enforce else "would_block", reason, now, subject=limit,
                details={"limit": limit, "rule": refusal.rule, "action": request.kind,
                         "topic": request.topic},
            ))
        action = "connect" if request.kind == "connect" else decision.action_type
        return new_decision(_DENY, reason, refusal.code, action, decision.tool,
                            refusal.decided_by, decision.resource, decision.risk)
