"""Rate-limit buckets as GCRA: one float per key, O(1) per take, pure arithmetic.

GCRA (the Generic Cell Rate Algorithm, ITU-T I.371 / ATM Forum TM 4.0) keeps per key one
"theoretical arrival time" ``tat``: the time at which the bucket would be full again. A take
of ``n`` units at ``now`` moves it to ``max(tat, now) + n*T`` (``T`` = seconds per unit) and
is allowed while that stays within ``burst*T`` of ``now``. It is a token bucket with one
number instead of two, and no refill timer.

``gcra_take`` is the one copy of the rule: ``LocalRateLimiter`` runs it on the per-packet
path, and a shared backend's atomic script (issue 11: Lua on Redis time) must give the same
answers (the contract tests check it through ``CounterStore.take``).
"""

from __future__ import annotations

import math

from .records import Grant, RateLimit

# A rounding allowance so that a take exactly on the boundary is not refused by float noise.
_EPSILON = 1e-9


def gcra_take(
    tat: float | None, now: float, limit: RateLimit, n: int, *, partial: bool
) -> tuple[Grant, float | None]:
    """Take ``n`` units from a bucket whose state is ``tat`` (None: full). Returns the grant
    and the new state. ``partial``: grant as many as are free (a lease); otherwise all or
    nothing (one action that costs ``n``)."""
    if n < 1:
        raise ValueError(f"take at least one unit, not {n}")
    if not partial and n > limit.burst:
        return Grant(0, math.inf), tat  # never fits: an action dearer than the whole burst
    interval = limit.interval
    start = now if tat is None or tat < now else tat
    # Units free now: the room left in the burst window, in whole intervals.
    free = math.floor((now + limit.burst * interval - start) / interval + _EPSILON)
    granted = min(n, free) if partial else (n if free >= n else 0)
    if granted <= 0:
        granted = 0
    new_tat = start + granted * interval if granted else tat
    retry_after = 0.0
    if granted < n:
        wanted = 1 if partial else n - granted
        # The first moment at which ``wanted`` more units fit in the burst window.
        after = (new_tat if new_tat is not None and new_tat > now else now) + wanted * interval
        retry_after = max(0.0, after - limit.burst * interval - now)
    return Grant(granted, retry_after), new_tat


class LocalRateLimiter:
    """Buckets in this process's memory; the per-packet path's ``try_take`` (synchronous).

    Memory stays bounded: a bucket whose ``tat`` is in the past is full, which is what a
    missing key means, so it is dropped by an amortised sweep (every time the table doubles).
    """

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._sweep_at = 1024

    def try_take(self, key: str, limit: RateLimit, now: float, n: int = 1) -> Grant:
        """All or nothing: ``n`` units for one action, or a refusal with ``retry_after``."""
        return self._take(key, limit, now, n, partial=False)

    def take_up_to(self, key: str, limit: RateLimit, now: float, n: int) -> Grant:
        """As many of ``n`` units as are free (what a lease asks for)."""
        return self._take(key, limit, now, n, partial=True)

    def _take(self, key: str, limit: RateLimit, now: float, n: int, *, partial: bool) -> Grant:
        grant, tat = gcra_take(self._tat.get(key), now, limit, n, partial=partial)
        if tat is not None:
            self._tat[key] = tat
            if len(self._tat) >= self._sweep_at:
                self.sweep(now)
        return grant

    def sweep(self, now: float) -> int:
        """Forget full buckets; returns how many were dropped."""
        full = [k for k, tat in self._tat.items() if tat <= now]
        for k in full:
            del self._tat[k]
        self._sweep_at = max(1024, 2 * len(self._tat))
        return len(full)

    def __len__(self) -> int:
        return len(self._tat)
