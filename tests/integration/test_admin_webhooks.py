"""Webhook delivery against a real local HTTP receiver: signatures verify, 5xx are retried
with backoff under one delivery id, give-ups and drops are audited, the sender never waits."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from iot_guard.approvals.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookNotifier,
    WebhookTarget,
    verify_signature,
)
from iot_guard.policy_models import Webhook
from tests.unit.admin_fakes import make_view

SECRET = b"receiver-shared-secret"


class Receiver:
    """A local webhook endpoint answering with scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body, time.time()))
        self.arrived.set()
        await self.release.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook/t0k3n"

    async def stop(self) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def notifier_for(url: str, audit: list[dict[str, Any]], **kwargs: Any) -> WebhookNotifier:
    options: dict[str, Any] = {"max_attempts": 4, "base_delay_s": 0.05, "max_delay_s": 0.2}
    options.update(kwargs)
    return WebhookNotifier([WebhookTarget(url, SECRET, timeout_s=2)], audit.append, **options)


@pytest.mark.asyncio
async def test_signed_delivery_retried_after_500s(receiver: Receiver) -> None:
    audit: list[dict[str, Any]] = []
    notifier = notifier_for(receiver.url, audit)
    await notifier.start()
    try:
        receiver.statuses = [500, 503]
        notifier.notify(make_view("r-1", time.time()))
        await asyncio.wait_for(notifier.idle(), 10)
    finally:
        await notifier.stop()
    assert len(receiver.received) == 3 and notifier.delivered == 1 and audit == []
    deliveries = {headers[DELIVERY_HEADER] for headers, _, _ in receiver.received}
    assert len(deliveries) == 1  # one event, one delivery id across retries (dedupe)
    bodies = {body for _, body, _ in receiver.received}
    assert len(bodies) == 1
    for headers, body, at in receiver.received:
        assert headers["Content-Type"] == "application/json"
        assert headers[EVENT_HEADER] == "approval.pending"
        assert abs(verify_signature(SECRET, headers[SIGNATURE_HEADER], body, at) - at) <= 1
    # Backoff: the retries waited (0.05 s then 0.1 s) instead of hammering the receiver.
    times = [at for _, _, at in receiver.received]
    assert times[1] - times[0] >= 0.04 and times[2] - times[1] >= 0.09
    data = json.loads(body)
    assert data["text"].startswith("[iot-guard] approval r-1 pending")
    assert data["request"]["id"] == "r-1" and "payload" not in data["request"]


@pytest.mark.asyncio
async def test_give_up_is_audited_without_the_url_secret(receiver: Receiver) -> None:
    audit: list[dict[str, Any]] = []
    notifier = notifier_for(receiver.url, audit, max_attempts=3)
    await notifier.start()
    try:
        receiver.statuses = [503, 503, 503, 400]
        notifier.notify(make_view("r-1", time.time()))
        notifier.notify(make_view("r-2", time.time(), status="denied"))
        await asyncio.wait_for(notifier.idle(), 10)
    finally:
        await notifier.stop()
    # r-1: three attempts then given up; r-2: a 400 is not retried.
    assert len(receiver.received) == 4 and notifier.failed == 2
    assert [(r["event"], r["approval_id"]) for r in audit] == [
        ("webhook_failed", "r-1"), ("webhook_failed", "r-2")]
    assert "after 3 attempt(s): HTTP 503" in audit[0]["note"]
    assert "after 1 attempt(s): HTTP 400" in audit[1]["note"]
    assert all("t0k3n" not in json.dumps(r) for r in audit)


@pytest.mark.asyncio
async def test_unreachable_receiver_is_audited() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit: list[dict[str, Any]] = []
    notifier = notifier_for(f"http://127.0.0.1:{port}/x", audit, max_attempts=2)
    await notifier.start()
    try:
        notifier.notify(make_view("r-1", time.time()))
        await asyncio.wait_for(notifier.idle(), 10)
    finally:
        await notifier.stop()
    assert len(audit) == 1 and "ClientConnectorError" in audit[0]["note"]


@pytest.mark.asyncio
async def test_a_stuck_receiver_never_blocks_the_sender(receiver: Receiver) -> None:
    audit: list[dict[str, Any]] = []
    notifier = notifier_for(receiver.url, audit, queue_size=2)
    await notifier.start()
    try:
        receiver.release.clear()  # the receiver holds every request
        notifier.notify(make_view("r-1", time.time()))
        await asyncio.wait_for(receiver.arrived.wait(), 5)  # r-1 in flight, queue empty
        started = time.perf_counter()
        for i in range(2, 6):  # r-2, r-3 queued; r-4, r-5 dropped
            notifier.notify(make_view(f"r-{i}", time.time()))
        assert time.perf_counter() - started < 0.5  # the receiver holds r-1 forever
        assert notifier.dropped == 2
        assert [(r["event"], r["approval_id"]) for r in audit] == [
            ("webhook_dropped", "r-4"), ("webhook_dropped", "r-5")]
        receiver.release.set()
        await asyncio.wait_for(notifier.idle(), 10)
    finally:
        await notifier.stop()
    ids = [json.loads(body)["request"]["id"] for _, body, _ in receiver.received]
    assert ids == ["r-1", "r-2", "r-3"]  # in order, per target


def guard_like(urls: list[str], audit: list[dict[str, Any]]) -> Any:
    """What the notifier reads of a guard: the policy in force and the audit log."""
    return SimpleNamespace(control=SimpleNamespace(policy=policy_with(urls)),
                           audit=SimpleNamespace(write=audit.append))


def policy_with(urls: list[str], secret_env: str = "HOOK_SECRET") -> Any:
    hooks = [Webhook(url=url, secret_env=secret_env) for url in urls]
    return SimpleNamespace(document=SimpleNamespace(approvals=SimpleNamespace(webhooks=hooks)))


@pytest.mark.asyncio
async def test_a_policy_reload_moves_new_events_to_the_new_webhooks(receiver: Receiver) -> None:
    other = Receiver()
    await other.start()
    audit: list[dict[str, Any]] = []
    notifier = WebhookNotifier(environ={"HOOK_SECRET": "s" * 16}, base_delay_s=0.05)
    await notifier.start(guard_like([receiver.url], audit))
    try:
        notifier.notify(make_view("r-1", time.time()))
        await asyncio.wait_for(notifier.idle(), 10)
        notifier.on_policy_swapped(policy_with([other.url]))
        notifier.notify(make_view("r-2", time.time()))
        await asyncio.wait_for(notifier.idle(), 10)
        # A reload whose secret is missing keeps the webhooks in force, and says so.
        notifier.on_policy_swapped(policy_with([receiver.url], secret_env="NOT_SET"))
        notifier.notify(make_view("r-3", time.time()))
        await asyncio.wait_for(notifier.idle(), 10)
    finally:
        await notifier.stop()
        await other.stop()

    def ids(r: Receiver) -> list[str]:
        return [json.loads(body)["request"]["id"] for _, body, _ in r.received]

    assert ids(receiver) == ["r-1"] and ids(other) == ["r-2", "r-3"]
    assert [r["event"] for r in audit] == ["webhook_config_error"]
    assert "NOT_SET is not set" in audit[0]["note"]
