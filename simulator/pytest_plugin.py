"""pytest fixtures: a broker, the example fleet, a guard and agents -- one fixture each.

Registered through the ``pytest11`` entry point, so installing ``iot-guard`` gives any test
suite these fixtures. Their names start with ``iot_guard`` so they cannot clash with other
plugins' (pytest-mqtt has a ``mosquitto`` fixture of its own):

``iot_guard_broker`` (session)  a locked-down Mosquitto (``MosquittoBroker``): one account per
                          device of the policy, the guard's account, an ACL. Session-scoped
                          because a start costs ~50 ms; tests that stop or restart a broker
                          make their own.
``iot_guard_fleet`` (function) the policy's devices (``Fleet``) on that broker, all online; a
                          fresh fleet per test so shadows, versions and faults never leak
                          between tests (13 devices start in well under a second). Telemetry
                          every 1 s; override ``iot_guard_fleet_options`` (or its alias
                          ``fleet_options``) to pass other ``Fleet`` options.
``iot_guard``  (session)  a running guard (``GuardThread``) in front of the broker using its
                          ``iot-guard`` account; it keeps no per-test state.
``iot_guard_agent`` (function) factory: ``iot_guard_agent("ops-agent", protocol=5,
                          tools=None)`` -> a connected ``AgentClient`` through the guard with a
                          fresh token; closed after the test.
``iot_guard_secret`` (session) the guard's token signing secret.

The short names of earlier versions stay as aliases: ``fleet``, ``fleet_options``, ``guard``,
``guard_secret``, ``agent_client``, and ``mosquitto`` -- the last one only when pytest-mqtt
is not installed, so that plugin's ``mosquitto`` is never shadowed (or shadows ours).

The policy directory is, in order: ``--iot-guard-policy DIR``, the ini option
``iot_guard_policy``, ``device_policies/`` under the rootdir, or else the example fleet
shipped in this package (``simulator/example_policy``). A directory named explicitly that
does not exist stops the run once, with one message.
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent import AgentClient
from .broker import MosquittoBroker
from .registry import registry_devices

AgentFactory = Callable[..., AgentClient]


# pytest-mqtt registers a `mosquitto` fixture; ours is `iot_guard_broker` either way.
HAS_PYTEST_MQTT = importlib.util.find_spec("pytest_mqtt") is not None


def example_policy_dir() -> Path:
    """The example fleet's policy shipped with the package (a source checkout's copy is the
    top-level device_policies/, which the package's example_policy links to)."""
    return Path(__file__).resolve().parent / "example_policy"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iot-guard", "iot-guard simulator fixtures")
    group.addoption(
        "--iot-guard-policy",
        dest="iot_guard_policy",
        default=None,
        help="policy directory for the iot_guard_* fixtures (default: device_policies/ under "
        "the rootdir, else the example fleet)",
    )
    parser.addini(
        "iot_guard_policy",
        "policy directory for the iot_guard_* fixtures (default: device_policies under the "
        "rootdir, else the example fleet shipped with iot-guard)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    named = config.getoption("iot_guard_policy") or config.getini("iot_guard_policy")
    if named and not _resolve(config, named).is_dir():
        # Once, before any test: not an error repeated by every test that uses a fixture.
        raise pytest.UsageError(
            f"iot-guard policy directory {_resolve(config, named)} does not exist "
            "(--iot-guard-policy / ini iot_guard_policy)"
        )


def _resolve(config: pytest.Config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(config.rootpath) / path


@pytest.fixture(scope="session")
def iot_guard_policy_dir(pytestconfig: pytest.Config) -> Path:
    named = pytestconfig.getoption("iot_guard_policy") or pytestconfig.getini("iot_guard_policy")
    if named:
        return _resolve(pytestconfig, named)
    own = Path(pytestconfig.rootpath) / "device_policies"
    return own if own.is_dir() else example_policy_dir()


@pytest.fixture(scope="session")
def iot_guard_policy(iot_guard_policy_dir: Path) -> Any:
    from iot_guard.policy.loader import load_policy

    return load_policy(iot_guard_policy_dir)


@pytest.fixture(scope="session")
def iot_guard_broker(iot_guard_policy: Any) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(registry_devices(iot_guard_policy), mux_account=True) as broker:
        yield broker


@pytest.fixture
def iot_guard_fleet_options() -> dict[str, Any]:
    """Keyword arguments for the fleet fixture's ``Fleet``; override to change them."""
    return {"telemetry_interval_s": 1, "boot_time_s": 0.2}


@pytest.fixture
def fleet_options(iot_guard_fleet_options: dict[str, Any]) -> dict[str, Any]:
    """Alias of ``iot_guard_fleet_options``: overriding either changes the fleet."""
    return iot_guard_fleet_options


@pytest.fixture
def iot_guard_fleet(
    iot_guard_broker: MosquittoBroker, iot_guard_policy: Any, fleet_options: dict[str, Any]
) -> Iterator[Any]:
    from .fleet import Fleet

    fleet = Fleet.on_broker(iot_guard_broker, iot_guard_policy, **fleet_options)
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
def iot_guard_secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="session")
def iot_guard(
    iot_guard_broker: MosquittoBroker,
    iot_guard_policy_dir: Path,
    iot_guard_secret: bytes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    from iot_guard.proxy.server import GuardThread

    config = iot_guard_broker.guard_config(
        iot_guard_policy_dir, iot_guard_secret, tmp_path_factory.mktemp("guard") / "audit.jsonl"
    )
    thread = GuardThread(config)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def iot_guard_agent(iot_guard: Any, iot_guard_secret: bytes) -> Iterator[AgentFactory]:
    from iot_guard.tokens import issue_token

    made: list[AgentClient] = []

    def connect(
        agent_id: str = "ops-agent",
        protocol: int | str = 5,
        tools: list[str] | None = None,
        ttl_s: float = 300,
        client_id: str = "",
    ) -> AgentClient:
        token = issue_token(iot_guard_secret, agent_id, ttl_s=ttl_s, tools=tools)
        client = AgentClient(
            "127.0.0.1",
            iot_guard.port,
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


# -- the short names of earlier versions ---------------------------------------------------

@pytest.fixture
def fleet(iot_guard_fleet: Any) -> Any:
    """Alias of ``iot_guard_fleet``."""
    return iot_guard_fleet


@pytest.fixture(scope="session")
def guard(iot_guard: Any) -> Any:
    """Alias of ``iot_guard``."""
    return iot_guard


@pytest.fixture(scope="session")
def guard_secret(iot_guard_secret: bytes) -> bytes:
    """Alias of ``iot_guard_secret``."""
    return iot_guard_secret


@pytest.fixture
def agent_client(iot_guard_agent: AgentFactory) -> AgentFactory:
    """Alias of ``iot_guard_agent``."""
    return iot_guard_agent


if not HAS_PYTEST_MQTT:

    @pytest.fixture(scope="session")
    def mosquitto(iot_guard_broker: MosquittoBroker) -> MosquittoBroker:
        """Alias of ``iot_guard_broker`` (absent when pytest-mqtt, which has its own
        ``mosquitto`` fixture, is installed)."""
        return iot_guard_broker
