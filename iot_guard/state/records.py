"""The values the state stores keep and return: small frozen records, no I/O.

Every backend (SQLite today, Redis in the scale-out issue) returns these exact types, so a
caller never knows which backend it talks to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

# ----------------------------------------------------------------------------- errors


class StateError(Exception):
    """The state could not be opened or used; the message is one line for the operator."""


class StateUnavailable(StateError):
    """The requested backend exists in the design but is not built yet (e.g. ``redis://``)."""


class AlreadyExists(StateError):
    """``create``/``rollout_start`` of an id that is already stored (ids are never reused)."""


# ----------------------------------------------------------------------------- approvals


@dataclass(frozen=True, slots=True)
class Record:
    """One durable record (an approval request): an id, a status, a JSON body.

    ``rev`` grows on every change of any record of the store (a store-wide sequence), so a
    watcher that missed changes can ask for everything after the last ``rev`` it saw.
    ``owner``/``lease_until``: who has claimed the record to carry it out, and until when
    (store clock); an expired lease may be claimed by another guard.
    """

    id: str
    status: str
    body: dict[str, Any]
    created_at: float
    updated_at: float
    rev: int
    owner: str | None = None
    lease_until: float | None = None


DeviceStatus = Literal[
    "queued", "in_progress", "succeeded", "failed", "rejected", "timed_out", "cancelled"
]
DEVICE_STATUSES: tuple[str, ...] = (
    "queued", "in_progress", "succeeded", "failed", "rejected", "timed_out", "cancelled"
)
DEVICE_DONE: frozenset[str] = frozenset(
    {"succeeded", "failed", "rejected", "timed_out", "cancelled"}
)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device of a rollout (issue 7 §5): where its patch is, and why."""

    device: str
    status: str
    at: float
    detail: str | None = None


def rollout_counts(devices: list[DeviceState]) -> dict[str, int]:
    """``{status: n}`` over every device status, zeros included (the request view's counts)."""
    counts = dict.fromkeys(DEVICE_STATUSES, 0)
    for d in devices:
        counts[d.status] += 1
    return counts


# ----------------------------------------------------------------------------- counters


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A rate with a burst: ``per_minute`` units per minute, at most ``burst`` at once.

    ``interval`` (seconds per unit, GCRA's emission interval T) and ``window`` (``burst``
    intervals, how far ahead of now a bucket may run) are computed once, not per packet.
    """

    per_minute: float
    burst: int = 1
    interval: float = field(init=False, repr=False, compare=False)
    window: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.per_minute > 0 and math.isfinite(self.per_minute)):
            raise ValueError(f"rate must be a positive number per minute, not {self.per_minute}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")
        object.__setattr__(self, "interval", 60.0 / self.per_minute)
        object.__setattr__(self, "window", self.burst * self.interval)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a take got: ``granted`` units (0 = refused) and, when short, seconds until the
    next unit frees up (``retry_after``, 0.0 when everything asked for was granted)."""

    granted: int
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.granted > 0


@dataclass(frozen=True, slots=True)
class Baseline:
    """An exponentially weighted mean and variance of a count per window (issue 8 §3).

    ``window`` is the index of the open window (``floor(time / window_s)``) whose count so far
    is ``current``; ``mean``/``variance`` cover the ``windows`` closed windows folded so far
    (the anomaly check's warm-up is a minimum ``windows``).
    """

    mean: float = 0.0
    variance: float = 0.0
    windows: int = 0
    window: int = 0
    current: float = 0.0

    @property
    def stddev(self) -> float:
        return math.sqrt(self.variance)


# ----------------------------------------------------------------------------- flags

ALL_AGENTS = "*"
"""The agent key of the fleet-wide kill switch and fleet-wide token voiding."""


@dataclass(frozen=True, slots=True)
class Kill:
    """A kill switch in force for ``agent`` (``ALL_AGENTS`` = every agent)."""

    agent: str
    reason: str
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class Lift:
    """The last lift of ``agent``'s switch: who, when, and the kill it ended."""

    agent: str
    by: str
    at: float
    kill: Kill


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked token id; forgotten after ``expires_at`` (the token is dead by then anyway)."""

    jti: str
    agent: str | None
    reason: str
    at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class VoidBefore:
    """Tokens of ``agent`` (or ``ALL_AGENTS``) issued before ``before`` are void; never lifted."""

    agent: str
    before: float
    reason: str


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """Every flag at one moment: what ``FlagView`` answers from."""

    kills: dict[str, Kill] = field(default_factory=dict)
    lifts: dict[str, Lift] = field(default_factory=dict)
    revoked: dict[str, Revocation] = field(default_factory=dict)
    void_before: dict[str, VoidBefore] = field(default_factory=dict)


FlagEventKind = Literal["kill", "lift", "revoke", "void_before"]


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """A change of the flags, as pushed to watchers. ``agent`` is ``ALL_AGENTS`` for the
    fleet-wide switch; ``jti`` is set for ``revoke``. ``reason``, ``by`` and ``at`` say why,
    who and when: for a lift, who lifted it and when, with the lifted kill's reason; for
    ``void_before``, ``at`` is the void-before time."""

    kind: FlagEventKind
    agent: str | None
    reason: str
    at: float
    jti: str | None = None
    by: str | None = None


# ----------------------------------------------------------------------------- audit chain


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where one guard instance's audit chain ends (issue 8 §1): last sequence number and the
    link to it (hex: the ``prev`` the next line carries, by the chain's line format), and the
    last signed checkpoint (tree size, Merkle root in base64 as the note has it, time)."""

    seq: int
    hash: str
    checkpoint_size: int = 0
    checkpoint_root: str = ""
    checkpoint_at: float | None = None
