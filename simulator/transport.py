"""paho-mqtt driven by an asyncio loop: no thread per client.

paho's "external event loop" hooks (on_socket_open / register_write ...) let one loop serve
a thousand clients: the loop calls ``loop_read``/``loop_write`` when a socket is ready and
one fleet-wide timer calls ``loop_misc`` (keepalive) for every client. This is what makes
1,000 devices, each its own MQTT connection, cheap on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# MQTT 5 DISCONNECT reason 0x04: "Disconnect with Will Message" -- a clean disconnect after
# which the server still publishes the will [MQTT-3.14.2.1]. A rebooting device uses it.
DISCONNECT_WITH_WILL = 0x04


class LoopClient:
    """One paho client (MQTT 5) whose I/O runs on ``loop``.

    ``on_connected()`` / ``on_lost(reason)`` / ``on_message(topic, payload)`` are called on
    the loop. ``connect()`` returns False if the TCP connect failed (broker down).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_id: str,
        host: str,
        port: int,
        *,
        credentials: tuple[str, str] | None,
        will: tuple[str, bytes] | None,
        on_connected: Callable[[], None],
        on_lost: Callable[[str], None],
        on_message: Callable[[str, bytes], None],
        on_subscribed: Callable[[], None] | None = None,
        keepalive: int = 30,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self.connected = False
        self.sent = 0
        self.received = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if credentials:
            c.username_pw_set(*credentials)
        if will:
            # Retained QoS 1 will: the status topic reads "offline" after an unclean loss.
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        c.on_connect = self._connect_cb
        c.on_disconnect = self._disconnect_cb
        c.on_message = self._message_cb
        c.on_subscribe = self._subscribe_cb
        c.on_publish = self._publish_cb
        self._on_ack: dict[int, Callable[[], None]] = {}
        self.client = c
        self._sock: Any = None
        self._inflight: set[int] = set()  # QoS 1 publishes the broker has not acknowledged
        self._pending_disconnect: bool | None = None  # with_will of a deferred DISCONNECT
        self._disconnect_timer: asyncio.TimerHandle | None = None

    # -- socket hooks ------------------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self.loop.add_reader(sock, client.loop_read)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        self._sock = None
        # paho closes the socket right after this hook. Closing with unread bytes in the
        # receive buffer makes the kernel send RST instead of FIN, and the broker may then
        # drop what we wrote last (our DISCONNECT, our goodbye status). Read them first.
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    # -- paho callbacks ------------------------------------------------------------------

    def _connect_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            self.loop.call_soon(self._on_lost, f"connect refused: {rc}")
            return
        self.connected = True
        # Every user callback runs later on the loop, outside paho's callback mutex: a
        # device that disconnects while handling a message would deadlock otherwise.
        self.loop.call_soon(self._on_connected)

    def _disconnect_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.loop.call_soon(self._on_lost, str(rc))

    def _subscribe_cb(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        if self._on_subscribed is not None and self.connected:
            self.loop.call_soon(self._on_subscribed)

    def _publish_cb(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        self._inflight.discard(mid)
        callback = self._on_ack.pop(mid, None)
        if callback is not None:
            self.loop.call_soon(callback)
        if not self._inflight and self._pending_disconnect is not None:
            self.loop.call_soon(self._disconnect_now)

    def _message_cb(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        self.loop.call_soon(self._on_message, msg.topic, bytes(msg.payload))

    # -- operations ------------------------------------------------------------------------

    def connect(self) -> bool:
        if self._pending_disconnect is not None:
            self._disconnect_now()  # a reboot shorter than the broker's acknowledgements
        try:
            # Blocking TCP connect: on loopback it completes at once (or is refused at once).
            self.client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
        except OSError:
            return False
        return True

    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        self.client.subscribe([(f, qos) for f in filters])

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> None:
        """Publish; ``on_ack`` runs once the broker acknowledged it (QoS 1)."""
        if not self.connected:
            return
        self.sent += 1
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            self._inflight.add(info.mid)
        if on_ack is not None:
            self._on_ack[info.mid] = on_ack

    def misc(self) -> None:
        if self._sock is not None:
            self.client.loop_misc()

    def disconnect(self, with_will: bool = False, ack_wait_s: float = 1.0) -> None:
        """Clean DISCONNECT; ``with_will`` asks the broker to publish the will anyway.

        Sent once the broker acknowledged our QoS 1 publishes (at most ``ack_wait_s``
        later), so replies and the goodbye status are not lost in the teardown.
        """
        self.connected = False
        self._pending_disconnect = with_will
        if self._inflight and self._sock is not None:
            self._disconnect_timer = self.loop.call_later(ack_wait_s, self._disconnect_now)
        else:
            self._disconnect_now()

    @property
    def closed(self) -> bool:
        return self._sock is None and self._pending_disconnect is None

    def _disconnect_now(self) -> None:
        with_will = self._pending_disconnect
        if with_will is None:
            return
        self._pending_disconnect = None
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        self._inflight.clear()
        if with_will:
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=DISCONNECT_WITH_WILL)
            self.client.disconnect(reasoncode=rc, properties=Properties(PacketTypes.DISCONNECT))
        else:
            self.client.disconnect()
        # Flush the DISCONNECT now; paho closes the socket once it is written.
        self._drain()

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a power cut: the will fires."""
        self.connected = False
        self._pending_disconnect = None
        self._inflight.clear()
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        # paho reads EOF (after any packets still buffered) and closes through its hooks.
        self._read_until_closed()

    def _drain(self) -> None:
        for _ in range(10):
            if self._sock is None or not self.client.want_write():
                break
            self.client.loop_write()
        self._read_until_closed()

    def _read_until_closed(self) -> None:
        for _ in range(1000):
            if self._sock is None:
                return
            try:
                self.client.loop_read()
            except OSError:
                return
