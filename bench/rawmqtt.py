"""MQTT 3.1.1 packets for the benchmark clients, and a cheap frame splitter and counter.

The packets are encoded once, before any clock starts, with ``iot_guard.mqtt.encode``;
the direct runs send the same bytes to Mosquitto, which would refuse a malformed one.
What runs per packet while measuring (``Splitter``) stays hand-written and minimal: it
only cuts frames (or counts PUBLISH) without building packet objects, so the clients
are never the bottleneck.
"""

from __future__ import annotations

from iot_guard.mqtt import (
    Connect,
    Disconnect,
    PubAck,
    Publish,
    Subscribe,
    Subscription,
    encode,
)

# Packet types the clients look for in the first byte's high nibble [MQTT-2.2.1].
CONNACK, PUBLISH, PUBACK, SUBACK = 2, 3, 4, 9
LEVEL = 4  # MQTT 3.1.1 [MQTT-3.1.2-2]; the load bench's agents speak 5.0 (level 5)


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    level: int = LEVEL,
) -> bytes:
    """CONNECT, clean session [MQTT-3.1.2-1..3]."""
    secret = password.encode() if password is not None else None
    return encode(Connect(client_id, level, True, keepalive, username, secret), level)


def subscribe(packet_id: int, filters: list[str], qos: int = 0, level: int = LEVEL) -> bytes:
    return encode(Subscribe(packet_id, [Subscription(f, qos=qos) for f in filters]), level)


def publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    level: int = LEVEL,
) -> bytes:
    """PUBLISH; a packet id only for QoS > 0 [MQTT-2.3.1-5]."""
    return encode(Publish(topic, payload, qos, retain, packet_id=packet_id or None), level)


def puback(packet_id: int, level: int = LEVEL) -> bytes:
    return encode(PubAck(packet_id), level)


def disconnect(level: int = LEVEL) -> bytes:
    return encode(Disconnect(), level)


def connack_code(body: bytes) -> int:
    """The CONNACK return code (3.1.1) or reason code (5.0): the second byte [MQTT-3.2.2]."""
    return body[1]


def ack_reason(body: bytes) -> int:
    """A PUBACK's reason code: absent (a two-byte body) means 0x00 success [MQTT-3.4.2.1]."""
    return body[2] if len(body) > 2 else 0


def suback_codes(body: bytes, level: int = LEVEL) -> list[int]:
    """The SUBACK's return/reason codes, after the packet id (and 5.0 properties [MQTT-3.9.2])."""
    if level < 5:
        return list(body[2:])
    length, i = _varint(body, 2)
    return list(body[i + length :])


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, index after it) of a Variable Byte Integer [MQTT-1.5.5]."""
    value, shift = 0, 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


class Splitter:
    """Splits a byte stream into (first_byte, body) frames; keeps the incomplete tail."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while True:
            head = _header(buf, pos, end)
            if head is None:
                break
            start, length = head
            frames.append((buf[pos], buf[start : start + length]))
            pos = start + length
        self.buf = buf[pos:]
        return frames

    def count(self, data: bytes, packet_type: int = PUBLISH) -> tuple[int, list[tuple[int, bytes]]]:
        """Count frames of ``packet_type`` without copying their bodies; return the others.

        The relay consumer's hot path: it only needs to know how many PUBLISH arrived.
        """
        buf = self.buf + data if self.buf else data
        n = 0
        others: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            byte = buf[pos + 1]
            if byte < 0x80:  # one-byte remaining length: the common case for ~100 B
                length, i = byte, pos + 2
            else:
                head = _header(buf, pos, end)
                if head is None:
                    break
                i, length = head
            if end - i < length:
                break
            if buf[pos] >> 4 == packet_type:
                n += 1
            else:
                others.append((buf[pos], buf[i : i + length]))
            pos = i + length
        self.buf = buf[pos:]
        return n, others


def _header(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(body start, body length) of the frame at ``pos``, or None if it is incomplete."""
    length, shift, i = 0, 0, pos + 1
    while i < end:
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return (i, length) if end - i >= length else None
        shift += 7
        if shift > 21:
            # At most four bytes of Remaining Length [MQTT-2.2.3].
            raise ValueError("malformed remaining length")
    return None
