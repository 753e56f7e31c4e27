"""The state store protocols: what callers may rely on, whatever the backend.

Every method that touches shared state is ``async`` (a Redis backend talks to a server);
what the per-packet path needs is synchronous and served from local memory
(``RateLimiter``, ``FlagView``), kept current by the store off that path. Times are
wall-clock seconds (``time.time()``); stores read their own clock (injected at open, a fake
one in tests; a shared backend may use the server's, so guards with skewed clocks agree).

Atomicity. Each method documents its guarantee: "atomic" means that its check and its
write happen as one step against the authoritative state, even when several guard
processes share it: the SQLite backend runs it in one ``BEGIN IMMEDIATE`` transaction (one
writer at a time across processes); the Redis backend (issue 11) must run it as one Lua
script (or a MULTI/EXEC guarded by WATCH). The contract tests in
``tests/unit/test_state_contract.py`` check these guarantees for every backend.

Sharing (several guards on one backend, issue 11):

- Approvals: every transition is a compare-and-set on the status, so two guards deciding at
  once cannot both win; carrying out is guarded by a claim with a lease that the executing
  guard renews, and per-device rollout states are compare-and-set too, so another guard can
  resume a rollout from the store without sending any device its patch twice.
- Rate limits: the authoritative bucket lives in the backend; each guard's limiter consumes a
  lease of units taken in batches off the packet path (see ``CounterStore``), so one budget
  is shared with a bounded, documented overshoot, and no packet waits for the backend.
- Baselines: guards add their counts per window atomically (``fold_baseline``).
- Flags: the authoritative state is durable keys; a change rings a doorbell (pub/sub, or
  ``data_version`` polling for SQLite) and every guard also re-reads on reconnect and at a
  short interval, because a doorbell can be lost. The view always holds the last state read.
- Audit chain heads: one per guard instance, compare-and-set, never two writers.

Failure. A backend that cannot answer raises ``StateError`` (one line, no credentials). The
local views keep the last known state meanwhile: a killed agent stays killed. What a caller
does then is its choice to fail closed (issue 11: approvals cannot be decided or executed).

Watchers are a doorbell, not the state: a callback says "something changed", carries what
changed as best known, may come more than once for one change (after a reconnect or a
re-read), and must be cheap and idempotent (re-read the store or the view if unsure).
Callbacks run on the event loop, never inside a store operation; one that raises is logged
and the others still run.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from .flags import FlagView
from .records import (
    Baseline,
    ChainHead,
    DeviceState,
    FlagEvent,
    FlagSnapshot,
    Grant,
    Kill,
    RateLimit,
    Record,
)

Unsubscribe = Callable[[], None]


class ApprovalStore(Protocol):
    """Durable records (approval requests) keyed by id, each with a status and a JSON body,
    and the per-device state of their rollouts. The store knows no state machine: callers
    say which statuses a transition starts from, and the store applies it atomically."""

    async def create(self, record_id: str, status: str, body: Mapping[str, Any]) -> Record:
        """Store a new record. Atomic; raises ``AlreadyExists`` if the id is taken. The body
        must be strict JSON: ``TypeError`` for values JSON cannot hold (bytes: encode them),
        ``ValueError`` for NaN/Infinity; nothing is stored then (same for ``changes``)."""
        ...

    async def get(self, record_id: str) -> Record | None:
        """The record, or None. A single read (consistent for that one record)."""
        ...

    async def list(
        self, statuses: Collection[str] | None = None, *, limit: int | None = None
    ) -> builtins.list[Record]:
        """Records whose status is in ``statuses`` (None: all), newest first (created_at,
        then id, descending), at most ``limit``. Not a snapshot across records: a record may
        change while the list is read; act on one through ``update``/``claim``."""
        ...

    async def update(
        self,
        record_id: str,
        expect: str | Collection[str],
        *,
        status: str | None = None,
        changes: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Record | None:
        """Compare-and-set: if the record's status is ``expect`` (or one of them), set
        ``status`` (if given) and the top-level body keys in ``changes``; with ``owner``, also
        only if that owner holds a live claim (fencing a guard whose lease ran out). Returns
        the new record, or None if the record is missing or the condition failed (nothing
        changed). Atomic: of two concurrent updates from one status, exactly one wins (this is
        what makes "approve twice" safe)."""
        ...

    async def claim(
        self,
        record_id: str,
        owner: str,
        lease_s: float,
        *,
        expect: str | Collection[str] | None = None,
    ) -> Record | None:
        """Take (or renew) the right to carry the record out, for ``lease_s`` seconds of the
        store's clock: succeeds if nobody holds it, ``owner`` already does, or the holder's
        lease has expired; and, with ``expect``, the status matches. Returns the record with
        the claim, or None. Atomic: of concurrent claimers, exactly one wins. A guard that
        dies stops renewing; after the lease another guard claims and resumes."""
        ...

    async def release(self, record_id: str, owner: str) -> bool:
        """Give up ``owner``'s claim (no-op and False if it is not the holder). Atomic."""
        ...

    async def rollout_start(
        self, record_id: str, devices: Sequence[str]
    ) -> builtins.list[DeviceState]:
        """Create the rollout of a record: every device ``queued``, in the given order (the
        order devices are carried out in). Atomic; ``AlreadyExists`` if it was started."""
        ...

    async def rollout(self, record_id: str) -> builtins.list[DeviceState] | None:
        """The rollout's devices in order, or None if it was never started. Not a snapshot
        across devices (each device's state is exact at the moment it is read)."""
        ...

    async def rollout_update(
        self,
        record_id: str,
        device: str,
        expect: str | Collection[str],
        status: str,
        detail: str | None = None,
    ) -> DeviceState | None:
        """Compare-and-set one device's status. Atomic. The executor moves a device
        ``queued -> in_progress`` *before* sending it the patch: a resumed rollout sends only
        to devices it moves out of ``queued`` itself, so no device gets its patch twice (an
        ``in_progress`` device found on resume waits for its result or times out)."""
        ...

    async def rollout_cancel(self, record_id: str, detail: str) -> int:
        """Move every ``queued`` device to ``cancelled`` (an abort); returns how many.
        Atomic: a device is either claimed by the executor or cancelled, never both."""
        ...

    def watch(self, callback: Callable[[Record], None]) -> Unsubscribe:
        """Call ``callback(record)`` after each change of a record (create, update, claim,
        release), including changes made by other processes sharing the store (seen within
        the store's poll interval). A doorbell: see the module docstring."""
        ...


class RateLimiter(Protocol):
    """The per-packet side of rate limits: synchronous, memory only, O(1)."""

    def try_take(self, key: str, limit: RateLimit, now: float, n: int = 1) -> Grant:
        """All or nothing: ``n`` units for one action at ``now`` (the packet's time), or a
        refusal saying when to retry. Never waits on anything."""
        ...


class CounterStore(Protocol):
    """Rate-limit buckets (GCRA, see ``ratelimit``) and anomaly baselines (see ``baseline``).

    Rate limits. Checks call ``limiter.try_take`` on the per-packet path; it consumes local
    state only. In the embedded backend the local buckets *are* the buckets (one guard: exact).
    A shared backend (issue 11) keeps the authoritative bucket in Redis and gives each guard a
    lease: its limiter holds a few units per key taken with ``take(key, limit, n)`` (one atomic
    GCRA script on Redis time) and refills them off the path when they run low (and when a
    key is first seen: that first packet is judged against a local bucket holding a fair
    share of the burst, so it never waits). Units leased but unused return to nobody: the
    lease size (a small fraction of the burst, at most the rate times the refill interval)
    bounds how much an agent spread over N guards can exceed its budget, and how much of it a
    quiet guard can strand. The per-packet path never waits for a refill: no lease, no units.

    Baselines. The anomaly check counts events per key (agent + tool) in memory per window and
    every few seconds, off the path, adds them with ``fold_baseline``, which returns the merged
    baseline (every guard's counts of the open window in ``current``). Several guards adding to
    one key never lose a count because the read-fold-write is atomic.
    """

    @property
    def limiter(self) -> RateLimiter:
        """The local limiter the per-packet path uses; the same object for the store's life."""
        ...

    async def take(self, key: str, limit: RateLimit, n: int) -> Grant:
        """Take up to ``n`` units from the authoritative bucket of ``key`` (a lease: partial
        grants allowed), at the store's time. Atomic."""
        ...

    async def fold_baseline(self, key: str, window: int, count: float, alpha: float) -> Baseline:
        """Add ``count`` events seen in window ``window`` to the baseline of ``key`` (closing
        earlier windows into the EWMA, see ``baseline.fold``) and return it. Atomic and
        durable: baselines survive a restart."""
        ...

    async def baseline(self, key: str) -> Baseline | None:
        """The stored baseline of ``key``, or None."""
        ...

    async def baselines(self) -> dict[str, Baseline]:
        """Every stored baseline (to warm the anomaly check's memory at start)."""
        ...


class FlagStore(Protocol):
    """Kill switches, revoked tokens, and void-before times (issue 8 §4). The authoritative
    state is durable; ``view`` is the synchronous copy the per-packet path reads, and the
    store keeps it current: its own writes before the write's ``await`` returns, other
    processes' writes within the poll interval (embedded) or on the pub/sub doorbell plus a
    periodic re-read (Redis)."""

    @property
    def view(self) -> FlagView:
        """The local view; the same object for the store's life (a check may keep it)."""
        ...

    async def kill(self, agent: str, reason: str, by: str) -> Kill:
        """Stop ``agent`` (``ALL_AGENTS``: every agent) and, in the same atomic step, void its
        tokens issued before now (a void-before time only ever moves later and survives a
        lift). Idempotent: killing a killed agent keeps the first kill's reason and time."""
        ...

    async def lift(self, agent: str, by: str) -> bool:
        """Lift ``agent``'s own switch (``ALL_AGENTS``: the fleet-wide one; per-agent
        switches stay). Returns whether one was in force. Atomic. Tokens voided stay void."""
        ...

    async def revoke(
        self, jti: str, *, expires_at: float, reason: str, agent: str | None = None
    ) -> bool:
        """Revoke one token id until ``expires_at`` (its ``exp``: after that it is dead anyway
        and the revocation is forgotten). Returns False if it was already revoked. Atomic."""
        ...

    async def void_tokens_before(self, agent: str, before: float, reason: str) -> float:
        """Void ``agent``'s tokens (``ALL_AGENTS``: everyone's) issued before ``before``.
        Atomic max: a later time wins, an earlier one changes nothing. Returns the time in
        force."""
        ...

    async def snapshot(self) -> FlagSnapshot:
        """Read every flag from the authoritative state now (revocations past expiry are
        left out), and bring ``view`` up to it."""
        ...

    async def forget_expired(self) -> int:
        """Delete revocations whose token has expired; returns how many."""
        ...

    def watch(self, callback: Callable[[FlagEvent], None]) -> Unsubscribe:
        """Call ``callback(event)`` for each change, after ``view`` shows it (so a callback
        that disconnects sessions and a new CONNECT agree). A doorbell: see module docstring."""
        ...


class ChainHeadStore(Protocol):
    """Where each guard instance's audit chain ends (issue 8 §1; issue 11: one chain per
    instance, never two writers). The writer stores its head at each checkpoint and at clean
    shutdown; at start it compares it with the log's tail (a stored head beyond the tail means
    the log lost records)."""

    async def head(self, instance: str) -> ChainHead | None:
        ...

    async def put_head(self, instance: str, head: ChainHead, *, expect_seq: int | None) -> bool:
        """Compare-and-set: store ``head`` if the stored head's ``seq`` is ``expect_seq``
        (None: no head stored yet). False if another writer moved it. Atomic."""
        ...


class Stores(Protocol):
    """Every store of one backend, opened together by ``open_state``."""

    @property
    def approvals(self) -> ApprovalStore: ...
    @property
    def counters(self) -> CounterStore: ...
    @property
    def flags(self) -> FlagStore: ...
    @property
    def chain(self) -> ChainHeadStore: ...
    @property
    def location(self) -> str:
        """Where the state lives, for logs (a path or a URL without credentials)."""
        ...

    async def close(self) -> None:
        """Stop background work and close. Idempotent."""
        ...
