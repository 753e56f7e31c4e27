"""Flag changes reach live sessions: a kill, a revoked token or a void-before time ends
the sessions it covers, through the control plane.

The flag store calls ``on_flag`` after its view shows the change (so a reconnect racing
the kill is refused at the door by ``KillSwitchCheck``); a doorbell may ring twice for one
change, and disconnecting an agent that is gone is a no-op, so this is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..approvals.lookup import approval_service_of
from ..audit import AuditError, utc_iso
from ..checks.alerts import Alert
from ..mqtt import ReasonCode
from ..state import ALL_AGENTS, FlagEvent

if TYPE_CHECKING:
    from .control import ControlPlane
    from .server import GuardServer

log = logging.getLogger("iot_guard.flags")


class FlagWatch:
    def __init__(self, control: ControlPlane, server: GuardServer | None = None) -> None:
        self._control = control
        self._server = server
        self._tasks: set[asyncio.Task[None]] = set()

    def on_flag(self, event: FlagEvent) -> None:
        self._record(event)
        control = self._control
        if event.kind == "kill":
            agent = None if event.agent == ALL_AGENTS else event.agent
            who = "every agent" if agent is None else f"agent {agent}"
            ended = control.disconnect(
                agent, ReasonCode.ADMINISTRATIVE_ACTION,
                f"kill switch for {who} by {event.by}: {event.reason}",
            )
            log.warning("kill switch for %s by %s (%s): %d session(s) ended", who, event.by,
                        event.reason, ended)
            self._alert(event, f"kill switch for {who} by {event.by}: {event.reason}")
            self._stop_approvals(agent, event.by or "kill switch", event.reason)
        elif event.kind == "revoke" and event.jti is not None:
            control.disconnect_where(
                lambda s: s.token_id == event.jti, ReasonCode.NOT_AUTHORIZED,
                f"token {event.jti} revoked: {event.reason}",
            )
        elif event.kind == "void_before":
            everyone = event.agent in (None, ALL_AGENTS)
            control.disconnect_where(
                lambda s: (everyone or s.agent_id == event.agent)
                and (s.token_issued_at is None or s.token_issued_at < event.at),
                ReasonCode.NOT_AUTHORIZED,
                f"tokens issued before {event.at:.0f} are void: {event.reason}",
            )

    def _alert(self, event: FlagEvent, reason: str) -> None:
        """A kill is an alert too: the console, the webhooks and anything on ``on_alert``."""
        if self._server is not None:
            self._server.hooks.call("on_alert", Alert(
                rule="kill_switch", agent_id=event.agent or ALL_AGENTS, session_id=None,
                mode="block", reason=reason, at=event.at, subject=event.by or "",
            ))

    def _record(self, event: FlagEvent) -> None:
        """Every flag change this guard enforces is on its audit record (and in its log)."""
        if self._server is None:
            return
        record = {
            "timestamp": utc_iso(time.time()), "packet": "guard",
            "result_status": event.kind, "agent_id": event.agent, "reason": event.reason,
            "by": event.by, "at": event.at,
        }
        if event.jti is not None:
            record["token_id"] = event.jti
        try:
            self._server.audit.write(record)
        except AuditError as exc:  # the brake still acts; the failure is said loudly
            log.error("flag change not audited: %s", exc)

    def _stop_approvals(self, agent: str | None, by: str, reason: str) -> None:
        """A killed agent's pending approvals are cancelled and its rollouts aborted (off
        the callback: the approvals service talks to its store)."""
        service = approval_service_of(self._server) if self._server is not None else None
        if service is None:
            return

        async def stop() -> None:
            try:
                stopped = await service.stop_agent(agent, by, f"kill switch: {reason}")
                if stopped:
                    log.warning("kill switch stopped %d approval request(s) of %s", stopped,
                                agent or "every agent")
            except Exception:  # logged loudly; the sessions are already ended
                log.exception("kill switch could not stop the approvals of %s", agent)

        task = asyncio.get_running_loop().create_task(stop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
