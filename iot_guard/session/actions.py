"""What a session asks its I/O layer to do (mitmproxy-style commands, no I/O here).

The proxy carries actions out in order. Order matters: an audit record comes before
the bytes it speaks for, so a failed audit write stops the forward (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    record: dict[str, Any]


@dataclass(slots=True)
class ExpireAt:
    """End the session at this epoch time (the agent token's expiry)."""

    timestamp: float


@dataclass(slots=True)
class Close:
    """Close both connections (whatever had to be said was said by earlier actions)."""

    reason: str


Action = SendToAgent | SendToBroker | OpenUpstream | WriteAudit | ExpireAt | Close
