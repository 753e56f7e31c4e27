"""The admin HTTP server: one aiohttp application inside the guard's own event loop.

aiohttp's ``AppRunner``/``TCPSite`` serve on the loop that is already running (uvloop in
the guard) and leave signal handling to the guard; uvicorn would want its own loop and
signal handlers. The server owns what every route shares -- authentication, JSON errors,
security headers -- and other modules add their routes (approvals API, console, and later
kill switch, metrics, health) with ``add_routes`` before ``start``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from ..approvals.request import ApprovalError
from ..state import StateError
from ..tokens import ROLE_ADMIN, ROLE_APPROVER
from .auth import AuthError, Directory, Principal, authenticate

log = logging.getLogger("iot_guard.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A JSON body larger than this is refused (413): reasons are short, nothing else is posted.
MAX_BODY_BYTES = 64 * 1024

# The console loads only its own files; nothing inline, no frames: even if a string from
# the agent reached the DOM as markup, the browser would not run it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

ERROR_NAMES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    503: "unavailable",
}


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def json_error(status: int, detail: str, error: str | None = None) -> web.Response:
    """Every refusal of the admin API has this shape: ``{"error": ..., "detail": ...}``."""
    response = json_response(
        {"error": error or ERROR_NAMES.get(status, "error"), "detail": detail}, status
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="iot-guard"'  # RFC 6750 §3
    return response


ADMIN_SERVER: web.AppKey[AdminServer] = web.AppKey("admin_server")


def bound_port(runner: web.AppRunner | None, what: str) -> int:
    """The port a started runner listens on (the one the OS chose when asked for 0)."""
    assert runner is not None, "start() first"
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError(f"{what} has no listening socket")


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 host in brackets (RFC 3986 §3.2.2)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AdminServer:
    """The admin HTTP server. ``add_routes`` before ``start``; ``principal`` in a handler."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        directory: Directory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.secret = secret
        self.directory = directory
        self.clock = clock
        self.app = web.Application(
            middlewares=[self._json_errors], client_max_size=MAX_BODY_BYTES
        )
        self.app[ADMIN_SERVER] = self
        self.app.on_response_prepare.append(self._security_headers)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        # Called first at stop: long-lived responses (server-sent events) end themselves.
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        self.app.router.add_routes(routes)

    def principal(
        self,
        request: web.Request,
        roles: frozenset[str] = frozenset({ROLE_APPROVER, ROLE_ADMIN}),
    ) -> Principal:
        """The authenticated caller of ``request`` (raises AuthError: 401/403 JSON)."""
        return authenticate(
            request.headers.get("Authorization"), self.secret, self.directory, self.clock(), roles
        )

    @staticmethod
    def of(request: web.Request) -> AdminServer:
        return request.app[ADMIN_SERVER]

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AuthError as err:
            log.info("admin API refused %s %s: %s", request.method, request.path, err.detail)
            return json_error(err.status, err.detail, err.error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else (
                exc.reason
            )
            return json_error(exc.status, detail or exc.reason)
        except ApprovalError as err:  # e.g. 503: the shared state is unreachable
            return json_error(err.status, err.message)
        except StateError as err:
            # Several guards on Redis and Redis down (issue 11): nothing was decided or changed.
            log.error("admin API: %s %s: %s", request.method, request.path, err)
            return json_error(503, f"the shared state is unreachable, nothing was changed: {err}",
                              "state_unavailable")
        except Exception:
            log.exception("admin API: %s %s failed", request.method, request.path)
            return json_error(500, "internal error: see the guard's log", "internal")

    @staticmethod
    async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")

    async def start(self, server: object = None) -> None:
        """Listen on host:port (port 0: any free one). ``server``: the guard, for addons."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self.requested_port, reuse_address=True
        )
        await self._site.start()
        log.info("iot-guard admin API on %s", self.url)

    @property
    def port(self) -> int:
        return bound_port(self._runner, "admin server")

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    async def stop(self) -> None:
        for hook in self.on_stop:
            await hook()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
