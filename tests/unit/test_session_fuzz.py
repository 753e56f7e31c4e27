"""Property tests of the guard session: a conforming agent and a conforming broker talk
through a real ``GuardSession`` (sans-IO, a fake clock, no network) in random but
well-formed conversations, and the guard must keep what the MQTT specs and DESIGN.md
promise whatever the order of events and however the byte streams are cut into reads.

The pieces:

- ``FakeAgent``: an MQTT 5 / 3.1.1 client that only sends what the spec allows it
  (packet ids reused once their flow is over, PUBREL after a PUBREC, acks for the
  messages it gets) and checks every packet the guard sends it.
- ``FakeBroker``: the broker side, likewise: it answers what the guard forwards (PUBACK,
  PUBREC/PUBCOMP, SUBACK, UNSUBACK, PINGRESP), delivers messages, and checks what the
  guard forwards.
- ``Ledger``: what each side must get from the other, in order: the agent's publishes
  the policy allows, the broker's deliveries the agent may read.
- ``GuardedLink``: the hypothesis state machine. Its rules make either peer write packets
  and hand the session their bytes in random reads (one byte to many packets); every
  command list the session returns is checked (``_check_commands``), then carried out.

How to add an invariant: about one packet a peer receives, assert it where that peer
reads it (``FakeAgent._on_packet`` / ``FakeBroker._on_packet``); about what one event
made the session do, in ``GuardedLink._check_commands``; about what is owed once all
traffic has settled, in ``GuardedLink.teardown``. Cite the spec rule in a short comment.
A new kind of traffic is a new ``@rule`` (a new ending, one more entry in ``ENDINGS``).

A failing run prints the steps that reproduce it (``state.connect(...)``, then one call
per rule). What the machine found in the guard (four defects, all mended) is at the end
of the file, as minimal examples that fail on the guard before the mends.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)

from iot_guard.mqtt import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
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
    encode,
    topic_matches,
)
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.session import (
    AgentClosed,
    AgentData,
    AgentOpened,
    BrokerClosed,
    BrokerData,
    Close,
    Command,
    Event,
    GuardSession,
    HoldResolved,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    SessionSettings,
    StartHold,
    State,
    TimerFired,
    WriteAudit,
)
from iot_guard.tokens import issue_token

SECRET = b"unit-test-secret-unit-test-secret-0123"
POLICY = CompiledPolicy.load(Path(__file__).parents[2] / "device_policies")
AGENT_ID = "ops-agent"
_AGENT_POLICY = POLICY.for_agent(AGENT_ID, None)
assert _AGENT_POLICY is not None
ORACLE = _AGENT_POLICY  # the policy's own answers: what must happen
NOW = 1_800_000_000.0
GUARD_MAX = 64 * 1024  # the guard's own Maximum Packet Size (SessionSettings)

# What the agent publishes: some allowed, most refused (no tool, a foreign tenant, a bad
# payload, QoS or retain above what the tool allows, a change held for a human); a
# plain test below keeps both kinds here.
GOOD_SHADOW = b'{"state":{"desired":{"target_temp_c":21}}}'
PUBLISHES: list[tuple[str, bytes]] = [
    ("tenants/acme/devices/therm-001/shadow/update", GOOD_SHADOW),
    ("tenants/acme/devices/therm-001/shadow/update", b'{"state":{"desired":{"target_temp_c":99}}}'),
    ("tenants/acme/devices/therm-001/shadow/update", b"not json"),
    ("tenants/acme/devices/therm-001/shadow/update",
     b'{"state":{"desired":{"firmware_channel":"beta"}}}'),  # high risk: held
    ("tenants/acme/devices/therm-002/shadow/get", b""),
    ("tenants/acme/devices/therm-002/shadow/get", b"x"),
    ("tenants/acme/devices/therm-003/config/patch", b'{"mode":"heat"}'),  # QoS 2 allowed
    ("tenants/acme/devices/therm-003/config/patch", b'{"admin_pin":"1234"}'),
    ("tenants/acme/devices/therm-004/commands/identify", b"{}"),
    ("tenants/acme/devices/therm-004/commands/reboot", b'{"delay_s":0}'),
    ("tenants/acme/groups/floor-1/config/push", b'{"mode":"cool"}'),
    ("tenants/acme/groups/floor-1/config/push", b'{"firmware_channel":"beta"}'),  # held
    ("tenants/globex/devices/therm-101/shadow/update", GOOD_SHADOW),
    ("tenants/acme/devices/therm-001/telemetry", b'{"t":1}'),
    ("$guard/events", b"{}"),
    ("a/b", b"x" * 300),
]
# The ones the policy allows or holds (at QoS 0/1 without retain; the config patch at
# QoS 2 too): drawn half the time, so that forwarded and held flows are common.
ALLOWED_OR_HELD = st.sampled_from([0, 3, 4, 6, 8, 10, 11])
RESPONSE_TOPICS = ["tenants/acme/devices/therm-001/shadow/update/accepted", "a/b"]

# What the agent subscribes to: allowed, refused, and the guard's own topics.
FILTERS = [
    "tenants/acme/devices/therm-001/telemetry",
    "tenants/acme/devices/+/telemetry",
    "tenants/acme/devices/therm-002/status",  # the fake broker refuses status filters
    "tenants/acme/devices/+/shadow/update/accepted",
    "tenants/acme/#",
    "#",
    "tenants/globex/devices/therm-101/telemetry",
    "$share/g/tenants/acme/devices/therm-001/telemetry",
    "$guard/events",
    "$guard/#",
    "$guard/approvals/+",
    "$guard/nope",
]
GUARD_GRANTED = {"$guard/events", "$guard/#", "$guard/approvals/+"}  # granted at QoS 0

# What the broker delivers: mostly on the agent's subscriptions, some the agent may not
# read (a broker may match more than the guard granted: overlapping or stale filters).
DELIVERY_TOPICS = [
    "tenants/acme/devices/therm-001/telemetry",
    "tenants/acme/devices/therm-007/telemetry",
    "tenants/acme/devices/therm-002/status",
    "tenants/acme/devices/therm-005/shadow/update/accepted",
    "tenants/globex/devices/therm-101/telemetry",
    "tenants/acme/devices/therm-001/shadow/update",
]

# The broker's v5 CONNACK properties: none; Mosquitto's default (it offers topic
# aliases, which the guard must not pass on); a tight one (limits the agent must learn).
BROKER_CONNACKS: list[dict[int, object]] = [
    {},
    {PropertyId.TOPIC_ALIAS_MAXIMUM: 10},
    {PropertyId.TOPIC_ALIAS_MAXIMUM: 10, PropertyId.RECEIVE_MAXIMUM: 2,
     PropertyId.MAXIMUM_PACKET_SIZE: 2048},
]

ID_POOL = 5  # packet ids per direction: small, so ids are reused as soon as flows end
READ_SIZES = st.one_of(st.integers(1, 6), st.integers(7, 300), st.just(1 << 20))
# For rules that end the conversation (a DISCONNECT, a dropped connection, garbage):
# true one time in ten, so most conversations run long.
RARELY = st.integers(0, 99).map(lambda n: n % 10 == 3)

# Reason codes (MQTT 5, 2.4): success below 0x80, failure from it.
FAILURE = 0x80
NO_SUBSCRIPTION_EXISTED = 0x11


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish_decision(publish: Publish) -> Decision:
    """What the guard must decide about an agent's PUBLISH: the policy's decision, after
    the guard's rule that a Response Topic must be one the agent may read."""
    response_topic = publish.properties.get(PropertyId.RESPONSE_TOPIC)
    if response_topic is not None and \
            ORACLE.decide_receive(str(response_topic)).verdict is not Verdict.ALLOW:
        return Decision(Verdict.DENY, "response topic", 0x87, "write")
    return ORACLE.decide_publish(publish.topic, publish.payload, publish.qos, publish.retain)


def broker_grant(topic_filter: str, qos: int, level: int) -> int:
    """The fake broker's SUBACK code: it refuses status filters (its own ACL)."""
    if "status" in topic_filter:
        return 0x87 if level == 5 else FAILURE
    return qos


def broker_ack_code(packet_id: int, level: int) -> int:
    """The fake broker's PUBACK/PUBREC code: 0x10 (no matching subscribers) on even ids."""
    return 0x10 if level == 5 and packet_id % 2 == 0 else 0


# --------------------------------------------------------------------------- byte streams


class Outbox:
    """Bytes a peer wrote that the session has not read yet, and the packets they hold
    (``take`` says which packets a read completed)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.written = 0
        self.read = 0
        self.ends: deque[tuple[int, Packet]] = deque()
        self.garbage: tuple[int, int] | None = None  # where malformed bytes are, if written

    def __bool__(self) -> bool:
        return bool(self.data)

    def write(self, data: bytes, packet: Packet) -> None:
        self.data += data
        self.written += len(data)
        self.ends.append((self.written, packet))

    def write_garbage(self, data: bytes) -> None:
        self.garbage = (self.written, self.written + len(data))
        self.data += data
        self.written += len(data)

    def take(self, n: int) -> tuple[bytes, list[Packet]]:
        chunk = bytes(self.data[:n])
        del self.data[:n]
        self.read += len(chunk)
        done = []
        while self.ends and self.ends[0][0] <= self.read:
            done.append(self.ends.popleft()[1])
        return chunk, done

    @property
    def garbage_started(self) -> bool:
        """The session has read some of the malformed bytes (it may have seen them)."""
        return self.garbage is not None and self.read > self.garbage[0]

    @property
    def garbage_read(self) -> bool:
        """The session has read all of the malformed bytes (it must have seen them)."""
        return self.garbage is not None and self.read >= self.garbage[1]


@dataclass
class Ledger:
    """What each side must get from the other, in order [MQTT-4.6.0-6]: the raw bytes of
    the agent's PUBLISHes the policy allows (forwarded as they came), and of the
    broker's deliveries the agent may read (relayed as they came)."""

    forwards: deque[bytes] = field(default_factory=deque)
    deliveries: deque[bytes] = field(default_factory=deque)
    broker_connack: dict[int, object] = field(default_factory=dict)  # its v5 properties


# --------------------------------------------------------------------------- the agent


@dataclass
class AgentConfig:
    level: int
    client_max: int | None = None  # v5 Maximum Packet Size in CONNECT
    problem_info: bool = True  # v5 Request Problem Information
    receive_max: int | None = None  # v5 Receive Maximum in CONNECT
    client_id: str = "agent-1"
    expiry: int = 0  # v5 Session Expiry Interval in CONNECT
    holds: bool = False  # the guard parks held publishes (SessionSettings.holds)


class FakeAgent:
    """A conforming MQTT client; checks what the guard sends it (``_on_packet``)."""

    def __init__(self, config: AgentConfig, ledger: Ledger) -> None:
        self.config = config
        self.level = config.level
        self.ledger = ledger
        self.parser = StreamParser(side="client", protocol_level=self.level)
        self.outbox = Outbox()
        self.done = False  # sent DISCONNECT, closed, or broke the protocol: writes no more
        self.connack: Connack | None = None
        self.disconnect: Disconnect | None = None
        self.free_ids = set(range(1, ID_POOL + 1))
        # Flows the agent started, by packet id, with the decision the guard must make.
        self.awaiting_puback: dict[int, Decision] = {}
        self.awaiting_pubrec: dict[int, Decision] = {}
        self.awaiting_pubcomp: set[int] = set()
        self.awaiting_suback: dict[int, list[int]] = {}  # the codes it must get
        self.awaiting_unsuback: dict[int, list[int]] = {}
        self.pings = 0
        # Filters as the guard and the broker hold them (the agent knows both rules).
        self.guard_subs: set[str] = set()
        self.ever_guard_subs: set[str] = set()
        self.broker_subs: set[str] = set()
        # Deliveries: QoS 2 ones awaiting PUBREL; QoS 1/2 ones whose last ack the
        # session has not read yet (the Receive Maximum quota, [MQTT-3.3.4-9]).
        self.awaiting_pubrel: set[int] = set()
        self.unacked_deliveries = 0

    # -- writing

    def connect_packet(self) -> Connect:
        props: dict[int, object] = {}
        if self.level == 5:
            if self.config.client_max is not None:
                props[PropertyId.MAXIMUM_PACKET_SIZE] = self.config.client_max
            if not self.config.problem_info:
                props[PropertyId.REQUEST_PROBLEM_INFORMATION] = 0
            if self.config.receive_max is not None:
                props[PropertyId.RECEIVE_MAXIMUM] = self.config.receive_max
            if self.config.expiry:
                props[PropertyId.SESSION_EXPIRY_INTERVAL] = self.config.expiry
        token = issue_token(SECRET, AGENT_ID, now=NOW).encode()
        return Connect(self.config.client_id, self.level, True, 60, AGENT_ID, token,
                       properties=props)

    def write(self, packet: Packet) -> None:
        self.outbox.write(encode(packet, self.level), packet)

    def send_quota(self) -> int:
        """The server's Receive Maximum; before its CONNACK, 1 (the least it may be)."""
        if self.connack is None:
            return 1
        quota = self.connack.properties.get(PropertyId.RECEIVE_MAXIMUM, 65535)
        return quota if isinstance(quota, int) else 65535

    def take_publish_id(self, choice: int) -> int | None:
        """An id for a QoS 1/2 PUBLISH, or None: the server's Receive Maximum is reached
        [MQTT-3.3.4-7] or no id is free."""
        flows = len(self.awaiting_puback) + len(self.awaiting_pubrec) + len(self.awaiting_pubcomp)
        return self.take_id(choice) if flows < self.send_quota() else None

    def take_id(self, choice: int) -> int | None:
        """A currently unused packet id [MQTT-2.2.1-3], or None when all are in use."""
        if not self.free_ids:
            return None
        ids = sorted(self.free_ids)
        packet_id = ids[choice % len(ids)]
        self.free_ids.discard(packet_id)
        return packet_id

    def publish(self, publish: Publish) -> None:
        decision = publish_decision(publish)
        if decision.verdict is Verdict.ALLOW:
            self.ledger.forwards.append(encode(publish, self.level))
        if publish.qos == 1:
            assert publish.packet_id is not None
            self.awaiting_puback[publish.packet_id] = decision
        elif publish.qos == 2:
            assert publish.packet_id is not None
            self.awaiting_pubrec[publish.packet_id] = decision
        self.write(publish)

    def subscribe(self, packet_id: int, subscriptions: list[Subscription]) -> None:
        codes = []
        for sub in subscriptions:
            name = sub.topic_filter
            if name.startswith("$guard/"):
                granted = name in GUARD_GRANTED
                codes.append(0 if granted else (0x8F if self.level == 5 else FAILURE))
                if granted:
                    self.guard_subs.add(name)
                    self.ever_guard_subs.add(name)
                continue
            decision = ORACLE.decide_subscribe(name, sub.qos)
            if decision.verdict is not Verdict.ALLOW:
                codes.append(decision.reason_code if self.level == 5 else FAILURE)
                continue
            cap = decision.max_qos if decision.max_qos is not None else 2
            code = broker_grant(name, min(sub.qos, cap), self.level)
            codes.append(code)
            if code < FAILURE:
                self.broker_subs.add(name)
        self.awaiting_suback[packet_id] = codes
        self.write(Subscribe(packet_id, subscriptions))

    def unsubscribe(self, packet_id: int, filters: list[str]) -> None:
        codes = []
        for name in filters:
            held = self.guard_subs if name.startswith("$guard/") else self.broker_subs
            codes.append(0 if name in held else NO_SUBSCRIPTION_EXISTED)
            held.discard(name)
        self.awaiting_unsuback[packet_id] = codes
        self.write(Unsubscribe(packet_id, filters))

    def session_read(self, packets: list[Packet]) -> None:
        """The session read these packets of ours: their acks no longer count against
        the Receive Maximum."""
        for packet in packets:
            if isinstance(packet, PubAck | PubComp) or (
                isinstance(packet, PubRec) and packet.reason_code >= FAILURE
            ):
                self.unacked_deliveries -= 1

    # -- reading

    def receive(self, data: bytes) -> None:
        # Everything the guard sends parses as complete, well-formed MQTT packets, the
        # first of them a CONNACK [MQTT-3.2.0-1] (the parser refuses anything else).
        for packet in self.parser.feed(data):
            self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> None:
        # After a DISCONNECT the sender sends nothing more [MQTT-3.14.4-1].
        assert self.disconnect is None, f"{packet!r} after the guard's DISCONNECT"
        limit = self.config.client_max
        # Never larger than the agent's Maximum Packet Size [MQTT-3.1.2-24].
        assert limit is None or len(packet.raw) <= limit, \
            f"{len(packet.raw)} bytes > the agent's maximum {limit}: {packet!r}"
        properties = getattr(packet, "properties", {})
        if not self.config.problem_info and not isinstance(packet, Publish | Connack | Disconnect):
            # Request Problem Information 0: no Reason String or User Property on
            # anything but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
            assert PropertyId.REASON_STRING not in properties, packet
            assert PropertyId.USER_PROPERTY not in properties, packet
        if isinstance(packet, Connack):
            self._on_connack(packet)
        elif isinstance(packet, Publish):
            self._on_delivery(packet)
        elif isinstance(packet, PubAck):
            # Exactly one PUBACK per QoS 1 PUBLISH, with its packet id [MQTT-4.3.2-4].
            assert packet.packet_id in self.awaiting_puback, f"unexpected {packet!r}"
            self._check_ack_code(packet, self.awaiting_puback.pop(packet.packet_id))
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, PubRec):
            # Exactly one PUBREC per QoS 2 PUBLISH, with its packet id [MQTT-4.3.3-8].
            assert packet.packet_id in self.awaiting_pubrec, f"unexpected {packet!r}"
            self._check_ack_code(packet, self.awaiting_pubrec.pop(packet.packet_id))
            if self.level == 5 and packet.reason_code >= FAILURE:
                self.free_ids.add(packet.packet_id)  # no PUBREL after a failure [MQTT-4.3.3-4]
            else:
                self.awaiting_pubcomp.add(packet.packet_id)
                self.write(PubRel(packet.packet_id))
        elif isinstance(packet, PubComp):
            # A PUBCOMP answers a PUBREL, with its packet id [MQTT-4.3.3-11].
            assert packet.packet_id in self.awaiting_pubcomp, f"unexpected {packet!r}"
            self.awaiting_pubcomp.discard(packet.packet_id)
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, PubRel):
            assert packet.packet_id in self.awaiting_pubrel, f"unexpected {packet!r}"
            self.awaiting_pubrel.discard(packet.packet_id)
            self.write(PubComp(packet.packet_id))
        elif isinstance(packet, SubAck):
            # One SUBACK per SUBSCRIBE, same packet id [MQTT-3.8.4-1/2], one code per
            # filter in order [MQTT-3.9.3-1]: refused filters fail, the rest as granted.
            assert packet.packet_id in self.awaiting_suback, f"unexpected {packet!r}"
            assert packet.reason_codes == self.awaiting_suback.pop(packet.packet_id), packet
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, UnsubAck):
            # One UNSUBACK per UNSUBSCRIBE, same packet id [MQTT-3.10.4-4/5]; v5: one
            # code per filter in order [MQTT-3.11.3-1].
            assert packet.packet_id in self.awaiting_unsuback, f"unexpected {packet!r}"
            codes = self.awaiting_unsuback.pop(packet.packet_id)
            assert packet.reason_codes == (codes if self.level == 5 else []), packet
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, PingResp):
            # One PINGRESP per PINGREQ [MQTT-3.12.4-1].
            assert self.pings > 0, "PINGRESP without a PINGREQ"
            self.pings -= 1
        elif isinstance(packet, Disconnect):
            # The guard (or the broker, relayed) ends a v5 session only for a reason it
            # names: here always a failure code [MQTT-3.14.2-1].
            assert self.level == 5 and packet.reason_code >= FAILURE, packet
            self.disconnect = packet
            self.done = True
        else:
            raise AssertionError(f"the guard sent the agent {packet!r}")

    def _on_connack(self, connack: Connack) -> None:
        self.connack = connack
        if connack.reason_code:
            self.done = True  # refused (it broke the protocol before the CONNACK)
            return
        if self.level == 5:
            props = connack.properties
            # No aliases from the agent: the guard judges every publish on its real
            # topic (absent Topic Alias Maximum means none [MQTT-3.2.2-17]).
            assert PropertyId.TOPIC_ALIAS_MAXIMUM not in props, connack
            assert isinstance(props.get(PropertyId.MAXIMUM_PACKET_SIZE), int), connack
            # The broker's limits reach the agent (else it could overrun them).
            for limit in (PropertyId.RECEIVE_MAXIMUM, PropertyId.MAXIMUM_PACKET_SIZE):
                if limit in self.ledger.broker_connack:
                    assert props.get(limit) == self.ledger.broker_connack[limit], connack
            if not self.config.client_id:
                # An assigned client id is told to the client [MQTT-3.2.2-16].
                assert PropertyId.ASSIGNED_CLIENT_IDENTIFIER in props, connack

    def _on_delivery(self, publish: Publish) -> None:
        if publish.topic.startswith("$guard/"):
            # The guard's own messages: only where the agent subscribed to them, QoS 0.
            assert any(topic_matches(f, publish.topic) for f in self.ever_guard_subs), publish
            assert publish.qos == 0, publish
            return
        # Only what the agent may read, exactly as the broker sent it, in order, none
        # lost [MQTT-4.6.0-6].
        assert ORACLE.decide_receive(publish.topic).verdict is Verdict.ALLOW, publish
        assert self.ledger.deliveries, f"delivery the broker did not send: {publish!r}"
        assert publish.raw == self.ledger.deliveries.popleft(), publish
        if publish.qos:
            assert publish.packet_id is not None
            self.unacked_deliveries += 1
            # No more unacknowledged QoS 1/2 deliveries than the agent's Receive
            # Maximum [MQTT-3.3.4-9].
            limit = self.config.receive_max or 65535
            assert self.unacked_deliveries <= limit, "Receive Maximum exceeded"
        if publish.qos == 1:
            self.write(PubAck(publish.packet_id or 0))
        elif publish.qos == 2:
            self.awaiting_pubrel.add(publish.packet_id or 0)
            self.write(PubRec(publish.packet_id or 0))

    def _check_ack_code(self, ack: PubAck | PubRec, decision: Decision) -> None:
        """v5: an allowed publish gets the broker's code, a refused one the policy's
        (0x83 when held for approval), the same code the audit record carries."""
        if self.level != 5:
            return
        if decision.verdict is Verdict.ALLOW:
            assert ack.reason_code == broker_ack_code(ack.packet_id, 5), ack
        elif decision.verdict is Verdict.HOLD and self.config.holds:
            assert ack.reason_code == 0x83, ack
        else:
            assert ack.reason_code == decision.reason_code, (ack, decision.reason)

    def owes_nothing(self) -> None:
        """Once traffic settled on a live session, every flow the agent started ended."""
        assert not self.awaiting_puback, f"QoS 1 publishes never acked: {self.awaiting_puback}"
        assert not self.awaiting_pubrec, f"QoS 2 publishes never PUBREC'd: {self.awaiting_pubrec}"
        assert not self.awaiting_pubcomp, f"PUBRELs never completed: {self.awaiting_pubcomp}"
        assert not self.awaiting_suback, f"SUBSCRIBEs never answered: {self.awaiting_suback}"
        assert not self.awaiting_unsuback, f"UNSUBSCRIBEs never answered: {self.awaiting_unsuback}"
        assert not self.pings, f"{self.pings} PINGREQ(s) never answered"
        assert not self.awaiting_pubrel, f"deliveries never released: {self.awaiting_pubrel}"


# --------------------------------------------------------------------------- the broker


class FakeBroker:
    """A conforming MQTT server for the guard's upstream connection; checks what the
    guard forwards (``_on_packet``)."""

    def __init__(self, level: int, ledger: Ledger, connack: dict[int, object]) -> None:
        self.level = level
        self.ledger = ledger
        self.connack_properties = connack if level == 5 else {}
        limit = self.connack_properties.get(PropertyId.MAXIMUM_PACKET_SIZE)
        self.broker_max = limit if isinstance(limit, int) else None
        quota = self.connack_properties.get(PropertyId.RECEIVE_MAXIMUM)
        self.receive_quota = quota if isinstance(quota, int) else 65535
        self.unacked_publishes = 0  # the guard's QoS 1/2 PUBLISHes whose ack it has not read
        self.parser = StreamParser(side="server")
        self.outbox = Outbox()
        self.opened = False
        self.done = False  # broke the protocol or closed: writes no more
        self.disconnected = False  # got the agent's DISCONNECT
        self.connect: Connect | None = None
        self.free_ids = set(range(1, ID_POOL + 1))
        self.subscriptions: dict[str, int] = {}
        # The guard's flows (the agent's publishes): QoS 2 ids awaiting PUBREL.
        self.awaiting_pubrel: set[int] = set()
        # The broker's deliveries by packet id: what ack it awaits.
        self.awaiting_puback: set[int] = set()
        self.awaiting_pubrec: set[int] = set()
        self.awaiting_pubcomp: set[int] = set()

    def write(self, packet: Packet) -> None:
        if not self.done:  # after its DISCONNECT, nothing more [MQTT-3.14.4-1]
            self.outbox.write(encode(packet, self.level), packet)

    def open(self, connect: bytes) -> None:
        assert not self.opened, "a second OpenUpstream"
        self.opened = True
        (packet,) = self.parser.feed(connect)
        assert isinstance(packet, Connect), packet
        self.connect = packet
        # The guard's credentials and a namespaced client id, never the agent's.
        assert packet.username == "iot-guard" and packet.password == b"broker-pw", packet
        assert packet.client_id.startswith(f"iotguard:{AGENT_ID}:"), packet
        assert PropertyId.TOPIC_ALIAS_MAXIMUM not in packet.properties, packet
        self.write(Connack(0, False, dict(self.connack_properties)))

    def session_read(self, packets: list[Packet]) -> None:
        """The session read these packets of ours: acks end the guard's flows."""
        for packet in packets:
            if isinstance(packet, PubAck | PubComp) or (
                isinstance(packet, PubRec) and packet.reason_code >= FAILURE
            ):
                self.unacked_publishes -= 1

    def client_max(self) -> int | None:
        """The Maximum Packet Size the guard declared upstream (the agent's)."""
        assert self.connect is not None
        value = self.connect.properties.get(PropertyId.MAXIMUM_PACKET_SIZE)
        return value if isinstance(value, int) else None

    def receive_max(self) -> int:
        assert self.connect is not None
        value = self.connect.properties.get(PropertyId.RECEIVE_MAXIMUM)
        return value if isinstance(value, int) else 65535

    def in_flight(self) -> int:
        return len(self.awaiting_puback) + len(self.awaiting_pubrec) + len(self.awaiting_pubcomp)

    def deliver(self, publish: Publish) -> None:
        data = encode(publish, self.level)
        limit = self.client_max()
        if limit is not None and len(data) > limit:
            return  # too large for the client: not sent [MQTT-3.1.2-25]
        if ORACLE.decide_receive(publish.topic).verdict is Verdict.ALLOW:
            self.ledger.deliveries.append(data)
        if publish.qos == 1:
            self.awaiting_puback.add(publish.packet_id or 0)
        elif publish.qos == 2:
            self.awaiting_pubrec.add(publish.packet_id or 0)
        self.outbox.write(data, publish)

    def receive(self, data: bytes) -> list[Packet]:
        # What the guard sends the broker parses as well-formed MQTT (server side).
        packets = self.parser.feed(data)
        for packet in packets:
            self._on_packet(packet)
        return packets

    def _on_packet(self, packet: Packet) -> None:
        assert not self.disconnected, f"{packet!r} after the guard's DISCONNECT [MQTT-3.14.4-1]"
        # Never larger than the broker's Maximum Packet Size [MQTT-3.2.2-15].
        assert self.broker_max is None or len(packet.raw) <= self.broker_max, packet
        if isinstance(packet, Publish):
            # Exactly the agent's publishes the policy allows, as they came, in order
            # [MQTT-4.6.0-6]: none refused, none invented, none lost, none twice.
            assert self.ledger.forwards, f"a PUBLISH the agent did not send or may not: {packet!r}"
            assert packet.raw == self.ledger.forwards.popleft(), packet
            assert ORACLE.decide_publish(packet.topic, packet.payload, packet.qos,
                                         packet.retain).verdict is Verdict.ALLOW, packet
            pid = packet.packet_id or 0
            if packet.qos:
                # The guard, as a client, keeps to the broker's Receive Maximum
                # [MQTT-3.3.4-7] (the agent can only if the guard told it).
                self.unacked_publishes += 1
                assert self.unacked_publishes <= self.receive_quota, "broker quota exceeded"
            if packet.qos == 1:
                self.write(PubAck(pid, broker_ack_code(pid, self.level)))
            elif packet.qos == 2:
                # A new QoS 2 flow only on an id not in use [MQTT-2.2.1-3].
                assert pid not in self.awaiting_pubrel, packet
                self.awaiting_pubrel.add(pid)
                self.write(PubRec(pid, broker_ack_code(pid, self.level)))
        elif isinstance(packet, PubRel):
            # Only for a QoS 2 flow the broker received and PUBREC'd.
            assert packet.packet_id in self.awaiting_pubrel, f"unexpected {packet!r}"
            self.awaiting_pubrel.discard(packet.packet_id)
            self.write(PubComp(packet.packet_id))
        elif isinstance(packet, PubAck):
            # Exactly one ack per delivery (the agent's, or the guard's for one the agent
            # may not read) [MQTT-4.3.2-4].
            assert packet.packet_id in self.awaiting_puback, f"unexpected {packet!r}"
            self.awaiting_puback.discard(packet.packet_id)
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, PubRec):
            assert packet.packet_id in self.awaiting_pubrec, f"unexpected {packet!r}"
            self.awaiting_pubrec.discard(packet.packet_id)
            if packet.reason_code >= FAILURE:
                self.free_ids.add(packet.packet_id)
            else:
                self.awaiting_pubcomp.add(packet.packet_id)
                self.write(PubRel(packet.packet_id))
        elif isinstance(packet, PubComp):
            assert packet.packet_id in self.awaiting_pubcomp, f"unexpected {packet!r}"
            self.awaiting_pubcomp.discard(packet.packet_id)
            self.free_ids.add(packet.packet_id)
        elif isinstance(packet, Subscribe):
            codes = []
            for sub in packet.subscriptions:
                # No filter the policy refuses, no guard topic, no QoS above the tool's.
                name = sub.topic_filter
                decision = ORACLE.decide_subscribe(name, sub.qos)
                assert not name.startswith("$guard/"), packet
                assert decision.verdict is Verdict.ALLOW, (name, decision.reason)
                assert decision.max_qos is None or sub.qos <= decision.max_qos, packet
                code = broker_grant(name, sub.qos, self.level)
                if code < FAILURE:
                    self.subscriptions[name] = code
                codes.append(code)
            self.write(SubAck(packet.packet_id, codes))
        elif isinstance(packet, Unsubscribe):
            codes = []
            for name in packet.topic_filters:
                assert not name.startswith("$guard/"), packet
                codes.append(0 if self.subscriptions.pop(name, None) is not None
                             else NO_SUBSCRIPTION_EXISTED)
            self.write(UnsubAck(packet.packet_id, codes if self.level == 5 else []))
        elif isinstance(packet, PingReq):
            self.write(PingResp())
        elif isinstance(packet, Disconnect):
            # The agent's DISCONNECT comes after everything it sent before it.
            assert not self.ledger.forwards, "DISCONNECT overtook the agent's publishes"
            self.disconnected = True
        else:
            raise AssertionError(f"the guard sent the broker {packet!r}")

    def owes_nothing(self) -> None:
        assert not self.awaiting_pubrel, f"QoS 2 flows never released: {self.awaiting_pubrel}"
        assert not self.in_flight(), (
            f"deliveries never acked: {self.awaiting_puback} {self.awaiting_pubrec} "
            f"{self.awaiting_pubcomp}")


# --------------------------------------------------------------------------- the machine

# Malformed input, to see a protocol problem end the session cleanly.
AGENT_GARBAGE = [
    b"\x00\x00",  # reserved packet type 0
    b"\x36\x05\x00\x01a\x00\x01",  # PUBLISH with QoS 3 [MQTT-3.3.1-4]
    b"\x62\x02\x00\x00",  # PUBREL with packet id 0 [MQTT-2.2.1-3]
    b"\x30\xf0\xa2\x04",  # the header of a 70,000-byte PUBLISH: above the maximum (0x95)
]
BROKER_GARBAGE = [b"\x00\x00", b"\x20\x02\x00\x00"]  # type 0; a second CONNACK
ENDINGS = [
    "agent DISCONNECT", "agent garbage", "agent connection drops", "broker garbage",
    "broker DISCONNECT", "broker connection drops", "token expires",
]


class GuardedLink(RuleBasedStateMachine):
    """An agent and a broker, both conforming, talking through one GuardSession."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.started = False
        self.busy = False  # inside a step: a failure there leaves it set (see teardown)
        self.closed: Close | None = None
        self.may_end = False  # a peer ended the session or broke the protocol
        self.allowed_audits: Counter[tuple[str, str]] = Counter()
        self.hold_ids: list[str] = []

    # -- setup

    @initialize(
        level=st.sampled_from([5, 4, 5]),
        # 20: the smallest that still fits the guard's CONNACK here (with 16 the guard
        # refuses the session: test_a_connack_too_large_for_the_agent_refuses_the_session).
        client_max=st.sampled_from([None, 20, 64, 256, 4096]),
        problem_info=st.booleans(),
        receive_max=st.sampled_from([None, 1, 2]),
        empty_client_id=st.booleans(),
        expiry=st.sampled_from([0, 60]),
        holds=st.booleans(),
        broker_connack=st.sampled_from(BROKER_CONNACKS),
        pipelined=st.sampled_from([False, False, True]),
    )
    def connect(
        self, level: int, client_max: int | None, problem_info: bool, receive_max: int | None,
        empty_client_id: bool, expiry: int, holds: bool, broker_connack: dict[int, object],
        pipelined: bool,
    ) -> None:
        v5 = level == 5
        config = AgentConfig(
            level=level, client_max=client_max if v5 else None,
            problem_info=problem_info or not v5, receive_max=receive_max if v5 else None,
            client_id="" if empty_client_id else "agent-1", expiry=expiry if v5 else 0,
            holds=holds,
        )
        self.ledger = Ledger(broker_connack=broker_connack if v5 else {})
        self.agent = FakeAgent(config, self.ledger)
        self.broker = FakeBroker(level, self.ledger, broker_connack)
        session_settings = SessionSettings(
            secret=SECRET, upstream_username="iot-guard", upstream_password=b"broker-pw",
            max_packet_size=GUARD_MAX, holds=holds,
        )
        self.session = GuardSession(POLICY, session_settings, "s-1")
        self.started = True
        self.handle(AgentOpened("127.0.0.1:5000"))
        self.agent.write(self.agent.connect_packet())
        if not pipelined:
            # The usual start: CONNECT, then the broker's CONNACK, before anything else.
            # Pipelined, the agent may write before its CONNACK comes (section 3.1.4).
            self.read_agent(1 << 20)
            self.read_broker(1 << 20)
            assert self.agent.connack is not None and self.agent.connack.reason_code == 0

    # -- the one way events reach the session

    def handle(self, event: Event) -> list[Command]:
        self.busy = True
        self.now += 0.001
        # Invariant 1: handle() never raises, whatever comes in (a protocol problem is
        # a Close, checked in read_agent/read_broker).
        commands = self.session.handle(event, self.now)
        self._check_commands(event, commands)
        for command in commands:
            self._carry_out(command)
        self.busy = False
        return commands

    def _check_commands(self, event: Event, commands: list[Command]) -> None:
        if self.closed is not None:
            # A closed session does nothing more, whatever still arrives.
            assert commands == [], f"after {self.closed!r}, {event!r} gave {commands!r}"
            return
        closes = [c for c in commands if isinstance(c, Close)]
        if closes:
            # One Close, the last command; and only when a peer ended the session or
            # broke the protocol: conforming peers are never cut off.
            assert len(closes) == 1 and commands[-1] is closes[0], commands
            assert self.may_end, f"conforming peers were disconnected: {closes[0]!r}"

    def _carry_out(self, command: Command) -> None:
        if isinstance(command, WriteAudit):
            record = command.record
            if record.get("packet") == "publish" and record.get("result_status") == "success":
                self.allowed_audits[(record["requested_scope"], record["payload_sha256"])] += 1
        elif isinstance(command, SendToBroker):
            assert self.broker.opened, "bytes for the broker before OpenUpstream"
            for packet in self.broker.receive(command.data):
                if isinstance(packet, Publish):
                    # Audit before forward: the publish's allow record came first (DESIGN:
                    # a failed audit write stops the forward).
                    key = (packet.topic, sha256_hex(packet.payload))
                    assert self.allowed_audits[key] > 0, f"forwarded without audit: {packet!r}"
                    self.allowed_audits[key] -= 1
        elif isinstance(command, SendToAgent):
            self.agent.receive(command.data)
        elif isinstance(command, OpenUpstream):
            self.broker.open(command.connect)
        elif isinstance(command, StartHold):
            self.hold_ids.append(command.held.hold_id)
        elif isinstance(command, Close):
            self.closed = command

    # -- reads: the session gets a peer's bytes, cut anywhere

    def read_agent(self, n: int) -> None:
        self._read(self.agent, AgentData, n)

    def read_broker(self, n: int) -> None:
        self._read(self.broker, BrokerData, n)

    def _read(self, peer: FakeAgent | FakeBroker, event: type[AgentData] | type[BrokerData],
              n: int) -> None:
        was_open = self.closed is None
        was_connected = self.session.state is State.CONNECTED
        chunk, packets = peer.outbox.take(n)
        commands = self.handle(event(chunk))
        self.busy = True
        peer.session_read(packets)
        if peer.outbox.garbage_read:
            self._check_protocol_error_ends(commands, was_connected)
        elif peer is self.agent and was_open and not peer.outbox.garbage_started:
            # Every PUBLISH the session read is audited once, allowed or not (DESIGN:
            # "records every attempt").
            audited = sum(1 for c in commands
                          if isinstance(c, WriteAudit) and c.record.get("packet") == "publish")
            read = sum(1 for p in packets if isinstance(p, Publish))
            assert audited == read, f"{read} PUBLISH read, {audited} audited: {commands!r}"
        elif peer is self.broker and was_open and self.closed is None:
            # Every delivery the agent may not read is audited (as refused) once.
            audited = sum(1 for c in commands
                          if isinstance(c, WriteAudit) and c.record.get("packet") == "receive")
            refused = sum(1 for p in packets if isinstance(p, Publish)
                          if ORACLE.decide_receive(p.topic).verdict is not Verdict.ALLOW)
            assert audited == refused, f"{refused} refused deliveries, {audited} audited"
        self.busy = False

    def _check_protocol_error_ends(self, commands: list[Command], was_connected: bool) -> None:
        """Malformed bytes from either peer end the session with a Close, never an
        exception; a v5 agent is told why with a DISCONNECT reason code >= 0x80
        [MQTT-4.13.1-1] (3.1.1 has no server DISCONNECT: the connection just closes)."""
        assert self.closed is not None, f"malformed input did not end the session: {commands!r}"
        ended_now = any(isinstance(c, Close) for c in commands)
        if ended_now and was_connected and self.agent.level == 5 and not self.agent.done:
            assert self.agent.disconnect is not None, commands
            assert self.agent.disconnect.reason_code >= FAILURE, self.agent.disconnect

    @precondition(lambda self: self.started and bool(self.agent.outbox))
    @rule(n=READ_SIZES)
    def session_reads_agent(self, n: int) -> None:
        self.read_agent(n)

    @precondition(lambda self: self.started and bool(self.broker.outbox))
    @rule(n=READ_SIZES)
    def session_reads_broker(self, n: int) -> None:
        self.read_broker(n)

    # -- the agent writes

    def agent_writes(self) -> bool:
        return self.started and not self.agent.done and self.closed is None

    @precondition(agent_writes)
    @rule(
        which=st.one_of(ALLOWED_OR_HELD, st.integers(0, len(PUBLISHES) - 1)),
        qos=st.integers(0, 2),
        retain=st.sampled_from([False, False, False, True]),  # the policy refuses retain
        id_choice=st.integers(0, ID_POOL),
        response_topic=st.sampled_from([None, None, *RESPONSE_TOPICS]),
        user_property=st.booleans(),
    )
    def agent_publishes(self, which: int, qos: int, retain: bool, id_choice: int,
                        response_topic: str | None, user_property: bool) -> None:
        topic, payload = PUBLISHES[which]
        packet_id = self.agent.take_publish_id(id_choice) if qos else None
        if packet_id is None:
            qos = 0  # no id free, or the server's Receive Maximum reached: QoS 0 needs none
        props: dict[int, object] = {}
        if self.agent.level == 5:
            if response_topic is not None:
                props[PropertyId.RESPONSE_TOPIC] = response_topic
            if user_property:
                props[PropertyId.USER_PROPERTY] = [("k", "v")]
        self.agent.publish(Publish(topic, payload, qos, retain, False, packet_id, props))

    @precondition(agent_writes)
    @rule(
        filters=st.lists(st.sampled_from(FILTERS), min_size=1, max_size=4, unique=True),
        qos=st.integers(0, 2),
        id_choice=st.integers(0, ID_POOL),
    )
    def agent_subscribes(self, filters: list[str], qos: int, id_choice: int) -> None:
        packet_id = self.agent.take_id(id_choice)
        if packet_id is not None:
            self.agent.subscribe(packet_id, [Subscription(f, qos) for f in filters])

    @precondition(agent_writes)
    @rule(
        filters=st.lists(st.sampled_from(FILTERS), min_size=1, max_size=3, unique=True),
        id_choice=st.integers(0, ID_POOL),
        ping=st.booleans(),
    )
    def agent_unsubscribes_or_pings(self, filters: list[str], id_choice: int,
                                    ping: bool) -> None:
        packet_id = None if ping else self.agent.take_id(id_choice)
        if packet_id is not None:
            self.agent.unsubscribe(packet_id, filters)
        else:
            self.agent.pings += 1
            self.agent.write(PingReq())

    # -- the broker writes

    def broker_writes(self) -> bool:
        return self.started and self.broker.opened and not self.broker.done \
            and self.closed is None

    @precondition(broker_writes)
    @rule(
        which=st.integers(0, len(DELIVERY_TOPICS) - 1),
        qos=st.integers(0, 2),
        size=st.sampled_from([0, 20, 100, 600]),
        retain=st.booleans(),
        id_choice=st.integers(0, ID_POOL),
    )
    def broker_delivers(self, which: int, qos: int, size: int, retain: bool,
                        id_choice: int) -> None:
        topic = DELIVERY_TOPICS[which]
        granted = [q for f, q in self.broker.subscriptions.items() if topic_matches(f, topic)]
        if granted:
            qos = min(qos, max(granted))  # [MQTT-3.8.4-8]
        packet_id = None
        if qos:
            if not self.broker.free_ids or self.broker.in_flight() >= self.broker.receive_max():
                qos = 0  # no id free, or the agent's Receive Maximum reached
            else:
                ids = sorted(self.broker.free_ids)
                packet_id = ids[id_choice % len(ids)]
                self.broker.free_ids.discard(packet_id)
        payload = b'{"v":"' + b"x" * size + b'"}'
        self.broker.deliver(Publish(topic, payload, qos, retain, False, packet_id))

    # -- the approvals service

    @precondition(lambda self: self.started and bool(self.hold_ids) and self.closed is None)
    @rule(which=st.integers(0, 5),
          outcome=st.sampled_from(["pending", "approved", "denied", "expired", "done"]))
    def hold_resolves(self, which: int, outcome: str) -> None:
        self.handle(HoldResolved(self.hold_ids[which % len(self.hold_ids)], outcome))

    # -- endings: rare, each ends the conversation (or tries to)

    @precondition(lambda self: self.started and self.closed is None)
    @rule(now=RARELY, how=st.sampled_from(ENDINGS), agent_garbage=st.sampled_from(AGENT_GARBAGE),
          broker_garbage=st.sampled_from(BROKER_GARBAGE))
    def conversation_ends(self, now: bool, how: str, agent_garbage: bytes,
                          broker_garbage: bytes) -> None:
        if not now:
            return
        agent, broker, v5 = self.agent, self.broker, self.agent.level == 5
        connected = self.session.state is State.CONNECTED
        if how == "agent DISCONNECT" and not agent.done:
            props: dict[int, object] = {}
            if agent.config.expiry:
                # Only a session that set an expiry at CONNECT may change it [MQTT-3.14.2-2].
                props[PropertyId.SESSION_EXPIRY_INTERVAL] = 30
            agent.write(Disconnect(0x04 if v5 else 0, props))  # v5: with will
        elif how == "agent garbage" and not agent.done:
            # Perhaps in the same read as the CONNECT or packets before it: those are
            # judged first (test_garbage_after_connect_in_one_read_is_answered_in_its_limits).
            agent.outbox.write_garbage(agent_garbage)
        elif how == "agent connection drops":
            self.may_end = agent.done = True
            self.handle(AgentClosed())
            return
        elif how == "broker garbage" and self.broker_writes():
            broker.outbox.write_garbage(broker_garbage)
            broker.done = self.may_end = True
            return
        elif how == "broker DISCONNECT" and v5 and self.broker_writes():
            broker.write(Disconnect(0x8B))  # server shutting down
            broker.done = self.may_end = True
            return
        elif how == "broker connection drops" and broker.opened:
            self.may_end = broker.done = True
            self.handle(BrokerClosed())
            return
        elif how == "token expires" and connected:
            self.may_end = True
            self.handle(TimerFired("token-expiry"))
            assert self.closed is not None
            if v5:
                # v5: the agent learns why: 0xA0, maximum connect time.
                assert agent.disconnect is not None and agent.disconnect.reason_code == 0xA0
            return
        else:
            return
        agent.done = self.may_end = True

    @precondition(lambda self: self.started and self.session.state in (State.CONNECTED,
                                                                         State.CLOSED))
    @rule(now=RARELY, key=st.sampled_from(["connect", "connack", "no-such-timer"]))
    def stale_timer_fires(self, now: bool, key: str) -> None:
        """A timer that outlived what it was for does nothing (and the machine can
        always make progress, even after the session closed)."""
        if now or self.closed is not None:
            assert self.handle(TimerFired(key)) == []

    # -- the end: let all traffic settle, then nothing may be owed

    def teardown(self) -> None:
        if not self.started or self.busy:
            return  # a step failed: hypothesis reports that, not what follows from it
        for _ in range(100):
            if self.closed is not None:
                break
            if self.agent.outbox:
                self.read_agent(1 << 20)
            elif self.broker.outbox:
                self.read_broker(1 << 20)
            else:
                break
        if self.closed is not None:
            return  # flows cut short by the end of the session: nothing is owed
        # Every QoS 1/2 publish, SUBSCRIBE, UNSUBSCRIBE and PINGREQ got its one answer;
        # every delivery was acked once; nothing allowed was lost on the way.
        self.agent.owes_nothing()
        self.broker.owes_nothing()
        assert not self.ledger.forwards, f"allowed publishes never forwarded: {self.ledger}"
        assert not self.ledger.deliveries, f"deliveries never relayed: {self.ledger}"


# About 250 conversations of up to 50 steps: a few seconds. To hunt for longer, raise
# max_examples here (a few thousand take a minute or two).
GuardedLink.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestGuardedLink = GuardedLink.TestCase


# --------------------------------------------------------------------------- the pools


def test_the_pools_hold_allowed_and_refused_actions() -> None:
    """The fuzzing means little if the policy changed under it: each pool must keep
    both kinds (an allowed QoS 2 publish, a held one, a refused one; filters likewise)."""
    verdicts = {
        (publish_decision(Publish(t, p, q, False, False, 1 if q else None)).verdict, q)
        for t, p in PUBLISHES for q in (0, 1, 2)
    }
    assert {(Verdict.ALLOW, 1), (Verdict.ALLOW, 2), (Verdict.HOLD, 1), (Verdict.DENY, 1)} \
        <= verdicts
    subscribe = {ORACLE.decide_subscribe(f, 1).verdict for f in FILTERS if f[0] != "$"}
    assert subscribe == {Verdict.ALLOW, Verdict.DENY}
    receive = {ORACLE.decide_receive(t).verdict for t in DELIVERY_TOPICS}
    assert receive == {Verdict.ALLOW, Verdict.DENY}


def test_the_smallest_client_maximum_fits_what_the_guard_must_send() -> None:
    """The smallest Maximum Packet Size the machine declares (20) still fits every packet
    the guard must send it: its CONNACK with every limit and an assigned id, a SUBACK,
    a refusal without its reason string. Else the test, not the guard, would be at fault."""
    connack = Connack(0, False, {PropertyId.MAXIMUM_PACKET_SIZE: GUARD_MAX,
                                 PropertyId.ASSIGNED_CLIENT_IDENTIFIER: "s-1",
                                 PropertyId.RECEIVE_MAXIMUM: 2})
    assert len(encode(connack, 5)) <= 20
    assert len(encode(SubAck(1, [0x87] * 4), 5)) <= 20
    assert len(encode(PubAck(1, 0x99), 5)) <= 20


# --------------------------------------------------------------------------- what it found
#
# The defects the machine found, as minimal examples: each failed on the guard before
# its mend.

SETTINGS = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                           upstream_password=b"broker-pw", max_packet_size=GUARD_MAX)
HELD_SHADOW = b'{"state":{"desired":{"firmware_channel":"beta"}}}'
SHADOW_UPDATE = "tenants/acme/devices/therm-001/shadow/update"


def _connect(session: GuardSession, props: dict[int, object], client_id: str = "agent-1",
             extra: bytes = b"") -> list[Command]:
    session.handle(AgentOpened("127.0.0.1:5000"), NOW)
    token = issue_token(SECRET, AGENT_ID, now=NOW).encode()
    connect = Connect(client_id, 5, True, 60, AGENT_ID, token, properties=props)
    return session.handle(AgentData(encode(connect, 5) + extra), NOW)


def _agent_gets(commands: list[Command]) -> list[Packet]:
    """What the agent reads from these commands (a v5 client past its CONNACK)."""
    parser = StreamParser(side="client", protocol_level=5)
    parser.feed(encode(Connack(), 5))
    return parser.feed(b"".join(c.data for c in commands if isinstance(c, SendToAgent)))


def test_a_held_puback_carries_no_user_property_without_problem_information() -> None:
    # It carried the approval id, a User Property the agent asked not to get.
    session = GuardSession(POLICY, replace(SETTINGS, holds=True), "s-1")
    _connect(session, {PropertyId.REQUEST_PROBLEM_INFORMATION: 0})
    session.handle(BrokerData(encode(Connack(), 5)), NOW)
    held = Publish(SHADOW_UPDATE, HELD_SHADOW, 1, packet_id=1)
    (ack,) = _agent_gets(session.handle(AgentData(encode(held, 5)), NOW))
    assert isinstance(ack, PubAck) and ack.reason_code == 0x83  # held for approval
    # "MUST NOT send a Reason String or User Properties on any packet other than
    # PUBLISH, CONNACK, or DISCONNECT": the approval id goes in the audit and events only.
    assert PropertyId.USER_PROPERTY not in ack.properties, ack


def test_a_connack_too_large_for_the_agent_refuses_the_session() -> None:
    # The CONNACK was dropped and the session went on without it [MQTT-3.2.0-1].
    session = GuardSession(POLICY, SETTINGS, "s-1")
    # A 16-byte maximum, no client id (the guard assigns one), a broker with a limit of
    # its own: the guard's CONNACK would be 19 bytes.
    _connect(session, {PropertyId.MAXIMUM_PACKET_SIZE: 16}, client_id="")
    commands = session.handle(BrokerData(encode(Connack(0, False, {
        PropertyId.RECEIVE_MAXIMUM: 2}), 5)), NOW)
    # No smaller CONNACK may stand in for it (the broker's limits, the assigned id): the
    # session is refused, with a CONNACK that fits (0x95, its reason string dropped).
    sent = [c.data for c in commands if isinstance(c, SendToAgent)]
    assert len(sent) == 1 and len(sent[0]) <= 16, commands
    parser = StreamParser(side="client", protocol_level=5)
    (refusal,) = parser.feed(sent[0])
    assert isinstance(refusal, Connack) and refusal.reason_code == 0x95, refusal
    assert isinstance(commands[-1], Close), commands
    (record,) = [c.record for c in commands if isinstance(c, WriteAudit)]
    assert record["result_status"] == "denied" and "CONNACK (19 bytes)" in record["reason"]


def test_garbage_after_connect_in_one_read_is_answered_in_its_limits() -> None:
    # The parser dropped the whole read, CONNECT included: the refusal ignored the
    # CONNECT's Maximum Packet Size [MQTT-3.1.2-24].
    session = GuardSession(POLICY, SETTINGS, "s-1")
    # A valid CONNECT (16-byte maximum) and a reserved packet type 0, in one read: the
    # parser drops the whole read, so the guard answers as if no CONNECT had come, with
    # a 30-byte CONNACK (0x81 and its reason string).
    commands = _connect(session, {PropertyId.MAXIMUM_PACKET_SIZE: 16}, extra=b"\x00\x00")
    assert isinstance(commands[-1], Close)
    for command in commands:
        if isinstance(command, SendToAgent):
            assert len(command.data) <= 16, command


def test_broker_packets_after_its_disconnect_are_not_relayed() -> None:
    # They were relayed after the Close [MQTT-3.14.4-1]. Not reachable by the machine:
    # its broker conforms (nothing after its DISCONNECT).
    session = GuardSession(POLICY, SETTINGS, "s-1")
    _connect(session, {})
    session.handle(BrokerData(encode(Connack(), 5)), NOW)
    commands = session.handle(BrokerData(encode(Disconnect(0x8B), 5) + encode(PingResp(), 5)),
                              NOW)
    # The guard relays the DISCONNECT, then Close; nothing may follow either (the
    # agent's connection is over, and the Close says "whatever had to be said was said").
    assert isinstance(commands[-1], Close), commands


def test_publishes_before_garbage_in_one_read_reach_the_broker_audited() -> None:
    # Found beside the machine's defects: the parser dropped the whole read, so an
    # allowed publish ahead of the malformed bytes was neither audited nor forwarded,
    # though ``Close.agent_ended`` owes the broker what the guard accepted.
    session = GuardSession(POLICY, SETTINGS, "s-1")
    _connect(session, {})
    session.handle(BrokerData(encode(Connack(), 5)), NOW)
    allowed = encode(Publish(SHADOW_UPDATE, b'{"state":{"desired":{"target_temp_c":21}}}',
                             1, packet_id=7), 5)
    commands = session.handle(AgentData(allowed + b"\x00\x00"), NOW)
    kinds = [type(c).__name__ for c in commands]
    # Audited, forwarded, then the protocol error: its record, the DISCONNECT, Close.
    assert kinds[:2] == ["WriteAudit", "SendToBroker"], kinds
    assert commands[0].record["result_status"] == "success"  # type: ignore[union-attr]
    assert commands[1].data == allowed  # type: ignore[union-attr]
    assert isinstance(commands[-1], Close) and commands[-1].agent_ended, commands
    (disconnect,) = _agent_gets(commands)
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x81
