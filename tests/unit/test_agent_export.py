"""Tool definitions exported from the policy: valid for each format, and as strict as the
policy: calls the policy allows validate, calls it refuses (out of range, unknown device,
other tenant) do not; a changed policy changes the schemas. No network."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types
import pytest

from iot_guard.agent.calls import read_topic, to_message
from iot_guard.agent.export import (
    FORMATS,
    OPENAI_KEYWORDS,
    export_tools,
    input_schema,
    openai_strict_problems,
    render,
)
from iot_guard.agent.tools import ExportError, ToolSpec, agent_tool_specs
from iot_guard.cli import main
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Verdict
from iot_guard.policy_models import NAME_PATTERN, PolicyDocument
from iot_guard.tokens import issue_token

POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"
AGENTS = ("ops-agent", "observer", "globex-agent")


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return CompiledPolicy.load(POLICY_DIR)


def specs_of(policy: CompiledPolicy, agent: str = "ops-agent") -> list[ToolSpec]:
    return agent_tool_specs(policy, agent)


# -- calls built from a definition ---------------------------------------------------------


def complete(call: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``call`` with every property the (strict) schema lists, unset ones as null."""
    out = dict(call)
    for name, prop in schema.get("properties", {}).items():
        if name not in out:
            out[name] = None
        elif isinstance(out[name], dict) and prop.get("type") == "object":
            out[name] = complete(out[name], prop)
    return out


def allowed_call(spec: ToolSpec, tenant: str, device: str, group: str) -> dict[str, Any]:
    values = {"tenant": tenant, "device": device, "group": group}
    call: dict[str, Any] = {v: values[v] for v in spec.variables}
    if spec.payload == "shadow_update":
        call["desired"] = {"target_temp_c": 21.5, "mode": "heat"}
    elif spec.payload == "config_patch":
        call["config"] = {"telemetry_interval_s": 60}
    return call


def validates(schema: dict[str, Any], call: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(call)


def decide(policy: CompiledPolicy, agent: str, spec: ToolSpec, call: dict[str, Any]) -> Verdict:
    """What the guard decides for the message (or subscription) this call stands for."""
    agent_policy = policy.for_agent(agent)
    assert agent_policy is not None
    if spec.verb == "subscribe":
        return agent_policy.decide_subscribe(read_topic(spec, call), 1).verdict
    message = to_message(spec, call)
    return agent_policy.decide_publish(message.topic, message.payload, qos=1).verdict


# -- every format is valid ------------------------------------------------------------------


def test_every_exported_schema_is_valid_json_schema_for_every_agent_and_format(
    policy: CompiledPolicy,
) -> None:
    for agent in AGENTS:
        for fmt in FORMATS:
            for spec in specs_of(policy, agent):
                jsonschema.Draft202012Validator.check_schema(input_schema(spec, fmt))


def _check_openai_strict(node: dict[str, Any], path: str = "") -> None:
    """Independent of the exporter's own check: OpenAI strict mode's rules."""
    assert set(node) <= OPENAI_KEYWORDS, (path, set(node) - OPENAI_KEYWORDS)
    if node.get("type") == "object":
        assert node["additionalProperties"] is False, path
        assert sorted(node["required"]) == sorted(node["properties"]), path
    for name, child in node.get("properties", {}).items():
        _check_openai_strict(child, f"{path}/{name}")
    for child in node.get("anyOf", ()):
        _check_openai_strict(child, f"{path}/anyOf")
    if "items" in node:
        _check_openai_strict(node["items"], f"{path}/items")


@pytest.mark.parametrize("fmt", ["openai", "openai-chat"])
def test_openai_definitions_follow_strict_mode(policy: CompiledPolicy, fmt: str) -> None:
    for agent in AGENTS:
        for tool in export_tools(policy, agent, fmt):
            function = tool["function"] if fmt == "openai-chat" else tool
            assert tool["type"] == "function"
            assert function["strict"] is True
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", function["name"])
            params = function["parameters"]
            assert params["type"] == "object" and "anyOf" not in params
            _check_openai_strict(params)
            assert openai_strict_problems(params) == []


def test_anthropic_definitions_have_name_description_and_input_schema(
    policy: CompiledPolicy,
) -> None:
    for tool in export_tools(policy, "ops-agent", "anthropic"):
        assert set(tool) == {"name", "description", "input_schema"}
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tool["name"])
        assert tool["input_schema"]["type"] == "object"
        assert tool["input_schema"]["additionalProperties"] is False


def test_mcp_definitions_are_mcp_tools(policy: CompiledPolicy) -> None:
    for tool in export_tools(policy, "ops-agent", "mcp"):
        parsed = mcp_types.Tool.model_validate(tool)
        assert parsed.name == tool["name"]
        assert tool["inputSchema"]["type"] == "object"
        reads = tool["name"].startswith("read_")
        assert tool["annotations"]["readOnlyHint"] is reads


def test_jsonschema_definitions_carry_the_topic_risk_and_hold(policy: CompiledPolicy) -> None:
    tools = {t["name"]: t for t in export_tools(policy, "ops-agent", "jsonschema")}
    update = tools["shadow_update"]
    assert update["topic"] == "tenants/{tenant}/devices/{device}/shadow/update"
    assert update["risk"] == "low" and update["may_hold"] is True
    assert update["input_schema"]["$schema"].endswith("2020-12/schema")
    assert tools["identify_device"]["may_hold"] is False
    assert tools["group_config_push"]["may_hold"] is True


# -- the definitions follow the policy ------------------------------------------------------


def test_one_definition_per_tool_and_per_topic_of_a_multi_topic_tool(
    policy: CompiledPolicy,
) -> None:
    names = [s.name for s in specs_of(policy)]
    assert names == [
        "read_telemetry", "read_status",
        "read_shadow_get_accepted", "read_shadow_get_rejected",
        "read_shadow_update_accepted", "read_shadow_update_rejected",
        "read_shadow_update_delta", "read_shadow_config_result",
        "shadow_get", "shadow_update", "config_patch", "identify_device", "group_config_push",
    ]
    observer = [s.name for s in specs_of(policy, "observer")]
    assert "shadow_update" not in observer and "read_status" in observer


def test_descriptions_say_what_risk_and_whether_held(policy: CompiledPolicy) -> None:
    specs = {s.name: s for s in specs_of(policy)}
    update = specs["shadow_update"].description
    assert "desired state" in update
    assert "firmware_channel (high) is held for human approval" in update
    assert "never held" in specs["identify_device"].description
    assert "Read-only" in specs["read_telemetry"].description
    assert "every device of the group" in specs["group_config_push"].description


def test_topic_variables_are_enums_of_the_agents_registry_names(policy: CompiledPolicy) -> None:
    specs = {s.name: s for s in specs_of(policy)}
    props = specs["shadow_update"].schema["properties"]
    assert props["tenant"]["enum"] == ["acme"]
    assert props["device"]["enum"] == [f"therm-{i:03d}" for i in range(1, 11)]
    assert specs["group_config_push"].schema["properties"]["group"]["enum"] == [
        "floor-1", "floor-2"
    ]
    globex = {s.name: s for s in specs_of(policy, "globex-agent")}
    assert globex["shadow_update"].schema["properties"]["device"]["enum"] == [
        "therm-101", "therm-102", "therm-103"
    ]


def test_fields_an_agent_may_not_write_are_absent(policy: CompiledPolicy) -> None:
    for fmt in FORMATS:
        text = json.dumps(export_tools(policy, "ops-agent", fmt))
        assert "admin_pin" not in text
    update = next(s for s in specs_of(policy) if s.name == "shadow_update")
    assert set(update.schema["properties"]["desired"]["properties"]) == {
        "firmware_channel", "mode", "target_temp_c", "telemetry_interval_s"
    }


def test_a_tokens_narrower_tool_list_narrows_the_export(policy: CompiledPolicy) -> None:
    names = [t["name"] for t in export_tools(policy, "ops-agent", "mcp", ["shadow_get"])]
    assert names == ["shadow_get"]
    with pytest.raises(ExportError, match="has no tools"):
        export_tools(policy, "observer", "mcp", ["shadow_update"])
    with pytest.raises(ExportError, match="not in the policy"):
        export_tools(policy, "nobody", "mcp")


@pytest.mark.parametrize("fmt", FORMATS)
def test_calls_the_policy_allows_validate(policy: CompiledPolicy, fmt: str) -> None:
    for agent, tenant, device, group in (
        ("ops-agent", "acme", "therm-007", "floor-2"),
        ("globex-agent", "globex", "therm-102", "lab"),
    ):
        for spec in specs_of(policy, agent):
            schema = input_schema(spec, fmt)
            call = allowed_call(spec, tenant, device, group)
            assert validates(schema, complete(call, schema)), (spec.name, call)
            assert decide(policy, agent, spec, call) is Verdict.ALLOW, (spec.name, call)


def refused_calls(spec: ToolSpec) -> dict[str, dict[str, Any]]:
    """Calls the policy refuses, by kind: unknown device, other tenant, out of range."""
    base = allowed_call(spec, "acme", "therm-001", "floor-1")
    calls: dict[str, dict[str, Any]] = {}
    if "device" in spec.variables:
        calls["unknown device"] = {**base, "device": "therm-999"}
        calls["other tenant"] = {**base, "tenant": "globex", "device": "therm-101"}
        calls["other tenant's device"] = {**base, "device": "therm-101"}
    if "group" in spec.variables:
        calls["other tenant"] = {**base, "tenant": "globex", "group": "lab"}
        calls["unknown group"] = {**base, "group": "floor-9"}
    if spec.payload == "shadow_update":
        calls["out of range"] = {**base, "desired": {"target_temp_c": 45}}
        calls["not an enum value"] = {**base, "desired": {"mode": "turbo"}}
        calls["not writable"] = {**base, "desired": {"admin_pin": "1234"}}
    if spec.payload == "config_patch":
        calls["out of range"] = {**base, "config": {"telemetry_interval_s": 0}}
        calls["wrong type"] = {**base, "config": {"target_temp_c": "21"}}
    return calls


@pytest.mark.parametrize("fmt", FORMATS)
def test_calls_the_policy_refuses_do_not_validate(policy: CompiledPolicy, fmt: str) -> None:
    checked = 0
    for spec in specs_of(policy):
        schema = input_schema(spec, fmt)
        for kind, call in refused_calls(spec).items():
            assert not validates(schema, complete(call, schema)), (spec.name, kind)
            assert decide(policy, "ops-agent", spec, call) is Verdict.DENY, (spec.name, kind)
            checked += 1
    assert checked >= 40  # every device tool: unknown device and other tenant; payloads too


def test_a_held_change_validates_and_is_held_by_the_guard(policy: CompiledPolicy) -> None:
    spec = next(s for s in specs_of(policy) if s.name == "shadow_update")
    call = {"tenant": "acme", "device": "therm-001", "desired": {"firmware_channel": "beta"}}
    assert validates(input_schema(spec, "openai"), complete(call, input_schema(spec, "openai")))
    assert decide(policy, "ops-agent", spec, call) is Verdict.HOLD


def _changed(policy: CompiledPolicy, change: Any) -> CompiledPolicy:
    raw = copy.deepcopy(policy.document.model_dump())
    change(raw)
    return CompiledPolicy(PolicyDocument.model_validate(raw))


def test_the_schemas_change_when_the_policy_changes(policy: CompiledPolicy) -> None:
    before = {t["name"]: t for t in export_tools(policy, "ops-agent", "openai")}

    def edit(raw: dict[str, Any]) -> None:
        raw["tenants"]["acme"]["devices"]["therm-011"] = {"type": "thermostat"}
        raw["device_types"]["thermostat"]["config"]["target_temp_c"]["maximum"] = 26
        raw["device_types"]["thermostat"]["config"]["mode"]["agent_writable"] = False
        raw["agents"]["ops-agent"]["tools"].remove("identify_device")
        raw["tools"]["config_patch"]["conditions"]["approval_above"] = None

    changed = _changed(policy, edit)
    after = {t["name"]: t for t in export_tools(changed, "ops-agent", "openai")}
    assert "identify_device" in before and "identify_device" not in after
    props = after["shadow_update"]["parameters"]["properties"]
    assert "therm-011" in props["device"]["enum"]
    assert "therm-011" not in before["shadow_update"]["parameters"]["properties"]["device"]["enum"]
    target = props["desired"]["properties"]["target_temp_c"]["anyOf"][0]
    assert target["maximum"] == 26
    assert "mode" not in props["desired"]["properties"]
    assert "never held" in after["config_patch"]["description"]
    # A value the old policy allowed and the new one refuses no longer validates.
    call = {"tenant": "acme", "device": "therm-001", "desired": {"target_temp_c": 28}}
    schema_before = before["shadow_update"]["parameters"]
    schema_after = after["shadow_update"]["parameters"]
    assert validates(schema_before, complete(call, schema_before))
    assert not validates(schema_after, complete(call, schema_after))


def test_long_name_lists_fall_back_to_the_name_pattern(policy: CompiledPolicy) -> None:
    def many(raw: dict[str, Any]) -> None:
        raw["tenants"]["acme"]["devices"].update(
            {f"sensor-{i:04d}": {"type": "thermostat"} for i in range(1200)}
        )

    big = _changed(policy, many)
    spec = next(s for s in specs_of(big) if s.name == "shadow_update")
    for fmt in FORMATS:  # 1,210 devices: too many for an enum in any format
        device = input_schema(spec, fmt)["properties"]["device"]
        assert "enum" not in device and device["pattern"] == NAME_PATTERN
    schema = input_schema(spec, "openai")
    assert openai_strict_problems(schema) == []
    ok = complete({"tenant": "acme", "device": "sensor-0042", "desired": {}}, schema)
    assert validates(schema, ok)
    assert not validates(schema, {**ok, "device": "therm-001/commands/reboot"})
    assert not validates(schema, {**ok, "tenant": "globex"})  # the tenant stays an enum
    # A short list keeps its enum unless told otherwise.
    small = next(s for s in specs_of(policy) if s.name == "shadow_update")
    assert "enum" in input_schema(small, "mcp")["properties"]["device"]
    assert "pattern" in input_schema(small, "mcp", max_enum=5)["properties"]["device"]


def test_max_length_becomes_a_pattern_for_openai(policy: CompiledPolicy) -> None:
    def writable_pin(raw: dict[str, Any]) -> None:
        raw["device_types"]["thermostat"]["config"]["admin_pin"]["agent_writable"] = True

    spec = next(
        s for s in specs_of(_changed(policy, writable_pin)) if s.name == "config_patch"
    )
    plain = input_schema(spec, "jsonschema")["properties"]["config"]["properties"]["admin_pin"]
    assert plain["anyOf"][0]["maxLength"] == 8
    strict = input_schema(spec, "openai")
    pin = strict["properties"]["config"]["properties"]["admin_pin"]["anyOf"][0]
    assert "maxLength" not in pin
    call = complete({"tenant": "acme", "device": "therm-001", "config": {}}, strict)
    call["config"]["admin_pin"] = "12345678"
    assert validates(strict, call)
    call["config"]["admin_pin"] = "123456789"
    assert not validates(strict, call)


def test_render_refuses_an_unknown_format(policy: CompiledPolicy) -> None:
    with pytest.raises(ExportError, match="unknown format"):
        render(specs_of(policy)[0], "yaml")


# -- the command ---------------------------------------------------------------------------


def test_cli_prints_the_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tools", "export", str(POLICY_DIR), "--agent", "ops-agent",
                 "--format", "openai", "--token-tools", "shadow_update,shadow_get"])
    assert code == 0
    tools = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in tools] == ["shadow_get", "shadow_update"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "nobody"], "agent 'nobody' is not in the policy"),
        (["--agent", "observer", "--token-tools", "shadow_update"], "has no tools"),
    ],
)
def test_cli_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["tools", "export", str(POLICY_DIR), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_multi_tenant_agent_gets_each_device_only_with_its_tenant(
    policy: CompiledPolicy,
) -> None:
    def two_tenants(raw: dict[str, Any]) -> None:
        raw["agents"]["ops-agent"]["tenants"] = ["acme", "globex"]

    both = _changed(policy, two_tenants)
    spec = next(s for s in specs_of(both) if s.name == "shadow_update")
    own = {"tenant": "globex", "device": "therm-101", "desired": {"target_temp_c": 20}}
    crossed = {"tenant": "acme", "device": "therm-101", "desired": {"target_temp_c": 20}}
    assert decide(both, "ops-agent", spec, own) is Verdict.ALLOW
    assert decide(both, "ops-agent", spec, crossed) is Verdict.DENY
    for fmt in ("mcp", "jsonschema"):  # composition at the root: the pair is tied
        schema = input_schema(spec, fmt)
        assert validates(schema, own)
        assert not validates(schema, crossed)
        assert mcp_types.Tool.model_validate(render(spec, "mcp"))
    for fmt in ("openai", "anthropic"):  # no root composition: one list, the guard decides
        schema = input_schema(spec, fmt)
        assert "anyOf" not in schema
        assert validates(schema, complete(crossed, schema))
    push = next(s for s in specs_of(both) if s.name == "group_config_push")
    schema = input_schema(push, "mcp")
    assert validates(schema, {"tenant": "globex", "group": "lab", "config": {}})
    assert not validates(schema, {"tenant": "acme", "group": "lab", "config": {}})


@pytest.mark.parametrize(
    ("token_agent", "message"),
    [("observer", "the token is for agent 'observer', not 'ops-agent'"), (None, "No such file")],
)
def test_mcp_refuses_a_wrong_or_missing_token_file_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, token_agent: str | None, message: str
) -> None:
    token_file = tmp_path / "agent.token"
    if token_agent is not None:
        token_file.write_text(issue_token(b"k" * 32, token_agent, ttl_s=60))
    code = main(["mcp", "--agent", "ops-agent", "--guard", "127.0.0.1:1", "--token-file",
                 str(token_file), "--policy", str(POLICY_DIR)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
