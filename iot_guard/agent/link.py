"""The MCP server's MQTT 5 connection to the guard, for asyncio code.

Why paho and not aiomqtt: the guard's answer to a publish is the MQTT 5 PUBACK reason code
with its reason string and user properties (a refusal: 0x87/0x99 and why; a hold: 0x83,
"held for approval <id>: ..." and ``approval_id``). aiomqtt resolves a publish when the
PUBACK arrives but drops its reason code and properties, and reading ``$guard/events``
instead cannot tell two concurrent calls on one topic apart. paho's v5 ``on_publish``
hands over the reason code and properties of each packet id, so every tool call gets the
guard's own answer to its own message. paho runs its network thread (``loop_start``);
callbacks are handed to the asyncio loop with ``call_soon_threadsafe``.

The link holds the agent's token only (the guard holds the broker credentials). It reads
the token file before every connection attempt, so a renewed token is picked up on the
next reconnect, and reconnects with exponential backoff (paho's ``reconnect_delay_set``:
``min_delay`` doubling up to ``max_delay``, reset after a successful CONNACK).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from iot_guard.tokens import TokenClaims, TokenError, unverified_claims

log = logging.getLogger("iot_guard.agent.link")

_EARLY_LIMIT = 64
MessageCallback = Callable[[str, bytes, bool], None]  # topic, payload, retain


class LinkError(ConnectionError):
    """No usable connection to the guard (the message says why, for the model)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The guard's answer to one QoS 1 publish (MQTT 5 PUBACK)."""

    reason_code: int
    reason_string: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason_code < 0x80  # [MQTT-3.4.2.1]: codes >= 0x80 are failures

    def user_property(self, name: str) -> str | None:
        return next((v for k, v in self.user_properties if k == name), None)


@dataclass(slots=True)
class TokenState:
    """What the link knows about its token (read from the file before each connect)."""

    token: str = ""
    claims: TokenClaims | None = None
    problem: str | None = None  # why the file could not be used


def _code(rc: Any) -> int:
    return int(rc.value) if isinstance(rc, ReasonCode) else int(rc)


def _reason(properties: Any) -> str | None:
    return getattr(properties, "ReasonString", None) if properties is not None else None


def _user_properties(properties: Any) -> tuple[tuple[str, str], ...]:
    pairs = getattr(properties, "UserProperty", None) if properties is not None else None
    return tuple((str(k), str(v)) for k, v in pairs or ())


@dataclass(slots=True)
class _Pending:
    """Answers by packet id. The network thread may answer before the caller registered
    (a fast PUBACK), so early answers are kept until claimed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    early: dict[int, Any] = field(default_factory=dict)
    ignore: set[int] = field(default_factory=set)  # packet ids nobody waits for


class GuardLink:
    """One MQTT 5 session with the guard, reconnecting on its own."""

    def __init__(
        self,
        host: str,
        port: int,
        agent_id: str,
        read_token: Callable[[], str],
        *,
        client_id: str | None = None,
        keepalive: int = 30,
        min_delay: int = 1,
        max_delay: int = 30,
    ) -> None:
        self.host = host
        self.port = port
        self.agent_id = agent_id
        self._read_token = read_token
        self.token = TokenState()
        self.last_problem: str | None = "not connected yet"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._keepalive = keepalive
        self._session_up = False  # network thread: CONNACK accepted, not yet closed
        self._subscriptions: dict[str, int] = {}  # filter -> qos, restored on reconnect
        self._listeners: list[tuple[str, MessageCallback]] = []
        self._pubacks = _Pending()
        self._subacks = _Pending()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"mcp-{agent_id}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        client.reconnect_delay_set(min_delay=min_delay, max_delay=max_delay)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (in the background; ``wait_connected`` waits for it)."""
        self._loop = asyncio.get_running_loop()
        self._refresh_token()
        self._client.connect_async(self.host, self.port, self._keepalive, clean_start=True)
        self._client.loop_start()

    async def close(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise LinkError(
                f"not connected to the guard at {self.host}:{self.port}: {self.last_problem}"
            ) from None

    # -- token -----------------------------------------------------------------------------

    def _refresh_token(self) -> None:
        try:
            token = self._read_token().strip()
        except OSError as exc:
            self.token = TokenState(problem=f"cannot read the token file: {exc}")
            return
        try:
            claims = unverified_claims(token)
        except TokenError as exc:
            self.token = TokenState(token=token, problem=f"the token file holds no token: {exc}")
            return
        problem = None
        if claims.agent_id != self.agent_id:
            problem = f"the token is for agent {claims.agent_id!r}, not {self.agent_id!r}"
        self.token = TokenState(token=token, claims=claims, problem=problem)

    def token_expires_in(self, now: float | None = None) -> float | None:
        claims = self.token.claims
        if claims is None:
            return None
        return claims.expires_at - (time.time() if now is None else now)

    # -- paho callbacks (network thread) -------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # Before every attempt: a token renewed in the file is used on the next reconnect.
        self._refresh_token()
        client.username_pw_set(self.agent_id, self.token.token)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, properties: Any
    ) -> None:
        code = _code(rc)
        if code >= 0x80:
            why = _reason(properties) or str(rc)
            problem = f"the guard refused the connection (0x{code:02X} {why})"
            if code in (0x86, 0x87):
                problem += "; " + self._token_hint()
            self._call(self._set_problem, problem)
            return
        self._session_up = True
        # Subscriptions do not survive a clean start: restore them.
        for topic_filter, qos in list(self._subscriptions.items()):
            _, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                with self._subacks.lock:
                    self._subacks.ignore.add(mid)
        self._call(self._set_connected, True, None)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._call(self._set_problem, f"cannot reach the guard at {self.host}:{self.port}")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, properties: Any
    ) -> None:
        code = _code(rc)
        why = _reason(properties) or str(rc)
        problem = f"the guard closed the connection (0x{code:02X} {why})"
        if code == 0xA0:  # maximum connect time: the guard's answer to an expired token
            problem += "; " + self._token_hint()
        if not self._session_up:
            # The close after a refused CONNACK: the refusal already said why (paho
            # reports this close as a protocol error, which would hide the reason).
            problem = ""
        self._session_up = False
        self._call(self._set_connected, False, problem or None)
        self._fail_all(problem or self.last_problem or "not connected to the guard")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, properties: Any
    ) -> None:
        ack = Ack(_code(rc), _reason(properties), _user_properties(properties))
        self._answer(self._pubacks, mid, ack)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[Any], properties: Any
    ) -> None:
        self._answer(self._subacks, mid, ([_code(rc) for rc in rcs], _reason(properties)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._dispatch, msg.topic, bytes(msg.payload), bool(msg.retain))

    # -- loop-side state -----------------------------------------------------------------

    def _token_hint(self) -> str:
        state = self.token
        if state.problem:
            return state.problem
        left = self.token_expires_in()
        if left is not None and left <= 0:
            return (
                f"the token expired {int(-left)} s ago: write a fresh one "
                "(iot-guard token issue ...) to the token file; it is re-read on reconnect"
            )
        return "check the agent id and token"

    def _set_problem(self, problem: str) -> None:
        self.last_problem = problem
        log.warning("%s", problem)

    def _set_connected(self, up: bool, problem: str | None) -> None:
        if up:
            self._connected.set()
            self.last_problem = None
            log.info("connected to the guard at %s:%d", self.host, self.port)
        else:
            self._connected.clear()
            if problem:
                self._set_problem(problem)

    def _answer(self, pending: _Pending, mid: int, value: Any) -> None:
        with pending.lock:
            if mid in pending.ignore:
                pending.ignore.discard(mid)
                return
            fut = pending.waiting.pop(mid, None)
            if fut is None:
                if len(pending.early) >= _EARLY_LIMIT:
                    # Answers nobody claims (e.g. subscriptions restored on reconnect):
                    # keep only recent ones, so a reused packet id never finds a stale one.
                    for old in list(pending.early)[: _EARLY_LIMIT // 2]:
                        del pending.early[old]
                pending.early[mid] = value
                return
        self._call(_resolve, fut, value)

    def _fail_all(self, problem: str) -> None:
        for pending in (self._pubacks, self._subacks):
            with pending.lock:
                futures = list(pending.waiting.values())
                pending.waiting.clear()
            for fut in futures:
                self._call(_reject, fut, LinkError(problem))

    def _dispatch(self, topic: str, payload: bytes, retain: bool) -> None:
        for topic_filter, callback in list(self._listeners):
            if mqtt.topic_matches_sub(topic_filter, topic):
                callback(topic, payload, retain)

    async def _await(self, pending: _Pending, mid: int, timeout: float, what: str) -> Any:
        assert self._loop is not None
        with pending.lock:
            if mid in pending.early:
                return pending.early.pop(mid)
            fut: asyncio.Future[Any] = self._loop.create_future()
            pending.waiting[mid] = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            with pending.lock:
                pending.waiting.pop(mid, None)
            raise LinkError(f"the guard did not answer the {what} within {timeout:g} s") from None

    # -- operations ----------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> Ack:
        """Publish at QoS 1 and return the guard's PUBACK (never retained)."""
        await self.wait_connected(timeout)
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish failed: {mqtt.error_string(info.rc)}")
        ack: Ack = await self._await(self._pubacks, info.mid, timeout, f"publish to {topic}")
        return ack

    async def subscribe(self, topic_filter: str, timeout: float = 10.0) -> tuple[int, str | None]:
        """Subscribe at QoS 1: (SUBACK code, reason string). Granted filters are restored
        after a reconnect."""
        await self.wait_connected(timeout)
        result, mid = self._client.subscribe(topic_filter, 1)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {mqtt.error_string(result)}")
        what = f"subscribe to {topic_filter}"
        codes, reason = await self._await(self._subacks, mid, timeout, what)
        code = codes[0] if codes else 0x80
        if code < 0x80:
            self._subscriptions[topic_filter] = 1
        return code, reason

    async def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        if self.connected:
            self._client.unsubscribe(topic_filter)

    def listen(self, topic_filter: str, callback: MessageCallback) -> Callable[[], None]:
        """Call ``callback`` on the loop for each message matching the filter."""
        entry = (topic_filter, callback)
        self._listeners.append(entry)

        def stop() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return stop


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _reject(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
