"""Assemble the admin server: core routes (who am I, live events), the console, and the
approvals API when an approvals service runs. Other modules add their routes to the
returned server (``server.add_routes``) before it starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import console
from .approvals_api import Approvals, ApprovalsApi
from .auth import Directory
from .events import EventHub
from .server import AdminServer, json_error, json_response


class AdminApp:
    """The admin server with its event hub and, when given a service, the approvals API."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        directory: Directory,
        approvals: Approvals | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = AdminServer(host, port, secret, directory, clock=clock)
        self.events = EventHub(clock)
        self.server.on_stop.append(self.events.close)
        self.server.add_routes([
            web.get("/api/whoami", self.whoami),
            web.get("/api/events", self.stream),
            *console.routes(),
        ])
        self.approvals = ApprovalsApi(self.server, approvals, self.events) if approvals else None
        if self.approvals is None:
            self.server.add_routes([web.route("*", "/api/approvals{tail:.*}", self.no_approvals)])

    async def whoami(self, request: web.Request) -> web.Response:
        who = self.server.principal(request)
        return json_response({
            "id": who.id, "role": who.role, "levels": sorted(who.levels),
            "token_id": who.token_id, "expires_at": who.expires_at,
        })

    async def stream(self, request: web.Request) -> web.StreamResponse:
        who = self.server.principal(request)
        return await self.events.stream(request, until=who.expires_at)

    async def no_approvals(self, request: web.Request) -> web.Response:
        self.server.principal(request)
        return json_error(503, "the approvals service is not running in this guard")

    async def start(self, server: Any = None) -> None:
        await self.server.start(server)

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url
