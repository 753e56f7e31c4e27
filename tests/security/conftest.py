"""Attack tests run against the plugin's locked-down broker (device accounts + ACL) and guard."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iot_guard.mqtt import Publish
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from simulator.broker import MosquittoBroker
from tests.rawmqtt import RawMqtt


@dataclass
class Guarded:
    """The plugin's broker and guard, with what attack tests need of them."""

    broker: MosquittoBroker
    guard: GuardThread
    secret: bytes

    @property
    def port(self) -> int:
        return self.guard.port

    def token(self, agent: str = "ops-agent", **kw: object) -> str:
        return issue_token(self.secret, agent, **kw)  # type: ignore[arg-type]

    def audit(self) -> list[dict]:
        path = self.guard.server.config.audit_path
        assert path is not None
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in lines if "audit" not in r]  # decisions, not the chain's own lines


@pytest.fixture
def guarded(mosquitto: MosquittoBroker, guard: GuardThread, guard_secret: bytes) -> Guarded:
    return Guarded(mosquitto, guard, guard_secret)


class BrokerSpy:
    """A broad client on the broker itself: sees whatever the guard let through."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="security-spy")
        account = broker.guard_account
        self.client.username_pw_set(account.username, account.password)
        # Retained replays (device status left by earlier fleets) are old state, not something
        # the guard let through now; a live message arrives with retain 0 [MQTT-3.3.1-9].
        self.client.on_message = lambda c, u, m: (
            None if m.retain else self.messages.put((m.topic, m.payload, m.retain)))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("#", qos=1)
        assert subscribed.wait(5), "spy subscription not acknowledged"

    def seen_before_marker(self, guarded: Guarded, timeout: float = 5.0) -> list[tuple]:
        """Send an allowed marker through the guard; return what the broker saw before it."""
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
