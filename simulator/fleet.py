"""A fleet of virtual devices on one event loop in its own thread.

Two ways to reach the broker:

- ``mode="per-device"`` (default, used by the tests, the pytest plugin and the demo): every
  device is its own MQTT 5 client with its own client id, broker account and retained-status
  last will -- what a real fleet looks like to the broker and the guard.
- ``mode="mux"``: ``mux_size`` devices share one connection (for load runs beyond what one
  connection per device allows). A connection has only one will, so a mux device announces
  "offline" itself on reboot, crash and faults; a lost shared connection leaves its devices'
  status stale. The measured figures for 1,000 devices are in ``simulator/README.md``.

The fleet thread owns the loop; tests in any thread (sync paho or asyncio) use the device
handles (``fleet.device("acme", "therm-001")``) and bounded waits (``fleet.wait_online``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from iot_guard.payloads import PayloadValidators
from iot_guard.policy.loader import load_policy
from iot_guard.policy_models import PolicyDocument

from .device import Faults, VirtualDevice
from .registry import DeviceSpec, registry_devices, select
from .transport import LoopClient

T = TypeVar("T")
Credentials = Callable[[DeviceSpec], "tuple[str, str] | None"]


@dataclass(frozen=True)
class FleetStats:
    total: int
    online: int
    sent: int
    received: int
    telemetry: int
    faults: dict[str, int]


class _DeviceLink(LoopClient):
    """One MQTT connection for one device, with its retained-status last will.

    ``publish``, ``misc`` and ``closed`` are the connection's own; ``up``/``down`` add the
    device's side of the ``Link`` protocol.
    """

    def __init__(self, fleet: Fleet, device: VirtualDevice, credentials: Any) -> None:
        self.device = device
        super().__init__(
            fleet.loop,
            device.spec.client_id,
            fleet.host,
            fleet.port,
            credentials=credentials,
            will=(device.status_topic, device.offline_payload()),
            on_connected=self._connected,
            on_lost=device.link_lost,
            on_message=device.handle,
            on_subscribed=device.link_ready,
        )

    def _connected(self) -> None:
        self.subscribe(self.device.spec.inbound_filters())

    def up(self) -> None:
        if not self.connect():
            self.device.link_lost("connect failed")

    def down(self, how: str) -> None:
        if how == "goodbye":
            # Orderly power-down: say "offline" (retained), then a clean DISCONNECT.
            device = self.device
            self.publish(device.status_topic, device.offline_payload(), qos=1, retain=True)
            self.disconnect()
        elif how == "crash":
            self.crash()
        else:
            self.disconnect(with_will=how == "will")


class _MuxConnection:
    """One MQTT connection serving many devices; routes messages by topic."""

    def __init__(self, fleet: Fleet, index: int, credentials: Any) -> None:
        self.fleet = fleet
        self.routes: dict[str, list[VirtualDevice]] = {}
        self.attached: set[VirtualDevice] = set()
        self.client = LoopClient(
            fleet.loop,
            f"simulator-mux-{index}",
            fleet.host,
            fleet.port,
            credentials=credentials,
            will=None,
            on_connected=self._connected,
            on_lost=self._lost,
            on_message=self._message,
            on_subscribed=self._subscribed,
        )
        self._connecting = False

    def add(self, device: VirtualDevice) -> None:
        for f in device.spec.inbound_filters():
            key = f[: -len("/+")] if f.endswith("/commands/+") else f
            self.routes.setdefault(key, []).append(device)

    def _connected(self) -> None:
        filters = sorted({f for d in self._devices() for f in d.spec.inbound_filters()})
        self.client.subscribe(filters)

    def _devices(self) -> set[VirtualDevice]:
        return {d for ds in self.routes.values() for d in ds}

    def _subscribed(self) -> None:
        self._connecting = False
        for device in list(self.attached):
            device.link_ready()

    def _lost(self, reason: str) -> None:
        for device in list(self.attached):
            device.link_lost(reason)
        self._connecting = False

    def _message(self, topic: str, payload: bytes) -> None:
        key = topic.rsplit("/", 1)[0] if "/commands/" in topic else topic
        for device in self.routes.get(key, ()):
            if device in self.attached:
                device.handle(topic, payload)

    def attach(self, device: VirtualDevice) -> None:
        self.attached.add(device)
        if self.client.connected:
            device.link_ready()
        elif not self._connecting:
            self._connecting = True
            if not self.client.connect():
                self._lost("connect failed")

    def detach(self, device: VirtualDevice) -> None:
        self.attached.discard(device)
        self.client.publish(device.status_topic, device.offline_payload(), qos=1, retain=True)
        if not self.attached and self.fleet.stopping:
            self.client.disconnect()


class _MuxLink:
    def __init__(self, conn: _MuxConnection, device: VirtualDevice) -> None:
        self.conn = conn
        self.device = device
        conn.add(device)
        # Every device of the connection publishes on it directly.
        self.publish = conn.client.publish

    def up(self) -> None:
        self.conn.attach(self.device)

    def down(self, how: str) -> None:
        if self.device not in self.conn.attached:
            return
        # One will per connection: the device says "offline" itself, whatever ``how`` is.
        self.conn.detach(self.device)
        self.device.link_lost(how)


class Fleet:
    """Virtual devices for the policy's registry (plus generated ones up to ``scale``)."""

    def __init__(
        self,
        document: PolicyDocument | Path | str,
        host: str,
        port: int,
        *,
        credentials: Credentials | None = None,
        devices: Iterable[DeviceSpec] | None = None,
        scale: int = 0,
        mode: str = "per-device",
        mux_size: int = 100,
        mux_credentials: tuple[str, str] | None = None,
        telemetry_interval_s: float | None = None,
        boot_time_s: float = 1.0,
        reconnect_s: float = 0.2,
        seed: int = 0,
        use_uvloop: bool = True,
    ) -> None:
        if not isinstance(document, PolicyDocument):
            document = load_policy(document)
        if mode not in ("per-device", "mux"):
            raise ValueError("mode is 'per-device' or 'mux'")
        self.document = document
        self.host = host
        self.port = port
        self.mode = mode
        self.mux_size = mux_size
        self.boot_time_s = boot_time_s
        self.reconnect_s = reconnect_s
        self.validators = PayloadValidators.build(document, agent=False)
        self.cond = threading.Condition()
        self.stopping = False
        self._credentials = credentials or (lambda spec: None)
        self._mux_credentials = mux_credentials
        self._use_uvloop = use_uvloop
        self._count_lock = threading.Lock()
        self.sent = 0
        self.received = 0
        specs = list(devices) if devices is not None else registry_devices(document, scale)
        self._devices: dict[tuple[str, str], VirtualDevice] = {
            spec.key: VirtualDevice(
                spec, self, telemetry_interval_s=telemetry_interval_s, seed=seed
            )
            for spec in specs
        }
        self._links: list[LoopClient] = []
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._ready = threading.Event()
        self._started_at = 0.0

    @classmethod
    def on_broker(cls, broker: Any, document: PolicyDocument | Path | str, **kw: Any) -> Fleet:
        """A fleet on a ``MosquittoBroker``, each device with its own broker account."""
        if kw.get("mode") == "mux" and broker.mux_account is not None:
            kw.setdefault(
                "mux_credentials", (broker.mux_account.username, broker.mux_account.password)
            )
        return cls(document, broker.host, broker.port, credentials=broker.credentials, **kw)

    # -- counters (loop thread, read anywhere) -------------------------------------------

    def count(self, sent: int = 0, received: int = 0) -> None:
        self.sent += sent
        self.received += received

    # -- handles -------------------------------------------------------------------------

    def device(self, tenant: str, name: str) -> VirtualDevice:
        try:
            return self._devices[(tenant, name)]
        except KeyError:
            raise KeyError(f"no device {tenant}/{name} in this fleet") from None

    @property
    def devices(self) -> list[VirtualDevice]:
        return list(self._devices.values())

    def select(self, target: str = "*") -> list[VirtualDevice]:
        """Devices matching ``*``, ``TENANT/*`` or ``TENANT/DEVICE``."""
        return [self._devices[s.key] for s in select([d.spec for d in self.devices], target)]

    def set_fault(self, name: str, value: Any, target: str = "*") -> int:
        """Switch a fault on the matching devices; returns how many it touched."""
        chosen = self.select(target)
        for device in chosen:
            setattr(device.faults, name, value)
        return len(chosen)

    def clear_faults(self) -> None:
        for device in self.devices:
            if device.faults.active():
                for name, value in Faults.defaults().items():
                    setattr(device.faults, name, value)

    def stats(self) -> FleetStats:
        faults: dict[str, int] = {}
        for device in self.devices:
            for name in device.faults.active():
                faults[name] = faults.get(name, 0) + 1
        return FleetStats(
            total=len(self._devices),
            online=sum(1 for d in self.devices if d.online),
            sent=self.sent,
            received=self.received,
            telemetry=sum(d.telemetry_sent for d in self.devices),
            faults=faults,
        )

    def wait_online(self, timeout: float = 30.0, target: str = "*") -> None:
        """Block until every matching device is online; TimeoutError listing the others."""
        chosen = self.select(target)
        with self.cond:
            if not self.cond.wait_for(lambda: all(d.online for d in chosen), timeout):
                missing = [f"{d.spec.tenant}/{d.name}" for d in chosen if not d.online]
                raise TimeoutError(
                    f"{len(missing)} of {len(chosen)} devices not online within {timeout}s: "
                    f"{', '.join(missing[:10])}"
                )

    async def async_wait_online(self, timeout: float = 30.0, target: str = "*") -> None:
        """``wait_online`` for asyncio tests (waits in a worker thread)."""
        await asyncio.to_thread(self.wait_online, timeout, target)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the fleet's loop and return its result (for tests and tools)."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0, wait: bool = True) -> Fleet:
        self._thread = threading.Thread(target=self._run, name="iot-guard-fleet", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the fleet's event loop did not start")
        if wait:
            try:
                self.wait_online(timeout)
            except TimeoutError:
                self.stop()  # do not leave a half-started fleet running behind the error
                raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self.call(self._stop_devices, timeout)
            # Devices say goodbye (retained "offline", acknowledged) before the loop ends.
            deadline = time.monotonic() + min(timeout, 3.0)
            while not self.call(self._all_closed, timeout) and time.monotonic() < deadline:
                time.sleep(0.01)  # polling the loop thread's sockets, bounded by deadline
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self._use_uvloop:
            try:
                import uvloop

                return uvloop.new_event_loop()
            except ImportError:
                pass
        return asyncio.new_event_loop()

    def _run(self) -> None:
        loop = self._new_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        loop.call_soon(self._start_devices)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _start_devices(self) -> None:
        self._started_at = time.monotonic()
        devices = self.devices
        if self.mode == "per-device":
            for device in devices:
                link = _DeviceLink(self, device, self._credentials(device.spec))
                device.link = link
                self._links.append(link)
        else:
            for i in range(0, len(devices), self.mux_size):
                conn = _MuxConnection(self, i // self.mux_size, self._mux_credentials)
                for device in devices[i : i + self.mux_size]:
                    device.link = _MuxLink(conn, device)
                self._links.append(conn.client)
        # Connect in small batches so a thousand CONNECTs do not hit the broker at once.
        for i, device in enumerate(devices):
            self.loop.call_later(i // 50 * 0.02, device.start)
        self.loop.call_later(1.0, self._keepalive)

    def _keepalive(self) -> None:
        for link in self._links:
            link.misc()
        if not self.stopping:
            self.loop.call_later(1.0, self._keepalive)

    def _all_closed(self) -> bool:
        return all(link.closed for link in self._links)

    def _stop_devices(self) -> None:
        self.stopping = True
        for device in self.devices:
            device.stop()
