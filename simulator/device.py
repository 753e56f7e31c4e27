"""A virtual thermostat: status, telemetry, an AWS-style shadow service, config, commands.

All behaviour runs on the fleet's event loop (callbacks and ``loop.call_later`` timers, no
task per device). Other threads read a device through snapshots taken under the fleet's
condition lock and wait on that condition with bounded timeouts.

The device validates what it receives with the same validators the guard uses
(``iot_guard.payloads.PayloadValidators`` built with ``agent=False``: the device's own view,
where e.g. ``admin_pin`` is writable), so the rules exist once.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from iot_guard.payloads import merge_patch
from iot_guard.policy_models import PolicyDocument

from .registry import DeviceSpec

# Defaults a freshly flashed thermostat boots with (the device type gives the bounds).
FACTORY_CONFIG: dict[str, Any] = {
    "target_temp_c": 21.0,
    "mode": "auto",
    "telemetry_interval_s": 10,
    "firmware_channel": "stable",
    "admin_pin": "0000",
}
AMBIENT_C = 18.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ShadowState:
    """A copy of a device's shadow document at one moment."""

    reported: dict[str, Any]
    desired: dict[str, Any]
    version: int

    @property
    def delta(self) -> dict[str, Any]:
        return {k: v for k, v in self.desired.items() if self.reported.get(k) != v}


@dataclass(frozen=True)
class DeviceEvent:
    """Something a device did, for tests and the live summary (name, detail, wall time)."""

    name: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


FAULT_NAMES = (
    "offline",
    "latency_s",
    "drop_rate",
    "reject_config",
    "crash_on_apply",
    "flapping_s",
    "malformed_telemetry",
)


class Faults:
    """Run-time fault switches of one device; assigning one takes effect at once.

    - ``offline``: power cut (the will publishes "offline"); stays off until cleared.
    - ``latency_s``: every reply and telemetry message is delayed by this much.
    - ``drop_rate``: probability (0..1) that an incoming request is ignored.
    - ``reject_config``: every config change (patch, group push, shadow desired) is refused.
    - ``crash_on_apply``: the device crashes (connection lost, will fires) while applying
      a config change and comes back after its boot time without the change.
    - ``flapping_s``: > 0 -> the connection drops and returns every ``flapping_s`` seconds.
    - ``malformed_telemetry``: telemetry payloads are not valid JSON.
    """

    offline: bool
    latency_s: float
    drop_rate: float
    reject_config: bool
    crash_on_apply: bool
    flapping_s: float
    malformed_telemetry: bool

    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        object.__setattr__(self, "_on_change", on_change)
        self.clear()

    def clear(self) -> None:
        for name, value in self.defaults().items():
            setattr(self, name, value)

    @staticmethod
    def defaults() -> dict[str, Any]:
        return {
            "offline": False,
            "latency_s": 0.0,
            "drop_rate": 0.0,
            "reject_config": False,
            "crash_on_apply": False,
            "flapping_s": 0.0,
            "malformed_telemetry": False,
        }

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in FAULT_NAMES:
            raise AttributeError(f"unknown fault {name!r}; faults are {', '.join(FAULT_NAMES)}")
        kind = type(self.defaults()[name])
        if kind is bool and not isinstance(value, bool):
            raise TypeError(f"fault {name} is a bool")
        value = kind(value)
        if name == "drop_rate" and not 0.0 <= value <= 1.0:
            raise ValueError("drop_rate is a probability in 0..1")
        if kind is float and value < 0:
            raise ValueError(f"fault {name} must be >= 0")
        old = self.__dict__.get(name)
        object.__setattr__(self, name, value)
        on_change = self.__dict__.get("_on_change")
        if old is not None and old != value and on_change is not None:
            on_change(name)

    def active(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n, d in self.defaults().items() if getattr(self, n) != d}


class Link(Protocol):
    """How a device reaches the broker: its own connection, or a shared one (mux mode)."""

    def up(self) -> None: ...

    def down(self, how: str) -> None:
        """``how``: "goodbye" (publish offline, clean DISCONNECT), "clean" (DISCONNECT only),
        "will" (DISCONNECT with reason 0x04: the broker publishes the will) or "crash"."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> None: ...


class FleetContext(Protocol):
    loop: asyncio.AbstractEventLoop
    cond: threading.Condition
    validators: Any
    document: PolicyDocument
    boot_time_s: float
    reconnect_s: float

    def count(self, sent: int = 0, received: int = 0) -> None: ...


class VirtualDevice:
    """One thermostat. Public members are safe to use from any thread."""

    def __init__(
        self,
        spec: DeviceSpec,
        ctx: FleetContext,
        *,
        telemetry_interval_s: float | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self._ctx = ctx
        self.faults = Faults(self._fault_changed)
        self.link: Link | None = None  # set by the fleet before start
        self._rng = random.Random(f"{seed}:{spec.tenant}/{spec.name}")
        # Fleet override for tests and scale runs; a config change still takes effect.
        config = dict(FACTORY_CONFIG)
        if telemetry_interval_s is not None:
            config["telemetry_interval_s"] = telemetry_interval_s
        self._config: dict[str, Any] = config
        self._reported: dict[str, Any] = self._shadow_view(config)
        self._desired: dict[str, Any] = {}
        self._version = 1
        self._meta_reported = {k: {"timestamp": int(time.time())} for k in self._reported}
        self._meta_desired: dict[str, dict[str, int]] = {}
        self._online = False  # the broker holds our retained "online" (acknowledged)
        self._serving = False  # connected and subscribed: requests are handled
        self._running = False  # between start() and stop()
        self._down_reason: str | None = None  # why we are deliberately not connected
        self._boot_count = 0
        self._boot_at = time.monotonic()
        self._seq = 0
        self._temp = AMBIENT_C + self._rng.uniform(-1.0, 3.0)
        self._identify_until = 0.0
        self._events: list[DeviceEvent] = []
        self._telemetry_timer: asyncio.TimerHandle | None = None
        self._wake_timer: asyncio.TimerHandle | None = None
        self._flap_timer: asyncio.TimerHandle | None = None
        self.telemetry_sent = 0

    # -- read side (any thread) -----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> ShadowState:
        with self._ctx.cond:
            return ShadowState(dict(self._reported), dict(self._desired), self._version)

    @property
    def config(self) -> dict[str, Any]:
        with self._ctx.cond:
            return dict(self._config)

    @property
    def online(self) -> bool:
        return self._online

    @property
    def boot_count(self) -> int:
        return self._boot_count

    @property
    def events(self) -> list[DeviceEvent]:
        with self._ctx.cond:
            return list(self._events)

    def event_names(self) -> list[str]:
        return [e.name for e in self.events]

    def wait_until(
        self, predicate: Callable[[VirtualDevice], bool], timeout: float, what: str = "condition"
    ) -> None:
        """Block until ``predicate(self)`` holds; TimeoutError naming ``what`` otherwise."""
        with self._ctx.cond:
            if not self._ctx.cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(
                    f"{self.spec.tenant}/{self.spec.name}: no {what} within {timeout}s "
                    f"(online={self._online}, events={[e.name for e in self._events[-8:]]})"
                )

    def wait_online(self, timeout: float = 10.0, online: bool = True) -> None:
        self.wait_until(lambda d: d._online is online, timeout, "online" if online else "offline")

    def wait_event(self, name: str, timeout: float, after: int = 0) -> DeviceEvent:
        """Wait for event ``name`` among events with index >= ``after``; return it."""
        found: list[DeviceEvent] = []

        def seen(d: VirtualDevice) -> bool:
            found[:] = [e for e in d._events[after:] if e.name == name]
            return bool(found)

        self.wait_until(seen, timeout, f"event {name!r}")
        return found[0]

    async def async_wait_until(
        self, predicate: Callable[[VirtualDevice], bool], timeout: float, what: str = "condition"
    ) -> None:
        """``wait_until`` for asyncio tests: waits in a worker thread, the loop stays free."""
        await asyncio.to_thread(self.wait_until, predicate, timeout, what)

    async def async_wait_online(self, timeout: float = 10.0, online: bool = True) -> None:
        await asyncio.to_thread(self.wait_online, timeout, online)

    # -- lifecycle (loop thread) ---------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._boot()

    def stop(self) -> None:
        """Orderly power-down: publish "offline" (retained) then disconnect cleanly."""
        self._running = False
        for timer in (self._telemetry_timer, self._wake_timer, self._flap_timer):
            if timer:
                timer.cancel()
        if self._serving and self.link:
            self._serving = False
            self._set_online(False)
            self.link.down("goodbye")
        elif self.link is not None:
            self.link.down("clean")  # a connection still being set up

    @property
    def status_topic(self) -> str:
        return f"{self.spec.base}/status"

    def offline_payload(self) -> bytes:
        return _dumps({"status": "offline", "device": self.spec.name})

    def _boot(self) -> None:
        if not self._running or self.faults.offline or self.link is None:
            return
        self._down_reason = None
        self.link.up()

    def link_ready(self) -> None:
        """The link is connected and subscribed: announce ourselves and start telemetry."""
        if not self._running:
            return
        self._boot_count += 1
        self._boot_at = time.monotonic()
        assert self.link is not None
        status = {"status": "online", "device": self.spec.name, "boot": self._boot_count}
        status["timestamp"] = now_iso()
        boot = self._boot_count
        # Online once the broker holds the retained "online": whoever waits for .online
        # and then subscribes is sure to see it.
        self.link.publish(
            self.status_topic, _dumps(status), qos=1, retain=True, on_ack=lambda: self._up(boot)
        )
        self._serving = True

    def _up(self, boot: int) -> None:
        if boot != self._boot_count or not self._serving:
            return  # acknowledged after the link went down again
        self._set_online(True)
        self._record("online", boot=boot)
        self._schedule_telemetry(first=True)

    def link_lost(self, reason: str) -> None:
        """The connection went away. Unplanned (e.g. broker restart) -> reconnect soon."""
        was = self._serving
        self._serving = False
        self._set_online(False)
        if self._telemetry_timer:
            self._telemetry_timer.cancel()
            self._telemetry_timer = None
        if was:
            self._record("offline", reason=self._down_reason or reason)
        if self._running and self._down_reason is None:
            self._wake_after(self._ctx.reconnect_s * (1 + self._rng.random()))

    def _go_down(self, how: str, reason: str, back_after: float | None) -> None:
        self._down_reason = reason
        if self._telemetry_timer:
            self._telemetry_timer.cancel()
            self._telemetry_timer = None
        if self._serving and self.link:
            self._serving = False
            self._set_online(False)
            self._record("offline", reason=reason)
            self.link.down(how)
        elif self.link is not None:
            # Still connecting: drop that attempt so it cannot bring the device up.
            self.link.down("crash")
        if back_after is not None:
            self._wake_after(back_after)

    def _wake_after(self, delay: float) -> None:
        if self._wake_timer:
            self._wake_timer.cancel()
        self._wake_timer = self._ctx.loop.call_later(delay, self._boot)

    def _set_online(self, value: bool) -> None:
        with self._ctx.cond:
            self._online = value
            self._ctx.cond.notify_all()

    def _record(self, name: str, **detail: Any) -> None:
        with self._ctx.cond:
            self._events.append(DeviceEvent(name, detail))
            if len(self._events) > 200:
                del self._events[:100]
            self._ctx.cond.notify_all()

    # -- faults (any thread -> loop) -----------------------------------------------------

    def _fault_changed(self, name: str) -> None:
        self._ctx.loop.call_soon_threadsafe(self._apply_fault, name)

    def _apply_fault(self, name: str) -> None:
        self._record("fault", fault=name, value=getattr(self.faults, name))
        if name == "offline":
            if self.faults.offline:
                self._go_down("crash", "fault: offline", None)
            else:
                self._boot()
        elif name == "flapping_s":
            if self._flap_timer:
                self._flap_timer.cancel()
                self._flap_timer = None
            if self.faults.flapping_s > 0:
                self._flap_timer = self._ctx.loop.call_later(self.faults.flapping_s, self._flap)
            elif not self._serving:
                self._boot()

    def _flap(self) -> None:
        period = self.faults.flapping_s
        if period <= 0 or not self._running:
            return
        if self._serving:
            self._go_down("crash", "fault: flapping", None)
        elif not self.faults.offline:
            self._boot()
        self._flap_timer = self._ctx.loop.call_later(period, self._flap)

    # -- inbound (loop thread) ------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        if not self._serving:
            return
        self._ctx.count(received=1)
        if self.faults.drop_rate and self._rng.random() < self.faults.drop_rate:
            self._record("dropped", topic=topic)
            return
        base = self.spec.base + "/"
        if topic.startswith(base):
            suffix = topic[len(base) :]
            if suffix == "shadow/get":
                self._shadow_get()
            elif suffix == "shadow/update":
                self._shadow_update(payload)
            elif suffix == "config/patch":
                self._config_patch(payload, "device")
            elif suffix.startswith("commands/"):
                self._command(suffix[len("commands/") :], payload)
            return
        for group in self.spec.groups:
            if topic == self.spec.group_topic(group):
                self._config_patch(payload, f"group:{group}")

    def _reply(self, suffix: str, doc: dict[str, Any], qos: int = 1) -> None:
        topic = f"{self.spec.base}/{suffix}"
        payload = _dumps(doc)
        latency = self.faults.latency_s
        if latency > 0:
            self._ctx.loop.call_later(latency, self._send, topic, payload, qos)
        else:
            self._send(topic, payload, qos)

    def _send(self, topic: str, payload: bytes, qos: int) -> None:
        if self._serving and self.link:
            self._ctx.count(sent=1)
            self.link.publish(topic, payload, qos=qos)

    # -- shadow service --------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        state: dict[str, Any] = {"desired": dict(self._desired), "reported": dict(self._reported)}
        delta = {k: v for k, v in self._desired.items() if self._reported.get(k) != v}
        if delta:
            state["delta"] = delta
        return {
            "state": state,
            "metadata": {
                "desired": dict(self._meta_desired),
                "reported": dict(self._meta_reported),
            },
            "version": self._version,
            "timestamp": int(time.time()),
        }

    def _shadow_get(self) -> None:
        with self._ctx.cond:
            doc = self._document()
        self._record("shadow_get")
        self._reply("shadow/get/accepted", doc)

    def _rejected(self, suffix: str, code: int, message: str, token: object) -> None:
        doc: dict[str, Any] = {"code": code, "message": message, "timestamp": int(time.time())}
        if isinstance(token, str):
            doc["clientToken"] = token
        self._record("rejected", topic=suffix, code=code, message=message)
        self._reply(suffix, doc)

    def _shadow_update(self, payload: bytes) -> None:
        verdict = self._ctx.validators.shadow_update(self.spec.type, payload)
        token = _token_of(payload)
        if not verdict.ok:
            # 400: the request is malformed or breaks the device type's rules.
            self._rejected("shadow/update/rejected", 400, verdict.reason, token)
            return
        doc = verdict.document
        token = doc.get("clientToken")
        if "reported" in doc["state"]:
            # The device is the only reporter of its own state.
            self._rejected(
                "shadow/update/rejected", 400, "state.reported: only the device reports", token
            )
            return
        requested = doc.get("version")
        desired_patch = (doc.get("state") or {}).get("desired") or {}
        ts = int(time.time())
        with self._ctx.cond:
            if requested is not None and requested != self._version:
                conflict = True
            else:
                conflict = False
                self._desired = merge_patch(self._desired, desired_patch)
                for key, value in desired_patch.items():
                    if value is None:
                        self._meta_desired.pop(key, None)
                    else:
                        self._meta_desired[key] = {"timestamp": ts}
                self._version += 1
                version = self._version
                delta = {k: v for k, v in self._desired.items() if self._reported.get(k) != v}
            self._ctx.cond.notify_all()
        if conflict:
            # AWS: an update naming a version other than the current one is refused (409).
            self._rejected("shadow/update/rejected", 409, "Version conflict", token)
            return
        accepted: dict[str, Any] = {
            "state": {"desired": desired_patch},
            "metadata": {"desired": {k: {"timestamp": ts} for k in desired_patch}},
            "version": version,
            "timestamp": ts,
        }
        if token is not None:
            accepted["clientToken"] = token
        self._record("shadow_update", desired=desired_patch, version=version)
        self._reply("shadow/update/accepted", accepted)
        if delta:
            delta_doc: dict[str, Any] = {
                "state": delta,
                "metadata": {k: {"timestamp": ts} for k in delta},
                "version": version,
                "timestamp": ts,
            }
            if token is not None:
                delta_doc["clientToken"] = token
            self._reply("shadow/update/delta", delta_doc)
            # The device acts on the delta like firmware would: apply, then report.
            self._ctx.loop.call_soon(self._apply, delta, token, "shadow")

    # -- config --------------------------------------------------------------------------

    def _config_patch(self, payload: bytes, source: str) -> None:
        token = _token_of(payload)
        verdict = self._ctx.validators.config_patch(self.spec.type, payload)
        if not verdict.ok:
            self._record("rejected", topic="config/patch", code=400, message=verdict.reason)
            self._result("invalid", token, source, code=400, reason=verdict.reason)
            return
        patch = {k: v for k, v in verdict.document.items() if k != "clientToken"}
        with self._ctx.cond:
            merged = merge_patch(self._config, patch)
            # A key the patch removes (RFC 7396 null) goes back to its factory value.
            merged.update({k: FACTORY_CONFIG[k] for k in self._config
                           if k not in merged and k in FACTORY_CONFIG})
            changes = {k: v for k, v in merged.items() if self._config.get(k) != v}
        self._apply(changes, token, source)

    def _apply(self, changes: dict[str, Any], token: object, source: str) -> None:
        """Apply config changes, report them in the shadow and on config/result."""
        if self.faults.crash_on_apply:
            self._record("crash", source=source, changes=changes)
            self._go_down("crash", "fault: crash while applying", self._ctx.boot_time_s)
            return
        if self.faults.reject_config:
            self._record("config_rejected", source=source, changes=changes)
            self._result(
                "rejected", token, source, code=503, reason="fault: device rejects every config"
            )
            return
        ts = int(time.time())
        with self._ctx.cond:
            self._config.update(changes)
            reported_changes = self._shadow_view(changes)
            self._reported.update(reported_changes)
            for key in reported_changes:
                self._meta_reported[key] = {"timestamp": ts}
            if reported_changes:
                self._version += 1
            version = self._version
            reported = dict(self._reported)
            self._ctx.cond.notify_all()
        if "telemetry_interval_s" in changes:
            self._schedule_telemetry(first=False)
        self._record("config_applied", source=source, changes=changes, version=version)
        if reported_changes:
            accepted: dict[str, Any] = {
                "state": {"reported": reported_changes},
                "metadata": {"reported": {k: {"timestamp": ts} for k in reported_changes}},
                "version": version,
                "timestamp": ts,
            }
            if isinstance(token, str):
                accepted["clientToken"] = token
            self._reply("shadow/update/accepted", accepted)
        self._result("applied", token, source, config=reported, version=version)

    def _result(self, status: str, token: object, source: str, **extra: Any) -> None:
        doc: dict[str, Any] = {"status": status, "source": source, "timestamp": now_iso()}
        if isinstance(token, str):
            doc["clientToken"] = token
        doc.update(extra)
        self._reply("config/result", doc)

    def _shadow_view(self, config: dict[str, Any]) -> dict[str, Any]:
        # Secrets (fields no agent may write, e.g. admin_pin) never appear in the shadow.
        fields = self._ctx.document.device_types[self.spec.type].config
        return {k: v for k, v in config.items() if k in fields and fields[k].agent_writable}

    # -- commands ------------------------------------------------------------------------

    def _command(self, command: str, payload: bytes) -> None:
        verdict = self._ctx.validators.command(self.spec.type, command, payload)
        if not verdict.ok:
            self._record("command_rejected", command=command, reason=verdict.reason)
            return
        args = verdict.document or {}
        self._record("command", command=command, args=args)
        if command == "reboot":
            delay = float(args.get("delay_s", 0))
            # Clean DISCONNECT with reason 0x04 so the broker still publishes the will.
            self._go_down("will", "reboot", delay + self._ctx.boot_time_s)
        elif command == "identify":
            self._identify_until = time.monotonic() + 10.0

    # -- telemetry -------------------------------------------------------------------------

    def _schedule_telemetry(self, first: bool) -> None:
        if self._telemetry_timer:
            self._telemetry_timer.cancel()
        interval = float(self._config["telemetry_interval_s"])
        # Spread the first reading over one interval so 1,000 devices do not beat in step.
        delay = self._rng.uniform(0.05, interval) if first else interval
        self._telemetry_timer = self._ctx.loop.call_later(delay, self._telemetry)

    def _telemetry(self) -> None:
        self._telemetry_timer = None
        if not self._serving:
            return
        self._telemetry_timer = self._ctx.loop.call_later(
            float(self._config["telemetry_interval_s"]), self._telemetry
        )
        mode = self._config["mode"]
        target = float(self._config["target_temp_c"])
        goal = AMBIENT_C if mode == "off" else target
        if mode == "heat":
            goal = max(target, AMBIENT_C)
        elif mode == "cool":
            goal = min(target, AMBIENT_C)
        self._temp += (goal - self._temp) * 0.2 + self._rng.gauss(0.0, 0.05)
        self._seq += 1
        if self.faults.malformed_telemetry:
            payload = b'{"seq": ' + str(self._seq).encode() + b', "temperature_c": 2'  # truncated
        else:
            payload = _dumps(
                {
                    "timestamp": now_iso(),
                    "seq": self._seq,
                    "temperature_c": round(self._temp, 2),
                    "humidity_pct": round(45.0 + self._rng.gauss(0.0, 2.0), 1),
                    "target_temp_c": target,
                    "mode": mode,
                    "firmware_channel": self._config["firmware_channel"],
                    "uptime_s": round(time.monotonic() - self._boot_at, 1),
                    "identifying": time.monotonic() < self._identify_until,
                }
            )
        with self._ctx.cond:
            self.telemetry_sent += 1
            self._ctx.cond.notify_all()
        topic = f"{self.spec.base}/telemetry"
        if self.faults.latency_s > 0:
            self._ctx.loop.call_later(self.faults.latency_s, self._send, topic, payload, 0)
        else:
            self._send(topic, payload, 0)


def _token_of(payload: bytes) -> object:
    """The clientToken of a request, if one can be read (for replies to bad requests too)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict):
        token = doc.get("clientToken")
        return token if isinstance(token, str) and len(token) <= 64 else None
    return None
