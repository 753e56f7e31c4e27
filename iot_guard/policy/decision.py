"""What the policy says about one packet: allow, deny or hold, and why.

A :class:`Decision` is immutable so the compiled policy can build the topic-level
ones once and hand out the same object per packet (see ``compiler.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..mqtt.reason_codes import ReasonCode


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold"  # needs a human's approval before it may go


# action_type values (the audit log's vocabulary)
READ = "read"  # subscribe, receive
WRITE = "write"  # publish of data or config
INVOKE = "invoke"  # publish of a command


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    # One sentence an LLM can act on; for an allow: "allowed by tool X".
    reason: str
    # An MQTT 5 reason code (mqtt.ReasonCode, spec 2.4): SUCCESS, or why it was refused.
    reason_code: int
    action_type: str
    tool: str | None = None
    # Where the matched rule lives: "device_policies/tools.yaml:23 (tools.shadow_update)".
    rule: str | None = None
    # "acme/therm-001" for a device, "acme/groups/floor-1" for a group ('+' where a
    # subscription leaves a level open).
    resource: str | None = None
    risk: str | None = None  # effective risk class
    max_qos: int | None = None  # subscribe/receive: the QoS the guard grants at most

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


_DENY = Verdict.DENY


class _Draft:
    """A Decision being filled: the same slots (so the same layout) without the frozen
    ``__setattr__``, so each field is one plain slot store; then it becomes a Decision.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (about 1.4 us for nine fields here), setting them through the slot descriptors
    costs a call each (0.65 us); a ``_Draft(...)`` call with an ``__init__`` 0.44 us
    (half of it the class call entering ``__init__``); ``decision``/``deny`` below
    make the object with ``_Draft.__new__`` and store the slots themselves (about 40%
    less again). Python allows ``__class__`` to change between classes of the same
    layout; the object is then a Decision like any other (equal, hashable, frozen),
    which tests/unit/test_policy_decision.py checks.
    """

    __slots__ = Decision.__slots__
    # Decision's fields (what the slots hold), for the type checker.
    verdict: Verdict
    reason: str
    reason_code: int
    action_type: str
    tool: str | None
    rule: str | None
    resource: str | None
    risk: str | None
    max_qos: int | None


_new_draft = _Draft.__new__


def decision(
    verdict: Verdict,
    reason: str,
    reason_code: int,
    action_type: str,
    tool: str | None = None,
    rule: str | None = None,
    resource: str | None = None,
    risk: str | None = None,
    max_qos: int | None = None,
) -> Decision:
    """``Decision(...)`` for the per-topic decisions of a first packet, at a fraction
    of the cost (see ``_Draft``). Same object, same immutability."""
    made = _new_draft(_Draft)
    made.verdict = verdict
    made.reason = reason
    made.reason_code = reason_code
    made.action_type = action_type
    made.tool = tool
    made.rule = rule
    made.resource = resource
    made.risk = risk
    made.max_qos = max_qos
    made.__class__ = Decision  # type: ignore[assignment]  # from here on, frozen
    return made  # type: ignore[return-value]  # a Decision now


def deny(
    reason: str,
    action_type: str,
    reason_code: int = ReasonCode.NOT_AUTHORIZED,
    tool: str | None = None,
    rule: str | None = None,
    resource: str | None = None,
    risk: str | None = None,
) -> Decision:
    """A refusal (``decision`` with the verdict deny and no QoS cap)."""
    return decision(_DENY, reason, reason_code, action_type, tool, rule, resource, risk)
