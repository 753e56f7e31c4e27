"""Carries one staged rollout out on the event loop: pacing, canary and bake, timeouts, results.

The decisions are ``rollout.RolloutState``'s; this module only waits and moves bytes:

- pacing with asyncio-throttle (one start per ``60 / max_per_minute`` s: a ``Throttler`` with
  a rate of 1 per interval spaces starts evenly instead of allowing a burst of a minute's
  worth at once);
- the canaries first; the rest waits for their outcome and then the bake time;
- each device is moved ``queued -> in_progress`` in the store *before* its patch is sent, so
  no device is ever sent twice, and gets a timer of ``device_timeout_s``;
- results arrive from the executor's subscription (``on_result``); on abort nothing more is
  sent and the store cancels every queued device.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asyncio_throttle import Throttler

from iot_guard.state import ApprovalStore, DeviceState

from .executor import ExecutorError
from .rollout import (
    ABORTED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    RUNNING,
    TIMED_OUT,
    RolloutSpec,
    RolloutState,
)

log = logging.getLogger("iot_guard.approvals.rollout")

Publish = Callable[[str, str, bytes], Awaitable[None]]  # (device, topic, payload)


def with_client_token(payload: bytes, token: str) -> tuple[bytes, str | None]:
    """The payload with a ``clientToken`` the device echoes in its result (AWS IoT style).

    An agent's own clientToken is kept (and used to match results); a payload that is not a
    JSON object is sent as it is and results are matched by topic alone.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload, None
    if not isinstance(doc, dict):
        return payload, None
    existing = doc.get("clientToken")
    if isinstance(existing, str):
        return payload, existing
    doc["clientToken"] = token
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), token


class RolloutRunner:
    def __init__(
        self,
        request_id: str,
        spec: RolloutSpec,
        devices: list[str],
        payload: bytes,
        *,
        store: ApprovalStore,
        publish: Publish,
        clock: Callable[[], float],
        on_progress: Callable[[RolloutState], None],
        resume: Sequence[DeviceState] | None = None,
    ) -> None:
        self.request_id = request_id
        self.spec = spec
        self.store = store
        self._publish = publish
        self._clock = clock
        self._on_progress = on_progress
        # The device's result names this token: AWS's 64-byte clientToken limit.
        self.payload, self.token = with_client_token(payload, f"iotguard:{request_id}"[:64])
        self.state = RolloutState.plan(spec, devices, clock())
        self._resumed = resume is not None
        for saved in resume or ():
            # After a restart: where each device was, as the store says.
            run = self.state.devices.get(saved.device)
            if run is not None:
                run.status, run.at, run.detail = saved.status, saved.at, saved.detail
        self._changed = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._writes: list[asyncio.Task[Any]] = []
        self._cancelled_in_store = False

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> RolloutState:
        state, spec = self.state, self.spec
        loop = asyncio.get_running_loop()
        if self._resumed:
            # Devices sent before the restart: their result may still come; never resent.
            for sent in state.in_progress():
                self._timers[sent] = loop.call_later(spec.device_timeout_s, self._timed_out, sent)
        else:
            await self.store.rollout_start(self.request_id, list(state.devices))
        self._on_progress(state)
        throttler = Throttler(rate_limit=1, period=spec.interval_s, retry_interval=0.005)
        started = sum(1 for run in state.devices.values() if run.status != QUEUED)
        while (device := state.next_queued()) is not None:
            if spec.canary and started == len(state.canaries):
                await self._until(state.canaries_settled)
                if state.status == RUNNING and spec.bake_s > 0:
                    await self._wait_or_abort(spec.bake_s)
                if state.status != RUNNING:
                    break
            await throttler.acquire()
            if state.status != RUNNING:
                break
            # Durable before it is sent: a device is never sent its patch twice.
            moved = await self.store.rollout_update(self.request_id, device, QUEUED, IN_PROGRESS)
            if moved is None or state.status != RUNNING:
                break
            state.start(device, self._clock())
            started += 1
            self._timers[device] = loop.call_later(spec.device_timeout_s, self._timed_out, device)
            self._progress()
            try:
                await self._publish(device, spec.topic_for(device), self.payload)
            except ExecutorError as exc:
                self._end(device, FAILED, f"not delivered: {exc}")
        if state.status == ABORTED:
            await self._cancel_queued()
        await self._until(lambda: not state.in_progress())
        state.conclude()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        return state

    def halt(self) -> list[asyncio.Task[Any]]:
        """The guard is stopping: no more timers; return the store writes still running."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        return [t for t in self._writes if not t.done()]

    def stop(self, reason: str) -> None:
        """Abort from outside (the guard is stopping, an admin cancelled)."""
        if self.state.status == RUNNING:
            self.state.abort(reason, self._clock())
            self._progress()
        for device, timer in list(self._timers.items()):
            timer.cancel()
            self._end(device, TIMED_OUT, f"no result before the rollout stopped: {reason}")

    # -- results ----------------------------------------------------------------------------

    def wants(self, device: str, payload: bytes) -> bool:
        """Is this result message for our patch (device in progress, token matches)?"""
        run = self.state.devices.get(device)
        if run is None or run.status != IN_PROGRESS:
            return False
        if self.token is None:
            return True
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(doc, dict) and doc.get("clientToken") == self.token

    def on_result(self, device: str, status: str, detail: str | None) -> None:
        self._end(device, status, detail)

    def _timed_out(self, device: str) -> None:
        self._timers.pop(device, None)
        self._end(device, TIMED_OUT, f"no result within {self.spec.device_timeout_s:g} s")

    def _end(self, device: str, status: str, detail: str | None) -> None:
        was_running = self.state.status == RUNNING
        if not self.state.result(device, status, detail, self._clock()):
            return
        timer = self._timers.pop(device, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._writes.append(
            loop.create_task(
                self.store.rollout_update(self.request_id, device, IN_PROGRESS, status, detail)
            )
        )
        if was_running and self.state.status == ABORTED:
            log.warning("rollout of %s aborted: %s", self.request_id, self.state.reason)
            self._writes.append(loop.create_task(self._cancel_queued()))
        self._progress()

    async def _cancel_queued(self) -> None:
        if not self._cancelled_in_store:
            self._cancelled_in_store = True
            await self.store.rollout_cancel(
                self.request_id, f"rollout aborted: {self.state.reason}"
            )

    # -- waiting ----------------------------------------------------------------------------

    def _progress(self) -> None:
        self._changed.set()
        try:
            self._on_progress(self.state)
        except Exception:  # progress reporting must not stop a rollout
            log.exception("rollout progress handler failed")

    async def _until(self, predicate: Callable[[], bool]) -> None:
        # Every device in progress has a timer, so this wait is bounded.
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def _wait_or_abort(self, seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while self.state.status == RUNNING:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return
