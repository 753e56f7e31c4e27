"""An approval request: a held action bound to its exact bytes, and its life as a state machine.

Pure: every method takes ``now`` and does no I/O; the service persists the request after each
transition and sets timers from :meth:`ApprovalRequest.next_deadline`.

Life of a request (every arrow is one history entry: who, when, what, why)::

    pending --(level times out)--> escalated --(last level times out)--> expired
       |  \\--approve (critical: each level in turn)--> approved --> executing --> done
       |                                                   |              \\--> failed | aborted
       \\--deny--> denied      any open state --cancel--> cancelled     \\--> void (policy or
                                                                           group changed, expired)

A timeout never approves. One approver decides at a level; an approver who approved at one
level may not approve again at another; only the approvers of the current level may decide.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .chains import Chain, Level


class Status(StrEnum):
    PENDING = "pending"
    ESCALATED = "escalated"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    EXECUTING = "executing"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    VOID = "void"


OPEN = frozenset({Status.PENDING, Status.ESCALATED})
FINAL = frozenset(
    {
        Status.DENIED,
        Status.EXPIRED,
        Status.CANCELLED,
        Status.DONE,
        Status.FAILED,
        Status.ABORTED,
        Status.VOID,
    }
)

# The one table of allowed transitions; every status change goes through _move.
_NEXT: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {
            Status.PENDING,  # a critical request approved at one level waits for the next
            Status.ESCALATED,
            Status.APPROVED,
            Status.DENIED,
            Status.EXPIRED,
            Status.CANCELLED,
        }
    ),
    Status.ESCALATED: frozenset(
        {
            Status.PENDING,
            Status.ESCALATED,
            Status.APPROVED,
            Status.DENIED,
            Status.EXPIRED,
            Status.CANCELLED,
        }
    ),
    Status.APPROVED: frozenset({Status.EXECUTING, Status.VOID, Status.CANCELLED}),
    Status.EXECUTING: frozenset({Status.DONE, Status.FAILED, Status.ABORTED}),
}

GUARD = "guard"  # the actor of transitions nobody made by hand (timeouts, execution)


class ApprovalError(Exception):
    """A refused operation; ``status`` is the HTTP status the admin API answers with.

    400 bad input, 403 not allowed, 404 unknown request, 409 wrong state.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Binding:
    """Everything an approval is bound to; the digest shown to approvers covers all of it."""

    agent_id: str
    session_id: str
    token_id: str | None
    tool: str
    topic: str
    qos: int
    retain: bool
    payload: bytes
    devices: tuple[str, ...]  # "tenant/device", frozen when the action was held
    policy_version: str
    created_at: float
    expires_at: float

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def digest(self) -> str:
        """SHA-256 over the canonical JSON of every bound field (the payload by its hash)."""
        doc = {
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "token_id": self.token_id,
            "tool": self.tool,
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
            "payload_sha256": self.payload_sha256,
            "devices": list(self.devices),
            "policy_version": self.policy_version,
            "created_at": round(self.created_at, 6),
            "expires_at": round(self.expires_at, 6),
        }
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(slots=True)
class ApprovalRequest:
    id: str
    binding: Binding
    chain: Chain
    reason: str  # why the action was held
    risk: str
    rule: str | None
    changes: list[dict[str, Any]]
    digest: str
    status: Status = Status.PENDING
    stage: int = 0  # index into chain.levels
    level_deadline: float = 0.0
    approvals: list[tuple[int, str]] = field(default_factory=list)  # (level, approver)
    history: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] | None = None
    alert: bool = False
    # Why the request ended where it did (denied/expired/void/failed...), for the agent.
    outcome: str | None = None

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        request_id: str,
        binding: Binding,
        chain: Chain,
        *,
        reason: str,
        risk: str,
        rule: str | None,
        changes: list[dict[str, Any]],
        now: float,
    ) -> ApprovalRequest:
        """A new pending request; ``binding.expires_at`` must be created_at + the chain's total."""
        request = cls(
            id=request_id,
            binding=binding,
            chain=chain,
            reason=reason,
            risk=risk,
            rule=rule,
            changes=changes,
            digest=binding.digest(),
        )
        request.history.append(_entry(now, GUARD, "held", reason))
        if not chain.levels:
            # Fail closed: nobody may approve it, so it is refused at once.
            request._move(
                Status.DENIED, now, GUARD, "denied", "the policy names no approver for it"
            )
            return request
        request._enter_level(0, binding.created_at)
        return request

    # -- reading ------------------------------------------------------------------------

    @property
    def current(self) -> Level:
        return self.chain.levels[self.stage]

    @property
    def level(self) -> int:
        return self.current.number if self.chain.levels else 1

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: no timer needed)."""
        return self.level_deadline if self.status in OPEN else None

    def bound_digest_ok(self) -> bool:
        """The stored binding still hashes to the digest approvers saw."""
        return self.binding.digest() == self.digest

    # -- transitions --------------------------------------------------------------------

    def _move(
        self, to: Status, now: float, who: str, action: str, why: str | None, **extra: Any
    ) -> None:
        allowed = _NEXT.get(self.status, frozenset())
        if to not in allowed:
            raise ApprovalError(
                409, f"request {self.id} is {self.status.value}; it cannot become {to.value}"
            )
        self.status = to
        if to in FINAL and why is not None:
            self.outcome = why
        self.history.append(_entry(now, who, action, why, **extra))

    def _enter_level(self, stage: int, start: float) -> Level:
        """Make ``stage`` the current level; its deadline is its timeout after ``start``,
        never past the binding's expiry."""
        self.stage = stage
        level = self.current
        self.level_deadline = min(start + level.timeout_s, self.binding.expires_at)
        return level

    def _decider(self, approver: str, action: str) -> None:
        """Raise unless ``approver`` may decide at the current level now."""
        if self.status not in OPEN:
            raise ApprovalError(
                409, f"request {self.id} is {self.status.value}; nothing to {action}"
            )
        if approver == self.binding.agent_id:
            raise ApprovalError(403, "the agent that asked for an action never approves it")
        level = self.current
        if approver not in level.approvers:
            raise ApprovalError(
                403,
                f"{approver} may not decide at level {level.number} of request {self.id} "
                f"(approvers there: {', '.join(level.approvers)})",
            )

    def approve(self, approver: str, reason: str | None, now: float) -> None:
        self.tick(now)  # a deadline that passed is honoured before anything else
        self._decider(approver, "approve")
        earlier = [lv for lv, who in self.approvals if who == approver]
        if earlier:
            raise ApprovalError(
                403,
                f"{approver} already approved request {self.id} at level {earlier[0]}; "
                "another approver must decide",
            )
        level = self.current
        self.approvals.append((level.number, approver))
        last = self.stage == len(self.chain.levels) - 1
        if self.chain.every_level and not last:
            nxt = self._enter_level(self.stage + 1, now)
            self._move(
                Status.PENDING,
                now,
                approver,
                "approved",
                reason,
                level=level.number,
                next_level=nxt.number,
            )
            return
        self._move(Status.APPROVED, now, approver, "approved", reason, level=level.number)

    def deny(self, approver: str, reason: str, now: float) -> None:
        if not reason or not reason.strip():
            raise ApprovalError(400, "a denial needs a reason")
        self.tick(now)
        self._decider(approver, "deny")
        self._move(Status.DENIED, now, approver, "denied", reason, level=self.level)

    def cancel(self, by: str, reason: str, now: float) -> None:
        if not reason or not reason.strip():
            raise ApprovalError(400, "a cancellation needs a reason")
        self.tick(now)
        if self.status not in OPEN and self.status is not Status.APPROVED:
            raise ApprovalError(
                409, f"request {self.id} is {self.status.value}; it can no longer be cancelled"
            )
        self._move(Status.CANCELLED, now, by, "cancelled", reason)

    def tick(self, now: float, note: str | None = None) -> bool:
        """Escalate or expire for every deadline at or before ``now``; True if anything moved.

        ``note`` is added to the reason (e.g. the guard was not running at the deadline).
        """
        moved = False
        while self.status in OPEN and now >= self.level_deadline:
            moved = True
            level = self.current
            suffix = f" ({note})" if note else ""
            if self.stage + 1 < len(self.chain.levels) and self.level_deadline < (
                self.binding.expires_at
            ):
                at = self.level_deadline
                nxt = self._enter_level(self.stage + 1, at)
                self._move(
                    Status.ESCALATED,
                    now,
                    GUARD,
                    "escalated",
                    f"no decision at level {level.number} within {level.timeout_s:g} s; "
                    f"escalated to level {nxt.number}{suffix}",
                    level=nxt.number,
                )
            else:
                self.alert = self.chain.alert_on_expiry
                self._move(
                    Status.EXPIRED,
                    now,
                    GUARD,
                    "expired",
                    f"no decision at level {level.number} (the last) within "
                    f"{level.timeout_s:g} s; a timeout never approves{suffix}",
                    level=level.number,
                    alert=self.alert,
                )
        return moved

    def start_execution(self, now: float) -> None:
        self._move(Status.EXECUTING, now, GUARD, "executing", None)

    def void(self, why: str, now: float) -> None:
        self._move(Status.VOID, now, GUARD, "void", why)

    def finish(self, status: Status, why: str | None, now: float) -> None:
        self._move(status, now, GUARD, status.value, why)

    # -- views and records ------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The request as the admin API, the console and the agent see it (JSON-ready)."""
        b = self.binding
        payload, encoding = _payload_text(b.payload)
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "level": self.level,
            "level_deadline": self.level_deadline if self.status in OPEN else None,
            "expires_at": b.expires_at,
            "agent_id": b.agent_id,
            "session_id": b.session_id,
            "token_id": b.token_id,
            "tool": b.tool,
            "topic": b.topic,
            "qos": b.qos,
            "retain": b.retain,
            "payload": payload,
            "payload_sha256": b.payload_sha256,
            "devices": list(b.devices),
            "policy_version": b.policy_version,
            "created_at": b.created_at,
            "digest": self.digest,
            "reason": self.reason,
            "risk": self.risk,
            "rule": self.rule,
            "changes": [dict(c) for c in self.changes],
            "chain": self.chain.name,
            "approvers_at_level": list(self.current.approvers) if self.chain.levels else [],
            "approvals": [{"level": lv, "approver": who} for lv, who in self.approvals],
            "outcome": self.outcome,
            "alert": self.alert,
            "history": [dict(h) for h in self.history],
            "rollout": _copy(self.rollout),
        }
        if encoding:
            out["payload_encoding"] = encoding
        return out

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild the request after a restart (JSON-ready)."""
        b = self.binding
        return {
            "id": self.id,
            "binding": {
                "agent_id": b.agent_id,
                "session_id": b.session_id,
                "token_id": b.token_id,
                "tool": b.tool,
                "topic": b.topic,
                "qos": b.qos,
                "retain": b.retain,
                "payload_b64": base64.b64encode(b.payload).decode(),
                "devices": list(b.devices),
                "policy_version": b.policy_version,
                "created_at": b.created_at,
                "expires_at": b.expires_at,
            },
            "chain": self.chain.to_record(),
            "reason": self.reason,
            "risk": self.risk,
            "rule": self.rule,
            "changes": self.changes,
            "digest": self.digest,
            "status": self.status.value,
            "stage": self.stage,
            "level_deadline": self.level_deadline,
            "approvals": [list(a) for a in self.approvals],
            "history": self.history,
            "rollout": self.rollout,
            "alert": self.alert,
            "outcome": self.outcome,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ApprovalRequest:
        b = record["binding"]
        binding = Binding(
            agent_id=b["agent_id"],
            session_id=b["session_id"],
            token_id=b["token_id"],
            tool=b["tool"],
            topic=b["topic"],
            qos=int(b["qos"]),
            retain=bool(b["retain"]),
            payload=base64.b64decode(b["payload_b64"]),
            devices=tuple(b["devices"]),
            policy_version=b["policy_version"],
            created_at=float(b["created_at"]),
            expires_at=float(b["expires_at"]),
        )
        return cls(
            id=record["id"],
            binding=binding,
            chain=Chain.from_record(record["chain"]),
            reason=record["reason"],
            risk=record["risk"],
            rule=record["rule"],
            changes=list(record["changes"]),
            digest=record["digest"],
            status=Status(record["status"]),
            stage=int(record["stage"]),
            level_deadline=float(record["level_deadline"]),
            approvals=[(int(lv), str(who)) for lv, who in record["approvals"]],
            history=list(record["history"]),
            rollout=record.get("rollout"),
            alert=bool(record.get("alert", False)),
            outcome=record.get("outcome"),
        )

    def copy(self) -> ApprovalRequest:
        return replace(
            self,
            changes=[dict(c) for c in self.changes],
            approvals=list(self.approvals),
            history=[dict(h) for h in self.history],
            rollout=_copy(self.rollout),
        )


def _entry(now: float, who: str, action: str, why: str | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": now, "who": who, "action": action, "reason": why}
    entry.update(extra)
    return entry


def _payload_text(payload: bytes) -> tuple[str, str | None]:
    try:
        return payload.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode(), "base64"


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if value is not None else None
