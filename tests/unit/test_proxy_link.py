"""The proxy carrying out a session's commands, without a network: fake transports,
a fake audit log, and a session stand-in that records the events it is fed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from iot_guard.audit import AuditError
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.proxy.hooks import Hooks
from iot_guard.proxy.link import Link, UnknownCommand
from iot_guard.proxy.stats import GuardStats
from iot_guard.proxy.timers import TimerQueue
from iot_guard.session import (
    CancelTimer,
    Close,
    HeldAction,
    SendToAgent,
    SendToBroker,
    SetTimer,
    StartHold,
    TimerFired,
    WriteAudit,
)


class Journal(list[tuple[str, Any]]):
    """One timeline for everything the link does, so order can be asserted."""


class FakeTransport:
    def __init__(self, name: str, journal: Journal) -> None:
        self.name = name
        self.journal = journal
        self.closed = False

    def write(self, data: bytes) -> None:
        self.journal.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.journal.append((self.name, "closed"))

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FakeAudit:
    def __init__(self, journal: Journal, fail: bool = False) -> None:
        self.journal = journal
        self.fail = fail

    def write_many(self, records: list[dict[str, Any]]) -> None:
        if self.fail:
            raise AuditError("disk full")
        self.journal.append(("audit", [r["n"] for r in records]))


class Recorder:
    """A session stand-in: returns nothing, remembers every event."""

    session_id = "s-1"

    def __init__(self) -> None:
        self.events: list[object] = []
        self.fed = asyncio.Event()

    def handle(self, event: object, now: float) -> list[object]:
        self.events.append(event)
        self.fed.set()
        return []


@dataclass
class FakeServer:
    audit: FakeAudit
    hooks: Hooks
    closed: list[Link]
    timers: TimerQueue = field(default_factory=TimerQueue)
    stats: GuardStats = field(default_factory=GuardStats)
    broker_read_pause_s: float = 0.0  # GuardServer's, from read_coalesce_ms

    def link_closed(self, link: Link) -> None:
        self.closed.append(link)


def make_link(fail_audit: bool = False, addons: tuple[object, ...] = ()) -> tuple[Link, Journal]:
    journal = Journal()
    server = FakeServer(FakeAudit(journal, fail_audit), Hooks(addons), [])
    link = Link(Recorder(), server)  # type: ignore[arg-type]
    link.agent = FakeTransport("agent", journal)  # type: ignore[assignment]
    link.upstream = FakeTransport("broker", journal)  # type: ignore[assignment]
    return link, journal


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_audit_is_written_before_the_bytes_it_speaks_for() -> None:
    async def go() -> Journal:
        link, journal = make_link()
        link.perform([WriteAudit({"n": 1}), SendToBroker(b"a"), WriteAudit({"n": 2}),
                      SendToAgent(b"b"), SendToBroker(b"c")])
        return journal

    # One audit write for the batch, then one write per side (coalesced).
    assert run(go()) == [("audit", [1, 2]), ("agent", b"b"), ("broker", b"ac")]


@pytest.mark.parametrize("commands", [
    [WriteAudit({"n": 1}), SendToBroker(b"p")],  # a read of one publish
    [WriteAudit({"n": 1}), SendToAgent(b"r")],  # a refused one, answered
    [SendToAgent(b"a")], [SendToAgent(b"a"), SendToAgent(b"b")],  # acks, deliveries
    [SendToBroker(b"a")], [SendToBroker(b"a"), SendToBroker(b"b")],
])
def test_the_shapes_of_one_read_are_carried_out_as_the_general_loop_does(
    commands: list[Any],
) -> None:
    # perform has a short way for these shapes; the general loop (the same commands
    # behind a timer command, which only it handles) must give the same journal, stats,
    # refusal count, and backlog while the upstream is opening.
    async def go(lead: list[Any], upstream: bool) -> tuple[Journal, Any, int, Any]:
        link, journal = make_link()
        if not upstream:
            link.upstream = None
        link.perform([*lead, *commands])
        backlog = link._to_broker_backlog  # written as one, once the upstream is open
        return (journal, link.server.stats.records, link.refused,
                None if backlog is None else b"".join(backlog))

    for upstream in (True, False):
        fast = run(go([], upstream))
        slow = run(go([CancelTimer("none")], upstream))
        assert fast == slow
    journal, records, _, _ = fast
    assert sum(records.values()) == sum(isinstance(c, WriteAudit) for c in commands)
    if isinstance(commands[0], WriteAudit):
        assert journal[0] == ("audit", [1])  # before the bytes it speaks for


def test_a_relayed_read_reaches_the_agent_unless_it_is_closing() -> None:
    # feed's short way for a read of acks or deliveries: written as it came, and
    # nothing written to a closing transport; every event timed once.
    class Relay(Recorder):
        def handle(self, event: object, now: float) -> list[object]:
            super().handle(event, now)
            return [SendToAgent(b"ack")]

    async def go() -> tuple[Link, Journal]:
        link, journal = make_link()
        link.session = Relay()  # type: ignore[assignment]
        link.feed(TimerFired("x"))
        link.agent.closed = True  # type: ignore[union-attr]
        link.feed(TimerFired("y"))
        return link, journal

    link, journal = run(go())
    assert journal == [("agent", b"ack")]
    assert link.server.stats.decision_latency.count == 2


def test_a_failed_audit_of_one_message_forwards_nothing_and_ends_the_session() -> None:
    async def go(then: Any) -> tuple[Link, Journal]:
        link, journal = make_link(fail_audit=True)
        link.perform([WriteAudit({"n": 1}), then])
        return link, journal

    for then in (SendToBroker(b"secret"), SendToAgent(b"ack")):
        link, journal = run(go(then))
        assert journal == [("agent", "closed"), ("broker", "closed")]
        assert link.closed and link.server.stats.audit_failures == 1


def test_a_failed_audit_write_forwards_nothing_and_ends_the_session() -> None:
    async def go() -> tuple[Link, Journal]:
        link, journal = make_link(fail_audit=True)
        link.perform([WriteAudit({"n": 1}), SendToBroker(b"secret"), SendToAgent(b"ack")])
        return link, journal

    link, journal = run(go())
    assert ("broker", b"secret") not in journal and ("agent", b"ack") not in journal
    assert ("agent", "closed") in journal and ("broker", "closed") in journal
    assert link.closed


def test_an_unknown_command_is_an_error_not_silence() -> None:
    async def go() -> None:
        link, _ = make_link()
        link.perform([object()])  # type: ignore[list-item]

    with pytest.raises(UnknownCommand):
        run(go())


def test_timers_wake_the_session_and_can_be_cancelled() -> None:
    async def go() -> list[object]:
        link, _ = make_link()
        session: Recorder = link.session  # type: ignore[assignment]
        link.perform([SetTimer("late", time.time() + 60), SetTimer("soon", time.time()),
                      SetTimer("gone", time.time()), CancelTimer("gone")])
        await asyncio.wait_for(session.fed.wait(), 5)
        pending = sorted(link._timers)
        link.close("test over")
        return [session.events, pending, link._timers]

    events, pending, after_close = run(go())
    assert events == [TimerFired("soon")]  # "gone" was cancelled, "late" has not fired
    assert pending == ["late"]
    assert after_close == {}  # closing cancels every timer


def test_a_hold_reaches_the_addons_after_its_audit() -> None:
    class Approvals:
        journal = Journal()

        def on_hold(self, held: HeldAction) -> None:
            self.journal.append(("hook", held.hold_id))

    async def go() -> Journal:
        approvals = Approvals()
        link, journal = make_link(addons=(approvals,))
        approvals.journal = journal
        held = HeldAction("h-1", "ops-agent", "s-1", None, "t", "a/b", 1, False, b"{}", {},
                          Decision(Verdict.HOLD, "risky", 0x87, "write"), 0.0)
        link.perform([WriteAudit({"n": 1}), StartHold(held), SendToAgent(b"ack")])
        return journal

    # The hold is on record before anyone acts on it.
    assert run(go()) == [("audit", [1]), ("hook", "h-1"), ("agent", b"ack")]


def test_close_flushes_what_came_before_it() -> None:
    async def go() -> Journal:
        link, journal = make_link()
        link.perform([SendToAgent(b"disconnect"), Close("bye"), SendToAgent(b"never")])
        return journal

    assert run(go()) == [("agent", b"disconnect"), ("agent", "closed"), ("broker", "closed")]


class PausableTransport(FakeTransport):
    def pause_reading(self) -> None:
        self.journal.append((self.name, "pause"))

    def resume_reading(self) -> None:
        self.journal.append((self.name, "resume"))


def test_the_agent_is_read_again_only_when_every_reason_to_pause_is_gone() -> None:
    from iot_guard.proxy.link import AgentProtocol, UpstreamProtocol

    async def go() -> Journal:
        link, journal = make_link()
        link.agent = PausableTransport("agent", journal)  # type: ignore[assignment]
        link.upstream = PausableTransport("broker", journal)  # type: ignore[assignment]
        agent_side = AgentProtocol(link.server)  # type: ignore[arg-type]
        agent_side.link = link
        broker_side = UpstreamProtocol(link)
        agent_side.pause_writing()  # the agent does not read what we send it
        broker_side.pause_writing()  # and the broker does not read what we forward
        agent_side.resume_writing()
        journal.append(("-", "agent drained"))
        broker_side.resume_writing()
        return journal

    # Not read while the agent is slow (it floods answers it never reads) nor while the
    # broker is; read again once both caught up; the broker is paused for the slow agent.
    assert run(go()) == [
        ("agent", "pause"), ("broker", "pause"), ("broker", "resume"),
        ("-", "agent drained"), ("agent", "resume"),
    ]


# ------------------------------------------------------------ coalescing broker reads

class SignallingTransport(PausableTransport):
    """Sets ``resumed`` when reading resumes, so a test can await the pause's end."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name, journal)
        self.resumed = asyncio.Event()

    def resume_reading(self) -> None:
        super().resume_reading()
        self.resumed.set()


def coalescing_link(ms: float) -> tuple[Link, Journal, Any, Any]:
    from iot_guard.proxy.link import AgentProtocol, UpstreamProtocol

    link, journal = make_link()
    link.server.broker_read_pause_s = ms / 1000  # type: ignore[attr-defined]
    link = Link(link.session, link.server)  # reads the setting when it is made
    link.agent = PausableTransport("agent", journal)  # type: ignore[assignment]
    link.upstream = SignallingTransport("broker", journal)  # type: ignore[assignment]
    agent_side = AgentProtocol(link.server)  # type: ignore[arg-type]
    agent_side.link = link
    return link, journal, agent_side, UpstreamProtocol(link)


def test_a_large_broker_read_pauses_the_broker_until_the_guard_writes_to_it() -> None:
    from iot_guard.proxy.link import COALESCE_AFTER

    async def go() -> tuple[Journal, int]:
        link, journal, _, broker_side = coalescing_link(60_000)  # the timer never fires here
        broker_side.data_received(b"x" * (COALESCE_AFTER - 1))  # a few packets: read on
        journal.append(("-", "small read"))
        broker_side.data_received(b"x" * COALESCE_AFTER)  # a stream: pause
        broker_side.data_received(b"x" * COALESCE_AFTER)  # already paused: once is enough
        journal.append(("-", "large reads"))
        link.perform([SendToAgent(b"delivery")])  # the agent's side does not end it
        link.perform([SendToBroker(b"puback")])  # an ack or request: the answer must not wait
        link.perform([SendToBroker(b"again")])
        return journal, link.server.stats.broker_reads_coalesced

    journal, coalesced = run(go())
    assert journal == [
        ("-", "small read"), ("broker", "pause"), ("-", "large reads"),
        ("agent", b"delivery"), ("broker", b"puback"), ("broker", "resume"), ("broker", b"again"),
    ]
    assert coalesced == 1


def test_a_pause_ends_by_itself_after_read_coalesce_ms() -> None:
    from iot_guard.proxy.link import COALESCE_AFTER

    async def go() -> tuple[Journal, bool, bool]:
        link, journal, _, broker_side = coalescing_link(1)
        broker_side.data_received(b"x" * COALESCE_AFTER)
        paused = link.coalescing
        await asyncio.wait_for(link.upstream.resumed.wait(), 5)  # type: ignore[union-attr]
        return journal, paused, link.coalescing

    journal, paused, still = run(go())
    assert (paused, still) == (True, False)
    assert journal == [("broker", "pause"), ("broker", "resume")]


def test_zero_read_coalesce_ms_reads_at_once() -> None:
    async def go() -> tuple[Journal, int]:
        link, journal, _, broker_side = coalescing_link(0)
        broker_side.data_received(b"x" * 65536)
        return journal, link.server.stats.broker_reads_coalesced

    assert run(go()) == ([], 0)


def test_coalescing_and_backpressure_read_the_broker_again_only_when_both_are_over() -> None:
    from iot_guard.proxy.link import COALESCE_AFTER

    async def go() -> Journal:
        link, journal, agent_side, broker_side = coalescing_link(60_000)
        broker_side.data_received(b"x" * COALESCE_AFTER)
        agent_side.pause_writing()  # the agent falls behind while the broker is paused
        agent_side.resume_writing()  # it caught up, but the pause is not over
        journal.append(("-", "agent drained"))
        link.read_broker_again()  # the pause's timer: now read
        journal.append(("-", "pause over"))
        agent_side.pause_writing()  # slow again
        broker_side.data_received(b"x" * COALESCE_AFTER)  # a large read already queued
        link.perform([SendToBroker(b"puback")])  # nothing to end: backpressure holds
        agent_side.resume_writing()
        return journal

    assert run(go()) == [
        ("broker", "pause"),
        ("agent", "pause"), ("broker", "pause"),  # backpressure
        ("agent", "resume"), ("-", "agent drained"),
        ("broker", "resume"), ("-", "pause over"),
        ("agent", "pause"), ("broker", "pause"),
        ("broker", b"puback"),
        ("agent", "resume"), ("broker", "resume"),
    ]


def test_closing_a_link_cancels_its_pause() -> None:
    from iot_guard.proxy.link import COALESCE_AFTER

    async def go() -> tuple[Journal, bool, bool]:
        link, journal, _, broker_side = coalescing_link(60_000)
        broker_side.data_received(b"x" * COALESCE_AFTER)
        timer = link._coalescing
        assert timer is not None
        link.close("test over")
        return journal, link.coalescing, timer.cancelled()

    journal, coalescing, cancelled = run(go())
    assert journal == [("broker", "pause"), ("agent", "closed"), ("broker", "closed")]
    assert not coalescing and cancelled  # a closed link keeps no timer alive


def test_the_pause_ending_while_the_agent_is_slow_leaves_the_broker_unread() -> None:
    from iot_guard.proxy.link import COALESCE_AFTER

    async def go() -> Journal:
        link, journal, agent_side, broker_side = coalescing_link(60_000)
        broker_side.data_received(b"x" * COALESCE_AFTER)
        agent_side.pause_writing()  # the agent falls behind during the pause
        link.read_broker_again()  # the pause's timer: backpressure still holds
        journal.append(("-", "pause over"))
        agent_side.resume_writing()  # now both are over
        return journal

    # Reading the broker for an agent that does not read would grow memory without bound.
    assert run(go()) == [
        ("broker", "pause"), ("agent", "pause"), ("broker", "pause"), ("-", "pause over"),
        ("agent", "resume"), ("broker", "resume"),
    ]


def test_a_broker_opened_while_the_agent_is_slow_is_not_read() -> None:
    from iot_guard.proxy.link import AgentProtocol

    async def go() -> tuple[Journal, bool]:
        link, journal = make_link()
        link.agent = PausableTransport("agent", journal)  # type: ignore[assignment]
        link.upstream = None
        agent_side = AgentProtocol(link.server)  # type: ignore[arg-type]
        agent_side.link = link
        agent_side.pause_writing()  # no broker yet to stop reading
        link.upstream_opened(PausableTransport("broker", journal), b"connect")  # type: ignore[arg-type]
        backpressured = link.backpressured
        agent_side.resume_writing()
        return journal, backpressured

    journal, backpressured = run(go())
    assert backpressured
    assert journal == [
        ("agent", "pause"), ("broker", "pause"), ("broker", b"connect"),
        ("agent", "resume"), ("broker", "resume"),
    ]


@pytest.mark.parametrize(("upstream_tls", "pause_s"), [(False, 0.001), (True, 0.0)])
def test_broker_reads_are_coalesced_over_plain_tcp_only(
    tmp_path: Any, upstream_tls: bool, pause_s: float
) -> None:
    """Over TLS the socket is read anyway, and uvloop's TLS transport drops what it holds
    for a paused reader when the broker closes: the broker's last packets would be lost."""
    from pathlib import Path

    from iot_guard.proxy.server import GuardConfig, GuardServer

    config = GuardConfig(
        policy_dir=Path(__file__).parents[2] / "device_policies", secret=b"s" * 32,
        audit_path=tmp_path / "audit.jsonl", upstream_tls=upstream_tls,
    )
    server = GuardServer(config)
    try:
        assert server.broker_read_pause_s == pause_s
    finally:
        server.audit.close()


# ------------------------------------------------------------ a session ended while connecting

async def _what_the_broker_gets(end: Any) -> tuple[list[str], bool]:
    """A real session on a link whose broker is a local listener: CONNECT and a publish
    are judged, then ``end(link)`` runs before the broker connection can open. Returns
    the packets the broker read, and whether the connect task is gone."""
    from iot_guard.mqtt import Publish, StreamParser, encode
    from iot_guard.session import AgentData, AgentOpened, GuardSession
    from tests.unit.test_session import POLICY, SETTINGS, connect_bytes

    got = bytearray()
    done = asyncio.Event()

    class Broker(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.extend(data)

        def connection_lost(self, exc: Exception | None) -> None:
            done.set()

    listener = await asyncio.get_running_loop().create_server(Broker, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        journal = Journal()
        server = FakeServer(FakeAudit(journal), Hooks(()), [])
        server.config = SimpleNamespace(  # type: ignore[attr-defined]
            upstream_host="127.0.0.1", upstream_port=port, connect_timeout=5.0)
        server.upstream_ssl = None  # type: ignore[attr-defined]
        server.audit.write_many = lambda records: None  # type: ignore[method-assign]
        link = Link(GuardSession(POLICY, SETTINGS, "s-1"), server)  # type: ignore[arg-type]
        link.agent = PausableTransport("agent", journal)  # type: ignore[assignment]
        link.feed(AgentOpened("127.0.0.1:1"))
        link.feed(AgentData(connect_bytes() + encode(
            Publish("tenants/acme/devices/therm-001/shadow/get", b""), 5)))
        end(link)
        opening = link._opening
        if opening is not None:
            await asyncio.wait_for(done.wait(), 5)  # delivered, then closed
        else:
            await asyncio.sleep(0)  # a cancelled task has nothing left to run
        packets = StreamParser(side="server").feed(bytes(got)) if got else []
        return [type(p).__name__ for p in packets], link._opening is None
    finally:
        listener.close()


def test_a_session_the_guard_ends_while_connecting_sends_the_broker_nothing() -> None:
    from iot_guard.session import Kick

    # A kill switch (or revocation, refusal, shutdown) while the broker is being reached.
    got, gone = run(_what_the_broker_gets(lambda link: link.feed(Kick(0x98, "kill switch"))))
    assert got == [] and gone


def test_an_agent_that_ends_its_session_while_connecting_is_owed_what_it_sent() -> None:
    from iot_guard.session import AgentClosed

    got, gone = run(_what_the_broker_gets(lambda link: link.feed(AgentClosed())))
    assert got == ["Connect", "Publish"] and gone


# ------------------------------------------------------------ reads kept while connecting


class JournalledSession(Recorder):
    """A session stand-in that writes what it is fed into the link's journal."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def handle(self, event: object, now: float) -> list[object]:
        self.journal.append(("session", getattr(event, "data", type(event).__name__)))
        return super().handle(event, now)


def test_reads_kept_while_the_broker_is_reached_reach_the_session_after_the_connect() -> None:
    from iot_guard.proxy.link import HELD_READS_LIMIT, AgentProtocol

    async def go() -> Journal:
        link, journal = make_link()
        link = Link(JournalledSession(journal), link.server)  # type: ignore[arg-type]
        link.agent = PausableTransport("agent", journal)  # type: ignore[assignment]
        agent_side = AgentProtocol(link.server)  # type: ignore[arg-type]
        agent_side.link = link
        link._held_reads = bytearray()  # as _open_upstream leaves it: the broker is reached
        half = b"p" * (HELD_READS_LIMIT // 2)
        agent_side.data_received(half)
        agent_side.data_received(half[:-1])  # one byte short of the limit: read on
        journal.append(("-", "full"))
        agent_side.data_received(b"qq")  # at the limit: the agent waits for the broker
        assert link.holding_reads
        link.upstream_opened(PausableTransport("broker", journal), b"c")  # type: ignore[arg-type]
        assert not link.holding_reads
        agent_side.data_received(b"r")  # read on, straight to the session
        return journal

    # The session saw nothing while the broker was reached and nothing was paused until
    # the limit; then the CONNECT, the kept reads in order (one event), and reads again.
    assert run(go()) == [
        ("-", "full"), ("agent", "pause"),
        ("broker", b"c"), ("session", b"p" * (HELD_READS_LIMIT - 1) + b"qq"),
        ("agent", "resume"), ("session", b"r"),
    ]


def test_an_agent_that_sends_and_closes_while_the_broker_is_reached_is_never_paused() -> None:
    """What the agent sends after its CONNECT, while the broker is reached, is kept, not
    left to a paused transport: a TLS transport drops what it holds for a paused reader
    when the peer closes (the old link paused here). The kept reads are judged when the
    agent closes, and reach the broker after the CONNECT."""
    from iot_guard.mqtt import Disconnect, Publish, encode
    from iot_guard.proxy.link import AgentProtocol

    def send_more_and_close(link: Link) -> None:
        agent_side = AgentProtocol(link.server)
        agent_side.link = link
        assert link.holding_reads
        agent_side.data_received(
            encode(Publish("tenants/acme/devices/therm-002/shadow/get", b""), 5)
            + encode(Disconnect(0), 5))
        agent_side.connection_lost(None)
        paused.extend(e for e in link.agent.journal if e == ("agent", "pause"))  # type: ignore[union-attr]

    paused: list[object] = []
    got, gone = run(_what_the_broker_gets(send_more_and_close))
    assert got == ["Connect", "Publish", "Publish", "Disconnect"] and gone
    assert paused == []


def test_an_agent_that_breaks_the_protocol_while_connecting_is_owed_what_came_before() -> None:
    """Kept reads judged when the agent closes: an allowed publish, then one with a topic
    alias (a protocol error). The publishes the guard accepted (and audited) reach the
    broker after the CONNECT, as a broker reached directly would have read them; the
    aliased one does not."""
    from iot_guard.mqtt import PropertyId, Publish, encode
    from iot_guard.proxy.link import AgentProtocol

    def send_bad_and_close(link: Link) -> None:
        agent_side = AgentProtocol(link.server)
        agent_side.link = link
        agent_side.data_received(
            encode(Publish("tenants/acme/devices/therm-002/shadow/get", b""), 5)
            + encode(Publish("tenants/acme/devices/therm-003/shadow/get", b"",
                             properties={PropertyId.TOPIC_ALIAS: 1}), 5))
        agent_side.connection_lost(None)

    got, gone = run(_what_the_broker_gets(send_bad_and_close))
    assert got == ["Connect", "Publish", "Publish"] and gone
