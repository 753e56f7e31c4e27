"""An agent's allowlist as format-neutral tool definitions (:class:`ToolSpec`).

Everything here is read from the policy: the agent's tools (narrowed like a token narrows
them), its tenants, the registry's devices, groups and commands, and the device types'
fields. Nothing is decided here: the schema only keeps the model from *forming* most calls
the policy would refuse; the guard still judges every message (it is the one source of
each rule).

The canonical schema of a definition is JSON Schema 2020-12 with two conventions the
renderers in ``export`` rely on:

- a property not listed in ``required`` is optional and accepts ``null`` (null and absent
  both mean "leave it alone"), so the OpenAI strict renderer can make every property
  required without changing what a call means;
- a list of registry names carries ``x-fallback-pattern``: the renderer may replace the
  ``enum`` by that pattern when the list is too long for its format.

Payload shapes (the collision the issue names: in a shadow update or a JSON merge patch
``null`` removes a key, while in a strict tool schema ``null`` is how an optional field
says "not given"). The model therefore never writes a payload ``null``; removal is its own
parameter:

- shadow update: ``desired`` (a value sets the key, null leaves it unchanged),
  ``remove_desired`` (names of desired keys to delete: AWS ``"key": null``), ``version``
  (null: unconditional);
- config patch / group push: ``config`` (null: unchanged) and ``reset`` (names of fields
  to reset to the device's default: RFC 7396 ``"key": null``);
- command: ``arguments`` with the command's payload fields (null: not sent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iot_guard.policy_models import (
    DEFAULT_ANY_MAX_BYTES,
    DEFAULT_JSON_MAX_BYTES,
    FREE_PAYLOADS,
    NAME_PATTERN,
    RISK_ORDER,
    FieldSpec,
    PolicyDocument,
    Tool,
)

if TYPE_CHECKING:  # annotations only: the CLI lists these commands without compiling a policy
    from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy

FALLBACK = "x-fallback-pattern"
NULL: dict[str, Any] = {"type": "null"}

# Topic layouts with a reply (DESIGN.md, "Topic layout"): request suffix -> reply suffixes.
_REPLIES = {
    "shadow/get": ("shadow/get/accepted", "shadow/get/rejected"),
    "shadow/update": ("shadow/update/accepted", "shadow/update/rejected"),
    "config/patch": ("config/result",),
}


class ExportError(ValueError):
    """The agent or its tools cannot be exported (one line for the CLI)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool definition the model sees, and what the MCP server needs to run it."""

    name: str  # what the model calls: the policy tool's name, with a suffix when split
    tool: str  # the policy tool
    verb: str  # publish | subscribe
    topic: str  # topic template ({tenant}, {device}, {group} filled from the arguments)
    payload: str  # payload kind: shadow_update | config_patch | command | none | any | json...
    command: str | None  # the command a command tool sends (bound per definition)
    risk: str  # the tool's own risk class
    may_hold: bool  # can a call be held for human approval?
    description: str
    schema: dict[str, Any]  # canonical input schema (see the module docstring)
    variables: tuple[str, ...]  # topic variables that are parameters, in topic order
    replies: tuple[str, ...]  # reply topic templates the device answers on (may be empty)
    # For an agent with several tenants: which names of ``paired`` (device or group)
    # belong to which tenant, so formats that allow it can tie the two together.
    paired: str | None = None
    by_tenant: tuple[tuple[str, tuple[str, ...]], ...] = ()


# -- schemas of values ------------------------------------------------------------------


def _number(value: float, integer: bool) -> int | float:
    return int(value) if integer or float(value).is_integer() else value


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    """The JSON Schema of one config or payload field (not nullable)."""
    schema: dict[str, Any] = {"type": spec.type}
    integer = spec.type == "integer"
    if spec.enum is not None:
        schema["enum"] = list(spec.enum)
    if spec.minimum is not None:
        low = math.ceil(spec.minimum) if integer else spec.minimum
        schema["minimum"] = _number(low, integer)
    if spec.maximum is not None:
        high = math.floor(spec.maximum) if integer else spec.maximum
        schema["maximum"] = _number(high, integer)
    if spec.max_length is not None and spec.enum is None:
        schema["maxLength"] = spec.max_length
    return schema


def nullable(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """``schema`` or null, with the description on the union."""
    out: dict[str, Any] = {"anyOf": [schema, dict(NULL)]}
    if description:
        out["description"] = description
    return out


def is_nullable(schema: dict[str, Any]) -> bool:
    return any(s == NULL for s in schema.get("anyOf", ())) or schema.get("type") == "null"


def _merge_specs(specs: list[FieldSpec]) -> FieldSpec | None:
    """One spec for a field several device types declare: the union of what they accept.

    The guard checks each device against its own type; the schema can only say what any
    of them accepts. Fields of different JSON types cannot be merged and are left out.
    """
    first = specs[0]
    if all(s == first for s in specs):
        return first
    if any(s.type != first.type for s in specs):
        return None
    enums = [s.enum for s in specs]
    enum: list[Any] | None = None
    if all(e is not None for e in enums):
        enum = sorted({v for e in enums for v in (e or ())}, key=str)
    lows = [s.minimum for s in specs]
    highs = [s.maximum for s in specs]
    lengths = [s.max_length for s in specs]
    return first.model_copy(
        update={
            "enum": enum,
            "minimum": None if None in lows else min(v for v in lows if v is not None),
            "maximum": None if None in highs else max(v for v in highs if v is not None),
            "max_length": None if None in lengths else max(v for v in lengths if v is not None),
            "risk": max((s.risk for s in specs), key=RISK_ORDER.__getitem__),
            "description": first.description,
        }
    )


def _writable_fields(doc: PolicyDocument, types: Iterable[str]) -> dict[str, FieldSpec]:
    """Config fields an agent may write on every listed device type (merged)."""
    by_name: dict[str, list[FieldSpec]] = {}
    for type_name in sorted(set(types)):
        device_type = doc.device_types.get(type_name)
        if device_type is None:
            continue
        for name, spec in device_type.config.items():
            if spec.agent_writable:  # fields no agent may write are absent (issue 10)
                by_name.setdefault(name, []).append(spec)
    merged = {name: _merge_specs(specs) for name, specs in sorted(by_name.items())}
    return {name: spec for name, spec in merged.items() if spec is not None}


def _risk_text(risk: str, threshold: str | None) -> str:
    if threshold is not None and RISK_ORDER[risk] > RISK_ORDER[threshold]:
        return f"risk {risk}: held for human approval"
    return f"risk {risk}"


def _field_description(spec: FieldSpec, threshold: str | None, unchanged: str) -> str:
    parts = [spec.description.rstrip(".") if spec.description else None]
    bounds = []
    if spec.minimum is not None:
        bounds.append(f">= {_number(spec.minimum, spec.type == 'integer')}")
    if spec.maximum is not None:
        bounds.append(f"<= {_number(spec.maximum, spec.type == 'integer')}")
    if spec.max_length is not None:
        bounds.append(f"at most {spec.max_length} characters")
    if spec.enum is not None:
        bounds.append("one of " + ", ".join(str(v) for v in spec.enum))
    parts.append(f"{spec.type}{' ' + ', '.join(bounds) if bounds else ''}")
    parts.append(_risk_text(spec.risk, threshold))
    parts.append(unchanged)
    return "; ".join(p for p in parts if p) + "."


def _fields_object(
    fields: dict[str, FieldSpec], threshold: str | None, unchanged: str, description: str
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            name: nullable(field_schema(spec), _field_description(spec, threshold, unchanged))
            for name, spec in fields.items()
        },
        "required": [],
        "additionalProperties": False,
    }


def _names_list(names: list[str], description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": description,
        "items": {"type": "string", "enum": names},
    }


# -- the agent's domain -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Domain:
    tenants: list[str]
    devices: list[str]
    groups: list[str]
    device_types: list[str]  # types of the agent's devices
    group_types: list[str]  # types of the members of the agent's groups


def _domain(doc: PolicyDocument, agent: AgentPolicy) -> _Domain:
    tenants = sorted(agent.tenants)
    devices: set[str] = set()
    groups: set[str] = set()
    device_types: set[str] = set()
    group_types: set[str] = set()
    for name in tenants:
        tenant = doc.tenants[name]
        devices.update(tenant.devices)
        device_types.update(d.type for d in tenant.devices.values())
        for group, members in tenant.groups.items():
            groups.add(group)
            group_types.update(tenant.devices[m].type for m in members if m in tenant.devices)
    return _Domain(
        tenants, sorted(devices), sorted(groups), sorted(device_types), sorted(group_types)
    )


def _variable_schema(variable: str, names: list[str], tenants: list[str]) -> dict[str, Any]:
    what = {
        "tenant": "Tenant",
        "device": "Device",
        "group": "Device group",
        "command": "Command",
    }[variable]
    where = "" if variable == "tenant" or len(tenants) > 1 else f" of tenant {tenants[0]}"
    if variable != "tenant" and len(tenants) > 1:
        where = f" of the given tenant ({', '.join(tenants)})"
    return {
        "type": "string",
        "description": f"{what}{where}.",
        "enum": names,
        FALLBACK: NAME_PATTERN,
    }


def _template_variables(template: str) -> list[str]:
    return [level[1:-1] for level in template.split("/") if level.startswith("{")]


def _suffix(template: str) -> str:
    """The literal levels after the last variable: 'shadow_get_accepted' and the like."""
    levels = template.split("/")
    last = max((i for i, level in enumerate(levels) if level.startswith("{")), default=-1)
    tail = [lv for lv in levels[last + 1 :] if lv not in ("+", "#")]
    return "_".join(tail).replace("-", "_").replace(".", "_")


def _replies(template: str) -> tuple[str, ...]:
    for request, replies in _REPLIES.items():
        if template.endswith("/" + request) and "{device}" in template:
            base = template[: -len(request)]
            return tuple(base + reply for reply in replies)
    return ()


def _readable(agent: AgentPolicy, template: str, tenants: list[str]) -> bool:
    """May the agent subscribe to this template for each of its tenants (others as '+')?"""
    if not tenants:
        return False
    for tenant in tenants:
        levels = [
            tenant if lv == "{tenant}" else ("+" if lv.startswith("{") else lv)
            for lv in template.split("/")
        ]
        if not agent.decide_subscribe("/".join(levels), 1).allowed:
            return False
    return True


# -- building the definitions ---------------------------------------------------------------


def agent_tool_specs(
    policy: CompiledPolicy, agent_id: str, tools: Iterable[str] | None = None
) -> list[ToolSpec]:
    """Every tool definition of ``agent_id`` (narrowed to ``tools`` as a token would)."""
    narrowed = frozenset(tools) if tools is not None else None
    agent = policy.for_agent(agent_id, narrowed)
    if agent is None:
        raise ExportError(f"agent {agent_id!r} is not in the policy")
    doc = policy.document
    if narrowed is not None:
        unknown = sorted(narrowed - set(doc.agents[agent_id].tools))
        if unknown:
            raise ExportError(f"agent {agent_id!r} has no tools {unknown}")
    domain = _domain(doc, agent)
    specs: list[ToolSpec] = []
    for tool_name in agent.tools:
        tool = doc.tools[tool_name]
        split = len(tool.topics) > 1
        for template in tool.topics:
            for spec in _specs_for_template(doc, agent, domain, tool_name, tool, template):
                if split:
                    suffix = _suffix(template) or str(tool.topics.index(template))
                    # read_shadow + shadow_get_accepted -> read_shadow_get_accepted
                    last_word = tool_name.rsplit("_", 1)[-1]
                    if suffix.startswith(last_word + "_"):
                        suffix = suffix[len(last_word) + 1 :]
                    spec = _renamed(spec, f"{spec.name}_{suffix}")
                specs.append(_with_pairs(spec, doc, domain.tenants))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ExportError(f"two exported tools would be named {spec.name!r}")
        seen.add(spec.name)
    return specs


def _renamed(spec: ToolSpec, name: str) -> ToolSpec:
    return dataclasses.replace(spec, name=name[:64])


def _with_pairs(spec: ToolSpec, doc: PolicyDocument, tenants: list[str]) -> ToolSpec:
    """Record which devices (or groups) belong to which tenant, for multi-tenant agents."""
    paired = next((v for v in ("device", "group") if v in spec.variables), None)
    if paired is None or "tenant" not in spec.variables or len(tenants) < 2:
        return spec
    by_tenant = tuple(
        (
            t,
            tuple(sorted(doc.tenants[t].devices if paired == "device" else doc.tenants[t].groups)),
        )
        for t in tenants
    )
    return dataclasses.replace(spec, paired=paired, by_tenant=by_tenant)


def _specs_for_template(
    doc: PolicyDocument,
    agent: AgentPolicy,
    domain: _Domain,
    tool_name: str,
    tool: Tool,
    template: str,
) -> list[ToolSpec]:
    variables = _template_variables(template)
    threshold = tool.conditions.approval_above
    types = domain.group_types if "group" in variables else domain.device_types
    names = {"tenant": domain.tenants, "device": domain.devices, "group": domain.groups}
    topic_params = {
        v: _variable_schema(v, names[v], domain.tenants) for v in variables if v != "command"
    }
    base = (tool.description or f"{tool.verb} {template}").rstrip(".") + "."
    replies = _replies(template) if tool.verb == "publish" else ()
    replies = tuple(r for r in replies if _readable(agent, r, domain.tenants))

    if tool.verb == "subscribe":
        text = (
            f"{base} Read-only: returns the latest message on {template} (a retained one "
            f"at once, otherwise the next one within the timeout). Risk {tool.risk}; never held."
        )
        schema = _object(topic_params, list(topic_params))
        return [
            ToolSpec(tool_name, tool_name, "subscribe", template, "none", None, tool.risk,
                     False, text, schema, tuple(v for v in variables if v != "command"), ())
        ]

    if tool.payload == "command":
        commands = _commands(doc, types, tool)
        out = []
        for command in commands:
            fields = _command_fields(doc, types, command)
            risk = _command_risk(doc, types, command)
            base_risk = max((tool.risk, risk), key=RISK_ORDER.__getitem__)
            held = threshold is not None and RISK_ORDER[base_risk] > RISK_ORDER[threshold]
            risky_args = {
                n: s.risk
                for n, s in fields.items()
                if threshold is not None and RISK_ORDER[s.risk] > RISK_ORDER[threshold]
            }
            effective = max([base_risk, *risky_args.values()], key=RISK_ORDER.__getitem__)
            params = dict(topic_params)
            required = list(topic_params)
            if fields:
                required_fields = [n for n, s in fields.items() if s.required]
                args = {
                    "type": "object",
                    "description": f"Arguments of the {command} command.",
                    "properties": {
                        n: (field_schema(s) | _desc(_field_description(s, None, ""))
                            if s.required
                            else nullable(field_schema(s),
                                          _field_description(s, None, "null: not sent")))
                        for n, s in fields.items()
                    },
                    "required": required_fields,
                    "additionalProperties": False,
                }
                params["arguments"] = args
                required.append("arguments")
            text = (
                f"{base} Sends the {command} command: publishes to "
                f"{template.replace('{command}', command)} (QoS 1). "
                + _hold_text(threshold, effective, held, risky_args)
            )
            name = tool_name if len(commands) == 1 else f"{tool_name}_{command}"
            out.append(
                ToolSpec(name, tool_name, "publish", template, "command", command, tool.risk,
                         held or bool(risky_args), text, _object(params, required),
                         tuple(v for v in variables if v != "command"), replies)
            )
        return out

    params = dict(topic_params)
    required = list(topic_params)
    risky: dict[str, str] = {}
    if tool.payload in ("shadow_update", "config_patch"):
        fields = _writable_fields(doc, types)
        risky = {
            n: s.risk
            for n, s in fields.items()
            if threshold is not None and RISK_ORDER[s.risk] > RISK_ORDER[threshold]
        }
        names_of_fields = list(fields)
        if tool.payload == "shadow_update":
            params["desired"] = _fields_object(
                fields, threshold, "null: leave unchanged",
                "Desired state to set. A value sets the key; null leaves it unchanged "
                "(to delete a key use remove_desired).",
            )
            params["remove_desired"] = _names_list(
                names_of_fields, "Desired keys to delete from the shadow (sent as null)."
            )
            params["version"] = {
                "type": "integer",
                "minimum": 0,
                "description": "Apply only if the shadow is at this version (null: "
                "unconditional); a stale version is rejected by the device (409).",
            }
            required.append("desired")
            shape = (
                "Set values in desired (null leaves a field unchanged); list keys to delete "
                "in remove_desired; version makes the update conditional. The device answers "
                "with shadow/update/accepted or rejected."
            )
        else:
            params["config"] = _fields_object(
                fields, threshold, "null: leave unchanged",
                "Config fields to change. A value sets the field; null leaves it unchanged "
                "(to reset a field use reset).",
            )
            params["reset"] = _names_list(
                names_of_fields,
                "Config fields to reset to the device's default (JSON merge patch null).",
            )
            required.append("config")
            target = "every device of the group" if "group" in variables else "the device"
            shape = (
                f"A JSON merge patch (RFC 7396) of {target}'s config: set values in config "
                "(null leaves a field unchanged); list fields to reset in reset."
            )
    elif tool.payload in FREE_PAYLOADS:
        limit = tool.max_bytes or (
            DEFAULT_ANY_MAX_BYTES if tool.payload == "any" else DEFAULT_JSON_MAX_BYTES
        )
        what = {
            "any": "The message body, as text",
            "json": "One JSON object, written as JSON text",
            "json_schema": f"One JSON object valid against the policy's schema "
                           f"{tool.schema_file}, written as JSON text",
        }[tool.payload]
        # Text, not an object: strict modes (OpenAI) cannot express an open object, and the
        # guard validates the body exactly anyway (kind, size, depth, schema).
        params["payload"] = {"type": "string", "maxLength": limit,
                             "description": f"{what} (at most {limit} bytes)."}
        required.append("payload")
        shape = f"{what}; the guard checks it before anything is sent."
    else:
        shape = "Sends an empty message."
    effective = max([tool.risk, *risky.values()], key=RISK_ORDER.__getitem__)
    held_always = threshold is not None and RISK_ORDER[tool.risk] > RISK_ORDER[threshold]
    may_hold = held_always or bool(risky)
    text = (
        f"{base} Publishes to {template} (QoS 1). {shape} "
        + _hold_text(threshold, tool.risk if held_always else effective, held_always, risky)
    )
    return [
        ToolSpec(tool_name, tool_name, "publish", template, tool.payload, None, tool.risk,
                 may_hold, text, _object(params, required), tuple(variables), replies)
    ]


def _desc(text: str) -> dict[str, Any]:
    return {"description": text}


def _hold_text(threshold: str | None, risk: str, always: bool, risky: Mapping[str, str]) -> str:
    if threshold is None:
        return f"Risk {risk}; never held for approval."
    if always:
        return (
            f"Risk {risk}: always held for human approval (threshold {threshold}); the "
            "result gives an approval id to follow."
        )
    if risky:
        listed = ", ".join(f"{n} ({r})" for n, r in risky.items())
        return (
            f"Risk low to {risk}: a call touching {listed} is held for human approval "
            f"(threshold {threshold}); the result then gives an approval id to follow."
        )
    return f"Risk {risk}; not held for approval (threshold {threshold})."


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # Convention (module docstring): an optional property accepts null.
    for name, schema in properties.items():
        if name not in required and not is_nullable(schema):
            inner = {k: v for k, v in schema.items() if k != "description"}
            properties[name] = nullable(inner, schema.get("description"))
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _commands(doc: PolicyDocument, types: list[str], tool: Tool) -> list[str]:
    available = {c for t in types for c in doc.device_types[t].commands}
    allowed = tool.conditions.commands
    return sorted(available if allowed is None else available & set(allowed))


def _command_fields(doc: PolicyDocument, types: list[str], command: str) -> dict[str, FieldSpec]:
    by_name: dict[str, list[FieldSpec]] = {}
    for t in types:
        spec = doc.device_types[t].commands.get(command)
        if spec is None:
            continue
        for name, field in spec.payload.items():
            if field.agent_writable:
                by_name.setdefault(name, []).append(field)
    merged = {name: _merge_specs(specs) for name, specs in sorted(by_name.items())}
    return {name: spec for name, spec in merged.items() if spec is not None}


def _command_risk(doc: PolicyDocument, types: list[str], command: str) -> str:
    risks = [
        doc.device_types[t].commands[command].risk
        for t in types
        if command in doc.device_types[t].commands
    ]
    return max(risks or ["low"], key=RISK_ORDER.__getitem__)
