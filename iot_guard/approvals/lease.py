"""The right of one guard to carry one approved request out: a claim in the state store with
a lease the guard renews while it works (issue 11).

Several guards share one store. The guard that claims a request carries it out; it renews the
lease every third of its length; a guard that dies stops renewing, and once the lease has run
out another guard claims the request and resumes it from the stored per-device states (the
per-device compare-and-set in the store is what keeps any device from getting its patch
twice; the lease keeps two guards from working on one request at once).

A guard that cannot renew (another guard took the claim, or the store was unreachable for a
whole lease: another guard may have taken over meanwhile) stops at once: ``on_lost`` is
called once, and this guard sends nothing more for the request.

Leases run on the store's clock (``ApprovalStore.claim``); the Redis store stamps them with
each guard's wall clock, so guards must agree on the time to well within a lease (NTP).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from iot_guard.state import ApprovalStore, Record, StateError

log = logging.getLogger("iot_guard.approvals.lease")

LEASE_S = 6.0  # how long a dead guard's request waits before another guard resumes it


class Lease:
    def __init__(
        self,
        store: ApprovalStore,
        record_id: str,
        owner: str,
        lease_s: float,
        on_lost: Callable[[str], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.record_id = record_id
        self.owner = owner
        self.lease_s = lease_s
        self._on_lost = on_lost
        self._monotonic = monotonic
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.lost: str | None = None

    async def acquire(self, expect: str | Collection[str]) -> Record | None:
        """Claim the record if its status is ``expect`` and nobody else holds a live lease;
        None when another guard has it (or the status moved on)."""
        record = await self.store.claim(self.record_id, self.owner, self.lease_s, expect=expect)
        if record is not None:
            self._renewed_at = self._monotonic()
        return record

    def keep(self, expect: Collection[str]) -> None:
        """Renew in the background until ``release`` (or until the lease is lost)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._renew(tuple(expect)))

    async def _renew(self, expect: tuple[str, ...]) -> None:
        every = self.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                record = await self.acquire(expect)
            except StateError as exc:
                # Not lost yet: the lease still runs on the store's side. Lost once a whole
                # lease went by without a renewal (another guard may have taken over).
                if self._monotonic() - self._renewed_at < self.lease_s:
                    log.warning("approval %s: lease not renewed (%s); retrying",
                                self.record_id, exc)
                    continue
                self._lose(f"the shared state was unreachable for a whole lease "
                           f"({self.lease_s:g} s): {exc}")
                return
            if record is None:
                self._lose("another guard holds it now, or it was decided meanwhile")
                return

    def _lose(self, why: str) -> None:
        self.lost = why
        log.warning("approval %s: this guard (%s) stopped carrying it out: %s",
                    self.record_id, self.owner, why)
        try:
            self._on_lost(why)
        except Exception:
            log.exception("lease loss handler failed for %s", self.record_id)

    def stop_renewing(self) -> None:
        """The work is over (its last write is next): no more renewals."""
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def release(self) -> None:
        """Stop renewing and give the claim up (best effort: an unreachable store lets the
        lease run out instead)."""
        self.stop_renewing()
        if self.lost is not None:
            return
        try:
            await self.store.release(self.record_id, self.owner)
        except StateError as exc:
            log.warning("approval %s: claim not released (%s); its lease runs out instead",
                        self.record_id, exc)
