"""The one exception the codec raises for anything a peer sent wrong."""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """A packet violates MQTT 3.1.1 / 5.0; the connection must be closed.

    ``reason_code`` is an MQTT 5 reason code (0x81 Malformed Packet, 0x82 Protocol Error,
    0x84 Unsupported Protocol Version, 0x8F, 0x90, 0x95, ...). ``protocol_level`` is the
    level known when the error occurred (None before a CONNECT gave one), so the caller
    knows whether it may answer with a v5 CONNACK/DISCONNECT or a v3 CONNACK return code.
    ``before``: the packets the same read completed before the violation, in order (the
    parser's ``feed``); the caller handles them first, so what the guard accepted from a
    peer is not lost with the rest of its read.
    """

    def __init__(self, reason_code: int, message: str, protocol_level: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = int(reason_code)
        self.message = message
        self.protocol_level = protocol_level
        self.before: list[Any] = []

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"ProtocolError(reason_code=0x{self.reason_code:02X}, message={self.message!r}, "
            f"protocol_level={self.protocol_level!r})"
        )
