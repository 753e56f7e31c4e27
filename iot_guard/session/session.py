"""One agent connection, as a sans-IO state machine: bytes in, actions out.

``GuardSession.from_agent(data, now)`` and ``from_broker(data, now)`` parse what
arrived, decide about every packet with the compiled policy and return the actions
the proxy must carry out (send bytes, write audit, open the upstream, close). The
session never reads a clock or a socket: ``now`` is passed in.

Packets that pass unchanged are forwarded as their original bytes; packet ids pass
through. The guard only writes packets of its own where it must: the rewritten
CONNECT and CONNACK, acknowledgements of refused messages, SUBACK/UNSUBACK merges,
``$guard/events`` and DISCONNECT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from ..mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
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
from ..policy.compiler import AgentPolicy, CompiledPolicy
from ..policy.decision import Decision, Verdict
from ..tokens import TokenError, verify_token
from .actions import Action, Close, ExpireAt, OpenUpstream, SendToAgent, SendToBroker, WriteAudit
from .feedback import EVENTS_TOPIC, audit_record, event_payload, guard_refusal

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


class State(Enum):
    AWAITING_CONNECT = "awaiting_connect"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    secret: bytes
    upstream_username: str | None = None
    upstream_password: bytes | None = None
    max_packet_size: int = 256 * 1024
    client_id_prefix: str = "iotguard"


@dataclass(slots=True)
class _PendingSubscribe:
    """Where each filter of an agent's SUBSCRIBE/UNSUBSCRIBE gets its answer: ``None``
    means from the broker's reply (in order), an int is the guard's own reason code."""

    slots: list[int | None]
    reasons: list[str] = field(default_factory=list)


class GuardSession:
    def __init__(
        self,
        policy: CompiledPolicy,
        settings: SessionSettings,
        session_id: str,
        peer: str = "",
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.session_id = session_id
        self.peer = peer
        self.state = State.AWAITING_CONNECT
        self.agent_id: str | None = None
        self.client_id: str | None = None
        self.token_id: str | None = None
        self.protocol_level = 4
        self._agent: AgentPolicy | None = None
        self._agent_parser = StreamParser(side="server", max_packet_size=settings.max_packet_size)
        self._broker_parser: StreamParser | None = None
        self._problem_information = True  # v5 Request Problem Information [MQTT-3.1.2-29]
        self._events_subscribed = False
        # QoS 2 flows the guard ends itself: refused agent publishes, dropped deliveries.
        self._held_agent_qos2: set[int] = set()
        self._dropped_broker_qos2: set[int] = set()
        self._pending_subscribes: dict[int, _PendingSubscribe] = {}
        self._pending_unsubscribes: dict[int, _PendingSubscribe] = {}

    # ------------------------------------------------------------------ inputs

    def from_agent(self, data: bytes, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.CLOSED:
            return actions
        try:
            packets = self._agent_parser.feed(data)
        except ProtocolError as err:
            return self._protocol_error(err, now)
        for packet in packets:
            if self.state is State.CLOSED:
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
                # The second half of a refused QoS 2 publish: complete it here.
                self._held_agent_qos2.discard(packet.packet_id)
                actions.append(SendToAgent(encode(PubComp(packet.packet_id), self.protocol_level)))
            elif isinstance(packet, Disconnect):
                actions.append(SendToBroker(packet.raw))
                self._audit_session_event(
                    actions, now, "disconnect", "success", "agent disconnected"
                )
                self.state = State.CLOSED
                actions.append(Close("agent sent DISCONNECT"))
            elif isinstance(packet, Auth):
                self._disconnect(
                    actions, ReasonCode.BAD_AUTHENTICATION_METHOD,
                    "enhanced authentication is not supported: use a token as password",
                )
            else:
                # PUBACK/PUBREC/PUBREL/PUBCOMP for flows the broker started, PINGREQ.
                actions.append(SendToBroker(packet.raw))
        return actions

    def from_broker(self, data: bytes, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.CLOSED or self._broker_parser is None:
            return actions
        try:
            packets = self._broker_parser.feed(data)
        except ProtocolError as err:
            self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker sent a "
                             f"malformed packet ({err.message})")
            return actions
        agent = self._agent
        for packet in packets:
            if isinstance(packet, Publish):
                assert agent is not None
                decision = agent.decide_receive(packet.topic)
                if decision.verdict is Verdict.ALLOW:
                    actions.append(SendToAgent(packet.raw))
                else:
                    self._drop_delivery(packet, decision, now, actions)
            elif isinstance(packet, Connack):
                self._connack(packet, now, actions)
            elif isinstance(packet, SubAck):
                self._filter_ack(packet, self._pending_subscribes, actions)
            elif isinstance(packet, UnsubAck):
                self._filter_ack(packet, self._pending_unsubscribes, actions)
            elif isinstance(packet, PubRel) and packet.packet_id in self._dropped_broker_qos2:
                self._dropped_broker_qos2.discard(packet.packet_id)
                actions.append(SendToBroker(encode(PubComp(packet.packet_id), self.protocol_level)))
            elif isinstance(packet, Disconnect):
                actions.append(SendToAgent(packet.raw))
                self.state = State.CLOSED
                actions.append(Close("broker sent DISCONNECT"))
            else:
                actions.append(SendToAgent(packet.raw))
        return actions

    def broker_unreachable(self, now: float, why: str) -> list[Action]:
        """The upstream connection could not be opened: refuse the CONNECT."""
        actions: list[Action] = []
        self._refuse_connect(
            actions, now, ReasonCode.SERVER_UNAVAILABLE,
            f"upstream broker unavailable: {why}",
        )
        return actions

    def broker_closed(self, now: float) -> list[Action]:
        """The broker went away: tell the agent (v5) and close cleanly."""
        actions: list[Action] = []
        if self.state is State.CLOSED:
            return actions
        if self.state is State.CONNECTING:
            return self.broker_unreachable(now, "connection closed before CONNACK")
        self._audit_session_event(actions, now, "disconnect", "error", "upstream broker went away")
        self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker connection lost")
        return actions

    def agent_closed(self, now: float) -> list[Action]:
        """The agent's connection ended without DISCONNECT (the broker will send its will)."""
        actions: list[Action] = []
        if self.state is not State.CLOSED:
            if self.agent_id is not None:
                self._audit_session_event(
                    actions, now, "disconnect", "success", "agent connection closed"
                )
            self.state = State.CLOSED
            actions.append(Close("agent connection closed"))
        return actions

    def token_expired(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.CLOSED:
            return actions
        self._audit_session_event(actions, now, "disconnect", "denied", "token expired")
        self._disconnect(
            actions, ReasonCode.MAXIMUM_CONNECT_TIME,
            "token expired: reconnect with a fresh token",
        )
        return actions

    # ------------------------------------------------------------------ CONNECT

    def _connect(self, connect: Connect, now: float, actions: list[Action]) -> None:
        self.protocol_level = connect.protocol_level
        self._problem_information = (
            connect.properties.get(PropertyId.REQUEST_PROBLEM_INFORMATION, 1) != 0
        )
        self.client_id = connect.client_id
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
        if claims.agent_id != connect.username:
            self._refuse_connect(
                actions, now, ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                f"token was issued to agent {claims.agent_id!r}, not {connect.username!r}",
            )
            return
        agent = self.policy.for_agent(claims.agent_id, claims.tools)
        if agent is None:
            self._refuse_connect(
                actions, now, ReasonCode.NOT_AUTHORIZED,
                f"agent {claims.agent_id!r} is not in the policy",
            )
            return
        self._agent = agent
        if PropertyId.AUTHENTICATION_METHOD in connect.properties:
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
        if connect.will is not None:
            # The will is a publish the broker makes later on the agent's behalf:
            # authorize it now, like any publish.
            will = connect.will
            decision = self._check_response_topic(will.properties) or agent.decide_publish(
                will.topic, will.payload, will.qos, will.retain
            )
            self._audit(actions, now, decision, "publish", will.topic, payload=will.payload,
                        qos=will.qos, retain=will.retain, note="will message")
            if decision.verdict is not Verdict.ALLOW:
                self._refuse_connect(
                    actions, now, ReasonCode.NOT_AUTHORIZED,
                    f"will message refused: {decision.reason}", audit=False,
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
            properties={
                k: v for k, v in connect.properties.items()
                if k not in STRIPPED_CONNECT_PROPERTIES
            },
        )
        self._broker_parser = StreamParser(side="client", protocol_level=connect.protocol_level)
        self.state = State.CONNECTING
        actions.append(OpenUpstream(encode(upstream, connect.protocol_level)))
        actions.append(ExpireAt(claims.expires_at))

    def _upstream_client_id(self, client_id: str) -> str:
        # Namespaced by agent so an agent can never take over a device's (or another
        # agent's) session: a broker disconnects the older of two equal client ids.
        return f"{self.settings.client_id_prefix}:{self.agent_id}:{client_id or self.session_id}"

    def _refuse_connect(
        self, actions: list[Action], now: float, code: int, reason: str, *, audit: bool = True
    ) -> None:
        """CONNACK with an MQTT 5 reason code; the encoder turns it into the 3.1.1 return
        code for older clients and drops the reason string there."""
        if audit:
            self._audit_session_event(actions, now, "connect", "denied", reason)
        connack = Connack(reason_code=code, properties={PropertyId.REASON_STRING: reason})
        actions.append(SendToAgent(encode(connack, self.protocol_level)))
        self.state = State.CLOSED
        actions.append(Close(reason))

    def _connack(self, connack: Connack, now: float, actions: list[Action]) -> None:
        if self.state is not State.CONNECTING:
            self._disconnect(actions, ReasonCode.UNSPECIFIED_ERROR, "upstream broker sent a "
                             "second CONNACK")
            return
        if connack.reason_code != 0:
            # Upstream refused the guard's own account: that is the guard's problem, not
            # the agent's, and the broker's reason would leak how the guard connects.
            self._refuse_connect(
                actions, now, ReasonCode.SERVER_UNAVAILABLE,
                f"upstream broker refused the guard (code {connack.reason_code})",
            )
            return
        self.state = State.CONNECTED
        self._audit_session_event(actions, now, "connect", "success", "token accepted")
        if self.protocol_level == 5:
            properties = dict(connack.properties)
            # Absent Topic Alias Maximum means the client may send no aliases
            # [MQTT-3.2.2-17]; the guard checks every publish on its real topic.
            properties.pop(PropertyId.TOPIC_ALIAS_MAXIMUM, None)
            broker_max = properties.get(PropertyId.MAXIMUM_PACKET_SIZE)
            limit = self.settings.max_packet_size
            if not isinstance(broker_max, int) or broker_max > limit:
                properties[PropertyId.MAXIMUM_PACKET_SIZE] = limit
            connack = Connack(
                reason_code=0, session_present=connack.session_present, properties=properties
            )
            actions.append(SendToAgent(encode(connack, 5)))
        else:
            actions.append(SendToAgent(connack.raw))

    # ------------------------------------------------------------------ PUBLISH

    def _agent_publish(self, publish: Publish, now: float, actions: list[Action]) -> None:
        agent = self._agent
        assert agent is not None
        if PropertyId.TOPIC_ALIAS in publish.properties:
            # The guard advertised no Topic Alias Maximum, so any alias is a protocol
            # error [MQTT-3.3.2-9]; this also keeps every decision on a real topic.
            self._audit(actions, now, guard_refusal("topic aliases are not accepted by the guard",
                        ReasonCode.TOPIC_ALIAS_INVALID), "publish", publish.topic)
            self._disconnect(actions, ReasonCode.TOPIC_ALIAS_INVALID,
                             "topic aliases are not accepted: the guard advertised none")
            return
        decision = self._check_response_topic(publish.properties) or agent.decide_publish(
            publish.topic, publish.payload, publish.qos, publish.retain
        )
        self._audit(actions, now, decision, "publish", publish.topic, payload=publish.payload,
                    qos=publish.qos, retain=publish.retain)
        if decision.verdict is Verdict.ALLOW:
            actions.append(SendToBroker(publish.raw))
            return
        self._send_event(actions, now, decision, "publish", publish.topic)
        if publish.qos == 0 or publish.packet_id is None:
            return  # nothing to acknowledge; the event is the only feedback possible
        # The 3.1.1 encoder drops the reason code and properties v3 acks do not have.
        properties = self._reason_properties(decision.reason)
        code = decision.reason_code
        if publish.qos == 1:
            ack = PubAck(publish.packet_id, code, properties)
            actions.append(SendToAgent(encode(ack, self.protocol_level)))
        else:
            rec = PubRec(publish.packet_id, code, properties)
            actions.append(SendToAgent(encode(rec, self.protocol_level)))
            # v3.1.1 has no failure PUBREC, so the client sends PUBREL next; a v5 client
            # ends the flow on a failure code but the guard answers a PUBREL anyway.
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

    def _drop_delivery(
        self, publish: Publish, decision: Decision, now: float, actions: list[Action]
    ) -> None:
        """The agent may not see this message: acknowledge it to the broker ourselves."""
        self._audit(actions, now, decision, "receive", publish.topic, payload=publish.payload,
                    qos=publish.qos, retain=publish.retain)
        if publish.qos == 1 and publish.packet_id is not None:
            actions.append(SendToBroker(encode(PubAck(publish.packet_id), self.protocol_level)))
        elif publish.qos == 2 and publish.packet_id is not None:
            self._dropped_broker_qos2.add(publish.packet_id)
            actions.append(SendToBroker(encode(PubRec(publish.packet_id), self.protocol_level)))

    # ------------------------------------------------------------------ SUBSCRIBE

    def _subscribe(self, subscribe: Subscribe, now: float, actions: list[Action]) -> None:
        agent = self._agent
        assert agent is not None
        forwarded = []
        pending = _PendingSubscribe(slots=[])
        changed = False
        for subscription in subscribe.subscriptions:
            topic_filter = subscription.topic_filter
            if topic_filter == EVENTS_TOPIC:
                # The guard's own feedback channel: answered here, never forwarded.
                self._events_subscribed = True
                pending.slots.append(0)  # granted QoS 0
                changed = True
                continue
            decision = agent.decide_subscribe(topic_filter, subscription.qos)
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
        if not forwarded:
            self._answer_filters(SubAck, subscribe.packet_id, pending, [], actions)
            return
        if changed:
            self._pending_subscribes[subscribe.packet_id] = pending
            subset = Subscribe(subscribe.packet_id, forwarded, subscribe.properties)
            actions.append(SendToBroker(encode(subset, self.protocol_level)))
        else:
            actions.append(SendToBroker(subscribe.raw))

    def _filter_ack(
        self, ack: SubAck | UnsubAck, pending_acks: dict[int, _PendingSubscribe],
        actions: list[Action],
    ) -> None:
        """The broker's SUBACK/UNSUBACK: as it came, or merged with the guard's answers."""
        pending = pending_acks.pop(ack.packet_id, None)
        if pending is None:
            actions.append(SendToAgent(ack.raw))
        else:
            self._answer_filters(type(ack), ack.packet_id, pending, ack.reason_codes, actions)

    def _answer_filters(
        self, kind: type[SubAck] | type[UnsubAck], packet_id: int, pending: _PendingSubscribe,
        upstream_codes: list[int], actions: list[Action],
    ) -> None:
        # A 3.1.1 UNSUBACK carries no codes [MQTT-3.11.3]: the encoder leaves them out.
        codes = _merge(pending.slots, upstream_codes)
        properties = self._reason_properties("; ".join(pending.reasons))
        actions.append(SendToAgent(encode(kind(packet_id, codes, properties),
                                          self.protocol_level)))

    def _unsubscribe(self, unsubscribe: Unsubscribe, actions: list[Action]) -> None:
        if EVENTS_TOPIC not in unsubscribe.topic_filters:
            # Unsubscribing narrows what the agent receives: nothing to authorize.
            actions.append(SendToBroker(unsubscribe.raw))
            return
        self._events_subscribed = False
        pending = _PendingSubscribe(slots=[])
        forwarded = []
        for topic_filter in unsubscribe.topic_filters:
            if topic_filter == EVENTS_TOPIC:
                pending.slots.append(0)
            else:
                forwarded.append(topic_filter)
                pending.slots.append(None)
        if not forwarded:
            self._answer_filters(UnsubAck, unsubscribe.packet_id, pending, [], actions)
            return
        self._pending_unsubscribes[unsubscribe.packet_id] = pending
        subset = Unsubscribe(unsubscribe.packet_id, forwarded, unsubscribe.properties)
        actions.append(SendToBroker(encode(subset, self.protocol_level)))

    # ------------------------------------------------------------------ helpers

    def _reason_properties(self, reason: str) -> dict[int, object]:
        # A reason string only where the client did not ask us to leave it out
        # [MQTT-3.1.2-29], and only in v5.
        if self.protocol_level == 5 and self._problem_information and reason:
            return {PropertyId.REASON_STRING: reason[:1024]}
        return {}

    def _send_event(
        self, actions: list[Action], now: float, decision: Decision, action: str, topic: str
    ) -> None:
        if not self._events_subscribed:
            return
        event = Publish(EVENTS_TOPIC, event_payload(decision, action, topic, now))
        actions.append(SendToAgent(encode(event, self.protocol_level)))

    def _audit(
        self, actions: list[Action], now: float, decision: Decision, packet: str, scope: str,
        *, payload: bytes | None = None, qos: int | None = None, retain: bool | None = None,
        note: str | None = None, status: str | None = None,
    ) -> None:
        actions.append(WriteAudit(audit_record(
            now=now, agent_id=self.agent_id, session_id=self.session_id,
            client_id=self.client_id, token_id=self.token_id, decision=decision, packet=packet,
            scope=scope, payload=payload, qos=qos, retain=retain, note=note, status=status,
        )))

    def _audit_session_event(
        self, actions: list[Action], now: float, packet: str, status: str, reason: str
    ) -> None:
        """Connect and disconnect: scoped to the agent's address, not to a topic."""
        verdict = Verdict.ALLOW if status == "success" else Verdict.DENY
        decision = Decision(verdict=verdict, reason=reason, reason_code=0, action_type="connect")
        self._audit(actions, now, decision, packet, self.peer, status=status)

    def _protocol_error(self, err: ProtocolError, now: float) -> list[Action]:
        """A malformed packet: close the connection, forwarding nothing from it [MQTT-4.8.0-1].
        v5 clients get a DISCONNECT (or CONNACK before CONNECT) with the reason first."""
        actions: list[Action] = []
        decision = guard_refusal(f"protocol error: {err.message}", err.reason_code)
        self._audit(actions, now, decision, "protocol", self.peer, status="error")
        level = err.protocol_level
        if self.state is State.AWAITING_CONNECT:
            if err.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION and level is not None:
                # Answer in a form the client can read: v3 CONNACK code 1 [MQTT-3.1.2-2].
                connack = Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
                actions.append(SendToAgent(encode(connack, 5 if level == 5 else 4)))
            elif level == 5:
                connack = Connack(reason_code=err.reason_code,
                                  properties={PropertyId.REASON_STRING: err.message})
                actions.append(SendToAgent(encode(connack, 5)))
            self.state = State.CLOSED
            actions.append(Close(err.message))
            return actions
        self._disconnect(actions, err.reason_code, err.message)
        return actions

    def _disconnect(self, actions: list[Action], code: int, reason: str) -> None:
        if self.state is not State.CLOSED and self.protocol_level == 5:
            properties: dict[int, object] = (
                {PropertyId.REASON_STRING: reason} if self._problem_information else {}
            )
            actions.append(SendToAgent(encode(Disconnect(code, properties), 5)))
        self.state = State.CLOSED
        actions.append(Close(reason))


def _merge(slots: list[int | None], upstream_codes: list[int]) -> list[int]:
    """Put the broker's codes back in the positions of the filters it was sent."""
    upstream = iter(upstream_codes)
    # A broker that answers fewer codes than filters is broken: fail closed (0x80).
    return [next(upstream, 0x80) if slot is None else slot for slot in slots]

