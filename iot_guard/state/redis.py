"""The shared backend: every store on one Redis, for several guards (issue 11).

Choices:

- redis-py's asyncio client, ``redis>=5.0,<6``: the 5.x line is the one whose support
  table covers Redis 7.0, the server Debian ships here (6.x supports 7.2 and later only).
- Approval records (create, approve/deny/any status change, claim, release) are written by
  one Lua script that applies only if the record is still at the revision the caller read
  (compare-and-set on ``rev``): of two guards approving or claiming one request at once,
  exactly one script succeeds; the other reads again and finds the new status.
- Other read-modify-write steps (a device's rollout state, a kill, a baseline fold, a chain
  head) are optimistic transactions: WATCH the keys, compute in Python with the same
  functions the embedded backend uses (one copy of each rule: ``baseline.fold``, ``flags``),
  MULTI/EXEC; a concurrent writer makes EXEC fail and the step runs again.
- Rate-limit buckets are GCRA in a Lua script on Redis time (``TIME``), so guards with
  skewed clocks agree; the tests inject a clock, which is then passed in instead.
- Changes ring a pub/sub doorbell; pub/sub loses messages across reconnects, so each guard
  also polls (records changed after the last rev it saw, and the flags) every ``poll_s``
  and on reconnect. The authoritative state is the keys, never a message.
- Redis unreachable: every operation raises ``StateError`` (one line, no password); the
  local views keep the last state read (a killed agent stays killed) and the poller keeps
  trying and says when it is back.

Keys (prefix ``iotguard`` unless the URL says ``?prefix=``): ``rev`` (a counter),
``rec:{id}`` (hash), ``recs`` (zset id by created_at), ``revs`` (zset id by rev),
``roll:{id}`` (hash device -> JSON) and ``rollorder:{id}`` (list), ``bucket:{key}``,
``base:{key}`` (hash), ``kills`` / ``revoked`` / ``void`` (hashes of JSON), ``chain:{name}``
(hash), channel ``doorbell``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

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

SYNC_S = 0.05  # how often a guard adds its local rate-limit takes to the shared buckets

# GCRA on the shared bucket (the same arithmetic as ``ratelimit.gcra_take``). KEYS[1] the
# bucket; ARGV: n, interval, window, partial (1/0), now ('' = Redis time), add (1: record
# n units whatever the room, the guards' sync of takes already granted locally).
_GCRA = """
local n = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local partial = ARGV[4] == '1'
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local add = ARGV[6] == '1'
local eps = 1e-9
local tat = tonumber(redis.call('GET', KEYS[1]))
local start = now
if tat and tat > now then start = tat end
local room = now + window - start
local granted, retry, new_tat = 0, 0, tat
if add or n * interval <= room + eps then
  granted, new_tat = n, start + n * interval
elseif not partial then
  if n * interval > window + eps then retry = -1 else retry = n * interval - room end
else
  local free = math.floor(room / interval + eps)
  if free < 0 then free = 0 end
  granted = free
  if free > 0 then new_tat = start + free * interval end
  retry = (start + free * interval) + interval - window - now
end
if new_tat then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
             'PX', math.max(1, math.ceil((new_tat - now + window) * 1000)))
end
return {granted, string.format('%.17g', retry), string.format('%.17g', new_tat or 0)}
"""


# Writing an approval record is one Lua script (atomic on the server): it applies only if
# the record is still at the revision the caller read (KEYS[1] the record, KEYS[2] the
# revs index, KEYS[3] the creation index; ARGV[1] the expected rev, '' = must not exist;
# ARGV[2] the new rev, ARGV[3] created_at, then field/value pairs). Of two guards
# approving, or claiming, one request at once exactly one script succeeds.
_WRITE_RECORD = """
local current = redis.call('HGET', KEYS[1], 'rev')
if ARGV[1] == '' then
  if current then return 0 end
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
elseif current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Redis:
    """The connection and the one way to talk through it (errors become StateError)."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.url = url
        self.where = redacted(url)
        query = parse_qs(urlsplit(url).query)
        self.prefix = query.pop("prefix", ["iotguard"])[0]
        clean = urlunsplit(urlsplit(url)._replace(query="&".join(
            f"{k}={v[0]}" for k, v in query.items())))
        self.r = Redis.from_url(clean, socket_timeout=2.0, socket_connect_timeout=2.0,
                                health_check_interval=5, decode_responses=True)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        try:
            return await fn()
        except RedisError as exc:
            raise StateError(f"{self.where}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StateError(f"{self.where}: unreachable: {exc}") from exc

    async def transact(self, keys: Sequence[str], step: Callable[[Any], Awaitable[T]]) -> T:
        """WATCH ``keys``, run ``step(pipe)`` (reads, then ``pipe.multi()`` and queued
        writes, or no multi to write nothing), EXEC; again if another client wrote first."""
        from redis.exceptions import WatchError

        async def run() -> T:
            async with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(*keys)
                        result = await step(pipe)
                        if pipe.explicit_transaction:
                            await pipe.execute()
                        else:
                            await pipe.unwatch()
                        return result
                    except WatchError:
                        continue

        return await self.call(run)

    async def ring(self, what: str) -> None:
        await self.call(lambda: self.r.publish(self.key("doorbell"), what))


# ----------------------------------------------------------------------------- approvals


def _record(h: Mapping[str, str]) -> Record:
    return Record(
        h["id"], h["status"], json.loads(h["body"]), float(h["created_at"]),
        float(h["updated_at"]), int(h["rev"]), h.get("owner") or None,
        float(h["lease_until"]) if h.get("lease_until") else None,
    )


def _fields(rec: Record) -> dict[str, str]:
    return {
        "id": rec.id, "status": rec.status, "body": strict_json(rec.body),
        "created_at": repr(rec.created_at), "updated_at": repr(rec.updated_at),
        "rev": str(rec.rev), "owner": rec.owner or "",
        "lease_until": repr(rec.lease_until) if rec.lease_until is not None else "",
    }


class RedisApprovalStore:
    """``ApprovalStore`` on Redis; see ``protocols.ApprovalStore`` for the contract."""

    def __init__(self, redis: _Redis, clock: Clock) -> None:
        self._x = redis
        self._clock = clock
        self._watchers: builtins.list[Callable[[Record], None]] = []
        self._write_script: Any = redis.r.register_script(_WRITE_RECORD)
        self._seen: dict[str, int] = {}  # the last rev announced per record
        # The doorbells in flight: the loop keeps only weak references to tasks, and one
        # collected mid-flight would never ring (asyncio.create_task's documentation).
        self._ringing: set[asyncio.Task[None]] = set()
        self.last_rev = 0

    def _key(self, record_id: str) -> str:
        return self._x.key("rec", record_id)

    async def _write(self, rec: Record, expect_rev: int | None) -> bool:
        """Store ``rec`` if the stored record is still at ``expect_rev`` (None: absent)."""
        fields = [item for pair in _fields(rec).items() for item in pair]
        args = ["" if expect_rev is None else str(expect_rev), str(rec.rev),
                repr(rec.created_at), rec.id, *fields]
        keys = [self._key(rec.id), self._x.key("revs"), self._x.key("recs")]
        return bool(await self._x.call(lambda: self._write_script(keys=keys, args=args)))

    async def _rev(self) -> int:
        return int(await self._x.call(lambda: self._x.r.incr(self._x.key("rev"))))

    async def create(self, record_id: str, status: str, body: Mapping[str, Any]) -> Record:
        text = strict_json(body)
        now = self._clock()
        rev = await self._rev()
        rec = Record(record_id, status, json.loads(text), now, now, rev)
        if not await self._write(rec, None):
            raise AlreadyExists(f"record {record_id} already exists")
        self._announce(rec)
        return rec

    async def get(self, record_id: str) -> Record | None:
        h = await self._x.call(lambda: self._x.r.hgetall(self._key(record_id)))
        return _record(h) if h else None

    async def list(
        self, statuses: Collection[str] | None = None, *, limit: int | None = None
    ) -> builtins.list[Record]:
        wanted = None if statuses is None else set(expected_statuses(statuses))
        if wanted is not None and not wanted:
            return []
        # Newest first by created_at then id, like the embedded backend.
        entries = await self._x.call(
            lambda: self._x.r.zrange(self._x.key("recs"), 0, -1, withscores=True))
        entries.sort(key=lambda e: (e[1], e[0]), reverse=True)

        async def fetch() -> builtins.list[dict[str, str]]:
            pipe = self._x.r.pipeline(transaction=False)
            for record_id, _ in entries:
                pipe.hgetall(self._key(record_id))
            return list(await pipe.execute())

        found = [_record(h) for h in await self._x.call(fetch) if h]
        out = [r for r in found if wanted is None or r.status in wanted]
        return out if limit is None else out[: max(0, limit)]

    async def _change(
        self, record_id: str, make: Callable[[Record, int], Record | None]
    ) -> Record | None:
        while True:
            h = await self._x.call(lambda: self._x.r.hgetall(self._key(record_id)))
            if not h:
                return None
            current = _record(h)
            new = make(current, await self._rev())
            if new is None:  # the condition failed on the record as it was read
                return None
            if await self._write(new, current.rev):
                return self._announce(new)
            # Another guard wrote in between: read again and decide again.

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
        delta = json.loads(strict_json(changes or {}))
        now = self._clock()

        def make(rec: Record, rev: int) -> Record | None:
            if rec.status not in wanted:
                return None
            if owner is not None and not holds_claim(rec, owner, now):
                return None
            return Record(rec.id, status if status is not None else rec.status,
                          {**rec.body, **delta}, rec.created_at, now, rev, rec.owner,
                          rec.lease_until)

        return await self._change(record_id, make)

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

        def make(rec: Record, rev: int) -> Record | None:
            if wanted is not None and rec.status not in wanted:
                return None
            if not may_claim(rec, owner, now):
                return None
            return Record(rec.id, rec.status, rec.body, rec.created_at, now, rev, owner,
                          now + lease_s)

        return await self._change(record_id, make)

    async def release(self, record_id: str, owner: str) -> bool:
        now = self._clock()

        def make(rec: Record, rev: int) -> Record | None:
            if rec.owner != owner:
                return None
            return Record(rec.id, rec.status, rec.body, rec.created_at, now, rev)

        return await self._change(record_id, make) is not None

    def _roll(self, record_id: str) -> tuple[str, str]:
        return self._x.key("roll", record_id), self._x.key("rollorder", record_id)

    async def _touch(self, record_id: str) -> None:
        now = self._clock()
        await self._change(record_id, lambda rec, rev: Record(
            rec.id, rec.status, rec.body, rec.created_at, now, rev, rec.owner, rec.lease_until))

    async def rollout_start(
        self, record_id: str, devices: Sequence[str]
    ) -> builtins.list[DeviceState]:
        if len(set(devices)) != len(devices):
            raise ValueError("a rollout names each device once")
        now = self._clock()
        states, order = self._roll(record_id)
        first = json.dumps({"status": "queued", "at": now, "detail": None})

        async def step(pipe: Any) -> None:
            if await pipe.exists(order):
                raise AlreadyExists(f"the rollout of {record_id} was already started")
            pipe.multi()
            pipe.rpush(order, *devices)
            pipe.hset(states, mapping=dict.fromkeys(devices, first))

        await self._x.transact([order], step)
        await self._touch(record_id)
        return [DeviceState(d, "queued", now) for d in devices]

    async def rollout(self, record_id: str) -> builtins.list[DeviceState] | None:
        states, order = self._roll(record_id)

        async def read() -> tuple[builtins.list[str], dict[str, str]]:
            pipe = self._x.r.pipeline(transaction=True)
            pipe.lrange(order, 0, -1)
            pipe.hgetall(states)
            devices, by_device = await pipe.execute()
            return devices, by_device

        devices, by_device = await self._x.call(read)
        if not devices:
            return None
        out = []
        for device in devices:
            s = json.loads(by_device[device])
            out.append(DeviceState(device, s["status"], s["at"], s["detail"]))
        return out

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
        states, _ = self._roll(record_id)

        async def step(pipe: Any) -> DeviceState | None:
            raw = await pipe.hget(states, device)
            if raw is None or json.loads(raw)["status"] not in wanted:
                return None
            pipe.multi()
            pipe.hset(states, device, json.dumps({"status": status, "at": now, "detail": detail}))
            return DeviceState(device, status, now, detail)

        state = await self._x.transact([states], step)
        if state is not None:
            await self._touch(record_id)
        return state

    async def rollout_cancel(self, record_id: str, detail: str) -> int:
        now = self._clock()
        states, _ = self._roll(record_id)
        cancelled = json.dumps({"status": "cancelled", "at": now, "detail": detail})

        async def step(pipe: Any) -> int:
            by_device = await pipe.hgetall(states)
            queued = [d for d, raw in by_device.items() if json.loads(raw)["status"] == "queued"]
            if queued:
                pipe.multi()
                pipe.hset(states, mapping=dict.fromkeys(queued, cancelled))
            return len(queued)

        count = await self._x.transact([states], step)
        if count:
            await self._touch(record_id)
        return count

    def watch(self, callback: Callable[[Record], None]) -> Unsubscribe:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _announce(self, rec: Record | None) -> Record | None:
        if rec is not None and self._seen.get(rec.id, -1) < rec.rev:
            self._seen[rec.id] = rec.rev
            notify(self._watchers, [rec])
            task = asyncio.get_running_loop().create_task(self._ring(rec))
            self._ringing.add(task)
            task.add_done_callback(self._ringing.discard)
        return rec

    async def _ring(self, rec: Record) -> None:
        try:
            await self._x.ring(f"rec {rec.id}")
        except StateError as exc:  # the poll of the other guards finds it anyway
            log.debug("doorbell not rung: %s", exc)

    async def poll(self) -> None:
        """Announce records changed by other guards since the last rev seen."""
        changed = await self._x.call(lambda: self._x.r.zrangebyscore(
            self._x.key("revs"), f"({self.last_rev}", "+inf", withscores=True))
        for record_id, rev in changed:
            self.last_rev = max(self.last_rev, int(rev))
            if self._seen.get(record_id, -1) >= int(rev):
                continue
            rec = await self.get(record_id)
            if rec is not None and self._seen.get(rec.id, -1) < rec.rev:
                self._seen[rec.id] = rec.rev
                notify(self._watchers, [rec])


# ----------------------------------------------------------------------------- counters


class SharedRateLimiter:
    """The per-packet limiter of a guard on a shared backend: decides from local GCRA
    buckets at once (never waits), and ``sync`` (off the path, every ``SYNC_S``) adds the
    units taken locally to the shared bucket and adopts the shared state. An agent spread
    over N guards gets one budget, overshooting by at most what the guards grant between
    two syncs."""

    def __init__(self) -> None:
        self._local = LocalRateLimiter()
        self._taken: dict[str, tuple[RateLimit, int]] = {}

    def try_take(self, key: str, limit: RateLimit, now: float, n: int = 1) -> Grant:
        grant = self._local.try_take(key, limit, now, n)
        if grant.ok:
            _, before = self._taken.get(key, (limit, 0))
            self._taken[key] = (limit, before + n)
        return grant

    def take_up_to(self, key: str, limit: RateLimit, now: float, n: int) -> Grant:
        return self._local.take_up_to(key, limit, now, n)

    def pending(self) -> dict[str, tuple[RateLimit, int]]:
        taken, self._taken = self._taken, {}
        return taken

    def adopt(self, key: str, tat: float) -> None:
        self._local.adopt(key, tat)


class RedisCounterStore:
    def __init__(self, redis: _Redis, clock: Clock | None) -> None:
        self._x = redis
        self._clock = clock  # None: Redis time (TIME) for the buckets
        self._limiter = SharedRateLimiter()
        self._gcra: Any = redis.r.register_script(_GCRA)

    @property
    def limiter(self) -> SharedRateLimiter:
        return self._limiter

    async def _run_gcra(self, key: str, limit: RateLimit, n: int, *, partial: bool,
                        add: bool) -> tuple[int, float, float]:
        now = "" if self._clock is None else repr(self._clock())
        granted, retry, tat = await self._x.call(lambda: self._gcra(
            keys=[self._x.key("bucket", key)],
            args=[n, repr(limit.interval), repr(limit.window), int(partial), now, int(add)],
        ))
        return int(granted), float(retry), float(tat)

    async def take(self, key: str, limit: RateLimit, n: int) -> Grant:
        if n < 1:
            raise ValueError(f"take at least one unit, not {n}")
        granted, retry, _ = await self._run_gcra(key, limit, n, partial=True, add=False)
        return Grant(granted, max(0.0, retry) if granted < n else 0.0)

    async def sync(self) -> None:
        """Add this guard's local takes to the shared buckets; adopt what the others took."""
        for key, (limit, n) in self._limiter.pending().items():
            _, _, tat = await self._run_gcra(key, limit, n, partial=False, add=True)
            self._limiter.adopt(key, tat)

    async def fold_baseline(self, key: str, window: int, count: float, alpha: float) -> Baseline:
        baseline_math.fold(None, window, count, alpha)  # refuse bad arguments first
        name = self._x.key("base", key)

        async def step(pipe: Any) -> Baseline:
            new = baseline_math.fold(_baseline(await pipe.hgetall(name)), window, count, alpha)
            pipe.multi()
            pipe.hset(name, mapping={f: repr(getattr(new, f)) for f in _BASELINE_FIELDS})
            return new

        return await self._x.transact([name], step)

    async def baseline(self, key: str) -> Baseline | None:
        return _baseline(await self._x.call(lambda: self._x.r.hgetall(self._x.key("base", key))))

    async def baselines(self) -> dict[str, Baseline]:
        prefix = self._x.key("base", "")

        async def read() -> dict[str, Baseline]:
            out = {}
            async for name in self._x.r.scan_iter(match=prefix + "*"):
                found = _baseline(await self._x.r.hgetall(name))
                if found is not None:
                    out[name[len(prefix):]] = found
            return out

        return await self._x.call(read)


_BASELINE_FIELDS = ("mean", "variance", "windows", "window", "current")


def _baseline(h: Mapping[str, str]) -> Baseline | None:
    if not h:
        return None
    return Baseline(float(h["mean"]), float(h["variance"]), int(h["windows"]),
                    int(h["window"]), float(h["current"]))


# ----------------------------------------------------------------------------- flags


class RedisFlagStore:
    def __init__(self, redis: _Redis, clock: Clock) -> None:
        self._x = redis
        self._clock = clock
        self._view = FlagView()
        self._watchers: builtins.list[Callable[[FlagEvent], None]] = []
        self._keys = [redis.key("kills"), redis.key("revoked"), redis.key("void")]
        self._reading = asyncio.Lock()

    @property
    def view(self) -> FlagView:
        return self._view

    async def _read(self, reader: Any) -> FlagSnapshot:
        """The three flag hashes as one state: read inside a WATCH (``reader`` is the
        transaction's pipe) or as one MULTI (``reader`` None), never three moments."""
        if reader is None:
            pipe = self._x.r.pipeline(transaction=True)
            for key in self._keys:
                pipe.hgetall(key)
            kills_raw, revoked_raw, void_raw = await pipe.execute()
        else:
            kills_raw = await reader.hgetall(self._keys[0])
            revoked_raw = await reader.hgetall(self._keys[1])
            void_raw = await reader.hgetall(self._keys[2])
        now = self._clock()
        kills: dict[str, Kill] = {}
        lifts: dict[str, Lift] = {}
        for agent, raw in kills_raw.items():
            k = json.loads(raw)
            kill = Kill(agent, k["reason"], k["by"], k["at"])
            if k.get("lifted_at") is None:
                kills[agent] = kill
            else:
                lifts[agent] = Lift(agent, k["lifted_by"], k["lifted_at"], kill)
        revoked = {}
        for jti, raw in revoked_raw.items():
            r = json.loads(raw)
            if r["expires_at"] > now:
                revoked[jti] = Revocation(jti, r["agent"], r["reason"], r["at"], r["expires_at"])
        void = {a: VoidBefore(a, v["before"], v["reason"])
                for a, v in ((a, json.loads(raw)) for a, raw in void_raw.items())}
        return FlagSnapshot(kills, lifts, revoked, void)

    async def _change(self, step: Callable[[Any, FlagSnapshot], Awaitable[T]]) -> T:
        async def run(pipe: Any) -> T:
            return await step(pipe, await self._read(pipe))

        result = await self._x.transact(self._keys, run)
        await self.snapshot()
        await self._ring()
        return result

    async def _ring(self) -> None:
        try:
            await self._x.ring("flags")
        except StateError as exc:
            log.debug("doorbell not rung: %s", exc)

    def _void(self, pipe: Any, snap: FlagSnapshot, agent: str, before: float,
              reason: str) -> float:
        old = snap.void_before.get(agent)
        if old is not None and old.before >= before:
            return old.before
        pipe.hset(self._keys[2], agent, json.dumps({"before": before, "reason": reason}))
        return before

    async def kill(self, agent: str, reason: str, by: str) -> Kill:
        now = self._clock()

        async def step(pipe: Any, snap: FlagSnapshot) -> Kill:
            pipe.multi()
            kill = snap.kills.get(agent)
            if kill is None:  # a switch in force stays as it is (idempotent)
                kill = Kill(agent, reason, by, now)
                pipe.hset(self._keys[0], agent, json.dumps(
                    {"reason": reason, "by": by, "at": now, "lifted_by": None,
                     "lifted_at": None}))
            self._void(pipe, snap, agent, now, f"kill switch by {by}: {reason}")
            return kill

        return await self._change(step)

    async def lift(self, agent: str, by: str) -> bool:
        now = self._clock()

        async def step(pipe: Any, snap: FlagSnapshot) -> bool:
            kill = snap.kills.get(agent)
            if kill is None:
                return False
            pipe.multi()
            pipe.hset(self._keys[0], agent, json.dumps(
                {"reason": kill.reason, "by": kill.by, "at": kill.at, "lifted_by": by,
                 "lifted_at": now}))
            return True

        return await self._change(step)

    async def revoke(
        self, jti: str, *, expires_at: float, reason: str, agent: str | None = None
    ) -> bool:
        now = self._clock()

        async def step(pipe: Any, snap: FlagSnapshot) -> bool:
            if await pipe.hexists(self._keys[1], jti):
                return False
            pipe.multi()
            pipe.hset(self._keys[1], jti, json.dumps(
                {"agent": agent, "reason": reason, "at": now, "expires_at": expires_at}))
            return True

        return await self._change(step)

    async def void_tokens_before(self, agent: str, before: float, reason: str) -> float:
        async def step(pipe: Any, snap: FlagSnapshot) -> float:
            pipe.multi()
            return self._void(pipe, snap, agent, before, reason)

        return await self._change(step)

    async def snapshot(self) -> FlagSnapshot:
        # One read-and-apply at a time: two overlapping reads finishing out of order would
        # show an older state after a newer one (a kill undone, then rung again).
        async with self._reading:
            snap = await self._x.call(lambda: self._read(None))
            events = diff_flags(self._view.snapshot, snap)
            self._view.replace(snap)
            notify(self._watchers, events)
            return snap

    async def forget_expired(self) -> int:
        now = self._clock()

        async def step(pipe: Any, snap: FlagSnapshot) -> int:
            raw = await pipe.hgetall(self._keys[1])
            gone = [j for j, r in raw.items() if json.loads(r)["expires_at"] <= now]
            if gone:
                pipe.multi()
                pipe.hdel(self._keys[1], *gone)
            return len(gone)

        return await self._change(step)

    def watch(self, callback: Callable[[FlagEvent], None]) -> Unsubscribe:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None


# ----------------------------------------------------------------------------- chain heads


class RedisChainHeadStore:
    def __init__(self, redis: _Redis) -> None:
        self._x = redis

    async def head(self, instance: str) -> ChainHead | None:
        h = await self._x.call(lambda: self._x.r.hgetall(self._x.key("chain", instance)))
        return _head(h)

    async def put_head(self, instance: str, head: ChainHead, *, expect_seq: int | None) -> bool:
        name = self._x.key("chain", instance)

        async def step(pipe: Any) -> bool:
            current = _head(await pipe.hgetall(name))
            if (current.seq if current else None) != expect_seq:
                return False
            pipe.multi()
            pipe.hset(name, mapping={
                "seq": str(head.seq), "hash": head.hash,
                "checkpoint_size": str(head.checkpoint_size),
                "checkpoint_root": head.checkpoint_root,
                "checkpoint_at": repr(head.checkpoint_at) if head.checkpoint_at is not None
                else "",
            })
            return True

        return await self._x.transact([name], step)


def _head(h: Mapping[str, str]) -> ChainHead | None:
    if not h:
        return None
    return ChainHead(int(h["seq"]), h["hash"], int(h["checkpoint_size"]), h["checkpoint_root"],
                     float(h["checkpoint_at"]) if h["checkpoint_at"] else None)


# ----------------------------------------------------------------------------- the whole


class RedisStores:
    """Every store on one Redis; ``open()`` checks the server and loads the flags before
    it returns, then keeps polling, listening to the doorbell and syncing rate buckets."""

    def __init__(self, url: str, *, clock: Clock | None = None, poll_s: float = 0.25) -> None:
        self._x = _Redis(url)
        wall: Clock = clock or time.time
        self.approvals = RedisApprovalStore(self._x, wall)
        self.counters = RedisCounterStore(self._x, clock)
        self.flags = RedisFlagStore(self._x, wall)
        self.chain = RedisChainHeadStore(self._x)
        self._poll_s = poll_s
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._down = False
        self._closing = False

    @property
    def location(self) -> str:
        return self._x.where

    async def open(self) -> RedisStores:
        await self._x.call(self._x.r.ping)
        self.approvals.last_rev = int(
            await self._x.call(lambda: self._x.r.get(self._x.key("rev"))) or 0)
        await self.flags.snapshot()
        if self._poll_s > 0:
            self._tasks = [asyncio.create_task(self._poll_forever()),
                           asyncio.create_task(self._listen_forever()),
                           asyncio.create_task(self._sync_forever())]
        return self

    async def poll(self) -> None:
        await self.flags.snapshot()
        await self.approvals.poll()

    async def _poll_forever(self) -> None:
        # Loops test ``_closing`` too: wait_for in Python 3.11 may swallow a cancel that
        # lands as the wake-up arrives.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            try:
                await self.poll()
                if self._down:
                    self._down = False
                    log.warning("state %s reachable again", self.location)
            except StateError as exc:  # keep the last known state; say so once, retry
                if not self._down:
                    self._down = True
                    log.error("state unreachable, keeping the last known flags: %s", exc)

    async def _listen_forever(self) -> None:
        """The doorbell: a message wakes the poller at once. Lost messages only delay."""
        from redis.exceptions import RedisError

        backoff = 0.1
        while not self._closing:
            pubsub = self._x.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._x.key("doorbell"))
                backoff = 0.1
                self._wake.set()  # (re)connected: re-read everything
                while not self._closing:
                    if await pubsub.get_message(timeout=0.5) is not None:
                        self._wake.set()
            except (RedisError, OSError) as exc:
                log.debug("doorbell lost (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _sync_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(SYNC_S)
            try:
                await self.counters.sync()
            except StateError as exc:  # local buckets keep deciding meanwhile
                log.debug("rate buckets not synced: %s", exc)

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a connection stuck in a dead socket must not hold the guard's exit.
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        try:
            await asyncio.wait_for(self._x.r.aclose(), 2.0)
        except Exception as exc:  # closing a dead connection: nothing left to do
            log.debug("closing redis: %s", exc)
