"""The approvals JSON API: list, show, approve, deny, rollout, and live events.

A thin layer: authentication and input checks here, every rule about requests (levels,
double approval, states, binding) in the ApprovalService. The service's ApprovalError
status (400, 403, 404, 409) becomes the HTTP status with the service's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from ..approvals.service import ApprovalError
from .auth import AuthError, Principal
from .events import EventHub
from .server import AdminServer, json_error, json_response

STATUSES = (
    "pending", "escalated", "approved", "denied", "expired", "cancelled", "executing", "done",
    "failed", "aborted", "void",
)
# ``open``: what still waits for a human.
STATUS_GROUPS = {"open": ("pending", "escalated")}
MAX_REASON_CHARS = 1000
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


class Approvals(Protocol):
    """What the API needs of iot_guard.approvals.service.ApprovalService."""

    async def list(self, status: str | None = None) -> list[dict[str, Any]]: ...
    async def get(self, request_id: str) -> dict[str, Any] | None: ...
    async def approve(
        self, request_id: str, approver: str, reason: str | None = None
    ) -> dict[str, Any]: ...
    async def deny(self, request_id: str, approver: str, reason: str) -> dict[str, Any]: ...
    async def rollout(self, request_id: str) -> dict[str, Any] | None: ...
    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]: ...


def parse_statuses(text: str | None) -> set[str] | None:
    """``?status=pending,escalated`` or ``?status=open``; None: every status."""
    if not text:
        return None
    wanted: set[str] = set()
    for name in (part.strip() for part in text.split(",")):
        if name in STATUS_GROUPS:
            wanted.update(STATUS_GROUPS[name])
        elif name in STATUSES:
            wanted.add(name)
        else:
            raise web.HTTPBadRequest(
                text=f"unknown status {name!r}; one of {', '.join(STATUSES + ('open',))}"
            )
    return wanted


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise web.HTTPBadRequest(text=f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


async def read_reason(request: web.Request) -> str | None:
    """The optional ``reason`` of a JSON object body (an empty body is no reason)."""
    if not request.can_read_body:
        return None
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send a JSON body (Content-Type: application/json)")
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='the body must be a JSON object: {"reason": "..."}')
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown fields {unknown}; only 'reason' is taken")
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise web.HTTPBadRequest(text="reason must be a string")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise web.HTTPBadRequest(text=f"reason is longer than {MAX_REASON_CHARS} characters")
    return reason or None


class ApprovalsApi:
    """Routes under /api/approvals and the ``approval`` events of /api/events."""

    def __init__(
        self, admin: AdminServer, service: Callable[[], Approvals | None], hub: EventHub
    ) -> None:
        self.admin = admin
        self._service = service
        self.hub = hub
        self._unsubscribe: Callable[[], None] | None = None
        admin.add_routes([
            web.get("/api/approvals", self.list),
            web.get("/api/approvals/{id}", self.show),
            web.get("/api/approvals/{id}/rollout", self.rollout),
            web.post("/api/approvals/{id}/approve", self.approve),
            web.post("/api/approvals/{id}/deny", self.deny),
        ])
        admin.on_stop.append(self._stop)

    def attach(self) -> None:
        """Forward the service's transitions to the event stream (at start: the service
        may be created by its own addon just before)."""
        service = self._service()
        if service is not None and self._unsubscribe is None:
            self._unsubscribe = service.subscribe(self._on_transition)

    @property
    def service(self) -> Approvals:
        service = self._service()
        if service is None:
            raise web.HTTPServiceUnavailable(
                text="the approvals service is not running in this guard"
            )
        return service

    def _on_transition(self, view: dict[str, Any]) -> None:
        self.hub.publish("approval", view)

    async def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def _call(self, action: Any) -> web.Response:
        try:
            return json_response(await action)
        except ApprovalError as err:
            return json_error(err.status, err.message)

    async def list(self, request: web.Request) -> web.Response:
        self.admin.principal(request)
        service = self.service
        wanted = parse_statuses(request.query.get("status"))
        limit = parse_limit(request.query.get("limit"))
        single = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else None
        views = await service.list(single)
        if wanted is not None:
            views = [view for view in views if view.get("status") in wanted]
        return json_response({
            "requests": views[:limit],
            "count": len(views),
            "server_time": self.admin.clock(),
        })

    async def show(self, request: web.Request) -> web.Response:
        self.admin.principal(request)
        view = await self.service.get(request.match_info["id"])
        if view is None:
            return json_error(404, f"no approval request {request.match_info['id']!r}")
        return json_response(view)

    async def rollout(self, request: web.Request) -> web.Response:
        self.admin.principal(request)
        request_id = request.match_info["id"]
        if await self.service.get(request_id) is None:
            return json_error(404, f"no approval request {request_id!r}")
        progress = await self.service.rollout(request_id)
        if progress is None:
            return json_error(404, f"approval request {request_id!r} has no rollout")
        return json_response(progress)

    def _decider(self, request: web.Request) -> Principal:
        who = self.admin.principal(request)
        if not who.levels:
            raise AuthError(
                403, "forbidden", f"{who.id!r} is not an approver at any level of the policy"
            )
        return who

    async def approve(self, request: web.Request) -> web.Response:
        who = self._decider(request)
        reason = await read_reason(request)
        return await self._call(self.service.approve(request.match_info["id"], who.id, reason))

    async def deny(self, request: web.Request) -> web.Response:
        who = self._decider(request)
        # A denial always records a reason; the console asks for one, the CLI may omit it.
        reason = await read_reason(request) or "no reason given"
        return await self._call(self.service.deny(request.match_info["id"], who.id, reason))
