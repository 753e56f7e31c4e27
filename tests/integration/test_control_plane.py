"""The server's control plane and addons, against a real Mosquitto and stock paho clients."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_guard.proxy.server import GuardThread
from iot_guard.session import HeldAction
from iot_guard.tokens import issue_token
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
DEVICE = "tenants/acme/devices/therm-001"
SECRET = b"control-plane-test-secret-0123456789"
GOOD_SHADOW = {"state": {"desired": {"target_temp_c": 21}}}


class HoldRecorder:
    """An addon standing in for the approvals service: records what was held."""

    def __init__(self) -> None:
        self.held: list[HeldAction] = []
        self.subscribed: list[tuple[str, str, str]] = []
        self.arrived = threading.Event()

    def on_hold(self, held: HeldAction) -> None:
        self.held.append(held)
        self.arrived.set()

    def on_guard_subscribe(self, agent_id: str, session_id: str, topic_filter: str) -> None:
        self.subscribed.append((agent_id, session_id, topic_filter))


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    return target


@pytest.fixture
def recorder() -> HoldRecorder:
    return HoldRecorder()


@pytest.fixture
def guard(mosquitto: MosquittoBroker, policy_dir: Path, tmp_path: Path,
          recorder: HoldRecorder) -> Iterator[GuardThread]:
    config = mosquitto.guard_config(policy_dir, SECRET, tmp_path / "audit.jsonl")
    with GuardThread(config, addons=[recorder]) as thread:
        yield thread


@pytest.fixture
def connect(guard: GuardThread) -> Iterator:
    made: list[AgentClient] = []

    def make(agent: str = "ops-agent", protocol: int = 5) -> AgentClient:
        client = AgentClient("127.0.0.1", guard.port, username=agent,
                             password=issue_token(SECRET, agent), protocol=protocol)
        made.append(client)
        return client.connect()

    yield make
    for client in made:
        client.close()


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        done.wait(0.02)  # a bounded poll of state owned by another thread
    raise AssertionError(f"{what} not within {timeout}s")


def test_disconnect_ends_every_session_of_one_agent_and_no_other(guard, connect) -> None:
    first, second = connect("ops-agent", 5), connect("ops-agent", 4)
    other = connect("observer", 5)
    ended = guard.call(lambda: guard.server.control.disconnect("ops-agent", reason="killed"))
    assert ended == 2
    wait_until(lambda: first.disconnected and second.disconnected, 5, "both sessions closed")
    assert first.disconnected[0] == 0x98  # MQTT 5 DISCONNECT administrative action
    assert other.disconnected is None
    assert other.subscribe(f"{DEVICE}/status", qos=1) == [1]  # still served
    agents = guard.call(lambda: [s.agent_id for s in guard.server.control.sessions()])
    assert agents == ["observer"]


def test_reload_puts_a_new_policy_in_force_for_live_sessions(guard, connect,
                                                             policy_dir: Path) -> None:
    agent = connect("ops-agent", 5)
    assert agent.publish(f"{DEVICE}/shadow/update", GOOD_SHADOW).reason_code < 0x80
    agents = policy_dir / "agents.yaml"
    agents.write_text("".join(line for line in agents.read_text().splitlines(keepends=True)
                              if line.strip() != "- shadow_update"))
    ok, message = guard.call(guard.server.control.reload_policy)
    assert ok, message
    assert agent.publish(f"{DEVICE}/shadow/update", GOOD_SHADOW).reason_code == 0x87


def test_a_policy_that_does_not_load_leaves_the_old_one_in_force(guard, connect,
                                                                 policy_dir: Path) -> None:
    agent = connect("ops-agent", 5)
    (policy_dir / "agents.yaml").write_text("agents:\n  ops-agent: [unclosed\n")
    ok, why = guard.call(guard.server.control.reload_policy)
    assert not ok
    assert "agents.yaml:" in why and "previous one stays in force" in why
    assert agent.publish(f"{DEVICE}/shadow/update", GOOD_SHADOW).reason_code < 0x80


def test_reopen_audit_writes_to_a_fresh_file_after_rotation(guard, connect,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    connect("observer", 5).close()
    rotated = tmp_path / "audit.jsonl.1"
    log.rename(rotated)
    guard.call(guard.server.control.reopen_audit)
    connect("observer", 5)
    wait_until(lambda: log.exists() and log.read_text().strip(), 5, "a record in the new file")
    assert '"connect"' in log.read_text()
    assert rotated.read_text().count("\n") >= 1


def test_a_held_publish_reaches_the_addon_and_the_agent_learns_the_id(
    guard, connect, recorder: HoldRecorder
) -> None:
    agent = connect("ops-agent", 5)
    assert agent.subscribe("$guard/approvals/+", qos=0) == [0]
    result = agent.publish("tenants/acme/groups/floor-1/config/push",
                           {"firmware_channel": "beta"})
    assert result.reason_code == 0x83  # held is never success
    assert recorder.arrived.wait(5)
    (held,) = recorder.held
    assert result.reason_string and result.reason_string.startswith(
        f"held for approval {held.hold_id}: ")
    assert (held.agent_id, held.topic, json.loads(held.payload)) == (
        "ops-agent", "tenants/acme/groups/floor-1/config/push", {"firmware_channel": "beta"})
    assert recorder.subscribed and recorder.subscribed[0][2] == "$guard/approvals/+"
    # The approvals service tells the agent through the control plane.
    topic = f"$guard/approvals/{held.hold_id}"
    sent = guard.call(lambda: guard.server.control.notify("ops-agent", topic, b'{"s":"pending"}'))
    assert sent == 1
    assert agent.expect(topic, timeout=5).json() == {"s": "pending"}
