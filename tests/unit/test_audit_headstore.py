"""The chain head kept in the state store follows the checkpoints without a queue: while
the store is busy, newer heads replace older ones (the real SQLite store, held back)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iot_guard.audit import AuditLog
from iot_guard.audit.headstore import ChainHeadSync
from iot_guard.audit.signer import NoteSigner
from iot_guard.state import ChainHead, open_state

ORIGIN = "guard-b.test/audit"


class HeldBack:
    """The real chain head store, whose puts wait until ``release`` is set."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.puts: list[int] = []

    async def head(self, instance: str) -> ChainHead | None:
        return await self.store.head(instance)  # type: ignore[attr-defined,no-any-return]

    async def put_head(self, instance: str, head: ChainHead, *, expect_seq: int | None) -> bool:
        self.puts.append(head.seq)
        self.started.set()
        await self.release.wait()
        return await self.store.put_head(  # type: ignore[attr-defined,no-any-return]
            instance, head, expect_seq=expect_seq)


def test_a_busy_store_gets_the_newest_head_not_a_queue(tmp_path: Path) -> None:
    async def main() -> None:
        stores = await open_state(tmp_path / "state")
        try:
            held = HeldBack(stores.chain)
            log = AuditLog(tmp_path / "audit.jsonl", signer=NoteSigner.generate(ORIGIN),
                           checkpoint_records=2)
            sync = ChainHeadSync(log, held)  # type: ignore[arg-type]
            await sync.check()
            log.on_checkpoint = sync.on_checkpoint
            log.write({"n": 0})
            log.write({"n": 1})
            log.checkpoint()  # the first head: its put is held
            await asyncio.wait_for(held.started.wait(), 5)
            for n in range(2, 12):  # five more checkpoints while the store is busy
                log.write({"n": n})
                log.checkpoint()
            held.release.set()
            await asyncio.wait_for(sync.flush(), 5)
            last = log.state.seq - 1
            assert held.puts == [held.puts[0], last]  # the first, then only the newest
            stored = await stores.chain.head(ORIGIN)
            assert stored is not None and (stored.seq, stored.hash) == (
                last, log.state.prev.decode())
            # And the next one continues from it (compare-and-set on the stored seq).
            log.write({"n": 99})
            log.checkpoint()
            await asyncio.wait_for(sync.flush(), 5)
            stored = await stores.chain.head(ORIGIN)
            assert stored is not None and stored.seq == log.state.seq - 1
            log.close()
        finally:
            await stores.close()

    asyncio.run(main())


def test_heads_are_stored_at_most_once_an_interval_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy guard signs many checkpoints a second: the store gets the first at once,
    then only the newest once the interval has passed (each put is a synced write)."""
    import time

    from iot_guard.audit import headstore

    monkeypatch.setattr(headstore, "HEAD_INTERVAL", 0.3)

    async def main() -> None:
        stores = await open_state(tmp_path / "state")
        try:
            held = HeldBack(stores.chain)
            held.release.set()  # a quick store: only the interval holds puts back
            log = AuditLog(tmp_path / "audit.jsonl", signer=NoteSigner.generate(ORIGIN),
                           checkpoint_records=1000)
            sync = ChainHeadSync(log, held)  # type: ignore[arg-type]
            await sync.check()
            log.on_checkpoint = sync.on_checkpoint
            started = time.monotonic()
            for n in range(10):  # ten checkpoints in a burst
                log.write({"n": n})
                log.checkpoint()
                await asyncio.sleep(0)  # the loop runs the storing task in between
            assert len(held.puts) == 1  # the first at once, the rest wait for the interval
            last = log.state.seq - 1
            deadline = time.monotonic() + 5
            while len(held.puts) < 2:
                assert time.monotonic() < deadline, "the newest head was never stored"
                await asyncio.sleep(0.01)
            assert time.monotonic() - started >= 0.3
            assert held.puts == [held.puts[0], last]
            stored = await stores.chain.head(ORIGIN)
            assert stored is not None and stored.seq == last
            # flush() at a stop does not wait for the interval.
            log.write({"n": 10})
            log.checkpoint()
            await asyncio.wait_for(sync.flush(), 0.25)
            assert held.puts[-1] == log.state.seq - 1
            log.close()
        finally:
            await stores.close()

    asyncio.run(main())
