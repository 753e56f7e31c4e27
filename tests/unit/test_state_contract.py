"""The state store contract: every backend must pass every test here.

To add a backend (issue 11: Redis): write a fixture ``state_backend_<name>`` like
``state_backend_sqlite`` below (it may use other fixtures, e.g. a real redis-server on a
free port, and must start from empty state), returning an object with a ``clock`` and an
``async open()`` that opens *another handle* on the same shared state each time it is called
(a second guard, or the same guard after a restart); add ``<name>`` to ``BACKENDS``. Nothing
else changes. The tests drive the stores' clock (``FakeClock``): a backend that reads the
server's time in production must take the injected clock when one is given.

Two handles opened from one backend are two independent clients (two SQLite connections on
two threads; two Redis connections), so the races below are real races at the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from iot_guard.state import (
    ALL_AGENTS,
    AlreadyExists,
    ChainHead,
    DeviceState,
    FlagEvent,
    RateLimit,
    Record,
    Stores,
    open_state,
    rollout_counts,
)
from simulator.redis_server import RedisServer

pytestmark = pytest.mark.asyncio

# A short poll so that changes made through another handle show up quickly; the tests wait
# for them with a bounded deadline, never a fixed sleep.
POLL_S = 0.02
DEADLINE_S = 5.0


class FakeClock:
    """The stores' clock, moved by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backend(Protocol):
    clock: FakeClock

    async def open(self) -> Stores: ...


class SqliteBackend:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = FakeClock()

    async def open(self) -> Stores:
        return await open_state(self.directory, clock=self.clock, poll_s=POLL_S)


@pytest.fixture
def state_backend_sqlite(tmp_path: Path) -> Backend:
    return SqliteBackend(tmp_path / "state")


class RedisBackend:
    """A real redis-server (the harness's, never fakeredis); a fresh key prefix per test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock()

    async def open(self) -> Stores:
        return await open_state(self.url, clock=self.clock, poll_s=POLL_S)


@pytest.fixture
def state_backend_redis(redis_server: RedisServer) -> Backend:
    return RedisBackend(redis_server.fresh_url())


BACKENDS = ["sqlite", "redis"]


class Handles:
    """Opens handles on one backend and closes them all at the end of the test."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.clock = backend.clock
        self.opened: list[Stores] = []

    async def open(self) -> Stores:
        state = await self.backend.open()
        self.opened.append(state)
        return state

    async def reopen(self, state: Stores) -> Stores:
        """Close ``state`` (a guard stops) and open the same backing state again."""
        await state.close()
        return await self.open()

    async def close(self) -> None:
        for state in self.opened:
            await state.close()


@pytest_asyncio.fixture(params=BACKENDS)
async def handles(request: pytest.FixtureRequest) -> AsyncIterator[Handles]:
    h = Handles(request.getfixturevalue(f"state_backend_{request.param}"))
    try:
        yield h
    finally:
        await h.close()


@pytest_asyncio.fixture
async def state(handles: Handles) -> Stores:
    return await handles.open()


async def eventually(what: str, probe: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait until ``probe()`` is true, or fail naming ``what`` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = probe()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(POLL_S / 2)


# ----------------------------------------------------------------------------- approvals


async def test_create_then_get_returns_the_record(state: Stores, handles: Handles) -> None:
    body = {"agent_id": "ops-1", "devices": ["acme/d1"], "n": 3, "nested": {"a": [1, None]}}
    created = await state.approvals.create("r1", "pending", body)
    assert created.id == "r1" and created.status == "pending" and created.body == body
    assert created.created_at == created.updated_at == handles.clock.now
    assert created.owner is None and created.lease_until is None
    assert await state.approvals.get("r1") == created
    assert await state.approvals.get("nope") is None


async def test_create_an_existing_id_fails_and_keeps_the_first(state: Stores) -> None:
    await state.approvals.create("r1", "pending", {"v": 1})
    with pytest.raises(AlreadyExists):
        await state.approvals.create("r1", "approved", {"v": 2})
    got = await state.approvals.get("r1")
    assert got is not None and got.status == "pending" and got.body == {"v": 1}
    assert (await state.approvals.create("r2", "pending", {})).id == "r2"  # store still usable


async def test_create_refuses_a_body_that_is_not_json(state: Stores) -> None:
    with pytest.raises(TypeError):
        await state.approvals.create("r1", "pending", {"payload": b"raw"})
    with pytest.raises(ValueError):
        await state.approvals.create("r1", "pending", {"risk": float("nan")})
    assert await state.approvals.get("r1") is None
    await state.approvals.create("r1", "pending", {"ok": 1})
    with pytest.raises(ValueError):
        await state.approvals.update("r1", "pending", status="x", changes={"v": float("inf")})
    unchanged = await state.approvals.get("r1")
    assert unchanged is not None and unchanged.status == "pending" and unchanged.body == {"ok": 1}


async def test_list_filters_by_status_newest_first(state: Stores, handles: Handles) -> None:
    for rid, status in [("a", "pending"), ("b", "done"), ("c", "pending"), ("d", "escalated")]:
        await state.approvals.create(rid, status, {})
        handles.clock.advance(1)
    await state.approvals.create("e", "pending", {})  # same time as nothing else: newest
    ids = [r.id for r in await state.approvals.list()]
    assert ids == ["e", "d", "c", "b", "a"]
    assert [r.id for r in await state.approvals.list({"pending", "escalated"})] == [
        "e", "d", "c", "a"]
    assert [r.id for r in await state.approvals.list("done")] == ["b"]
    assert [r.id for r in await state.approvals.list(["pending"], limit=2)] == ["e", "c"]
    assert await state.approvals.list([]) == []


async def test_list_orders_records_created_at_the_same_time_by_id(state: Stores) -> None:
    for rid in ["m", "z", "a"]:
        await state.approvals.create(rid, "pending", {})
    assert [r.id for r in await state.approvals.list()] == ["z", "m", "a"]


async def test_update_is_compare_and_set_on_status(state: Stores, handles: Handles) -> None:
    first = await state.approvals.create("r1", "pending", {"level": 1, "keep": "me"})
    handles.clock.advance(5)
    assert await state.approvals.update("r1", "approved", status="done") is None
    assert await state.approvals.update("missing", "pending", status="done") is None
    new = await state.approvals.update(
        "r1", {"pending", "escalated"}, status="approved", changes={"level": 2, "by": "alice"}
    )
    assert new is not None and new.status == "approved"
    assert new.body == {"level": 2, "keep": "me", "by": "alice"}
    assert new.updated_at == handles.clock.now and new.created_at == first.created_at
    assert new.rev > first.rev
    assert await state.approvals.get("r1") == new
    # Body only, status kept.
    again = await state.approvals.update("r1", "approved", changes={"note": "x"})
    assert again is not None and again.status == "approved" and again.body["note"] == "x"


async def test_approve_twice_exactly_one_wins(handles: Handles) -> None:
    """Eight approvers through four guards at the same moment: one approval."""
    states = [await handles.open() for _ in range(4)]
    for n in range(5):
        await states[0].approvals.create(f"r{n}", "pending", {})
        results = await asyncio.gather(*(
            s.approvals.update(f"r{n}", "pending", status="approved", changes={"by": f"u{i}"})
            for i, s in enumerate(states * 2)
        ))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        stored = await states[1].approvals.get(f"r{n}")
        assert stored is not None and stored.body["by"] == winners[0].body["by"]


async def test_claim_lease_renew_expire_release(state: Stores, handles: Handles) -> None:
    await state.approvals.create("r1", "approved", {})
    a = await state.approvals.claim("r1", "guard-a", 10)
    assert a is not None and a.owner == "guard-a" and a.lease_until == handles.clock.now + 10
    assert await state.approvals.claim("r1", "guard-b", 10) is None
    handles.clock.advance(6)
    renewed = await state.approvals.claim("r1", "guard-a", 10)
    assert renewed is not None and renewed.lease_until == handles.clock.now + 10
    handles.clock.advance(9)  # 15 s after the first claim: the renewed lease still holds
    assert await state.approvals.claim("r1", "guard-b", 10) is None
    handles.clock.advance(1)  # exactly at lease end: expired
    b = await state.approvals.claim("r1", "guard-b", 10)
    assert b is not None and b.owner == "guard-b"
    assert await state.approvals.release("r1", "guard-a") is False
    assert await state.approvals.release("r1", "guard-b") is True
    released = await state.approvals.get("r1")
    assert released is not None and released.owner is None and released.lease_until is None
    assert (await state.approvals.claim("r1", "guard-a", 1)) is not None
    assert await state.approvals.claim("missing", "guard-a", 1) is None
    with pytest.raises(ValueError):
        await state.approvals.claim("r1", "guard-a", 0)


async def test_claim_checks_the_expected_status(state: Stores) -> None:
    await state.approvals.create("r1", "pending", {})
    assert await state.approvals.claim("r1", "g", 5, expect={"approved", "executing"}) is None
    assert await state.approvals.claim("r1", "g", 5, expect="pending") is not None


async def test_two_guards_claim_at_once_exactly_one_wins(handles: Handles) -> None:
    a, b = await handles.open(), await handles.open()
    for n in range(10):
        await a.approvals.create(f"r{n}", "approved", {})
        results = await asyncio.gather(
            a.approvals.claim(f"r{n}", "guard-a", 30), b.approvals.claim(f"r{n}", "guard-b", 30),
            a.approvals.claim(f"r{n}", "guard-c", 30), b.approvals.claim(f"r{n}", "guard-d", 30),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        stored = await a.approvals.get(f"r{n}")
        assert stored is not None and stored.owner == winners[0].owner


async def test_update_with_owner_is_fenced_by_the_lease(state: Stores, handles: Handles) -> None:
    await state.approvals.create("r1", "approved", {})
    await state.approvals.claim("r1", "guard-a", 10)
    assert await state.approvals.update("r1", "approved", status="executing", owner="b") is None
    ok = await state.approvals.update("r1", "approved", status="executing", owner="guard-a")
    assert ok is not None and ok.owner == "guard-a"  # an update keeps the claim
    handles.clock.advance(10)
    # guard-a's lease ran out: a zombie guard-a may no longer move the record.
    assert await state.approvals.update("r1", "executing", status="done", owner="guard-a") is None
    assert await state.approvals.claim("r1", "guard-b", 10, expect="executing") is not None
    assert await state.approvals.update("r1", "executing", status="done", owner="guard-b")


async def test_rollout_devices_in_order_with_compare_and_set(state: Stores) -> None:
    await state.approvals.create("r1", "executing", {})
    assert await state.approvals.rollout("r1") is None
    started = await state.approvals.rollout_start("r1", ["acme/d3", "acme/d1", "acme/d2"])
    assert [d.device for d in started] == ["acme/d3", "acme/d1", "acme/d2"]
    assert all(d.status == "queued" for d in started)
    with pytest.raises(AlreadyExists):
        await state.approvals.rollout_start("r1", ["acme/d9"])
    sent = await state.approvals.rollout_update("r1", "acme/d1", "queued", "in_progress")
    assert sent is not None and sent.status == "in_progress"
    assert await state.approvals.rollout_update("r1", "acme/d1", "queued", "in_progress") is None
    assert await state.approvals.rollout_update("r1", "nope", "queued", "in_progress") is None
    done = await state.approvals.rollout_update(
        "r1", "acme/d1", "in_progress", "rejected", detail="version conflict")
    assert done is not None
    assert done == DeviceState("acme/d1", "rejected", done.at, "version conflict")
    with pytest.raises(ValueError):
        await state.approvals.rollout_update("r1", "acme/d2", "queued", "exploded")
    devices = await state.approvals.rollout("r1")
    assert devices is not None
    assert [(d.device, d.status) for d in devices] == [
        ("acme/d3", "queued"), ("acme/d1", "rejected"), ("acme/d2", "queued")]
    assert rollout_counts(devices)["queued"] == 2 and rollout_counts(devices)["rejected"] == 1


async def test_rollout_start_names_each_device_once(state: Stores) -> None:
    with pytest.raises(ValueError):
        await state.approvals.rollout_start("r1", ["acme/d1", "acme/d1"])
    assert await state.approvals.rollout("r1") is None


async def test_abort_cancels_only_queued_devices(state: Stores) -> None:
    await state.approvals.rollout_start("r1", ["d1", "d2", "d3", "d4"])
    await state.approvals.rollout_update("r1", "d1", "queued", "in_progress")
    await state.approvals.rollout_update("r1", "d2", "queued", "in_progress")
    await state.approvals.rollout_update("r1", "d2", "in_progress", "succeeded")
    assert await state.approvals.rollout_cancel("r1", "abort: 50% failed") == 2
    assert await state.approvals.rollout_cancel("r1", "again") == 0
    devices = await state.approvals.rollout("r1")
    assert devices is not None
    assert [d.status for d in devices] == ["in_progress", "succeeded", "cancelled", "cancelled"]
    assert devices[2].detail == "abort: 50% failed"
    assert await state.approvals.rollout_update("r1", "d3", "queued", "in_progress") is None


async def test_resumed_rollout_never_sends_a_device_twice(handles: Handles) -> None:
    """Two guards race for every queued device: each device is taken by exactly one."""
    a, b = await handles.open(), await handles.open()
    devices = [f"acme/d{i}" for i in range(12)]
    await a.approvals.rollout_start("r1", devices)

    async def run(s: Stores) -> list[str]:
        taken = []
        for d in devices:
            if await s.approvals.rollout_update("r1", d, "queued", "in_progress"):
                taken.append(d)
        return taken

    got_a, got_b = await asyncio.gather(run(a), run(b))
    assert sorted(got_a + got_b) == sorted(devices)
    assert not set(got_a) & set(got_b)


async def test_watch_sees_each_change_until_unsubscribed(state: Stores) -> None:
    seen: list[Record] = []

    def broken(_: Record) -> None:
        raise RuntimeError("a broken watcher must not stop the store")

    state.approvals.watch(broken)
    stop = state.approvals.watch(seen.append)
    await state.approvals.create("r1", "pending", {})
    await state.approvals.update("r1", "pending", status="approved")
    await state.approvals.claim("r1", "g", 5)
    await state.approvals.rollout_start("r1", ["d1"])
    await state.approvals.rollout_update("r1", "d1", "queued", "in_progress")
    await state.approvals.update("r1", "pending", status="denied")  # refused: no change
    assert [r.status for r in seen] == ["pending", "approved", "approved", "approved", "approved"]
    assert [r.rev for r in seen] == sorted({r.rev for r in seen})  # each a new rev, in order
    assert seen[2].owner == "g"
    stop()
    await state.approvals.update("r1", "approved", status="executing")
    assert len(seen) == 5


async def test_watch_sees_changes_made_by_another_guard(handles: Handles) -> None:
    a, b = await handles.open(), await handles.open()
    seen: list[Record] = []
    a.approvals.watch(seen.append)
    await b.approvals.create("r1", "pending", {"from": "b"})
    await eventually("guard a hears of r1", lambda: any(r.id == "r1" for r in seen))
    await b.approvals.update("r1", "pending", status="approved")
    await eventually("guard a hears r1 approved",
                     lambda: any(r.status == "approved" for r in seen))
    assert seen[0].body == {"from": "b"}


async def test_approvals_survive_a_restart(state: Stores, handles: Handles) -> None:
    await state.approvals.create("r1", "pending", {"payload": "x"})
    await state.approvals.update("r1", "pending", status="approved")
    await state.approvals.claim("r1", "guard-a", 60)
    await state.approvals.rollout_start("r1", ["d1", "d2"])
    await state.approvals.rollout_update("r1", "d2", "queued", "in_progress")
    before = await state.approvals.get("r1")
    again = await handles.reopen(state)
    assert await again.approvals.get("r1") == before
    devices = await again.approvals.rollout("r1")
    assert devices is not None and [d.status for d in devices] == ["queued", "in_progress"]
    # The claim survived too: another guard must wait for the lease.
    assert await again.approvals.claim("r1", "guard-b", 60) is None
    assert (await again.approvals.create("r2", "pending", {})).rev > before.rev  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- counters


async def test_limiter_allows_the_burst_then_the_rate(state: Stores) -> None:
    limiter = state.counters.limiter
    limit = RateLimit(per_minute=20, burst=5)  # one unit every 3 s
    now = 500.0
    assert all(limiter.try_take("ops-1/identify", limit, now).ok for _ in range(5))
    refused = limiter.try_take("ops-1/identify", limit, now)
    assert not refused.ok and refused.retry_after == pytest.approx(3.0)
    assert limiter.try_take("ops-2/identify", limit, now).ok  # keys are separate
    assert not limiter.try_take("ops-1/identify", limit, now + 2.9).ok
    assert limiter.try_take("ops-1/identify", limit, now + 3.0).ok
    assert not limiter.try_take("ops-1/identify", limit, now + 3.0).ok


async def test_take_leases_what_is_free_and_shares_the_budget(state: Stores) -> None:
    limit = RateLimit(per_minute=60, burst=10)
    first = await state.counters.take("agent/x", limit, 4)
    assert first.granted == 4 and first.retry_after == 0.0
    second = await state.counters.take("agent/x", limit, 10)
    assert second.granted == 6 and second.retry_after > 0
    third = await state.counters.take("agent/x", limit, 1)
    assert third.granted == 0 and not third.ok


async def test_baselines_fold_and_survive_a_restart(state: Stores, handles: Handles) -> None:
    assert await state.counters.baseline("ops-1/identify") is None
    await state.counters.fold_baseline("ops-1/identify", 10, 4, alpha=0.5)
    b = await state.counters.fold_baseline("ops-1/identify", 10, 2, alpha=0.5)
    assert (b.window, b.current, b.windows) == (10, 6, 0)
    b = await state.counters.fold_baseline("ops-1/identify", 11, 1, alpha=0.5)
    assert (b.window, b.current, b.windows) == (11, 1, 1)
    assert b.mean == pytest.approx(3.0) and b.variance == pytest.approx(9.0)  # Finch §9
    await state.counters.fold_baseline("ops-2/reboot", 11, 1, alpha=0.5)
    again = await handles.reopen(state)
    assert await again.counters.baseline("ops-1/identify") == b
    assert set(await again.counters.baselines()) == {"ops-1/identify", "ops-2/reboot"}


async def test_two_guards_folding_at_once_lose_no_count(handles: Handles) -> None:
    a, b = await handles.open(), await handles.open()
    await asyncio.gather(*(
        s.counters.fold_baseline("k", 7, 1, alpha=0.2) for s in [a, b] * 20
    ))
    got = await a.counters.baseline("k")
    assert got is not None and got.current == 40


async def test_fold_refuses_bad_arguments(state: Stores) -> None:
    with pytest.raises(ValueError):
        await state.counters.fold_baseline("k", 1, 1, alpha=0)
    with pytest.raises(ValueError):
        await state.counters.fold_baseline("k", 1, -1, alpha=0.5)
    assert await state.counters.baseline("k") is None


# ----------------------------------------------------------------------------- flags


async def test_kill_and_lift_one_agent(state: Stores, handles: Handles) -> None:
    view = state.flags.view
    assert view.is_killed("ops-1") is None
    killed_at = handles.clock.now
    kill = await state.flags.kill("ops-1", "runaway loop", "secops")
    assert (kill.agent, kill.reason, kill.by, kill.at) == ("ops-1", "runaway loop", "secops",
                                                            killed_at)
    reason = view.is_killed("ops-1")
    assert reason is not None and "runaway loop" in reason and "secops" in reason
    assert view.is_killed("ops-2") is None
    handles.clock.advance(30)
    again = await state.flags.kill("ops-1", "second reason", "bob")
    assert again == kill  # idempotent: the first kill stands
    assert await state.flags.lift("ops-1", "secops") is True
    assert view.is_killed("ops-1") is None
    assert await state.flags.lift("ops-1", "secops") is False
    handles.clock.advance(30)
    rekill = await state.flags.kill("ops-1", "again", "bob")  # a lifted switch is set anew
    assert (rekill.reason, rekill.by, rekill.at) == ("again", "bob", handles.clock.now)
    assert "again" in (view.is_killed("ops-1") or "")


async def test_tokens_issued_before_a_kill_stay_void_after_the_lift(
    state: Stores, handles: Handles
) -> None:
    view = state.flags.view
    handles.clock.now = 2000.5
    await state.flags.kill("ops-1", "stolen token", "secops")
    await state.flags.lift("ops-1", "secops")
    assert view.token_void("ops-1", "j1", issued_at=1999) is not None
    # iat is whole seconds: 2000 may have been issued before 2000.5, so it is void.
    assert view.token_void("ops-1", "j2", issued_at=2000) is not None
    assert view.token_void("ops-1", "j3", issued_at=2001) is None
    assert view.token_void("ops-1", "j4", issued_at=None) is not None
    assert view.token_void("ops-2", "j5", issued_at=1000) is None


async def test_kill_all_stops_everyone_and_lifts_separately(state: Stores) -> None:
    view = state.flags.view
    await state.flags.kill("ops-1", "own", "secops")
    await state.flags.kill(ALL_AGENTS, "fleet incident", "secops")
    reason_2 = view.is_killed("ops-2")
    assert reason_2 is not None and "fleet incident" in reason_2 and "every agent" in reason_2
    assert view.token_void("anyone", "j", issued_at=0) is not None
    assert await state.flags.lift(ALL_AGENTS, "secops")
    assert view.is_killed("ops-2") is None
    assert view.is_killed("ops-1") is not None  # the per-agent switch stays


async def test_revoke_a_token_until_it_expires(state: Stores, handles: Handles) -> None:
    view = state.flags.view
    now = handles.clock.now
    assert await state.flags.revoke("jti-1", expires_at=now + 60, reason="leaked", agent="ops-1")
    assert not await state.flags.revoke("jti-1", expires_at=now + 60, reason="again")
    void = view.token_void("ops-1", "jti-1", issued_at=now - 10)
    assert void is not None and "leaked" in void
    assert view.token_void("ops-1", "jti-2", issued_at=now - 10) is None
    assert "jti-1" in (await state.flags.snapshot()).revoked
    handles.clock.advance(60)
    assert "jti-1" not in (await state.flags.snapshot()).revoked  # expired: left out
    assert await state.flags.forget_expired() == 1
    assert await state.flags.forget_expired() == 0


async def test_void_before_only_moves_later(state: Stores) -> None:
    assert await state.flags.void_tokens_before("ops-1", 100.0, "rotate") == 100.0
    assert await state.flags.void_tokens_before("ops-1", 50.0, "older") == 100.0
    assert state.flags.view.token_void("ops-1", None, issued_at=99) is not None
    assert state.flags.view.token_void("ops-1", None, issued_at=100) is None
    assert await state.flags.void_tokens_before("ops-1", 200.0, "later") == 200.0
    assert state.flags.view.token_void("ops-1", None, issued_at=100) is not None


async def test_flag_watchers_run_after_the_view_shows_the_change(state: Stores) -> None:
    seen: list[tuple[FlagEvent, str | None]] = []
    stop = state.flags.watch(lambda e: seen.append((e, state.flags.view.is_killed("ops-1"))))
    await state.flags.kill("ops-1", "why", "secops")
    await state.flags.lift("ops-1", "root")
    await state.flags.revoke("j1", expires_at=1e12, reason="leak", agent="ops-1")
    kinds = [(e.kind, e.agent) for e, _ in seen]
    assert kinds == [("kill", "ops-1"), ("void_before", "ops-1"), ("lift", "ops-1"),
                     ("revoke", "ops-1")]
    assert seen[0][1] is not None  # the view said "killed" when the kill rang
    assert seen[2][1] is None  # and "not killed" when the lift rang
    assert seen[3][0].jti == "j1"
    assert seen[0][0].by == "secops" and seen[2][0].by == "root" and seen[2][0].reason == "why"
    stop()
    await state.flags.kill("ops-2", "x", "y")
    assert len(seen) == 4


async def test_a_kill_through_another_guard_reaches_this_view(handles: Handles) -> None:
    a, b = await handles.open(), await handles.open()
    events: list[FlagEvent] = []
    a.flags.watch(events.append)
    await b.flags.kill("ops-1", "from b", "secops")
    await eventually("guard a sees the kill", lambda: a.flags.view.is_killed("ops-1") is not None)
    assert any(e.kind == "kill" and e.agent == "ops-1" for e in events)
    await b.flags.lift("ops-1", "root")
    await eventually("guard a sees the lift", lambda: a.flags.view.is_killed("ops-1") is None)
    await eventually("guard a hears who lifted it",
                     lambda: any(e.kind == "lift" and e.by == "root" for e in events))


async def test_flags_survive_a_restart_and_load_before_open_returns(
    state: Stores, handles: Handles
) -> None:
    await state.flags.kill("ops-1", "why", "secops")
    await state.flags.revoke("j1", expires_at=handles.clock.now + 600, reason="leak")
    again = await handles.reopen(state)
    assert again.flags.view.is_killed("ops-1") is not None
    assert again.flags.view.token_void("ops-2", "j1", issued_at=None) is not None


# ----------------------------------------------------------------------------- chain heads


async def test_chain_head_compare_and_set(state: Stores, handles: Handles) -> None:
    chain = state.chain
    assert await chain.head("guard-a") is None
    h1 = ChainHead(seq=10, hash="ab" * 32)
    assert await chain.put_head("guard-a", h1, expect_seq=None)
    assert not await chain.put_head("guard-a", ChainHead(11, "cd" * 32), expect_seq=None)
    assert not await chain.put_head("guard-a", ChainHead(11, "cd" * 32), expect_seq=9)
    h2 = ChainHead(20, "ef" * 32, checkpoint_size=20, checkpoint_root="01" * 32,
                   checkpoint_at=123.5)
    assert await chain.put_head("guard-a", h2, expect_seq=10)
    assert await chain.head("guard-a") == h2
    assert await chain.head("guard-b") is None  # one chain per instance
    again = await handles.reopen(state)
    assert await again.chain.head("guard-a") == h2
