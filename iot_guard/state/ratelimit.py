"""Rate-limit buckets as GCRA: one float per key, O(1) per take, pure arithmetic.

GCRA (the Generic Cell Rate Algorithm, ITU-T I.371 / ATM Forum TM 4.0) keeps per key one
"theoretical arrival time" ``tat``: the time at which the bucket would be full again. A take
of ``n`` units at ``now`` moves it to ``max(tat, now) + n*T`` (``T`` = seconds per unit) and
is allowed while that stays within ``burst*T`` of ``now``. It is a token bucket with one
number instead of two, and no refill timer.

``gcra_take`` is the one copy of the rule: ``LocalRateLimiter`` runs it on the per-packet
path, and a shared backend's atomic script (issue 11: Lua on Redis time) must give the same
answers (the contract tests check it through ``CounterStore.take``). Times are wall-clock
seconds (``time.time()``), the clock the session's ``now`` comes from.
"""

from __future__ import annotations

import math

from .records import Grant, RateLimit

# A rounding allowance so that a take exactly on the boundary is not refused by float noise.
_EPSILON = 1e-9
_ONE = Grant(1)  # the common answer, built once


def gcra_take(
    tat: float | None, now: float, limit: RateLimit, n: int, *, partial: bool
) -> tuple[Grant, float | None]:
    """Take ``n`` units from a bucket whose state is ``tat`` (None: full). Returns the grant
    and the new state. ``partial``: grant as many as are free (a lease); otherwise all or
    nothing (one action that costs ``n``)."""
    if n < 1:
        raise ValueError(f"take at least one unit, not {n}")
    interval = limit.interval
    start = now if tat is None or tat < now else tat
    # The bucket may run at most ``window`` ahead of now.
    room = now + limit.window - start
    if n * interval <= room + _EPSILON:
        return (_ONE if n == 1 else Grant(n)), start + n * interval
    if not partial:
        if n > limit.burst:  # an action dearer than the whole burst never fits
            return Grant(0, math.inf), tat
        return Grant(0, n * interval - room), tat
    free = max(0, math.floor(room / interval + _EPSILON))
    new_tat = start + free * interval if free else tat
    # The next single unit frees up when the bucket has one interval of room again.
    return Grant(free, (start + free * interval) + interval - limit.window - now), new_tat


class LocalRateLimiter:
    """Buckets in this process's memory; the per-packet path's ``try_take`` (synchronous).

    Memory stays bounded: a bucket whose ``tat`` is in the past is full, which is what a
    missing key means, so it is dropped by an amortised sweep (every time the table doubles).
    """

    __slots__ = ("_tat", "_sweep_at")

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._sweep_at = 1024

    def try_take(self, key: str, limit: RateLimit, now: float, n: int = 1) -> Grant:
        """All or nothing: ``n`` units for one action, or a refusal with ``retry_after``."""
        # The allowed case of ``gcra_take`` inlined (this runs per packet; a property test
        # holds the two to the same answers); a refusal takes the general path.
        tats = self._tat
        tat = tats.get(key)
        start = now if tat is None or tat < now else tat
        new_tat = start + n * limit.interval
        if n >= 1 and new_tat <= now + limit.window + _EPSILON:
            tats[key] = new_tat
            if len(tats) >= self._sweep_at:
                self.sweep(now)
            return _ONE if n == 1 else Grant(n)
        return self._take(key, limit, now, n, False)

    def take_up_to(self, key: str, limit: RateLimit, now: float, n: int) -> Grant:
        """As many of ``n`` units as are free (what a lease asks for)."""
        return self._take(key, limit, now, n, True)

    def _take(self, key: str, limit: RateLimit, now: float, n: int, partial: bool) -> Grant:
        tats = self._tat
        grant, tat = gcra_take(tats.get(key), now, limit, n, partial=partial)
        if tat is not None:
            tats[key] = tat
            if len(tats) >= self._sweep_at:
                self.sweep(now)
        return grant

    def adopt(self, key: str, tat: float) -> None:
        """Take on a bucket state learned elsewhere (a shared backend's sync): the later of
        the two, so units taken on other guards count here too."""
        if tat > self._tat.get(key, 0.0):
            self._tat[key] = tat

    def sweep(self, now: float) -> int:
        """Forget full buckets; returns how many were dropped."""
        full = [k for k, tat in self._tat.items() if tat <= now]
        for k in full:
            del self._tat[k]
        self._sweep_at = max(1024, 2 * len(self._tat))
        return len(full)

    def __len__(self) -> int:
        return len(self._tat)
