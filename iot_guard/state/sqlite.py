"""The embedded backend: one SQLite file for what must survive a restart, memory for buckets.

Choices (issue 6 §4):

- WAL journal: readers never block the writer, and other processes (``iot-guard kill``
  through the state dir when the admin API is down) can write while the guard reads.
- ``synchronous=FULL``: a commit is on disk before it returns. In WAL mode NORMAL keeps the
  file consistent but may lose the last commits on power loss; here a commit is an approval a
  human gave, a kill switch, a claim to carry an action out, so it must not silently come
  back undone. Writes are rare (approvals, flags, a baseline fold every few seconds, a chain
  head per checkpoint), so the fsync per commit costs nothing on the per-packet path.
- Blocking calls run on one dedicated thread that owns the connection (a single-thread
  executor): an fsync takes milliseconds, and on the event loop it would stall every session's
  relay. One thread also serialises this process's operations without a lock; across
  processes every read-modify-write runs in ``BEGIN IMMEDIATE`` (the write lock is taken at the
  start, so two processes never both read then both write), with a busy timeout.
- Changes made by other processes are noticed by polling ``PRAGMA data_version`` (it changes
  when another connection commits) a few times a second on that thread: then the flags are
  re-read into the view and changed approval records are pushed to watchers.
- Rate-limit buckets stay in memory (``LocalRateLimiter``): one guard owns them, and a
  bucket lost in a restart only forgives one burst. Baselines are folded into SQLite.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from . import baseline as baseline_math
from .common import expected_statuses, holds_claim, may_claim, notify, strict_json
from .flags import FlagView, diff_flags
from .protocols import Unsubscribe
from .ratelimit import LocalRateLimiter
from .records import (
    DEVICE_STATUSES,
    AlreadyExists,
    Baseline,
    ChainHead,
    DeviceState,
    FlagEvent,
    FlagSnapshot,
    Grant,
    Kill,
    Lift,
    RateLimit,
    Record,
    Revocation,
    StateError,
    VoidBefore,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

DB_NAME = "state.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
FORGET_EVERY_S = 600.0  # how often the poller deletes revocations of expired tokens

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seq (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO seq VALUES ('rev', 0);
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, body TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, rev INTEGER NOT NULL,
    owner TEXT, lease_until REAL);
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, created_at);
CREATE INDEX IF NOT EXISTS records_by_rev ON records (rev);
CREATE TABLE IF NOT EXISTS rollout_devices (
    record_id TEXT NOT NULL, pos INTEGER NOT NULL, device TEXT NOT NULL,
    status TEXT NOT NULL, at REAL NOT NULL, detail TEXT,
    PRIMARY KEY (record_id, device));
CREATE TABLE IF NOT EXISTS kills (
    agent TEXT PRIMARY KEY, reason TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL,
    lifted_by TEXT, lifted_at REAL);
CREATE TABLE IF NOT EXISTS revoked (
    jti TEXT PRIMARY KEY, agent TEXT, reason TEXT NOT NULL, at REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS void_before (
    agent TEXT PRIMARY KEY, before REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS baselines (
    key TEXT PRIMARY KEY, mean REAL NOT NULL, variance REAL NOT NULL,
    windows INTEGER NOT NULL, window INTEGER NOT NULL, current REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chain_heads (
    instance TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL,
    checkpoint_size INTEGER NOT NULL, checkpoint_root TEXT NOT NULL, checkpoint_at REAL,
    updated_at REAL NOT NULL);
"""


def _in(n: int) -> str:
    return ",".join("?" * n)


# ----------------------------------------------------------------------------- the database


class Database:
    """One SQLite connection owned by one thread; ``run`` executes a function on it."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iot-guard-state")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self, _: sqlite3.Connection | None) -> None:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.path}: state schema {version} is newer than this iot-guard "
                        f"knows ({SCHEMA_VERSION}); upgrade iot-guard"
                    )
                if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal" and (
                    self.path != ":memory:"
                ):
                    raise StateError(f"{self.path}: cannot use the WAL journal here")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                with _immediate(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc
        self._conn = conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StateError(f"{self.path}: the state store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._conn, *args)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn is not None:
            await self.run(lambda conn: conn.close())
        self._closed = True
        self._executor.shutdown(wait=True)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that holds SQLite's write lock from its first statement, so a
    read-modify-write cannot interleave with another process's (BEGIN IMMEDIATE)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # Also when COMMIT itself failed (disk full, I/O error): never leave the connection
        # inside a transaction, or every later operation would fail.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _next_rev(conn: sqlite3.Connection) -> int:
    row = conn.execute("UPDATE seq SET value = value + 1 WHERE name = 'rev' RETURNING value")
    return int(row.fetchone()[0])


# ----------------------------------------------------------------------------- approvals

_RECORD_COLUMNS = "id, status, body, created_at, updated_at, rev, owner, lease_until"


def _record(row: tuple[Any, ...]) -> Record:
    return Record(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7])


def _get(conn: sqlite3.Connection, record_id: str) -> Record | None:
    row = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,))
    found = row.fetchone()
    return _record(found) if found else None


def _write(conn: sqlite3.Connection, rec: Record) -> None:
    conn.execute(
        "UPDATE records SET status = ?, body = ?, updated_at = ?, rev = ?, owner = ?, "
        "lease_until = ? WHERE id = ?",
        (rec.status, strict_json(rec.body), rec.updated_at, rec.rev, rec.owner, rec.lease_until,
         rec.id),
    )


class SqliteApprovalStore:
    """``ApprovalStore`` on SQLite; see ``protocols.ApprovalStore`` for the contract."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._watchers: list[Callable[[Record], None]] = []
        self._own_revs: set[int] = set()  # changes this store already announced
        self._last_rev = 0

    async def create(self, record_id: str, status: str, body: Mapping[str, Any]) -> Record:
        text = strict_json(body)
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Record:
            with _immediate(conn):
                if _get(conn, record_id) is not None:
                    raise AlreadyExists(f"record {record_id} already exists")
                rev = _next_rev(conn)
                conn.execute(
                    f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, "
                    "NULL)", (record_id, status, text, now, now, rev),
                )
            return Record(record_id, status, json.loads(text), now, now, rev)

        rec = await self._db.run(op)
        self._announce(rec)
        return rec

    async def get(self, record_id: str) -> Record | None:
        return await self._db.run(_get, record_id)

    async def list(
        self, statuses: Collection[str] | None = None, *, limit: int | None = None
    ) -> builtins.list[Record]:
        where, params = "", []  # type: tuple[str, builtins.list[Any]]
        if statuses is not None:
            wanted = expected_statuses(statuses)
            if not wanted:
                return []
            where, params = f"WHERE status IN ({_in(len(wanted))})", list(wanted)
        sql = f"SELECT {_RECORD_COLUMNS} FROM records {where} ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))

        def op(conn: sqlite3.Connection) -> list[Record]:
            return [_record(r) for r in conn.execute(sql, params)]

        return await self._db.run(op)

    async def update(
        self,
        record_id: str,
        expect: str | Collection[str],
        *,
        status: str | None = None,
        changes: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Record | None:
        wanted = expected_statuses(expect)
        delta = json.loads(strict_json(changes or {}))  # our own copy
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Record | None:
            with _immediate(conn):
                rec = _get(conn, record_id)
                if rec is None or rec.status not in wanted:
                    return None
                if owner is not None and not holds_claim(rec, owner, now):
                    return None
                new = Record(
                    rec.id, status if status is not None else rec.status, {**rec.body, **delta},
                    rec.created_at, now, _next_rev(conn), rec.owner, rec.lease_until,
                )
                _write(conn, new)
                return new

        return self._announce(await self._db.run(op))

    async def claim(
        self,
        record_id: str,
        owner: str,
        lease_s: float,
        *,
        expect: str | Collection[str] | None = None,
    ) -> Record | None:
        if lease_s <= 0:
            raise ValueError(f"a lease lasts a positive time, not {lease_s}")
        wanted = None if expect is None else expected_statuses(expect)
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Record | None:
            with _immediate(conn):
                rec = _get(conn, record_id)
                if rec is None or (wanted is not None and rec.status not in wanted):
                    return None
                if not may_claim(rec, owner, now):
                    return None
                new = Record(rec.id, rec.status, rec.body, rec.created_at, now, _next_rev(conn),
                             owner, now + lease_s)
                _write(conn, new)
                return new

        return self._announce(await self._db.run(op))

    async def release(self, record_id: str, owner: str) -> bool:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Record | None:
            with _immediate(conn):
                rec = _get(conn, record_id)
                if rec is None or rec.owner != owner:
                    return None
                new = Record(rec.id, rec.status, rec.body, rec.created_at, now, _next_rev(conn))
                _write(conn, new)
                return new

        return self._announce(await self._db.run(op)) is not None

    async def rollout_start(
        self, record_id: str, devices: Sequence[str]
    ) -> builtins.list[DeviceState]:
        if len(set(devices)) != len(devices):
            raise ValueError("a rollout names each device once")
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[Record | None, list[DeviceState]]:
            with _immediate(conn):
                started = conn.execute(
                    "SELECT 1 FROM rollout_devices WHERE record_id = ? LIMIT 1", (record_id,)
                ).fetchone()
                if started:
                    raise AlreadyExists(f"the rollout of {record_id} was already started")
                conn.executemany(
                    "INSERT INTO rollout_devices VALUES (?, ?, ?, 'queued', ?, NULL)",
                    [(record_id, pos, device, now) for pos, device in enumerate(devices)],
                )
                return _touch(conn, record_id, now), [
                    DeviceState(d, "queued", now) for d in devices
                ]

        touched, states = await self._db.run(op)
        self._announce(touched)
        return states

    async def rollout(self, record_id: str) -> builtins.list[DeviceState] | None:
        def op(conn: sqlite3.Connection) -> list[DeviceState]:
            rows = conn.execute(
                "SELECT device, status, at, detail FROM rollout_devices WHERE record_id = ? "
                "ORDER BY pos", (record_id,),
            )
            return [DeviceState(*r) for r in rows]

        states = await self._db.run(op)
        return states or None

    async def rollout_update(
        self,
        record_id: str,
        device: str,
        expect: str | Collection[str],
        status: str,
        detail: str | None = None,
    ) -> DeviceState | None:
        if status not in DEVICE_STATUSES:
            raise ValueError(f"unknown device status {status!r}; known: {DEVICE_STATUSES}")
        wanted = expected_statuses(expect)
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[Record | None, DeviceState | None]:
            with _immediate(conn):
                cur = conn.execute(
                    f"UPDATE rollout_devices SET status = ?, at = ?, detail = ? "
                    f"WHERE record_id = ? AND device = ? AND status IN ({_in(len(wanted))})",
                    (status, now, detail, record_id, device, *wanted),
                )
                if cur.rowcount != 1:
                    return None, None
                return _touch(conn, record_id, now), DeviceState(device, status, now, detail)

        touched, state = await self._db.run(op)
        self._announce(touched)
        return state

    async def rollout_cancel(self, record_id: str, detail: str) -> int:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[Record | None, int]:
            with _immediate(conn):
                cur = conn.execute(
                    "UPDATE rollout_devices SET status = 'cancelled', at = ?, detail = ? "
                    "WHERE record_id = ? AND status = 'queued'", (now, detail, record_id),
                )
                if not cur.rowcount:
                    return None, 0
                return _touch(conn, record_id, now), cur.rowcount

        touched, count = await self._db.run(op)
        self._announce(touched)
        return count

    def watch(self, callback: Callable[[Record], None]) -> Unsubscribe:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    # -- change feed

    def _announce(self, rec: Record | None) -> Record | None:
        if rec is not None:
            self._own_revs.add(rec.rev)
            notify(self._watchers, [rec])
        return rec

    def _changed_elsewhere(self, foreign: bool, rev_seen: int, rows: builtins.list[Record]
                           ) -> builtins.list[Record]:
        """On the event loop, after a poll: the records another process changed.

        ``rev_seen``: the store's rev when no other process had committed since the last
        poll (so every rev up to it is one of ours), or the highest rev in ``rows``. Our own
        writes are announced at once by ``_announce``; their revs are remembered until the
        poll passes them, so they are not announced twice.
        """
        self._last_rev = max(self._last_rev, rev_seen)
        found = [r for r in rows if r.rev not in self._own_revs] if foreign else []
        self._own_revs = {r for r in self._own_revs if r > self._last_rev}
        return found


def _touch(conn: sqlite3.Connection, record_id: str, now: float) -> Record | None:
    """Give a record a new rev (rollout progress rings its watchers)."""
    rec = _get(conn, record_id)
    if rec is None:
        return None
    new = Record(rec.id, rec.status, rec.body, rec.created_at, now, _next_rev(conn), rec.owner,
                 rec.lease_until)
    _write(conn, new)
    return new


# ----------------------------------------------------------------------------- counters


class EmbeddedCounterStore:
    """Buckets in memory (this guard's ``LocalRateLimiter``), baselines in SQLite."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._limiter = LocalRateLimiter()

    @property
    def limiter(self) -> LocalRateLimiter:
        return self._limiter

    async def take(self, key: str, limit: RateLimit, n: int) -> Grant:
        return self._limiter.take_up_to(key, limit, self._clock(), n)

    async def fold_baseline(self, key: str, window: int, count: float, alpha: float) -> Baseline:
        baseline_math.fold(None, window, count, alpha)  # refuse bad arguments before the file

        def op(conn: sqlite3.Connection) -> Baseline:
            with _immediate(conn):
                new = baseline_math.fold(_baseline(conn, key), window, count, alpha)
                conn.execute(
                    "INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?, ?, ?)",
                    (key, new.mean, new.variance, new.windows, new.window, new.current),
                )
                return new

        return await self._db.run(op)

    async def baseline(self, key: str) -> Baseline | None:
        return await self._db.run(_baseline, key)

    async def baselines(self) -> dict[str, Baseline]:
        def op(conn: sqlite3.Connection) -> dict[str, Baseline]:
            rows = conn.execute(
                "SELECT key, mean, variance, windows, window, current FROM baselines"
            )
            return {r[0]: Baseline(*r[1:]) for r in rows}

        return await self._db.run(op)


def _baseline(conn: sqlite3.Connection, key: str) -> Baseline | None:
    row = conn.execute(
        "SELECT mean, variance, windows, window, current FROM baselines WHERE key = ?", (key,)
    ).fetchone()
    return Baseline(*row) if row else None


# ----------------------------------------------------------------------------- flags


def _load_flags(conn: sqlite3.Connection, now: float) -> FlagSnapshot:
    kills: dict[str, Kill] = {}
    lifts: dict[str, Lift] = {}
    for agent, reason, by, at, lifted_by, lifted_at in conn.execute(
        "SELECT agent, reason, by, at, lifted_by, lifted_at FROM kills"
    ):
        kill = Kill(agent, reason, by, at)
        if lifted_at is None:
            kills[agent] = kill
        else:
            lifts[agent] = Lift(agent, lifted_by, lifted_at, kill)
    revoked = {
        r[0]: Revocation(*r)
        for r in conn.execute(
            "SELECT jti, agent, reason, at, expires_at FROM revoked WHERE expires_at > ?", (now,)
        )
    }
    void = {r[0]: VoidBefore(*r) for r in conn.execute(
        "SELECT agent, before, reason FROM void_before")}
    return FlagSnapshot(kills, lifts, revoked, void)


def _void_max(conn: sqlite3.Connection, agent: str, before: float, reason: str) -> None:
    conn.execute(
        "INSERT INTO void_before VALUES (?, ?, ?) ON CONFLICT (agent) DO UPDATE SET "
        "before = excluded.before, reason = excluded.reason WHERE excluded.before > before",
        (agent, before, reason),
    )


class SqliteFlagStore:
    """``FlagStore`` on SQLite; every write re-reads the (small) flag tables into the view."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._view = FlagView()
        self._watchers: list[Callable[[FlagEvent], None]] = []

    @property
    def view(self) -> FlagView:
        return self._view

    async def kill(self, agent: str, reason: str, by: str) -> Kill:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[Kill, FlagSnapshot]:
            with _immediate(conn):
                # A switch in force stays as it is (idempotent); a lifted one is set anew.
                conn.execute(
                    "INSERT INTO kills VALUES (?, ?, ?, ?, NULL, NULL) ON CONFLICT (agent) DO "
                    "UPDATE SET reason = excluded.reason, by = excluded.by, at = excluded.at, "
                    "lifted_by = NULL, lifted_at = NULL WHERE lifted_at IS NOT NULL",
                    (agent, reason, by, now),
                )
                _void_max(conn, agent, now, f"kill switch by {by}: {reason}")
                row = conn.execute(
                    "SELECT agent, reason, by, at FROM kills WHERE agent = ?", (agent,)
                ).fetchone()
            return Kill(*row), _load_flags(conn, now)

        kill, snap = await self._db.run(op)
        self._apply(snap)
        return kill

    async def lift(self, agent: str, by: str) -> bool:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[bool, FlagSnapshot]:
            with _immediate(conn):
                lifted = conn.execute(
                    "UPDATE kills SET lifted_by = ?, lifted_at = ? "
                    "WHERE agent = ? AND lifted_at IS NULL", (by, now, agent),
                ).rowcount
            return bool(lifted), _load_flags(conn, now)

        lifted, snap = await self._db.run(op)
        self._apply(snap)
        return lifted

    async def revoke(
        self, jti: str, *, expires_at: float, reason: str, agent: str | None = None
    ) -> bool:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[bool, FlagSnapshot]:
            with _immediate(conn):
                added = conn.execute(
                    "INSERT OR IGNORE INTO revoked VALUES (?, ?, ?, ?, ?)",
                    (jti, agent, reason, now, expires_at),
                ).rowcount
            return bool(added), _load_flags(conn, now)

        added, snap = await self._db.run(op)
        self._apply(snap)
        return added

    async def void_tokens_before(self, agent: str, before: float, reason: str) -> float:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[float, FlagSnapshot]:
            with _immediate(conn):
                _void_max(conn, agent, before, reason)
                row = conn.execute(
                    "SELECT before FROM void_before WHERE agent = ?", (agent,)
                ).fetchone()
            return float(row[0]), _load_flags(conn, now)

        in_force, snap = await self._db.run(op)
        self._apply(snap)
        return in_force

    async def snapshot(self) -> FlagSnapshot:
        snap = await self._db.run(_load_flags, self._clock())
        self._apply(snap)
        return snap

    async def forget_expired(self) -> int:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[int, FlagSnapshot]:
            with _immediate(conn):
                gone = conn.execute("DELETE FROM revoked WHERE expires_at <= ?", (now,)).rowcount
            return gone, _load_flags(conn, now)

        gone, snap = await self._db.run(op)
        self._apply(snap)  # the view lets go of them too: its memory stays bounded
        return gone

    def watch(self, callback: Callable[[FlagEvent], None]) -> Unsubscribe:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _apply(self, snap: FlagSnapshot) -> None:
        """Show ``snap`` in the view first, then ring the watchers with what changed."""
        events = diff_flags(self._view.snapshot, snap)
        self._view.replace(snap)
        notify(self._watchers, events)


# ----------------------------------------------------------------------------- chain heads


class SqliteChainHeadStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def head(self, instance: str) -> ChainHead | None:
        def op(conn: sqlite3.Connection) -> ChainHead | None:
            row = conn.execute(
                "SELECT seq, hash, checkpoint_size, checkpoint_root, checkpoint_at "
                "FROM chain_heads WHERE instance = ?", (instance,),
            ).fetchone()
            return ChainHead(*row) if row else None

        return await self._db.run(op)

    async def put_head(self, instance: str, head: ChainHead, *, expect_seq: int | None) -> bool:
        now = self._clock()
        values = (head.seq, head.hash, head.checkpoint_size, head.checkpoint_root,
                  head.checkpoint_at, now)

        def op(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                row = conn.execute(
                    "SELECT seq FROM chain_heads WHERE instance = ?", (instance,)
                ).fetchone()
                if (row[0] if row else None) != expect_seq:
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO chain_heads VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (instance, *values),
                )
                return True

        return await self._db.run(op)


# ----------------------------------------------------------------------------- the whole


class EmbeddedStores:
    """The default backend: SQLite file ``DIR/state.sqlite3`` plus in-memory buckets.

    ``poll_s``: how often to look for changes other processes committed (the local
    ``iot-guard kill`` path must reach live sessions within 1 s, issue 8 §4).
    """

    def __init__(self, path: Path | str, *, clock: Clock = time.time, poll_s: float = 0.25):
        self._db = Database(path)
        self._clock = clock
        self._poll_s = poll_s
        self.approvals = SqliteApprovalStore(self._db, clock)
        self.counters = EmbeddedCounterStore(self._db, clock)
        self.flags = SqliteFlagStore(self._db, clock)
        self.chain = SqliteChainHeadStore(self._db, clock)
        self._data_version: int | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def location(self) -> str:
        return self._db.path

    async def open(self) -> EmbeddedStores:
        await self._db.open()

        def first(conn: sqlite3.Connection) -> tuple[int, int]:
            # data_version before the rev: a commit in between is then both in the start
            # state and seen as foreign by the first poll (announced at most twice, never lost).
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            rev = conn.execute("SELECT value FROM seq WHERE name = 'rev'").fetchone()[0]
            return int(version), int(rev)

        self._data_version, self.approvals._last_rev = await self._db.run(first)
        await self.flags.snapshot()
        if self._poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="iot-guard-state-poll"
            )
        return self

    async def poll(self) -> None:
        """Look once for changes other processes committed; push them to views and watchers."""
        now = self._clock()
        after = self.approvals._last_rev

        def op(conn: sqlite3.Connection) -> tuple[bool, int, list[Record], FlagSnapshot | None]:
            # The rev before data_version: if data_version did not move, nobody else
            # committed before the rev was read, so every rev up to it is ours.
            rev = int(conn.execute("SELECT value FROM seq WHERE name = 'rev'").fetchone()[0])
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            if version == self._data_version:
                return False, rev, [], None
            self._data_version = version  # only this thread reads or writes it
            rows = [_record(r) for r in conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE rev > ? ORDER BY rev", (after,))]
            return True, rows[-1].rev if rows else after, rows, _load_flags(conn, now)

        foreign, rev_seen, rows, snap = await self._db.run(op)
        if snap is not None:
            self.flags._apply(snap)
        notify(self.approvals._watchers,
                self.approvals._changed_elsewhere(foreign, rev_seen, rows))

    async def _poll_forever(self) -> None:
        forget_at = self._clock() + FORGET_EVERY_S
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.poll()
                if self._clock() >= forget_at:
                    forget_at = self._clock() + FORGET_EVERY_S
                    await self.flags.forget_expired()
            except StateError as exc:  # keep the last known state; say so, try again
                log.warning("state poll failed: %s", exc)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._db.close()

    async def __aenter__(self) -> EmbeddedStores:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
