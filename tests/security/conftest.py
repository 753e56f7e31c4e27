"""A locked-down broker (device accounts + ACL) with the guard in front, for attack tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iot_guard.policy.loader import load_policy
from iot_guard.proxy.server import GuardConfig, GuardThread
from iot_guard.tokens import issue_token
from simulator.broker import MosquittoBroker
from simulator.registry import registry_devices

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
SECRET = b"security-suite-secret-security-suite-01"


@dataclass
class Guarded:
    broker: MosquittoBroker
    guard: GuardThread
    audit_path: Path

    @property
    def port(self) -> int:
        return self.guard.port

    def token(self, agent: str = "ops-agent", **kw: object) -> str:
        return issue_token(SECRET, agent, **kw)  # type: ignore[arg-type]

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    devices = registry_devices(load_policy(POLICY_DIR))
    with MosquittoBroker(devices) as broker:
        audit_path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
        config = GuardConfig(
            policy_dir=POLICY_DIR, upstream_host=broker.host, upstream_port=broker.port,
            secret=SECRET, upstream_username=broker.guard_account.username,
            upstream_password=broker.guard_account.password, listen_port=0,
            audit_path=audit_path, max_packet_size=64 * 1024,
        )
        with GuardThread(config) as guard:
            yield Guarded(broker, guard, audit_path)


class BrokerSpy:
    """A broad client on the broker itself: sees whatever the guard let through."""

    def __init__(self, broker: MosquittoBroker) -> None:
        import queue

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="security-spy")
        account = broker.guard_account
        self.client.username_pw_set(account.username, account.password)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        subscribed = __import__("threading").Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("#", qos=1)
        assert subscribed.wait(5), "spy subscription not acknowledged"

    def seen_before_marker(self, guarded: Guarded, timeout: float = 5.0) -> list[tuple]:
        """Send an allowed marker through the guard; return what the broker saw before it."""
        import queue

        from iot_guard.mqtt import Publish
        from tests.rawmqtt import RawMqtt

        marker = "tenants/acme/devices/therm-010/shadow/get"
        client = RawMqtt(guarded.port)
        assert client.connect("ops-agent", guarded.token()).reason_code == 0
        client.send_packet(Publish(marker, b"", qos=1, packet_id=1))
        client.read()  # the broker's PUBACK
        client.close()
        seen = []
        while True:
            try:
                topic, payload, retain = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"marker never reached the broker; saw {seen}") from None
            if topic == marker:
                return seen
            seen.append((topic, payload, retain))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def spy(guarded: Guarded) -> Iterator[BrokerSpy]:
    spy = BrokerSpy(guarded.broker)
    yield spy
    spy.close()
