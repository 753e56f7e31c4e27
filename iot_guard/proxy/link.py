"""One agent connection and its upstream connection, driven by a GuardSession.

Only I/O lives here: asyncio protocols turn reads, closes and timers into session
events and carry out the commands the session returns (the session never sees a
socket). Backpressure is transport-to-transport: when one side's write buffer passes
its high-water mark, the other side stops reading, so memory stays bounded whoever is
slow.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from ..audit import AuditError
from ..session import (
    AgentClosed,
    AgentData,
    AgentOpened,
    BrokerClosed,
    BrokerData,
    BrokerUnreachable,
    CancelTimer,
    Close,
    Command,
    Event,
    GuardSession,
    GuardSubscribed,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    SetTimer,
    StartHold,
    TimerFired,
    WriteAudit,
)

if TYPE_CHECKING:
    from .server import GuardServer

log = logging.getLogger("iot_guard.proxy")


class UnknownCommand(TypeError):
    """The session asked for something this proxy cannot do: a bug, never ignored."""


class Link:
    """Ties a session to its two transports, the server's audit log, hooks and timers."""

    def __init__(self, session: GuardSession, server: GuardServer) -> None:
        self.session = session
        self.server = server
        self.agent: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._to_broker_backlog: list[bytes] = []  # written once the upstream is open
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        self.backpressured = False  # the agent reads slower than the broker sends
        self._loop = asyncio.get_running_loop()

    @property
    def closed(self) -> bool:
        return self._closed

    def feed(self, event: Event) -> None:
        """Hand the session one event and carry out what it asks."""
        self.perform(self.session.handle(event, time.time()))

    # ------------------------------------------------------------ carrying out commands

    def perform(self, commands: list[Command]) -> None:
        to_agent: list[bytes] = []
        to_broker: list[bytes] = []
        audits: list[dict[str, Any]] = []
        try:
            for command in commands:
                if isinstance(command, SendToAgent):
                    to_agent.append(command.data)
                elif isinstance(command, SendToBroker):
                    to_broker.append(command.data)
                elif isinstance(command, WriteAudit):
                    audits.append(command.record)
                elif isinstance(command, OpenUpstream):
                    self._flush(audits, to_agent, to_broker)
                    self._open_upstream(command.connect)
                elif isinstance(command, SetTimer):
                    self._set_timer(command.key, command.at)
                elif isinstance(command, CancelTimer):
                    timer = self._timers.pop(command.key, None)
                    if timer is not None:
                        timer.cancel()
                elif isinstance(command, StartHold):
                    # Audited before the hook sees it: the hold record comes first.
                    self._flush(audits, to_agent, to_broker)
                    self.server.hooks.call("on_hold", command.held)
                elif isinstance(command, GuardSubscribed):
                    self._flush(audits, to_agent, to_broker)
                    self.server.hooks.call("on_guard_subscribe", command.agent_id,
                                           command.session_id, command.topic_filter)
                elif isinstance(command, Close):
                    self._flush(audits, to_agent, to_broker)
                    self.close(command.reason)
                    return
                else:
                    raise UnknownCommand(f"the proxy cannot carry out {command!r}")
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
            self.server.audit.write_many(audits)
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

    def _set_timer(self, key: str, at: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, at - time.time())
        self._timers[key] = self._loop.call_later(delay, self._timer_fired, key)

    def _timer_fired(self, key: str) -> None:
        self._timers.pop(key, None)
        if not self._closed:
            self.feed(TimerFired(key))

    def _open_upstream(self, connect: bytes) -> None:
        # Hold the agent's further packets until the broker has the CONNECT: what the
        # agent sent meanwhile is kept in order in the backlog.
        if self.agent is not None:
            self.agent.pause_reading()
        self._loop.create_task(self._connect_upstream(connect))

    async def _connect_upstream(self, connect: bytes) -> None:
        cfg = self.server.config
        try:
            transport, _ = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: UpstreamProtocol(self), cfg.upstream_host, cfg.upstream_port,
                    ssl=self.server.upstream_ssl,
                ),
                timeout=cfg.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.feed(BrokerUnreachable(str(exc) or type(exc).__name__))
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

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        log.debug("session %s closed: %s", self.session.session_id, reason)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # close() sends what is buffered first (a DISCONNECT, a refused CONNACK). An
        # upstream closed without the agent's DISCONNECT makes the broker send the will.
        if self.agent is not None:
            self.agent.close()
        if self.upstream is not None:
            self.upstream.close()
        self.server.link_closed(self)


class AgentProtocol(asyncio.Protocol):
    """The agent-facing side of a link."""

    def __init__(self, server: GuardServer) -> None:
        self._server = server
        self.link: Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        link = self.link = self._server.new_link()
        link.agent = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        link.feed(AgentOpened(f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)))

    def data_received(self, data: bytes) -> None:
        link = self.link
        assert link is not None
        link.feed(AgentData(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.feed(AgentClosed())
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
        self.link.feed(BrokerData(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.feed(BrokerClosed())
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
