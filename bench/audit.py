"""The audit chain's own cost: writing chained records and verifying a log.

Write: N decision records (the shape the session writes, ~450 B each) in batches of one,
as a guard writes one per decided packet, to a file on the same disk. The baseline is
what the guard wrote before the chain: one JSON line per record, one ``os.write``. The
chained writer adds the link (the line's Merkle leaf hash: one SHA-256) and the Merkle
frontier (~one more) per record and signs a checkpoint every 1000 records (here inline,
as no event loop runs; in the guard the loop signs). Verify: ``iot-guard audit verify``'s
code on the file just written, records/s.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from iot_guard.audit import AuditLog
from iot_guard.audit.signer import NoteSigner
from iot_guard.audit.verifier import verify_logs

from .report import Row


def decision_record(i: int) -> dict[str, Any]:
    return {
        "timestamp": "2026-11-30T22:00:00.123456Z", "agent_id": "ops-agent",
        "session_id": "a1b2c3-17", "client_id": "bench-shadow-agent", "token_id": "Jk3pQ9xv",
        "packet": "publish", "tool_name": "set_target_temperature", "action_type": "write",
        "requested_scope": f"tenants/acme/devices/therm-{i % 10:03d}/shadow/update",
        "granted_scope": f"tenants/acme/devices/therm-{i % 10:03d}/shadow/update",
        "resource_id": f"acme/therm-{i % 10:03d}", "result_status": "success",
        "decision": "allow", "reason": "tool set_target_temperature allows it",
        "reason_code": 0, "rule": "tools.set_target_temperature", "risk": "medium", "qos": 1,
        "retain": False, "payload_bytes": 52,
        "payload_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    }


def _plain_write(path: Path, records: list[dict[str, Any]]) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for record in records:
            os.write(fd, json.dumps(record, separators=(",", ":"), ensure_ascii=False)
                     .encode() + b"\n")
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _chained_write(path: Path, records: list[dict[str, Any]], signer: NoteSigner) -> float:
    log = AuditLog(path, signer=signer, checkpoint_records=1000)
    start = time.perf_counter()
    for record in records:
        log.write_many([record])
    elapsed = time.perf_counter() - start
    log.close()
    return elapsed


def run_audit(workdir: Path, n: int, passes: int, log: Any) -> list[Row]:
    signer = NoteSigner.generate("bench.iot-guard/audit")
    records = [decision_record(i) for i in range(n)]
    plain_s = chained_s = verify_s = float("inf")
    lines = 0
    for k in range(passes):  # fastest of the passes, as timeit does
        plain, chained = workdir / f"plain-{k}.jsonl", workdir / f"chained-{k}.jsonl"
        plain_s = min(plain_s, _plain_write(plain, records))
        chained_s = min(chained_s, _chained_write(chained, records, signer))
        start = time.perf_counter()
        (report,) = verify_logs([chained], [signer.verifier])
        verify_s = min(verify_s, time.perf_counter() - start)
        if not report.ok:
            raise RuntimeError(f"the bench's own log does not verify: {report.problem}")
        lines = report.lines
        plain.unlink()
        chained.unlink()
    start = time.perf_counter()
    for _ in range(200):
        signer.sign("bench.iot-guard/audit\n123456\n" + "A" * 43 + "=\n")
    sign_us = (time.perf_counter() - start) / 200 * 1e6
    added_us = (chained_s - plain_s) / n * 1e6
    log(f"  audit write: plain JSON lines {n / plain_s:,.0f} records/s, chained "
        f"{n / chained_s:,.0f} records/s (+{added_us:.1f} us per record, checkpoints included);"
        f" Ed25519 checkpoint signature {sign_us:.0f} us")
    log(f"  audit verify: {lines:,} lines in {verify_s:.2f} s = {lines / verify_s:,.0f} "
        "records/s (chain, Merkle root and every checkpoint signature)")
    return [
        Row(f"audit write, 1 record per write, {n:,} records (records/s)",
            f"{n / plain_s:,.0f}/s", f"{n / chained_s:,.0f}/s", f"{plain_s / chained_s:.2f}",
            "(info)", None),
        Row("audit verify (records/s)", "", f"{lines / verify_s:,.0f}/s", "", "(info)", None),
    ]


def verify_guard_log(path: Path, pubkey: Path, log: Any) -> Row:
    """The benchmarked guard's own log, after its clean stop: every line chained and signed."""
    from iot_guard.audit.signer import load_verifiers

    start = time.perf_counter()
    reports = verify_logs([path], load_verifiers(pubkey))
    elapsed = time.perf_counter() - start
    ok = len(reports) == 1 and reports[0].ok
    lines = reports[0].lines if ok else 0
    log("  the guard's audit log after the run: "
        + (reports[0].summary() if ok else "; ".join(str(r.problem) for r in reports))
        + f" ({elapsed:.2f} s)")
    return Row("guard's own audit log verifies after the run (records)", "", f"{lines:,}",
               "", "chain + checkpoints ok", ok)
