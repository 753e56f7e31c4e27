"""The broker harness: start, auth, ACL, restart, failures that explain themselves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from iot_guard.policy.loader import load_policy
from simulator import broker as broker_mod
from simulator.agent import AgentClient, ConnectRefused
from simulator.broker import (
    BrokerStartError,
    BrokerUnavailable,
    MosquittoBroker,
    acl_text,
    hash_password,
)
from simulator.registry import DeviceSpec, registry_devices

POLICY = Path(__file__).resolve().parents[2] / "device_policies"
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code "Not authorized"


def client(broker: MosquittoBroker, username: str | None, password: str | None) -> AgentClient:
    return AgentClient(broker.host, broker.port, username=username, password=password)


def device_client(broker: MosquittoBroker, tenant: str, device: str) -> AgentClient:
    account = broker.device_account(tenant, device)
    assert account is not None
    return client(broker, account.username, account.password).connect()


def test_the_session_broker_accepts_the_guard_account_and_refuses_others(
    mosquitto: MosquittoBroker,
) -> None:
    guard = mosquitto.guard_account
    with client(mosquitto, guard.username, guard.password).connect() as ok:
        assert ok.subscribe("$SYS/broker/version") == [1]
    with pytest.raises(ConnectRefused) as refused:
        client(mosquitto, mosquitto.guard_account.username, "wrong").connect()
    # Mosquitto 2.0 answers a wrong password with 0x87 (not authorized), others with 0x86.
    assert refused.value.reason_code in (0x86, NOT_AUTHORIZED)
    with pytest.raises(ConnectRefused):
        client(mosquitto, None, None).connect()  # allow_anonymous false


def test_a_device_account_reaches_its_own_topics_only(mosquitto: MosquittoBroker) -> None:
    guard = mosquitto.guard_account
    with (
        client(mosquitto, guard.username, guard.password).connect() as spy,
        device_client(mosquitto, "acme", "therm-001") as dev,
    ):
        assert spy.subscribe("tenants/#") == [1]
        # Its own subtree: readable and writable.
        assert dev.subscribe("tenants/acme/devices/therm-001/shadow/update") == [1]
        assert dev.publish("tenants/acme/devices/therm-001/telemetry", b"own").ok
        spy.expect("tenants/acme/devices/therm-001/telemetry")
        # Another device's topics: its publishes are refused, and Mosquitto 2.0 grants the
        # subscription but delivers nothing the ACL does not let the account read.
        refused = dev.publish("tenants/acme/devices/therm-002/shadow/update", b"{}")
        assert refused.reason_code == NOT_AUTHORIZED
        dev.subscribe("tenants/acme/devices/therm-002/shadow/update")
        assert spy.publish("tenants/acme/devices/therm-002/shadow/update", b"secret").ok
        # Its group's push is readable, not writable; another group's is not readable.
        dev.subscribe("tenants/acme/groups/floor-1/config/push")
        dev.subscribe("tenants/acme/groups/floor-2/config/push")
        assert spy.publish("tenants/acme/groups/floor-2/config/push", b"other").ok
        assert spy.publish("tenants/acme/groups/floor-1/config/push", b"mine").ok
        dev.expect("tenants/acme/groups/floor-1/config/push")
        assert spy.publish("tenants/acme/devices/therm-001/shadow/update", b"last").ok
        dev.expect("tenants/acme/devices/therm-001/shadow/update")
        assert [(m.topic, m.payload) for m in dev.messages] == [
            ("tenants/acme/groups/floor-1/config/push", b"mine"),
            ("tenants/acme/devices/therm-001/shadow/update", b"last"),
        ]
        pushed = dev.publish("tenants/acme/groups/floor-1/config/push", b"{}")
        assert pushed.reason_code == NOT_AUTHORIZED
        # A marker after the refused publishes proves the spy saw none of them.
        assert dev.publish("tenants/acme/devices/therm-001/telemetry", b"marker").ok
        spy.expect(
            "tenants/acme/devices/therm-001/telemetry", where=lambda m: m.payload == b"marker"
        )
        # The spy saw its own publishes and the device's allowed ones, none of the refused.
        payloads = sorted(m.payload for m in spy.messages if not m.retain)
        assert payloads == sorted([b"own", b"secret", b"other", b"mine", b"last", b"marker"])


def test_a_device_account_cannot_log_in_as_another_device(mosquitto: MosquittoBroker) -> None:
    mine = mosquitto.device_account("acme", "therm-001")
    theirs = mosquitto.device_account("acme", "therm-002")
    assert mine is not None and theirs is not None and mine.password != theirs.password
    with pytest.raises(ConnectRefused):
        client(mosquitto, theirs.username, mine.password).connect()


def test_acl_text_locks_each_device_to_its_subtree() -> None:
    text = acl_text(
        [DeviceSpec("acme", "therm-001", "thermostat", ("floor-1",))], "iot-guard", None
    )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    blocks = [b.strip().splitlines() for b in "\n".join(lines).split("\n\n") if b.strip()]
    assert blocks == [
        ["user iot-guard", "topic readwrite #"],
        [
            "user acme-therm-001",
            "topic readwrite tenants/acme/devices/therm-001/#",
            "topic read tenants/acme/groups/floor-1/config/push",
        ],
    ]


def test_restart_keeps_the_port_and_accounts(tmp_path: Path) -> None:
    specs = registry_devices(load_policy(POLICY))[:2]
    with MosquittoBroker(specs, workdir=tmp_path) as broker:
        port = broker.port
        guard = broker.guard_account
        broker.restart()
        assert broker.port == port and broker.running
        with client(broker, guard.username, guard.password).connect() as c:
            assert c.publish("tenants/acme/devices/therm-001/telemetry", b"x").ok
        broker.stop()
        assert not broker.running
        with pytest.raises(OSError):
            socket.create_connection((broker.host, port), timeout=1).close()
    # The caller's workdir is kept, with the log the broker wrote.
    assert "mosquitto version" in (tmp_path / "mosquitto.log").read_text()


def test_an_open_broker_allows_anonymous_clients() -> None:
    with MosquittoBroker() as broker:
        assert broker.device_account("acme", "therm-001") is None
        with client(broker, None, None).connect() as c:
            assert c.subscribe("anything/#") == [1]


def test_python_password_hashes_are_accepted_by_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Docker path writes hashes itself; prove the format against the real broker.
    monkeypatch.setattr(broker_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_mod, "_sbin", lambda name: None)
    specs = registry_devices(load_policy(POLICY))[:1]
    broker = MosquittoBroker(specs, workdir=tmp_path, binary="/usr/sbin/mosquitto")
    with broker:
        assert "$7$101$" in (tmp_path / "passwd").read_text()
        guard = broker.guard_account
        with client(broker, guard.username, guard.password).connect():
            pass
        with pytest.raises(ConnectRefused):
            client(broker, guard.username, guard.password + "x").connect()
    assert hash_password("pw", b"\0" * 12) == hash_password("pw", b"\0" * 12)


def test_no_mosquitto_and_no_docker_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_mod, "_docker_works", lambda: False)
    broker = MosquittoBroker(workdir=tmp_path, binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerUnavailable, match="apt-get install mosquitto"):
        broker.start()


def test_a_broker_that_cannot_listen_fails_loudly_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = MosquittoBroker(workdir=tmp_path, port=port, start_timeout_s=3)
        # The port accepts (our socket), but Mosquitto itself exits: the error shows why.
        with pytest.raises(BrokerStartError, match="Address already in use"):
            broker.start()
