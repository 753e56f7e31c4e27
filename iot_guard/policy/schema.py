"""The JSON Schema of one policy file, generated from the pydantic models.

Editors (VS Code's YAML extension, JetBrains) complete and check policy files with it:
put ``# yaml-language-server: $schema=<path to schema.json>`` at the top of a file.
The committed ``schema.json`` is regenerated with ``python -m iot_guard.policy.schema``
and a unit test keeps it equal to what the models generate.

The schema checks one file's shape only; what spans files (an agent naming a tool
defined elsewhere, one tenant in two files) is checked by ``iot-guard policy check``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..policy_models import PolicyDocument

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SCHEMA_ID = "https://iot-guard.dev/schemas/policy.json"


def _tighten(node: Any) -> None:
    """Name-keyed maps: a key that is not a valid name is an error, not an extra key."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _tighten(value)
    elif isinstance(node, list):
        for value in node:
            _tighten(value)


def policy_json_schema() -> dict[str, Any]:
    """One policy file: an object with the optional sections device_types, tenants, tools,
    agents, approvals (every section may be split across files)."""
    schema: dict[str, Any] = PolicyDocument.model_json_schema()
    _tighten(schema)
    tool = schema["$defs"]["Tool"]
    # `topic: T` is accepted as shorthand for `topics: [T]` (a before-validator in the
    # model, so pydantic does not see it): describe it, and require exactly one of them.
    tool["properties"]["topic"] = {
        "description": "A single topic template (short for topics: [T]).",
        "title": "Topic",
        "type": "string",
    }
    tool["required"] = [r for r in tool.get("required", []) if r != "topics"]
    tool["oneOf"] = [{"required": ["topic"]}, {"required": ["topics"]}]
    # schema_file goes with payload kind json_schema (a model validator enforces it too).
    tool["if"] = {"properties": {"payload": {"const": "json_schema"}}, "required": ["payload"]}
    tool["then"] = {"required": ["schema_file"]}
    tool["else"] = {"not": {"required": ["schema_file"]}}
    schema["title"] = "iot-guard policy file"
    schema["description"] = (
        "One file of an iot-guard policy directory. Every *.yaml file at the directory's top "
        "level is merged; each may hold any of the sections."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def render() -> str:
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def write(path: Path = SCHEMA_PATH) -> None:
    path.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH
    write(target)
    print(f"wrote {target}")
