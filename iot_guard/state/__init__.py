"""State that outlives a packet: approvals, counters, flags, the audit chain head.

Callers depend on the protocols (``ApprovalStore``, ``CounterStore``, ``FlagStore``,
``ChainHeadStore``, together a ``Stores``) and get a backend from ``open_state``: the embedded
one (``run --state DIR``: SQLite + memory) for one guard, Redis (``redis://``) for several.
What the per-packet path reads is synchronous and local: ``state.flags.view``
(``FlagView``) and ``state.counters.limiter`` (``RateLimiter``); the stores keep it current.
"""

from .factory import default_state_dir, open_state
from .flags import FlagView
from .protocols import (
    ApprovalStore,
    ChainHeadStore,
    CounterStore,
    FlagStore,
    RateLimiter,
    Stores,
    Unsubscribe,
)
from .records import (
    ALL_AGENTS,
    DEVICE_DONE,
    DEVICE_STATUSES,
    AlreadyExists,
    Baseline,
    ChainHead,
    DeviceState,
    FlagEvent,
    FlagSnapshot,
    Grant,
    Kill,
    Lift,
    RateLimit,
    Record,
    Revocation,
    StateError,
    StateUnavailable,
    VoidBefore,
    rollout_counts,
)

__all__ = [
    "ALL_AGENTS", "DEVICE_DONE", "DEVICE_STATUSES", "AlreadyExists", "ApprovalStore",
    "Baseline", "ChainHead", "ChainHeadStore", "CounterStore", "DeviceState", "FlagEvent",
    "FlagSnapshot", "FlagStore", "FlagView", "Grant", "Kill", "Lift", "RateLimit", "RateLimiter",
    "Record", "Revocation", "Stores", "StateError", "StateUnavailable", "Unsubscribe",
    "VoidBefore", "default_state_dir", "open_state", "rollout_counts",
]
