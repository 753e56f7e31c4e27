"""Property tests: random and mutated input never raises anything but ProtocolError, and
whatever parses re-encodes to bytes that parse to the same packet (no malformed forward)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_guard.mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PropertyId,
    ProtocolError,
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

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the parser states a stream can meet ------------------------------------------------------

STATES = [
    ("server", None),  # before CONNECT
    ("server", 4),
    ("server", 5),
    ("client", 4),
    ("client", 5),
]


def _parser(side: str, level: int | None) -> StreamParser:
    if side == "server":
        return StreamParser(side="server", protocol_level=level)
    parser = StreamParser(side="client", protocol_level=level)
    parser.feed(encode(Connack(), level or 4))
    return parser


def _reparse_parser(side: str, level: int, packet: Any) -> StreamParser:
    if isinstance(packet, Connect):
        return StreamParser(side="server")
    if side == "client" and isinstance(packet, Connack):
        return StreamParser(side="client", protocol_level=level)
    return _parser(side, level)


def _strip(packet: Any) -> Any:
    return dataclasses.replace(packet, raw=b"")


def _check_round_trip(side: str, packets: list[Any], level: int | None) -> None:
    for packet in packets:
        plevel = packet.protocol_level if isinstance(packet, Connect) else level
        assert plevel in (4, 5)
        data = encode(packet, plevel)
        (again,) = _reparse_parser(side, plevel, packet).feed(data)
        assert _strip(again) == _strip(packet)
        if isinstance(packet, Connect):
            level = packet.protocol_level


def _feed_checked(side: str, level: int | None, data: bytes) -> None:
    parser = _parser(side, level)
    try:
        packets = parser.feed(data)
    except ProtocolError as err:
        assert 0x80 <= err.reason_code <= 0xA2
        assert parser.dead
        return
    for packet in packets:
        assert packet.raw and packet.raw in data
    _check_round_trip(side, packets, level)


# -- random bytes ---------------------------------------------------------------------------


@FAST
@given(state=st.sampled_from(STATES), data=st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_error(state: tuple[str, int | None], data: bytes) -> None:
    _feed_checked(*state, data)


@FAST
@given(
    state=st.sampled_from(STATES[1:]),
    first=st.integers(0, 255),
    body=st.binary(max_size=80),
)
def test_random_bodies_behind_every_fixed_header(
    state: tuple[str, int | None], first: int, body: bytes
) -> None:
    # Random bytes rarely form a complete frame; this gives every type/flag combination a body.
    _feed_checked(*state, bytes((first, len(body))) + body)


# -- mutated valid packets -------------------------------------------------------------------

USER = PropertyId.USER_PROPERTY

CLIENT_CORPUS = [
    Publish("tenants/acme/devices/therm-001/telemetry", b'{"t":21.5}'),
    Publish("a/b", b"x", 1, True, False, 7, {PropertyId.RESPONSE_TOPIC: "r/t", USER: [("k", "v")]}),
    Publish("", b"", 2, packet_id=9, properties={PropertyId.TOPIC_ALIAS: 3}),
    Subscribe(1, [Subscription("a/+", 1, True, False, 1), Subscription("$share/g/b/#", 2)]),
    Subscribe(2, [Subscription("x")], {PropertyId.SUBSCRIPTION_IDENTIFIER: 300}),
    Unsubscribe(3, ["a/+", "b/#"], {USER: [("a", "b")]}),
    PubAck(4, 0x87, {PropertyId.REASON_STRING: "no"}),
    PubRec(5),
    PubRel(5, 0x92),
    PubComp(5),
    PingReq(),
    Disconnect(0x04, {PropertyId.SESSION_EXPIRY_INTERVAL: 10}),
    Auth(0x19, {PropertyId.AUTHENTICATION_METHOD: "m", PropertyId.AUTHENTICATION_DATA: b"d"}),
]
SERVER_CORPUS = [
    Publish(
        "a/b", b"payload", 1, packet_id=3, properties={PropertyId.SUBSCRIPTION_IDENTIFIER: [1, 2]}
    ),
    SubAck(1, [0, 1, 2, 0x80]),
    SubAck(2, [0x87], {PropertyId.REASON_STRING: "x"}),
    UnsubAck(3, [0, 0x11]),
    PingResp(),
    PubAck(9, 0x10),
    Disconnect(0x8B, {PropertyId.SERVER_REFERENCE: "s"}),
]
CONNECTS = [
    Connect("agent", 4, True, 60, "u", b"p", Will("w/t", b"bye", 1, True)),
    Connect(
        "agent",
        5,
        False,
        10,
        None,
        b"p",
        Will("w", b"", 0, False, {PropertyId.WILL_DELAY_INTERVAL: 5}),
        properties={PropertyId.RECEIVE_MAXIMUM: 10, USER: [("a", "b")]},
    ),
]
CONNACKS = [Connack(0, True), Connack(0x87, False, {PropertyId.REASON_STRING: "r"})]


def _corpus() -> list[tuple[str, int | None, bytes]]:
    items: list[tuple[str, int | None, bytes]] = []
    for level in (4, 5):
        for packet in CLIENT_CORPUS:
            if level == 4 and isinstance(packet, Auth):
                continue
            if level == 4 and isinstance(packet, Publish) and not packet.topic:
                continue
            items.append(("server", level, encode(packet, level)))
        for packet in SERVER_CORPUS:
            if level == 4 and isinstance(packet, Disconnect):
                continue
            items.append(("client", level, encode(packet, level)))
    for connect in CONNECTS:
        items.append(("server", None, encode(connect, connect.protocol_level)))
    for connack in CONNACKS:
        for level in (4, 5):
            items.append(("client", -level, encode(connack, level)))  # -level: before CONNACK
    return items


CORPUS = _corpus()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, int | None, bytes]:
    side, level, data = draw(st.sampled_from(CORPUS))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not buf:
            break
        index = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[index] = draw(st.integers(0, 255))
        elif kind == "insert":
            buf[index:index] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del buf[index : index + draw(st.integers(1, 3))]
        else:
            del buf[index:]
    return side, level, bytes(buf)


@FAST
@given(case=mutated())
def test_mutated_packets_only_raise_protocol_error_and_round_trip(
    case: tuple[str, int | None, bytes],
) -> None:
    side, level, data = case
    if level is not None and level < 0:
        parser = StreamParser(side="client", protocol_level=-level)
        try:
            packets = parser.feed(data)
        except ProtocolError:
            return
        _check_round_trip("client", packets, -level)
        return
    _feed_checked(side, level, data)


@FAST
@given(case=st.sampled_from(CORPUS), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_chunking_equals_one_shot(case: tuple[str, int | None, bytes], cuts: list[int]) -> None:
    side, level, data = case
    if level is not None and level < 0:
        return
    stream = data * 3
    one_shot = _parser(side, level).feed(stream) if level is not None else None
    if one_shot is None:  # CONNECT corpus: only one CONNECT per stream
        stream = data
        one_shot = _parser(side, level).feed(stream)
    parser = _parser(side, level)
    got: list[Any] = []
    previous = 0
    for cut in sorted({min(c, len(stream)) for c in cuts}) + [len(stream)]:
        got.extend(parser.feed(stream[previous:cut]))
        previous = cut
    assert got == one_shot


# -- generated packets round-trip ------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_LEVEL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/+#"),
    max_size=6,
)
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(_LEVEL, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    text = "/".join(levels)
    if not text:
        text = "#"
    if draw(st.integers(0, 5)) == 0:
        text = f"$share/{draw(_LEVEL.filter(bool))}/{text}"
    return text


_USER_PROPS = st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=3)


@st.composite
def _publish_props(draw: st.DrawFn) -> dict[int, object]:
    props: dict[int, object] = {}
    if draw(st.booleans()):
        props[PropertyId.PAYLOAD_FORMAT_INDICATOR] = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props[PropertyId.MESSAGE_EXPIRY_INTERVAL] = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props[PropertyId.CONTENT_TYPE] = draw(_TEXT)
    if draw(st.booleans()):
        props[PropertyId.RESPONSE_TOPIC] = draw(_TOPIC)
    if draw(st.booleans()):
        props[PropertyId.CORRELATION_DATA] = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        props[USER] = draw(_USER_PROPS)
    return props


@st.composite
def client_packets(draw: st.DrawFn, level: int) -> Any:
    v5 = level == 5
    kind = draw(st.sampled_from(["publish", "subscribe", "unsubscribe", "ack"]))
    pid = draw(st.integers(1, 65535))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        return Publish(
            draw(_TOPIC),
            draw(st.binary(max_size=300)),
            qos,
            draw(st.booleans()),
            draw(st.booleans()) if qos else False,
            pid if qos else None,
            draw(_publish_props()) if v5 else {},
        )
    if kind == "subscribe":
        subs = []
        for topic_filter in draw(st.lists(_filters(), min_size=1, max_size=4)):
            if not v5:
                subs.append(Subscription(topic_filter, draw(st.integers(0, 2))))
                continue
            shared = topic_filter.startswith("$share/")
            subs.append(
                Subscription(
                    topic_filter,
                    draw(st.integers(0, 2)),
                    False if shared else draw(st.booleans()),
                    draw(st.booleans()),
                    draw(st.integers(0, 2)),
                )
            )
        props: dict[int, object] = {}
        if v5 and draw(st.booleans()):
            props[PropertyId.SUBSCRIPTION_IDENTIFIER] = draw(st.integers(1, 268_435_455))
        return Subscribe(pid, subs, props)
    if kind == "unsubscribe":
        props = {USER: draw(_USER_PROPS)} if v5 and draw(st.booleans()) else {}
        return Unsubscribe(pid, draw(st.lists(_filters(), min_size=1, max_size=4)), props)
    cls = draw(st.sampled_from([PubAck, PubRec, PubRel, PubComp]))
    if not v5:
        return cls(pid)
    # 0x10 "no matching subscribers" is the server's to send: not in a client packet.
    code = draw(st.sampled_from([0, 0x92] if cls in (PubRel, PubComp) else [0, 0x80, 0x87, 0x99]))
    props = {PropertyId.REASON_STRING: draw(_TEXT)} if draw(st.booleans()) else {}
    return cls(pid, code, props)


@FAST
@given(level=st.sampled_from([4, 5]), data=st.data())
def test_generated_client_packets_round_trip(level: int, data: st.DataObject) -> None:
    packet = data.draw(client_packets(level))
    encoded = encode(packet, level)
    (parsed,) = StreamParser(side="server", protocol_level=level).feed(encoded)
    assert parsed.raw == encoded
    assert _strip(parsed) == packet


@FAST
@given(
    level=st.sampled_from([4, 5]),
    client_id=_TEXT,
    username=st.one_of(st.none(), _TEXT),
    password=st.one_of(st.none(), st.binary(max_size=20)),
    will_topic=st.one_of(st.none(), _TOPIC),
    will_qos=st.integers(0, 2),
    keep_alive=st.integers(0, 65535),
)
def test_generated_connects_round_trip(
    level: int,
    client_id: str,
    username: str | None,
    password: bytes | None,
    will_topic: str | None,
    will_qos: int,
    keep_alive: int,
) -> None:
    if level == 4 and username is None:
        password = None  # [MQTT-3.1.2-22]
    will = Will(will_topic, b"w", will_qos, will_qos == 1) if will_topic else None
    packet = Connect(client_id, level, keep_alive == 0, keep_alive, username, password, will)
    parser = StreamParser(side="server")
    (parsed,) = parser.feed(encode(packet, level))
    assert _strip(parsed) == packet
    assert parser.protocol_level == level
