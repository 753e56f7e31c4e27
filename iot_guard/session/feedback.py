"""What a decision says, to the agent (``$guard/events``) and to the audit log.

One decision, one explanation (DESIGN principle 6): the event an agent reads and the
audit line an operator reads are built from the same Decision.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..audit import utc_iso
from ..policy.decision import Decision, Verdict

# The guard's own topic: agents subscribe to it for refusal events; it never reaches
# the broker.
EVENTS_TOPIC = "$guard/events"

_STATUS = {Verdict.ALLOW: "success", Verdict.DENY: "denied", Verdict.HOLD: "denied"}


def guard_refusal(reason: str, reason_code: int) -> Decision:
    """A refusal the guard makes itself, before the policy is asked."""
    return Decision(
        verdict=Verdict.DENY, reason=reason, reason_code=int(reason_code), action_type="write",
        rule="guard: protocol rule",
    )


def event_payload(
    decision: Decision, action: str, topic: str, now: float, approval_id: str | None = None
) -> bytes:
    event: dict[str, object] = {
        "decision": decision.verdict.value,
        "action": action,
        "topic": topic,
        "tool": decision.tool,
        "reason": decision.reason,
        "reason_code": decision.reason_code,
        "rule": decision.rule,
        "risk": decision.risk,
        "timestamp": utc_iso(now),
    }
    if approval_id is not None:
        event["approval_id"] = approval_id
    return json.dumps(event, separators=(",", ":")).encode()


def audit_record(
    *,
    now: float,
    agent_id: str | None,
    session_id: str,
    client_id: str | None,
    token_id: str | None,
    decision: Decision,
    packet: str,
    scope: str,
    payload: bytes | None = None,
    qos: int | None = None,
    retain: bool | None = None,
    note: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    allowed = decision.verdict is Verdict.ALLOW
    record: dict[str, Any] = {
        "timestamp": utc_iso(now),
        "agent_id": agent_id,
        "session_id": session_id,
        "client_id": client_id,
        "token_id": token_id,
        "packet": packet,
        "tool_name": decision.tool,
        "action_type": decision.action_type,
        "requested_scope": scope,
        "granted_scope": scope if allowed else None,
        "resource_id": decision.resource,
        "result_status": status or _STATUS[decision.verdict],
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "reason_code": decision.reason_code,
        "rule": decision.rule,
        "risk": decision.risk,
    }
    if qos is not None:
        record["qos"] = qos
    if retain is not None:
        record["retain"] = retain
    if payload is not None:
        # Never the payload itself: its size and digest are enough to match it later.
        record["payload_bytes"] = len(payload)
        record["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    if note:
        record["note"] = note
    return record
