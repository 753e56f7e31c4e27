"""What a check sees and what it must provide.

Every agent action (connect, publish, subscribe, and each delivery it receives) becomes
a :class:`Request`. The compiled policy decides first; then each registered check may
object: deny (with a reason and an MQTT 5 reason code) or hold for a human. Checks are
synchronous and fast: they read local state that the stores keep current and never
wait on a store, a network call or a human (DESIGN: the per-packet path never waits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ..policy.decision import Decision

if TYPE_CHECKING:
    from ..policy.compiler import CompiledPolicy

T = TypeVar("T")

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


class PerPolicy(Generic[T]):
    """What a check derives from the policy in force, recompiled once after a policy swap
    (compiled policies are immutable: the same object means the same policy)."""

    def __init__(
        self, policy: Callable[[], CompiledPolicy], compile: Callable[[CompiledPolicy], T]
    ) -> None:
        self._policy = policy
        self._compile = compile
        self._for = policy()
        self._value = compile(self._for)

    def get(self) -> T:
        policy = self._policy()
        if policy is not self._for:
            self._value = self._compile(policy)
            self._for = policy
        return self._value
