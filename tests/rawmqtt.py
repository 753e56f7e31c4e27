"""A raw MQTT client for attack tests: sends any bytes, reads packets with bounded waits.

Stock clients refuse to send what an attacker sends (QoS 3, wildcards in topics, bad
UTF-8), so security tests speak bytes through this, and parse replies with the guard's
own codec.
"""

from __future__ import annotations

import contextlib
import socket
import time

from iot_guard.mqtt import Connack, Connect, Packet, StreamParser, Will, encode


class RawMqtt:
    def __init__(self, port: int, host: str = "127.0.0.1", level: int = 5) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.level = level
        self.parser = StreamParser(side="client", protocol_level=level)
        self.closed = False
        self._buffer: list[Packet] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, packet: Packet) -> None:
        self.send(encode(packet, self.level))

    def connect(self, username: str | None, password: str | bytes | None,
                client_id: str = "raw", will: Will | None = None,
                properties: dict[int, object] | None = None) -> Connack:
        if isinstance(password, str):
            password = password.encode()
        self.send_packet(Connect(client_id=client_id, protocol_level=self.level,
                                 username=username, password=password, will=will,
                                 properties=properties or {}))
        connack = self.read(timeout=5)
        assert isinstance(connack, Connack), connack
        return connack

    def read(self, timeout: float = 5.0) -> Packet:
        """The next packet; AssertionError if none within ``timeout`` or the socket closed."""
        deadline = time.monotonic() + timeout
        while not self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no packet within {timeout} s"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no packet within {timeout} s") from None
            if not data:
                self.closed = True
                raise AssertionError("connection closed while waiting for a packet")
            self._buffer.extend(self.parser.feed(data))
        return self._buffer.pop(0)

    def read_until(self, kind: type, timeout: float = 5.0) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            packet = self.read(max(0.01, deadline - time.monotonic()))
            if isinstance(packet, kind):
                return packet

    def wait_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Read until the peer closes; return what came before. Fails if it stays open."""
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"connection still open after {timeout} s (got {got})"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return self._buffer + got
            # The guard's farewell may be cut short; closing is what counts.
            with contextlib.suppress(Exception):
                got.extend(self.parser.feed(data))

    def close(self) -> None:
        self.sock.close()
