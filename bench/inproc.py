"""The guard's own CPU per packet, in process: a real ``GuardServer`` (policy, checks, signed
audit chain, state store, as ``iot-guard run`` has them; no addons: none is on the path
of an allowed publish) driving one link whose two
transports only collect bytes. No broker, no sockets: what is left is the per-packet path
itself, measured in this process's CPU time, so the figure holds on a busy machine.

    python -m bench.inproc [--n N] [--batch B] [--evict-mb M] [--policy DIR] [--profile FILE]

Reports microseconds of CPU per shadow update (QoS 1, agent -> broker, validated and
audited), per PUBACK relayed back, and per QoS 0 telemetry delivery (broker -> agent, the
relay bench's traffic), with B packets per read (what one socket read
carries when the agent keeps a window in flight).

With ``--evict-mb M`` each read is fed cold: before it (outside the clock) one byte per
cache line of an M MB buffer is written, more than this CPU's L2 holds. That is what the
other processes of a busy host do to the guard between two packets when every read
carries one (the load bench: ~200 sessions, each read a single packet, the broker and the
clients running in between). The difference from the same run warm is what the guard's
memory footprint per packet costs, not its instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from iot_guard.mqtt import (
    Connack,
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from iot_guard.session import AgentData, AgentOpened, BrokerData

from .args import count
from .procs import REPO
from .report import Row
from .workers import shadow_update_payload, telemetry_payload

AGENT = "ops-agent"
TOPIC = "tenants/acme/devices/therm-001/shadow/update"
TELEMETRY = "tenants/acme/devices/+/telemetry"
DEVICES = [f"therm-{i:03d}" for i in range(1, 11)]


class Collector:
    """A transport that keeps what is written (and counts it), and is never closing."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def evict(buffer: bytearray, zeros: bytes) -> None:
    """One write per 64-byte cache line of ``buffer``: what was cached before is gone."""
    buffer[::64] = zeros


async def measure(
    policy_dir: Path, n: int, batch: int, profile: Path | None, evict_mb: int = 0
) -> dict[str, float]:
    from iot_guard.audit.signer import write_keys
    from iot_guard.proxy.link import Link
    from iot_guard.proxy.server import GuardConfig, GuardServer
    from iot_guard.tokens import issue_token, new_secret

    with tempfile.TemporaryDirectory(prefix="iot-guard-inproc-") as tmp:
        work = Path(tmp)
        key, _ = write_keys(work / "keys", "bench.iot-guard/audit")
        secret = new_secret().encode()
        config = GuardConfig(policy_dir=policy_dir, secret=secret, listen_port=0,
                             audit_path=work / "audit.jsonl", audit_key=key)
        server = GuardServer(config)
        await server.start()
        try:
            link = server.new_link()
            agent, upstream = Collector(), Collector()
            link.agent = agent  # type: ignore[assignment]
            link.feed(AgentOpened("127.0.0.1:1"))
            token = issue_token(secret, AGENT, ttl_s=3600).encode()
            # The session's OpenUpstream, carried out here by hand: the collector is the
            # broker's side.
            original = Link._open_upstream
            Link._open_upstream = lambda self, connect: None  # type: ignore[method-assign]
            try:
                link.feed(AgentData(encode(Connect("inproc", 5, username=AGENT,
                                                   password=token), 5)))
            finally:
                Link._open_upstream = original  # type: ignore[method-assign]
            link.upstream = upstream  # type: ignore[assignment]
            link.feed(BrokerData(encode(Connack(0), 5)))
            reads = []
            acks = []
            for first in range(0, n, batch):
                ids = [(first + i) % 65535 + 1 for i in range(min(batch, n - first))]
                reads.append(AgentData(b"".join(
                    encode(Publish(TOPIC, shadow_update_payload(first + k), 1, packet_id=pid), 5)
                    for k, pid in enumerate(ids))))
                acks.append(BrokerData(b"".join(encode(PubAck(pid), 5) for pid in ids)))
            # Telemetry to the agent (the relay bench's traffic): subscribed, then QoS 0
            # deliveries from the broker, ``batch`` per read.
            link.feed(AgentData(encode(Subscribe(1, [Subscription(TELEMETRY)]), 5)))
            link.feed(BrokerData(encode(SubAck(1, [0]), 5)))
            deliveries = [BrokerData(b"".join(
                encode(Publish(f"tenants/acme/devices/{DEVICES[k % 10]}/telemetry",
                               telemetry_payload(k)), 5)
                for k in range(first, min(first + batch, n)))) for first in range(0, n, batch)]
            before = len(upstream.chunks)
            before_agent = len(agent.chunks)
            gc.collect()
            profiler = cProfile.Profile() if profile is not None else None
            publish_s = ack_s = 0.0
            clock = time.process_time
            cold = bytearray(evict_mb * 2**20)
            zeros = bytes(len(cold[::64]))
            if profiler is not None:
                profiler.enable()
            for read, ack in zip(reads, acks, strict=True):
                if cold:
                    evict(cold, zeros)
                t0 = clock()
                link.feed(read)
                publish_s += clock() - t0
                if cold:
                    evict(cold, zeros)
                t0 = clock()
                link.feed(ack)
                ack_s += clock() - t0
                await asyncio.sleep(0)  # let the loop sign checkpoints as it would
            relay_s = 0.0
            if cold:
                for delivery in deliveries:
                    evict(cold, zeros)
                    t0 = clock()
                    link.feed(delivery)
                    relay_s += clock() - t0
            else:  # one clock for all: a clock read costs about what a delivery does
                t0 = clock()
                for delivery in deliveries:
                    link.feed(delivery)
                relay_s = clock() - t0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(profile))
            forwarded = sum(len(c) for c in upstream.chunks[before:])
            expected = sum(len(r.data) for r in reads)
            delivered = sum(len(c) for c in agent.chunks[before_agent:])
            relayed = sum(len(r.data) for r in (*acks, *deliveries))
            if forwarded != expected or delivered != relayed or link.closed:
                raise RuntimeError(f"the guard forwarded {forwarded} of {expected} bytes and "
                                   f"delivered {delivered} of {relayed} (closed: {link.closed})")
        finally:
            await server.stop()
        audited = len(re.findall(
            rb'"packet":"publish","requested_scope":"%s",[^\n]*"result_status":"success"'
            % TOPIC.encode(), (work / "audit.jsonl").read_bytes()))
    return {"publish_us": publish_s / n * 1e6, "puback_us": ack_s / n * 1e6,
            "relay_us": relay_s / n * 1e6, "records": audited}


# Cold runs: more than the L2 of the CPUs this runs on (4 MB per core on the bench machine);
# fewer packets, as each eviction takes a moment (outside the clock).
EVICT_MB = 16
COLD_N = 2_000


def run_inproc(policy_dir: Path, n: int, log: Any, batches: tuple[int, ...] = (1, 35)) -> list[Row]:
    """Rows for ``python -m bench``: CPU per packet at one packet per read and at 35, and
    at one per read fed cold (``--evict-mb``)."""
    from iot_guard.proxy.server import new_event_loop

    rows = []
    runs = [(batch, 0, n) for batch in batches] + [(1, EVICT_MB, min(n, COLD_N))]
    logging.disable(logging.WARNING)
    loop = new_event_loop()
    try:
        for batch, evict_mb, count in runs:
            best: dict[str, float] = {}
            for _ in range(3):
                r = loop.run_until_complete(
                    measure(policy_dir.resolve(), count, batch, None, evict_mb))
                best = {k: min(best.get(k, v), v) for k, v in r.items()}
            how = f"{batch} per read" + (
                f", cold (caches evicted before each read: {evict_mb} MB written)"
                if evict_mb else "")
            log(f"  {how}: {best['publish_us']:.2f} us per shadow update, "
                f"{best['puback_us']:.2f} us per PUBACK relayed, {best['relay_us']:.2f} us per "
                f"QoS 0 delivery (CPU, best of 3)")
            label = f"{batch} per read" + (", cold" if evict_mb else "")
            for key, what in (("publish_us", "validated, audited shadow update"),
                              ("puback_us", "PUBACK relayed"),
                              ("relay_us", "QoS 0 delivery relayed")):
                rows.append(Row(f"guard CPU per {what}, in process, {label} (us)",
                                "-", f"{best[key]:.2f}", "-", "(info)", None))
    finally:
        loop.close()
        logging.disable(logging.NOTSET)
    return rows


def main(argv: list[str] | None = None) -> int:
    from iot_guard.proxy.server import new_event_loop

    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    p.add_argument("--n", type=count, default=30_000)
    p.add_argument("--batch", type=count, default=20)
    p.add_argument("--repeat", type=count, default=3, help="best of this many runs")
    p.add_argument("--evict-mb", type=count, default=0, metavar="M",
                   help="feed each read cold: write one byte per cache line of M MB first")
    p.add_argument("--policy", type=Path, default=REPO / "device_policies")
    p.add_argument("--profile", type=Path, help="cProfile stats of the last run to FILE")
    args = p.parse_args(argv)
    # No broker here: the approvals executor's retries would fill the screen.
    logging.disable(logging.WARNING)
    loop = new_event_loop()
    best: dict[str, float] = {}
    for k in range(args.repeat):
        profile = args.profile if k == args.repeat - 1 else None
        r = loop.run_until_complete(
            measure(args.policy.resolve(), args.n, args.batch, profile, args.evict_mb))
        best = {key: min(best.get(key, value), value) for key, value in r.items()}
    loop.close()
    cold = f", cold ({args.evict_mb} MB evicted before each read)" if args.evict_mb else ""
    print(f"guard CPU in process, best of {args.repeat}, {args.n:,} shadow updates, "
          f"{args.batch} per read{cold}: {best['publish_us']:.2f} us per update, "
          f"{best['puback_us']:.2f} us per PUBACK relayed, "
          f"{best['publish_us'] + best['puback_us']:.2f} us in all; "
          f"{best['relay_us']:.2f} us per QoS 0 telemetry delivery to the agent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
