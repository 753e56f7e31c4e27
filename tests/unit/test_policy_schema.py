"""The published JSON Schema: generated from the models, committed, never drifting."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from iot_guard.policy.schema import SCHEMA_PATH, policy_json_schema, render

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def test_committed_schema_equals_the_generated_one() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), (
        "regenerate with: python -m iot_guard.policy.schema"
    )


def test_schema_has_the_optional_sections_and_descriptions() -> None:
    schema = policy_json_schema()
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"device_types", "tenants", "tools", "agents", "approvals",
                                             "limits", "anomaly"}
    assert "required" not in schema
    # every field of every model carries help text for editors
    for name, definition in schema["$defs"].items():
        assert definition.get("description"), name
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field}"


def test_tool_accepts_topic_shorthand_and_unknown_keys_are_refused() -> None:
    tool = policy_json_schema()["$defs"]["Tool"]
    assert "topic" in tool["properties"] and "topics" not in tool.get("required", [])
    assert tool["oneOf"] == [{"required": ["topic"]}, {"required": ["topics"]}]
    assert tool["additionalProperties"] is False


def _valid(instance: object, schema: dict, root: dict) -> bool:
    """A small JSON Schema check covering the keywords this schema uses."""
    if "$ref" in schema:
        return _valid(instance, root["$defs"][schema["$ref"].split("/")[-1]], root)
    if "anyOf" in schema and not any(_valid(instance, s, root) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(_valid(instance, s, root) for s in schema["oneOf"]) != 1:
        return False
    if "enum" in schema and instance not in schema["enum"]:
        return False
    if isinstance(instance, dict) and any(r not in instance for r in schema.get("required", [])):
        return False
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(instance, dict):
            return False
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key, value in instance.items():
            if key in props:
                if not _valid(value, props[key], root):
                    return False
            elif patterns:
                pattern, sub = next(iter(patterns.items()))
                if not re.match(pattern, key) or not _valid(value, sub, root):
                    return False
            elif schema.get("additionalProperties") is False:
                return False
    elif kind == "array":
        if not isinstance(instance, list):
            return False
        return all(_valid(x, schema.get("items", {}), root) for x in instance)
    elif kind == "string":
        return isinstance(instance, str)
    elif kind == "integer":
        return isinstance(instance, int) and not isinstance(instance, bool)
    elif kind == "number":
        return isinstance(instance, (int, float)) and not isinstance(instance, bool)
    elif kind == "boolean":
        return isinstance(instance, bool)
    elif kind == "null":
        return instance is None
    return True


def test_example_fleet_files_validate_and_a_typo_does_not() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    for path in sorted(POLICY_DIR.glob("*.yaml")):
        assert _valid(yaml.safe_load(path.read_text()), schema, schema), path
    tools = yaml.safe_load((POLICY_DIR / "tools.yaml").read_text())
    tools["tools"]["shadow_update"]["conditons"] = {}
    assert not _valid(tools, schema, schema)
    del tools["tools"]["shadow_update"]["conditons"]
    tools["tools"]["shadow_update"]["topics"] = ["a/b"]  # topic and topics together
    assert not _valid(tools, schema, schema)
