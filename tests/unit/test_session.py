"""The sans-IO guard session as playbooks: events in, the exact commands out, no network.

How to add one: build a session (``fresh()`` or ``connected()``), then write what
happens and what the session must answer, command by command (see ``playbook.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.audit.records import GENESIS, record_line, utc_iso
from iot_guard.checks import Request
from iot_guard.mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PropertyId,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamParser,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.session import (
    AgentClosed,
    AgentData,
    AgentOpened,
    BrokerClosed,
    BrokerData,
    BrokerUnreachable,
    CancelTimer,
    Close,
    GuardNotice,
    GuardSession,
    GuardSubscribed,
    HoldResolved,
    Kick,
    OpenUpstream,
    PolicySwapped,
    SendToAgent,
    SendToBroker,
    SessionSettings,
    SetTimer,
    StartHold,
    State,
    TimerFired,
    WriteAudit,
)
from iot_guard.session.state import SessionStateError, Trigger, next_state
from iot_guard.tokens import issue_token

from .playbook import ANY, NOW, Playbook, audit

SECRET = b"unit-test-secret-unit-test-secret-0123"
POLICY_DIR = Path(__file__).parents[2] / "device_policies"
POLICY = CompiledPolicy.load(POLICY_DIR)
SETTINGS = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                           upstream_password=b"broker-pw", max_packet_size=64 * 1024)
HOLDING = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                          upstream_password=b"broker-pw", max_packet_size=64 * 1024, holds=True)
TELEMETRY = "tenants/acme/devices/therm-001/telemetry"
SHADOW_UPDATE = "tenants/acme/devices/therm-001/shadow/update"
FOREIGN_UPDATE = "tenants/globex/devices/therm-101/shadow/update"
GROUP_PUSH = "tenants/acme/groups/floor-1/config/push"
GOOD_SHADOW = b'{"state":{"desired":{"target_temp_c":21}}}'
PEER = "127.0.0.1:5000"


def token(agent: str = "ops-agent", **kw: object) -> bytes:
    return issue_token(SECRET, agent, now=NOW, **kw).encode()  # type: ignore[arg-type]


def fresh(settings: SessionSettings = SETTINGS, **kw: object) -> GuardSession:
    session = GuardSession(POLICY, settings, "s-1", **kw)  # type: ignore[arg-type]
    assert (
        Playbook(session)
        >> AgentOpened(PEER)
        << SetTimer("connect", NOW + settings.connect_timeout)
    )
    return session


def connect_bytes(level: int = 5, agent: str = "ops-agent", client_id: str = "agent-1",
                  **kw: object) -> bytes:
    kw.setdefault("password", token(agent))
    return encode(Connect(client_id=client_id, protocol_level=level, username=agent,
                          **kw), level)  # type: ignore[arg-type]


def connected(level: int = 5, settings: SessionSettings = SETTINGS,
              broker_connack: Connack | None = None, **connect_kw: object) -> GuardSession:
    session = fresh(settings, **{k: connect_kw.pop(k) for k in ("pipeline",) if k in connect_kw})
    commands = session.handle(AgentData(connect_bytes(level, **connect_kw)), NOW)
    assert [type(c) for c in commands][-3:] == [OpenUpstream, SetTimer, SetTimer], commands
    # The broker has connect_timeout to answer the guard's CONNECT.
    assert commands[-2] == SetTimer("connack", NOW + settings.connect_timeout)
    session.handle(BrokerData(encode(broker_connack or Connack(), level)), NOW)
    assert session.state is State.CONNECTED
    return session


def to_agent(packet: object, level: int = 5) -> SendToAgent:
    return SendToAgent(encode(packet, level))  # type: ignore[arg-type]


def to_broker(packet: object, level: int = 5) -> SendToBroker:
    return SendToBroker(encode(packet, level))  # type: ignore[arg-type]


def sent_to_agent(commands: list, level: int = 5) -> list:
    data = b"".join(c.data for c in commands if isinstance(c, SendToAgent))
    parser = StreamParser(side="client", protocol_level=level)
    if data and data[0] >> 4 != 2:
        parser.feed(encode(Connack(), level))  # the session is past its CONNACK
    return parser.feed(data)


class Refuse:
    """A check that objects to everything of its kinds."""

    def __init__(self, kinds: set[str], verdict: Verdict = Verdict.DENY, code: int = 0x96,
                 enforce: bool = True, name: str = "test-limit") -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self.enforce = enforce
        self.verdict = verdict
        self.code = code
        self.seen: list[Request] = []

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        self.seen.append(request)
        return Decision(self.verdict, f"{self.name} says no", self.code, "write",
                        rule=f"check {self.name}")


# --------------------------------------------------------------------------- state table


def test_every_transition_comes_from_the_table() -> None:
    assert next_state(State.AWAITING_CONNECT, Trigger.CONNECT_ACCEPTED) is State.CONNECTING
    assert next_state(State.CONNECTING, Trigger.CONNACK_ACCEPTED) is State.CONNECTED
    for state in State:
        assert next_state(state, Trigger.CLOSE) is State.CLOSED
    with pytest.raises(SessionStateError):
        next_state(State.CLOSED, Trigger.CONNECT_ACCEPTED)  # a closed session never reopens


# --------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("level", [4, 5])
def test_connect_is_rewritten_with_guard_credentials_and_namespaced_client_id(level: int) -> None:
    session = fresh()
    properties = {PropertyId.TOPIC_ALIAS_MAXIMUM: 10} if level == 5 else {}
    upstream = Connect(client_id="iotguard:ops-agent:acme-therm-001", protocol_level=level,
                       username="iot-guard", password=b"broker-pw")
    assert (
        Playbook(session)
        >> AgentData(connect_bytes(level, client_id="acme-therm-001", properties=properties))
        << CancelTimer("connect")
        # The agent can never present a device's client id to the broker; no alias maximum.
        << OpenUpstream(encode(upstream, level))
        << SetTimer("connack", NOW + 10)
        << SetTimer("token-expiry", NOW + 900)
        >> BrokerData(encode(Connack(), level))
        << CancelTimer("connack")
        << audit(packet="connect", result_status="success", agent_id="ops-agent")
        << (ANY if level == 5 else to_agent(Connack(), level))
    )
    assert session.state is State.CONNECTED


@pytest.mark.parametrize(
    ("level", "password", "username", "code"),
    [
        (5, b"not-a-token", "ops-agent", 0x86),
        (4, b"not-a-token", "ops-agent", 0x04),
        (5, None, "globex-agent", 0x86),  # token of ops-agent presented as globex-agent
        (4, None, "globex-agent", 0x04),
    ],
)
def test_bad_tokens_are_refused_and_the_audit_carries_the_code_sent(
    level: int, password: bytes | None, username: str, code: int
) -> None:
    session = fresh()
    commands = session.handle(AgentData(connect_bytes(
        level, agent=username, password=password or token("ops-agent"))), NOW)
    assert commands[0] == CancelTimer("connect")
    assert commands[1] == audit(packet="connect", result_status="denied", reason_code=0x86)
    (connack,) = sent_to_agent(commands, level)
    assert connack.reason_code == code
    assert isinstance(commands[-1], Close) and not any(
        isinstance(c, OpenUpstream) for c in commands)


def test_expired_and_foreign_tokens_are_refused() -> None:
    expired = issue_token(SECRET, "ops-agent", ttl_s=10, now=NOW - 100).encode()
    forged = issue_token(b"another-secret-another-secret-012345", "ops-agent", now=NOW).encode()
    for password in (expired, forged):
        session = fresh()
        (connack,) = sent_to_agent(session.handle(AgentData(connect_bytes(password=password)),
                                                  NOW))
        assert connack.reason_code == 0x86
        assert "token" in connack.properties[PropertyId.REASON_STRING]


def test_a_token_minted_for_longer_than_the_agents_maximum_is_refused_at_connect() -> None:
    limit = POLICY.document.agents["ops-agent"].max_token_ttl_s
    session = fresh()
    long_lived = token(ttl_s=limit + 60)
    (connack,) = sent_to_agent(session.handle(AgentData(connect_bytes(password=long_lived)),
                                              NOW))
    assert connack.reason_code == 0x86
    assert "maximum" in connack.properties[PropertyId.REASON_STRING]
    ok = fresh()
    assert any(isinstance(c, OpenUpstream) for c in ok.handle(
        AgentData(connect_bytes(password=token(ttl_s=limit))), NOW))


@pytest.mark.parametrize(("level", "code"), [(5, 0x87), (4, 0x05)])
def test_unknown_agent_with_a_valid_token_is_not_authorized(level: int, code: int) -> None:
    session = fresh()
    commands = session.handle(AgentData(connect_bytes(level, agent="intruder")), NOW)
    (connack,) = sent_to_agent(commands, level)
    assert connack.reason_code == code
    assert commands[1] == audit(reason_code=0x87)  # the v5 code: one vocabulary in the log


def test_will_is_authorized_like_a_publish() -> None:
    session = fresh()
    will = Will(topic="tenants/acme/devices/therm-001/commands/reboot", payload=b'{"delay_s":0}')
    commands = session.handle(AgentData(connect_bytes(will=will)), NOW)
    (connack,) = sent_to_agent(commands)
    assert connack.reason_code == 0x87
    assert "will" in connack.properties[PropertyId.REASON_STRING]
    assert not any(isinstance(c, OpenUpstream) for c in commands)


def test_a_will_with_an_invalid_payload_gets_the_payload_code() -> None:
    session = fresh()
    will = Will(topic=SHADOW_UPDATE, payload=b'{"state":{"desired":{"target_temp_c":45}}}')
    (connack,) = sent_to_agent(session.handle(AgentData(connect_bytes(will=will)), NOW))
    assert connack.reason_code == 0x99  # payload format invalid, as a PUBACK would say
    assert "target_temp_c" in connack.properties[PropertyId.REASON_STRING]


def test_garbage_before_connect_closes_without_forwarding() -> None:
    session = fresh()
    assert (
        Playbook(session)
        >> AgentData(b"GET / HTTP/1.1\r\n\r\n")
        << audit(packet="protocol", result_status="error")
        << Close(ANY)
    )


def test_v5_connack_advertises_no_topic_aliases_and_the_guards_packet_limit() -> None:
    session = fresh()
    session.handle(AgentData(connect_bytes()), NOW)
    broker_connack = Connack(properties={PropertyId.TOPIC_ALIAS_MAXIMUM: 65535})
    (connack,) = sent_to_agent(session.handle(BrokerData(encode(broker_connack, 5)), NOW))
    assert connack.reason_code == 0
    assert PropertyId.TOPIC_ALIAS_MAXIMUM not in connack.properties
    assert connack.properties[PropertyId.MAXIMUM_PACKET_SIZE] == 64 * 1024
    assert PropertyId.ASSIGNED_CLIENT_IDENTIFIER not in connack.properties  # it chose one


def test_v5_empty_client_id_gets_the_id_the_guard_assigned() -> None:
    session = fresh()
    commands = session.handle(AgentData(connect_bytes(client_id="")), NOW)
    (upstream,) = StreamParser(side="server").feed(
        next(c for c in commands if isinstance(c, OpenUpstream)).connect)
    assert upstream.client_id == "iotguard:ops-agent:s-1"
    (connack,) = sent_to_agent(session.handle(BrokerData(encode(Connack(), 5)), NOW))
    # [MQTT-3.2.2-16]: the client must learn its id to ever resume that session.
    assert connack.properties[PropertyId.ASSIGNED_CLIENT_IDENTIFIER] == "s-1"


def test_v3_empty_client_id_with_a_persistent_session_is_rejected() -> None:
    session = fresh()
    commands = session.handle(AgentData(connect_bytes(4, client_id="", clean_start=False)), NOW)
    (connack,) = sent_to_agent(commands, 4)
    assert connack.reason_code == 0x02  # identifier rejected [MQTT-3.1.3-8]
    assert not any(isinstance(c, OpenUpstream) for c in commands)
    ok = fresh()
    assert any(isinstance(c, OpenUpstream)
               for c in ok.handle(AgentData(connect_bytes(4, client_id="")), NOW))


def test_connect_checks_run_after_the_token_and_can_refuse() -> None:
    from iot_guard.checks import Pipeline

    banned = Refuse({"connect"}, code=0x8A, name="kill-switch")
    session = fresh(pipeline=Pipeline([banned]))
    commands = session.handle(AgentData(connect_bytes()), NOW)
    (connack,) = sent_to_agent(commands)
    assert connack.reason_code == 0x8A
    assert "kill-switch says no" in connack.properties[PropertyId.REASON_STRING]
    (request,) = banned.seen
    assert (request.kind, request.agent_id, request.topic) == ("connect", "ops-agent", PEER)
    assert request.issued_at == NOW


# --------------------------------------------------------------------------- timers


def test_no_connect_in_time_closes_on_the_sessions_own_timer() -> None:
    session = fresh()
    assert (
        Playbook(session)
        >> TimerFired("connect")
        << Close("no CONNECT in time")
    )


def test_a_stale_timer_after_connect_does_nothing() -> None:
    session = connected()
    assert Playbook(session) >> TimerFired("connect")  # no command at all


@pytest.mark.parametrize(("level", "code"), [(5, 0x88), (4, 0x03)])
def test_a_broker_that_never_answers_the_connect_is_unavailable_to_the_agent(
    level: int, code: int
) -> None:
    # The broker took the TCP connection and the CONNECT, and said nothing: without a
    # timer of the session's own the agent would wait for a CONNACK that never comes.
    session = fresh()
    session.handle(AgentData(connect_bytes(level)), NOW)
    assert session.state is State.CONNECTING
    reason = "upstream broker did not accept the session within 10 s"
    assert (
        Playbook(session).at(NOW + 10)
        >> TimerFired("connack")
        # A broker that was only slow must not act on a session the agent was told never
        # started (no will): a normal DISCONNECT follows the CONNECT (here, the backlog).
        << to_broker(Disconnect(0), level)
        << audit(packet="connect", result_status="denied", reason_code=0x88, reason=reason)
        << to_agent(Connack(reason_code=0x88, properties={PropertyId.REASON_STRING: reason}),
                    level)
        << Close(reason)
    )
    assert session.state is State.CLOSED
    # What the agent reads: 0x88 in MQTT 5, return code 3 (server unavailable) in 3.1.1.
    assert encode(Connack(reason_code=0x88), level)[-1 if level == 4 else 3] == code


def test_a_connack_timer_after_the_connack_does_nothing() -> None:
    # The session cancelled it when the CONNACK came; one the proxy delivers late is stale.
    session = connected()
    assert Playbook(session).at(NOW + 10) >> TimerFired("connack")
    assert session.state is State.CONNECTED


def test_token_expiry_disconnects_with_maximum_connect_time() -> None:
    session = connected()
    assert (
        Playbook(session).at(NOW + 901)
        >> TimerFired("token-expiry")
        << audit(packet="disconnect", result_status="denied", reason_code=0xA0)
        << to_agent(Disconnect(0xA0, {PropertyId.REASON_STRING:
                                      "token expired: reconnect with a fresh token"}))
        << Close(ANY)
    )


# --------------------------------------------------------------------------- PUBLISH


def test_allowed_publish_is_forwarded_as_the_original_bytes_after_its_audit() -> None:
    session = connected()
    raw = encode(Publish(SHADOW_UPDATE, GOOD_SHADOW, qos=1, packet_id=7), 5)
    playbook = (
        Playbook(session)
        >> AgentData(raw)
        << audit(result_status="success", tool_name="shadow_update",
                 resource_id="acme/therm-001")
        << SendToBroker(raw)
    )
    assert playbook
    line = record_line(0, GENESIS, playbook.actual[0][0].record)  # what the log gets
    assert b"target_temp_c" not in line  # never the payload raw


def test_refused_publish_v5_gets_reason_code_and_reason_string() -> None:
    session = connected()
    raw = encode(Publish(FOREIGN_UPDATE, b'{"state":{"desired":{"mode":"heat"}}}', qos=1,
                         packet_id=9), 5)
    commands = session.handle(AgentData(raw), NOW)
    assert not any(isinstance(c, SendToBroker) for c in commands)
    (ack,) = sent_to_agent(commands)
    assert isinstance(ack, PubAck) and ack.packet_id == 9 and ack.reason_code == 0x87
    assert ack.properties[PropertyId.REASON_STRING]


@pytest.mark.parametrize("level", [5, 4])
def test_answers_to_packets_sent_before_the_connack_follow_it(level: int) -> None:
    """A client may publish right after its CONNECT (section 3.1.4); the guard's own answer
    to a refused publish must still come after the CONNACK [MQTT-3.2.0-1]."""
    session = fresh()
    refused = encode(Publish(FOREIGN_UPDATE, b"{}", qos=1, packet_id=9), level)
    commands = session.handle(AgentData(connect_bytes(level) + refused), NOW)
    assert not any(isinstance(c, SendToAgent) for c in commands)  # held for the CONNACK
    assert session.state is State.CONNECTING
    commands = session.handle(BrokerData(encode(Connack(), level)), NOW)
    data = b"".join(c.data for c in commands if isinstance(c, SendToAgent))
    connack, ack = StreamParser(side="client", protocol_level=level).feed(data)
    assert isinstance(connack, Connack) and connack.reason_code == 0
    # (3.1.1 has no reason codes: the refused publish is acked and dropped.)
    assert isinstance(ack, PubAck) and ack.packet_id == 9
    assert ack.reason_code == (0x87 if level == 5 else 0)
    # Once connected, answers go out at once again.
    again = encode(Publish(FOREIGN_UPDATE, b"{}", qos=1, packet_id=10), level)
    (ack,) = sent_to_agent(session.handle(AgentData(again), NOW), level)
    assert ack.packet_id == 10


def test_answers_held_for_a_connack_that_refuses_are_never_sent() -> None:
    session = fresh()
    refused = encode(Publish(FOREIGN_UPDATE, b"{}", qos=1, packet_id=9), 5)
    commands = session.handle(AgentData(connect_bytes() + refused), NOW)
    assert not any(isinstance(c, SendToAgent) for c in commands)
    commands = session.handle(BrokerData(encode(Connack(reason_code=0x86), 5)), NOW)
    (connack,) = StreamParser(side="client", protocol_level=5).feed(
        b"".join(c.data for c in commands if isinstance(c, SendToAgent)))
    assert isinstance(connack, Connack) and connack.reason_code == 0x88  # server unavailable
    assert any(isinstance(c, Close) for c in commands)


@pytest.mark.parametrize("events", [False, True])
def test_a_flood_of_refusals_before_the_connack_ends_the_connection(events: bool) -> None:
    """Each held answer costs memory until the CONNACK (and a refusal sends nothing to
    the broker, so no backlog bound applies): past the limit the guard closes."""
    from iot_guard.session.session import BEFORE_CONNACK_LIMIT

    session = fresh()
    refused = encode(Publish(FOREIGN_UPDATE, b"{}", qos=1, packet_id=9), 5)
    commands = session.handle(AgentData(connect_bytes()), NOW)
    if events:  # each refusal then also holds an event: the bound is passed mid-refusal
        session.handle(AgentData(encode(Subscribe(1, [Subscription("$guard/events")]), 5)), NOW)
    sent = 0
    while session.state is State.CONNECTING:
        commands = session.handle(AgentData(refused * 100), NOW)
        sent += 100
        assert sent < BEFORE_CONNACK_LIMIT  # every refusal answer is bigger than a byte
    # The agent learns why, in the one packet it may get first: a CONNACK, 0x97; audited.
    (connack,) = sent_to_agent(commands)
    assert isinstance(connack, Connack) and connack.reason_code == 0x97
    assert "held for the CONNACK" in connack.properties[PropertyId.REASON_STRING]
    assert audit(packet="connect", result_status="denied", reason_code=0x97) in commands
    # Nothing after the Close (the read's other refusals are not answered).
    assert isinstance(commands[-1], Close) and "held for the CONNACK" in commands[-1].reason
    # The agent's own doing: what the guard accepted before still reaches the broker.
    assert commands[-1].agent_ended


def test_a_protocol_error_before_the_connack_is_answered_with_a_connack() -> None:
    """A session the guard ends before the broker's CONNACK ends with a CONNACK that
    refuses [MQTT-3.2.0-1]: before, the agent's connection closed with no packet at all
    (its DISCONNECT was held for a CONNACK that never came)."""
    session = fresh()
    aliased = encode(Publish(FOREIGN_UPDATE, b"{}", properties={PropertyId.TOPIC_ALIAS: 1}), 5)
    commands = session.handle(AgentData(connect_bytes() + aliased), NOW)
    # A DISCONNECT-only code (0x94) becomes the CONNACK's protocol error; the reason says which.
    (connack,) = sent_to_agent(commands)
    assert isinstance(connack, Connack) and connack.reason_code == 0x82
    assert "topic aliases" in connack.properties[PropertyId.REASON_STRING]
    # Audited with the code the agent got.
    assert audit(packet="publish", result_status="denied", reason_code=0x82) in commands
    assert isinstance(commands[-1], Close) and session.state is State.CLOSED
    # The agent broke the protocol: what the guard accepted before it is still owed
    # to the broker, as a broker reached directly would have read it.
    assert commands[-1].agent_ended
    # The broker's CONNACK, should it still arrive, changes nothing.
    assert Playbook(session) >> BrokerData(encode(Connack(), 5))


@pytest.mark.parametrize(("level", "code", "audited", "answered"), [
    (5, 0x98, 0x80, b"\x80"),  # administrative action: no CONNACK code, so unspecified error
    (5, 0x87, 0x87, b"\x87"),
    (5, 0x8B, 0x88, b"\x88"),  # the guard shutting down: server unavailable
    (4, 0x98, 0x80, b""),  # 3.1.1 has no return code for it: the connection just closes
    (4, 0x87, 0x87, b"\x05"),  # not authorized
    (4, 0x8B, 0x88, b"\x03"),  # server unavailable
])
def test_a_kick_before_the_connack_is_a_refusing_connack_and_audited_as_sent(
    level: int, code: int, audited: int, answered: bytes
) -> None:
    session = fresh()
    session.handle(AgentData(connect_bytes(level)), NOW)
    commands = session.handle(Kick(code, "revoked by alice"), NOW)
    assert commands[0] == audit(packet="disconnect", result_status="denied",
                                reason_code=audited)
    sent = b"".join(c.data for c in commands if isinstance(c, SendToAgent))
    assert sent[:1] == (b"\x20" if answered else b"")  # a CONNACK, or nothing
    assert sent[3:4] == answered, sent  # its reason (5) or return code (3.1.1)
    assert isinstance(commands[-1], Close) and session.state is State.CLOSED


def test_a_publish_needing_approval_before_the_connack_is_parked_once_it_accepts() -> None:
    """A hold outlives its packet and the broker may still refuse the session: a hold
    asked for before the CONNACK starts after a CONNACK that accepts, and its answer
    (0x83, held) follows the CONNACK like every answer."""
    session = fresh(HOLDING)
    push = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    commands = session.handle(AgentData(connect_bytes() + push), NOW)
    assert not any(isinstance(c, (StartHold, SendToBroker, SendToAgent)) for c in commands)
    assert audit(decision="hold", reason_code=0x83, note="approval request s-1.1") in commands
    commands = session.handle(BrokerData(encode(Connack(), 5)), NOW)
    connack, ack = sent_to_agent(commands)
    assert isinstance(connack, Connack) and connack.reason_code == 0
    assert isinstance(ack, PubAck) and ack.reason_code == 0x83
    (hold,) = [c for c in commands if isinstance(c, StartHold)]
    assert hold.held.hold_id == "s-1.1" and commands[-1] is hold  # after the answers


@pytest.mark.parametrize("end", ["refused", "kick"])
def test_a_hold_asked_for_before_a_connack_that_never_accepts_is_withdrawn(end: str) -> None:
    session = fresh(HOLDING)
    push = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    session.handle(AgentData(connect_bytes() + push), NOW)
    event = {"refused": BrokerData(encode(Connack(reason_code=0x86), 5)),
             "kick": Kick(0x98, "kill switch")}[end]
    commands = session.handle(event, NOW + 1)
    assert not any(isinstance(c, StartHold) for c in commands)
    # Audited as withdrawn (at the time of the event that ended it), before the Close;
    # the agent never got its 0x83.
    (withdrawn,) = [c for c in commands if isinstance(c, WriteAudit)
                    and "withdrawn" in str(c.record.get("reason"))]
    assert withdrawn.record["decision"] == "deny"
    assert withdrawn.record["note"] == "approval request s-1.1"
    assert withdrawn.record["timestamp"] == utc_iso(NOW + 1)
    assert commands.index(withdrawn) < len(commands) - 1 and isinstance(commands[-1], Close)
    assert not any(isinstance(p, PubAck) for p in sent_to_agent(commands))
    assert session.state is State.CLOSED


@pytest.mark.parametrize("end", ["disconnect", "closed"])
def test_a_hold_asked_for_before_the_agent_ends_its_own_session_still_starts(end: str) -> None:
    """A fire-and-forget agent: CONNECT, a publish needing approval, DISCONNECT (or just
    closing), without waiting. Its CONNECT and packets still reach the broker, and a
    hold outlives the session once connected too: the hold starts, before the Close."""
    session = fresh(HOLDING)
    push = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=0), 5)
    commands = session.handle(AgentData(connect_bytes() + push), NOW)
    if end == "disconnect":
        commands += session.handle(AgentData(encode(Disconnect(0), 5)), NOW)
    else:
        commands += session.handle(AgentClosed(), NOW)
    (hold,) = [c for c in commands if isinstance(c, StartHold)]
    assert hold.held.hold_id == "s-1.1"
    assert commands.index(hold) == len(commands) - 2 and commands[-1].agent_ended
    assert not any("withdrawn" in str(getattr(c, "record", {}).get("reason")) for c in commands)


def test_a_hold_started_at_the_connack_is_not_withdrawn_later() -> None:
    session = fresh(HOLDING)
    push = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    session.handle(AgentData(connect_bytes() + push), NOW)
    started = session.handle(BrokerData(encode(Connack(), 5)), NOW)
    assert sum(isinstance(c, StartHold) for c in started) == 1
    ended = session.handle(Kick(0x98, "kill switch"), NOW + 1)
    assert not any(isinstance(c, StartHold) for c in ended)
    assert not any("withdrawn" in str(getattr(c, "record", {}).get("reason")) for c in ended)


def test_invalid_payload_is_refused_with_0x99_naming_the_field() -> None:
    session = connected()
    raw = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"target_temp_c":45}}}', qos=1,
                         packet_id=3), 5)
    (ack,) = sent_to_agent(session.handle(AgentData(raw), NOW))
    assert ack.reason_code == 0x99
    assert "target_temp_c" in ack.properties[PropertyId.REASON_STRING]


def test_reason_string_is_left_out_when_the_client_asks_for_no_problem_information() -> None:
    session = connected(properties={PropertyId.REQUEST_PROBLEM_INFORMATION: 0})
    raw = encode(Publish("tenants/globex/x", b"", qos=1, packet_id=2), 5)
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(decision="deny")
        << to_agent(PubAck(2, 0x87))
    )


def test_refused_qos2_publish_completes_the_handshake_locally_in_v3() -> None:
    session = connected(level=4)
    raw = encode(Publish("tenants/globex/x", b"1", qos=2, packet_id=5), 4)
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(decision="deny")
        << to_agent(PubRec(5), 4)
        >> AgentData(encode(PubRel(5), 4))
        << to_agent(PubComp(5), 4)  # the broker never heard of packet 5
    )


def test_v5_qos2_id_reused_after_a_refusal_reaches_the_broker_whole() -> None:
    # A PUBREC >= 0x80 ends the flow and frees the id [MQTT-4.3.3]: the client may reuse it
    # for an allowed publish, whose PUBREL the broker must get, or the message is lost.
    session = connected()
    refused = encode(Publish(FOREIGN_UPDATE, GOOD_SHADOW, qos=2, packet_id=5), 5)
    allowed = encode(Publish("tenants/acme/devices/therm-001/config/patch",
                             b'{"target_temp_c":20}', qos=2, packet_id=5), 5)
    commands = session.handle(AgentData(refused), NOW)
    (rec,) = sent_to_agent(commands)
    assert isinstance(rec, PubRec) and rec.reason_code == 0x87
    assert (
        Playbook(session)
        >> AgentData(allowed)
        << audit(decision="allow")
        << SendToBroker(allowed)
        >> AgentData(encode(PubRel(5), 5))
        << to_broker(PubRel(5))
    )


def test_topic_alias_disconnects_with_0x94() -> None:
    session = connected()
    raw = encode(Publish(TELEMETRY, b"x", properties={PropertyId.TOPIC_ALIAS: 1}), 5)
    commands = session.handle(AgentData(raw), NOW)
    (disconnect,) = sent_to_agent(commands)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94
    assert isinstance(commands[-1], Close)
    assert not any(isinstance(c, SendToBroker) for c in commands)


def test_response_topic_must_be_receivable() -> None:
    session = connected()
    payload = b'{"state":{"desired":{"mode":"heat"}}}'
    bad = Publish(SHADOW_UPDATE, payload, qos=1, packet_id=4,
                  properties={PropertyId.RESPONSE_TOPIC: "tenants/globex/devices/therm-101/x"})
    (ack,) = sent_to_agent(session.handle(AgentData(encode(bad, 5)), NOW))
    assert ack.reason_code == 0x87
    good = Publish(SHADOW_UPDATE, payload, qos=1, packet_id=5, properties={
        PropertyId.RESPONSE_TOPIC: "tenants/acme/devices/therm-001/shadow/update/accepted"})
    assert any(isinstance(c, SendToBroker)
               for c in session.handle(AgentData(encode(good, 5)), NOW))


def test_protocol_error_after_connect_disconnects_v5_with_reason() -> None:
    session = connected()
    # PUBLISH with QoS 3 [MQTT-3.3.1-4]
    commands = session.handle(AgentData(bytes([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])), NOW)
    (disconnect,) = sent_to_agent(commands)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code >= 0x80
    assert not any(isinstance(c, SendToBroker) for c in commands)


def test_a_publish_above_the_brokers_maximum_packet_size_is_a_protocol_error() -> None:
    # The guard advertises the smaller limit, and enforces what it advertised [MQTT-3.2.2-15].
    session = connected(broker_connack=Connack(properties={PropertyId.MAXIMUM_PACKET_SIZE: 1000}))
    fits = encode(Publish(TELEMETRY.replace("telemetry", "config/patch"),
                          b'{"target_temp_c":20}', qos=1, packet_id=1), 5)
    assert any(isinstance(c, SendToBroker) for c in session.handle(AgentData(fits), NOW))
    big = encode(Publish(SHADOW_UPDATE, b"x" * 960, qos=1, packet_id=2), 5)
    assert len(big) > 1000
    commands = session.handle(AgentData(big), NOW)
    (disconnect,) = sent_to_agent(commands)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x95
    assert not any(isinstance(c, SendToBroker) for c in commands)


def test_guard_built_packets_respect_the_clients_maximum_packet_size() -> None:
    session = connected(properties={PropertyId.MAXIMUM_PACKET_SIZE: 24})
    session.handle(AgentData(encode(Subscribe(1, [Subscription("$guard/events")]), 5)), NOW)
    raw = encode(Publish(FOREIGN_UPDATE, GOOD_SHADOW, qos=1, packet_id=3), 5)
    commands = session.handle(AgentData(raw), NOW)
    # The event does not fit at all and is not sent; the ack loses its reason string.
    sent = [c.data for c in commands if isinstance(c, SendToAgent)]
    assert sent == [encode(PubAck(3, 0x87), 5)]
    assert all(len(data) <= 24 for data in sent)


# --------------------------------------------------------------------------- DISCONNECT


def test_client_disconnect_is_forwarded_and_audited_with_its_reason_code() -> None:
    session = connected()
    raw = encode(Disconnect(0x04), 5)  # with will message: the client's to ask
    assert (
        Playbook(session)
        >> AgentData(raw)
        << SendToBroker(raw)
        << audit(packet="disconnect", result_status="success", reason_code=0x04)
        << Close("agent sent DISCONNECT", agent_ended=True)
    )


def test_session_expiry_in_disconnect_when_connect_set_none_is_a_protocol_error() -> None:
    session = connected()
    raw = encode(Disconnect(0, {PropertyId.SESSION_EXPIRY_INTERVAL: 3600}), 5)
    reason = "session expiry interval in DISCONNECT when CONNECT set none [MQTT-3.14.2-2]"
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(packet="disconnect", result_status="error", reason_code=0x82)
        << to_agent(Disconnect(0x82, {PropertyId.REASON_STRING: reason}))
        << Close(reason, agent_ended=True)  # its own doing: what came before is owed
    )
    keeping = connected(properties={PropertyId.SESSION_EXPIRY_INTERVAL: 60})
    assert SendToBroker(raw) in keeping.handle(AgentData(raw), NOW)


def test_client_disconnect_with_a_server_only_reason_code_is_never_forwarded() -> None:
    session = connected()
    commands = session.handle(AgentData(encode(Disconnect(0x8B), 5)), NOW)  # "server shutting"
    (disconnect,) = sent_to_agent(commands)
    assert disconnect.reason_code == 0x82
    assert not any(isinstance(c, SendToBroker) for c in commands)


# --------------------------------------------------------------------------- deliveries


def test_deliveries_on_unreadable_topics_are_dropped_and_acked_to_the_broker() -> None:
    session = connected()
    ok = encode(Publish(TELEMETRY, b"{}"), 5)
    foreign = encode(Publish("tenants/globex/devices/therm-101/telemetry", b"{}", qos=1,
                             packet_id=11), 5)
    assert (
        Playbook(session)
        >> BrokerData(ok)
        << SendToAgent(ok)
        >> BrokerData(foreign)
        << audit(packet="receive", decision="deny")
        << to_broker(PubAck(11))
    )


def test_dropped_qos2_delivery_is_completed_with_the_broker() -> None:
    session = connected()
    foreign = encode(Publish("tenants/globex/x", b"1", qos=2, packet_id=12), 5)
    assert (
        Playbook(session)
        >> BrokerData(foreign)
        << audit(packet="receive")
        << to_broker(PubRec(12))
        >> BrokerData(encode(PubRel(12), 5))
        << to_broker(PubComp(12))
    )


def test_broker_loss_disconnects_the_agent_and_unreachable_refuses_the_connect() -> None:
    session = connected()
    commands = session.handle(BrokerClosed(), NOW)
    (disconnect,) = sent_to_agent(commands)
    assert disconnect.reason_code == 0x80 and isinstance(commands[-1], Close)
    waiting = fresh()
    waiting.handle(AgentData(connect_bytes()), NOW)
    (connack,) = sent_to_agent(waiting.handle(BrokerUnreachable("refused"), NOW))
    assert connack.reason_code == 0x88


def test_agent_close_is_audited_once() -> None:
    session = connected()
    assert (
        Playbook(session)
        >> AgentClosed()
        << audit(packet="disconnect")
        << Close("agent connection closed", agent_ended=True)
        >> AgentClosed()
    )


# --------------------------------------------------------------------------- SUBSCRIBE


@pytest.mark.parametrize("level", [4, 5])
def test_subscribe_forwards_allowed_filters_and_merges_the_suback(level: int) -> None:
    session = connected(level=level)
    subscribe = Subscribe(21, [
        Subscription("tenants/globex/devices/+/telemetry", 0),
        Subscription("tenants/acme/devices/+/telemetry", 1),
        Subscription("$SYS/#", 0),
        Subscription("tenants/acme/devices/therm-002/status", 1),
    ])
    commands = session.handle(AgentData(encode(subscribe, level)), NOW)
    forwarded = [c for c in commands if isinstance(c, SendToBroker)]
    (upstream,) = StreamParser(side="server", protocol_level=level).feed(forwarded[0].data)
    assert [s.topic_filter for s in upstream.subscriptions] == [
        "tenants/acme/devices/+/telemetry", "tenants/acme/devices/therm-002/status"]
    (suback,) = sent_to_agent(session.handle(BrokerData(encode(SubAck(21, [1, 1]), level)), NOW),
                              level)
    refused = 0x87 if level == 5 else 0x80
    assert suback.reason_codes == [refused, 1, refused, 1]


def test_fully_refused_subscribe_is_answered_by_the_guard() -> None:
    session = connected()
    commands = session.handle(AgentData(encode(Subscribe(3, [Subscription("tenants/acme/#")]),
                                               5)), NOW)
    assert not any(isinstance(c, SendToBroker) for c in commands)
    (suback,) = sent_to_agent(commands)
    assert suback.reason_codes == [0x87]
    assert "tenants/acme/#" in suback.properties[PropertyId.REASON_STRING]


def test_guard_events_are_answered_locally_and_explain_refusals() -> None:
    session = connected(level=4)
    assert (
        Playbook(session)
        >> AgentData(encode(Subscribe(1, [Subscription("$guard/events")]), 4))
        << to_agent(SubAck(1, [0]), 4)
    )
    commands = session.handle(AgentData(encode(Publish(FOREIGN_UPDATE, b"{}"), 4)), NOW)
    (event,) = sent_to_agent(commands, 4)
    assert event.topic == "$guard/events"
    body = json.loads(event.payload)
    assert body["decision"] == "deny" and body["topic"] == FOREIGN_UPDATE and body["reason"]
    assert (
        Playbook(session)
        >> AgentData(encode(Unsubscribe(2, ["$guard/events"]), 4))
        << to_agent(UnsubAck(2, [0]), 4)
    )
    assert not sent_to_agent(session.handle(AgentData(encode(Publish(FOREIGN_UPDATE, b"{}"),
                                                              4)), NOW), 4)


def test_guard_topics_outside_events_and_approvals_are_refused() -> None:
    session = connected()
    commands = session.handle(AgentData(encode(Subscribe(4, [Subscription("$guard/secrets")]),
                                               5)), NOW)
    (suback,) = sent_to_agent(commands)
    assert suback.reason_codes == [0x8F]
    assert not any(isinstance(c, (SendToBroker, GuardSubscribed)) for c in commands)


def test_guard_notices_reach_only_sessions_subscribed_to_them() -> None:
    session = connected()
    notice = GuardNotice("$guard/approvals/abc", b'{"status":"pending"}')
    assert Playbook(session) >> notice  # not subscribed: nothing
    assert (
        Playbook(session)
        >> AgentData(encode(Subscribe(5, [Subscription("$guard/approvals/+")]), 5))
        << GuardSubscribed("ops-agent", "s-1", "$guard/approvals/+")
        << to_agent(SubAck(5, [0]))
        >> notice
        << to_agent(Publish("$guard/approvals/abc", b'{"status":"pending"}'))
    )


# --------------------------------------------------------------------------- holds


def test_held_group_push_is_refused_when_no_approvals_service_runs() -> None:
    session = connected()
    raw = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    commands = session.handle(AgentData(raw), NOW)
    assert not any(isinstance(c, (SendToBroker, StartHold)) for c in commands)
    (ack,) = sent_to_agent(commands)
    assert ack.reason_code == 0x87
    assert "approval" in ack.properties[PropertyId.REASON_STRING]
    assert commands[0] == audit(decision="hold")


def test_held_publish_is_parked_answered_0x83_and_its_outcome_reported() -> None:
    session = connected(settings=HOLDING)
    session.handle(AgentData(encode(Subscribe(1, [Subscription("$guard/events")]), 5)), NOW)
    raw = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 5)
    commands = session.handle(AgentData(raw), NOW)
    # Audited with the code the agent gets.
    assert commands[0] == audit(decision="hold", note="approval request s-1.1", reason_code=0x83)
    (hold,) = [c for c in commands if isinstance(c, StartHold)]
    held = hold.held
    assert (held.hold_id, held.agent_id, held.topic, held.qos, held.payload) == (
        "s-1.1", "ops-agent", GROUP_PUSH, 1, b'{"firmware_channel":"beta"}')
    assert held.decision.verdict is Verdict.HOLD and held.created_at == NOW
    assert not any(isinstance(c, SendToBroker) for c in commands)
    event, ack = sent_to_agent(commands)
    assert json.loads(event.payload)["approval_id"] == "s-1.1"
    assert isinstance(ack, PubAck) and ack.reason_code == 0x83  # held is never success
    assert ack.properties[PropertyId.REASON_STRING].startswith("held for approval s-1.1: ")
    assert ack.properties[PropertyId.USER_PROPERTY] == [("approval_id", "s-1.1")]
    (outcome,) = sent_to_agent(session.handle(HoldResolved("s-1.1", "denied", "by bob"), NOW))
    body = json.loads(outcome.payload)
    assert body["approval_id"] == "s-1.1" and "denied: by bob" in body["reason"]
    assert Playbook(session) >> HoldResolved("s-1.1", "denied")  # settled: said once


def test_held_publish_v3_gets_its_plain_ack() -> None:
    session = connected(level=4, settings=HOLDING)
    raw = encode(Publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', qos=1, packet_id=8), 4)
    commands = session.handle(AgentData(raw), NOW)
    assert any(isinstance(c, StartHold) for c in commands)
    assert to_agent(PubAck(8), 4) in commands


# --------------------------------------------------------------------------- checks


def test_a_check_can_deny_a_publish_the_policy_allows() -> None:
    from iot_guard.checks import Pipeline

    limit = Refuse({"publish"})
    session = connected(pipeline=Pipeline([limit]))
    raw = encode(Publish(SHADOW_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(decision="deny", reason_code=0x96, rule="check test-limit")
        << to_agent(PubAck(2, 0x96, {PropertyId.REASON_STRING: "test-limit says no"}))
    )
    (request,) = limit.seen
    assert (request.kind, request.topic, request.payload) == ("publish", SHADOW_UPDATE,
                                                              GOOD_SHADOW)


def test_an_observe_mode_check_is_recorded_and_enforces_nothing() -> None:
    from iot_guard.checks import Pipeline

    trial = Refuse({"publish", "subscribe"}, enforce=False, name="new-rule")
    session = connected(pipeline=Pipeline([trial]))
    raw = encode(Publish(SHADOW_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(result_status="would_deny", note="observe mode: check new-rule")
        << audit(decision="allow")
        << SendToBroker(raw)
    )


def test_a_check_cannot_soften_a_policy_deny() -> None:
    from iot_guard.checks import Pipeline

    class Lenient(Refuse):
        def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
            return Decision(Verdict.ALLOW, "fine by me", 0, "write")

    session = connected(pipeline=Pipeline([Lenient({"publish"})]))
    raw = encode(Publish(FOREIGN_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    (ack,) = sent_to_agent(session.handle(AgentData(raw), NOW))
    assert ack.reason_code == 0x87


def test_receive_checks_see_every_delivery() -> None:
    from iot_guard.checks import Pipeline

    session = connected(pipeline=Pipeline([Refuse({"receive"}, code=0x97)]))
    delivery = encode(Publish(TELEMETRY, b"{}", qos=1, packet_id=4), 5)
    assert (
        Playbook(session)
        >> BrokerData(delivery)
        << audit(packet="receive", decision="deny", reason_code=0x97)
        << to_broker(PubAck(4))
    )


# --------------------------------------------------------------------------- control plane


def test_kick_disconnects_with_the_operators_code_and_reason() -> None:
    session = connected()
    assert (
        Playbook(session)
        >> Kick(0x98, "killed by secops")
        << audit(packet="disconnect", result_status="denied", reason_code=0x98)
        << to_agent(Disconnect(0x98, {PropertyId.REASON_STRING: "killed by secops"}))
        << Close("killed by secops")
        >> Kick(0x98, "again")  # idempotent
    )


def test_a_swapped_policy_judges_the_next_packet(tmp_path: Path) -> None:
    session = connected()
    raw = encode(Publish(SHADOW_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    assert SendToBroker(raw) in session.handle(AgentData(raw), NOW)
    narrowed = tmp_path / "policy"
    narrowed.mkdir()
    for source in POLICY_DIR.glob("*.yaml"):
        text = source.read_text()
        if source.name == "agents.yaml":
            text = "".join(line for line in text.splitlines(keepends=True)
                           if line.strip() != "- shadow_update")
        (narrowed / source.name).write_text(text)
    smaller = CompiledPolicy.load(narrowed)
    assert Playbook(session) >> PolicySwapped(smaller)
    (ack,) = sent_to_agent(session.handle(AgentData(raw), NOW))
    assert ack.reason_code == 0x87


def test_an_agent_removed_from_the_policy_is_disconnected_on_swap(tmp_path: Path) -> None:
    session = connected(agent="globex-agent")
    for source in POLICY_DIR.glob("*.yaml"):
        text = source.read_text()
        (tmp_path / source.name).write_text(text)
    document = CompiledPolicy.load(tmp_path)
    gone = document.for_agent("globex-agent")
    assert gone is not None
    agents = (tmp_path / "agents.yaml").read_text()
    start = agents.index("  globex-agent:")
    (tmp_path / "agents.yaml").write_text(agents[:start])
    commands = session.handle(PolicySwapped(CompiledPolicy.load(tmp_path)), NOW)
    (disconnect,) = sent_to_agent(commands)
    assert disconnect.reason_code == 0x87 and isinstance(commands[-1], Close)


def test_narrowed_token_grants_only_its_tools() -> None:
    session = connected(password=token(tools=["read_telemetry"]))
    raw = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"mode":"heat"}}}', qos=1,
                         packet_id=1), 5)
    (ack,) = sent_to_agent(session.handle(AgentData(raw), NOW))
    assert ack.reason_code == 0x87


def test_every_command_type_in_a_session_is_one_the_proxy_knows() -> None:
    import typing

    from iot_guard.session import Command

    known = set(typing.get_args(Command))
    assert {SendToAgent, SendToBroker, OpenUpstream, WriteAudit, SetTimer, CancelTimer,
            StartHold, GuardSubscribed, Close} == known


# --------------------------------------------------------------------------- dry run


def test_dry_run_audits_would_deny_and_forwards() -> None:
    dry = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                          upstream_password=b"broker-pw", dry_run=True)
    session = connected(settings=dry)
    raw = encode(Publish(FOREIGN_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    assert (
        Playbook(session)
        >> AgentData(raw)
        << audit(result_status="would_deny", decision="deny", mode="dry-run")
        << audit(decision="allow", mode="dry-run")
        << SendToBroker(raw)
    )


def test_enforce_mode_is_written_into_every_record() -> None:
    session = connected()
    raw = encode(Publish(FOREIGN_UPDATE, GOOD_SHADOW, qos=1, packet_id=2), 5)
    commands = session.handle(AgentData(raw), NOW)
    records = [c.record for c in commands if isinstance(c, WriteAudit)]
    assert records and all(r["mode"] == "enforce" for r in records)


@pytest.mark.parametrize("bad", [
    bytes((0x00, 0x00)),  # packet type 0 is reserved: malformed
    encode(Auth(), 5),  # AUTH: enhanced authentication is not supported
], ids=["malformed", "auth"])
def test_an_agents_own_protocol_error_before_the_connack_keeps_what_was_accepted(
    bad: bytes
) -> None:
    """Its own doing, as a DISCONNECT would be: the publish the guard accepted before it
    still reaches the broker (Close.agent_ended), and the error is audited with the code
    the agent got in its CONNACK."""
    session = fresh()
    allowed = encode(Publish(SHADOW_UPDATE, GOOD_SHADOW, qos=0), 5)
    commands = session.handle(AgentData(connect_bytes() + allowed), NOW)
    # (A read the parser refuses is refused whole: the allowed publish comes in its own.)
    commands += session.handle(AgentData(bad), NOW)
    assert to_broker_raw(commands) == allowed
    (connack,) = sent_to_agent(commands)
    assert isinstance(connack, Connack) and connack.reason_code >= 0x80
    errors = [c for c in commands if isinstance(c, WriteAudit)
              and c.record["result_status"] == "error"]
    assert [e.record["reason_code"] for e in errors] == [connack.reason_code]
    assert isinstance(commands[-1], Close) and commands[-1].agent_ended


def to_broker_raw(commands: list) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, SendToBroker))


def test_a_subscribe_that_passes_the_answers_held_bound_stops_there() -> None:
    """Each refused filter's event is held for the CONNACK; the one that passes the bound
    ends the session in the middle of the SUBSCRIBE: nothing is judged, audited or
    forwarded after the Close (the link would drop it unwritten)."""
    session = fresh()
    events = encode(Subscribe(1, [Subscription("$guard/events")]), 5)
    refused = [Subscription(f"tenants/globex/devices/d{i}/telemetry") for i in range(600)]
    allowed = [Subscription("tenants/acme/devices/+/telemetry")]
    commands = session.handle(AgentData(
        connect_bytes() + events + encode(Subscribe(2, refused + allowed), 5)), NOW)
    assert session.state is State.CLOSED
    assert isinstance(commands[-1], Close) and "held for the CONNACK" in commands[-1].reason
    assert not any(isinstance(c, SendToBroker) and c.data[0] >> 4 == 8 for c in commands)


def test_a_subscription_to_approvals_before_the_connack_is_announced_after_it() -> None:
    """The approvals service replays an agent's requests when it subscribes to them
    (GuardSubscribed); a replay before the CONNACK would meet a session not yet
    connected and be dropped, so the subscription is announced after the CONNACK."""
    session = fresh(HOLDING)
    subscribe = encode(Subscribe(1, [Subscription("$guard/approvals/+")]), 5)
    commands = session.handle(AgentData(connect_bytes() + subscribe), NOW)
    assert not any(isinstance(c, GuardSubscribed) for c in commands)
    commands = session.handle(BrokerData(encode(Connack(), 5)), NOW)
    connack, suback = sent_to_agent(commands)
    assert isinstance(connack, Connack) and isinstance(suback, SubAck)
    assert commands[-1] == GuardSubscribed("ops-agent", "s-1", "$guard/approvals/+")
    # Once connected, announced at once.
    again = encode(Subscribe(2, [Subscription("$guard/approvals/s-1.9")]), 5)
    assert GuardSubscribed("ops-agent", "s-1", "$guard/approvals/s-1.9") in session.handle(
        AgentData(again), NOW)


def test_a_guard_subscription_undone_before_the_connack_is_never_announced() -> None:
    session = fresh(HOLDING)
    subscribe = encode(Subscribe(1, [Subscription("$guard/approvals/+")]), 5)
    unsubscribe = encode(Unsubscribe(2, ["$guard/approvals/+"]), 5)
    session.handle(AgentData(connect_bytes() + subscribe + unsubscribe), NOW)
    commands = session.handle(BrokerData(encode(Connack(), 5)), NOW)
    connack, suback, unsuback = sent_to_agent(commands)
    assert isinstance(unsuback, UnsubAck) and unsuback.reason_codes == [0]
    assert not any(isinstance(c, GuardSubscribed) for c in commands)
