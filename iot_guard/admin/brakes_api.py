"""The kill switch and token revocation over the admin API (admin tokens only).

``POST /api/kill``        {"agent": ID} or {"all": true}, "reason"  -> the kill in force
``POST /api/kill/lift``   {"agent": ID} or {"all": true}            -> {"lifted": bool}
``GET  /api/kill``        every switch in force and the revocations
``POST /api/tokens/revoke`` {"jti", "expires_at", "reason"} (one token) or
                            {"agent": ID, "reason"} (its tokens issued before now)

The flag store is the authority: the guard(s) sharing it end the covered sessions within a
second (``proxy/flag_watch.py``); the same switch works without this API through the state
directory (``iot-guard kill --state-dir DIR``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from ..state import ALL_AGENTS, Stores
from ..tokens import DEFAULT_MAX_TTL_S, ROLE_ADMIN
from .server import AdminServer, json_error, json_response

ADMINS = frozenset({ROLE_ADMIN})
MAX_REASON = 500


class BrakesApi:
    def __init__(self, admin: AdminServer, state: Callable[[], Stores | None]) -> None:
        self.admin = admin
        self._state = state
        admin.add_routes([
            web.get("/api/kill", self.show),
            web.post("/api/kill", self.kill),
            web.post("/api/kill/lift", self.lift),
            web.post("/api/tokens/revoke", self.revoke),
        ])

    @property
    def state(self) -> Stores:
        state = self._state()
        if state is None:
            raise web.HTTPServiceUnavailable(text="this guard has no state store running")
        return state

    async def show(self, request: web.Request) -> web.Response:
        self.admin.principal(request, ADMINS)
        snap = self.state.flags.view.snapshot
        return json_response({
            "kills": [asdict(k) for k in snap.kills.values()],
            "revoked": [asdict(r) for r in snap.revoked.values()],
            "void_before": [asdict(v) for v in snap.void_before.values()],
        })

    async def kill(self, request: web.Request) -> web.Response:
        who = self.admin.principal(request, ADMINS)
        body = await _body(request)
        agent = _agent(body)
        reason = _reason(body)
        kill = await self.state.flags.kill(agent, reason, who.id)
        return json_response({"kill": asdict(kill)})

    async def lift(self, request: web.Request) -> web.Response:
        who = self.admin.principal(request, ADMINS)
        agent = _agent(await _body(request))
        return json_response({"lifted": await self.state.flags.lift(agent, who.id),
                              "agent": agent})

    async def revoke(self, request: web.Request) -> web.Response:
        who = self.admin.principal(request, ADMINS)
        body = await _body(request)
        reason = f"{_reason(body)} (by {who.id})"
        if "jti" in body:
            jti, expires_at = body.get("jti"), body.get("expires_at")
            if not isinstance(jti, str) or not jti:
                return json_error(400, "jti must be a token id (the token's jti claim)")
            if not isinstance(expires_at, int | float):
                # Unknown expiry: keep it for the longest a token may live by default.
                expires_at = time.time() + DEFAULT_MAX_TTL_S
            added = await self.state.flags.revoke(jti, expires_at=float(expires_at),
                                                  reason=reason, agent=body.get("agent"))
            return json_response({"revoked": jti, "new": added})
        agent = _agent(body)
        before = await self.state.flags.void_tokens_before(agent, time.time(), reason)
        return json_response({"agent": agent, "void_before": before})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _agent(body: dict[str, Any]) -> str:
    if body.get("all") is True:
        return ALL_AGENTS
    agent = body.get("agent")
    if not isinstance(agent, str) or not agent or agent == ALL_AGENTS:
        raise web.HTTPBadRequest(text='name the agent ("agent": ID) or "all": true')
    return agent


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise web.HTTPBadRequest(text="give a reason: it goes to the audit log and the agent")
    if len(reason) > MAX_REASON:
        raise web.HTTPBadRequest(text=f"reason is longer than {MAX_REASON} characters")
    return reason.strip()
