"""The approval service: held actions become durable requests that humans decide.

Implements the contract the admin API, CLI, console and webhooks build on (``ApprovalService``,
``ApprovalError``; see /work/notes/CONTRACTS.md in the session and the README). What it does:

- ``hold``: a held action becomes a request in the store (``state.ApprovalStore``), bound to
  its exact bytes (``request.Binding``), with the chain the policy gives it, and a timer;
- ``approve`` / ``deny`` / ``cancel``: a transition of the pure state machine, written with a
  compare-and-set on the status (of two approvals of one request exactly one wins);
- timers on the loop escalate and expire requests; at start, requests are reloaded, missed
  deadlines are applied (and say the guard was not running), timers resume;
- an approved request is carried out at most once by the guard itself: re-checked first
  (void if its digest, the policy version or the devices it reaches changed, or it expired),
  moved to ``executing`` in the store, then published on the executor connection (one
  publish, or a staged rollout when its tool has one);
- every transition is an audit record (who, when, why), a view to ``subscribe``rs (the
  admin lane's console and webhooks) and a notice to the agent on
  ``$guard/approvals/<id>``.

Several guards on one store (issue 11): each service watches the store, so a request held
on guard A shows on B's console, B's timers run for it, and a decision taken through B
reaches the agent's sessions on A (the guard that made a transition audits it; the others
only show it). Carrying out is guarded by a claim with a lease (``lease.Lease``): every guard
that sees an approved request tries to claim it, one wins; a guard that dies mid-rollout
stops renewing and another resumes from the stored per-device states. The store
unreachable: nothing can be decided or carried out (``ApprovalError`` 503), a hold that
cannot be stored is refused and the agent is told (``refuse_hold``).

Nothing here runs on the per-packet path: ``hold`` is scheduled by the server addon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol

from iot_guard.audit import AuditError, utc_iso
from iot_guard.mqtt import topic_matches
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Verdict
from iot_guard.state import (
    AlreadyExists,
    ApprovalStore,
    DeviceState,
    FlagView,
    Record,
    StateError,
    rollout_counts,
)

from . import facts
from .chains import approver_levels, chain_for
from .executor import ExecutorClient, ExecutorError
from .lease import LEASE_S, Lease
from .request import (
    FINAL,
    OPEN,
    ApprovalError,
    ApprovalRequest,
    Binding,
    Status,
)
from .rollout import ABORTED, DONE, RolloutSpec, RolloutState, result_status
from .runner import RolloutRunner

__all__ = ["ApprovalError", "ApprovalService", "HeldLike"]

log = logging.getLogger("iot_guard.approvals")

NOTICE_PREFIX = "$guard/approvals/"
# Finished requests an agent still gets on subscribe (it may have missed the last notice).
RECENT_S = 3600.0
RECENT_LIMIT = 200
RESTART_NOTE = "the guard was not running at the deadline"
LIVE = (Status.PENDING, Status.ESCALATED, Status.APPROVED, Status.EXECUTING)


class DecisionLike(Protocol):
    verdict: Any
    reason: str
    rule: str | None
    risk: str | None
    resource: str | None
    tool: str | None


class HeldLike(Protocol):
    """``session.commands.HeldAction`` (the session/hold seam), as far as approvals read it."""

    hold_id: str
    agent_id: str
    session_id: str
    token_id: str | None
    tool: str | None
    topic: str
    qos: int
    retain: bool
    payload: bytes
    decision: DecisionLike
    created_at: float


Audit = Callable[[dict[str, Any]], None]
Notify = Callable[[str, str, bytes], None]
HoldResolved = Callable[[str, str, str, str], None]  # session, hold id, outcome, detail


class ApprovalService:
    def __init__(
        self,
        store: ApprovalStore | None = None,
        policy: Callable[[], CompiledPolicy] | None = None,
        *,
        executor: ExecutorClient | None = None,
        audit: Audit | None = None,
        notify: Notify | None = None,
        hold_resolved: HoldResolved | None = None,
        flags: FlagView | None = None,
        clock: Callable[[], float] = time.time,
        instance: str = "guard",
        lease_s: float = LEASE_S,
    ) -> None:
        self._flags = flags
        # Who claims requests to carry them out (unique per running guard) and for how long.
        self.instance = instance
        self.lease_s = lease_s
        self._ours: set[str] = set()  # requests this guard is carrying out (claimed)
        self._seen: dict[str, int] = {}  # history entries already announced, per request
        self._unwatch: Callable[[], None] | None = None
        self._reading_progress: set[str] = set()
        self._candidates: set[str] = set()  # approved/executing requests (see _follow)
        self._store = store
        self._policy_of = policy
        self.executor = executor
        self._audit = audit
        self._notify = notify
        self._hold_resolved = hold_resolved
        self._clock = clock
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runners: dict[str, RolloutRunner] = {}
        self._live: dict[str, ApprovalRequest] = {}  # executing requests, with live progress
        self._result_filters: set[str] = set()
        self._stopping = False
        if executor is not None:
            executor.on_message = self._on_executor_message

    def bind(
        self,
        store: ApprovalStore,
        policy: Callable[[], CompiledPolicy],
        *,
        executor: ExecutorClient | None,
        audit: Audit | None,
        notify: Notify | None,
        hold_resolved: HoldResolved | None,
        flags: FlagView | None = None,
        instance: str | None = None,
    ) -> None:
        """Give a service made early (the admin API subscribes at its construction) the
        guard's parts once the server exists (the addon's ``start``)."""
        self._store, self._policy_of, self.executor = store, policy, executor
        self._audit, self._notify, self._hold_resolved = audit, notify, hold_resolved
        self._flags = flags
        if instance is not None:
            self.instance = instance
        if executor is not None:
            executor.on_message = self._on_executor_message

    @property
    def store(self) -> ApprovalStore:
        if self._store is None:
            raise ApprovalError(503, "the approvals service is not started")
        return self._store

    def _policy(self) -> CompiledPolicy:
        if self._policy_of is None:
            raise ApprovalError(503, "the approvals service is not started")
        return self._policy_of()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload requests: apply deadlines missed while down, resume timers, settle the rest."""
        now = self._clock()
        self._stopping = False
        # Changes made by other guards sharing the store (and our own, already announced).
        self._unwatch = self.store.watch(self._on_record)
        records = await self.store.list([s.value for s in LIVE])
        for record in reversed(records):  # oldest first
            request = ApprovalRequest.from_record(record.body)
            self._seen[request.id] = len(request.history)
            self._follow(record)
            if request.status in OPEN:
                await self._persist_if_moved(request, lambda r: r.tick(now, note=RESTART_NOTE))
            else:
                self._take_over(record)
        self._spawn(self._scan_forever())

    async def stop(self) -> None:
        self._stopping = True
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # A rollout is not aborted by a restart: it stops sending and resumes from the
        # store at the next start (queued devices still go, none is sent twice).
        pending: list[asyncio.Task[Any]] = []
        for runner in list(self._runners.values()):
            pending += runner.halt()
        for task in list(self._tasks):
            task.cancel()
        pending += self._tasks
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    # -- the contract -------------------------------------------------------------------------

    async def list(self, status: str | None = None) -> list[dict[str, Any]]:
        """Request views, newest first; ``status`` filters (an unknown status is a 400)."""
        if status is not None and status not in {s.value for s in Status}:
            raise ApprovalError(400, f"unknown status {status!r}")
        with unavailable_is_503():
            records = await self.store.list([status] if status else None)
            return [await self._full_view(r) for r in records]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        with unavailable_is_503():
            record = await self.store.get(request_id)
            return await self._full_view(record) if record is not None else None

    async def _full_view(self, record: Record) -> dict[str, Any]:
        """The view, with the live progress of a rollout another guard is carrying out
        (its runner is there; here the store's per-device states are)."""
        if record.status != Status.EXECUTING.value or record.id in self._live:
            return self._view(record)
        request = ApprovalRequest.from_record(record.body)
        await self._stored_progress(request)
        return request.view()

    async def _stored_progress(self, request: ApprovalRequest) -> None:
        devices = await self.store.rollout(request.id)
        if devices is None:
            return
        tool = self._policy().document.tools.get(request.binding.tool)
        spec = RolloutSpec.from_model(tool.rollout) if tool and tool.rollout else None
        request.rollout = {
            "status": "running", "reason": None, "counts": rollout_counts(devices),
            "devices": [{"device": d.device, "status": d.status, "at": d.at,
                         "detail": d.detail} for d in devices],
            "settings": spec.to_record() if spec else None,
        }

    async def _show_remote_progress(self, request_id: str) -> None:
        """A device of a rollout run by another guard moved: show it here too (console,
        events, the agent's sessions on this guard). One read at a time per request."""
        if request_id in self._reading_progress:
            return
        self._reading_progress.add(request_id)
        try:
            record = await self.store.get(request_id)
            if record is None or record.status != Status.EXECUTING.value \
                    or request_id in self._live:
                return
            request = ApprovalRequest.from_record(record.body)
            await self._stored_progress(request)
            if request.rollout is not None:
                self._publish_view(request)
        except StateError as exc:
            log.debug("approval %s: progress not read: %s", request_id, exc)
        finally:
            self._reading_progress.discard(request_id)

    async def rollout(self, request_id: str) -> dict[str, Any] | None:
        view = await self.get(request_id)
        if view is None:
            raise ApprovalError(404, f"no approval request {request_id}")
        rollout: dict[str, Any] | None = view["rollout"]
        return rollout

    async def approve(
        self, request_id: str, approver: str, reason: str | None = None
    ) -> dict[str, Any]:
        self._check_approver(approver)
        now = self._clock()
        with unavailable_is_503():
            request = await self._transition(
                request_id, lambda r: r.approve(approver, reason, now))
        if request.status is Status.APPROVED:
            self._spawn(self._execute(request_id))
        return request.view()

    async def deny(self, request_id: str, approver: str, reason: str) -> dict[str, Any]:
        self._check_approver(approver)
        now = self._clock()
        with unavailable_is_503():
            request = await self._transition(request_id, lambda r: r.deny(approver, reason, now))
        return request.view()

    async def cancel(self, request_id: str, by: str, reason: str) -> dict[str, Any]:
        document = self._policy().document
        if by not in document.approvals.approvers and by not in document.approvals.admins:
            raise ApprovalError(403, f"{by} is not an approver or admin in the policy")
        now = self._clock()
        with unavailable_is_503():
            request = await self._transition(request_id, lambda r: r.cancel(by, reason, now))
        return request.view()

    async def stop_agent(self, agent_id: str | None, by: str, reason: str) -> int:
        """The kill switch (issue 8 §4): cancel the open and approved requests of
        ``agent_id`` (None: every agent's) and abort its rollouts in progress; returns how
        many requests it stopped. ``by`` is the admin who pulled the switch."""
        stopped = 0
        for view in await self.list():
            if agent_id is not None and view.get("agent_id") != agent_id:
                continue
            status = view.get("status")
            if status in (Status.PENDING, Status.ESCALATED, Status.APPROVED):
                now = self._clock()
                try:
                    await self._transition(
                        view["id"], lambda r, at=now: r.cancel(by, reason, at)  # type: ignore[misc]
                    )
                    stopped += 1
                except ApprovalError as exc:  # decided meanwhile: nothing left to stop
                    log.info("approval %s not cancelled by the kill switch: %s", view["id"],
                             exc.message)
            elif status == Status.EXECUTING and view["id"] in self._runners:
                self._runners[view["id"]].stop(f"kill switch: {reason}")
                stopped += 1
        return stopped

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """``callback(view)`` on every transition and rollout progress; returns unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def approver_levels(self, approver: str) -> set[int]:
        return approver_levels(self._policy().document.approvals, approver)

    def is_admin(self, who: str) -> bool:
        return who in self._policy().document.approvals.admins

    # -- holds -----------------------------------------------------------------------------------

    async def hold(self, held: HeldLike) -> dict[str, Any]:
        """Park a held action as a request (the addon schedules this; never on the packet path)."""
        policy = self._policy()
        document = policy.document
        decision = held.decision
        tool = held.tool or decision.tool or ""
        risk = decision.risk or "high"
        spec = document.tools.get(tool)
        chain = chain_for(
            document.approvals, spec.conditions.approval_chain if spec else None, risk
        )
        devices = facts.devices_reached(policy, held.agent_id, held.topic)
        binding = Binding(
            agent_id=held.agent_id,
            session_id=held.session_id,
            token_id=held.token_id,
            tool=tool,
            topic=held.topic,
            qos=held.qos,
            retain=held.retain,
            payload=bytes(held.payload),
            devices=devices,
            policy_version=facts.policy_version(policy),
            created_at=held.created_at,
            expires_at=held.created_at + chain.total_s,
        )
        request = ApprovalRequest.open(
            held.hold_id,
            binding,
            chain,
            reason=decision.reason,
            risk=risk,
            rule=decision.rule,
            changes=facts.changes(document, tool, devices, binding.payload),
            now=self._clock(),
        )
        await self.store.create(request.id, request.status.value, request.to_record())
        self._announce(request, 0)
        return request.view()

    def refuse_hold(self, held: HeldLike, why: str) -> None:
        """A held action that could not be parked (the store is unreachable): fail closed.
        Nothing is sent; the agent learns it on ``$guard/approvals/<id>`` (status
        ``failed``) and as the hold's outcome, and the audit log says why."""
        now = self._clock()
        detail = f"not parked for approval: {why}; nothing was sent, ask again later"
        digest = _sha256(bytes(held.payload))
        self._write_audit({
            "timestamp": utc_iso(now), "event": "approval", "approval_id": held.hold_id,
            "action": "failed", "who": "guard", "reason": detail, "status": "failed",
            "level": None, "agent_id": held.agent_id, "session_id": held.session_id,
            "token_id": held.token_id, "tool_name": held.tool or held.decision.tool,
            "requested_scope": held.topic, "risk": held.decision.risk,
            "payload_sha256": digest, "alert": True,
        })
        self._send_notice(held.agent_id, held.hold_id, {
            "id": held.hold_id, "status": "failed", "tool": held.tool,
            "topic": held.topic, "payload_sha256": digest,
            "reason": held.decision.reason, "outcome": detail,
            "last": {"at": now, "action": "failed", "reason": detail},
            "rollout": None, "timestamp": utc_iso(time.time()),
        })
        if self._hold_resolved is not None:
            self._hold_resolved(held.session_id, held.hold_id, "failed", detail)

    # -- transitions ---------------------------------------------------------------------------

    def _check_approver(self, approver: str) -> None:
        document = self._policy().document
        if approver in document.agents:
            raise ApprovalError(403, f"{approver} is an agent; an agent never approves")
        if approver not in document.approvals.approvers:
            raise ApprovalError(403, f"{approver} is not an approver in the policy")

    async def _transition(
        self, request_id: str, op: Callable[[ApprovalRequest], object],
        owner: str | None = None,
    ) -> ApprovalRequest:
        """Load, apply ``op`` (pure), compare-and-set in the store, then announce.

        A deadline ``op`` applied before refusing (e.g. an approval after the level timed
        out) is still written and announced, then the refusal is raised.
        """
        async with self._locks[request_id]:
            record = await self.store.get(request_id)
            if record is None:
                raise ApprovalError(404, f"no approval request {request_id}")
            request = ApprovalRequest.from_record(record.body)
            before, seen = request.status, len(request.history)
            refusal: ApprovalError | None = None
            try:
                op(request)
            except ApprovalError as exc:
                refusal = exc
            if len(request.history) != seen:
                written = await self.store.update(
                    request_id,
                    before.value,
                    status=request.status.value,
                    changes=request.to_record(),
                    owner=owner,  # fenced: only while this guard's claim is live
                )
                if written is None:
                    raise ApprovalError(
                        409, f"request {request_id} changed meanwhile; reload and try again"
                    )
                self._announce(request, seen)
        if refusal is not None:
            raise refusal
        return request

    async def _persist_if_moved(
        self, request: ApprovalRequest, op: Callable[[ApprovalRequest], object]
    ) -> None:
        try:
            current = await self._transition(request.id, op)
        except ApprovalError as exc:
            log.warning("approval %s: %s", request.id, exc.message)
        else:
            self._arm_for(current)  # the timer resumes where it was

    def _announce(self, request: ApprovalRequest, seen: int, *, audit: bool = True) -> None:
        """Audit each new history entry (``audit``: this guard made the transition), tell
        subscribers and the agent, set the timer."""
        self._seen[request.id] = max(self._seen.get(request.id, 0), len(request.history))
        if audit:
            for entry in request.history[seen:]:
                self._write_audit(self._transition_record(request, entry))
        self._publish_view(request)
        self._arm_for(request)
        if request.status in FINAL and self._hold_resolved is not None:
            try:
                self._hold_resolved(
                request.binding.session_id, request.id, request.status.value,
                request.outcome or "",
            )
            except Exception:
                log.exception("hold_resolved failed for %s", request.id)

    def _publish_view(self, request: ApprovalRequest) -> None:
        view = request.view()
        for callback in list(self._subscribers):
            try:
                callback(view)
            except Exception:  # one bad subscriber must not stop the others
                log.exception("approval subscriber failed")
        self._tell_agent(request)

    def _tell_agent(self, request: ApprovalRequest) -> None:
        self._send_notice(request.binding.agent_id, request.id, agent_view(request))

    def _send_notice(self, agent_id: str, request_id: str, notice: dict[str, Any]) -> None:
        """``notice`` to the agent's sessions on ``$guard/approvals/<id>`` (compact JSON)."""
        if self._notify is None:
            return
        payload = json.dumps(notice, separators=(",", ":")).encode()
        try:
            self._notify(agent_id, NOTICE_PREFIX + request_id, payload)
        except Exception:
            log.exception("approval notice to %s failed", agent_id)

    def on_guard_subscribe(self, agent_id: str, session_id: str, topic_filter: str) -> None:
        """An agent subscribed to ``$guard/approvals/...``: send the state of its requests."""
        if not topic_filter.startswith("$guard/"):
            return
        self._spawn(self._replay(agent_id, topic_filter))

    async def _replay(self, agent_id: str, topic_filter: str) -> None:
        now = self._clock()
        # Open requests, and the most recent finished ones (bounded: a subscribe never
        # reads the whole history).
        records = await self.store.list([s.value for s in LIVE])
        records += await self.store.list([s.value for s in FINAL], limit=RECENT_LIMIT)
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        for record in reversed(records):
            request = self._live.get(record.id) or ApprovalRequest.from_record(record.body)
            if request.binding.agent_id != agent_id:
                continue
            if request.is_final and now - record.updated_at > RECENT_S:
                continue
            if topic_matches(topic_filter, NOTICE_PREFIX + request.id):
                self._tell_agent(request)

    # -- timers ----------------------------------------------------------------------------------

    def _arm_for(self, request: ApprovalRequest) -> None:
        timer = self._timers.pop(request.id, None)
        if timer is not None:
            timer.cancel()
        deadline = request.next_deadline()
        if deadline is None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self._clock())
        self._timers[request.id] = loop.call_later(delay, self._deadline, request.id)

    def _deadline(self, request_id: str) -> None:
        self._timers.pop(request_id, None)
        now = self._clock()
        self._spawn(self._tick(request_id, now))

    async def _tick(self, request_id: str, now: float) -> None:
        try:
            request = await self._transition(request_id, lambda r: r.tick(max(now, self._clock())))
        except ApprovalError as exc:
            # 409: another guard sharing the store applied the deadline first.
            level = logging.DEBUG if exc.status == 409 else logging.WARNING
            log.log(level, "approval %s deadline: %s", request_id, exc.message)
            return
        except StateError as exc:  # applied by whichever guard reaches the store first
            log.warning("approval %s deadline not applied yet: %s", request_id, exc)
            self._retry_deadline(request_id)
            return
        if request.is_open and request.id not in self._timers:
            self._arm_for(request)

    def _retry_deadline(self, request_id: str) -> None:
        if not self._stopping and request_id not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[request_id] = loop.call_later(
                min(self.lease_s, 5.0), self._deadline, request_id)

    # -- other guards sharing the store --------------------------------------------------------

    def _on_record(self, record: Record) -> None:
        """The store's doorbell (called inside a store operation for our own writes: act on
        it from the loop, after the operation's caller has announced what it did)."""
        asyncio.get_running_loop().call_soon(self._on_record_later, record)

    def _on_record_later(self, record: Record) -> None:
        if self._stopping:
            return
        try:
            request = ApprovalRequest.from_record(record.body)
        except (KeyError, TypeError, ValueError):
            log.error("approval %s: stored body unreadable; ignored", record.id)
            return
        self._follow(record)
        seen = self._seen.get(record.id, 0)
        if len(request.history) > seen and record.id not in self._live:
            # A transition made by another guard: show it, tell the agent's sessions here,
            # follow its deadlines; its maker wrote the audit record.
            self._announce(request, seen, audit=False)
        elif record.status == Status.EXECUTING.value and record.id not in self._live:
            self._spawn(self._show_remote_progress(record.id))
        self._take_over(record)

    def _take_over(self, record: Record) -> None:
        """Carry out an approved request nobody has claimed, or resume an executing one
        whose guard stopped renewing its lease. Every guard may try; the claim decides."""
        if self._stopping or record.id in self._ours:
            return
        if record.status not in (Status.APPROVED.value, Status.EXECUTING.value):
            return
        if record.owner is not None and record.lease_until is not None \
                and record.lease_until > self._clock():
            return  # a live claim: its holder carries it out
        if record.status == Status.APPROVED.value:
            self._spawn(self._execute(record.id))
        else:
            self._spawn(self._resume(ApprovalRequest.from_record(record.body)))

    def _follow(self, record: Record) -> None:
        """Keep the ids of approved and executing requests (from the start's list and the
        store's watch, which misses no change): what the scan has to look at."""
        if record.status in (Status.APPROVED.value, Status.EXECUTING.value):
            self._candidates.add(record.id)
        else:
            self._candidates.discard(record.id)

    async def _scan_forever(self) -> None:
        """A lease that runs out changes nothing in the store (no doorbell): every half
        lease, re-read the approved and executing requests and take over those without a
        live claim. Only those are read, never the whole history of requests."""
        while not self._stopping:
            await asyncio.sleep(self.lease_s / 2)
            for request_id in list(self._candidates):
                try:
                    record = await self.store.get(request_id)
                except StateError as exc:
                    log.debug("approvals scan: %s", exc)
                    break
                if record is None:
                    self._candidates.discard(request_id)
                    continue
                self._follow(record)
                self._take_over(record)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # -- execution -------------------------------------------------------------------------------

    def _void_reason(
        self, request: ApprovalRequest, policy: CompiledPolicy, now: float, expiry: bool = True
    ) -> str:
        b = request.binding
        if not request.bound_digest_ok():
            return "the stored request no longer matches the digest the approvers saw"
        if expiry and now >= b.expires_at:
            return f"expired before execution (at {utc_iso(b.expires_at)})"
        if self._flags is not None:
            # The brakes win over an approval: a stopped agent's or a void token's request
            # is not carried out.
            killed = self._flags.is_killed(b.agent_id)
            if killed is not None:
                return killed
            void = self._flags.token_void(b.agent_id, b.token_id, None)
            if void is not None:
                return f"the token that asked for it is void ({void})"
        agent = policy.for_agent(b.agent_id)
        if agent is None:
            return f"agent {b.agent_id} is no longer in the policy"
        decision = agent.decide_publish(b.topic, b.payload, b.qos, b.retain)
        if decision.verdict is Verdict.DENY:
            return f"the policy in force now denies it: {decision.reason}"
        devices = facts.devices_reached(policy, b.agent_id, b.topic)
        if devices != b.devices:
            return (
                f"the devices it reaches changed since it was held (was {len(b.devices)}: "
                f"{', '.join(b.devices)}; now {len(devices)}: {', '.join(devices)})"
            )
        version = facts.policy_version(policy)
        if version != b.policy_version:
            return (
                f"the policy changed since it was held (version {b.policy_version[:19]} -> "
                f"{version[:19]})"
            )
        return ""

    async def _execute(self, request_id: str) -> None:
        if request_id in self._ours:
            return  # already carried out here (a doorbell may ring twice)
        self._ours.add(request_id)
        try:
            lease = self._lease(request_id)
            if await lease.acquire(Status.APPROVED.value) is None:
                return  # another guard claimed it first: it carries it out
            try:
                await self._begin_and_carry(request_id, lease)
            finally:
                await lease.release()
        except StateError as exc:
            # Nothing was sent on the strength of a write that failed; the request stays
            # approved (or executing) and is picked up when the state is back.
            log.error("approval %s not carried out now: %s", request_id, exc)
        finally:
            self._ours.discard(request_id)

    async def _begin_and_carry(self, request_id: str, lease: Lease) -> None:
        policy = self._policy()
        now = self._clock()
        began: list[bool] = []

        def begin(r: ApprovalRequest) -> None:
            if r.status is not Status.APPROVED:
                return
            why = self._void_reason(r, policy, now)
            if why:
                r.void(why + "; nothing was sent", now)
            else:
                r.start_execution(now)
                began.append(True)

        try:
            request = await self._transition(request_id, begin, owner=self.instance)
        except ApprovalError as exc:
            log.warning("approval %s not carried out: %s", request_id, exc.message)
            return
        if not began:
            return
        await self._carry_and_finish(request, lease, self._carry_out(request, policy))

    async def _resume(self, request: ApprovalRequest) -> None:
        """A request a guard was carrying out when it stopped (this one, restarted, or
        another one sharing the store whose lease ran out).

        At most once: a single publish whose outcome is unknown is not sent again (failed);
        a rollout resumes from the store: queued devices are still sent (they never were),
        devices in progress get their result or time out, none is sent twice. A policy that
        changed meanwhile (or a brake) stops it: the queued devices are cancelled.
        """
        if request.id in self._ours:
            return
        self._ours.add(request.id)
        try:
            lease = self._lease(request.id)
            if await lease.acquire(Status.EXECUTING.value) is None:
                return  # its guard is alive, or another one resumed it first
            try:
                await self._resume_claimed(request.id, lease)
            finally:
                await lease.release()
        except StateError as exc:
            log.error("approval %s not resumed now: %s", request.id, exc)
        finally:
            self._ours.discard(request.id)

    async def _resume_claimed(self, request_id: str, lease: Lease) -> None:
        record = await self.store.get(request_id)  # the state as of our claim
        if record is None or record.status != Status.EXECUTING.value:
            return
        request = ApprovalRequest.from_record(record.body)
        log.warning("approval %s: this guard (%s) resumes the rollout from the stored device "
                    "states", request_id, self.instance)
        policy = self._policy()
        now = self._clock()
        tool = policy.document.tools.get(request.binding.tool)
        devices = await self.store.rollout(request.id)
        if tool is None or tool.rollout is None or devices is None or self.executor is None:
            await self.store.rollout_cancel(request.id, "the guard stopped; not sent again")
            lease.stop_renewing()
            try:
                await self._transition(request.id, lambda r: r.finish(
                    Status.FAILED,
                    "the guard stopped while carrying it out; nothing is sent again (at most "
                    "once)",
                    now,
                ), owner=self.instance)
            except ApprovalError as exc:
                log.warning("approval %s: %s", request.id, exc.message)
            return
        why = self._void_reason(request, policy, now, expiry=False)
        spec = RolloutSpec.from_model(tool.rollout)
        await self._carry_and_finish(
            request, lease, self._run_rollout(request, spec, resume=devices, stop_reason=why)
        )

    def _lease(self, request_id: str) -> Lease:
        task = asyncio.current_task()

        def lost(why: str) -> None:
            # Stop sending at once: another guard may be carrying it out now.
            runner = self._runners.get(request_id)
            if runner is not None:
                runner.halt()
            if task is not None:
                task.cancel()

        return Lease(self.store, request_id, self.instance, self.lease_s, lost)

    async def _carry_and_finish(
        self, request: ApprovalRequest, lease: Lease,
        work: Coroutine[Any, Any, tuple[Status, str]],
    ) -> None:
        request_id = request.id
        self._live[request_id] = request
        lease.keep([Status.EXECUTING.value])
        try:
            status, why = await work
        except StateError:
            # The store went away mid-way: stop here; the request stays executing and is
            # resumed from the stored per-device states once the state is back (by this
            # guard or another, after the lease).
            log.error("approval %s: the shared state is unreachable; the rollout pauses and "
                      "resumes from the store", request_id)
            raise
        except Exception as exc:  # anything unexpected ends the request, loudly
            log.exception("approval %s failed while carrying it out", request_id)
            status, why = Status.FAILED, f"internal error while carrying it out: {exc}"
        finally:
            self._live.pop(request_id, None)
            runner = self._runners.pop(request_id, None)
            if runner is not None:
                runner.halt()
        final_rollout = request.rollout
        done_at = self._clock()

        def finish(r: ApprovalRequest) -> None:
            r.rollout = final_rollout
            r.finish(status, why, done_at)

        lease.stop_renewing()
        try:
            await self._transition(request_id, finish, owner=self.instance)
        except ApprovalError as exc:  # our lease ran out and another guard took it over
            log.warning("approval %s: outcome not written: %s", request_id, exc.message)

    async def _carry_out(
        self, request: ApprovalRequest, policy: CompiledPolicy
    ) -> tuple[Status, str]:
        b = request.binding
        if self.executor is None:
            return Status.FAILED, "no executor connection is configured; nothing was sent"
        tool = policy.document.tools.get(b.tool)
        rollout = tool.rollout if tool is not None else None
        if rollout is not None and b.devices:
            return await self._run_rollout(request, RolloutSpec.from_model(rollout))
        try:
            await self._send(request, b.devices[0] if len(b.devices) == 1 else None, b.topic,
                             b.payload)
        except (ExecutorError, AuditError) as exc:
            return Status.FAILED, f"not carried out: {exc}"
        return Status.DONE, f"published to {b.topic} on behalf of {b.agent_id}"

    async def _send(
        self, request: ApprovalRequest, device: str | None, topic: str, payload: bytes
    ) -> None:
        """Audit (fail closed: no record, no publish), then publish once on the executor."""
        assert self.executor is not None
        b = request.binding
        record = {
            "timestamp": utc_iso(self._clock()),
            "event": "approval_execute",
            "agent_id": b.agent_id,
            "session_id": b.session_id,
            "client_id": self.executor.client_id,
            "token_id": b.token_id,
            "packet": "PUBLISH",
            "tool_name": b.tool,
            "action_type": "write",
            "requested_scope": b.topic,
            "granted_scope": topic,
            "resource_id": device,
            "result_status": "success",
            "decision": "execute",
            "reason": f"approved request {request.id} carried out by the guard on behalf of "
            f"{b.agent_id}",
            "approval_id": request.id,
            "qos": min(b.qos, 1),
            "retain": b.retain,
            "payload_bytes": len(payload),
            "payload_sha256": _sha256(payload),
        }
        if self._audit is not None:
            self._audit(record)  # AuditError propagates: nothing is published
        await self.executor.publish(topic, payload, qos=min(b.qos, 1) or 1, retain=b.retain)

    async def _run_rollout(
        self,
        request: ApprovalRequest,
        spec: RolloutSpec,
        resume: Sequence[DeviceState] | None = None,
        stop_reason: str = "",
    ) -> tuple[Status, str]:
        assert self.executor is not None
        result_filter = spec.result_filter()
        if result_filter not in self._result_filters:
            self._result_filters.add(result_filter)
            await self.executor.subscribe(result_filter, qos=1)

        async def publish(device: str, topic: str, payload: bytes) -> None:
            try:
                await self._send(request, device, topic, payload)
            except AuditError as exc:
                raise ExecutorError(str(exc)) from exc

        def progress(state: RolloutState) -> None:
            request.rollout = state.view()
            self._publish_view(request)

        runner = RolloutRunner(
            request.id,
            spec,
            list(request.binding.devices),
            request.binding.payload,
            store=self.store,
            publish=publish,
            clock=self._clock,
            on_progress=progress,
            resume=resume,
        )
        self._runners[request.id] = runner
        if stop_reason:
            runner.stop(f"{stop_reason} (found when the guard restarted)")
        state = await runner.run()
        request.rollout = state.view()
        counts = state.counts()
        if state.status == DONE:
            return Status.DONE, f"rolled out to {counts['succeeded']} devices"
        if state.status == ABORTED:
            return Status.ABORTED, f"rollout aborted: {state.reason}"
        return Status.FAILED, f"rollout failed: {state.reason}"

    def _on_executor_message(self, topic: str, payload: bytes) -> None:
        for runner in list(self._runners.values()):
            for device in runner.state.in_progress():
                if runner.spec.result_topic_for(device) == topic and runner.wants(device, payload):
                    status, detail = result_status(payload)
                    runner.on_result(device, status, detail)
                    return

    # -- views and audit -----------------------------------------------------------------------

    def _view(self, record: Record) -> dict[str, Any]:
        live = self._live.get(record.id)
        request = live if live is not None else ApprovalRequest.from_record(record.body)
        return request.view()

    def _transition_record(
        self, request: ApprovalRequest, entry: dict[str, Any]
    ) -> dict[str, Any]:
        b = request.binding
        return {
            "timestamp": utc_iso(float(entry["at"])),
            "event": "approval",
            "approval_id": request.id,
            "action": entry["action"],
            "who": entry["who"],
            "reason": entry.get("reason"),
            "status": request.status.value,
            "level": entry.get("level", request.level),
            "agent_id": b.agent_id,
            "session_id": b.session_id,
            "token_id": b.token_id,
            "tool_name": b.tool,
            "requested_scope": b.topic,
            "resource_id": ",".join(b.devices),
            "risk": request.risk,
            "digest": request.digest,
            "payload_sha256": b.payload_sha256,
            "alert": bool(entry.get("alert", False)),
        }

    def _write_audit(self, record: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit(record)
        except AuditError as exc:
            # The transition is already durable in the store; say loudly that its record
            # is missing (nothing is forwarded on the strength of this record).
            log.error("audit of approval %s failed: %s", record.get("approval_id"), exc)


def agent_view(request: ApprovalRequest) -> dict[str, Any]:
    """What the requesting agent is told on ``$guard/approvals/<id>`` (no approver names)."""
    last = request.history[-1] if request.history else {}
    rollout = request.rollout
    return {
        "id": request.id,
        "status": request.status.value,
        "level": request.level,
        "level_deadline": request.level_deadline if request.is_open else None,
        "expires_at": request.binding.expires_at,
        "tool": request.binding.tool,
        "topic": request.binding.topic,
        "devices": list(request.binding.devices),
        "payload_sha256": request.binding.payload_sha256,
        "digest": request.digest,
        "reason": request.reason,
        "outcome": request.outcome,
        "last": {"at": last.get("at"), "action": last.get("action"),
                 "reason": last.get("reason")},
        "rollout": (
            {"status": rollout["status"], "reason": rollout.get("reason"),
             "counts": rollout["counts"]}
            if rollout else None
        ),
        "timestamp": utc_iso(time.time()),
    }


@contextlib.contextmanager
def unavailable_is_503() -> Iterator[None]:
    """The store unreachable: nothing is decided; the caller gets a clear 503."""
    try:
        yield
    except AlreadyExists:
        raise
    except StateError as exc:
        raise ApprovalError(
            503, f"the approvals state is unreachable, nothing was decided: {exc}"
        ) from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("approval task failed", exc_info=task.exception())

