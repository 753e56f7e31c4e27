"""What a check sees and what it must provide.

Every agent action (connect, publish, subscribe, and each delivery it receives) becomes
a :class:`Request`. The compiled policy decides first; then each registered check may
object: deny (with a reason and an MQTT 5 reason code) or hold for a human. Checks are
synchronous and fast: they read local state that the stores keep current and never
wait on a store, a network call or a human (DESIGN: the per-packet path never waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..policy.decision import Decision

# The actions a check can ask to see (``Check.kinds``).
KINDS = frozenset({"connect", "publish", "subscribe", "receive"})


@dataclass(frozen=True, slots=True)
class Request:
    """One agent action, as the checks see it."""

    kind: str  # one of KINDS
    agent_id: str
    session_id: str
    token_id: str | None
    topic: str  # connect: the peer address; subscribe: the topic filter
    qos: int = 0
    retain: bool = False
    payload: bytes | None = None
    issued_at: float | None = None  # connect: the token's iat (revocation "issued before T")


class Check(Protocol):
    """A step of the pipeline. ``enforce=False`` runs it in observe mode: its objections
    are recorded (``would_deny`` / ``would_hold``) and nothing is refused because of them
    (Envoy's filter_enabled / filter_enforced)."""

    name: str
    kinds: frozenset[str]
    enforce: bool

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        """None: no objection. Otherwise a DENY or HOLD decision saying why. ``decision``
        is the verdict so far (the policy's, then earlier checks'); a check sees denied
        requests too (an anomaly rule counts them) but cannot turn a deny into an allow."""
        ...
