"""Incremental sans-IO MQTT 3.1.1 / 5.0 stream parser: bytes in, complete packets out.

One ``StreamParser`` per direction of a connection. ``side="server"`` reads what a client
sends to a server (the guard's agent-facing side), ``side="client"`` reads what a server
sends to a client (the broker-facing side). Any violation raises ProtocolError; after
that the parser is dead and every further ``feed()`` raises the same error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from . import reason_codes as rc
from .errors import ProtocolError
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .properties import WILL, PropertyId, parse_properties
from .reason_codes import ReasonCode
from .topics import split_shared, validate_topic_filter, validate_topic_name
from .wire import (
    malformed,
    protocol_error,
    read_binary,
    read_u8,
    read_u16,
    read_utf8,
)

DEFAULT_MAX_PACKET_SIZE = 268_435_460  # 268,435,455 remaining length + 5 header bytes

# Packets only a server sends: a server-side parser refuses them, and vice versa.
_SERVER_ONLY = frozenset(
    {PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP}
)
_CLIENT_ONLY = frozenset(
    {PacketType.CONNECT, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE, PacketType.PINGREQ}
)

_ACK_CLASSES: dict[int, type[PubAck | PubRec | PubRel | PubComp]] = {
    cls.TYPE: cls for cls in (PubAck, PubRec, PubRel, PubComp)
}
_SUB_ID = PropertyId.SUBSCRIPTION_IDENTIFIER
_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS


def _packet_id(buf: bytes, i: int, end: int) -> tuple[int, int]:
    value, i = read_u16(buf, i, end)
    if not value:
        # Packet Identifiers of SUBSCRIBE, UNSUBSCRIBE and QoS>0 PUBLISH are non-zero
        # [MQTT-2.2.1-3]; the acks echo them.
        raise protocol_error("packet identifier 0 [MQTT-2.2.1-3]")
    return value, i


def _no_trailing(i: int, end: int, what: str) -> None:
    if i != end:
        raise malformed(f"{end - i} unexpected byte(s) after the fields of {what}")


def _check_code(code: int, allowed: frozenset[int], ptype: int) -> None:
    if code not in allowed:
        raise protocol_error(f"reason code 0x{code:02X} not allowed in {PacketType(ptype).name}")


def _code_and_props(
    packet: bytes, i: int, end: int, ptype: int, codes: dict[int, frozenset[int]]
) -> tuple[int, dict[int, object], int]:
    """v5 acks, DISCONNECT, AUTH: a reason code then properties, each omissible from the end
    (reason code 0 and no properties; 3.4.2.1, 3.14.2.1, 3.15.2.1)."""
    if i >= end:
        return 0, {}, i
    code = packet[i]
    _check_code(code, codes[ptype], ptype)
    if i + 1 < end:
        props, i = parse_properties(packet, i + 1, end, ptype)
        return code, props, i
    return code, {}, i + 1


def _code_list(packet: bytes, i: int, end: int, allowed: frozenset[int], ptype: int) -> list[int]:
    """SUBACK/UNSUBACK payload: one reason code per filter of the request, at least one."""
    codes = list(packet[i:end])
    if not codes:
        raise protocol_error(f"{PacketType(ptype).name} without reason codes")
    for code in codes:
        _check_code(code, allowed, ptype)
    return codes


class StreamParser:
    """Feed bytes, get complete packets; see the module docstring."""

    __slots__ = (
        "side",
        "max_packet_size",
        "protocol_level",
        "_buf",
        "_error",
        "_ready",
        "_handlers",
        "_codes",
    )

    def __init__(
        self,
        *,
        side: Literal["server", "client"],
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        protocol_level: int | None = None,
    ) -> None:
        if side not in ("server", "client"):
            raise ValueError("side must be 'server' or 'client'")
        if protocol_level is not None and protocol_level not in (4, 5):
            raise ValueError("protocol_level must be 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")
        if side == "client" and protocol_level is None:
            raise ValueError("a client-side parser needs the protocol_level of its CONNECT")
        if max_packet_size < 2:
            raise ValueError("max_packet_size must allow at least a 2-byte packet")
        self.side = side
        self.max_packet_size = max_packet_size
        self.protocol_level: int | None = protocol_level
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        # Server side: CONNECT seen (or a level given, i.e. parsing mid-session).
        # Client side: CONNACK seen.
        self._ready = side == "server" and protocol_level is not None
        # Reason codes the peer may send: the spec's "sent by" column (reason_codes.py).
        self._codes = rc.CODES_FROM_CLIENT if side == "server" else rc.CODES_FROM_SERVER
        # One table per side, shared by every parser: a per-instance dict of bound
        # methods cost ~0.9 KB per parser, two parsers per guard session.
        self._handlers = _HANDLERS[side]

    @property
    def dead(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Return the complete packets in ``data`` (plus earlier bytes), in order.

        An empty list means more bytes are needed. On a violation the call raises
        ProtocolError, with the packets complete before it in ``before``; every later call
        raises it again, with none.
        """
        if self._error is not None:
            self._error.before = []
            raise self._error
        # bytearray/memoryview from a caller: raw and payload are bytes all the same.
        chunk = data if type(data) is bytes else bytes(data)
        buf: bytes | bytearray
        if self._buf:
            self._buf += chunk
            buf = self._buf
        else:
            buf = chunk
        out: list[Packet] = []
        pos = 0
        size = len(buf)
        limit = self.max_packet_size
        try:
            if buf is chunk and self._ready and 2 <= size <= limit:
                # The read is one whole packet and nothing is buffered (one ack, one
                # message: most reads at low load): its length checked here, no loop.
                second = chunk[1]
                if second < 0x80:
                    whole = second + 2 == size
                else:
                    whole = size > 2 and 0 < chunk[2] < 0x80 and \
                        (second & 0x7F | chunk[2] << 7) + 3 == size
                if whole:
                    return [self._parse(chunk, 2 if second < 0x80 else 3)]
            if not self._ready and size:
                # Judge the stream's first byte at once: a peer that opens with anything
                # but CONNECT (or CONNACK) is refused before its length is believed.
                if not buf[0] >> 4:
                    raise malformed("reserved packet type 0")
                self._check_first(buf[0] >> 4)
            ready = self._ready
            while size - pos >= 2:
                byte = buf[pos + 1]
                if byte < 0x80:
                    remaining = byte
                    header = 2
                elif size - pos > 2 and 0 < buf[pos + 2] < 0x80:
                    # Two bytes: 128 B to 16 KB, the size of most messages.
                    remaining = (byte & 0x7F) | (buf[pos + 2] << 7)
                    header = 3
                else:
                    # Remaining Length: a Variable Byte Integer of at most 4 bytes, shortest
                    # form [MQTT-1.5.5-1]; may be split across feeds.
                    remaining = byte & 0x7F
                    header = 0
                    for k in range(2, 5):
                        if pos + k >= size:
                            break
                        byte = buf[pos + k]
                        remaining |= (byte & 0x7F) << (7 * (k - 1))
                        if not byte & 0x80:
                            if byte == 0:
                                raise malformed("remaining length not in its shortest form")
                            header = k + 1
                            break
                    else:
                        raise malformed("remaining length longer than 4 bytes")
                    if not header:
                        break  # need more header bytes
                total = header + remaining
                if total > limit:
                    # Refused before the body is buffered (v5 3.1.2.11.4 / 0x95).
                    raise ProtocolError(
                        ReasonCode.PACKET_TOO_LARGE,
                        f"packet of {total} bytes exceeds the maximum of {limit}",
                    )
                if size - pos < total:
                    break
                end = pos + total
                packet = bytes(buf[pos:end]) if buf is self._buf else buf[pos:end]
                first = packet[0]
                if first >> 4 == 3 and ready:  # PUBLISH, most of the traffic: no dispatch
                    out.append(self._publish(packet, header, first & 0x0F))  # type: ignore[arg-type]
                else:
                    out.append(self._parse(packet, header))  # type: ignore[arg-type]
                    ready = self._ready
                pos = end
        except ProtocolError as exc:
            exc.before = out
            self._die(exc)
            raise
        except (IndexError, ValueError, OverflowError) as exc:  # defensive: never leak these
            err = malformed(f"malformed packet ({exc.__class__.__name__})")
            err.before = out
            self._die(err)
            raise err from None
        if pos:
            if buf is self._buf:
                del self._buf[:pos]
            elif pos < size:
                self._buf = bytearray(buf[pos:])
        elif buf is not self._buf and size:
            self._buf = bytearray(buf)
        return out

    def _die(self, exc: ProtocolError) -> None:
        if exc.protocol_level is None:
            exc.protocol_level = self.protocol_level
        self._error = exc
        self._buf = bytearray()

    # -- dispatch ---------------------------------------------------------------------------

    def _parse(self, packet: bytes, header: int) -> Packet:
        first = packet[0]
        ptype = first >> 4
        if ptype == 3 and self._ready:
            return self._publish(packet, header, first & 0x0F)
        if not ptype:
            raise malformed("reserved packet type 0")
        if not self._ready:
            self._check_first(ptype)
        return self._handlers[ptype](self, packet, header, first & 0x0F)

    def _check_first(self, ptype: int) -> None:
        if self.side == "server":
            if ptype != PacketType.CONNECT:
                raise protocol_error(
                    f"first packet is {PacketType(ptype).name}, not CONNECT [MQTT-3.1.0-1]"
                )
        elif ptype not in (PacketType.CONNACK, PacketType.AUTH):
            # The first packet from the server is CONNACK [MQTT-3.2.0-1] (v5: or AUTH).
            raise protocol_error(
                f"first packet from the server is {PacketType(ptype).name}, not CONNACK"
            )

    def _wrong_direction(self, packet: bytes, header: int, flags: int) -> Packet:
        sender = "server" if self.side == "client" else "client"
        raise protocol_error(f"a {sender} must not send {PacketType(packet[0] >> 4).name}")

    # -- packets ----------------------------------------------------------------------------

    def _connect(self, packet: bytes, i: int, flags: int) -> Connect:
        if self._ready:
            raise protocol_error("second CONNECT on the connection [MQTT-3.1.0-2]")
        if flags:
            raise malformed("reserved flags of CONNECT must be 0 [MQTT-2.2.2-2]")
        end = len(packet)
        name, i = read_utf8(packet, i, end)
        level, i = read_u8(packet, i, end)
        if name != "MQTT" or level not in (4, 5):
            # Unsupported level or name: v5 answers 0x84, v3.1.1 return code 1 [MQTT-3.1.2-2].
            raise ProtocolError(
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                f"unsupported protocol {name!r} level {level}",
                protocol_level=level,
            )
        try:
            connect = self._connect_body(packet, i, end, level)
        except ProtocolError as exc:
            exc.protocol_level = level
            raise
        self.protocol_level = level
        self._ready = True
        return connect

    def _connect_body(self, packet: bytes, i: int, end: int, level: int) -> Connect:
        cflags, i = read_u8(packet, i, end)
        if cflags & 0x01:
            raise malformed("reserved CONNECT flag must be 0 [MQTT-3.1.2-3]")
        will_flag = bool(cflags & 0x04)
        will_qos = (cflags >> 3) & 0x03
        will_retain = bool(cflags & 0x20)
        has_password = bool(cflags & 0x40)
        has_username = bool(cflags & 0x80)
        if will_qos == 3:
            raise malformed("will QoS 3 [MQTT-3.1.2-14] (v5: [MQTT-3.1.2-12])")
        if not will_flag and (will_qos or will_retain):
            raise malformed("will QoS/retain set without the will flag [MQTT-3.1.2-13/15]")
        if level == 4 and has_password and not has_username:
            raise malformed("password flag without username flag [MQTT-3.1.2-22]")
        keep_alive, i = read_u16(packet, i, end)
        props: dict[int, object] = {}
        if level == 5:
            props, i = parse_properties(packet, i, end, PacketType.CONNECT)
        client_id, i = read_utf8(packet, i, end)
        will = None
        if will_flag:
            will_props: dict[int, object] = {}
            if level == 5:
                will_props, i = parse_properties(packet, i, end, WILL)
            will_topic, i = read_utf8(packet, i, end)
            validate_topic_name(will_topic)  # the will topic is a Topic Name [MQTT-3.1.3-11]
            will_payload, i = read_binary(packet, i, end)
            will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
        username = password = None
        if has_username:
            username, i = read_utf8(packet, i, end)
        if has_password:
            password, i = read_binary(packet, i, end)
        _no_trailing(i, end, "CONNECT")
        return Connect(
            client_id,
            level,
            bool(cflags & 0x02),
            keep_alive,
            username,
            password,
            will,
            "MQTT",
            props,
            packet,
        )

    def _connack(self, packet: bytes, i: int, flags: int) -> Connack:
        if self._ready:
            raise protocol_error("second CONNACK on the connection")
        if flags:
            raise malformed("reserved flags of CONNACK must be 0 [MQTT-2.2.2-2]")
        end = len(packet)
        ack_flags, i = read_u8(packet, i, end)
        if ack_flags & 0xFE:
            raise malformed("reserved CONNACK acknowledge flags must be 0 [MQTT-3.2.2-1]")
        session_present = bool(ack_flags)
        code, i = read_u8(packet, i, end)
        props: dict[int, object] = {}
        if self.protocol_level == 5:
            _check_code(code, rc.CONNACK_CODES, PacketType.CONNACK)
            if code >= 0x80 and session_present:
                raise protocol_error("session present with a failure reason code [MQTT-3.2.2-6]")
            props, i = parse_properties(packet, i, end, PacketType.CONNACK)
        else:
            if code > 5:
                raise protocol_error(f"reserved CONNACK return code {code}")
            if code and session_present:
                raise protocol_error("session present with a non-zero return code [MQTT-3.2.2-4]")
        _no_trailing(i, end, "CONNACK")
        self._ready = True
        return Connack(code, session_present, props, packet)

    def _publish(self, packet: bytes, i: int, flags: int) -> Publish:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        dup = bool(flags & 0x08)
        if dup and not qos:
            raise malformed("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")
        end = len(packet)
        # Topic: one decode (strict UTF-8 refuses surrogates [MQTT-1.5.4-1]) then U+0000.
        # This is wire.read_utf8 inlined on purpose: one call less per PUBLISH (~4% of the
        # parse) and the errors name the topic.
        if i + 2 > end:
            raise malformed("truncated topic length")
        j = i + 2 + ((packet[i] << 8) | packet[i + 1])
        if j > end:
            raise malformed("topic runs past the end of the packet")
        try:
            topic = packet[i + 2 : j].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise malformed(f"topic is not well-formed UTF-8 ({exc.reason})") from None
        if "\x00" in topic:
            raise malformed("topic contains U+0000 [MQTT-1.5.4-2]")
        if "+" in topic or "#" in topic:
            raise ProtocolError(
                ReasonCode.TOPIC_NAME_INVALID, f"wildcard in topic name {topic!r} [MQTT-3.3.2-2]"
            )
        i = j
        packet_id = None
        if qos:
            if i + 2 > end:
                raise malformed("truncated packet identifier")
            packet_id = (packet[i] << 8) | packet[i + 1]
            if not packet_id:
                raise protocol_error("packet identifier 0 [MQTT-2.2.1-3]")
            i += 2
        props: dict[int, object]
        if self.protocol_level == 5:
            if i < end and not packet[i]:
                props = {}
                i += 1
            else:
                props, i = parse_properties(packet, i, end, PacketType.PUBLISH)
                if _SUB_ID in props and self.side == "server":
                    raise protocol_error(
                        "subscription identifier in a PUBLISH from a client [MQTT-3.3.4-6]"
                    )
            if not topic and _TOPIC_ALIAS not in props:
                # An empty topic is only legal together with a Topic Alias (3.3.2.3.4).
                raise ProtocolError(
                    ReasonCode.TOPIC_NAME_INVALID, "empty topic without a topic alias"
                )
        else:
            props = {}
            if not topic:
                raise ProtocolError(ReasonCode.TOPIC_NAME_INVALID, "empty topic [MQTT-4.7.3-1]")
        return Publish(topic, packet[i:], qos, bool(flags & 0x01), dup, packet_id, props, packet)

    def _ack(self, packet: bytes, i: int, flags: int) -> PubAck | PubRec | PubRel | PubComp:
        ptype = packet[0] >> 4
        expected = 0x02 if ptype == PacketType.PUBREL else 0x00
        if flags != expected:
            # PUBREL's fixed header flags are 0010 [MQTT-3.6.1-1], the others 0000.
            raise malformed(f"reserved flags of {PacketType(ptype).name} must be {expected:04b}")
        end = len(packet)
        if end == 4:
            # The common form, the packet id alone (v5: reason code 0x00 and no properties,
            # both omitted [MQTT-3.4.2.1]): one ack per QoS 1/2 message, so no helpers.
            packet_id = (packet[2] << 8) | packet[3]
            if not packet_id:
                raise protocol_error("packet identifier 0 [MQTT-2.2.1-3]")
            return _ACK_CLASSES[ptype](packet_id, 0, {}, packet)
        packet_id, i = _packet_id(packet, i, end)
        code = 0
        props: dict[int, object] = {}
        # v5: reason code and properties may be omitted (rl 2) or properties alone (rl 3).
        if self.protocol_level == 5:
            code, props, i = _code_and_props(packet, i, end, ptype, self._codes)
        _no_trailing(i, end, PacketType(ptype).name)
        return _ACK_CLASSES[ptype](packet_id, code, props, packet)

    def _subscribe(self, packet: bytes, i: int, flags: int) -> Subscribe:
        if flags != 0x02:
            raise malformed("reserved flags of SUBSCRIBE must be 0010 [MQTT-3.8.1-1]")
        end = len(packet)
        packet_id, i = _packet_id(packet, i, end)
        v5 = self.protocol_level == 5
        props: dict[int, object] = {}
        if v5:
            props, i = parse_properties(packet, i, end, PacketType.SUBSCRIBE)
        subs: list[Subscription] = []
        while i < end:
            topic_filter, i = read_utf8(packet, i, end)
            options, i = read_u8(packet, i, end)
            validate_topic_filter(topic_filter)
            qos = options & 0x03
            if not v5:
                # Reserved bits or QoS 3 make a v3.1.1 SUBSCRIBE malformed [MQTT-3-8.3-4].
                if options & 0xFC or qos == 3:
                    raise malformed("reserved subscription option bits or QoS 3 [MQTT-3-8.3-4]")
                subs.append(Subscription(topic_filter, qos))
                continue
            if options & 0xC0:
                raise malformed("reserved subscription option bits set [MQTT-3.8.3-5]")
            if qos == 3:
                raise protocol_error("subscription Maximum QoS 3 (3.8.3.1)")
            no_local = bool(options & 0x04)
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise protocol_error("retain handling 3 [MQTT-3.8.3-6]")
            if no_local and topic_filter.startswith("$share/") and split_shared(topic_filter)[0]:
                raise protocol_error("no local on a shared subscription [MQTT-3.8.3-4]")
            subs.append(
                Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
            )
        if not subs:
            raise protocol_error("SUBSCRIBE without topic filters [MQTT-3.8.3-3]")
        return Subscribe(packet_id, subs, props, packet)

    def _suback(self, packet: bytes, i: int, flags: int) -> SubAck:
        if flags:
            raise malformed("reserved flags of SUBACK must be 0 [MQTT-2.2.2-2]")
        end = len(packet)
        packet_id, i = _packet_id(packet, i, end)
        props: dict[int, object] = {}
        if self.protocol_level == 5:
            props, i = parse_properties(packet, i, end, PacketType.SUBACK)
            allowed = rc.SUBACK_CODES
        else:
            allowed = rc.SUBACK_V3_CODES
        codes = _code_list(packet, i, end, allowed, PacketType.SUBACK)
        return SubAck(packet_id, codes, props, packet)

    def _unsubscribe(self, packet: bytes, i: int, flags: int) -> Unsubscribe:
        if flags != 0x02:
            raise malformed("reserved flags of UNSUBSCRIBE must be 0010 [MQTT-3.10.1-1]")
        end = len(packet)
        packet_id, i = _packet_id(packet, i, end)
        props: dict[int, object] = {}
        if self.protocol_level == 5:
            props, i = parse_properties(packet, i, end, PacketType.UNSUBSCRIBE)
        filters: list[str] = []
        while i < end:
            topic_filter, i = read_utf8(packet, i, end)
            validate_topic_filter(topic_filter)
            filters.append(topic_filter)
        if not filters:
            raise protocol_error("UNSUBSCRIBE without topic filters [MQTT-3.10.3-2]")
        return Unsubscribe(packet_id, filters, props, packet)

    def _unsuback(self, packet: bytes, i: int, flags: int) -> UnsubAck:
        if flags:
            raise malformed("reserved flags of UNSUBACK must be 0 [MQTT-2.2.2-2]")
        end = len(packet)
        packet_id, i = _packet_id(packet, i, end)
        props: dict[int, object] = {}
        codes: list[int] = []
        if self.protocol_level == 5:
            props, i = parse_properties(packet, i, end, PacketType.UNSUBACK)
            codes = _code_list(packet, i, end, rc.UNSUBACK_CODES, PacketType.UNSUBACK)
            i = end
        _no_trailing(i, end, "UNSUBACK")
        return UnsubAck(packet_id, codes, props, packet)

    def _ping(self, packet: bytes, i: int, flags: int) -> PingReq | PingResp:
        ptype = packet[0] >> 4
        if flags:
            raise malformed(f"reserved flags of {PacketType(ptype).name} must be 0")
        _no_trailing(i, len(packet), PacketType(ptype).name)
        return PingReq(packet) if ptype == PacketType.PINGREQ else PingResp(packet)

    def _disconnect(self, packet: bytes, i: int, flags: int) -> Disconnect:
        if flags:
            raise malformed("reserved flags of DISCONNECT must be 0 [MQTT-2.2.2-2]")
        end = len(packet)
        code = 0
        props: dict[int, object] = {}
        if self.protocol_level == 5:
            code, props, i = _code_and_props(packet, i, end, PacketType.DISCONNECT, self._codes)
            if self.side == "client" and PropertyId.SESSION_EXPIRY_INTERVAL in props:
                raise protocol_error(
                    "session expiry interval in a server DISCONNECT [MQTT-3.14.2-2]"
                )
        elif self.side == "client":
            raise protocol_error("an MQTT 3.1.1 server never sends DISCONNECT")
        _no_trailing(i, end, "DISCONNECT")
        return Disconnect(code, props, packet)

    def _auth(self, packet: bytes, i: int, flags: int) -> Auth:
        if self.protocol_level != 5:
            raise malformed("reserved packet type 15 in MQTT 3.1.1")
        if flags:
            raise malformed("reserved flags of AUTH must be 0 [MQTT-3.15.1-1]")
        end = len(packet)
        has_body = i < end
        code, props, i = _code_and_props(packet, i, end, PacketType.AUTH, self._codes)
        if has_body and PropertyId.AUTHENTICATION_METHOD not in props:
            # Only the abbreviated AUTH (reason 0, no properties) may lack it.
            raise protocol_error("AUTH without an authentication method (3.15.2.2.2)")
        _no_trailing(i, end, "AUTH")
        return Auth(code, props, packet)


_Handler = Callable[[StreamParser, bytes, int, int], Packet]


def _handler_table(side: str) -> dict[int, _Handler]:
    """Packet type -> parsing method (unbound) for the packets ``side`` may receive."""
    p = StreamParser
    table: dict[int, _Handler] = {
        PacketType.CONNECT: p._connect,
        PacketType.CONNACK: p._connack,
        PacketType.PUBLISH: p._publish,
        PacketType.PUBACK: p._ack,
        PacketType.PUBREC: p._ack,
        PacketType.PUBREL: p._ack,
        PacketType.PUBCOMP: p._ack,
        PacketType.SUBSCRIBE: p._subscribe,
        PacketType.SUBACK: p._suback,
        PacketType.UNSUBSCRIBE: p._unsubscribe,
        PacketType.UNSUBACK: p._unsuback,
        PacketType.PINGREQ: p._ping,
        PacketType.PINGRESP: p._ping,
        PacketType.DISCONNECT: p._disconnect,
        PacketType.AUTH: p._auth,
    }
    for ptype in _SERVER_ONLY if side == "server" else _CLIENT_ONLY:
        table[ptype] = p._wrong_direction
    return table


_HANDLERS = {"server": _handler_table("server"), "client": _handler_table("client")}
