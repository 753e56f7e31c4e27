"""Runs an agent's tool calls through the guard and turns the guard's answers into results.

Independent of MCP (the MCP server is a thin adapter over :class:`AgentRuntime`), so any
agent runtime can reuse it. A call becomes one QoS 1 publish (or a subscription, for a
read tool) as the agent's own MQTT client of the guard; the guard's PUBACK decides what
the model is told:

- < 0x80: accepted. Where the topic layout has a reply (shadow get/update -> accepted or
  rejected, config patch -> config/result) the device's reply is awaited (subscribed
  before publishing, matched by ``clientToken``) and returned;
- 0x83 with ``approval_id`` (or "held for approval <id>: ..."): held for a human. The
  result gives the approval id and says to follow it with ``check_approval``, which reads
  ``$guard/approvals/<id>``; never resend;
- any other failure: refused, as a tool error carrying the guard's reason string, which
  says what to change.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iot_guard.mqtt import topic_matches
from iot_guard.policy_models import NAME_PATTERN

from .calls import CallError, Message, read_topic, to_message
from .link import Ack, GuardLink, LinkError
from .tools import ToolSpec

CHECK_APPROVAL = "check_approval"
APPROVALS_TOPIC = "$guard/approvals/{id}"
HOLD_CODE = 0x83  # implementation specific error: the guard's "held" (CONTRACTS.md)
_HELD = re.compile(r"^held for approval (?P<id>[^\s:]+)")
_APPROVAL_ID = re.compile(NAME_PATTERN)
CACHE_LIMIT = 10_000  # latest message per topic, for read tools

_REASON_NAMES = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A tool result: ``data`` is the structured result, ``is_error`` marks a failure."""

    data: dict[str, Any]
    is_error: bool = False

    @property
    def text(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, indent=1)


@dataclass(frozen=True, slots=True)
class Latest:
    payload: bytes
    retain: bool
    at: float


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")


def check_approval_spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "approval_id": {
                "type": "string",
                "description": "The approval id a held call returned.",
                "pattern": NAME_PATTERN,
            }
        },
        "required": ["approval_id"],
        "additionalProperties": False,
    }


CHECK_APPROVAL_DESCRIPTION = (
    "Follow a held action: returns the approval request's state (pending, escalated, "
    "approved, denied, expired, cancelled, executing, done, failed, ...) from the guard "
    "($guard/approvals/<id>). An approved action is carried out by the guard itself: "
    "never resend a held call."
)


@dataclass(slots=True)
class RuntimeOptions:
    reply_timeout: float = 10.0  # device reply after the guard accepted
    read_timeout: float = 10.0  # first message for a read tool
    ack_timeout: float = 10.0  # the guard's PUBACK / SUBACK (and connecting)
    token_warn_s: float = 120.0  # report a token expiring within this many seconds
    clock: Callable[[], float] = field(default=time.time)


class AgentRuntime:
    """One agent's tools over one guard connection."""

    def __init__(
        self, specs: list[ToolSpec], link: GuardLink, options: RuntimeOptions | None = None
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.link = link
        self.options = options or RuntimeOptions()
        self._latest: dict[str, Latest] = {}
        self._subscribed: dict[str, tuple[int, str | None]] = {}  # filter -> SUBACK
        self._stop_cache: Callable[[], None] | None = None

    @property
    def may_hold(self) -> bool:
        return any(spec.may_hold for spec in self.specs.values())

    async def start(self) -> None:
        # '#' does not match '$' topics [MQTT-4.7.2-1]: approval states get their own filter.
        stops = [
            self.link.listen("#", self._remember),
            self.link.listen(APPROVALS_TOPIC.format(id="+"), self._remember),
        ]

        def stop_cache() -> None:
            for stop in stops:
                stop()

        self._stop_cache = stop_cache
        await self.link.start()

    async def warm(self, tenants: list[str]) -> None:
        """Subscribe to every read tool's topics per tenant, so reads answer at once."""
        for spec in self.specs.values():
            if spec.verb != "subscribe":
                continue
            for tenant in tenants:
                levels = [
                    tenant if lv == "{tenant}" else ("+" if lv.startswith("{") else lv)
                    for lv in spec.topic.split("/")
                ]
                await self._subscribe("/".join(levels))

    async def close(self) -> None:
        if self._stop_cache is not None:
            self._stop_cache()
        await self.link.close()

    # -- the cache of latest messages ----------------------------------------------------

    def _remember(self, topic: str, payload: bytes, retain: bool) -> None:
        if len(self._latest) >= CACHE_LIMIT and topic not in self._latest:
            self._latest.clear()
        self._latest[topic] = Latest(payload, retain, self.options.clock())

    async def _subscribe(self, topic_filter: str) -> tuple[int, str | None]:
        known = self._subscribed.get(topic_filter)
        if known is not None and known[0] < 0x80:
            return known
        answer = await self.link.subscribe(topic_filter, self.options.ack_timeout)
        self._subscribed[topic_filter] = answer
        return answer

    def _wait_for(
        self, topics: tuple[str, ...], match: Callable[[str, Any], bool]
    ) -> tuple[asyncio.Future[tuple[str, Any]], Callable[[], None]]:
        """A future for the first message on ``topics`` that ``match`` accepts."""
        fut: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

        def on_message(topic: str, payload: bytes, retain: bool) -> None:
            doc = _decode(payload)
            if not fut.done() and match(topic, doc):
                fut.set_result((topic, doc))

        stops = [self.link.listen(topic, on_message) for topic in topics]

        def stop() -> None:
            for s in stops:
                s()

        return fut, stop

    # -- calls ---------------------------------------------------------------------------

    async def call(self, name: str, args: dict[str, Any] | None) -> Outcome:
        """Run one tool call; never raises for anything the model can fix or retry."""
        try:
            if name == CHECK_APPROVAL:
                outcome = await self._check_approval(args or {})
            else:
                spec = self.specs.get(name)
                if spec is None:
                    return Outcome({"error": f"unknown tool {name!r}"}, is_error=True)
                if spec.verb == "subscribe":
                    outcome = await self._read(spec, args or {})
                else:
                    outcome = await self._publish(spec, to_message(spec, args))
        except CallError as exc:
            outcome = Outcome({"error": f"invalid call to {name}: {exc}"}, is_error=True)
        except LinkError as exc:
            outcome = Outcome({"error": str(exc)}, is_error=True)
        return self._with_token_note(outcome)

    def _with_token_note(self, outcome: Outcome) -> Outcome:
        left = self.link.token_expires_in(self.options.clock())
        if left is None or left > self.options.token_warn_s:
            return outcome
        if left <= 0:
            note = (
                f"the agent's guard token expired {int(-left)} s ago; the guard ends the "
                "session and refuses reconnects until a fresh token is written to the token "
                "file (iot-guard token issue ...)"
            )
        else:
            note = (
                f"the agent's guard token expires in {int(left)} s; write a fresh token to the "
                "token file before then (it is re-read on every reconnect)"
            )
        return Outcome({**outcome.data, "token_warning": note}, outcome.is_error)

    async def _publish(self, spec: ToolSpec, message: Message) -> Outcome:
        replies = message.replies
        if replies:
            for topic in replies:
                await self._subscribe(topic)  # before publishing: a fast reply is not lost
            token = message.client_token

            def match(topic: str, doc: Any) -> bool:
                if token is None:
                    return True
                return isinstance(doc, dict) and doc.get("clientToken") == token

            fut, stop = self._wait_for(replies, match)
        try:
            ack = await self.link.publish(message.topic, message.payload, self.options.ack_timeout)
            base = {"tool": spec.name, "topic": message.topic}
            if not ack.ok:
                return answer_of(base, ack)
            if not replies:
                return Outcome({**base, "status": "sent", "guard": "accepted",
                                "note": _no_reply_note(spec)})
            try:
                topic, doc = await asyncio.wait_for(fut, self.options.reply_timeout)
            except TimeoutError:
                return Outcome({
                    **base, "status": "sent", "guard": "accepted",
                    "note": f"no reply from the device within {self.options.reply_timeout:g} s "
                            "(it may be offline: check its status); the message was delivered "
                            "to the broker",
                })
            failed = topic.endswith("/rejected") or (
                topic.endswith("/config/result")
                and isinstance(doc, dict)
                and doc.get("status") != "applied"
            )
            return Outcome(
                {**base, "status": "device_rejected" if failed else "done",
                 "guard": "accepted", "reply_topic": topic, "reply": doc},
                is_error=failed,
            )
        finally:
            if replies:
                stop()

    def _cached(self, topic_filter: str) -> tuple[str, Latest] | None:
        """The latest message on a topic, or on any topic a wildcard filter matches."""
        latest = self._latest.get(topic_filter)
        if latest is not None:
            return topic_filter, latest
        if "+" not in topic_filter and "#" not in topic_filter:
            return None
        matching = [
            (topic, entry)
            for topic, entry in self._latest.items()
            if topic_matches(topic_filter, topic)
        ]
        return max(matching, key=lambda te: te[1].at) if matching else None

    async def _read(self, spec: ToolSpec, args: dict[str, Any]) -> Outcome:
        topic_filter = read_topic(spec, args)
        base = {"tool": spec.name, "topic": topic_filter}
        found = self._cached(topic_filter)
        if found is None:
            fut, stop = self._wait_for((topic_filter,), lambda t, d: True)
            try:
                code, reason = await self._subscribe(topic_filter)
                if code >= 0x80:
                    return Outcome({
                        **base, "status": "refused",
                        "guard_code": f"0x{code:02X} {_REASON_NAMES.get(code, 'refused')}",
                        "reason": reason or "the guard refused the subscription",
                    }, is_error=True)
                found = self._cached(topic_filter)  # a retained message may be in already
                if found is None:
                    try:
                        topic, _ = await asyncio.wait_for(fut, self.options.read_timeout)
                    except TimeoutError:
                        wait = self.options.read_timeout
                        return Outcome({**base, "status": "no_message",
                                        "note": f"no message within {wait:g} s"})
                    found = topic, self._latest[topic]
            finally:
                stop()
        topic, latest = found
        return Outcome({
            **base, "topic": topic, "status": "ok", "message": _decode(latest.payload),
            "retained": latest.retain,
            "age_s": round(max(0.0, self.options.clock() - latest.at), 3),
        })

    async def _check_approval(self, args: dict[str, Any]) -> Outcome:
        approval_id = args.get("approval_id")
        if not isinstance(approval_id, str) or not _APPROVAL_ID.match(approval_id):
            raise CallError(f"approval_id: {approval_id!r} is not an approval id")
        topic = APPROVALS_TOPIC.format(id=approval_id)
        base = {"tool": CHECK_APPROVAL, "approval_id": approval_id}
        fut, stop = self._wait_for((topic,), lambda t, d: True)
        try:
            latest = self._latest.get(topic)
            code, reason = await self._subscribe(topic)
            if code >= 0x80:
                return Outcome({
                    **base, "status": "unavailable",
                    "reason": reason or f"the guard refused {topic} (0x{code:02X})",
                    "note": "this guard does not serve approval states",
                }, is_error=True)
            latest = self._latest.get(topic) or latest
            if latest is None:
                try:
                    await asyncio.wait_for(fut, self.options.read_timeout)
                except TimeoutError:
                    return Outcome({**base, "status": "unknown",
                                    "note": f"the guard sent no state within "
                                            f"{self.options.read_timeout:g} s"}, is_error=True)
                latest = self._latest[topic]
        finally:
            stop()
        return Outcome({**base, "state": _decode(latest.payload)})


def answer_of(base: dict[str, Any], ack: Ack) -> Outcome:
    """The result for a publish the guard did not accept: held, or refused with its reason."""
    reason = ack.reason_string or ""
    approval_id = ack.user_property("approval_id")
    held = _HELD.match(reason)
    if approval_id is None and held is not None and ack.reason_code == HOLD_CODE:
        approval_id = held.group("id")
    if approval_id is not None:
        return Outcome({
            **base, "status": "held", "approval_id": approval_id, "reason": reason,
            "next": f"a human must approve it: call {CHECK_APPROVAL} with approval_id="
                    f"{approval_id!r} to follow it; do not resend this call (the guard "
                    "carries an approved action out itself)",
        })
    code = f"0x{ack.reason_code:02X} {_REASON_NAMES.get(ack.reason_code, 'refused')}"
    if reason.startswith("held for"):
        # A guard without approvals refuses what it would hold, and says so.
        return Outcome({
            **base, "status": "held", "approval_id": None, "reason": reason,
            "guard_code": code,
            "next": "this guard runs no approvals service, so it refused what it would "
                    "hold: nothing was carried out; ask a human operator, or change the "
                    "call so it is not held",
        }, is_error=True)
    return Outcome({
        **base, "status": "refused", "guard_code": code,
        "reason": reason or "refused by the guard (no reason given)",
    }, is_error=True)


def _no_reply_note(spec: ToolSpec) -> str:
    if "{group}" in spec.topic:
        return "sent to every device of the group; each reports on its own config/result topic"
    if spec.payload == "command":
        return "the command was delivered; devices do not reply to commands"
    return "this topic has no reply the agent may read"
