"""The guard's own MQTT 5 connection that carries approved actions out.

Approved actions are never re-sent by the agent: the guard publishes the stored payload
itself, on this connection, with the guard's broker account and a client id in its own
namespace (``iotguard-exec:<instance>``; agents' upstream ids are ``iotguard:<agent>:...``,
so no agent can take this session over). It also subscribes to the devices' result topics
for rollouts.

Built on the project's sans-IO codec (``iot_guard.mqtt``): this module only moves bytes,
keeps the connection alive (PINGREQ at half the keep alive [MQTT-3.1.2-22 ff.]) and
reconnects with backoff. At most once: a QoS 1 publish whose PUBACK did not arrive before
the connection was lost is reported as failed, never sent again (it may have been
delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable

from iot_guard.mqtt import (
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PubAck,
    Publish,
    StreamParser,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from iot_guard.mqtt.errors import ProtocolError

log = logging.getLogger("iot_guard.approvals.executor")

V5 = 5


class ExecutorError(Exception):
    """A publish the broker did not accept, or could not be confirmed."""


class ExecutorClient:
    """One MQTT 5 client connection on the running loop; reconnects until stopped."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        keep_alive: int = 30,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.on_message = on_message
        self.keep_alive = keep_alive
        self.connect_timeout = connect_timeout
        self._filters: dict[str, int] = {}
        self._ids = itertools.cycle(range(1, 0x10000))
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self, wait_s: float | None = None) -> None:
        """Start connecting; with ``wait_s``, wait that long for the first CONNACK."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if wait_s is not None:
            await self.wait_connected(wait_s)

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise ExecutorError(
                f"executor not connected to {self.host}:{self.port} within {timeout:g} s"
                + (f": {self.last_error}" if self.last_error else "")
            ) from None

    async def stop(self) -> None:
        self._stopping = True
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(Exception):
                writer.write(encode(Disconnect(), V5))
            writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_inflight("executor stopped")

    # -- API ------------------------------------------------------------------------------

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> None:
        """Subscribe now and again after every reconnect."""
        self._filters[topic_filter] = qos
        if self.connected:
            await self._subscribe_now([topic_filter], timeout)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> None:
        """Publish once; for QoS 1 wait for the PUBACK. Raises ExecutorError, never resends.

        QoS 2 is carried out as QoS 1: the guard's result tracking makes a duplicate
        harmless to detect, and a lost PUBREL would otherwise hold the request open.
        """
        await self.wait_connected(timeout)
        writer = self._writer
        assert writer is not None
        if qos == 0:
            writer.write(encode(Publish(topic, payload, 0, retain), V5))
            return
        packet_id = self._next_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[packet_id] = future
        writer.write(encode(Publish(topic, payload, 1, retain, packet_id=packet_id), V5))
        try:
            code = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ExecutorError(f"no PUBACK for {topic} within {timeout:g} s") from None
        finally:
            self._acks.pop(packet_id, None)
        # 0x10 "no matching subscribers" is still a success [MQTT-3.4.2.1].
        if code >= 0x80:
            raise ExecutorError(f"the broker refused the publish to {topic}: 0x{code:02X}")

    # -- internals ------------------------------------------------------------------------

    def _next_id(self) -> int:
        for _ in range(0xFFFF):
            packet_id = next(self._ids)
            if packet_id not in self._acks:
                return packet_id
        raise ExecutorError("no free packet identifier (65535 publishes in flight)")

    async def _subscribe_now(self, filters: list[str], timeout: float) -> None:
        writer = self._writer
        if writer is None or not filters:
            return
        packet_id = self._next_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[packet_id] = future
        subs = [Subscription(f, self._filters.get(f, 1)) for f in filters]
        writer.write(encode(Subscribe(packet_id, subs), V5))
        try:
            code = await asyncio.wait_for(future, timeout)
        finally:
            self._acks.pop(packet_id, None)
        if code >= 0x80:
            raise ExecutorError(f"subscription to {filters} refused: 0x{code:02X}")

    def _fail_inflight(self, why: str) -> None:
        for future in self._acks.values():
            if not future.done():
                future.set_exception(ExecutorError(why))
        self._acks.clear()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._session()
                backoff = 0.2
            except (OSError, TimeoutError, ProtocolError, ExecutorError, ssl.SSLError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("executor connection to %s:%d: %s", self.host, self.port,
                            self.last_error)
            finally:
                self._connected.clear()
                self._writer = None
                self._fail_inflight("executor connection lost before the broker acknowledged")
            if self._stopping:
                return
            await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
            backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context),
            self.connect_timeout,
        )
        self._writer = writer
        parser = StreamParser(side="client", protocol_level=V5)
        writer.write(
            encode(
                Connect(
                    self.client_id,
                    protocol_level=V5,
                    clean_start=True,
                    keep_alive=self.keep_alive,
                    username=self.username,
                    password=self.password.encode() if self.password is not None else None,
                ),
                V5,
            )
        )
        pinger: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                connack = None
                while connack is None:
                    data = await reader.read(65536)
                    if not data:
                        raise ExecutorError("the broker closed the connection before CONNACK")
                    for packet in parser.feed(data):
                        if isinstance(packet, Connack):
                            connack = packet
            if connack.reason_code >= 0x80:
                raise ExecutorError(
                    f"the broker refused the connection: 0x{connack.reason_code:02X}"
                )
            self.last_error = None
            self._connected.set()
            loop = asyncio.get_running_loop()
            pinger = loop.create_task(self._ping(writer))
            if self._filters:
                loop.create_task(self._resubscribe())
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ExecutorError("the broker closed the connection")
                for packet in parser.feed(data):
                    self._dispatch(packet, writer)
        finally:
            if pinger is not None:
                pinger.cancel()
            writer.close()

    async def _resubscribe(self) -> None:
        try:
            await self._subscribe_now(list(self._filters), self.connect_timeout)
        except (ExecutorError, TimeoutError) as exc:
            log.error("executor could not subscribe to result topics: %s", exc)

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(self.keep_alive / 2)  # keep alive period, not synchronisation
            writer.write(encode(PingReq(), V5))

    def _dispatch(self, packet: object, writer: asyncio.StreamWriter) -> None:
        if isinstance(packet, PubAck | SubAck):
            future = self._acks.get(packet.packet_id)
            if future is not None and not future.done():
                code = packet.reason_code if isinstance(packet, PubAck) else max(
                    packet.reason_codes, default=0x80)
                future.set_result(code)
        elif isinstance(packet, Publish):
            if packet.qos == 1 and packet.packet_id is not None:
                writer.write(encode(PubAck(packet.packet_id), V5))
            elif packet.qos == 2:
                # Results are subscribed at QoS 1, so the broker never sends QoS 2 here.
                log.warning("executor got a QoS 2 message on %s; ignored", packet.topic)
                return
            if self.on_message is not None:
                try:
                    self.on_message(packet.topic, packet.payload)
                except Exception:  # a bad handler must not end the connection
                    log.exception("executor message handler failed for %s", packet.topic)
        elif isinstance(packet, Disconnect):
            raise ExecutorError(
                f"the broker disconnected the executor: 0x{packet.reason_code:02X}"
            )
