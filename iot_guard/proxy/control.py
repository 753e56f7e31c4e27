"""The control plane: the server's view of every live session, and what operators (and
addons such as the approvals service) may do to them.

Everything here runs on the guard's event loop and reaches a session only through an
event (``Kick``, ``PolicySwapped``, ``GuardNotice``, ``HoldResolved``), so the session
stays the one place that decides what goes on the wire.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..mqtt import ReasonCode
from ..policy.compiler import CompiledPolicy
from ..session import GuardNotice, GuardSession, HoldResolved, Kick, PolicySwapped

if TYPE_CHECKING:
    from .link import Link
    from .server import GuardServer

log = logging.getLogger("iot_guard.control")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    agent_id: str | None
    client_id: str | None
    token_id: str | None
    peer: str
    protocol_level: int
    state: str


class ControlPlane:
    def __init__(self, server: GuardServer) -> None:
        self._server = server

    # ------------------------------------------------------------------ looking

    @property
    def policy(self) -> CompiledPolicy:
        return self._server.policy

    def sessions(self) -> list[SessionInfo]:
        return [session_info(link) for link in self._live()]

    def _live(self, agent_id: str | None = None) -> list[Link]:
        return [
            link for link in self._server.links
            if not link.closed and (agent_id is None or link.session.agent_id == agent_id)
        ]

    # ------------------------------------------------------------------ acting

    def disconnect(
        self, agent_id: str | None, code: int = ReasonCode.ADMINISTRATIVE_ACTION,
        reason: str = "disconnected by the guard's operator",
    ) -> int:
        """End every live session of ``agent_id`` (or of every agent, for None) with an
        MQTT 5 DISCONNECT carrying ``code`` and ``reason``; returns how many ended."""
        links = [link for link in self._live(agent_id) if link.session.agent_id is not None]
        for link in links:
            link.feed(Kick(int(code), reason))
        if links:
            log.info("disconnected %d session(s) of %s: %s", len(links),
                     agent_id or "every agent", reason)
        return len(links)

    def disconnect_where(
        self, covers: Callable[[GuardSession], bool], code: int, reason: str
    ) -> int:
        """End every connected session ``covers`` says yes to (a revoked token's, say)."""
        links = [link for link in self._live()
                 if link.session.agent_id is not None and covers(link.session)]
        for link in links:
            link.feed(Kick(int(code), reason))
        if links:
            log.info("disconnected %d session(s): %s", len(links), reason)
        return len(links)

    def notify(self, agent_id: str, topic: str, payload: bytes) -> int:
        """Deliver a ``$guard/...`` message to every live session of the agent that
        subscribed to it; returns how many sessions were offered it."""
        links = self._live(agent_id)
        for link in links:
            link.feed(GuardNotice(topic, payload))
        return len(links)

    def hold_resolved(self, session_id: str, hold_id: str, outcome: str, detail: str = "") -> None:
        for link in self._server.links:
            if link.session.session_id == session_id and not link.closed:
                link.feed(HoldResolved(hold_id, outcome, detail))

    def swap_policy(self, policy: CompiledPolicy) -> None:
        """Put ``policy`` in force atomically: new sessions get it, and the next packet
        of every live session is judged by it (an agent no longer in it is disconnected)."""
        self._server.policy = policy
        gc.freeze()  # see GuardServer: keep the compiled policy out of full GC passes
        for link in list(self._server.links):
            if not link.closed:
                link.feed(PolicySwapped(policy))
        self._server.hooks.call("on_policy_swapped", policy)

    def reload_policy(self) -> tuple[bool, str]:
        """Load the policy directory again; on any problem keep the policy in force and
        say why (fail closed to the last good policy, never to none)."""
        directory = self._server.config.policy_dir
        try:
            policy = CompiledPolicy.load(directory)
        except Exception as exc:  # a policy error of any kind leaves the old one in force
            why = f"policy {directory} not reloaded, the previous one stays in force: {exc}"
            log.error("%s", why)
            return False, why
        self.swap_policy(policy)
        message = f"policy {directory} reloaded"
        log.info("%s", message)
        return True, message

    def reopen_audit(self) -> None:
        """Reopen the audit file at its path (logrotate moved it away)."""
        self._server.audit.reopen()
        log.info("audit log reopened")


def session_info(link: Link) -> SessionInfo:
    s = link.session
    return SessionInfo(s.session_id, s.agent_id, s.client_id, s.token_id, s.peer,
                       s.protocol_level, s.state.value)
