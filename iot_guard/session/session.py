"""One agent connection, as a sans-IO state machine: events in, commands out.

``GuardSession.handle(event, now)`` takes what happened (agent bytes, broker bytes, a
close, a timer, a hold's outcome, a control-plane request: ``events.py``) and returns
the commands the proxy must carry out (send bytes, write audit, open the upstream, set
a timer, start a hold, close: ``commands.py``). The session never reads a clock or a
socket: ``now`` is passed in. Every state change goes through ``state.py``'s table.

Packets that pass unchanged are forwarded as their original bytes; packet ids pass
through. The guard only writes packets of its own where it must: the rewritten
CONNECT and CONNACK, acknowledgements of refused or held messages, SUBACK/UNSUBACK
merges, ``$guard/...`` deliveries and DISCONNECT.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..checks import Pipeline, Request
from ..checks.pipeline import Judgement
from ..mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PingResp,
    PropertyId,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    StreamParser,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
)
from ..mqtt.reason_codes import CONNACK_CODES, CONNACK_V5_TO_V3
from ..mqtt.topics import topic_matches, validate_topic_filter
from ..policy.compiler import AgentPolicy, CompiledPolicy
from ..policy.decision import Decision, Verdict
from ..tokens import TokenError, check_lifetime, verify_token
from .commands import (
    CancelTimer,
    Close,
    Command,
    GuardSubscribed,
    HeldAction,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    SetTimer,
    StartHold,
    WriteAudit,
)
from .events import (
    AgentClosed,
    AgentData,
    AgentOpened,
    BrokerClosed,
    BrokerData,
    BrokerUnreachable,
    Event,
    GuardNotice,
    HoldResolved,
    Kick,
    PolicySwapped,
    TimerFired,
)
from .feedback import EVENTS_TOPIC, AuditRecorder, audit_record, event_payload, guard_refusal
from .state import State, Trigger, next_state

# Client ids an agent may choose; the upstream id is namespaced anyway, this only keeps
# audit lines and broker logs readable.
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{0,128}$")

# CONNECT properties never forwarded upstream: the guard does not accept topic aliases
# from the broker (so every delivery is checked on its real topic), gives no response
# information (it would name a topic prefix the policy did not grant), and does no
# enhanced authentication (tokens are the only credentials).
STRIPPED_CONNECT_PROPERTIES = (
    PropertyId.TOPIC_ALIAS_MAXIMUM,
    PropertyId.REQUEST_RESPONSE_INFORMATION,
)

# The guard's own topics, answered by the guard and never forwarded: refusal events, and
# the state of the agent's approval requests.
GUARD_PREFIX = "$guard/"
APPROVALS_PREFIX = "$guard/approvals/"

_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS  # an enum member: looked up once, not per publish

# Timer keys (``SetTimer`` / ``TimerFired``).
CONNECT_TIMER = "connect"
CONNACK_TIMER = "connack"
TOKEN_TIMER = "token-expiry"

# What a guard-built packet may lose to fit the client's Maximum Packet Size: the spec
# lets a sender drop these two first [MQTT-3.1.2-24/25, 3.4.2.2.2].
_DROPPABLE_PROPERTIES = (PropertyId.REASON_STRING, PropertyId.USER_PROPERTY)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    secret: bytes
    upstream_username: str | None = None
    upstream_password: bytes | None = None
    max_packet_size: int = 256 * 1024
    client_id_prefix: str = "iotguard"
    # A client that never sends CONNECT is closed after this long [MQTT-3.1.4]; and a
    # broker that has not accepted the session this long after the CONNECT was judged
    # (reached, and answered the guard's CONNECT) is unavailable: the agent gets a
    # refusal, not a wait with no end.
    connect_timeout: float = 10.0
    # True when something resolves holds (the approvals service); without it a held
    # action is refused and says so, never parked where nobody will look.
    holds: bool = False
    # Dry run: decide everything, refuse nothing the policy refuses; what enforcement
    # would have refused is audited as would_deny / would_hold. Checks have their own
    # enforce switch (brakes such as the kill switch always enforce).
    dry_run: bool = False


@dataclass(slots=True)
class _PendingSubscribe:
    """Where each filter of an agent's SUBSCRIBE/UNSUBSCRIBE gets its answer: ``None``
    means from the broker's reply (in order), an int is the guard's own reason code."""

    slots: list[int | None]
    reasons: list[str] = field(default_factory=list)


# What the guard holds for an agent before its CONNACK (its answers to packets sent
# before it): past this the connection ends.
BEFORE_CONNACK_LIMIT = 64 * 1024


class GuardSession:
    # Thousands live at once: without slots, past 30 attributes every instance carries a
    # dict of its own (~1.6 KB, a quarter of an idle session). A new attribute goes here.
    __slots__ = (
        "policy", "settings", "session_id", "peer", "pipeline", "_new_hold_id", "_state",
        "agent_id", "client_id", "token_id", "token_issued_at", "_token_tools",
        "protocol_level", "_agent", "_agent_parser", "_broker_parser", "_problem_information",
        "_client_max", "_connect_expiry", "_guard_filters", "_events_subscribed",
        "_held_agent_qos2", "_dropped_broker_qos2", "_pending_subscribes",
        "_pending_unsubscribes", "_holds", "_dry_run", "_mode", "_wants_publish",
        "_wants_receive", "_recorder", "_before_connack", "_after_connack", "_now",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        settings: SessionSettings,
        session_id: str,
        peer: str = "",
        *,
        pipeline: Pipeline | None = None,
        new_hold_id: Callable[[], str] | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.session_id = session_id
        self.peer = peer
        self.pipeline = pipeline if pipeline is not None else Pipeline()
        self._new_hold_id = new_hold_id or _counter_ids(session_id)
        self._state = State.AWAITING_CONNECT
        self.agent_id: str | None = None
        self.client_id: str | None = None
        self.token_id: str | None = None
        self.token_issued_at: float | None = None
        self._token_tools: frozenset[str] | None = None
        self.protocol_level = 4
        self._agent: AgentPolicy | None = None
        self._agent_parser = StreamParser(side="server", max_packet_size=settings.max_packet_size)
        self._broker_parser: StreamParser | None = None
        self._problem_information = True  # v5 Request Problem Information [MQTT-3.1.2-29]
        self._client_max: int | None = None  # the client's Maximum Packet Size [MQTT-3.1.2-24]
        self._connect_expiry = 0  # CONNECT's Session Expiry Interval [MQTT-3.14.2-2]
        self._guard_filters: set[str] = set()
        self._events_subscribed = False
        # QoS 2 flows the guard ends itself: refused agent publishes (3.1.1), dropped deliveries.
        self._held_agent_qos2: set[int] = set()
        self._dropped_broker_qos2: set[int] = set()
        self._pending_subscribes: dict[int, _PendingSubscribe] = {}
        self._pending_unsubscribes: dict[int, _PendingSubscribe] = {}
        self._holds: set[str] = set()
        self._dry_run = settings.dry_run
        self._mode = "dry-run" if settings.dry_run else "enforce"
        self._wants_publish = self.pipeline.wants("publish")
        self._wants_receive = self.pipeline.wants("receive")
        self._recorder: AuditRecorder | None = None  # made at the first message audited
        # What the guard answers to packets sent before the CONNACK, held until it is sent.
        self._before_connack: bytearray | None = None
        # What the agent asked of the guard itself before the CONNACK, carried out once it
        # accepts: holds (a hold outlives its packet, and the broker may still refuse the
        # session; else withdrawn) and subscriptions to the guard's topics (their replay
        # would meet a session not yet connected).
        self._after_connack: list[StartHold | GuardSubscribed] | None = None
        # The time of the event being handled, for what is audited deep in a call chain.
        self._now = 0.0

    @property
    def state(self) -> State:
        return self._state

    def _to(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _once_connected(
        self, actions: list[Command], command: StartHold | GuardSubscribed
    ) -> None:
        """``command`` now, or after a CONNACK that accepts the session (``_after_connack``)."""
        if self._state is not State.CONNECTING:
            actions.append(command)
            return
        if self._after_connack is None:
            self._after_connack = []
        self._after_connack.append(command)

    def _close(self, actions: list[Command], reason: str, agent_ended: bool = False) -> None:
        """The one way the session ends. Holds asked for before a CONNACK that never came:
        started when the agent ended the session itself (its CONNECT and packets still
        reach the broker, and a hold outlives the session, as once connected), else
        withdrawn (audited); its subscriptions to the guard's topics are moot. Then Close."""
        holds = [c for c in self._after_connack if isinstance(c, StartHold)] \
            if self._after_connack else []
        if holds and agent_ended:
            actions.extend(holds)
        else:
            for start in holds:
                held = start.held
                self._audit(actions, self._now, replace(
                    held.decision, verdict=Verdict.DENY,
                    reason=f"approval request {held.hold_id} withdrawn: the session ended "
                           f"before the broker's CONNACK ({reason})",
                ), "publish", held.topic, payload=held.payload, qos=held.qos,
                    retain=held.retain, note=f"approval request {held.hold_id}")
        self._after_connack = None
        self._before_connack = None  # answers held for a CONNACK that will not come
        self._to(Trigger.CLOSE)
        actions.append(Close(reason, agent_ended))

    # ------------------------------------------------------------------ the one input

    def handle(self, event: Event, now: float) -> list[Command]:
        """Everything that happens to the session comes in here."""
        self._now = now
        return _HANDLERS[type(event)](self, event, now)

    def _on_agent_opened(self, event: AgentOpened, now: float) -> list[Command]:
        self.peer = event.peer
        return [SetTimer(CONNECT_TIMER, now + self.settings.connect_timeout)]

    def _on_agent_data(self, event: AgentData, now: float) -> list[Command]:
        actions: list[Command] = []
        if self._state is State.CLOSED:
            return actions
        try:
            packets = self._agent_parser.feed(event.data)
        except ProtocolError as err:
            # The packets before the violation are judged first: what the guard accepts
            # from them is owed to the broker (``Close.agent_ended``), and a CONNECT among
            # them sets the limits the answer must keep [MQTT-3.1.2-24].
            self._agent_packets(err.before, now, actions)
            if self._state is not State.CLOSED:
                actions += self._protocol_error(err, now)
            return actions
        self._agent_packets(packets, now, actions)
        return actions

    def _agent_packets(self, packets: list[Packet], now: float, actions: list[Command]) -> None:
        for packet in packets:
            if self._state is State.CLOSED:
                break
            if isinstance(packet, Publish):
                self._agent_publish(packet, now, actions)
            elif isinstance(packet, Connect):
                self._connect(packet, now, actions)
            elif isinstance(packet, Subscribe):
                self._subscribe(packet, now, actions)
            elif isinstance(packet, Unsubscribe):
                self._unsubscribe(packet, actions)
            elif isinstance(packet, PubRel) and packet.packet_id in self._held_agent_qos2:
                # The second half of a refused 3.1.1 QoS 2 publish: complete it here.
                self._held_agent_qos2.discard(packet.packet_id)
                self._send(actions, PubComp(packet.packet_id))
            elif isinstance(packet, Disconnect):
                self._agent_disconnect(packet, now, actions)
            elif isinstance(packet, Auth):
                self._violation(
                    actions, now, ReasonCode.BAD_AUTHENTICATION_METHOD,
                    "enhanced authentication is not supported: use a token as password",
                    "auth", self.peer,
                )
            else:
                # PUBACK/PUBREC/PUBREL/PUBCOMP for flows the broker started, PINGREQ.
                actions.append(SendToBroker(packet.raw))

    def _on_broker_data(self, event: BrokerData, now: float) -> list[Command]:
        actions: list[Command] = []
        if self._state is State.CLOSED or self._broker_parser is None:
            return actions
        try:
            packets = self._broker_parser.feed(event.data)
        except ProtocolError as err:
            # What the broker sent before the violation is passed on first, as from the agent.
            self._broker_packets(err.before, now, actions)
            if self._state is not State.CLOSED:
                self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker sent "
                                 f"a malformed packet ({err.message})")
            return actions
        if len(packets) == 1:  # one packet per read (low load): the loop's answer, no lists
            packet = packets[0]
            if type(packet) is Publish:
                if self._delivery(packet, now, actions):
                    actions.append(SendToAgent(packet.raw))
                return actions
            if type(packet) in _RELAYED and type(packet) is not PubRel:
                actions.append(SendToAgent(packet.raw))
                return actions
        self._broker_packets(packets, now, actions)
        return actions

    def _broker_packets(self, packets: list[Packet], now: float, actions: list[Command]) -> None:
        # Deliveries and acks passed on as they came: sent as one write, in order.
        relayed: list[bytes] = []
        for packet in packets:
            if self._state is State.CLOSED:
                break  # (the broker's DISCONNECT ended the session: nothing after it)
            if type(packet) is Publish:
                # A refused delivery sends nothing to the agent (its actions are an audit
                # record and the broker's ack), so the run of relayed bytes goes on.
                if self._delivery(packet, now, actions):
                    relayed.append(packet.raw)
                continue
            if type(packet) in _RELAYED and not (
                isinstance(packet, PubRel) and packet.packet_id in self._dropped_broker_qos2
            ):
                relayed.append(packet.raw)
                continue
            if relayed:
                actions.append(SendToAgent(b"".join(relayed)))
                relayed = []
            if type(packet) is Connack:
                self._connack(packet, now, actions)
            elif type(packet) is SubAck:
                self._filter_ack(packet, self._pending_subscribes, actions)
            elif type(packet) is UnsubAck:
                self._filter_ack(packet, self._pending_unsubscribes, actions)
            elif isinstance(packet, PubRel):
                # The release of a delivery the agent was not allowed to see: ours to complete.
                self._dropped_broker_qos2.discard(packet.packet_id)
                actions.append(SendToBroker(encode(PubComp(packet.packet_id), self.protocol_level)))
            elif type(packet) is Disconnect:
                actions.append(SendToAgent(packet.raw))
                self._close(actions, "broker sent DISCONNECT")
            else:
                actions.append(SendToAgent(packet.raw))
        if relayed:
            actions.append(SendToAgent(b"".join(relayed) if len(relayed) > 1 else relayed[0]))

    def _on_broker_unreachable(self, event: BrokerUnreachable, now: float) -> list[Command]:
        """The upstream connection could not be opened: refuse the CONNECT."""
        actions: list[Command] = []
        if self._state is not State.CLOSED:
            self._refuse_connect(
                actions, now, ReasonCode.SERVER_UNAVAILABLE,
                f"upstream broker unavailable: {event.why}",
            )
        return actions

    def _on_broker_closed(self, event: BrokerClosed, now: float) -> list[Command]:
        """The broker went away: tell the agent (v5) and close cleanly."""
        if self._state is State.CLOSED:
            return []
        if self._state is State.CONNECTING:
            return self._on_broker_unreachable(
                BrokerUnreachable("connection closed before CONNACK"), now
            )
        actions: list[Command] = []
        self._audit_session_event(actions, now, "disconnect", "error", "upstream broker went away")
        self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker connection lost")
        return actions

    def _on_agent_closed(self, event: AgentClosed, now: float) -> list[Command]:
        """The agent's connection ended without DISCONNECT (the broker will send its will)."""
        actions: list[Command] = []
        if self._state is not State.CLOSED:
            if self.agent_id is not None:
                self._audit_session_event(
                    actions, now, "disconnect", "success", "agent connection closed"
                )
            self._close(actions, "agent connection closed", agent_ended=True)
        return actions

    def _on_timer(self, event: TimerFired, now: float) -> list[Command]:
        actions: list[Command] = []
        if event.key == CONNECT_TIMER and self._state is State.AWAITING_CONNECT:
            self._close(actions, "no CONNECT in time")
        elif event.key == CONNACK_TIMER and self._state is State.CONNECTING:
            # The agent is told its session never started, so a broker that was only slow
            # must not act on it: a DISCONNECT (normal) keeps it from sending the will.
            actions.append(SendToBroker(encode(Disconnect(0), self.protocol_level)))
            self._refuse_connect(
                actions, now, ReasonCode.SERVER_UNAVAILABLE,
                f"upstream broker did not accept the session within "
                f"{self.settings.connect_timeout:g} s",
            )
        elif event.key == TOKEN_TIMER and self._state is not State.CLOSED:
            self._audit_session_event(actions, now, "disconnect", "denied", "token expired",
                                      self._ending_code(ReasonCode.MAXIMUM_CONNECT_TIME))
            self._disconnect(
                actions, ReasonCode.MAXIMUM_CONNECT_TIME,
                "token expired: reconnect with a fresh token",
            )
        # Any other key is a timer that outlived what it was for: nothing to do.
        return actions

    def _on_kick(self, event: Kick, now: float) -> list[Command]:
        actions: list[Command] = []
        if self._state is State.CLOSED:
            return actions
        self._audit_session_event(actions, now, "disconnect", "denied", event.reason,
                                  self._ending_code(event.reason_code))
        self._disconnect(actions, event.reason_code, event.reason)
        return actions

    def _on_policy_swapped(self, event: PolicySwapped, now: float) -> list[Command]:
        self.policy = event.policy
        actions: list[Command] = []
        if self.agent_id is None or self._state is State.CLOSED:
            return actions
        agent = event.policy.for_agent(self.agent_id, self._token_tools)
        if agent is None:
            reason = f"agent {self.agent_id!r} is no longer in the policy"
            self._audit_session_event(actions, now, "disconnect", "denied", reason,
                                      ReasonCode.NOT_AUTHORIZED)
            self._disconnect(actions, ReasonCode.NOT_AUTHORIZED, reason)
        else:
            self._agent = agent
        return actions

    def _on_hold_resolved(self, event: HoldResolved, now: float) -> list[Command]:
        actions: list[Command] = []
        if event.hold_id not in self._holds:
            return actions
        if event.outcome not in ("pending", "escalated", "approved", "executing"):
            self._holds.discard(event.hold_id)
        if self._events_subscribed and self._state is State.CONNECTED:
            body = event_payload(
                _hold_outcome(event), "publish", "", now, approval_id=event.hold_id
            )
            self._send(actions, Publish(EVENTS_TOPIC, body))
        return actions

    def _on_guard_notice(self, event: GuardNotice, now: float) -> list[Command]:
        actions: list[Command] = []
        if self._state is State.CONNECTED and any(
            topic_matches(f, event.topic) for f in self._guard_filters
        ):
            self._send(actions, Publish(event.topic, event.payload))
        return actions

    # ------------------------------------------------------------------ CONNECT

    def _connect(self, connect: Connect, now: float, actions: list[Command]) -> None:
        self.protocol_level = connect.protocol_level
        props = connect.properties
        self._problem_information = props.get(PropertyId.REQUEST_PROBLEM_INFORMATION, 1) != 0
        client_max = props.get(PropertyId.MAXIMUM_PACKET_SIZE)
        self._client_max = client_max if isinstance(client_max, int) else None
        expiry = props.get(PropertyId.SESSION_EXPIRY_INTERVAL, 0)
        self._connect_expiry = expiry if isinstance(expiry, int) else 0
        self.client_id = connect.client_id
        actions.append(CancelTimer(CONNECT_TIMER))
        if connect.username is None or connect.password is None:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                "connect with username = agent id and password = an iot-guard token",
            )
            return
        self.agent_id = connect.username
        try:
            claims = verify_token(self.settings.secret, connect.password, now)
        except TokenError as err:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_USER_NAME_OR_PASSWORD, f"token refused: {err}",
            )
            return
        self.token_id = claims.token_id
        self.token_issued_at = claims.issued_at
        if claims.agent_id != connect.username:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                f"token was issued to agent {claims.agent_id!r}, not {connect.username!r}",
            )
            return
        self._token_tools = claims.tools
        agent = self.policy.for_agent(claims.agent_id, claims.tools)
        if agent is None:
            self._refuse_connect(
                actions, now, ReasonCode.NOT_AUTHORIZED,
                f"agent {claims.agent_id!r} is not in the policy",
            )
            return
        try:
            # A token minted for longer than the policy allows the agent is refused here
            # too, not only at issue (the limit may have been lowered since).
            check_lifetime(claims, self.policy.document.agents[claims.agent_id].max_token_ttl_s)
        except TokenError as err:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_USER_NAME_OR_PASSWORD, f"token refused: {err}",
            )
            return
        self._agent = agent
        if PropertyId.AUTHENTICATION_METHOD in props:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported: use a token as password",
            )
            return
        if not CLIENT_ID.match(connect.client_id):
            self._refuse_connect(
                actions, now, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                "client id may hold up to 128 letters, digits and . _ : -",
            )
            return
        if not connect.client_id and not connect.clean_start and connect.protocol_level == 4:
            # A 3.1.1 client with no id cannot resume a session, so it may not ask to keep
            # one: return code 2, identifier rejected [MQTT-3.1.3-8].
            self._refuse_connect(
                actions, now, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                "an empty client id needs CleanSession=1 [MQTT-3.1.3-8]",
            )
            return
        if self.pipeline.wants("connect"):
            decision = self._judge(actions, now, _CONNECT_ALLOWED, Request(
                "connect", claims.agent_id, self.session_id, claims.token_id, self.peer,
                issued_at=claims.issued_at,
            ), "connect", self.peer)
            if decision.verdict is not Verdict.ALLOW:
                self._refuse_connect(actions, now, decision.reason_code, decision.reason)
                return
        if connect.will is not None:
            # The will is a publish the broker makes later on the agent's behalf:
            # authorize it now, like any publish.
            will = connect.will
            decision = self._check_response_topic(will.properties) or agent.decide_publish(
                will.topic, will.payload, will.qos, will.retain
            )
            decision = self._judge(actions, now, decision, None, "publish", will.topic)
            self._audit(actions, now, decision, "publish", will.topic, payload=will.payload,
                        qos=will.qos, retain=will.retain, note="will message")
            if decision.verdict is not Verdict.ALLOW:
                # The policy's own code where a CONNACK may carry it (0x99 payload format
                # invalid, 0x90 topic name invalid, 0x9A/0x9B), else not authorized.
                code = (decision.reason_code if decision.reason_code in CONNACK_CODES
                        else ReasonCode.NOT_AUTHORIZED)
                self._refuse_connect(
                    actions, now, code, f"will message refused: {decision.reason}", audit=False,
                )
                return
        upstream = Connect(
            client_id=self._upstream_client_id(connect.client_id),
            protocol_level=connect.protocol_level,
            clean_start=connect.clean_start,
            keep_alive=connect.keep_alive,
            username=self.settings.upstream_username,
            password=self.settings.upstream_password,
            will=connect.will,
            properties={k: v for k, v in props.items() if k not in STRIPPED_CONNECT_PROPERTIES},
        )
        self._broker_parser = StreamParser(side="client", protocol_level=connect.protocol_level)
        self._to(Trigger.CONNECT_ACCEPTED)
        actions.append(OpenUpstream(encode(upstream, connect.protocol_level)))
        actions.append(SetTimer(CONNACK_TIMER, now + self.settings.connect_timeout))
        actions.append(SetTimer(TOKEN_TIMER, claims.expires_at))

    def _upstream_client_id(self, client_id: str) -> str:
        # Namespaced by agent so an agent can never take over a device's (or another
        # agent's) session: a broker disconnects the older of two equal client ids.
        return f"{self.settings.client_id_prefix}:{self.agent_id}:{client_id or self.session_id}"

    def _refuse_connect(
        self, actions: list[Command], now: float, code: int, reason: str, *, audit: bool = True
    ) -> None:
        """CONNACK with an MQTT 5 reason code; the encoder turns it into the 3.1.1 return
        code for older clients and drops the reason string there."""
        if audit:
            self._audit_session_event(actions, now, "connect", "denied", reason, code)
        self._send(actions, Connack(reason_code=code,
                                    properties={PropertyId.REASON_STRING: reason}))
        self._close(actions, reason)

    def _connack(self, connack: Connack, now: float, actions: list[Command]) -> None:
        if self._state is not State.CONNECTING:
            self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker sent a "
                             "second CONNACK")
            return
        actions.append(CancelTimer(CONNACK_TIMER))
        if connack.reason_code != 0:
            # Upstream refused the guard's own account: that is the guard's problem, not
            # the agent's, and the broker's reason would leak how the guard connects.
            self._refuse_connect(
                actions, now, ReasonCode.SERVER_UNAVAILABLE,
                f"upstream broker refused the guard (code {connack.reason_code})",
            )
            return
        data = connack.raw
        if self.protocol_level == 5:
            data, fits = self._fit(self._agent_connack(connack))
            if not fits:
                # No smaller CONNACK may stand in for this one (the broker's limits, the
                # assigned id), and the agent must get one first [MQTT-3.2.0-1]: the
                # session cannot start within the size the agent allows.
                self._refuse_connect(
                    actions, now, ReasonCode.PACKET_TOO_LARGE,
                    f"the CONNACK ({len(data)} bytes) exceeds the Maximum Packet Size "
                    f"the client declared ({self._client_max} bytes)",
                )
                return
        self._to(Trigger.CONNACK_ACCEPTED)
        self._audit_session_event(actions, now, "connect", "success", "token accepted")
        actions.append(SendToAgent(data))
        if self._before_connack is not None:
            actions.append(SendToAgent(bytes(self._before_connack)))
            self._before_connack = None
        if self._after_connack is not None:
            actions.extend(self._after_connack)
            self._after_connack = None

    def _agent_connack(self, connack: Connack) -> Connack:
        """The broker's v5 CONNACK as the agent gets it, with the guard's limits and id
        (from here on the agent's parser holds it to that maximum packet size)."""
        properties = dict(connack.properties)
        # Absent Topic Alias Maximum means the client may send no aliases
        # [MQTT-3.2.2-17]; the guard checks every publish on its real topic.
        properties.pop(PropertyId.TOPIC_ALIAS_MAXIMUM, None)
        broker_max = properties.get(PropertyId.MAXIMUM_PACKET_SIZE)
        limit = self.settings.max_packet_size
        if isinstance(broker_max, int) and broker_max < limit:
            limit = broker_max
        properties[PropertyId.MAXIMUM_PACKET_SIZE] = limit
        # What the guard advertises it enforces: a larger packet is a protocol error
        # answered with 0x95 [MQTT-3.2.2-15], never passed on to a broker that refuses it.
        self._agent_parser.max_packet_size = limit
        if not self.client_id:
            # The upstream id was made from the session id; the client must learn it to
            # resume the session [MQTT-3.2.2-16].
            properties[PropertyId.ASSIGNED_CLIENT_IDENTIFIER] = self.session_id
        return Connack(reason_code=0, session_present=connack.session_present,
                       properties=properties)

    # ------------------------------------------------------------------ DISCONNECT

    def _agent_disconnect(self, packet: Disconnect, now: float, actions: list[Command]) -> None:
        expiry = packet.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL)
        if expiry and not self._connect_expiry:
            # Setting a session expiry at DISCONNECT when CONNECT set none is a protocol
            # error [MQTT-3.14.2-2]; forwarded, the broker would see an abnormal close.
            self._violation(
                actions, now, ReasonCode.PROTOCOL_ERROR,
                "session expiry interval in DISCONNECT when CONNECT set none [MQTT-3.14.2-2]",
                "disconnect", self.peer,
            )
            return
        actions.append(SendToBroker(packet.raw))
        self._audit_session_event(actions, now, "disconnect", "success", "agent disconnected",
                                  packet.reason_code)
        self._close(actions, "agent sent DISCONNECT", agent_ended=True)

    # ------------------------------------------------------------------ PUBLISH

    def _agent_publish(self, publish: Publish, now: float, actions: list[Command]) -> None:
        agent = self._agent
        assert agent is not None
        properties = publish.properties
        decision = None
        if properties:  # most publishes carry none (and 3.1.1 ones cannot)
            if _TOPIC_ALIAS in properties:
                # The guard advertised no Topic Alias Maximum, so any alias is a protocol
                # error [MQTT-3.3.2-9]; this also keeps every decision on a real topic.
                self._violation(
                    actions, now, ReasonCode.TOPIC_ALIAS_INVALID,
                    "topic aliases are not accepted by the guard", "publish", publish.topic,
                    status=None, said="topic aliases are not accepted: the guard advertised none",
                )
                return
            decision = self._check_response_topic(properties)
        if decision is None:
            decision = agent.decide_publish(publish.topic, publish.payload, publish.qos,
                                            publish.retain)
        decision = self._judge(
            actions, now, decision,
            self._request("publish", publish) if self._wants_publish else None,
            "publish", publish.topic,
        )
        verdict = decision.verdict
        if verdict is Verdict.ALLOW:
            self._audit(actions, now, decision, "publish", publish.topic,
                        payload=publish.payload, qos=publish.qos, retain=publish.retain)
            if publish.qos == 2 and self._held_agent_qos2:
                # A new flow on this id: the refused one before it is over.
                self._held_agent_qos2.discard(publish.packet_id or 0)
            actions.append(SendToBroker(publish.raw))
            return
        if verdict is Verdict.HOLD and self.settings.holds:
            self._hold(publish, decision, now, actions)
            return
        self._audit(actions, now, decision, "publish", publish.topic, payload=publish.payload,
                    qos=publish.qos, retain=publish.retain)
        self._send_event(actions, now, decision, "publish", publish.topic)
        self._refuse_publish(publish, decision.reason_code, decision.reason, {}, actions)

    def _hold(self, publish: Publish, decision: Decision, now: float,
              actions: list[Command]) -> None:
        """Park the publish for a human: answer the agent now (held is never success),
        hand the action to the approvals service, and remember the id for its outcome."""
        assert self.agent_id is not None
        hold_id = self._new_hold_id()
        self._holds.add(hold_id)
        # The record carries the code the agent gets: 0x83, held (the policy's hold carries
        # 0x87 for a guard that cannot park it).
        decision = replace(decision, reason_code=ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)
        self._audit(actions, now, decision, "publish", publish.topic, payload=publish.payload,
                    qos=publish.qos, retain=publish.retain, note=f"approval request {hold_id}")
        start = StartHold(HeldAction(
            hold_id=hold_id, agent_id=self.agent_id, session_id=self.session_id,
            token_id=self.token_id, tool=decision.tool, topic=publish.topic, qos=publish.qos,
            retain=publish.retain, payload=publish.payload, properties=dict(publish.properties),
            decision=decision, created_at=now,
        ))
        # Sent before its CONNACK (section 3.1.4): the broker may still refuse the session,
        # and a hold outlives its packet, so it starts once the CONNACK accepts (its
        # answer, like every answer, follows the CONNACK).
        self._once_connected(actions, start)
        if self._events_subscribed:
            body = event_payload(decision, "publish", publish.topic, now, approval_id=hold_id)
            self._send(actions, Publish(EVENTS_TOPIC, body))
        self._refuse_publish(
            publish, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR,
            f"held for approval {hold_id}: {decision.reason}",
            {PropertyId.USER_PROPERTY: [("approval_id", hold_id)]}, actions,
        )

    def _refuse_publish(
        self, publish: Publish, code: int, reason: str, extra: dict[int, object],
        actions: list[Command],
    ) -> None:
        if publish.qos == 0 or publish.packet_id is None:
            return  # nothing to acknowledge; the event is the only feedback possible
        # The 3.1.1 encoder drops the reason code and properties v3 acks do not have. A
        # client that asked for no problem information gets no user property on an ack
        # either [MQTT-3.1.2-29] (a held publish's approval id: its event still has it).
        properties = self._reason_properties(reason)
        if extra and self._problem_information:
            properties.update(extra)
        if publish.qos == 1:
            self._send(actions, PubAck(publish.packet_id, code, properties))
            return
        self._send(actions, PubRec(publish.packet_id, code, properties))
        if self.protocol_level == 4:
            # 3.1.1 has no failure PUBREC: the client sends PUBREL next and the guard
            # completes the flow. In v5 a PUBREC >= 0x80 ends the flow and frees the id
            # [MQTT-4.3.3]: a later PUBREL with it belongs to a new, forwarded publish.
            self._held_agent_qos2.add(publish.packet_id)

    def _check_response_topic(self, properties: dict[int, object]) -> Decision | None:
        """A Response Topic must be one the agent may receive on, or it becomes a way to
        make a device publish where the agent may not."""
        response_topic = properties.get(PropertyId.RESPONSE_TOPIC)
        if response_topic is None:
            return None
        assert self._agent is not None
        receive = self._agent.decide_receive(str(response_topic))
        if receive.verdict is Verdict.ALLOW:
            return None
        return guard_refusal(
            f"response topic {response_topic!r} is not one this agent may receive on: "
            f"{receive.reason}",
            ReasonCode.NOT_AUTHORIZED,
        )

    def _delivery(self, publish: Publish, now: float, actions: list[Command]) -> bool:
        """True when the agent may have the message as it came (the caller sends it)."""
        agent = self._agent
        assert agent is not None
        decision = agent.decide_receive(publish.topic)
        if self._dry_run or self._wants_receive:
            decision = self._judge(
                actions, now, decision,
                self._request("receive", publish) if self._wants_receive else None,
                "receive", publish.topic,
            )
        if decision.verdict is Verdict.ALLOW:
            return True
        # The agent may not see this message: acknowledge it to the broker ourselves.
        self._audit(actions, now, decision, "receive", publish.topic, payload=publish.payload,
                    qos=publish.qos, retain=publish.retain)
        if publish.qos == 1 and publish.packet_id is not None:
            actions.append(SendToBroker(encode(PubAck(publish.packet_id), self.protocol_level)))
        elif publish.qos == 2 and publish.packet_id is not None:
            self._dropped_broker_qos2.add(publish.packet_id)
            actions.append(SendToBroker(encode(PubRec(publish.packet_id), self.protocol_level)))
        return False

    def _request(self, kind: str, publish: Publish) -> Request:
        assert self.agent_id is not None
        return Request(kind, self.agent_id, self.session_id, self.token_id, publish.topic,
                       publish.qos, publish.retain, publish.payload)

    # ------------------------------------------------------------------ SUBSCRIBE

    def _subscribe(self, subscribe: Subscribe, now: float, actions: list[Command]) -> None:
        agent = self._agent
        assert agent is not None and self.agent_id is not None
        forwarded = []
        pending = _PendingSubscribe(slots=[])
        changed = False
        for subscription in subscribe.subscriptions:
            topic_filter = subscription.topic_filter
            if topic_filter.startswith(GUARD_PREFIX):
                # The guard's own topics: answered here, never forwarded.
                changed = True
                code = self._guard_subscribe(topic_filter, actions)
                pending.slots.append(code)
                if code >= 0x80:
                    pending.reasons.append(f"{topic_filter}: not one of the guard's topics "
                                           f"({EVENTS_TOPIC}, {APPROVALS_PREFIX}+)")
                continue
            decision = agent.decide_subscribe(topic_filter, subscription.qos)
            decision = self._judge(actions, now, decision, Request(
                "subscribe", self.agent_id, self.session_id, self.token_id, topic_filter,
                subscription.qos,
            ) if self.pipeline.wants("subscribe") else None, "subscribe", topic_filter)
            self._audit(actions, now, decision, "subscribe", topic_filter, qos=subscription.qos)
            if decision.verdict is Verdict.ALLOW:
                cap = decision.max_qos if decision.max_qos is not None else 2
                if subscription.qos > cap:
                    subscription.qos = cap
                    changed = True
                forwarded.append(subscription)
                pending.slots.append(None)
            else:
                changed = True
                pending.slots.append(decision.reason_code)  # 3.1.1 encodes it as 0x80
                pending.reasons.append(f"{topic_filter}: {decision.reason}")
                self._send_event(actions, now, decision, "subscribe", topic_filter)
                if self._state is State.CLOSED:
                    return  # the event passed the answers-held bound: the session ended
        if not forwarded:
            self._answer_filters(SubAck, subscribe.packet_id, pending, [], actions)
            return
        if changed:
            self._pending_subscribes[subscribe.packet_id] = pending
            subset = Subscribe(subscribe.packet_id, forwarded, subscribe.properties)
            actions.append(SendToBroker(encode(subset, self.protocol_level)))
        else:
            actions.append(SendToBroker(subscribe.raw))

    def _guard_subscribe(self, topic_filter: str, actions: list[Command]) -> int:
        """A filter on the guard's own topics: granted at QoS 0 when it names one."""
        try:
            validate_topic_filter(topic_filter)
        except ProtocolError:
            return ReasonCode.TOPIC_FILTER_INVALID
        if not (
            topic_matches(topic_filter, EVENTS_TOPIC)
            or topic_filter.startswith(APPROVALS_PREFIX)
            or topic_filter in ("$guard/#", "$guard/approvals/#")
        ):
            return ReasonCode.TOPIC_FILTER_INVALID
        self._guard_filters.add(topic_filter)
        self._events_subscribed = any(topic_matches(f, EVENTS_TOPIC) for f in self._guard_filters)
        if topic_filter != EVENTS_TOPIC:
            assert self.agent_id is not None
            self._once_connected(
                actions, GuardSubscribed(self.agent_id, self.session_id, topic_filter))
        return 0  # granted QoS 0

    def _filter_ack(
        self, ack: SubAck | UnsubAck, pending_acks: dict[int, _PendingSubscribe],
        actions: list[Command],
    ) -> None:
        """The broker's SUBACK/UNSUBACK: as it came, or merged with the guard's answers."""
        pending = pending_acks.pop(ack.packet_id, None)
        if pending is None:
            actions.append(SendToAgent(ack.raw))
        else:
            self._answer_filters(type(ack), ack.packet_id, pending, ack.reason_codes, actions)

    def _answer_filters(
        self, kind: type[SubAck] | type[UnsubAck], packet_id: int, pending: _PendingSubscribe,
        upstream_codes: list[int], actions: list[Command],
    ) -> None:
        # A 3.1.1 UNSUBACK carries no codes [MQTT-3.11.3]: the encoder leaves them out.
        codes = _merge(pending.slots, upstream_codes)
        properties = self._reason_properties("; ".join(pending.reasons))
        self._send(actions, kind(packet_id, codes, properties))

    def _unsubscribe(self, unsubscribe: Unsubscribe, actions: list[Command]) -> None:
        if not any(f.startswith(GUARD_PREFIX) for f in unsubscribe.topic_filters):
            # Unsubscribing narrows what the agent receives: nothing to authorize.
            actions.append(SendToBroker(unsubscribe.raw))
            return
        pending = _PendingSubscribe(slots=[])
        forwarded = []
        for topic_filter in unsubscribe.topic_filters:
            if topic_filter.startswith(GUARD_PREFIX):
                # 0x11: no subscription existed [3.11.2.1]
                pending.slots.append(0 if topic_filter in self._guard_filters else 0x11)
                self._guard_filters.discard(topic_filter)
                if self._after_connack:
                    # Subscribed and unsubscribed before the CONNACK: nothing to announce.
                    self._after_connack = [
                        c for c in self._after_connack
                        if not (isinstance(c, GuardSubscribed) and c.topic_filter == topic_filter)
                    ]
            else:
                forwarded.append(topic_filter)
                pending.slots.append(None)
        self._events_subscribed = any(topic_matches(f, EVENTS_TOPIC) for f in self._guard_filters)
        if not forwarded:
            self._answer_filters(UnsubAck, unsubscribe.packet_id, pending, [], actions)
            return
        self._pending_unsubscribes[unsubscribe.packet_id] = pending
        subset = Unsubscribe(unsubscribe.packet_id, forwarded, unsubscribe.properties)
        actions.append(SendToBroker(encode(subset, self.protocol_level)))

    # ------------------------------------------------------------------ helpers

    def _send(self, actions: list[Command], packet: Packet) -> None:
        """A packet the guard builds for the agent, within the client's Maximum Packet Size
        [MQTT-3.1.2-24]: the reason string and user properties go first; what still does
        not fit is not sent [MQTT-3.1.2-25] (in practice an event: an ack without
        properties is a few bytes)."""
        if self._state is State.CLOSED:
            return  # the session ended in this very handler (the answers-held bound)
        data, fits = self._fit(packet)
        if not fits:
            return
        if self._state is State.CONNECTING and packet.__class__ is not Connack:
            # A client may send packets before its CONNACK arrives (section 3.1.4), but
            # the first packet it gets must be the CONNACK [MQTT-3.2.0-1]: the guard's
            # own answers to them (refusals, events) wait for it, in order.
            held = self._before_connack
            if held is None:
                held = self._before_connack = bytearray()
            held += data
            if len(held) > BEFORE_CONNACK_LIMIT:
                # A flood of refused packets before the CONNACK: each held answer costs
                # memory until then, so the guard ends the connection instead.
                reason = f"more than {BEFORE_CONNACK_LIMIT} bytes of answers held for the CONNACK"
                self._audit_session_event(actions, self._now, "connect", "denied", reason,
                                          ReasonCode.QUOTA_EXCEEDED)
                self._disconnect(actions, ReasonCode.QUOTA_EXCEEDED, reason, agent_fault=True)
            return
        actions.append(SendToAgent(data))

    def _fit(self, packet: Packet) -> tuple[bytes, bool]:
        """``packet`` encoded within the client's Maximum Packet Size, without its reason
        string and user properties if need be [MQTT-3.1.2-25], and True; or, when even
        that does not fit, its first encoding and False."""
        data = encode(packet, self.protocol_level)
        limit = self._client_max
        if limit is None or len(data) <= limit:
            return data, True
        properties = getattr(packet, "properties", None)
        if properties and any(p in properties for p in _DROPPABLE_PROPERTIES):
            for prop in _DROPPABLE_PROPERTIES:
                properties.pop(prop, None)
            smaller = encode(packet, self.protocol_level)
            if len(smaller) <= limit:
                return smaller, True
        return data, False

    def _reason_properties(self, reason: str) -> dict[int, object]:
        # A reason string only where the client did not ask us to leave it out
        # [MQTT-3.1.2-29], and only in v5.
        if self.protocol_level == 5 and self._problem_information and reason:
            return {PropertyId.REASON_STRING: reason[:1024]}
        return {}

    def _send_event(
        self, actions: list[Command], now: float, decision: Decision, action: str, topic: str
    ) -> None:
        if self._events_subscribed:
            body = event_payload(decision, action, topic, now)
            self._send(actions, Publish(EVENTS_TOPIC, body))

    def _audit(
        self, actions: list[Command], now: float, decision: Decision, packet: str, scope: str,
        *, payload: bytes | None = None, qos: int | None = None, retain: bool | None = None,
        note: str | None = None, status: str | None = None,
    ) -> None:
        # Every record says whether it was enforced (mode).
        if payload is not None and note is None and status is None:
            # A message: the same record, from the session's template for its topic.
            recorder = self._recorder
            if recorder is None or recorder.ident != (self.agent_id, self.client_id,
                                                      self.token_id, self._mode):
                recorder = self._recorder = AuditRecorder(
                    self.agent_id, self.session_id, self.client_id, self.token_id, self._mode)
            record = recorder.message(now, decision, packet, scope, payload, qos, retain)
        else:
            record = audit_record(
                now=now, agent_id=self.agent_id, session_id=self.session_id,
                client_id=self.client_id, token_id=self.token_id, decision=decision,
                packet=packet, scope=scope, payload=payload, qos=qos, retain=retain, note=note,
                status=status, mode=self._mode,
            )
        actions.append(WriteAudit(record))

    def _judge(
        self, actions: list[Command], now: float, decision: Decision, request: Request | None,
        packet: str, scope: str,
    ) -> Decision:
        """The policy's decision after the dry run and the check pipeline (``request`` None:
        no check asks about this kind of action). What either only observed is audited."""
        if self._dry_run and decision.verdict is not Verdict.ALLOW:
            decision = self._observe_policy(actions, now, decision, packet, scope)
        if request is not None:
            judged = self.pipeline.run(request, decision, now)
            if judged.observed:
                self._audit_observed(actions, now, judged, packet, scope)
            decision = judged.decision
        return decision

    def _observe_policy(
        self, actions: list[Command], now: float, decision: Decision, packet: str, scope: str
    ) -> Decision:
        """Dry run: record what the policy would have done, and let the action through."""
        self._audit(actions, now, decision, packet, scope,
                    status="would_" + decision.verdict.value, note="dry run: not enforced")
        return Decision(
            Verdict.ALLOW, f"dry run, would {decision.verdict.value}: {decision.reason}",
            ReasonCode.SUCCESS, decision.action_type, decision.tool, decision.rule,
            decision.resource, decision.risk, decision.max_qos,
        )

    def _audit_observed(
        self, actions: list[Command], now: float, judged: Judgement, packet: str, scope: str
    ) -> None:
        """What observe-mode checks would have done: recorded, never enforced."""
        for objection in judged.observed:
            status = "would_" + objection.decision.verdict.value  # would_deny, would_hold
            self._audit(actions, now, objection.decision, packet, scope, status=status,
                        note=f"observe mode: check {objection.check}")

    def _audit_session_event(
        self, actions: list[Command], now: float, packet: str, status: str, reason: str,
        code: int = 0,
    ) -> None:
        """Connect and disconnect: scoped to the agent's address, not to a topic; the
        reason code is the one the agent got (or sent)."""
        verdict = Verdict.ALLOW if status == "success" else Verdict.DENY
        decision = Decision(verdict=verdict, reason=reason, reason_code=int(code),
                            action_type="connect")
        self._audit(actions, now, decision, packet, self.peer, status=status)

    def _protocol_error(self, err: ProtocolError, now: float) -> list[Command]:
        """A malformed packet: close the connection, forwarding nothing from it [MQTT-4.8.0-1].
        v5 clients get a DISCONNECT (or CONNACK before CONNECT) with the reason first."""
        actions: list[Command] = []
        reason = f"protocol error: {err.message}"
        if self._state is not State.AWAITING_CONNECT:
            self._violation(actions, now, err.reason_code, reason, "protocol", self.peer,
                            said=err.message)
            return actions
        self._audit(actions, now, guard_refusal(reason, err.reason_code), "protocol", self.peer,
                    status="error")
        level = err.protocol_level
        if err.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION and level is not None:
            # Answer in a form the client can read: v3 CONNACK code 1 [MQTT-3.1.2-2].
            connack = Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
            actions.append(SendToAgent(encode(connack, 5 if level == 5 else 4)))
        elif level == 5:
            connack = Connack(reason_code=err.reason_code,
                              properties={PropertyId.REASON_STRING: err.message})
            actions.append(SendToAgent(encode(connack, 5)))
        self._close(actions, err.message)
        return actions

    def _violation(
        self, actions: list[Command], now: float, code: int, reason: str, packet: str,
        scope: str, *, status: str | None = "error", said: str | None = None,
    ) -> None:
        """The agent broke the protocol: audited with the code it gets, then the session
        ends as its own doing (``_disconnect``'s ``agent_fault``); ``said``: the reason
        the agent is told, when not ``reason``."""
        self._audit(actions, now, guard_refusal(reason, self._ending_code(code)), packet, scope,
                    status=status)
        self._disconnect(actions, code, said or reason, agent_fault=True)

    def _disconnect(
        self, actions: list[Command], code: int, reason: str, agent_fault: bool = False
    ) -> None:
        """End the session, telling the agent why where MQTT has a packet for it: a v5
        DISCONNECT; before the broker's CONNACK, a CONNACK that refuses, since the first
        packet the agent gets must be a CONNACK [MQTT-3.2.0-1] (3.1.1 has return codes
        for only some reasons, and no server DISCONNECT: otherwise it is only closed).
        ``agent_fault``: the agent broke the protocol; what the guard accepted from it
        before still reaches the broker (``Close.agent_ended``)."""
        properties: dict[int, object] = (
            {PropertyId.REASON_STRING: reason} if self._problem_information else {}
        )
        if self._state is State.CONNECTING:
            code = self._ending_code(code)
            if self.protocol_level == 5 or code in CONNACK_V5_TO_V3:
                self._send(actions, Connack(reason_code=code, properties=properties))
        elif self._state is not State.CLOSED and self.protocol_level == 5:
            self._send(actions, Disconnect(code, properties))
        self._close(actions, reason, agent_fault)

    def _ending_code(self, code: int) -> int:
        """The reason code the agent gets when the guard ends the session for ``code``:
        before the CONNACK, one a CONNACK may carry (a protocol error for the two
        DISCONNECT-only protocol errors, server unavailable for a shutdown; else
        unspecified error, the reason string says the rest)."""
        if self._state is not State.CONNECTING or code in CONNACK_CODES:
            return code
        if code in (ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, ReasonCode.TOPIC_ALIAS_INVALID):
            return ReasonCode.PROTOCOL_ERROR
        if code == ReasonCode.SERVER_SHUTTING_DOWN:
            return ReasonCode.SERVER_UNAVAILABLE
        return ReasonCode.UNSPECIFIED_ERROR


# One handler per event type (``GuardSession.handle``): adding an event means adding a
# row here, and an event without a row fails loudly (KeyError) in the first test.
_HANDLERS: dict[type, Callable[[GuardSession, object, float], list[Command]]] = {
    AgentOpened: GuardSession._on_agent_opened,  # type: ignore[dict-item]
    AgentData: GuardSession._on_agent_data,  # type: ignore[dict-item]
    BrokerData: GuardSession._on_broker_data,  # type: ignore[dict-item]
    AgentClosed: GuardSession._on_agent_closed,  # type: ignore[dict-item]
    BrokerClosed: GuardSession._on_broker_closed,  # type: ignore[dict-item]
    BrokerUnreachable: GuardSession._on_broker_unreachable,  # type: ignore[dict-item]
    TimerFired: GuardSession._on_timer,  # type: ignore[dict-item]
    HoldResolved: GuardSession._on_hold_resolved,  # type: ignore[dict-item]
    GuardNotice: GuardSession._on_guard_notice,  # type: ignore[dict-item]
    Kick: GuardSession._on_kick,  # type: ignore[dict-item]
    PolicySwapped: GuardSession._on_policy_swapped,  # type: ignore[dict-item]
}

# Acknowledgements and PINGRESP: passed on unchanged (the packet ids are the peers' own,
# the guard does not renumber), so a run of them is one write.
_RELAYED = frozenset({PubAck, PubRec, PubRel, PubComp, PingResp})

# What a connect is judged from before the checks run: the token and the policy said yes.
_CONNECT_ALLOWED = Decision(Verdict.ALLOW, "token accepted", 0, "connect")


def _counter_ids(session_id: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{session_id}.{next(counter)}"


def _hold_outcome(event: HoldResolved) -> Decision:
    verdict = {"approved": Verdict.ALLOW, "done": Verdict.ALLOW}.get(event.outcome, Verdict.DENY)
    reason = f"approval request {event.hold_id} {event.outcome}"
    return Decision(verdict, f"{reason}: {event.detail}" if event.detail else reason, 0, "write")


def _merge(slots: list[int | None], upstream_codes: list[int]) -> list[int]:
    """Put the broker's codes back in the positions of the filters it was sent."""
    upstream = iter(upstream_codes)
    # A broker that answers fewer codes than filters is broken: fail closed (0x80).
    return [next(upstream, 0x80) if slot is None else slot for slot in slots]
