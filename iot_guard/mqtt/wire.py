"""Low-level MQTT data representations (spec 1.5): integers, strings, binary data.

Readers take ``(buf, i, end)`` and return ``(value, next_i)``; they never read past ``end``
and raise ProtocolError(0x81 Malformed Packet) on truncation or bad encodings.
"""

from __future__ import annotations

from .errors import ProtocolError
from .reason_codes import ReasonCode

MAX_VARINT = 268_435_455  # four bytes of seven bits [MQTT-1.5.5]
MAX_UINT16 = 0xFFFF

_MALFORMED = ReasonCode.MALFORMED_PACKET

Buffer = bytes | bytearray


def malformed(message: str) -> ProtocolError:
    return ProtocolError(_MALFORMED, message)


def protocol_error(message: str) -> ProtocolError:
    return ProtocolError(ReasonCode.PROTOCOL_ERROR, message)


def read_varint(buf: Buffer, i: int, end: int) -> tuple[int, int]:
    """Variable Byte Integer: at most 4 bytes and the shortest form [MQTT-1.5.5-1]."""
    value = 0
    shift = 0
    for k in range(4):
        if i >= end:
            raise malformed("truncated variable byte integer")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # A zero final byte after a continuation means a shorter form existed.
            if byte == 0 and k:
                raise malformed("variable byte integer not in its shortest form")
            return value, i
        shift += 7
    raise malformed("variable byte integer longer than 4 bytes")


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        if value < 0:
            raise ValueError("variable byte integer must not be negative")
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError(f"variable byte integer {value} exceeds {MAX_VARINT}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_u8(buf: Buffer, i: int, end: int) -> tuple[int, int]:
    if i >= end:
        raise malformed("truncated byte")
    return buf[i], i + 1


def read_u16(buf: Buffer, i: int, end: int) -> tuple[int, int]:
    j = i + 2
    if j > end:
        raise malformed("truncated two byte integer")
    return (buf[i] << 8) | buf[i + 1], j


def read_u32(buf: Buffer, i: int, end: int) -> tuple[int, int]:
    j = i + 4
    if j > end:
        raise malformed("truncated four byte integer")
    return int.from_bytes(buf[i:j], "big"), j


def read_binary(buf: Buffer, i: int, end: int) -> tuple[bytes, int]:
    """Binary Data: two byte length then that many bytes [MQTT-1.5.6]."""
    if i + 2 > end:
        raise malformed("truncated binary data length")
    j = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if j > end:
        raise malformed("binary data runs past the end of the packet")
    return bytes(buf[i + 2 : j]), j


def read_utf8(buf: Buffer, i: int, end: int) -> tuple[str, int]:
    """UTF-8 Encoded String, refused when ill-formed.

    CPython's strict decoder refuses overlong forms and UTF-16 surrogates U+D800..U+DFFF
    [MQTT-1.5.4-1]; U+0000 is refused separately [MQTT-1.5.4-2].
    """
    if i + 2 > end:
        raise malformed("truncated string length")
    j = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if j > end:
        raise malformed("string runs past the end of the packet")
    try:
        text = buf[i + 2 : j].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"string is not well-formed UTF-8 ({exc.reason})") from None
    if "\x00" in text:
        raise malformed("string contains U+0000 [MQTT-1.5.4-2]")
    return text, j


def encode_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_UINT16:
        raise ValueError("UTF-8 string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def encode_binary(data: bytes) -> bytes:
    if len(data) > MAX_UINT16:
        raise ValueError("binary data longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + bytes(data)
