"""The pytest plugin's fixtures, used the way a user's test suite would use them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
T1 = "tenants/acme/devices/therm-001"

# The example from simulator/README.md, verbatim: what a user copies into their suite.
USER_TEST = """
def test_my_agent_can_cool_the_office(fleet, agent_client):
    agent = agent_client("ops-agent")                      # MQTT 5, fresh token
    assert agent.subscribe("tenants/acme/devices/therm-001/telemetry") == [1]
    agent.expect("tenants/acme/devices/therm-001/telemetry", timeout=5)

    ack = agent.publish("tenants/acme/devices/therm-001/shadow/update",
                        {"state": {"desired": {"target_temp_c": 19}}})
    assert ack.ok
    thermostat = fleet.device("acme", "therm-001")
    thermostat.wait_until(lambda d: d.state.reported["target_temp_c"] == 19, 5, "applied")

    bad = agent.publish("tenants/acme/devices/therm-001/shadow/update",
                        {"state": {"desired": {"target_temp_c": 99}}})
    assert bad.reason_code == 0x99 and "maximum" in bad.reason_string
"""


def test_a_user_suite_gets_the_fixtures_from_the_entry_point(pytester: pytest.Pytester) -> None:
    # A separate process in a directory without our conftest: only the pytest11 entry
    # point can provide mosquitto, fleet, guard and agent_client there.
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "--iot-guard-policy", str(POLICY), "-p", "no:cacheprovider", "-q", timeout=90
    )
    result.assert_outcomes(passed=1)


def test_the_policy_option_must_name_a_directory(pytester: pytest.Pytester) -> None:
    """A wrong directory stops the run once, with one line: not an error per test."""
    pytester.makepyfile(
        test_user="def test_x(iot_guard_broker):\n    pass\n"
        "def test_y(iot_guard_fleet):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(
        "--iot-guard-policy", "no-such-dir", "-p", "no:cacheprovider", timeout=60
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*iot-guard policy directory*no-such-dir does not exist*"])
    assert "Traceback" not in str(result.stderr) + str(result.stdout)


def test_a_suite_without_a_policy_gets_the_shipped_example(pytester: pytest.Pytester) -> None:
    """A user's suite with no device_policies/ of its own runs on the example fleet that
    ships inside the package (no traceback per test)."""
    pytester.makepyfile(
        test_user="""
from pathlib import Path

def test_example(iot_guard_policy_dir, iot_guard_fleet):
    assert iot_guard_policy_dir.name == "example_policy"
    assert iot_guard_policy_dir.parent == Path(__import__("simulator").__file__).parent
    assert len(iot_guard_fleet.devices) == 13
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=90)
    result.assert_outcomes(passed=1)


def test_the_fixtures_do_not_clash_with_pytest_mqtt(pytester: pytest.Pytester) -> None:
    """pytest-mqtt's plugin has a `mosquitto` fixture. With it installed, `mosquitto` is
    its own and ours is `iot_guard_broker`: neither shadows the other. (A stand-in module
    named pytest_mqtt, loaded as that plugin is, plays pytest-mqtt: the real one pulls in
    Docker.)"""
    pytester.mkpydir("pytest_mqtt")
    (pytester.path / "pytest_mqtt" / "mosquitto.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\n"
        "def mosquitto():\n    return ('localhost', 1883)  # pytest-mqtt's answer\n"
    )
    pytester.makepyfile(
        test_user="""
from simulator.broker import MosquittoBroker

def test_both(mosquitto, iot_guard_broker):
    assert mosquitto == ("localhost", 1883)
    assert isinstance(iot_guard_broker, MosquittoBroker) and iot_guard_broker.running
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "pytest_mqtt.mosquitto", "--iot-guard-policy", str(POLICY), "-p",
        "no:cacheprovider", "-q", timeout=90,
    )
    result.assert_outcomes(passed=1)


def test_agent_reads_and_changes_a_shadow_through_the_guard(fleet, agent_client) -> None:
    agent = agent_client("ops-agent")
    assert agent.subscribe(f"{T1}/telemetry", f"{T1}/shadow/update/accepted") == [1, 1]
    agent.expect(f"{T1}/telemetry")
    ack = agent.publish(
        f"{T1}/shadow/update", {"state": {"desired": {"target_temp_c": 23}}, "clientToken": "p"}
    )
    assert ack.ok
    reported = agent.expect(
        f"{T1}/shadow/update/accepted", where=lambda m: "reported" in m.json()["state"]
    )
    assert reported.json()["state"]["reported"] == {"target_temp_c": 23}
    assert fleet.device("acme", "therm-001").state.reported["target_temp_c"] == 23


def test_a_v311_agent_learns_refusals_from_guard_events(fleet, agent_client) -> None:
    agent = agent_client("ops-agent", protocol="3.1.1")
    assert agent.protocol == 4
    assert agent.subscribe("$guard/events")[0] < 0x80  # granted (the guard picks the QoS)
    device = fleet.device("acme", "therm-001")
    before = device.state
    # v3.1.1 has no reason codes: the PUBACK is plain, the event explains.
    assert agent.publish(f"{T1}/shadow/update", {"state": {"desired": {"mode": "warp"}}}).ok
    event = agent.guard_event(where=lambda e: e["topic"] == f"{T1}/shadow/update")
    assert event["decision"] == "deny" and "mode" in event["reason"]
    agent.publish(f"{T1}/shadow/get", b"")  # a later allowed request, served by the device
    device.wait_event("shadow_get", 5)
    assert device.state == before


def test_a_narrowed_token_and_a_read_only_agent(fleet, agent_client) -> None:
    narrow = agent_client("ops-agent", tools=["read_telemetry"])
    assert narrow.subscribe(f"{T1}/telemetry", f"{T1}/status") == [1, 0x87]
    observer = agent_client("observer")
    refused = observer.publish(f"{T1}/shadow/update", {"state": {"desired": {"mode": "off"}}})
    assert refused.reason_code == 0x87 and refused.reason_string
    assert fleet.device("acme", "therm-001").config["mode"] == "auto"


class TestFleetOptions:
    # Overridden for this class only: a suite may slow telemetry or speed up reboots.
    @pytest.fixture
    def fleet_options(self) -> dict[str, object]:
        return {"telemetry_interval_s": 3600, "boot_time_s": 0.05}

    def test_fleet_options_can_be_overridden(self, fleet) -> None:
        assert fleet.boot_time_s == 0.05
        assert fleet.device("acme", "therm-001").config["telemetry_interval_s"] == 3600


def test_agents_of_one_test_are_closed_after_it(agent_client) -> None:
    first = agent_client("globex-agent", client_id="plugin-reuse")
    assert first.subscribe("tenants/globex/devices/therm-101/status") == [1]
