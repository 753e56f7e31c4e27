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


_new = object.__new__
_DENY = Verdict.DENY
(
    _set_verdict,
    _set_reason,
    _set_code,
    _set_action,
    _set_tool,
    _set_rule,
    _set_resource,
    _set_risk,
    _set_max_qos,
) = (getattr(Decision, name).__set__ for name in Decision.__slots__)


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
    """``Decision(...)`` for the per-topic decisions of a first packet, at half the cost.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``;
    the slot descriptors set the same slots directly. Same object, same immutability.
    """
    d = _new(Decision)
    _set_verdict(d, verdict)
    _set_reason(d, reason)
    _set_code(d, reason_code)
    _set_action(d, action_type)
    _set_tool(d, tool)
    _set_rule(d, rule)
    _set_resource(d, resource)
    _set_risk(d, risk)
    _set_max_qos(d, max_qos)
    return d


def deny(
    reason: str,
    action_type: str,
    reason_code: int = ReasonCode.NOT_AUTHORIZED,
    tool: str | None = None,
    rule: str | None = None,
    resource: str | None = None,
    risk: str | None = None,
) -> Decision:
    return decision(_DENY, reason, reason_code, action_type, tool, rule, resource, risk)
