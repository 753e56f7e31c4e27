"""Measure the fleet at scale: ``python -m simulator.scale [--devices 1000] [--mode mux]``.

Starts an open Mosquitto, runs the fleet for ``--seconds`` with telemetry every
``--interval`` seconds and prints CPU (simulator and broker), memory, messages per second and
whether telemetry kept up (every device sent what its interval asks for).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from .broker import MosquittoBroker
from .fleet import Fleet

POLICY = Path(__file__).resolve().parents[1] / "device_policies"


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(devices: int, mode: str, seconds: float, interval: float) -> dict[str, float]:
    with MosquittoBroker() as broker:
        assert broker._proc is not None
        broker_pid = broker._proc.pid
        started = time.monotonic()
        fleet = Fleet(
            POLICY,
            broker.host,
            broker.port,
            scale=devices,
            mode=mode,
            telemetry_interval_s=interval,
        )
        fleet.start(timeout=120)
        online_s = time.monotonic() - started
        # Measure a steady window after every device sent its first reading.
        time.sleep(interval)
        cpu0, bcpu0 = time.process_time(), _proc_cpu_s(broker_pid)
        t0, tel0 = time.monotonic(), fleet.stats().telemetry
        time.sleep(seconds)
        t1, tel1 = time.monotonic(), fleet.stats().telemetry
        cpu1, bcpu1 = time.process_time(), _proc_cpu_s(broker_pid)
        rss = _proc_rss_mb(os.getpid())
        broker_rss = _proc_rss_mb(broker_pid)
        fleet.stop()
    window = t1 - t0
    expected = devices * window / interval
    return {
        "devices": devices,
        "online_s": online_s,
        "msgs_per_s": (tel1 - tel0) / window,
        "kept_up_pct": 100.0 * (tel1 - tel0) / expected,
        "sim_cpu_pct": 100.0 * (cpu1 - cpu0) / window,
        "broker_cpu_pct": 100.0 * (bcpu1 - bcpu0) / window,
        "sim_rss_mb": rss,
        "sim_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "broker_rss_mb": broker_rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.scale")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--mode", choices=("per-device", "mux"), default="per-device")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = measure(args.devices, args.mode, args.seconds, args.interval)
    print(f"mode={args.mode} interval={args.interval}s window={args.seconds}s")
    for key, value in result.items():
        print(f"  {key:16} {value:10.1f}")
    return 0 if result["kept_up_pct"] >= 95 else 1


if __name__ == "__main__":
    sys.exit(main())
