"""A staged rollout of an approved group push, as a pure state machine (explicit ``now``).

Each device goes ``queued -> in_progress -> succeeded | failed | rejected | timed_out``, or
``queued -> cancelled`` when the rollout aborts. The runner (``runner.py``) paces starts with
asyncio-throttle and feeds results and timeouts in; this module decides what they mean.

Abort criteria follow AWS IoT Jobs' ``abortConfig``: once at least ``min_executed`` devices
reached a final state, abort when the share of them that ended in one of ``failure_types`` is
at least ``failure_pct``. A canary that does not succeed aborts at once: that is what the
canary is for. On abort nothing more is sent and every queued device is cancelled; devices
already in progress keep their own outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from iot_guard.policy_models import Rollout as RolloutModel

QUEUED = "queued"
IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
DEVICE_STATUSES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELLED)
EXECUTED = frozenset({SUCCEEDED, FAILED, REJECTED, TIMED_OUT})  # reached the device, ended
ENDED = EXECUTED | {CANCELLED}

RUNNING, DONE, FAILED_ROLLOUT, ABORTED = "running", "done", "failed", "aborted"


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    device_topic: str
    result_topic: str
    max_per_minute: float
    canary: int
    bake_s: float
    device_timeout_s: float
    failure_pct: float | None
    min_executed: int
    failure_types: frozenset[str]

    @classmethod
    def from_model(cls, model: RolloutModel) -> RolloutSpec:
        abort = model.abort
        return cls(
            device_topic=model.device_topic,
            result_topic=model.result_topic,
            max_per_minute=model.max_per_minute,
            canary=model.canary,
            bake_s=model.bake_s,
            device_timeout_s=model.device_timeout_s,
            failure_pct=abort.failure_pct if abort else None,
            min_executed=abort.min_executed if abort else 1,
            failure_types=frozenset(abort.failure_types if abort else ()),
        )

    @property
    def interval_s(self) -> float:
        """Seconds between two device starts (the pace max_per_minute allows)."""
        return 60.0 / self.max_per_minute

    def topic_for(self, device: str) -> str:
        return _fill(self.device_topic, device)

    def result_topic_for(self, device: str) -> str:
        return _fill(self.result_topic, device)

    def result_filter(self) -> str:
        """One subscription for every device's results: each variable level becomes '+'."""
        return "/".join(
            "+" if level.startswith("{") and level.endswith("}") else level
            for level in self.result_topic.split("/")
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "device_topic": self.device_topic,
            "result_topic": self.result_topic,
            "max_per_minute": self.max_per_minute,
            "canary": self.canary,
            "bake_s": self.bake_s,
            "device_timeout_s": self.device_timeout_s,
            "failure_pct": self.failure_pct,
            "min_executed": self.min_executed,
            "failure_types": sorted(self.failure_types),
        }


def _fill(template: str, device: str) -> str:
    tenant, _, name = device.partition("/")
    return template.replace("{tenant}", tenant).replace("{device}", name)


@dataclass(slots=True)
class DeviceRun:
    device: str
    status: str = QUEUED
    at: float | None = None
    detail: str | None = None


@dataclass(slots=True)
class RolloutState:
    spec: RolloutSpec
    devices: dict[str, DeviceRun]
    status: str = RUNNING
    reason: str | None = None
    started_at: float = 0.0
    canaries: tuple[str, ...] = field(default=())

    @classmethod
    def plan(cls, spec: RolloutSpec, devices: list[str], now: float) -> RolloutState:
        runs = {d: DeviceRun(d, QUEUED, now) for d in devices}
        return cls(spec, runs, started_at=now, canaries=tuple(devices[: spec.canary]))

    # -- reading ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(DEVICE_STATUSES, 0)
        for run in self.devices.values():
            counts[run.status] += 1
        return counts

    def next_queued(self) -> str | None:
        if self.status != RUNNING:
            return None
        return next((d for d, run in self.devices.items() if run.status == QUEUED), None)

    def canaries_settled(self) -> bool:
        return all(self.devices[d].status in ENDED for d in self.canaries)

    def in_progress(self) -> list[str]:
        return [d for d, run in self.devices.items() if run.status == IN_PROGRESS]

    def all_ended(self) -> bool:
        return all(run.status in ENDED for run in self.devices.values())

    # -- transitions -------------------------------------------------------------------------

    def start(self, device: str, now: float) -> None:
        run = self.devices[device]
        if run.status != QUEUED or self.status != RUNNING:
            raise ValueError(f"{device} is {run.status}; only a queued device starts")
        run.status, run.at, run.detail = IN_PROGRESS, now, None

    def result(self, device: str, status: str, detail: str | None, now: float) -> bool:
        """A device's outcome; False (ignored) unless it was in progress (late, duplicate)."""
        run = self.devices.get(device)
        if run is None or run.status != IN_PROGRESS or status not in EXECUTED:
            return False
        run.status, run.at, run.detail = status, now, detail
        self._judge(now)
        return True

    def _judge(self, now: float) -> None:
        # An abort stops what is still to be sent; with nothing queued the rollout simply
        # ends (done or failed) on its devices' outcomes.
        if self.status != RUNNING or not any(
            run.status == QUEUED for run in self.devices.values()
        ):
            return
        spec = self.spec
        for d in self.canaries:
            run = self.devices[d]
            if run.status in EXECUTED and run.status != SUCCEEDED:
                self.abort(f"canary {d} {run.status.replace('_', ' ')}: {run.detail}", now)
                return
        if spec.failure_pct is None:
            return
        executed = [r for r in self.devices.values() if r.status in EXECUTED]
        failures = sum(1 for r in executed if r.status in spec.failure_types)
        if len(executed) >= spec.min_executed and failures * 100.0 >= (
            spec.failure_pct * len(executed)
        ):
            self.abort(
                f"{failures} of {len(executed)} executed devices failed "
                f"({failures * 100.0 / len(executed):.0f}% >= {spec.failure_pct:g}%)",
                now,
            )

    def abort(self, reason: str, now: float) -> list[str]:
        """Stop: cancel every queued device; return them."""
        self.status, self.reason = ABORTED, reason
        cancelled = []
        for d, run in self.devices.items():
            if run.status == QUEUED:
                run.status, run.at, run.detail = CANCELLED, now, f"rollout aborted: {reason}"
                cancelled.append(d)
        return cancelled

    def conclude(self) -> str:
        """Once every device ended: done (all succeeded), failed, or aborted."""
        if self.status == RUNNING:
            ok = all(run.status == SUCCEEDED for run in self.devices.values())
            self.status = DONE if ok else FAILED_ROLLOUT
            if not ok:
                c = self.counts()
                self.reason = (
                    f"{c[SUCCEEDED]} of {len(self.devices)} devices succeeded "
                    f"({c[FAILED]} failed, {c[REJECTED]} rejected, {c[TIMED_OUT]} timed out)"
                )
        return self.status

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "counts": self.counts(),
            "devices": [
                {"device": r.device, "status": r.status, "at": r.at, "detail": r.detail}
                for r in self.devices.values()
            ],
            "settings": self.spec.to_record(),
        }


def result_status(payload: bytes) -> tuple[str, str | None]:
    """A device's ``config/result`` document -> (device status, detail).

    ``applied`` succeeded; ``rejected`` (the device refused it) rejected; anything else
    (``invalid``, unreadable) failed.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return FAILED, "unreadable result"
    if not isinstance(doc, dict):
        return FAILED, "unreadable result"
    status = doc.get("status")
    detail = doc.get("reason") if isinstance(doc.get("reason"), str) else None
    if status == "applied":
        return SUCCEEDED, None
    if status == "rejected":
        return REJECTED, detail or "rejected by the device"
    return FAILED, detail or f"device answered {status!r}"
