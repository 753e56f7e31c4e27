"""The fleet as a whole: broker restarts, the multiplexed mode, asyncio users, scale."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from iot_guard.policy.loader import load_policy
from simulator.agent import AgentClient
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet
from simulator.registry import registry_devices

POLICY = Path(__file__).resolve().parents[2] / "device_policies"


def spy_on(broker: MosquittoBroker) -> AgentClient:
    account = broker.guard_account
    client = AgentClient(
        broker.host, broker.port, username=account.username, password=account.password
    ).connect()
    client.subscribe("tenants/#")
    return client


def test_devices_reconnect_after_a_broker_restart(tmp_path: Path) -> None:
    document = load_policy(POLICY)
    with (
        MosquittoBroker(registry_devices(document), workdir=tmp_path) as broker,
        Fleet.on_broker(broker, document, boot_time_s=0.1) as fleet,
    ):
        device = fleet.device("globex", "therm-103")
        broker.restart()
        device.wait_online(10, online=False)  # the loss is noticed ...
        fleet.wait_online(15)  # ... and every device comes back by itself
        assert device.boot_count == 2
        with spy_on(broker) as spy:
            spy.publish(f"{device.spec.base}/shadow/get", b"")
            assert spy.expect(f"{device.spec.base}/shadow/get/accepted").json()["version"] == 1


def test_mux_mode_serves_many_devices_over_few_connections(mosquitto: MosquittoBroker) -> None:
    document = load_policy(POLICY)
    with Fleet.on_broker(mosquitto, document, mode="mux", mux_size=5, boot_time_s=0.1) as fleet:
        assert len(fleet._links) == 3  # 13 devices, 5 per connection
        with spy_on(mosquitto) as spy:
            spy.publish("tenants/acme/groups/floor-2/config/push", {"mode": "heat"})
            for n in range(6, 11):
                device = fleet.device("acme", f"therm-{n:03d}")
                device.wait_until(lambda d: d.config["mode"] == "heat", 5, "group push")
            assert fleet.device("acme", "therm-005").config["mode"] == "auto"
            # A reboot in mux mode: the device says offline itself (one will per connection).
            base = "tenants/acme/devices/therm-007"
            spy.publish(f"{base}/commands/reboot", {"delay_s": 0})
            spy.expect(f"{base}/status", where=lambda m: m.json()["status"] == "offline")
            fleet.device("acme", "therm-007").wait_until(lambda d: d.boot_count == 2, 5, "reboot")
            spy.publish(f"{base}/shadow/update", {"state": {"desired": {"mode": "off"}}})
            accepted = spy.expect(
                f"{base}/shadow/update/accepted", where=lambda m: "desired" in m.json()["state"]
            )
            assert accepted.json()["version"] == 3  # group push reported (2), this update (3)


@pytest.mark.asyncio
async def test_an_asyncio_test_drives_the_fleet_with_aiomqtt(
    mosquitto: MosquittoBroker, fleet: Fleet
) -> None:
    # The fleet runs on its own loop in its own thread, so this loop stays free.
    base = "tenants/globex/devices/therm-102"
    account = mosquitto.guard_account
    async with aiomqtt.Client(
        mosquitto.host,
        mosquitto.port,
        username=account.username,
        password=account.password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(f"{base}/shadow/update/+")
        update = {"state": {"desired": {"target_temp_c": 7}}, "clientToken": "aio"}
        await client.publish(f"{base}/shadow/update", json.dumps(update), qos=1)

        async def replies() -> list[str]:
            seen: list[str] = []
            async for message in client.messages:
                seen.append(str(message.topic).rsplit("/", 1)[1])
                if len(seen) == 3:  # desired accepted, delta, reported accepted
                    return seen
            return seen

        assert await asyncio.wait_for(replies(), 5) == ["accepted", "delta", "accepted"]
    device = fleet.device("globex", "therm-102")
    await device.async_wait_until(lambda d: d.state.reported["target_temp_c"] == 7, 5, "reported")
    await fleet.async_wait_online(5)


@pytest.mark.parametrize("mode", ["per-device", "mux"])
def test_two_hundred_devices_come_online_and_report(mosquitto: MosquittoBroker, mode: str) -> None:
    # An open broker: generated devices have no accounts on the locked-down one.
    document = load_policy(POLICY)
    with (
        MosquittoBroker() as open_broker,
        Fleet(
            document,
            open_broker.host,
            open_broker.port,
            scale=200,
            mode=mode,
            telemetry_interval_s=1,
        ) as fleet,
    ):
        assert len(fleet.devices) == 200
        assert fleet.device("acme", "sim-00001").spec.type == "thermostat"
        fleet.devices[-1].wait_until(lambda d: d.telemetry_sent >= 2, 5, "telemetry")
        stats = fleet.stats()
        assert stats.online == 200 and stats.telemetry >= 200


def test_a_fleet_that_cannot_come_online_says_which_devices_and_stops() -> None:
    document = load_policy(POLICY)
    with MosquittoBroker(registry_devices(document)) as broker:
        # No credentials on a broker that refuses anonymous clients: nobody gets online.
        fleet = Fleet(document, broker.host, broker.port, reconnect_s=0.05)
        with pytest.raises(TimeoutError, match="13 of 13 devices not online.*acme/therm-001"):
            fleet.start(timeout=1)
        assert fleet.stats().online == 0
        assert fleet._thread is None  # stopped, no loop left running
