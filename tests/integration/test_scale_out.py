"""Several guards on one Redis and one Mosquitto: what one guard learns, the others enforce
(issue 11). Real redis-server and Mosquitto from the harness; stock paho clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from simulator.agent import AgentClient, ConnectRefused
from simulator.broker import MosquittoBroker
from simulator.redis_server import RedisServer

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
SECRET = b"scale-out-test-secret-scale-out-test-0"


def guard_on(mosquitto: MosquittoBroker, state: str, audit: Path) -> GuardThread:
    config = mosquitto.guard_config(POLICY_DIR, SECRET, audit)
    config.state = state
    return GuardThread(config).start()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def pair(mosquitto: MosquittoBroker, redis_server: RedisServer,
         tmp_path: Path) -> Iterator[tuple[GuardThread, GuardThread]]:
    url = redis_server.fresh_url()
    a = guard_on(mosquitto, url, tmp_path / "a.jsonl")
    b = guard_on(mosquitto, url, tmp_path / "b.jsonl")
    yield a, b
    a.stop()
    b.stop()


def connect(guard: GuardThread, agent: str = "ops-agent", protocol: int = 5,
            token: str | None = None) -> AgentClient:
    return AgentClient("127.0.0.1", guard.port, username=agent,
                       password=token or issue_token(SECRET, agent), protocol=protocol).connect()


def closed_within(agent: AgentClient, seconds: float) -> int:
    agent._wait(lambda: agent.disconnected is not None, seconds, "disconnect")
    assert agent.disconnected is not None
    return agent.disconnected[0]


def test_a_kill_on_one_guard_disconnects_the_agent_on_the_other_within_a_second(pair) -> None:
    a, b = pair
    on_b_v5, on_b_v3 = connect(b), connect(b, protocol=4)
    bystander = connect(b, "observer")
    started = time.monotonic()
    a.run(lambda: a.server.state.flags.kill("ops-agent", "runaway", "secops"))
    assert closed_within(on_b_v5, 1.0) == 0x98
    closed_within(on_b_v3, 1.0)
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectRefused) as refused:
        connect(b)
    assert refused.value.reason_code == 0x8A
    assert bystander.disconnected is None
    # Lifted on B: A lets new tokens in again (old ones stay void).
    b.run(lambda: b.server.state.flags.lift("ops-agent", "secops"))
    later = issue_token(SECRET, "ops-agent", now=time.time() + 1.5)
    deadline = time.monotonic() + 2
    while True:  # A learns of the lift within its poll interval: a bounded retry
        try:
            connect(a, token=later).close()
            break
        except ConnectRefused:
            if time.monotonic() > deadline:
                raise


def test_redis_going_away_keeps_kills_and_recovers(mosquitto, own_redis: RedisServer,
                                                   tmp_path: Path) -> None:
    url = own_redis.url(prefix="restart")
    a = guard_on(mosquitto, url, tmp_path / "a.jsonl")
    b = guard_on(mosquitto, url, tmp_path / "b.jsonl")
    try:
        a.run(lambda: a.server.state.flags.kill("observer", "compromised", "secops"))
        own_redis.stop()
        # Fail closed on what is known: the killed agent stays out while Redis is down,
        # and agents nobody stopped keep working (low-risk reads continue).
        with pytest.raises(ConnectRefused) as refused:
            connect(b, "observer")
        assert refused.value.reason_code == 0x8A
        ops = connect(b, "ops-agent")
        assert ops.subscribe("tenants/acme/devices/therm-001/status") == [1]
        own_redis.start()  # appendonly: the kill survived the restart
        a.run(lambda: a.server.state.flags.kill("ops-agent", "second", "secops"), timeout=10)
        assert closed_within(ops, 3.0) == 0x98  # B re-read after it reconnected
    finally:
        a.stop()
        b.stop()


def test_a_guard_without_its_shared_state_does_not_start(mosquitto, own_redis: RedisServer,
                                                         tmp_path: Path) -> None:
    url = own_redis.url()
    own_redis.stop()
    with pytest.raises(RuntimeError, match="guard failed to start: .*unreachable|Error"):
        guard_on(mosquitto, url, tmp_path / "a.jsonl")
