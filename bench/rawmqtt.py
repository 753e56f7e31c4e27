"""A minimal MQTT 3.1.1 encoder and frame splitter for the benchmark clients.

Deliberately independent of ``iot_guard.mqtt``: the measuring instrument must not share
code (or bugs) with the thing it measures, and it must be cheap enough per packet that
the benchmark clients are never the bottleneck.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = 8, 9, 12, 14


def varint(n: int) -> bytes:
    """Remaining Length: 7 bits per byte, continuation bit 0x80, at most 4 bytes [MQTT-2.2.3]."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    """A UTF-8 string field: two-byte big-endian length prefix [MQTT-1.5.3]."""
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
) -> bytes:
    """CONNECT, protocol level 4, clean session [MQTT-3.1.2-1..3]."""
    flags = 0x02  # clean session
    payload = utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += binary(password.encode())
    header = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return packet(CONNECT << 4, header + payload)


def subscribe(packet_id: int, filters: list[str], qos: int = 0) -> bytes:
    # SUBSCRIBE's fixed header flags must be 0b0010 [MQTT-3.8.1-1].
    body = struct.pack("!H", packet_id) + b"".join(utf8(f) + bytes([qos]) for f in filters)
    return packet((SUBSCRIBE << 4) | 0x02, body)


def publish(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False
) -> bytes:
    """PUBLISH; a packet id only for QoS > 0 [MQTT-2.3.1-5]."""
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    return packet((PUBLISH << 4) | (qos << 1) | int(retain), body + payload)


def puback(packet_id: int) -> bytes:
    return packet(PUBACK << 4, struct.pack("!H", packet_id))


def disconnect() -> bytes:
    return bytes([DISCONNECT << 4, 0])


def pingreq() -> bytes:
    return bytes([PINGREQ << 4, 0])


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
