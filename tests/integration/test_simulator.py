"""Virtual devices against a real Mosquitto: status, telemetry, shadow, config, commands.

A broad "spy" client (the broker's guard account) plays the cloud side directly on the
broker; the guard is not involved here (see test_plugin.py for that path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from simulator.agent import AgentClient, Message
from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

T1 = "tenants/acme/devices/therm-001"


@pytest.fixture
def spy(mosquitto: MosquittoBroker, fleet: Fleet) -> Iterator[AgentClient]:
    account = mosquitto.guard_account
    client = AgentClient(
        mosquitto.host, mosquitto.port, username=account.username, password=account.password
    ).connect()
    client.subscribe("tenants/#")
    try:
        yield client
    finally:
        client.close()


def token_is(token: str):  # noqa: ANN201 - a predicate factory
    return lambda m: m.json().get("clientToken") == token


def test_every_device_announces_itself_online_retained(mosquitto: MosquittoBroker, fleet: Fleet):
    account = mosquitto.guard_account
    with AgentClient(
        mosquitto.host, mosquitto.port, username=account.username, password=account.password
    ).connect() as late:
        late.subscribe("tenants/+/devices/+/status")
        for device in fleet.devices:
            topic = f"{device.spec.base}/status"
            msg = late.expect(topic, where=lambda m: m.json()["status"] == "online")
            assert msg.retain  # a late subscriber learns the state at once [MQTT-3.3.1-6]
    assert fleet.stats().online == len(fleet.devices) == 13


def test_telemetry_is_plausible_json_with_a_sequence(spy: AgentClient):
    first = spy.expect(f"{T1}/telemetry", timeout=5)
    second = spy.expect(f"{T1}/telemetry", timeout=5, where=lambda m: m.json()["seq"] > 1)
    a, b = first.json(), second.json()
    assert b["seq"] > a["seq"] >= 1
    assert 0 < a["temperature_c"] < 40 and 0 <= a["humidity_pct"] <= 100
    assert a["mode"] == "auto" and a["firmware_channel"] == "stable"
    assert a["timestamp"].endswith("Z") and b["uptime_s"] >= a["uptime_s"]


def test_shadow_get_returns_the_full_document(spy: AgentClient, fleet: Fleet):
    spy.publish(f"{T1}/shadow/get", b"")
    doc = spy.expect(f"{T1}/shadow/get/accepted").json()
    state = fleet.device("acme", "therm-001").state
    assert doc["version"] == state.version
    assert doc["state"]["reported"] == state.reported
    assert doc["state"]["desired"] == {}
    assert "admin_pin" not in doc["state"]["reported"]  # secrets stay out of the shadow
    assert set(doc["metadata"]["reported"]) == set(state.reported)


def test_shadow_update_is_accepted_deltaed_applied_and_reported(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-001")
    before = device.state.version
    update = {"state": {"desired": {"target_temp_c": 24.5, "mode": "heat"}}, "clientToken": "u1"}
    spy.publish(f"{T1}/shadow/update", update)
    accepted = spy.expect(f"{T1}/shadow/update/accepted", where=token_is("u1")).json()
    assert accepted["state"] == {"desired": {"target_temp_c": 24.5, "mode": "heat"}}
    assert accepted["version"] == before + 1
    assert set(accepted["metadata"]["desired"]) == {"target_temp_c", "mode"}
    delta = spy.expect(f"{T1}/shadow/update/delta").json()
    assert delta["state"] == {"target_temp_c": 24.5, "mode": "heat"}
    assert delta["version"] == before + 1
    # The device applies the desired state and reports it back (one more version).
    reported = spy.expect(
        f"{T1}/shadow/update/accepted", where=lambda m: "reported" in m.json()["state"]
    ).json()
    assert reported["state"]["reported"] == {"target_temp_c": 24.5, "mode": "heat"}
    assert reported["version"] == before + 2
    state = device.state
    assert state.reported["target_temp_c"] == 24.5 and state.delta == {}
    assert device.config["mode"] == "heat"
    telemetry = spy.expect(
        f"{T1}/telemetry", where=lambda m: m.json()["target_temp_c"] == 24.5, timeout=5
    )
    assert telemetry.json()["mode"] == "heat"


def test_a_stale_version_is_rejected_with_409(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-001")
    current = device.state.version
    spy.publish(
        f"{T1}/shadow/update",
        {"state": {"desired": {"mode": "cool"}}, "version": current - 1, "clientToken": "old"},
    )
    rejected = spy.expect(f"{T1}/shadow/update/rejected").json()
    assert rejected["code"] == 409 and rejected["clientToken"] == "old"
    assert device.state.desired == {} and device.state.version == current
    # The current version is accepted.
    spy.publish(
        f"{T1}/shadow/update",
        {"state": {"desired": {"mode": "cool"}}, "version": current, "clientToken": "new"},
    )
    assert spy.expect(f"{T1}/shadow/update/accepted", where=token_is("new")).json()["version"] == (
        current + 1
    )


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b'{"state": {"desired": {"target_temp_c": 45}}}', "target_temp_c"),
        (b'{"state": {"desired": {"mode": "turbo"}}}', "mode"),
        (b"{not json", ""),
        (b'{"state": {"reported": {"mode": "heat"}}}', "reported"),
    ],
)
def test_a_malformed_update_is_rejected_with_400(
    spy: AgentClient, fleet: Fleet, payload: bytes, words: str
):
    device = fleet.device("acme", "therm-001")
    before = device.state
    spy.publish(f"{T1}/shadow/update", payload)
    rejected = spy.expect(f"{T1}/shadow/update/rejected").json()
    assert rejected["code"] == 400 and words in rejected["message"]
    assert device.state == before


def test_null_removes_a_desired_key(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-001")
    spy.publish(f"{T1}/shadow/update", {"state": {"desired": {"mode": "off"}}, "clientToken": "a"})
    spy.expect(f"{T1}/shadow/update/accepted", where=token_is("a"))
    spy.publish(f"{T1}/shadow/update", {"state": {"desired": {"mode": None}}, "clientToken": "b"})
    spy.expect(f"{T1}/shadow/update/accepted", where=token_is("b"))
    device.wait_until(lambda d: d.state.desired == {}, 5, "desired emptied")
    assert device.state.reported["mode"] == "off"  # removing a wish does not undo the change


def test_config_patch_is_applied_and_echoes_the_client_token(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-001")
    spy.publish(f"{T1}/config/patch", {"target_temp_c": 19, "clientToken": "p1"})
    result = spy.expect(f"{T1}/config/result").json()
    assert result["status"] == "applied" and result["clientToken"] == "p1"
    assert result["config"]["target_temp_c"] == 19 and result["source"] == "device"
    reported = spy.expect(f"{T1}/shadow/update/accepted").json()
    assert reported["state"]["reported"] == {"target_temp_c": 19}
    assert device.state.reported["target_temp_c"] == 19


def test_a_null_in_a_config_patch_resets_the_field_to_its_factory_value(
    spy: AgentClient, fleet: Fleet
):
    device = fleet.device("acme", "therm-001")
    spy.publish(f"{T1}/config/patch", {"mode": "heat", "clientToken": "set"})
    device.wait_until(lambda d: d.config["mode"] == "heat", 5, "mode heat")
    spy.publish(f"{T1}/config/patch", {"mode": None, "clientToken": "reset"})
    device.wait_until(lambda d: d.config["mode"] == "auto", 5, "mode back to its factory value")
    assert device.state.reported["mode"] == "auto"


def test_an_invalid_config_patch_is_refused_on_config_result(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-001")
    spy.publish(f"{T1}/config/patch", {"telemetry_interval_s": 0, "clientToken": "bad"})
    result = spy.expect(f"{T1}/config/result").json()
    assert result["status"] == "invalid" and result["code"] == 400
    assert "telemetry_interval_s" in result["reason"] and result["clientToken"] == "bad"
    assert device.config["telemetry_interval_s"] == 1


def test_group_push_reaches_every_member_and_no_one_else(spy: AgentClient, fleet: Fleet):
    spy.publish("tenants/acme/groups/floor-1/config/push", {"mode": "cool", "clientToken": "g"})
    for n in range(1, 6):
        device = fleet.device("acme", f"therm-00{n}")
        device.wait_until(lambda d: d.config["mode"] == "cool", 5, "group config applied")
        result = spy.expect(f"{device.spec.base}/config/result").json()
        assert result["source"] == "group:floor-1" and result["clientToken"] == "g"
    # A later marker to floor-2's member proves it was served but never got the push.
    spy.publish("tenants/acme/devices/therm-006/shadow/get", b"")
    spy.expect("tenants/acme/devices/therm-006/shadow/get/accepted")
    assert fleet.device("acme", "therm-006").config["mode"] == "auto"
    assert not spy.received("tenants/acme/devices/therm-006/config/result")


def test_reboot_goes_offline_through_the_will_and_returns_with_its_state(
    spy: AgentClient, fleet: Fleet
):
    device = fleet.device("acme", "therm-001")
    spy.publish(f"{T1}/config/patch", {"target_temp_c": 23})
    spy.expect(f"{T1}/config/result")
    state = device.state
    started = time.time()
    spy.publish(f"{T1}/commands/reboot", {"delay_s": 0})
    # No device publishes "offline" on reboot: the broker does, from the last will.
    offline = spy.expect(f"{T1}/status", where=lambda m: m.json()["status"] == "offline")
    online = spy.expect(
        f"{T1}/status", where=lambda m: m.json()["status"] == "online" and m.at >= offline.at
    )
    device.wait_online(5)  # the device counts itself online once the broker acknowledged
    assert online.json()["boot"] == 2 and device.boot_count == 2
    assert online.at - started >= fleet.boot_time_s
    assert device.state == state  # rejoins with its config and shadow
    assert device.event_names()[-3:] == ["command", "offline", "online"]


def retained_status(broker: MosquittoBroker, device_base: str) -> str:
    """What a client connecting now learns about a device (the retained status)."""
    account = broker.guard_account
    with AgentClient(
        broker.host, broker.port, username=account.username, password=account.password
    ).connect() as fresh:
        fresh.subscribe(f"{device_base}/status")
        message = fresh.expect(f"{device_base}/status")
        assert message.retain
        status: str = message.json()["status"]
        return status


def test_reboot_waits_delay_s(spy: AgentClient, fleet: Fleet, mosquitto: MosquittoBroker):
    device = fleet.device("acme", "therm-002")
    spy.publish("tenants/acme/devices/therm-002/commands/reboot", {"delay_s": 1})
    offline = spy.expect(
        "tenants/acme/devices/therm-002/status", where=lambda m: m.json()["status"] == "offline"
    )
    # The will is retained: a client arriving during the reboot sees "offline".
    assert retained_status(mosquitto, device.spec.base) == "offline"
    device.wait_online(5)
    assert device.events[-1].at - offline.at >= 1.0 + fleet.boot_time_s - 0.1


def test_identify_is_acted_on_and_bad_commands_are_ignored(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-003")
    base = device.spec.base
    spy.publish(f"{base}/commands/reboot", {"delay_s": 999})
    spy.publish(f"{base}/commands/selfdestruct", {})
    spy.publish(f"{base}/commands/identify", b"")
    device.wait_event("command", 5)
    names = device.event_names()
    assert names.count("command_rejected") == 2 and device.online and device.boot_count == 1
    spy.expect(f"{base}/telemetry", where=lambda m: m.json()["identifying"] is True, timeout=5)


# -- faults ---------------------------------------------------------------------------------


def test_fault_offline_fires_the_will_and_clears(
    spy: AgentClient, fleet: Fleet, mosquitto: MosquittoBroker
):
    device = fleet.device("acme", "therm-004")
    base = device.spec.base
    device.faults.offline = True
    offline = spy.expect(f"{base}/status", where=lambda m: m.json()["status"] == "offline")
    device.wait_online(5, online=False)
    assert retained_status(mosquitto, base) == "offline"
    spy.publish(f"{base}/shadow/get", b"")
    device.faults.offline = False
    device.wait_online(5)
    online = spy.expect(f"{base}/status", where=lambda m: m.at > offline.at)
    assert online.json()["status"] == "online"
    # Requests sent while it was off are lost (clean start), like a real powered-off device.
    assert not spy.received(f"{base}/shadow/get/accepted")


def test_fault_latency_delays_replies(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-005")
    device.faults.latency_s = 0.5
    device.wait_event("fault", 5)
    sent = time.time()
    spy.publish(f"{device.spec.base}/shadow/get", b"")
    reply = spy.expect(f"{device.spec.base}/shadow/get/accepted")
    assert reply.at - sent >= 0.45


def test_fault_drop_rate_one_ignores_every_request(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-006")
    fleet.set_fault("drop_rate", 1.0, "acme/therm-006")
    device.wait_event("fault", 5)
    spy.publish(f"{device.spec.base}/shadow/get", b"")
    device.wait_event("dropped", 5)
    device.faults.drop_rate = 0.0
    device.wait_until(lambda d: d.event_names().count("fault") == 2, 5, "fault cleared")
    spy.publish(f"{device.spec.base}/shadow/get", b"")
    spy.expect(f"{device.spec.base}/shadow/get/accepted")
    assert len(spy.received(f"{device.spec.base}/shadow/get/accepted")) == 1


def test_fault_reject_config_refuses_patches_and_shadow_changes(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-007")
    base = device.spec.base
    device.faults.reject_config = True
    device.wait_event("fault", 5)
    spy.publish(f"{base}/config/patch", {"mode": "off", "clientToken": "r"})
    result = spy.expect(f"{base}/config/result").json()
    assert result["status"] == "rejected" and result["clientToken"] == "r"
    spy.publish(f"{base}/shadow/update", {"state": {"desired": {"mode": "off"}}})
    spy.expect(f"{base}/config/result", where=lambda m: m.json()["source"] == "shadow")
    state = device.state
    assert state.reported["mode"] == "auto" and state.delta == {"mode": "off"}


def test_fault_crash_on_apply_loses_the_change_and_comes_back(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-008")
    base = device.spec.base
    device.faults.crash_on_apply = True
    device.wait_event("fault", 5)
    spy.publish(f"{base}/config/patch", {"mode": "off"})
    offline = spy.expect(f"{base}/status", where=lambda m: m.json()["status"] == "offline")
    spy.expect(f"{base}/status", where=lambda m: m.at > offline.at)
    device.wait_online(5)
    assert device.config["mode"] == "auto" and device.boot_count == 2
    assert not spy.received(f"{base}/config/result")


def test_fault_flapping_drops_and_restores_the_connection(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-009")
    base = device.spec.base
    device.faults.flapping_s = 0.3

    def flaps(d: object) -> bool:
        names = device.event_names()
        return names.count("offline") >= 2 and names.count("online") >= 3

    device.wait_until(flaps, 10, "two flaps")
    device.faults.flapping_s = 0.0
    device.wait_online(5)
    statuses = [m.json()["status"] for m in spy.received(f"{base}/status")]
    assert statuses.count("offline") >= 2


def test_fault_malformed_telemetry(spy: AgentClient, fleet: Fleet):
    device = fleet.device("acme", "therm-010")
    device.faults.malformed_telemetry = True
    device.wait_event("fault", 5)
    bad = spy.expect(f"{device.spec.base}/telemetry", where=_not_json, timeout=5)
    assert bad.payload.startswith(b'{"seq"')


def _not_json(message: Message) -> bool:
    try:
        json.loads(message.payload)
    except ValueError:
        return True
    return False


def test_faults_validate_their_values(fleet: Fleet):
    device = fleet.device("globex", "therm-101")
    with pytest.raises(ValueError):
        device.faults.drop_rate = 1.5
    with pytest.raises(AttributeError):
        device.faults.explode = True  # type: ignore[attr-defined]
    assert fleet.set_fault("latency_s", 0.1, "globex/*") == 3
    assert fleet.stats().faults == {"latency_s": 3}
    fleet.clear_faults()
    assert fleet.stats().faults == {}
