"""The runtime's handling of the guard's answers and the device's replies, against a
scripted link (no network; the real guard is in tests/integration/test_mcp_server.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio

from iot_guard.agent.link import Ack, LinkError
from iot_guard.agent.runtime import AgentRuntime, RuntimeOptions
from iot_guard.agent.tools import agent_tool_specs
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy_models import PolicyDocument

pytestmark = pytest.mark.asyncio
POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"
UPDATE = {"tenant": "acme", "device": "therm-001", "desired": {"target_temp_c": 22}}
ACCEPTED = "tenants/acme/devices/therm-001/shadow/update/accepted"


class ScriptedLink:
    """Stands in for GuardLink: answers from a script, delivers messages to listeners."""

    def __init__(self) -> None:
        self.listeners: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        self.published: list[tuple[str, bytes]] = []
        self.subscribed: list[str] = []
        self.ack = Ack(0)
        self.on_publish: Callable[[dict[str, Any]], None] = lambda doc: None
        self.suback: dict[str, tuple[int, str | None]] = {}
        self.on_subscribe: Callable[[str], None] = lambda topic: None
        self.expires_in: float | None = 900.0
        self.down: str | None = None

    def deliver(self, topic: str, doc: object) -> None:
        for topic_filter, callback in list(self.listeners):
            if mqtt.topic_matches_sub(topic_filter, topic):
                callback(topic, json.dumps(doc).encode(), False)

    def listen(self, topic_filter: str, callback: Callable[[str, bytes, bool], None]) -> Any:
        entry = (topic_filter, callback)
        self.listeners.append(entry)
        return lambda: self.listeners.remove(entry)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, topic_filter: str, timeout: float = 10.0) -> tuple[int, str | None]:
        if self.down:
            raise LinkError(self.down)
        self.subscribed.append(topic_filter)
        answer = self.suback.get(topic_filter, (1, None))
        if answer[0] < 0x80:
            self.on_subscribe(topic_filter)
        return answer

    async def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> Ack:
        if self.down:
            raise LinkError(self.down)
        self.published.append((topic, payload))
        if self.ack.ok:
            self.on_publish(json.loads(payload) if payload else {})
        return self.ack

    def token_expires_in(self, now: float | None = None) -> float | None:
        return self.expires_in


@pytest.fixture
def link() -> ScriptedLink:
    return ScriptedLink()


@pytest_asyncio.fixture
async def runtime(link: ScriptedLink) -> AgentRuntime:
    specs = agent_tool_specs(CompiledPolicy.load(POLICY_DIR), "ops-agent")
    options = RuntimeOptions(reply_timeout=0.2, read_timeout=0.2, clock=lambda: 1000.0)
    rt = AgentRuntime(specs, link, options)  # type: ignore[arg-type]
    await rt.start()
    return rt


async def test_the_reply_with_the_calls_client_token_is_the_result(
    runtime: AgentRuntime, link: ScriptedLink
) -> None:
    def device(doc: dict[str, Any]) -> None:
        # Another caller's reply first: it must not be taken for ours.
        link.deliver(ACCEPTED, {"clientToken": "someone-else", "version": 1})
        link.deliver(ACCEPTED, {"clientToken": doc["clientToken"], "version": 2})

    link.on_publish = device
    outcome = await runtime.call("shadow_update", UPDATE)
    assert not outcome.is_error
    assert outcome.data["status"] == "done" and outcome.data["reply"]["version"] == 2
    assert ACCEPTED in link.subscribed  # subscribed before publishing
    assert not outcome.data.get("token_warning")


async def test_a_device_rejection_is_a_tool_error(
    runtime: AgentRuntime, link: ScriptedLink
) -> None:
    rejected = ACCEPTED.replace("accepted", "rejected")
    link.on_publish = lambda doc: link.deliver(
        rejected, {"clientToken": doc["clientToken"], "code": 409, "message": "Version conflict"}
    )
    outcome = await runtime.call("shadow_update", {**UPDATE, "version": 3})
    assert outcome.is_error and outcome.data["status"] == "device_rejected"
    assert outcome.data["reply"]["code"] == 409


async def test_no_reply_within_the_timeout_says_the_guard_accepted(
    runtime: AgentRuntime,
) -> None:
    outcome = await runtime.call("shadow_update", UPDATE)
    assert not outcome.is_error
    assert outcome.data["status"] == "sent" and "no reply from the device" in outcome.data["note"]


async def test_a_hold_is_followed_with_check_approval(
    runtime: AgentRuntime, link: ScriptedLink
) -> None:
    link.ack = Ack(0x83, "held for approval ap-9: risk high is above medium",
                   (("approval_id", "ap-9"),))
    held = await runtime.call(
        "shadow_update",
        {"tenant": "acme", "device": "therm-001", "desired": {"firmware_channel": "beta"}},
    )
    assert held.data["status"] == "held" and held.data["approval_id"] == "ap-9"
    state = {"id": "ap-9", "status": "pending", "level": 1}
    link.on_subscribe = lambda topic: link.deliver(topic, state)
    followed = await runtime.call("check_approval", {"approval_id": "ap-9"})
    assert not followed.is_error
    assert followed.data["state"] == state
    assert "$guard/approvals/ap-9" in link.subscribed
    # Later states arrive on the same subscription and are what the next check returns.
    link.deliver("$guard/approvals/ap-9", {**state, "status": "approved"})
    again = await runtime.call("check_approval", {"approval_id": "ap-9"})
    assert again.data["state"]["status"] == "approved"
    assert link.subscribed.count("$guard/approvals/ap-9") == 1


async def test_check_approval_on_a_guard_without_approvals(
    runtime: AgentRuntime, link: ScriptedLink
) -> None:
    link.suback["$guard/approvals/ap-1"] = (0x87, "topics starting with '$' are reserved")
    outcome = await runtime.call("check_approval", {"approval_id": "ap-1"})
    assert outcome.is_error and outcome.data["status"] == "unavailable"
    bad = await runtime.call("check_approval", {"approval_id": "../x"})
    assert bad.is_error and "is not an approval id" in bad.data["error"]


async def test_a_refused_subscription_of_a_read_tool_is_an_error_with_the_reason(
    runtime: AgentRuntime, link: ScriptedLink
) -> None:
    topic = "tenants/acme/devices/therm-002/status"
    link.suback[topic] = (0x87, "agent ops-agent may not subscribe to it")
    outcome = await runtime.call("read_status", {"tenant": "acme", "device": "therm-002"})
    assert outcome.is_error and outcome.data["reason"] == "agent ops-agent may not subscribe to it"
    link.on_subscribe = lambda t: None
    link.deliver("tenants/acme/devices/therm-003/status", {"status": "online"})
    cached = await runtime.call("read_status", {"tenant": "acme", "device": "therm-003"})
    assert cached.data["message"] == {"status": "online"}


@pytest.mark.parametrize(
    ("left", "expected"),
    [(30.0, "token expires in 30 s"), (-5.0, "token expired 5 s ago")],
)
async def test_a_token_near_or_past_expiry_is_reported_on_every_result(
    runtime: AgentRuntime, link: ScriptedLink, left: float, expected: str
) -> None:
    link.expires_in = left
    link.down = "not connected to the guard: the guard closed the connection (0xA0 ...)"
    outcome = await runtime.call("shadow_get", {"tenant": "acme", "device": "therm-001"})
    assert outcome.is_error and "not connected to the guard" in outcome.data["error"]
    assert expected in outcome.data["token_warning"]


async def test_unknown_tools_and_malformed_calls_are_tool_errors(runtime: AgentRuntime) -> None:
    unknown = await runtime.call("reboot_everything", {})
    assert unknown.is_error and "unknown tool" in unknown.data["error"]
    malformed = await runtime.call("shadow_get", {"tenant": "acme", "device": "a/b"})
    assert malformed.is_error and "not a name" in malformed.data["error"]


async def test_a_read_tool_with_a_wildcard_topic_returns_the_newest_match(
    link: ScriptedLink,
) -> None:
    policy = CompiledPolicy.load(POLICY_DIR)
    raw = policy.document.model_dump()
    raw["tools"]["read_fleet_status"] = {
        "description": "Status of every device of a tenant.", "verb": "subscribe",
        "topics": ["tenants/{tenant}/devices/+/status"], "risk": "low",
    }
    raw["agents"]["ops-agent"]["tools"].append("read_fleet_status")
    specs = agent_tool_specs(CompiledPolicy(PolicyDocument.model_validate(raw)), "ops-agent")
    now = [1000.0]
    rt = AgentRuntime(specs, link,  # type: ignore[arg-type]
                      RuntimeOptions(read_timeout=0.5, clock=lambda: now[0]))
    await rt.start()
    spec = rt.specs["read_fleet_status"]
    assert spec.variables == ("tenant",)
    # Nothing cached: the read subscribes to the filter and returns the first message.
    link.on_subscribe = lambda topic: link.deliver(
        "tenants/acme/devices/therm-004/status", {"status": "online"})
    first = await rt.call("read_fleet_status", {"tenant": "acme"})
    assert link.subscribed == ["tenants/acme/devices/+/status"]
    assert first.data["topic"] == "tenants/acme/devices/therm-004/status"
    now[0] = 1001.0
    link.deliver("tenants/acme/devices/therm-009/status", {"status": "offline"})
    newest = await rt.call("read_fleet_status", {"tenant": "acme"})
    assert newest.data["topic"] == "tenants/acme/devices/therm-009/status"
    assert newest.data["message"] == {"status": "offline"}
