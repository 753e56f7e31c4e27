"""Webhooks: a signed JSON POST to each configured URL on every approval transition.

Never in the guard's way: ``notify`` (the ApprovalService subscriber) only puts the view
on a bounded queue per target; a background task per target delivers in order, retries
with bounded exponential backoff, and audits what it gives up on. A full queue drops the
event and audits the drop -- the guard never waits for a chat server.

Signature (the scheme of Stripe's and Slack's signing secrets): header
``X-IoT-Guard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
A receiver recomputes the HMAC over the exact body bytes, compares in constant time, and
refuses a timestamp more than 5 minutes from its clock (``verify_signature``): a captured
request cannot be replayed later, and ``X-IoT-Guard-Delivery`` (the same on every retry of
one event) lets it drop a duplicate within the window. The body has a Slack-compatible
``text`` field, so a Slack incoming-webhook URL works as a target.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..audit import utc_iso
from ..policy_models import Webhook
from .lookup import approval_service_of

log = logging.getLogger("iot_guard.approvals.webhooks")

SIGNATURE_HEADER = "X-IoT-Guard-Signature"
DELIVERY_HEADER = "X-IoT-Guard-Delivery"
EVENT_HEADER = "X-IoT-Guard-Event"
REPLAY_WINDOW_S = 300
# Retried: the receiver may succeed later. Any other 4xx is the request's fault: given up.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class SignatureError(Exception):
    """Why a received webhook is refused."""


# ----------------------------------------------------------------------------- pure parts

def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: bytes, header: str | None, body: bytes, now: float, window_s: float = REPLAY_WINDOW_S
) -> int:
    """Check a received webhook; return its timestamp or raise SignatureError."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("no timestamp t=<unix seconds>") from None
    if abs(now - timestamp) > window_s:
        raise SignatureError(f"timestamp is {int(now - timestamp)} s old: outside the window")
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    # Several v1= values are allowed (secret rotation): one must match.
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("signature does not match the body")
    return timestamp


def retry_delays(max_attempts: int, base_s: float, cap_s: float) -> list[float]:
    """Waits between attempts: base, 2*base, 4*base ... each at most cap (bounded)."""
    return [min(cap_s, base_s * 2**i) for i in range(max(0, max_attempts - 1))]


def message_text(view: dict[str, Any]) -> str:
    """One line a person reads in a chat channel (Slack's ``text``)."""
    status = view.get("status", "?")
    devices = view.get("devices") or []
    text = (
        f"[iot-guard] approval {view.get('id')} {status}: {view.get('agent_id')} "
        f"{view.get('tool')} on {view.get('topic')} ({len(devices)} device"
        f"{'' if len(devices) == 1 else 's'}, {view.get('risk')} risk)"
    )
    if status in ("pending", "escalated"):
        text += f"; level {view.get('level')}; held because {view.get('reason')}"
    history = view.get("history") or []
    if history and status not in ("pending",):
        last = history[-1]
        text += f"; {last.get('action')} by {last.get('who')}"
        if last.get("reason"):
            text += f": {last.get('reason')}"
    rollout = view.get("rollout")
    if rollout:
        counts = ", ".join(f"{k} {v}" for k, v in (rollout.get("counts") or {}).items() if v)
        text += f"; rollout {rollout.get('status')} ({counts})"
    return text


def event_type(view: dict[str, Any]) -> str:
    """``approval.<status>``, or ``alert.<rule>`` for a guard alert (``on_alert``)."""
    if view.get("kind") == "alert":
        return f"alert.{view.get('rule')}"
    return f"approval.{view.get('status')}"


def webhook_body(view: dict[str, Any], delivery: str, now: float) -> bytes:
    """The POSTed JSON: the transition, the request view without the raw payload (its
    digest identifies it; the payload stays in the guard), and Slack's ``text``. A guard
    alert (a limit hit, an anomaly) is sent as ``{"type": "alert.<rule>", "alert": ...}``."""
    if view.get("kind") == "alert":
        return json.dumps({
            "type": event_type(view), "delivery": delivery, "sent_at": utc_iso(now),
            "text": f"[iot-guard] {view.get('mode')} {view.get('rule')}: {view.get('reason')}",
            "alert": view,
        }, separators=(",", ":"), sort_keys=True, default=str).encode()
    request = {k: v for k, v in view.items() if k not in ("payload", "payload_encoding")}
    body = {
        "type": f"approval.{view.get('status')}",
        "delivery": delivery,
        "sent_at": utc_iso(now),
        "text": message_text(view),
        "request": request,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()


def redact_url(url: str) -> str:
    """Scheme, host and port only: a webhook URL's path often is its secret (Slack)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


# ----------------------------------------------------------------------------- delivery

@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: bytes
    timeout_s: float = 5.0


def targets_from_policy(
    webhooks: Sequence[Webhook], environ: Mapping[str, str]
) -> list[WebhookTarget]:
    """The policy's ``approvals.webhooks``; a missing secret variable is an error at start
    (an unsigned webhook is never sent)."""
    targets = []
    for i, hook in enumerate(webhooks):
        secret = hook.secret if hook.secret is not None else environ.get(hook.secret_env or "")
        if not secret:
            raise ValueError(
                f"approvals.webhooks[{i}]: environment variable {hook.secret_env} is not set"
            )
        targets.append(WebhookTarget(hook.url, secret.encode(), hook.timeout_s))
    return targets


class WebhookNotifier:
    """Deliver approval transitions to webhook targets in the background."""

    def __init__(
        self,
        targets: list[WebhookTarget] | None = None,
        audit: Callable[[dict[str, Any]], None] | None = None,
        *,
        queue_size: int = 1000,
        max_attempts: int = 6,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``targets`` and ``audit`` None: as a guard addon, taken at start from the policy
        in force (``approvals.webhooks``, secrets from ``environ``) and the guard's log."""
        self.targets = targets
        self._audit = audit
        self.queue_size = queue_size
        self.delays = retry_delays(max_attempts, base_delay_s, max_delay_s)
        self.clock = clock
        self.environ = environ
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._from_policy = False
        self._policy: Callable[[], Any] | None = None  # the guard's policy, as an addon
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def notify(self, view: dict[str, Any]) -> None:
        """ApprovalService subscriber: never blocks, never raises into the service."""
        for target, queue in zip(self.targets or (), self._queues, strict=False):
            try:
                queue.put_nowait(view)
            except asyncio.QueueFull:
                self.dropped += 1
                self._record("webhook_dropped", target, view, note=(
                    f"queue full ({self.queue_size} undelivered): event dropped"
                ))

    def on_alert(self, alert: Any) -> None:
        """A guard addon hook: alerts (``checks.alerts.Alert``) go to the same targets when
        the policy says so (``anomaly.webhooks: true``)."""
        policy = self._policy() if self._policy is not None else None
        if policy is not None and not policy.document.anomaly.webhooks:
            return
        if self.targets:
            details = {k: v for k, v in alert.details.items() if k != "rule"}
            self.notify({
                **details, "kind": "alert", "rule": alert.rule, "mode": alert.mode,
                "agent_id": alert.agent_id, "session_id": alert.session_id,
                "reason": alert.reason, "subject": alert.subject, "at": utc_iso(alert.at),
                "suppressed": alert.suppressed, "where": alert.details.get("rule"),
            })

    async def start(self, server: Any = None) -> None:
        """Start the senders; as a guard addon (after the approvals addon) also take the
        targets from the policy, audit to the guard's log and follow its approval service
        (a webhook secret missing from the environment stops the guard from starting)."""
        self._from_policy = self.targets is None
        if server is not None:
            self._policy = lambda: server.control.policy
        if self.targets is None:
            self.targets = self._policy_targets(server.control.policy)
        if self._audit is None:
            self._audit = server.audit.write
        self._http = aiohttp.ClientSession()
        self._run(self.targets)
        if server is not None and self._unsubscribe is None:
            service = approval_service_of(server)
            if service is not None:
                self._unsubscribe = service.subscribe(self.notify)

    def _policy_targets(self, policy: Any) -> list[WebhookTarget]:
        environ = self.environ if self.environ is not None else os.environ
        return targets_from_policy(policy.document.approvals.webhooks, environ)

    def _run(self, targets: list[WebhookTarget]) -> None:
        self.targets = targets
        self._queues = [asyncio.Queue(self.queue_size) for _ in targets]
        self._tasks = [
            asyncio.create_task(self._deliver_all(target, queue), name="iot-guard-webhook")
            for target, queue in zip(targets, self._queues, strict=True)
        ]

    def on_policy_swapped(self, policy: Any) -> None:
        """A reloaded policy's webhooks take over for new events; what the old targets
        still had queued is delivered first, then their senders end."""
        if not self._from_policy or self._http is None:
            return
        try:
            targets = self._policy_targets(policy)
        except ValueError as exc:  # keep sending where we did: a reload must not go silent
            log.error("webhooks unchanged: %s", exc)
            self._write({"timestamp": utc_iso(self.clock()), "event": "webhook_config_error",
                         "note": f"{exc}; the previous webhooks stay in force"})
            return
        if targets == self.targets:
            return
        old = list(zip(self._queues, self._tasks, strict=True))
        self._run(targets)
        for queue, task in old:
            retire = asyncio.get_running_loop().create_task(self._retire(queue, task))
            for pending in (retire, task):
                self._retiring.add(pending)
                pending.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(queue: asyncio.Queue[dict[str, Any]], task: asyncio.Task[None]) -> None:
        try:
            await queue.join()
        finally:
            task.cancel()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [*self._tasks, *self._retiring]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def idle(self) -> None:
        """Wait until every queued event is delivered or given up (tests, clean stop)."""
        await asyncio.gather(*(queue.join() for queue in self._queues))

    async def _deliver_all(
        self, target: WebhookTarget, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        while True:
            view = await queue.get()
            try:
                await self._deliver(target, view)
            except Exception:  # a bug here must not end deliveries to this target
                log.exception("webhook delivery to %s failed", redact_url(target.url))
            finally:
                queue.task_done()

    async def _deliver(self, target: WebhookTarget, view: dict[str, Any]) -> None:
        assert self._http is not None, "start() first"
        delivery = secrets.token_hex(8)
        body = webhook_body(view, delivery, self.clock())
        outcome = ""
        for attempt in range(len(self.delays) + 1):
            if attempt:
                await asyncio.sleep(self.delays[attempt - 1])
            # Signed afresh at each attempt: a late retry still falls in the replay window.
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(target.secret, int(self.clock()), body),
                DELIVERY_HEADER: delivery,
                EVENT_HEADER: event_type(view),
            }
            try:
                async with self._http.post(
                    target.url, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=target.timeout_s), allow_redirects=False,
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if 200 <= status < 300:
                self.delivered += 1
                return
            outcome = f"HTTP {status}"
            if status not in RETRY_STATUSES:
                break
        self.failed += 1
        self._record("webhook_failed", target, view, note=(
            f"gave up after {attempt + 1} attempt(s): {outcome}"
        ), delivery=delivery)

    def _record(
        self, event: str, target: WebhookTarget, view: dict[str, Any], *, note: str,
        delivery: str | None = None,
    ) -> None:
        record = {
            "timestamp": utc_iso(self.clock()),
            "event": event,
            "webhook": redact_url(target.url),
            "approval_id": view.get("id"),
            "approval_status": view.get("status"),
            "note": note,
        }
        if delivery:
            record["delivery"] = delivery
        log.warning("%s: %s %s", event, record["webhook"], note)
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            if self._audit is not None:
                self._audit(record)
        except Exception:  # an audit failure is logged; the guard's own path fails closed
            log.exception("could not audit %s", record.get("event"))
