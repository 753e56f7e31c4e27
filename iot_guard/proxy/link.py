"""One agent connection and its upstream connection, driven by a GuardSession.

Only I/O lives here: asyncio protocols turn reads, closes and timers into session
events and carry out the commands the session returns (the session never sees a
socket). Backpressure is transport-to-transport: when a write buffer passes its
high-water mark, whoever fills it stops being read, so memory stays bounded whoever is
slow: the broker while the agent does not read its deliveries, and the agent while the
broker does not read its publishes *or* while the agent does not read the guard's own
answers (refusals, events) to what it sends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..audit import AuditError
from ..logs import log_session_records
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


# Why the agent is not being read (a bit each); it is read again when none is left.
PAUSED_UPSTREAM_OPENING = 1  # the broker is being reached and HELD_READS_LIMIT is reached
PAUSED_BROKER_SLOW = 2  # the upstream write buffer is above its high-water mark
PAUSED_AGENT_SLOW = 4  # the agent's own write buffer is: it does not read our answers

# Why the broker is not being read (a bit each, as for the agent); read again when none is left.
BROKER_PAUSED_AGENT_SLOW = 1  # the agent's write buffer is above its high-water mark
BROKER_PAUSED_COALESCING = 2  # a moment after a large read (COALESCE_AFTER)

# Read coalescing on the broker side, as a NIC's interrupt moderation does for a host. A
# read of at least this many bytes means a stream is queueing behind the guard; reading
# again as soon as a few packets land costs the *broker* a wake-up of this process every
# few packets (measured: ~3 packets per read, and the broker spent ~15% more CPU per
# message than for a direct subscriber). So after such a read the link leaves the
# broker's socket unread for ``read_coalesce_ms``, or until it next writes to the broker
# (an agent's ack or request: the broker's answer must not wait), whichever is first.
COALESCE_AFTER = 1024

# While the broker is being reached, what the agent sends next is kept here, unjudged,
# and handed to the session once the CONNECT is on its way: the session sees it then,
# in order, as it would after a pause. Kept, not paused: a TLS transport goes on reading
# the socket for a paused reader and drops what it holds when the peer closes
# (asyncio's and uvloop's alike), so an agent that sent CONNECT, then PUBLISH and
# DISCONNECT, and closed lost both. Past this many bytes the agent is paused (memory).
HELD_READS_LIMIT = 64 * 1024


class Link:
    """Ties a session to its two transports, the server's audit log, hooks and timers."""

    __slots__ = (
        "session", "server", "agent", "upstream", "_to_broker_backlog", "_timers",
        "_closed", "_agent_paused", "_broker_paused", "refused", "_coalescing", "_opening",
        "_held_reads",
    )

    def __init__(self, session: GuardSession, server: GuardServer) -> None:
        self.session = session
        self.server = server
        self.agent: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._to_broker_backlog: list[bytes] | None = None  # written once the upstream is open
        self._timers: dict[str, int] | None = None  # key -> sequence number in server.timers
        self._closed = False
        self._agent_paused = 0  # PAUSED_* bits
        self._broker_paused = 0  # BROKER_PAUSED_* bits
        self.refused = 0  # requests refused so far, for the console log's disconnect line
        self._coalescing: asyncio.TimerHandle | None = None  # ends BROKER_PAUSED_COALESCING
        self._opening: asyncio.Task[None] | None = None  # reaching the broker
        self._held_reads: bytearray | None = None  # the agent's reads meanwhile (HELD_READS_LIMIT)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backpressured(self) -> bool:
        """The agent reads slower than the broker sends: the broker is not read."""
        return bool(self._broker_paused & BROKER_PAUSED_AGENT_SLOW)

    def feed(self, event: Event) -> None:
        """Hand the session one event and carry out what it asks."""
        started = perf_counter()
        commands = self.session.handle(event, time.time())
        self.server.stats.decision_latency.observe(perf_counter() - started)
        if len(commands) == 1 and commands[0].__class__ is SendToAgent:
            # A read of acks or deliveries relayed (most broker reads): perform's first case.
            agent = self.agent
            if agent is not None and not agent.is_closing():
                agent.write(commands[0].data)
        elif commands:
            self.perform(commands)

    # ------------------------------------------------------------ carrying out commands

    def perform(self, commands: list[Command]) -> None:
        if not commands:
            return
        first = commands[0]
        kind = first.__class__
        # The common cases, one read relayed: nothing but bytes for one side (a read of
        # acks or deliveries), or one message's audit record and its bytes (a read of one
        # publish). The same as the loop below does with them, without its lists.
        if kind is SendToAgent or kind is SendToBroker:
            if len(commands) == 1:
                self._send(kind, first.data)  # type: ignore[union-attr]
                return
            for command in commands:
                if command.__class__ is not kind:
                    break
            else:
                self._send(kind, b"".join([c.data for c in commands]))  # type: ignore[union-attr]
                return
        elif kind is WriteAudit and len(commands) == 2:
            then = commands[1]
            if then.__class__ is SendToBroker or then.__class__ is SendToAgent:
                try:
                    self._audit([first.record])  # type: ignore[union-attr]
                except AuditError as exc:
                    self._audit_failed(exc)
                    return
                self._send(then.__class__, then.data)
                return
        to_agent: list[bytes] = []
        to_broker: list[bytes] = []
        audits: list[Mapping[str, Any]] = []
        try:
            for command in commands:
                kind = type(command)
                if kind is SendToAgent:
                    to_agent.append(command.data)  # type: ignore[union-attr]
                elif kind is SendToBroker:
                    to_broker.append(command.data)  # type: ignore[union-attr]
                elif kind is WriteAudit:
                    audits.append(command.record)  # type: ignore[union-attr]
                elif isinstance(command, OpenUpstream):
                    self._flush(audits, to_agent, to_broker)
                    self._open_upstream(command.connect)
                elif isinstance(command, SetTimer):
                    self._set_timer(command.key, command.at)
                elif isinstance(command, CancelTimer):
                    self._cancel_timer(command.key)
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
                    self.close(command.reason, command.agent_ended)
                    return
                else:
                    raise UnknownCommand(f"the proxy cannot carry out {command!r}")
            self._flush(audits, to_agent, to_broker)
        except AuditError as exc:
            self._audit_failed(exc)

    def _audit_failed(self, exc: AuditError) -> None:
        # Fail closed: what was not audited is not forwarded, and the session ends.
        log.error("audit failed, closing session %s: %s", self.session.session_id, exc)
        self.close(str(exc))

    def _send(self, kind: type, data: bytes) -> None:
        """Bytes only, no audit record: one write to one side."""
        if kind is SendToAgent:
            agent = self.agent
            if agent is not None and not agent.is_closing():
                agent.write(data)
        elif self.upstream is None:
            if self._to_broker_backlog is None:
                self._to_broker_backlog = []
            self._to_broker_backlog.append(data)
        elif not self.upstream.is_closing():
            self.upstream.write(data)
            if self._coalescing is not None:
                self.read_broker_again()  # its answer to this write must not wait

    def _audit(self, audits: list[Mapping[str, Any]]) -> None:
        """Write ``audits`` (one write), then count and log them; raises AuditError."""
        stats = self.server.stats
        started = perf_counter()
        try:
            self.server.audit.write_many(audits)
        except AuditError:
            stats.audit_failures += 1
            raise
        stats.audit_latency.observe(perf_counter() - started)
        stats.count_records(audits)  # the metrics' decisions: what was audited
        self.refused = log_session_records(audits, self.refused)

    def _flush(
        self, audits: list[Mapping[str, Any]], to_agent: list[bytes], to_broker: list[bytes]
    ) -> None:
        """Audit first (one write for the batch), then send; raises AuditError unsent."""
        if audits:
            self._audit(audits)
            audits.clear()
        if to_agent:
            self._send(SendToAgent, b"".join(to_agent) if len(to_agent) > 1 else to_agent[0])
        if to_broker:
            self._send(SendToBroker,
                       b"".join(to_broker) if len(to_broker) > 1 else to_broker[0])
        to_agent.clear()
        to_broker.clear()

    def _set_timer(self, key: str, at: float) -> None:
        timers = self._timers
        if timers is None:
            timers = self._timers = {}
        elif key in timers:
            self.server.timers.dropped()  # replaced: the old entry is skipped when it is due
        timers[key] = self.server.timers.add(self, key, at)

    def _cancel_timer(self, key: str) -> None:
        if self._timers is not None and self._timers.pop(key, None) is not None:
            self.server.timers.dropped()

    def timer_current(self, key: str, seq: int) -> bool:
        return self._timers is not None and self._timers.get(key) == seq

    def timer_due(self, key: str, seq: int) -> bool:
        if not self.timer_current(key, seq):
            return False
        assert self._timers is not None
        del self._timers[key]
        if not self._closed:
            self.feed(TimerFired(key))
        return True

    # ------------------------------------------------------------ reading the agent

    def pause_agent(self, why: int) -> None:
        if not self._agent_paused and self.agent is not None and not self.agent.is_closing():
            self.agent.pause_reading()
        self._agent_paused |= why

    def resume_agent(self, why: int) -> None:
        was = self._agent_paused
        self._agent_paused = was & ~why
        if was and not self._agent_paused and self.agent is not None \
                and not self.agent.is_closing():
            self.agent.resume_reading()

    # ------------------------------------------------------------ reading the broker

    def pause_broker(self, why: int) -> None:
        # Paused on every new reason, as asyncio calls pause_reading (it is idempotent).
        self._broker_paused |= why
        upstream = self.upstream
        if upstream is not None and not upstream.is_closing():
            upstream.pause_reading()

    def resume_broker(self, why: int) -> None:
        was = self._broker_paused
        self._broker_paused = was & ~why
        upstream = self.upstream
        if was and not self._broker_paused and upstream is not None \
                and not upstream.is_closing():
            upstream.resume_reading()

    @property
    def coalescing(self) -> bool:
        """The broker's socket is left unread for a moment (``COALESCE_AFTER``)."""
        return self._coalescing is not None

    def coalesce_broker_reads(self) -> None:
        """A large read from the broker was handled: leave the next ones for a moment."""
        if self._coalescing is not None or self._broker_paused or self._closed:
            return  # already paused; backpressure's end (resume_writing) reads it again
        delay = self.server.broker_read_pause_s
        if not delay or self.upstream is None:
            return
        self.pause_broker(BROKER_PAUSED_COALESCING)
        self._coalescing = asyncio.get_running_loop().call_later(delay, self.read_broker_again)
        self.server.stats.broker_reads_coalesced += 1

    def read_broker_again(self) -> None:
        """End a coalescing pause (its timer, or a write to the broker before it)."""
        handle = self._coalescing
        if handle is None:
            return
        self._coalescing = None
        handle.cancel()  # ended early by a write; harmless once it has fired
        self.resume_broker(BROKER_PAUSED_COALESCING)

    @property
    def holding_reads(self) -> bool:
        """The broker is being reached: the agent's reads are kept (``hold_read``)."""
        return self._held_reads is not None

    def hold_read(self, data: bytes) -> None:
        """Keep a read from the agent until the broker has the CONNECT."""
        held = self._held_reads
        assert held is not None
        held += data
        if len(held) >= HELD_READS_LIMIT:
            self.pause_agent(PAUSED_UPSTREAM_OPENING)

    def agent_lost(self) -> None:
        """The agent's connection ended: what it sent is judged first (the session is
        still reaching the broker when some is kept, and owes it the broker)."""
        self._release_held_reads()
        self.feed(AgentClosed())
        self.close("agent connection lost")

    def _release_held_reads(self) -> None:
        """The agent's reads kept while the broker was reached go to the session now."""
        held = self._held_reads
        self._held_reads = None
        if held:
            self.feed(AgentData(bytes(held)))

    def _open_upstream(self, connect: bytes) -> None:
        # What the agent sends until the broker has the CONNECT is kept (HELD_READS_LIMIT).
        self._held_reads = bytearray()
        # Kept: the loop holds tasks weakly, and this one must finish even after the
        # session has ended (see _connect_upstream).
        self._opening = asyncio.get_running_loop().create_task(self._connect_upstream(connect))

    async def _connect_upstream(self, connect: bytes) -> None:
        cfg = self.server.config
        try:
            transport, _ = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: UpstreamProtocol(self), cfg.upstream_host, cfg.upstream_port,
                    ssl=self.server.upstream_ssl,
                ),
                timeout=cfg.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if not self._closed:
                self.feed(BrokerUnreachable(str(exc) or type(exc).__name__))
            return
        finally:
            self._opening = None
        if self._closed:
            # (Only when the agent ended the session: close() cancels this task otherwise.)
            # The session ended while the broker was being reached: the agent sent its
            # packets, perhaps a DISCONNECT, and closed without waiting for the CONNACK,
            # which MQTT allows (MQTT 5.0 and 3.1.1, section 3.1.4). What the guard
            # accepted (and audited) reaches the broker in order, then the connection
            # closes, as a broker reached directly would have read it.
            self._write_connect(transport, connect)
            transport.close()
            return
        self.upstream_opened(transport, connect)

    def upstream_opened(self, transport: asyncio.Transport, connect: bytes) -> None:
        """The broker connection is up: send the CONNECT and what the agent sent meanwhile,
        then read the agent again."""
        self.upstream = transport
        if self._broker_paused:
            # The agent fell behind before the broker answered: its pause_writing came
            # when there was no broker to stop reading, and will not come again.
            transport.pause_reading()
        self._write_connect(transport, connect)
        self._release_held_reads()  # after the CONNECT and its backlog, in order
        self.resume_agent(PAUSED_UPSTREAM_OPENING)

    def _write_connect(self, transport: asyncio.Transport, connect: bytes) -> None:
        """The CONNECT, then what the session sent the broker while it was being reached."""
        transport.write(connect)
        if self._to_broker_backlog:
            transport.write(b"".join(self._to_broker_backlog))
        self._to_broker_backlog = None

    def close(self, reason: str, agent_ended: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._opening is not None and not agent_ended:
            # The guard ended the session (kill switch, revocation, refusal, shutdown):
            # nothing more reaches the broker. Only an agent that ended it itself is
            # owed what it sent (_connect_upstream).
            self._opening.cancel()
            self._opening = None
        log.debug("session %s closed: %s", self.session.session_id, reason)
        self._held_reads = None
        if self._coalescing is not None:
            self._coalescing.cancel()
            self._coalescing = None
        if self._timers:
            # Their heap entries are skipped when due (and purged with the stale ones).
            self.server.timers.dropped(len(self._timers))
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

    __slots__ = ("_server", "link")

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
        self._server.stats.bytes_from_agents += len(data)
        if link._held_reads is None:  # (the attribute, not holding_reads: a call less per read)
            link.feed(AgentData(data))
        else:
            link.hold_read(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.agent_lost()

    def pause_writing(self) -> None:
        # The agent reads slowly: stop reading what fills its buffer until it catches
        # up: the broker's deliveries, and the agent's own packets (the guard answers
        # refusals itself; an agent that floods them and never reads would otherwise
        # grow this buffer without bound).
        link = self.link
        if link is None:
            return
        link.pause_agent(PAUSED_AGENT_SLOW)
        link.pause_broker(BROKER_PAUSED_AGENT_SLOW)

    def resume_writing(self) -> None:
        link = self.link
        if link is None:
            return
        link.resume_agent(PAUSED_AGENT_SLOW)
        link.resume_broker(BROKER_PAUSED_AGENT_SLOW)


class UpstreamProtocol(asyncio.Protocol):
    """The broker-facing side of a link."""

    __slots__ = ("link",)

    def __init__(self, link: Link) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        link = self.link
        size = len(data)
        link.server.stats.bytes_from_broker += size
        link.feed(BrokerData(data))
        if size >= COALESCE_AFTER:  # (the size first: a call less per small read)
            link.coalesce_broker_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.feed(BrokerClosed())
        self.link.close("broker connection lost")

    def pause_writing(self) -> None:
        # The broker reads slowly: stop reading from the agent until it catches up.
        self.link.pause_agent(PAUSED_BROKER_SLOW)

    def resume_writing(self) -> None:
        self.link.resume_agent(PAUSED_BROKER_SLOW)
