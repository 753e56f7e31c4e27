"""A tool call -> the MQTT message it stands for, and the guard's answer -> a tool result.
Pure functions, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.agent.calls import CallError, read_topic, to_message
from iot_guard.agent.link import Ack
from iot_guard.agent.runtime import answer_of
from iot_guard.agent.tools import ToolSpec, agent_tool_specs
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.tokens import TokenError, issue_token, unverified_claims

POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"


@pytest.fixture(scope="module")
def specs() -> dict[str, ToolSpec]:
    policy = CompiledPolicy.load(POLICY_DIR)
    return {s.name: s for s in agent_tool_specs(policy, "ops-agent")}


def test_a_shadow_update_sets_values_and_removes_named_keys(specs: dict[str, ToolSpec]) -> None:
    message = to_message(
        specs["shadow_update"],
        {
            "tenant": "acme", "device": "therm-001",
            "desired": {"target_temp_c": 22, "mode": None, "firmware_channel": None},
            "remove_desired": ["telemetry_interval_s"], "version": 7,
        },
        client_token="t-1",
    )
    assert message.topic == "tenants/acme/devices/therm-001/shadow/update"
    assert json.loads(message.payload) == {
        "state": {"desired": {"target_temp_c": 22, "telemetry_interval_s": None}},
        "version": 7,
        "clientToken": "t-1",
    }
    assert message.replies == (
        "tenants/acme/devices/therm-001/shadow/update/accepted",
        "tenants/acme/devices/therm-001/shadow/update/rejected",
    )


def test_a_key_both_set_and_removed_is_refused(specs: dict[str, ToolSpec]) -> None:
    with pytest.raises(CallError, match="mode: both given a value and listed in remove_desired"):
        to_message(
            specs["shadow_update"],
            {"tenant": "acme", "device": "therm-001", "desired": {"mode": "heat"},
             "remove_desired": ["mode"]},
        )


def test_a_config_patch_resets_named_fields_and_carries_a_client_token(
    specs: dict[str, ToolSpec],
) -> None:
    message = to_message(
        specs["config_patch"],
        {"tenant": "acme", "device": "therm-002", "config": {"mode": "cool"},
         "reset": ["target_temp_c"]},
    )
    doc = json.loads(message.payload)
    assert doc["mode"] == "cool" and doc["target_temp_c"] is None
    assert doc["clientToken"] == message.client_token and message.client_token
    assert message.replies == ("tenants/acme/devices/therm-002/config/result",)


def test_commands_bind_their_command_and_empty_calls_send_nothing(
    specs: dict[str, ToolSpec],
) -> None:
    identify = to_message(specs["identify_device"], {"tenant": "acme", "device": "therm-003"})
    assert identify.topic == "tenants/acme/devices/therm-003/commands/identify"
    assert identify.payload == b"" and identify.replies == ()
    get = to_message(specs["shadow_get"], {"tenant": "acme", "device": "therm-003"})
    assert get.payload == b"" and get.client_token is None
    push = to_message(
        specs["group_config_push"], {"tenant": "acme", "group": "floor-1", "config": {}}
    )
    assert push.topic == "tenants/acme/groups/floor-1/config/push" and push.replies == ()


def test_values_outside_the_schema_still_reach_the_guard(specs: dict[str, ToolSpec]) -> None:
    # Whether a tenant or a value is allowed is the guard's call (one source of each
    # rule): a forced call forms its message and the guard refuses it with its reason.
    message = to_message(
        specs["shadow_update"],
        {"tenant": "globex", "device": "therm-101", "desired": {"admin_pin": "1", "x": 99}},
    )
    assert message.topic == "tenants/globex/devices/therm-101/shadow/update"
    assert json.loads(message.payload)["state"]["desired"] == {"admin_pin": "1", "x": 99}


@pytest.mark.parametrize(
    "device", ["therm-001/commands/reboot", "+", "#", "", "$SYS", None, 7, "a b"]
)
def test_a_topic_variable_must_be_one_level(specs: dict[str, ToolSpec], device: object) -> None:
    with pytest.raises(CallError, match="device"):
        to_message(specs["shadow_get"], {"tenant": "acme", "device": device})


def test_malformed_calls_say_what_is_wrong(specs: dict[str, ToolSpec]) -> None:
    base = {"tenant": "acme", "device": "therm-001"}
    with pytest.raises(CallError, match="colour: not a parameter of shadow_get"):
        to_message(specs["shadow_get"], {**base, "colour": "red"})
    with pytest.raises(CallError, match="desired: .* is not an object"):
        to_message(specs["shadow_update"], {**base, "desired": [1]})
    with pytest.raises(CallError, match="remove_desired: .* is not a list of names"):
        to_message(specs["shadow_update"], {**base, "desired": {}, "remove_desired": "mode"})
    with pytest.raises(CallError, match="sends no message"):
        to_message(specs["read_status"], base)
    assert read_topic(specs["read_status"], base) == "tenants/acme/devices/therm-001/status"


# -- the guard's answer ---------------------------------------------------------------------

BASE = {"tool": "shadow_update", "topic": "tenants/acme/devices/therm-001/shadow/update"}


def test_a_hold_gives_the_approval_id_and_how_to_follow_it() -> None:
    ack = Ack(0x83, "held for approval ap-7f3a: risk high is above medium",
              (("approval_id", "ap-7f3a"),))
    outcome = answer_of(BASE, ack)
    assert not outcome.is_error
    assert outcome.data["status"] == "held" and outcome.data["approval_id"] == "ap-7f3a"
    assert "check_approval" in outcome.data["next"] and "do not resend" in outcome.data["next"]


def test_a_hold_without_the_user_property_is_read_from_the_reason_string() -> None:
    outcome = answer_of(BASE, Ack(0x83, "held for approval ap-1: risk high"))
    assert outcome.data["approval_id"] == "ap-1"


def test_a_guard_without_approvals_says_it_held_and_nothing_happened() -> None:
    ack = Ack(0x87, "held for human approval: risk high is above the tool's threshold")
    outcome = answer_of(BASE, ack)
    assert outcome.is_error
    assert outcome.data["status"] == "held" and outcome.data["approval_id"] is None
    assert "nothing was carried out" in outcome.data["next"]


def test_a_refusal_is_a_tool_error_with_the_guards_reason() -> None:
    reason = "payload refused by tool shadow_update: state.desired.target_temp_c: 45 is above"
    outcome = answer_of(BASE, Ack(0x99, reason))
    assert outcome.is_error
    assert outcome.data == {**BASE, "status": "refused",
                            "guard_code": "0x99 payload format invalid", "reason": reason}
    assert json.loads(outcome.text)["reason"] == reason


def test_the_agents_side_reads_its_token_without_the_secret() -> None:
    token = issue_token(b"s" * 32, "ops-agent", ttl_s=60, tools=["shadow_get"], now=1000.0)
    claims = unverified_claims(token + "\n")
    assert claims.agent_id == "ops-agent" and claims.expires_at == 1060.0
    assert claims.tools == frozenset({"shadow_get"})
    with pytest.raises(TokenError):
        unverified_claims("not-a-token")
