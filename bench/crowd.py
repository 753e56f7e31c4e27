"""Worker roles that hold many connections in one process (``python -m bench.workers``).

- ``load``: ~200 agent sessions publishing a paced mix of allowed and refused QoS 1
  messages; times every PUBACK and checks its reason code.
- ``fanout``: ~50 telemetry subscribers, counting what each receives.
- ``ticker``: device-side telemetry at a fixed rate (QoS 0).
- ``idle``: thousands of connected sessions that send nothing (the memory benchmark).

``load``, ``ticker`` and ``idle`` print ``{"ready": ...}`` and then wait for a line on stdin
("go") so the orchestrator starts them together and samples memory or CPU in between.
No asyncio: one ``select.epoll`` loop per process keeps the clients cheap and their
timestamps close to the wire.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from typing import Any

from . import rawmqtt as mq
from .procs import raise_fd_limit

LEVEL5 = 5  # MQTT 5.0: acks carry a reason code, so a refusal is visible to the client


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_for_go() -> None:
    """Block until the orchestrator writes a line (or closes stdin)."""
    sys.stdin.readline()


def endpoint_for(args: dict[str, Any], k: int) -> dict[str, Any]:
    return {**args["endpoint"], "client_id": f"{args['client_prefix']}-{k}"}


class Conn:
    """One raw connection: its socket and the frame splitter for what it receives."""

    __slots__ = ("sock", "splitter", "index")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.splitter = mq.Splitter()
        self.index = index

    def read_until(self, kind: int, deadline: float) -> bytes:
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection {self.index} closed by the server")
            for first, body in self.splitter.feed(data):
                if first >> 4 == kind:
                    return body
        raise TimeoutError(f"connection {self.index}: no packet of type {kind} in time")


def connect_many(
    args: dict[str, Any], first: int, count: int, level: int, batch: int = 64
) -> list[Conn]:
    """``count`` connected sessions, CONNECTs pipelined ``batch`` at a time.

    A batch stays below the listener's accept backlog (asyncio's default is 100), so no
    SYN is dropped and retried a second later.
    """
    conns: list[Conn] = []
    for start in range(first, first + count, batch):
        group = []
        for k in range(start, min(start + batch, first + count)):
            ep = endpoint_for(args, k)
            sock = socket.create_connection((ep["host"], ep["port"]), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(mq.connect(ep["client_id"], ep.get("username"), ep.get("password"),
                                    int(args.get("keepalive", 600)), level))
            group.append(Conn(sock, k))
        deadline = time.monotonic() + 30
        for conn in group:
            code = mq.connack_code(conn.read_until(mq.CONNACK, deadline))
            if code != 0:
                raise RuntimeError(f"session {conn.index}: CONNACK refused with {code:#04x}")
            conn.sock.settimeout(None)
        conns += group
    return conns


# ----------------------------------------------------------------------------- load

def percentile(sample: list[int], p: float) -> float:
    """The p-th percentile of a sorted sample, in microseconds (nearest rank)."""
    if not sample:
        return 0.0
    return sample[min(len(sample) - 1, int(p / 100 * len(sample)))] / 1000


def load_schedule(args: dict[str, Any]) -> list[tuple[int, int, bool, bytes]]:
    """Every publish of the run, in send order: (connection, packet id, refused?, bytes).

    Message i goes to connection i mod N; allowed and refused alternate per connection
    and per round, and the refused ones cycle through the kinds in ``refused``.
    """
    n = int(args["sessions"])
    total = int(float(args["rate"]) * (float(args["warmup_s"]) + float(args["duration_s"])))
    allowed: list[list[str]] = args["allowed"]  # [topic, payload]
    refused: list[list[str]] = args["refused"]
    out = []
    for i in range(total):
        k, rnd = i % n, i // n
        is_refused = (rnd + k) % 2 == 1
        topic, payload = (refused[(i // 2) % len(refused)] if is_refused
                          else allowed[(i // 2) % len(allowed)])
        packet_id = rnd % 65535 + 1  # one in flight per connection at 10 msg/s [MQTT-2.3.1-1]
        out.append((k, packet_id, is_refused,
                    mq.publish(topic, payload.encode(), 1, packet_id, level=LEVEL5)))
    return out


def run_load(args: dict[str, Any]) -> None:
    raise_fd_limit()
    n = int(args["sessions"])
    rate = float(args["rate"])
    schedule = load_schedule(args)
    warm_n = int(rate * float(args["warmup_s"]))
    conns = connect_many(args, 0, n, LEVEL5)
    by_fd = {c.sock.fileno(): c for c in conns}
    poller = select.epoll()
    for c in conns:
        poller.register(c.sock.fileno(), select.EPOLLIN)
    emit({"ready": True, "sessions": n, "messages": len(schedule)})
    wait_for_go()
    cpu0 = time.process_time()
    interval = 1e9 / rate
    pending: dict[tuple[int, int], tuple[int, bool, bool]] = {}
    rtts: list[int] = []
    wrong = late_ack = 0
    i = 0
    start = time.perf_counter_ns()
    grace_until = 0.0
    while True:
        now = time.perf_counter_ns()
        while i < len(schedule) and start + i * interval <= now:
            k, packet_id, is_refused, packet = schedule[i]
            conns[k].sock.sendall(packet)
            pending[(k, packet_id)] = (time.perf_counter_ns(), is_refused, i >= warm_n)
            i += 1
        if i < len(schedule):
            timeout = max((start + i * interval - time.perf_counter_ns()) / 1e9, 0.0)
        else:
            if not pending:
                break
            if not grace_until:
                grace_until = time.monotonic() + 10.0
            timeout = grace_until - time.monotonic()
            if timeout <= 0:
                break  # acks lost: reported below
        for fd, _ in poller.poll(timeout):
            t = time.perf_counter_ns()
            conn = by_fd[fd]
            data = conn.sock.recv(65536)
            if not data:
                raise ConnectionError(f"session {conn.index} closed by the server")
            for first, body in conn.splitter.feed(data):
                if first >> 4 != mq.PUBACK:
                    continue
                entry = pending.pop((conn.index, int.from_bytes(body[:2], "big")), None)
                if entry is None:
                    late_ack += 1
                    continue
                sent_ns, is_refused, keep = entry
                # Direct, the broker accepts everything; through the guard a refused
                # publish must get a reason code >= 0x80 and an allowed one < 0x80.
                if args["expect_refusals"] and (mq.ack_reason(body) >= 0x80) != is_refused:
                    wrong += 1
                if keep:
                    rtts.append(t - sent_ns)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    cpu = time.process_time() - cpu0
    for c in conns:
        c.sock.sendall(mq.disconnect(LEVEL5))
        c.sock.close()
    rtts.sort()
    emit({
        "sent": i, "acked": i - len(pending), "lost": len(pending), "wrong": wrong,
        "unexpected_acks": late_ack, "samples": len(rtts), "elapsed_s": elapsed,
        "p50_us": percentile(rtts, 50), "p90_us": percentile(rtts, 90),
        "p99_us": percentile(rtts, 99), "max_us": rtts[-1] / 1000 if rtts else 0.0,
        "cpu_s": cpu,
    })


# ----------------------------------------------------------------------------- fanout

def run_fanout(args: dict[str, Any]) -> None:
    """``sessions`` subscribers; each must receive ``expect`` messages."""
    raise_fd_limit()
    n = int(args["sessions"])
    level = int(args.get("level", mq.LEVEL))
    conns = connect_many(args, 0, n, level)
    deadline = time.monotonic() + 30
    for c in conns:
        c.sock.sendall(mq.subscribe(1, args["filters"], 0, level))
    for c in conns:
        granted = mq.suback_codes(c.read_until(mq.SUBACK, deadline), level)
        if any(code >= 0x80 for code in granted):
            raise RuntimeError(f"subscriber {c.index} refused: SUBACK {granted}")
        c.sock.settimeout(None)
    by_fd = {c.sock.fileno(): c for c in conns}
    poller = select.epoll()
    for c in conns:
        poller.register(c.sock.fileno(), select.EPOLLIN)
    emit({"ready": True})
    cpu0 = time.process_time()
    expect = int(args["expect"])
    counts = [0] * n
    done = 0
    idle_s = float(args.get("idle_s", 5.0))
    last = time.monotonic()
    end_by = time.monotonic() + float(args.get("timeout_s", 120.0))
    while done < n and time.monotonic() < end_by:
        events = poller.poll(0.1)
        if not events:
            if time.monotonic() - last > idle_s and any(counts):
                break  # nothing for a while after the stream started: loss, reported
            continue
        last = time.monotonic()
        for fd, _ in events:
            conn = by_fd[fd]
            data = conn.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"subscriber {conn.index} closed by the server")
            got, _ = conn.splitter.count(data)
            before = counts[conn.index]
            counts[conn.index] = before + got
            if before < expect <= before + got:
                done += 1
    for c in conns:
        c.sock.sendall(mq.disconnect(level))
        c.sock.close()
    emit({"received": sum(counts), "min": min(counts), "max": max(counts),
          "complete": done, "cpu_s": time.process_time() - cpu0})


# ----------------------------------------------------------------------------- ticker

def run_ticker(args: dict[str, Any]) -> None:
    """``count`` QoS 0 telemetry messages at ``rate`` per second, round robin over topics."""
    from .workers import telemetry_payload

    topics: list[str] = args["topics"]
    count = int(args["count"])
    rate = float(args["rate"])
    packets = [mq.publish(topics[i % len(topics)], telemetry_payload(i)) for i in range(count)]
    conn = connect_many(args, 0, 1, mq.LEVEL)[0]
    emit({"ready": True})
    wait_for_go()
    start = time.monotonic()
    for i, packet in enumerate(packets):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the sender, not synchronising with anything
        conn.sock.sendall(packet)
    conn.sock.sendall(mq.disconnect())
    conn.sock.close()
    emit({"sent": count, "elapsed_s": time.monotonic() - start})


# ----------------------------------------------------------------------------- idle

def run_idle(args: dict[str, Any]) -> None:
    """``warmup`` sessions, a pause (the orchestrator samples memory), ``sessions`` more,
    another pause, then all close."""
    raise_fd_limit()
    level = int(args.get("level", LEVEL5))
    warm_n, n = int(args["warmup"]), int(args["sessions"])
    conns = connect_many(args, 0, warm_n, level)
    emit({"warm": len(conns)})
    wait_for_go()
    start = time.monotonic()
    conns += connect_many(args, warm_n, n, level)
    emit({"ready": len(conns) - warm_n, "connect_s": time.monotonic() - start})
    wait_for_go()
    # The sessions must still be alive: a server that dropped one shows here.
    alive = 0
    for c in conns[warm_n:]:
        c.sock.setblocking(False)
        try:
            alive += c.sock.recv(1) != b""
        except BlockingIOError:
            alive += 1  # nothing to read and not closed
        c.sock.setblocking(True)
    for c in conns:
        c.sock.sendall(mq.disconnect(level))
        c.sock.close()
    emit({"alive": alive})


ROLES = {"load": run_load, "fanout": run_fanout, "ticker": run_ticker, "idle": run_idle}
