"""The Mosquitto the benchmarks run against: ``simulator.broker.MosquittoBroker`` with queue
limits raised so it drops nothing.

The defaults (``max_queued_messages 1000``) make Mosquitto drop QoS 0 messages for a
subscriber that falls behind in a burst, which would turn a throughput figure into a loss
figure. The direct and guarded runs use the same broker (same config, same process).
"""

from __future__ import annotations

from pathlib import Path

from simulator.broker import MosquittoBroker, find_tool

BENCH_CONFIG = (
    # 0 = no limit: a burst must queue, not be dropped, for both runs alike.
    "max_queued_messages 0",
    "max_queued_bytes 0",
    "max_inflight_messages 0",
    # Nagle would add delayed-ACK stalls to the latency figures.
    "set_tcp_nodelay true",
)


def mosquitto_binary() -> str:
    found = find_tool("mosquitto")
    if not found:
        raise RuntimeError(
            "the benchmarks need Mosquitto: `sudo apt-get install mosquitto` (Debian/Ubuntu)"
        )
    return found


def bench_broker(workdir: Path) -> MosquittoBroker:
    """An open loopback broker, a local process (its CPU time is measured), logs in workdir."""
    return MosquittoBroker(
        auth=False, workdir=workdir, binary=mosquitto_binary(), extra_config=BENCH_CONFIG
    )
