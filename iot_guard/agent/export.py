"""Render an agent's tool definitions for an LLM API: OpenAI, Anthropic, MCP, JSON Schema.

Format rules (checked against the providers' documentation, late 2026):

- ``openai`` (Responses API function tools; ``openai-chat`` wraps the same under
  ``function`` for Chat Completions) with ``strict: true``: every object has
  ``additionalProperties: false`` and lists every property in ``required``; an optional
  property is a union with null; the root is an object, not ``anyOf``; supported keywords
  only (``type, enum, anyOf, properties, required, additionalProperties, items, minimum,
  maximum, pattern, ...``: ``maxLength`` becomes a ``pattern``); at most 1,000 enum values
  in a schema and 250 in one list, so longer registry lists fall back to the name pattern.
- ``anthropic`` (Messages API ``tools``): ``name``, ``description``, ``input_schema``.
  Anthropic's ``strict: true`` mode drops ``minimum``/``maximum``/``maxLength`` and allows
  only a couple of dozen optional parameters per request, so a strict schema could not
  refuse an out-of-range value; the export is therefore non-strict with every constraint
  kept (ranges, enums, ``additionalProperties: false``).
- ``mcp`` (MCP ``Tool``): ``name``, ``title``, ``description``, ``inputSchema`` (JSON Schema
  2020-12, root ``type: object``) and ``annotations`` (read-only / destructive hints).
- ``jsonschema``: the canonical definition with its topic template, payload kind, risk,
  whether it can be held, and a 2020-12 ``input_schema``: for runtimes of your own.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .tools import FALLBACK, ExportError, ToolSpec, agent_tool_specs, is_nullable, nullable

if TYPE_CHECKING:  # annotations only: the CLI lists these commands without compiling a policy
    from iot_guard.policy.compiler import CompiledPolicy

FORMATS = ("openai", "openai-chat", "anthropic", "mcp", "jsonschema")
# Longest enum of registry names a format gets before the name pattern replaces it.
DEFAULT_MAX_ENUM = {
    "openai": 250,
    "openai-chat": 250,
    "anthropic": 500,
    "mcp": 1000,
    "jsonschema": 1000,
}
OPENAI_MAX_ENUM_VALUES = 1000  # per schema
OPENAI_MAX_DEPTH = 10
OPENAI_MAX_PROPERTIES = 5000
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Keywords OpenAI strict mode supports (its "Supported schemas" list).
OPENAI_KEYWORDS = frozenset(
    {
        "type", "description", "properties", "required", "additionalProperties", "items",
        "enum", "const", "anyOf", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "multipleOf", "pattern", "format", "minItems", "maxItems",
        "$defs", "$ref", "title",
    }
)


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    """Every schema object under ``node`` (itself included)."""
    if not isinstance(node, dict):
        return
    yield node
    for child in node.get("properties", {}).values():
        yield from _walk(child)
    if "items" in node:
        yield from _walk(node["items"])
    for child in node.get("anyOf", ()):
        yield from _walk(child)


def _enum_count(schema: dict[str, Any]) -> int:
    return sum(len(node.get("enum", ())) for node in _walk(schema))


def _to_pattern(node: dict[str, Any]) -> None:
    """Replace a registry-name enum by the name pattern (the list is too long)."""
    names = node.pop("enum")
    node["pattern"] = node.pop(FALLBACK)
    node["description"] = (
        node.get("description", "").rstrip(".")
        + f" (one of {len(names)} registered names; the guard refuses any other)."
    ).lstrip()


def _fit_enums(schema: dict[str, Any], max_enum: int, total: int | None) -> None:
    lists = [node for node in _walk(schema) if FALLBACK in node]
    for node in lists:
        if len(node["enum"]) > max_enum:
            _to_pattern(node)
    if total is not None:
        left = sorted((n for n in lists if FALLBACK in n), key=lambda n: -len(n["enum"]))
        while left and _enum_count(schema) > total:
            _to_pattern(left.pop(0))
    for node in _walk(schema):
        node.pop(FALLBACK, None)


def _strict(node: dict[str, Any]) -> None:
    """OpenAI strict rules, in place: all properties required, optional = union with null."""
    if node.get("type") == "object" and "properties" in node:
        props = node["properties"]
        for name in props:
            if name not in node.get("required", ()) and not is_nullable(props[name]):
                props[name] = nullable(props[name])
        node["required"] = list(props)
        node["additionalProperties"] = False
    if "maxLength" in node:
        # maxLength is not in OpenAI's supported list; a pattern says the same.
        node["pattern"] = f"^[\\s\\S]{{0,{node.pop('maxLength')}}}$"
    for child in list(node.get("properties", {}).values()) + list(node.get("anyOf", ())):
        _strict(child)
    if isinstance(node.get("items"), dict):
        _strict(node["items"])


def openai_strict_problems(schema: dict[str, Any]) -> list[str]:
    """Why ``schema`` is not accepted by OpenAI strict mode (empty list: it is)."""
    problems: list[str] = []
    if schema.get("type") != "object" or "anyOf" in schema:
        problems.append("the root must be an object schema, not anyOf")

    def visit(node: dict[str, Any], path: str, depth: int) -> None:
        for key in node:
            if key not in OPENAI_KEYWORDS:
                problems.append(f"{path or '/'}: keyword {key!r} is not supported")
        if node.get("type") == "object" or "properties" in node:
            if depth > OPENAI_MAX_DEPTH:
                problems.append(f"{path}: nested deeper than {OPENAI_MAX_DEPTH} objects")
            if node.get("additionalProperties") is not False:
                problems.append(f"{path or '/'}: additionalProperties must be false")
            if set(node.get("required", ())) != set(node.get("properties", {})):
                problems.append(f"{path or '/'}: every property must be required")
            depth += 1
        for name, child in node.get("properties", {}).items():
            visit(child, f"{path}/{name}", depth)
        for i, child in enumerate(node.get("anyOf", ())):
            visit(child, f"{path}/anyOf/{i}", depth)
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{path}/items", depth)

    visit(schema, "", 1)
    if _enum_count(schema) > OPENAI_MAX_ENUM_VALUES:
        problems.append(f"more than {OPENAI_MAX_ENUM_VALUES} enum values")
    if sum(len(n.get("properties", {})) for n in _walk(schema)) > OPENAI_MAX_PROPERTIES:
        problems.append(f"more than {OPENAI_MAX_PROPERTIES} properties")
    return problems


def input_schema(spec: ToolSpec, fmt: str, max_enum: int | None = None) -> dict[str, Any]:
    """The tool's parameters as ``fmt`` wants them."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    schema = copy.deepcopy(spec.schema)
    openai = fmt.startswith("openai")
    limit = DEFAULT_MAX_ENUM[fmt] if max_enum is None else max_enum
    _fit_enums(schema, limit, OPENAI_MAX_ENUM_VALUES if openai else None)
    if openai:
        _strict(schema)
        problems = openai_strict_problems(schema)
        if problems:
            raise ExportError(f"{spec.name}: cannot be made OpenAI-strict: {problems[0]}")
    if fmt in ("mcp", "jsonschema"):
        _tie_tenants(spec, schema)
    if fmt == "jsonschema":
        schema = {"$schema": JSON_SCHEMA_2020_12, **schema}
    return schema


def _tie_tenants(spec: ToolSpec, schema: dict[str, Any]) -> None:
    """For an agent with several tenants: a device (or group) only with its own tenant.

    Only where the format takes composition keywords at the root (MCP input schemas and
    plain JSON Schema 2020-12); OpenAI strict mode and Anthropic tools do not, so there one
    list holds every tenant's names and the guard refuses a mismatched pair.
    """
    paired = spec.paired
    if paired is None or "enum" not in schema["properties"].get(paired, {}):
        return  # a single tenant, or a list too long to enumerate (the pattern stands)
    schema["anyOf"] = [
        {
            "properties": {"tenant": {"const": tenant}, paired: {"enum": list(names)}},
            "required": ["tenant", paired],
        }
        for tenant, names in spec.by_tenant
    ]


def render(spec: ToolSpec, fmt: str, max_enum: int | None = None) -> dict[str, Any]:
    """One tool definition in ``fmt``."""
    if not TOOL_NAME.match(spec.name):
        raise ExportError(f"tool name {spec.name!r} does not match {TOOL_NAME.pattern}")
    params = input_schema(spec, fmt, max_enum)
    if fmt == "openai":
        return {
            "type": "function",
            "name": spec.name,
            "description": spec.description,
            "parameters": params,
            "strict": True,
        }
    if fmt == "openai-chat":
        return {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": params,
                "strict": True,
            },
        }
    if fmt == "anthropic":
        return {"name": spec.name, "description": spec.description, "input_schema": params}
    if fmt == "mcp":
        reads = spec.verb == "subscribe"
        return {
            "name": spec.name,
            "title": spec.name.replace("_", " ").capitalize(),
            "description": spec.description,
            "inputSchema": params,
            "annotations": {
                "readOnlyHint": reads,
                "destructiveHint": (not reads) and spec.may_hold,
                "idempotentHint": reads or spec.payload == "none",
                "openWorldHint": True,
            },
        }
    return {
        "name": spec.name,
        "tool": spec.tool,
        "verb": spec.verb,
        "topic": spec.topic,
        "payload": spec.payload,
        "command": spec.command,
        "risk": spec.risk,
        "may_hold": spec.may_hold,
        "replies": list(spec.replies),
        "description": spec.description,
        "input_schema": params,
    }


def export_tools(
    policy: CompiledPolicy,
    agent_id: str,
    fmt: str,
    tools: Iterable[str] | None = None,
    max_enum: int | None = None,
) -> list[dict[str, Any]]:
    """The agent's allowlist as tool definitions in ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return [render(spec, fmt, max_enum) for spec in agent_tool_specs(policy, agent_id, tools)]
