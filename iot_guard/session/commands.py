"""What a session asks its I/O layer to do (mitmproxy-style commands, no I/O here).

The proxy carries commands out in order and raises on one it does not know. Order
matters: an audit record comes before the bytes it speaks for, so a failed audit write
stops the forward (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..policy.decision import Decision


@dataclass(slots=True)
class SendToAgent:
    data: bytes


@dataclass(slots=True)
class SendToBroker:
    data: bytes


@dataclass(slots=True)
class OpenUpstream:
    """Connect to the broker and send ``connect`` (the rewritten CONNECT) first."""

    connect: bytes


@dataclass(slots=True)
class WriteAudit:
    # A dict, or a session message's audit.records.TemplateRecord (read-only).
    record: Mapping[str, Any]


@dataclass(slots=True)
class SetTimer:
    """Wake the session with ``TimerFired(key)`` at epoch time ``at`` (replaces an
    earlier timer of the same key)."""

    key: str
    at: float


@dataclass(slots=True)
class CancelTimer:
    key: str


@dataclass(frozen=True, slots=True)
class HeldAction:
    """A publish parked for a human: everything an approval is bound to."""

    hold_id: str
    agent_id: str
    session_id: str
    token_id: str | None
    tool: str | None
    topic: str
    qos: int
    retain: bool
    payload: bytes
    properties: dict[int, object]
    decision: Decision
    created_at: float


@dataclass(slots=True)
class StartHold:
    """Hand a held action to whoever resolves holds (the approvals service). The
    session has already answered the agent; the outcome comes back as HoldResolved."""

    held: HeldAction


@dataclass(slots=True)
class GuardSubscribed:
    """The agent subscribed to one of the guard's own topics (e.g. ``$guard/approvals/+``):
    hooks may answer with the current state through the control plane."""

    agent_id: str
    session_id: str
    topic_filter: str


@dataclass(slots=True)
class Close:
    """Close both connections (whatever had to be said was said by earlier commands).
    ``agent_ended``: the agent ended the session itself (its DISCONNECT, its connection
    closed, or a protocol error of its own); what the guard accepted from it before is
    still owed to the broker, as a broker reached directly would have read it."""

    reason: str
    agent_ended: bool = False


Command = (
    SendToAgent | SendToBroker | OpenUpstream | WriteAudit | SetTimer | CancelTimer
    | StartHold | GuardSubscribed | Close
)
