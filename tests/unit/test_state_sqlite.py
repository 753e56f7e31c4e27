"""The embedded backend's own promises: where it lives, how it opens, what it refuses, and
that another process writing the state dir (the local ``iot-guard kill`` path) reaches a
running guard's view within a second."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import sys
import time
from pathlib import Path

import pytest

from iot_guard.state import StateError, default_state_dir, open_state
from iot_guard.state.sqlite import DB_NAME, FORGET_EVERY_S, EmbeddedStores, _immediate


@pytest.mark.asyncio
async def test_open_creates_a_private_dir_with_a_wal_database(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "state"
    state = await open_state(directory, poll_s=0)
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert state.location == str(directory / DB_NAME)
        assert isinstance(state, EmbeddedStores)
        sync = await state._db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL
    finally:
        await state.close()
    with sqlite3.connect(directory / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.asyncio
async def test_an_unreachable_redis_is_one_clear_error_without_the_password() -> None:
    from simulator.broker import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(StateError) as info:
        await open_state(url)
    message = str(info.value)
    assert "127.0.0.1" in message and "s3cret" not in message and "\n" not in message


@pytest.mark.asyncio
async def test_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(StateError, match="unknown state URL scheme 'http'"):
        await open_state("http://example.org/state")


@pytest.mark.asyncio
async def test_a_file_where_the_dir_should_be_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a dir")
    with pytest.raises(StateError, match=str(blocker)):
        await open_state(blocker)


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as info:
        await open_state(tmp_path)
    message = str(info.value)
    assert str(tmp_path / DB_NAME) in message and "\n" not in message


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StateError, match="newer than this iot-guard"):
        await open_state(tmp_path)


@pytest.mark.asyncio
async def test_a_closed_store_says_so_and_close_is_idempotent(tmp_path: Path) -> None:
    state = await open_state(tmp_path, poll_s=0.01)
    await state.close()
    await state.close()
    with pytest.raises(StateError, match="closed"):
        await state.approvals.get("x")


def test_default_state_dir_is_beside_the_audit_log(tmp_path: Path) -> None:
    assert default_state_dir(tmp_path / "logs" / "audit.jsonl") == tmp_path / "logs" / "state"


def test_default_state_dir_without_an_audit_log_follows_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir(None) == tmp_path / "xdg" / "iot-guard"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir(None) == tmp_path / "home" / ".local" / "state" / "iot-guard"


KILL_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from iot_guard.state import open_state

async def main():
    state = await open_state(sys.argv[1], poll_s=0)
    await state.flags.kill("ops-1", "local kill path", "root")
    await state.approvals.update("r1", "pending", status="cancelled", changes={"by": "root"})
    await state.close()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_another_process_writing_the_state_dir_reaches_the_guard_within_1s(
    tmp_path: Path,
) -> None:
    guard = await open_state(tmp_path)  # default poll interval
    try:
        await guard.approvals.create("r1", "pending", {})
        seen_kill = asyncio.Event()
        seen_cancel = asyncio.Event()
        guard.flags.watch(lambda e: seen_kill.set() if e.kind == "kill" else None)
        guard.approvals.watch(lambda r: seen_cancel.set() if r.status == "cancelled" else None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILL_FROM_ANOTHER_PROCESS, str(tmp_path),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        written = time.monotonic()
        await asyncio.wait_for(asyncio.gather(seen_kill.wait(), seen_cancel.wait()), 1.0)
        assert time.monotonic() - written < 1.0
        assert guard.flags.view.is_killed("ops-1") is not None
    finally:
        await guard.close()


@pytest.mark.asyncio
async def test_poll_announces_each_change_once(tmp_path: Path) -> None:
    """Own changes ring at once and are not rung again by the poll; another process's
    changes ring on the poll that sees them, once."""
    guard = await open_state(tmp_path, poll_s=0)
    other = await open_state(tmp_path, poll_s=0)
    try:
        assert isinstance(guard, EmbeddedStores)
        seen: list[tuple[str, str]] = []
        guard.approvals.watch(lambda r: seen.append((r.id, r.status)))
        await guard.approvals.create("own-1", "pending", {})
        await guard.poll()  # nothing from elsewhere
        await other.approvals.create("other-1", "pending", {})
        await guard.approvals.create("own-2", "pending", {})
        await guard.poll()
        await guard.poll()
        await other.approvals.update("own-1", "pending", status="approved")
        await guard.poll()
        assert seen == [("own-1", "pending"), ("own-2", "pending"), ("other-1", "pending"),
                        ("own-1", "approved")]
    finally:
        await other.close()
        await guard.close()


def test_a_failed_commit_leaves_no_transaction_open() -> None:
    """A COMMIT that fails (here a deferred foreign key; on a guard, disk full) must not
    leave the connection inside the transaction, or every later write would fail."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE c (pid INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(sqlite3.IntegrityError), _immediate(conn):
            conn.execute("INSERT INTO c VALUES (1)")
        assert not conn.in_transaction
        with _immediate(conn):
            conn.execute("INSERT INTO p VALUES (1)")
        assert conn.execute("SELECT count(*) FROM p").fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_the_poller_forgets_expired_revocations_by_itself(tmp_path: Path) -> None:
    clock = [1000.0]
    guard = await open_state(tmp_path, clock=lambda: clock[0], poll_s=0.01)
    try:
        await guard.flags.revoke("j1", expires_at=1060.0, reason="leak")
        await guard.flags.revoke("j2", expires_at=1e12, reason="leak")
        clock[0] += FORGET_EVERY_S + 1
        deadline = time.monotonic() + 5
        while "j1" in guard.flags.view.snapshot.revoked:
            assert time.monotonic() < deadline, "the expired revocation was never forgotten"
            await asyncio.sleep(0.01)
        assert set(guard.flags.view.snapshot.revoked) == {"j2"}
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            assert [r[0] for r in conn.execute("SELECT jti FROM revoked")] == ["j2"]
    finally:
        await guard.close()
