"""A small synchronous MQTT client for an agent (tests, the demo): paho with bounded waits.

Every wait has a timeout and fails loudly (``TimeoutError`` naming what was awaited), so a
test never hangs and never sleeps to synchronise.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

GUARD_EVENTS = "$guard/events"


class ConnectRefused(ConnectionError):
    """The server refused CONNECT; ``reason_code`` is the CONNACK code (v3 return code)."""

    def __init__(self, reason_code: int, reason: str) -> None:
        self.reason_code = reason_code
        super().__init__(f"connect refused: {reason} (0x{reason_code:02x})")


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class PublishResult:
    """Outcome of a QoS 1 publish: v5 PUBACK reason code (0 = success) and reason string."""

    reason_code: int
    reason_string: str | None

    @property
    def ok(self) -> bool:
        return self.reason_code < 0x80


def _code(rc: Any) -> int:
    return int(rc.value) if isinstance(rc, ReasonCode) else int(rc)


class AgentClient:
    """A connected MQTT client (v3.1.1 or v5). Messages are collected for ``expect``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        protocol: int | str = 5,
        client_id: str = "",
    ) -> None:
        # 3, 4, 311 and "3.1.1" all mean MQTT 3.1.1 (protocol level 4 on the wire).
        protocol = {3: 4, 311: 4, "3.1.1": 4, "5": 5, "5.0": 5}.get(protocol, protocol)
        if protocol not in (4, 5):
            raise ValueError("protocol is 4 / '3.1.1' (MQTT 3.1.1) or 5")
        self.host = host
        self.port = port
        self.protocol = protocol
        proto = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"agent-{id(self):x}",
            protocol=proto,
            clean_session=None if protocol == 5 else True,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self._cond = threading.Condition()
        self.messages: list[Message] = []
        self._acks: dict[int, PublishResult] = {}
        self._subacks: dict[int, list[int]] = {}
        self._connack: tuple[int, str] | None = None
        self.disconnected: tuple[int, str] | None = None
        c = self.client
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect

    # -- callbacks (paho's network thread) -----------------------------------------------

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self._connack = (_code(rc), str(rc))
            self._cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time())
            )
            self._cond.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        reason = getattr(props, "ReasonString", None) if props is not None else None
        with self._cond:
            self._acks[mid] = PublishResult(_code(rc), reason)
            self._cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        with self._cond:
            self._subacks[mid] = [_code(rc) for rc in rcs]
            self._cond.notify_all()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self.disconnected = (_code(rc), str(rc))
            self._cond.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"no {what} within {timeout}s")

    # -- operations ------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> AgentClient:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self._connack is not None, timeout, "CONNACK")
        assert self._connack is not None
        code, reason = self._connack
        if code != 0:
            self.client.loop_stop()
            raise ConnectRefused(code, reason)
        return self

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Subscribe; returns the SUBACK codes in order (granted QoS, or >= 0x80 refused)."""
        result, mid = self.client.subscribe([(f, qos) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe failed: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._subacks, timeout, f"SUBACK for {filters}")
        return self._subacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any] = b"",
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
        properties: Properties | None = None,
    ) -> PublishResult:
        """Publish and, for QoS > 0, wait for the acknowledgement and return its code."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            return PublishResult(0, None)
        self._wait(lambda: info.mid in self._acks, timeout, f"acknowledgement for {topic}")
        return self._acks.pop(info.mid)

    def expect(
        self,
        topic_filter: str,
        timeout: float = 5.0,
        where: Callable[[Message], bool] | None = None,
        since: float = 0.0,
    ) -> Message:
        """The first received message matching the filter (and ``where``), waiting if needed."""
        found: list[Message] = []

        def match() -> bool:
            for m in self.messages:
                if (
                    m.at >= since
                    and mqtt.topic_matches_sub(topic_filter, m.topic)
                    and (where is None or where(m))
                ):
                    found.append(m)
                    return True
            return False

        self._wait(match, timeout, f"message on {topic_filter}")
        return found[0]

    def received(self, topic_filter: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def guard_event(
        self, timeout: float = 5.0, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The first ``$guard/events`` event (JSON) matching ``where``."""
        message = self.expect(
            GUARD_EVENTS, timeout, where=None if where is None else (lambda m: where(m.json()))
        )
        event: dict[str, Any] = message.json()
        return event

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
