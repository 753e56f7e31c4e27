"""The audit path of an allowed publish alone, in CPU time: what one read of B shadow
updates costs the guard to audit, and what a signed checkpoint costs.

    python -m bench.audit_path [--batches N] [--batch B] [--repeat R]

Per record: B records built as the session builds them (``GuardSession._audit`` on a
connected session with the example policy's decision), then what ``Link._flush`` does
with them: ``AuditLog.write_many`` (signed chain, a real file), ``count_records`` and
``log_session_records``. Checkpoints are left out of that figure (the loop signs them
off the packet path) and measured on their own: signing and writing the line, then
storing the chain head in the SQLite state store (its thread's CPU included), per
checkpoint and per record at the default interval. Run it against another checkout
(``PYTHONPATH=... python -m bench.audit_path`` from there) for an A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import tempfile
import time
from pathlib import Path

from iot_guard.audit import AuditLog
from iot_guard.audit.headstore import ChainHeadSync
from iot_guard.audit.signer import NoteSigner
from iot_guard.logs import log_session_records
from iot_guard.mqtt import Connack, Connect, encode
from iot_guard.policy import CompiledPolicy
from iot_guard.proxy.stats import GuardStats
from iot_guard.session import (
    AgentData,
    AgentOpened,
    BrokerData,
    Command,
    GuardSession,
    SessionSettings,
    WriteAudit,
)
from iot_guard.state import open_state
from iot_guard.tokens import issue_token, new_secret

from .args import count
from .procs import REPO
from .workers import shadow_update_payload

TOPIC = "tenants/acme/devices/therm-001/shadow/update"
ORIGIN = "bench.iot-guard/audit"


def _session(now: float) -> GuardSession:
    secret = new_secret().encode()
    settings = SessionSettings(secret=secret, upstream_username="iot-guard",
                               upstream_password=b"pw")
    session = GuardSession(CompiledPolicy.load(REPO / "device_policies"), settings, "s-1")
    password = issue_token(secret, "ops-agent", now=now, ttl_s=3600).encode()
    session.handle(AgentOpened("127.0.0.1:1"), now)
    session.handle(AgentData(encode(Connect(client_id="bench", protocol_level=5,
                                            username="ops-agent", password=password), 5)), now)
    session.handle(BrokerData(encode(Connack(), 5)), now)
    return session


def audit_cost(batches: int, batch: int, work: Path) -> tuple[float, float, float]:
    """CPU seconds per record: building, write_many, count + console log."""
    now = time.time()
    session = _session(now)
    payloads = [shadow_update_payload(i) for i in range(batch)]
    agent = session._agent
    assert agent is not None
    decision = agent.decide_publish(TOPIC, payloads[0], 1, False)
    if not decision.allowed:
        raise RuntimeError(f"the example policy refuses the bench's update: {decision.reason}")
    log = AuditLog(work / "audit.jsonl", signer=NoteSigner.generate(ORIGIN),
                   checkpoint_records=10**12)  # checkpoints: measured on their own
    stats = GuardStats()
    clock = time.process_time
    build = write = count = 0.0
    gc.collect()
    try:
        for k in range(batches):
            at = now + k * 0.001  # one ``now`` per read, as the link gives the session
            t0 = clock()
            actions: list[Command] = []
            for payload in payloads:
                session._audit(actions, at, decision, "publish", TOPIC, payload=payload, qos=1,
                               retain=False)
            records = [a.record for a in actions if isinstance(a, WriteAudit)]
            t1 = clock()
            log.write_many(records)
            t2 = clock()
            stats.count_records(records)
            log_session_records(records, 0)
            t3 = clock()
            build += t1 - t0
            write += t2 - t1
            count += t3 - t2
    finally:
        log.close()
    n = batches * batch
    return build / n, write / n, count / n


async def checkpoint_cost(work: Path, checkpoints: int) -> tuple[float, float]:
    """CPU seconds per checkpoint: signing and writing it, then storing the chain head."""
    stores = await open_state(work / "state")
    try:
        log = AuditLog(work / "checkpoints.jsonl", signer=NoteSigner.generate(ORIGIN),
                       checkpoint_records=10**12)
        sync = ChainHeadSync(log, stores.chain)
        await sync.check()
        record = {"packet": "publish", "decision": "allow", "n": 0}
        log.write(record)
        clock = time.process_time  # the store's thread included
        t0 = clock()
        for _ in range(checkpoints):
            log.write(record)
        plain = clock() - t0
        t0 = clock()
        for _ in range(checkpoints):
            log.write(record)
            log.checkpoint()
        signed = clock() - t0 - plain
        log.on_checkpoint = sync.on_checkpoint
        t0 = clock()
        for _ in range(checkpoints):
            log.write(record)
            log.checkpoint()
            await sync.flush()
        stored = clock() - t0 - plain - signed
        log.close()
        await sync.flush()
        return signed / checkpoints, stored / checkpoints
    finally:
        await stores.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audit_path", description=__doc__)
    p.add_argument("--batches", type=count, default=400)
    p.add_argument("--batch", type=count, default=35, help="records per read")
    p.add_argument("--repeat", type=count, default=5, help="best of this many runs")
    p.add_argument("--checkpoints", type=count, default=200)
    p.add_argument("--every", type=count, default=1000, help="records per checkpoint")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    best: tuple[float, float, float] | None = None
    sign = store = float("inf")
    with tempfile.TemporaryDirectory(prefix="iot-guard-audit-path-") as tmp:
        for k in range(args.repeat):
            run = Path(tmp) / str(k)
            run.mkdir()
            r = audit_cost(args.batches, args.batch, run)
            best = r if best is None or sum(r) < sum(best) else best
            s, h = asyncio.run(checkpoint_cost(run, args.checkpoints))
            sign, store = min(sign, s), min(store, h)
    assert best is not None
    build, write, counted = (x * 1e6 for x in best)
    print(f"audit path, CPU per record, best of {args.repeat} x {args.batches * args.batch:,} "
          f"records, {args.batch} per read: build {build:.2f} + write_many {write:.2f} + "
          f"count and log {counted:.2f} = {build + write + counted:.2f} us")
    print(f"checkpoint: sign and write {sign * 1e6:.0f} us + store the chain head "
          f"{store * 1e6:.0f} us = {(sign + store) * 1e6:.0f} us CPU; every {args.every} "
          f"records: {(sign + store) * 1e6 / args.every:.2f} us per record (off the packet path)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
