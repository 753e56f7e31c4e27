"""Benchmark client processes: ``python -m bench.workers ROLE 'JSON ARGS'``.

Each worker prints one JSON line ``{"ready": ...}`` once it is connected (and subscribed),
then one JSON result line when it is done. Every worker runs in its own process so that
publisher, consumer, guard and broker never share a GIL.

Roles:
- ``count``: subscribe, count PUBLISH packets (the relay consumer, the device counter).
- ``blast``: send N pre-encoded QoS 0 PUBLISH packets as fast as the socket takes them.
- ``qos1``: publish N QoS 1 messages with at most ``window`` unacknowledged.
- ``responder``: answer every ``.../shadow/get`` on ``.../shadow/get/accepted``.
- ``latency``: publish ``shadow/get`` at a fixed rate and time each reply (no asyncio:
  ``select`` has microsecond timeouts, libuv timers only milliseconds).
- ``load``, ``fanout``, ``ticker``, ``idle``: many connections per process (``bench.crowd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from . import crowd
from . import rawmqtt as mq


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def telemetry_payload(seq: int) -> bytes:
    """~100 bytes of thermostat telemetry JSON."""
    return json.dumps(
        {"ts": 1_700_000_000.0 + seq / 1000, "seq": seq, "temperature_c": 21.37,
         "humidity_pct": 41.2, "mode": "heat", "firmware_channel": "stable"},
        separators=(",", ":"),
    ).encode()


def shadow_update_payload(seq: int) -> bytes:
    return json.dumps(
        {"state": {"desired": {"target_temp_c": 21.5}}, "clientToken": f"bench-{seq:08d}"},
        separators=(",", ":"),
    ).encode()


class MqttProtocol(asyncio.Protocol):
    """CONNECT -> CONNACK -> SUBSCRIBE -> SUBACK, then hand frames to ``on_data``."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.transport: asyncio.Transport | None = None
        self.splitter = mq.Splitter()
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subscribed: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshaking = True
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they quack like one.
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a = self.args
        self.transport.write(
            mq.connect(a["client_id"], a.get("username"), a.get("password"), keepalive=120)
        )

    def data_received(self, data: bytes) -> None:
        if self.handshaking:
            for first, body in self.splitter.feed(data):
                self.handshake_frame(first, body)
            return
        self.on_data(data)

    def handshake_frame(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == mq.CONNACK:
            if body[1] != 0:
                self.fail(RuntimeError(f"CONNACK refused with return code {body[1]}"))
            elif not self.connected.done():
                self.connected.set_result(None)
        elif kind == mq.SUBACK:
            if not self.subscribed.done():
                self.subscribed.set_result(list(body[2:]))
        else:
            self.on_frame(first, body)

    def on_frame(self, first: int, body: bytes) -> None:
        """A frame that arrived during the handshake (e.g. a retained message)."""

    def on_data(self, data: bytes) -> None:
        for first, body in self.splitter.feed(data):
            self.on_frame(first, body)

    def fail(self, exc: BaseException) -> None:
        for fut in (self.connected, self.subscribed, self.closed):
            if not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connected, self.subscribed):
            if not fut.done():
                fut.set_exception(exc or ConnectionError("connection closed during the handshake"))
                fut.exception()  # a publisher never awaits `subscribed`: not an error
        self.writable.set()  # a writer waiting for room must not hang on a closed socket
        if not self.closed.done():
            self.closed.set_result(None)

    async def subscribe(self, filters: list[str], qos: int = 0) -> None:
        assert self.transport is not None
        self.transport.write(mq.subscribe(1, filters, qos))
        granted = await asyncio.wait_for(self.subscribed, 10)
        if any(code >= 0x80 for code in granted):
            raise RuntimeError(f"subscription to {filters} refused: SUBACK {granted}")


async def open_client(
    args: dict[str, Any], factory: Callable[[dict[str, Any]], MqttProtocol]
) -> MqttProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: factory(args), args["host"], args["port"])
    await asyncio.wait_for(proto.connected, 10)
    return proto


# ----------------------------------------------------------------------------- blast

async def run_blast(args: dict[str, Any]) -> None:
    topics: list[str] = args["topics"]
    n = int(args["count"])
    # Encoded before the clock starts: the publisher must cost the run as little as possible.
    blob = b"".join(
        mq.publish(topics[i % len(topics)], telemetry_payload(i)) for i in range(n)
    )
    proto = await open_client(args, MqttProtocol)
    proto.handshaking = False
    emit({"ready": True, "bytes": len(blob)})
    assert proto.transport is not None
    chunk = 256 * 1024
    # asyncio flow control: pause_writing() above 4 chunks, resume_writing() once drained.
    proto.transport.set_write_buffer_limits(high=4 * chunk, low=0)
    cpu0 = time.process_time()
    start = time.monotonic_ns()
    for off in range(0, len(blob), chunk):
        proto.transport.write(blob[off : off + chunk])
        await proto.writable.wait()
    proto.transport.write(mq.disconnect())
    proto.transport.close()  # flushes what is buffered, then connection_lost()
    await asyncio.wait_for(proto.closed, 60)
    end = time.monotonic_ns()
    emit({"sent": n, "start_ns": start, "end_ns": end, "cpu_s": time.process_time() - cpu0})


# ----------------------------------------------------------------------------- qos1

class Qos1Publisher(MqttProtocol):
    """Keeps ``window`` QoS 1 PUBLISH packets in flight; each PUBACK lets one more go."""

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        topic: str = args["topic"]
        self.total = int(args["count"])
        self.window = int(args["window"])
        # Encoded up front (packet ids are non-zero [MQTT-2.3.1-1] and cycle through 65535,
        # never reused while in flight since window < 65535) so the client stays cheap.
        self.packets = [
            mq.publish(topic, shadow_update_payload(i), 1, i % 65535 + 1)
            for i in range(self.total)
        ]
        self.sent = 0
        self.acked = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send_more(self) -> None:
        assert self.transport is not None
        upto = min(self.total, self.acked + self.window)
        if upto > self.sent:
            self.transport.write(b"".join(self.packets[self.sent : upto]))
            self.sent = upto

    def on_data(self, data: bytes) -> None:
        # Only PUBACKs come back on this connection; the broker acks in order [MQTT-4.6.0-2].
        n, _ = self.splitter.count(data, mq.PUBACK)
        self.acked += n
        if self.acked >= self.total:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.send_more()


async def run_qos1(args: dict[str, Any]) -> None:
    proto = await open_client(args, Qos1Publisher)
    assert isinstance(proto, Qos1Publisher)
    proto.handshaking = False
    emit({"ready": True})
    cpu0 = time.process_time()
    start = time.monotonic_ns()
    proto.send_more()
    with contextlib.suppress(TimeoutError):  # a short count is reported, not raised
        await asyncio.wait_for(proto.done, float(args.get("timeout_s", 60.0)))
    end = time.monotonic_ns()
    assert proto.transport is not None
    proto.transport.write(mq.disconnect())
    proto.transport.close()
    cpu = time.process_time() - cpu0
    emit({"acked": proto.acked, "start_ns": start, "end_ns": end, "cpu_s": cpu})


# ----------------------------------------------------------------------------- responder

class Responder(MqttProtocol):
    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self.answered = 0

    def on_data(self, data: bytes) -> None:
        out = []
        for first, body in self.splitter.feed(data):
            if first >> 4 != mq.PUBLISH:
                continue
            (tlen,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + tlen].decode()
            self.answered += 1
            out.append(mq.publish(topic + "/accepted", b'{"seq":%d}' % self.answered))
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))


async def run_responder(args: dict[str, Any]) -> None:
    proto = await open_client(args, Responder)
    await proto.subscribe(args["filters"], 0)
    proto.handshaking = False
    emit({"ready": True})
    await proto.closed  # runs until the orchestrator stops it (or the broker goes away)


# ----------------------------------------------------------------------------- latency

class SyncClient:
    """A blocking MQTT client (3.1.1 unless ``level`` says 5): CONNECT, SUBSCRIBE if
    ``filters``, then raw frames."""

    def __init__(self, args: dict[str, Any], filters: list[str], level: int = mq.LEVEL) -> None:
        self.sock = socket.create_connection((args["host"], args["port"]), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.splitter = mq.Splitter()
        self.level = level
        self.sock.sendall(
            mq.connect(args["client_id"], args.get("username"), args.get("password"), 120, level)
        )
        code = mq.connack_code(self.expect(mq.CONNACK))
        if code != 0:
            raise RuntimeError(f"CONNACK refused with code {code:#04x}")
        if filters:
            self.sock.sendall(mq.subscribe(1, filters, 0, level))
            granted = mq.suback_codes(self.expect(mq.SUBACK), level)
            if any(code >= 0x80 for code in granted):
                raise RuntimeError(f"subscription to {filters} refused: SUBACK {granted}")

    def frames(self, timeout: float) -> list[tuple[int, bytes]]:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        if not ready:
            return []
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed")
        return self.splitter.feed(data)

    def expect(self, kind: int) -> bytes:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for first, body in self.frames(deadline - time.monotonic()):
                if first >> 4 == kind:
                    return body
        raise TimeoutError(f"no packet of type {kind} within 10 s")

    def close(self) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(mq.disconnect(self.level))
        self.sock.close()


def run_count(args: dict[str, Any]) -> None:
    """The relay consumer and the device-side counter: count PUBLISH packets, cheaply.

    SO_RCVLOWAT makes the kernel wake this process only once 16 KiB are waiting, so a
    stream of ~130-byte packets costs one wake-up per ~120 packets instead of one per
    packet; on a 2-CPU machine a consumer that wakes per packet takes CPU from the
    broker and lowers the very figure it measures. Below the mark (the stream's tail, or
    a slow stream) a 5 ms poll reads what is there without waiting for the mark, so a
    timestamp is at most 5 ms late.
    """
    client = SyncClient(args, args["filters"])
    sock = client.sock
    lowat = int(args.get("lowat", 16384))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
    sock.setblocking(False)
    emit({"ready": True})
    cpu0 = time.process_time()
    expect_n = int(args["expect"])
    idle_ns = int(float(args.get("idle_s", 3.0)) * 1e9)
    deadline = time.monotonic_ns() + int(float(args.get("timeout_s", 120.0)) * 1e9)
    count, first_ns, last_ns = 0, 0, 0
    splitter = client.splitter
    while count < expect_n:
        select.select([sock], [], [], 0.005)
        now = time.monotonic_ns()
        try:
            data = sock.recv(1 << 20)  # non-blocking: returns what is there, below the mark too
        except BlockingIOError:
            # Nothing new: done if idle too long after the first message (loss), or too late.
            if (count and now - last_ns > idle_ns) or now > deadline:
                break
            continue
        if not data:
            break
        n, _ = splitter.count(data)
        if n:
            if not count:
                first_ns = now
            count += n
            last_ns = now
    emit({"count": count, "first_ns": first_ns, "last_ns": last_ns,
          "cpu_s": time.process_time() - cpu0})
    client.close()


class LatencyLink(SyncClient):
    """One blocking connection of the latency agent (to the broker or to the guard)."""

    def __init__(self, args: dict[str, Any], topic: str) -> None:
        super().__init__(args, [topic + "/accepted"])
        self.request = mq.publish(topic, b"")  # shadow/get carries an empty payload
        self.rtts_ns: list[int] = []
        self.received = 0
        self.sent = 0
        self.bad_order = 0
        self.last_seq: int | None = None

    def block(self, count: int, rate: float, keep: bool) -> None:
        """Send ``count`` requests paced at ``rate``; time each reply; wait for the last.

        Replies come back in order (the broker keeps per-topic order for QoS 0
        [MQTT-4.6.0-6]) so the k-th reply of the block answers its k-th request; the
        responder numbers its replies, which shows any loss or reordering.
        """
        interval = 1e9 / rate
        sent_at: list[int] = []
        got = 0
        start = time.perf_counter_ns()
        grace_until = 0.0
        while got < count:
            now = time.perf_counter_ns()
            if len(sent_at) < count:
                due = start + len(sent_at) * interval
                if now >= due:
                    sent_at.append(now)
                    self.sock.sendall(self.request)
                    continue
                wait = (due - now) / 1e9
            else:
                if not grace_until:
                    grace_until = time.monotonic() + 5.0
                wait = grace_until - time.monotonic()
                if wait <= 0:
                    break  # replies lost: counted below
            for first, body in self.frames(wait):
                if first >> 4 != mq.PUBLISH:
                    continue
                t = time.perf_counter_ns()
                (tlen,) = struct.unpack_from("!H", body)
                seq = json.loads(body[2 + tlen :])["seq"]
                if self.last_seq is not None and seq <= self.last_seq:
                    self.bad_order += 1
                self.last_seq = seq
                if got < len(sent_at) and keep:
                    self.rtts_ns.append(t - sent_at[got])
                got += 1
        self.sent += count
        self.received += got

    def stats(self) -> dict[str, Any]:
        sample = sorted(self.rtts_ns)

        def pct(p: float) -> float:
            if not sample:
                return 0.0
            return sample[min(len(sample) - 1, int(p / 100 * len(sample)))] / 1000

        return {
            "sent": self.sent, "received": self.received, "bad_order": self.bad_order,
            "samples": len(sample), "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99),
            "max_us": sample[-1] / 1000 if sample else 0.0,
            "mean_us": sum(sample) / len(sample) / 1000 if sample else 0.0,
        }


def run_latency(args: dict[str, Any]) -> None:
    """Both modes in one process, in alternating blocks, so a transient hiccup of this
    2-core machine lands on both figures alike instead of on whichever ran at that moment."""
    # One device per mode: both links must not receive each other's replies.
    links = {mode: LatencyLink(ep, args["topics"][mode]) for mode, ep in args["endpoints"].items()}
    emit({"ready": True})
    rate = float(args["rate"])
    block = int(args["block"])
    per_mode = int(rate * float(args["duration_s"]))
    for link in links.values():
        link.block(int(args["warmup"]), rate, keep=False)
        link.sent = link.received = 0
    start = time.monotonic()
    done = 0
    while done < per_mode:
        n = min(block, per_mode - done)
        for link in links.values():
            link.block(n, rate, keep=True)
        done += n
    elapsed = time.monotonic() - start
    for link in links.values():
        link.close()
    emit({mode: {**link.stats(), "elapsed_s": elapsed} for mode, link in links.items()})


ROLES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "blast": run_blast,
    "qos1": run_qos1,
    "responder": run_responder,
}


def main(argv: list[str]) -> int:
    role, args = argv[0], json.loads(argv[1])
    if role in crowd.ROLES:
        crowd.ROLES[role](args)
        return 0
    if role == "latency":
        run_latency(args)
        return 0
    if role == "count":
        run_count(args)
        return 0
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.run
    runner(ROLES[role](args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
