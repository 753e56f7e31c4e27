"""What happens to a session: the inputs of the sans-IO state machine.

The I/O layer turns every socket read, close, timer and answer from a hook into one of
these and hands it to ``GuardSession.handle(event, now)`` (h11's ``receive_data`` ->
events, the other way round). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..policy.compiler import CompiledPolicy


@dataclass(slots=True)
class AgentOpened:
    """A TCP (or TLS) connection from an agent was accepted."""

    peer: str


@dataclass(slots=True)
class AgentData:
    data: bytes


@dataclass(slots=True)
class BrokerData:
    data: bytes


@dataclass(slots=True)
class AgentClosed:
    """The agent's connection ended (without DISCONNECT, or after it)."""


@dataclass(slots=True)
class BrokerClosed:
    """The upstream connection ended."""


@dataclass(slots=True)
class BrokerUnreachable:
    """The upstream connection could not be opened."""

    why: str


@dataclass(slots=True)
class TimerFired:
    """A wake-up the session asked for with ``SetTimer(key, at)``."""

    key: str


@dataclass(slots=True)
class HoldResolved:
    """A hold the session started (``StartHold``) reached an outcome."""

    hold_id: str
    outcome: str  # approved, denied, expired, cancelled, done, failed, aborted, void
    detail: str = ""


@dataclass(slots=True)
class GuardNotice:
    """The guard tells the agent something on one of its own ``$guard/...`` topics
    (approval states); delivered only where the agent subscribed to a matching filter."""

    topic: str
    payload: bytes


@dataclass(slots=True)
class Kick:
    """The control plane ends the session (kill switch, revocation, shutdown)."""

    reason_code: int
    reason: str


@dataclass(slots=True)
class PolicySwapped:
    """A new compiled policy is in force: the next packet is judged by it."""

    policy: CompiledPolicy


Event = (
    AgentOpened | AgentData | BrokerData | AgentClosed | BrokerClosed | BrokerUnreachable
    | TimerFired | HoldResolved | GuardNotice | Kick | PolicySwapped
)
