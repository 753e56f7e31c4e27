"""Keep the state store's chain head in step with the log (issue 8 §1; issue 11).

The file alone cannot show a cut made exactly after a checkpoint: what is left verifies.
So at checkpoints (at most once a second, and at a clean stop) the guard also stores where
its chain ends (last seq and hash, the checkpoint's size and root) in the state store, off
the packet path; at start, a stored
head beyond the end of the file means lines were removed while the guard was down, and
the guard refuses to start. The store is compare-and-set on the seq this guard stored
last, so a second writer of the same origin (one chain, one writer) is noticed. Only
signed chains take part: their origin is the instance's key name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

from ..state import ChainHead, ChainHeadStore
from .chain import ChainState
from .checkpoint import Checkpoint
from .log import AuditError, AuditLog

log = logging.getLogger("iot_guard.audit")

# The newest head is stored at most this often (seconds), and at a clean stop. A cut
# of the log's last second is the window this leaves; the checkpoints themselves are
# signed as often as before (every N records or T seconds).
HEAD_INTERVAL = 1.0


class ChainHeadSync:
    def __init__(self, audit: AuditLog, store: ChainHeadStore) -> None:
        self.audit = audit
        self.store = store
        self._expect: int | None = None
        # The newest head not yet handed to the store, and the task storing heads.
        self._latest: ChainHead | None = None
        self._storing: asyncio.Task[None] | None = None
        self._stored_at = -HEAD_INTERVAL  # monotonic time of the last put
        self._hurry = asyncio.Event()  # set by flush(): store the last head now

    async def check(self) -> None:
        """At start: the file must reach at least as far as the store says it did."""
        if self.audit.signer is None:
            return  # an unsigned chain has no instance identity (its origin is the host's)
        origin = self.audit.origin
        stored = await self.store.head(origin)
        self._expect = stored.seq if stored is not None else None
        if stored is None:
            return
        state = self.audit.state
        where = self.audit.path or "the audit log"
        if state.seq == 0:
            # A new file (rotated while the guard was down, or replaced): a new chain.
            log.warning("%s is empty but the chain of %s ended at record %d (hash %s, "
                        "checkpoint of %d records): starting a new chain", where, origin,
                        stored.seq, stored.hash, stored.checkpoint_size)
            return
        last = state.seq - 1
        if stored.seq > last:
            raise AuditError(
                f"{where}: the state store says the chain of {origin} reached record "
                f"{stored.seq} (checkpoint of {stored.checkpoint_size} records), the file ends "
                f"at record {last}: records were removed; verify the log and restore it")
        if stored.seq == last and stored.hash != state.prev.decode():
            raise AuditError(
                f"{where}: record {last} is not the one the state store recorded for the chain "
                f"of {origin}: the end of the log was replaced; verify it and restore it")

    def on_checkpoint(self, state: ChainState, checkpoint: Checkpoint) -> None:
        """From AuditLog (on the loop): store the new head in the background."""
        head = ChainHead(state.seq - 1, state.prev.decode(), checkpoint.size,
                         base64.b64encode(checkpoint.root).decode(), time.time())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a script): nothing to keep in step
        # Latest wins: heads that come while the store is busy are replaced by newer
        # ones, so a slow store (a busy disk, a far Redis) never builds a queue: it
        # stores the newest head it can, one put at a time, in order.
        self._latest = head
        if self._storing is None or self._storing.done():
            self._storing = loop.create_task(self._store_latest())

    async def _store_latest(self) -> None:
        while self._latest is not None:
            # At most one put per HEAD_INTERVAL: a busy guard signs dozens of checkpoints
            # a second, and each put is a synced store write.
            wait = self._stored_at + HEAD_INTERVAL - time.monotonic()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            head, self._latest = self._latest, None
            self._stored_at = time.monotonic()
            await self._put(head)

    async def _put(self, head: ChainHead) -> None:
        try:
            stored = await self.store.put_head(self.audit.origin, head, expect_seq=self._expect)
        except Exception as exc:  # the store is down: the log itself is unaffected
            log.error("cannot store the audit chain head of %s: %s", self.audit.origin, exc)
            return
        if stored:
            self._expect = head.seq
        else:
            log.error("the audit chain head of %s moved under this guard: another guard "
                      "writes the same origin (give each instance its own key)",
                      self.audit.origin)

    async def flush(self) -> None:
        """Store the newest head now and wait for it (before the store closes)."""
        self._hurry.set()
        if self._storing is not None:
            await asyncio.gather(self._storing, return_exceptions=True)
