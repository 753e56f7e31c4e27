"""The listener: accepts agent connections (TCP or TLS) and gives each a Link.

``GuardServer`` runs inside an event loop; ``GuardThread`` runs one in a thread of its
own (for synchronous tests and the simulator's fixtures).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..audit import AuditLog, utc_iso
from ..audit.headstore import ChainHeadSync
from ..checks import Check, Pipeline
from ..checks.kill_switch import KillSwitchCheck
from ..policy.compiler import CompiledPolicy
from ..session import GuardSession, SessionSettings
from ..state import Stores, default_state_dir, open_state
from ..tokens import check_secret
from .brakes import Brakes
from .control import ControlPlane, session_info
from .flag_watch import FlagWatch
from .hooks import Hooks
from .limits import raise_open_files_limit
from .link import AgentProtocol, Link
from .stats import GuardStats
from .timers import TimerQueue

log = logging.getLogger("iot_guard.proxy")
T = TypeVar("T")


@dataclass
class GuardConfig:
    policy_dir: Path
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 1883
    secret: bytes = b""
    upstream_username: str | None = None
    upstream_password: str | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 1884
    audit_path: Path | None = None
    # Signs the audit chain's checkpoints (iot-guard audit keygen); None: chain unsigned.
    audit_key: Path | None = None
    audit_checkpoint_records: int = 1000
    audit_checkpoint_seconds: float = 10.0
    max_packet_size: int = 256 * 1024
    connect_timeout: float = 10.0
    # After a broker read of >= 1 KiB, leave that socket unread this long (or until the
    # guard writes to it): a stream then arrives in fewer reads (proxy/link.py). 0: off.
    read_coalesce_ms: float = 1.0
    # Listener TLS (agents connect with TLS) and upstream TLS (to the broker).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_tls: bool = False
    upstream_ca: Path | None = None
    # Where approvals, flags, counters and the audit chain head live: a directory (SQLite)
    # or a URL; None = ``state/`` beside the audit log.
    state: str | Path | None = None
    # "enforce", or "dry-run": decide everything, refuse nothing the policy or an
    # observable check would refuse (audited as would_deny / would_hold).
    mode: str = "enforce"
    # Checks run in observe mode (by name) while the rest enforce.
    observe: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")


MODES = ("enforce", "dry-run")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: its transports cut the proxy's per-packet overhead."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GuardServer:
    """The listener, the live links, and what they share: policy, audit log, checks,
    addons and the control plane (``server.control``)."""

    def __init__(
        self,
        config: GuardConfig,
        policy: CompiledPolicy | None = None,
        *,
        checks: Iterable[Check] = (),
        addons: Iterable[object] = (),
    ) -> None:
        check_secret(config.secret)
        if config.upstream_password is not None and config.upstream_username is None:
            # MQTT 3.1.1 forbids a password without a user name [MQTT-3.1.2-22].
            raise ValueError("an upstream password needs an upstream username")
        self.config = config
        # Fail closed: a policy that does not load stops the guard from starting.
        self.policy = policy if policy is not None else CompiledPolicy.load(config.policy_dir)
        # The compiled policy lives as long as the guard: keep it out of the collector's
        # full passes, which otherwise pause every session for ~0.1 s at 10k tenants.
        gc.freeze()
        self.audit = AuditLog.open(
            config.audit_path, config.audit_key,
            checkpoint_records=config.audit_checkpoint_records,
            checkpoint_seconds=config.audit_checkpoint_seconds,
        )
        self._checks = tuple(checks)
        self.pipeline = Pipeline(self._checks)  # completed with the brakes in start()
        self.state: Stores | None = None
        # Rate limits and anomaly detection: their checks are built at start, on the state.
        self.brakes = Brakes()
        self.stats = GuardStats()  # plain counters for /metrics (admin/metrics.py)
        self.hooks = Hooks([self.brakes, *addons])
        self.control = ControlPlane(self)
        self.settings = SessionSettings(
            secret=config.secret,
            upstream_username=config.upstream_username,
            upstream_password=(
                config.upstream_password.encode() if config.upstream_password is not None
                else None
            ),
            max_packet_size=config.max_packet_size,
            connect_timeout=config.connect_timeout,
            # Holds are parked only where an addon resolves them; otherwise refused.
            holds=self.hooks.has("on_hold"),
            dry_run=config.mode == "dry-run",
        )
        self.links: set[Link] = set()
        self.timers = TimerQueue()  # every session's timers, one loop timer
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)
        self.upstream_ssl = self._upstream_context()
        # Coalesced broker reads (proxy/link.py), plain TCP only: over TLS the socket is
        # read anyway (the broker is spared nothing), and uvloop's TLS transport drops
        # what it holds for a paused reader when the broker closes (MagicStack/uvloop
        # PR #661): the broker's last packets, a DISCONNECT 0x8B among them, were lost.
        self.broker_read_pause_s = (
            0.0 if self.upstream_ssl is not None else config.read_coalesce_ms / 1000
        )

    def _listener_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key or ""))
        return context

    def _upstream_context(self) -> ssl.SSLContext | None:
        if not self.config.upstream_tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.config.upstream_ca) if self.config.upstream_ca else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _observing(self, checks: Iterable[Check]) -> list[Check]:
        """Checks in observe mode where the config says so (by name, or all in a dry run);
        a check that already observes stays as it is."""
        dry = self.config.mode == "dry-run"
        for check in checks:
            if dry or check.name in self.config.observe:
                check.enforce = False
        return list(checks)

    def new_link(self) -> Link:
        session_id = f"{self._prefix}-{next(self._ids)}"
        session = GuardSession(self.policy, self.settings, session_id, pipeline=self.pipeline,
                               new_hold_id=_approval_id)
        link = Link(session, self)
        self.links.add(link)
        self.stats.sessions_opened += 1
        return link

    def link_closed(self, link: Link) -> None:
        self.links.discard(link)
        if link.session.agent_id is not None:
            self.hooks.call("on_session_closed", session_info(link))

    async def start(self) -> None:
        # Fail closed: without its state (kill switches, revocations, approvals) the
        # guard does not start.
        spec = self.config.state or default_state_dir(self.config.audit_path)
        self.state = await open_state(spec)
        try:
            limits, anomaly = await self.brakes.open(self)
            # Anomaly last: it sees every refusal, the limits' included.
            self.pipeline = Pipeline([KillSwitchCheck(self.state.flags.view),
                                      *self._observing([limits, *self._checks, anomaly])])
            self._unwatch = self.state.flags.watch(FlagWatch(self.control, self).on_flag)
            # The log must reach as far as the stored chain head (a cut is refused).
            self._chain_head = ChainHeadSync(self.audit, self.state.chain)
            await self._chain_head.check()
            self.audit.on_checkpoint = self._chain_head.on_checkpoint
            mode = self.config.mode
            if mode == "dry-run":
                log.warning("DRY RUN: this guard decides everything and refuses nothing the "
                            "policy would refuse; see would_deny / would_hold in the audit log")
            # The first record says how this guard runs (and proves the log is writable).
            self.audit.write({
                "timestamp": utc_iso(time.time()), "packet": "guard", "result_status": "start",
                "mode": mode, "state": self.state.location,
                "checks": [c.name for c in self.pipeline.checks],
            })
        except BaseException:
            await self.brakes.close()
            await self.state.close()
            self.state = None
            raise
        loop = asyncio.get_running_loop()
        nofile = raise_open_files_limit()  # two sockets per session
        log.debug("open files limit: %d (~%d sessions)", nofile, nofile // 2)
        self.audit.attach(loop)  # checkpoints are signed from the loop, off the packet path
        self._server = await loop.create_server(
            lambda: AgentProtocol(self),
            self.config.listen_host,
            self.config.listen_port,
            ssl=self._listener_context(),
            reuse_address=True,
        )
        await self.hooks.start(self)
        log.info("iot-guard listening on %s:%d -> upstream %s:%d", self.config.listen_host,
                 self.port, self.config.upstream_host, self.config.upstream_port)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.close("guard shutting down")
        self.timers.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.hooks.stop()
        if self.state is not None:
            self._unwatch()
            await self.brakes.close()  # the last counts folded into the store
        self.audit.close()  # signs the last records; the head store hears of it
        if self.state is not None:
            await self._chain_head.flush()
            await self.state.close()


def _approval_id() -> str:
    """Ids of held actions: unguessable and unique across restarts (they are stored)."""
    return secrets.token_hex(6)


class GuardThread:
    """A GuardServer on its own event loop in a daemon thread."""

    def __init__(
        self,
        config: GuardConfig,
        policy: CompiledPolicy | None = None,
        *,
        checks: Iterable[Check] = (),
        addons: Iterable[object] = (),
    ) -> None:
        self.server = GuardServer(config, policy, checks=checks, addons=addons)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="iot-guard", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    def start(self, timeout: float = 10.0) -> GuardThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"guard did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"guard failed to start: {self._error}") from self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
        """Await ``make()`` on the guard's loop (state store calls, addons) and return it."""

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn`` on the guard's loop thread (to inspect live state safely)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
        future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> GuardThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
