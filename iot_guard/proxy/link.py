"""One agent connection and its upstream connection, driven by a GuardSession.

Only I/O lives here: asyncio protocols hand bytes to the sans-IO session and carry out
the actions it returns. Backpressure is transport-to-transport: when one side's write
buffer passes its high-water mark, the other side stops reading, so memory stays
bounded whoever is slow.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..audit import AuditError, AuditLog
from ..session import (
    Action,
    Close,
    ExpireAt,
    GuardSession,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    WriteAudit,
)

if TYPE_CHECKING:
    from .server import GuardConfig

log = logging.getLogger("iot_guard.proxy")


class Link:
    """Ties a session to its two transports, the audit log and the session timers."""

    def __init__(
        self,
        session: GuardSession,
        config: GuardConfig,
        audit: AuditLog,
        upstream_ssl: ssl.SSLContext | None,
        on_closed: Callable[[Link], None],
    ) -> None:
        self.session = session
        self.config = config
        self.audit = audit
        self.upstream_ssl = upstream_ssl
        self.on_closed = on_closed
        self.agent: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._to_broker_backlog: list[bytes] = []  # written once the upstream is open
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = False
        self.backpressured = False  # the agent reads slower than the broker sends
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------ carrying out actions

    def perform(self, actions: list[Action]) -> None:
        to_agent: list[bytes] = []
        to_broker: list[bytes] = []
        audits: list[dict[str, Any]] = []
        try:
            for action in actions:
                if isinstance(action, SendToAgent):
                    to_agent.append(action.data)
                elif isinstance(action, SendToBroker):
                    to_broker.append(action.data)
                elif isinstance(action, WriteAudit):
                    audits.append(action.record)
                elif isinstance(action, OpenUpstream):
                    self._flush(audits, to_agent, to_broker)
                    self._open_upstream(action.connect)
                elif isinstance(action, ExpireAt):
                    delay = max(0.0, action.timestamp - time.time())
                    self._timers.append(self._loop.call_later(delay, self._token_expired))
                elif isinstance(action, Close):
                    self._flush(audits, to_agent, to_broker)
                    self.close(action.reason)
                    return
            self._flush(audits, to_agent, to_broker)
        except AuditError as exc:
            # Fail closed: what was not audited is not forwarded, and the session ends.
            log.error("audit failed, closing session %s: %s", self.session.session_id, exc)
            self.close(str(exc))

    def _flush(
        self, audits: list[dict[str, Any]], to_agent: list[bytes], to_broker: list[bytes]
    ) -> None:
        """Audit first (one write for the batch), then send; raises AuditError unsent."""
        if audits:
            self.audit.write_many(audits)
            audits.clear()
        if to_agent and self.agent is not None and not self.agent.is_closing():
            self.agent.write(b"".join(to_agent) if len(to_agent) > 1 else to_agent[0])
        if to_broker:
            if self.upstream is None:
                self._to_broker_backlog.extend(to_broker)
            elif not self.upstream.is_closing():
                self.upstream.write(b"".join(to_broker) if len(to_broker) > 1 else to_broker[0])
        to_agent.clear()
        to_broker.clear()

    def _open_upstream(self, connect: bytes) -> None:
        # Hold the agent's further packets until the broker has the CONNECT: what the
        # agent sent meanwhile is kept in order in the backlog.
        if self.agent is not None:
            self.agent.pause_reading()
        self._loop.create_task(self._connect_upstream(connect))

    async def _connect_upstream(self, connect: bytes) -> None:
        cfg = self.config
        try:
            transport, _ = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: UpstreamProtocol(self), cfg.upstream_host, cfg.upstream_port,
                    ssl=self.upstream_ssl,
                ),
                timeout=cfg.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = str(exc) or type(exc).__name__
            self.perform(self.session.broker_unreachable(time.time(), reason))
            return
        if self._closed:
            transport.close()
            return
        self.upstream = transport
        transport.write(connect)
        if self._to_broker_backlog:
            transport.write(b"".join(self._to_broker_backlog))
            self._to_broker_backlog.clear()
        if self.agent is not None and not self.agent.is_closing():
            self.agent.resume_reading()

    def _token_expired(self) -> None:
        self.perform(self.session.token_expired(time.time()))

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        log.debug("session %s closed: %s", self.session.session_id, reason)
        for timer in self._timers:
            timer.cancel()
        # close() sends what is buffered first (a DISCONNECT, a refused CONNACK). An
        # upstream closed without the agent's DISCONNECT makes the broker send the will.
        if self.agent is not None:
            self.agent.close()
        if self.upstream is not None:
            self.upstream.close()
        self.on_closed(self)


class AgentProtocol(asyncio.Protocol):
    """The agent-facing side of a link."""

    def __init__(self, make_link: Callable[[], Link]) -> None:
        self._make_link = make_link
        self.link: Link | None = None
        self._connect_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        link = self.link = self._make_link()
        link.agent = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        link.session.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # A client that never sends CONNECT is closed after a reasonable time [MQTT-3.1.4].
        self._connect_timer = asyncio.get_running_loop().call_later(
            link.config.connect_timeout, self._connect_timeout
        )

    def _connect_timeout(self) -> None:
        if self.link is not None and self.link.session.agent_id is None:
            self.link.close("no CONNECT in time")

    def data_received(self, data: bytes) -> None:
        link = self.link
        assert link is not None
        link.perform(link.session.from_agent(data, time.time()))
        if self._connect_timer is not None and link.session.agent_id is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        if self.link is not None:
            self.link.perform(self.link.session.agent_closed(time.time()))
            self.link.close("agent connection lost")

    def pause_writing(self) -> None:
        # The agent reads slowly: stop reading from the broker until it catches up.
        if self.link is not None and self.link.upstream is not None:
            self.link.backpressured = True
            self.link.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.link is not None and self.link.upstream is not None:
            self.link.backpressured = False
            self.link.upstream.resume_reading()


class UpstreamProtocol(asyncio.Protocol):
    """The broker-facing side of a link."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link.perform(self.link.session.from_broker(data, time.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.perform(self.link.session.broker_closed(time.time()))
        self.link.close("broker connection lost")

    def pause_writing(self) -> None:
        # The broker reads slowly: stop reading from the agent until it catches up.
        agent = self.link.agent
        if agent is not None and not agent.is_closing():
            agent.pause_reading()

    def resume_writing(self) -> None:
        agent = self.link.agent
        if agent is not None and not agent.is_closing():
            agent.resume_reading()
