"""pytest fixtures: a broker, the example fleet, a guard and agents -- one fixture each.

Registered through the ``pytest11`` entry point, so installing ``iot-guard`` gives any test
suite these fixtures:

``mosquitto``  (session)  a locked-down Mosquitto (``MosquittoBroker``): one account per device
                          of the policy, the guard's account, an ACL. Session-scoped because a
                          start costs ~50 ms; tests that stop or restart a broker make their own.
``fleet``      (function) the policy's devices (``Fleet``) on that broker, all online; a fresh
                          fleet per test so shadows, versions and faults never leak between
                          tests (13 devices start in well under a second). Telemetry every 1 s;
                          override the ``fleet_options`` fixture to pass other ``Fleet`` options.
``guard``      (session)  a running guard (``GuardThread``) in front of ``mosquitto`` using the
                          broker's ``iot-guard`` account; it keeps no per-test state.
``agent_client`` (function) factory: ``agent_client("ops-agent", protocol=5, tools=None)`` ->
                          a connected ``AgentClient`` through the guard with a fresh token;
                          closed after the test.

The policy directory is ``device_policies`` under the rootdir unless the ini option
``iot_guard_policy`` or ``--iot-guard-policy DIR`` says otherwise; a suite may also override
the ``iot_guard_policy_dir`` fixture.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent import AgentClient
from .broker import MosquittoBroker
from .registry import registry_devices

AgentFactory = Callable[..., AgentClient]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iot-guard", "iot-guard simulator fixtures")
    group.addoption(
        "--iot-guard-policy",
        dest="iot_guard_policy",
        default=None,
        help="policy directory for the mosquitto/fleet/guard fixtures",
    )
    parser.addini(
        "iot_guard_policy",
        "policy directory for the mosquitto/fleet/guard fixtures (default: device_policies)",
        default="device_policies",
    )


@pytest.fixture(scope="session")
def iot_guard_policy_dir(pytestconfig: pytest.Config) -> Path:
    value = pytestconfig.getoption("iot_guard_policy") or pytestconfig.getini("iot_guard_policy")
    path = Path(value)
    if not path.is_absolute():
        path = Path(pytestconfig.rootpath) / path
    if not path.is_dir():
        raise pytest.UsageError(f"iot-guard policy directory {path} does not exist")
    return path


@pytest.fixture(scope="session")
def iot_guard_policy(iot_guard_policy_dir: Path) -> Any:
    from iot_guard.policy.loader import load_policy

    return load_policy(iot_guard_policy_dir)


@pytest.fixture(scope="session")
def mosquitto(iot_guard_policy: Any) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(registry_devices(iot_guard_policy), mux_account=True) as broker:
        yield broker


@pytest.fixture
def fleet_options() -> dict[str, Any]:
    """Keyword arguments for the ``fleet`` fixture's ``Fleet``; override to change them."""
    return {"telemetry_interval_s": 1, "boot_time_s": 0.2}


@pytest.fixture
def fleet(
    mosquitto: MosquittoBroker, iot_guard_policy: Any, fleet_options: dict[str, Any]
) -> Iterator[Any]:
    from .fleet import Fleet

    fleet = Fleet.on_broker(mosquitto, iot_guard_policy, **fleet_options)
    fleet.start(timeout=15)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real redis-server on a free port for the session (shared state of several
    guards); use ``redis_server.fresh_url()`` per test for empty state."""
    from .redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def guard_secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="session")
def guard(
    mosquitto: MosquittoBroker,
    iot_guard_policy_dir: Path,
    guard_secret: bytes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    from iot_guard.proxy.server import GuardThread

    config = mosquitto.guard_config(
        iot_guard_policy_dir, guard_secret, tmp_path_factory.mktemp("guard") / "audit.jsonl"
    )
    thread = GuardThread(config)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def agent_client(guard: Any, guard_secret: bytes) -> Iterator[AgentFactory]:
    from iot_guard.tokens import issue_token

    made: list[AgentClient] = []

    def connect(
        agent_id: str = "ops-agent",
        protocol: int | str = 5,
        tools: list[str] | None = None,
        ttl_s: float = 300,
        client_id: str = "",
    ) -> AgentClient:
        token = issue_token(guard_secret, agent_id, ttl_s=ttl_s, tools=tools)
        client = AgentClient(
            "127.0.0.1",
            guard.port,
            username=agent_id,
            password=token,
            protocol=protocol,
            client_id=client_id,
        )
        made.append(client)
        return client.connect()

    try:
        yield connect
    finally:
        for client in made:
            client.close()
