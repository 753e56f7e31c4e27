"""Assemble the admin server: core routes (who am I, live events), the console, and the
approvals API. Other modules add their routes to ``AdminApp.server`` before it starts.

As a guard addon (``GuardServer(..., addons=[approvals, admin])``) it starts and stops with
the guard, on the guard's loop, after the approvals addon. The approvals service may be
given as an object, as a callable that returns it, or found on the guard at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..approvals.lookup import approval_service_of
from . import console
from . import metrics as health
from .approvals_api import Approvals, ApprovalsApi
from .auth import Directory
from .brakes_api import BrakesApi
from .directory import PolicyDirectory
from .events import EventHub
from .server import AdminServer, json_response

ApprovalsSource = Approvals | Callable[[], Approvals | None]


class _Nobody:
    def approver_levels(self, approver: str) -> set[int]:
        return set()

    def is_admin(self, admin: str) -> bool:
        return False


class _Lazy:
    """Who is listed, asked of whatever knows when the request comes: the directory given,
    else the approvals service (one source for approver levels), else the guard's policy."""

    def __init__(self, app: AdminApp, directory: Directory | None) -> None:
        self.app = app
        self.directory = directory

    def _source(self) -> Directory:
        if self.directory is not None:
            return self.directory
        service = self.app.approvals_service()
        if service is not None and hasattr(service, "is_admin"):
            return service  # type: ignore[return-value]
        if self.app.policy_directory is not None:
            return self.app.policy_directory
        return _Nobody()

    def approver_levels(self, approver: str) -> set[int]:
        return self._source().approver_levels(approver)

    def is_admin(self, admin: str) -> bool:
        return self._source().is_admin(admin)


class AdminApp:
    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        directory: Directory | None = None,
        approvals: ApprovalsSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._approvals = approvals
        self.policy_directory: PolicyDirectory | None = None
        self._guard: Any = None  # the GuardServer, once started as its addon
        self.server = AdminServer(host, port, secret, _Lazy(self, directory), clock=clock)
        self.events = EventHub(clock)
        self.server.on_stop.append(self.events.close)
        self.server.add_routes([
            web.get("/api/whoami", self.whoami),
            web.get("/api/events", self.stream),
            *console.routes(),
            # /metrics, /healthz, /readyz: no token (probes); the guard once started
            *health.routes(self._metered_guard),
        ])
        self.approvals = ApprovalsApi(self.server, self.approvals_service, self.events)
        self.brakes = BrakesApi(self.server, lambda: getattr(self._guard, "state", None))

    def approvals_service(self) -> Approvals | None:
        source = self._approvals
        if source is None or hasattr(source, "approve"):
            return source  # type: ignore[return-value]
        return source()

    async def whoami(self, request: web.Request) -> web.Response:
        who = self.server.principal(request)
        return json_response({
            "id": who.id, "role": who.role, "levels": sorted(who.levels),
            "token_id": who.token_id, "expires_at": who.expires_at,
        })

    async def stream(self, request: web.Request) -> web.StreamResponse:
        who = self.server.principal(request)
        return await self.events.stream(request, until=who.expires_at)

    def _metered_guard(self) -> Any:
        return self._guard if getattr(self._guard, "stats", None) is not None else None

    def on_alert(self, alert: Any) -> None:
        """A guard addon hook: alerts (limits, anomalies) reach the live event stream."""
        self.events.publish("alert", {
            "rule": alert.rule, "agent_id": alert.agent_id, "mode": alert.mode,
            "reason": alert.reason, "subject": alert.subject, "at": alert.at,
        })

    async def start(self, server: Any = None) -> None:
        """Start serving; ``server``: the GuardServer when run as its addon."""
        self._guard = server
        control = getattr(server, "control", None)
        if control is not None:
            self.policy_directory = PolicyDirectory(lambda: control.policy.document)
        if self._approvals is None and server is not None:
            # Asked per request: the approvals addon may create its service at its start.
            self._approvals = lambda: approval_service_of(server)
        self.approvals.attach()
        await self.server.start(server)

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url
