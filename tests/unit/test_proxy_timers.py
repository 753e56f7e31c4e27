"""The guard's one heap of session timers (iot_guard.proxy.timers), on a real event loop
with a fake epoch clock: no network, no sleeping."""

from __future__ import annotations

import asyncio

from iot_guard.proxy.timers import TimerQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """A link stand-in: one current sequence number per key, a log of what fired."""

    def __init__(self, queue: TimerQueue, fired: list[tuple[str, str]], name: str) -> None:
        self.queue = queue
        self.fired = fired
        self.name = name
        self.current: dict[str, int] = {}

    def set(self, key: str, at: float) -> None:
        if key in self.current:
            self.queue.dropped()
        self.current[key] = self.queue.add(self, key, at)

    def cancel(self, key: str) -> None:
        del self.current[key]
        self.queue.dropped()

    def timer_current(self, key: str, seq: int) -> bool:
        return self.current.get(key) == seq

    def timer_due(self, key: str, seq: int) -> bool:
        if not self.timer_current(key, seq):
            return False
        del self.current[key]
        self.fired.append((self.name, key))
        return True


def test_timers_fire_in_time_order_once_and_skip_cancelled_or_replaced_ones() -> None:
    async def go() -> list[tuple[str, str]]:
        clock = Clock()
        queue = TimerQueue(clock)
        fired: list[tuple[str, str]] = []
        a, b = Owner(queue, fired, "a"), Owner(queue, fired, "b")
        a.set("token", 1_003.0)
        b.set("connect", 1_001.0)
        a.set("connect", 1_002.0)
        b.set("gone", 1_000.5)
        b.cancel("gone")
        a.set("token", 1_000.2)  # replaced: fires at its new time only
        clock.now = 1_010.0  # everything is due
        b.set("last", 1_009.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5  # the loop timer is armed for the earliest entry (0.2 s)
        while ("b", "last") not in fired:
            assert loop.time() < deadline, f"timers did not fire: {fired}"
            await asyncio.sleep(0.01)  # lets the loop run its timers
        assert len(queue) == 0
        return fired

    assert asyncio.run(go()) == [("a", "token"), ("b", "connect"), ("a", "connect"),
                                 ("b", "last")]


def test_stale_entries_are_purged_so_closed_owners_are_not_kept() -> None:
    async def go() -> tuple[int, int]:
        queue = TimerQueue(Clock())
        fired: list[tuple[str, str]] = []
        owners = [Owner(queue, fired, str(i)) for i in range(1_000)]
        for owner in owners:
            owner.set("token", 5_000.0)
        # 900 sessions close: their timers no longer matter.
        for owner in owners[:900]:
            owner.current.clear()
        queue.dropped(900)
        left = len(queue)
        queue.close()
        return left, len(fired)

    left, fired = asyncio.run(go())
    assert left == 100  # rebuilt without the closed owners' entries
    assert fired == 0


def test_a_purge_while_timers_fire_keeps_every_live_timer() -> None:
    # A timer that closes a session drops that session's other timers; with enough stale
    # entries that purges the heap while it is being walked.
    async def go() -> tuple[list[tuple[str, str]], int]:
        clock = Clock()
        queue = TimerQueue(clock)
        fired: list[tuple[str, str]] = []
        closers = [Owner(queue, fired, f"c{i}") for i in range(200)]
        keeper = Owner(queue, fired, "keeper")
        for owner in closers:
            owner.set("a", 1_001.0)
            owner.set("b", 5_000.0)
        keeper.set("later", 1_002.0)

        class Closing(Owner):
            def timer_due(self, key: str, seq: int) -> bool:
                ok = super().timer_due(key, seq)
                if ok:  # the session closes: its other timer no longer matters
                    self.current.clear()
                    self.queue.dropped()
                return ok

        for owner in closers:
            owner.__class__ = Closing
        clock.now = 1_003.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while ("keeper", "later") not in fired:
            assert loop.time() < deadline, f"the keeper's timer did not fire ({len(fired)})"
            await asyncio.sleep(0.01)  # lets the loop run its timers
        return fired, [entry[0] for entry in queue._heap]

    fired, left = asyncio.run(go())
    assert sorted(fired) == sorted([(f"c{i}", "a") for i in range(200)] + [("keeper", "later")])
    # Purged while firing (most of the 200 dropped "b" timers are gone), and nothing that
    # already fired is left behind in the heap.
    assert len(left) < 100 and all(at == 5_000.0 for at in left)
