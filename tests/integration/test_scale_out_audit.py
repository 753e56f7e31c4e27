"""The audit chain of several guards on one Redis (issue 11): one chain per guard instance,
signed with the instance's own key (its origin), its head kept in the shared store under
that origin; ``iot-guard audit verify`` takes every guard's logs and keys at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from iot_guard.proxy.server import GuardThread
from iot_guard.state import open_state
from simulator.broker import MosquittoBroker
from simulator.redis_server import RedisServer

from .test_audit_guard import POLICY_DIR, iot_guard, keygen, publish_acked

SECRET = b"scale-out-audit-secret-scale-out-audit-0"
ORIGINS = {"a": "guard-a.test/iot-guard", "b": "guard-b.test/iot-guard"}


def test_two_guards_sign_their_own_chains_and_verify_together(
    mosquitto: MosquittoBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.fresh_url()
    keys = {name: keygen(tmp_path / name, origin) for name, origin in ORIGINS.items()}
    logs = {name: tmp_path / f"{name}.jsonl" for name in ORIGINS}
    guards = {}
    for name in ORIGINS:
        config = dataclasses.replace(
            mosquitto.guard_config(POLICY_DIR, SECRET, logs[name]), state=url,
            audit_key=keys[name] / "audit.key", audit_checkpoint_records=2)
        guards[name] = GuardThread(config).start()
    try:
        for i, name in enumerate(["a", "b", "a", "b", "b"], start=1):
            publish_acked(guards[name].port, SECRET, i)
        for name in ORIGINS:
            guards[name].stop()  # a clean stop signs the tail and stores the head
    finally:
        for guard in guards.values():
            guard.stop()

    # The shared store keeps one head per origin, each where that guard's own log ends.
    async def stored_heads() -> dict[str, Any]:
        state = await open_state(url, poll_s=0)
        try:
            return {name: await state.chain.head(origin) for name, origin in ORIGINS.items()}
        finally:
            await state.close()

    heads = asyncio.run(stored_heads())
    for name in ORIGINS:
        last = json.loads(logs[name].read_text().splitlines()[-1])
        assert heads[name] is not None and heads[name].seq == last["seq"], (name, heads)
        assert heads[name].checkpoint_size == last["seq"]  # the tail is signed

    both = [str(logs["a"]), str(logs["b"]),
            "--pubkey", str(keys["a"] / "audit.pub"), "--pubkey", str(keys["b"] / "audit.pub")]
    result = iot_guard("audit", "verify", *both)
    assert result.returncode == 0, result.stderr
    for origin in ORIGINS.values():
        assert f"{origin}: ok:" in result.stdout, result.stdout

    # Each log is its own chain: a key of one guard does not vouch for the other's log.
    only_a = iot_guard("audit", "verify", str(logs["a"]), str(logs["b"]),
                       "--pubkey", str(keys["a"] / "audit.pub"))
    assert only_a.returncode == 1
    assert f"{ORIGINS['a']}: ok:" in only_a.stdout and ORIGINS["b"] in only_a.stderr

    # Tampering with one guard's log is named, the other's still verifies.
    lines = logs["b"].read_text().splitlines(keepends=True)
    edited = next(i for i, line in enumerate(lines) if '"decision":"allow"' in line)
    lines[edited] = lines[edited].replace('"decision":"allow"', '"decision":"deny"')
    logs["b"].write_text("".join(lines))
    tampered = iot_guard("audit", "verify", *both)
    assert tampered.returncode == 1
    assert f"{ORIGINS['a']}: ok:" in tampered.stdout
    assert str(logs["b"]) in tampered.stderr, tampered.stderr
