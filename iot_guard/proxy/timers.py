"""Every session timer of a guard on one heap, woken by one event-loop timer.

A session asks for wake-ups (``SetTimer(key, at)``): every connected session has at
least its token-expiry timer. One loop ``TimerHandle`` per session costs ~0.65 KB
(uvloop), more than a tenth of what an idle session costs in all; a heap entry costs a
tuple. Entries are never removed from the middle of the heap: a cancelled or replaced
timer stays until it comes up and is then skipped (its sequence number no longer
matches), and the heap is rebuilt without them once they are the majority, so closed
sessions are not kept alive by their timers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerOwner(Protocol):
    def timer_due(self, key: str, seq: int) -> bool:
        """Fire the timer ``key`` if ``seq`` is still the owner's current one for it;
        return whether it was."""

    def timer_current(self, key: str, seq: int) -> bool:
        """Whether ``seq`` is still the owner's current timer for ``key``."""


class TimerQueue:
    __slots__ = ("_clock", "_heap", "_seq", "_handle", "_armed_at", "_stale")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # epoch seconds: the sessions' ``now`` and ``at``
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._seq = itertools.count(1)
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._stale = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, owner: TimerOwner, key: str, at: float) -> int:
        """Schedule ``owner.timer_due(key, seq)`` at epoch time ``at``; return ``seq``."""
        seq = next(self._seq)
        heapq.heappush(self._heap, (at, seq, owner, key))
        if at < self._armed_at:
            self._arm(at)
        return seq

    def dropped(self, count: int = 1) -> None:
        """``count`` entries no longer matter (cancelled, replaced, owner closed)."""
        self._stale += count
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            # In place: _fire may be walking this very list (a timer that closes a
            # session drops that session's other timers).
            self._heap[:] = [e for e in self._heap if e[2].timer_current(e[3], e[1])]
            heapq.heapify(self._heap)
            self._stale = 0
            if not self._heap and self._handle is not None:
                self._handle.cancel()
                self._handle, self._armed_at = None, float("inf")

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, at - self._clock()), self._fire)
        self._armed_at = at

    def _fire(self) -> None:
        self._handle, self._armed_at = None, float("inf")
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            _, seq, owner, key = heapq.heappop(heap)
            if not owner.timer_due(key, seq):
                self._stale = max(0, self._stale - 1)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._armed_at = None, float("inf")
        self._heap.clear()
        self._stale = 0
