"""A tool call's arguments -> the MQTT message it stands for.

Pure functions (no I/O). Only the *shape* needed to build a message is checked here: a
topic variable must be one topic level (a registry-shaped name, so an argument can never
reach another topic), the payload parameters must be objects and lists of names. Whether
the tenant, device, value or range is allowed is not decided here: the guard decides and
its reason goes back to the model (one source for each rule). So a call forced past the
schema (another tenant, a value out of range, a field no agent may write) still reaches
the guard and is refused there, with the guard's reason.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from iot_guard.policy_models import FREE_PAYLOADS, NAME_PATTERN

from .tools import ToolSpec

_LEVEL = re.compile(NAME_PATTERN)


class CallError(ValueError):
    """The arguments cannot form a message (a one-line reason for the model)."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    client_token: str | None  # set in shadow updates and config patches to match replies
    replies: tuple[str, ...]  # concrete reply topics the device answers on


def _show(value: object) -> str:
    return json.dumps(value, ensure_ascii=True)[:60]


def fill(template: str, bindings: dict[str, str]) -> str:
    return "/".join(
        bindings[level[1:-1]] if level.startswith("{") and level.endswith("}") else level
        for level in template.split("/")
    )


def bindings_of(spec: ToolSpec, args: dict[str, Any]) -> dict[str, str]:
    """The topic variables of a call, each checked to be one topic level."""
    bindings: dict[str, str] = {}
    for variable in spec.variables:
        value = args.get(variable)
        if value is None:
            raise CallError(f"{variable}: required")
        if not isinstance(value, str) or not _LEVEL.match(value):
            # [MQTT-4.7.1-1]: '/', '+', '#' would change which topic the message reaches.
            raise CallError(f"{variable}: {_show(value)} is not a name (one topic level)")
        bindings[variable] = value
    if spec.command is not None:
        bindings["command"] = spec.command
    return bindings


def _known_arguments(spec: ToolSpec, args: dict[str, Any]) -> None:
    known = spec.schema.get("properties", {})
    for key in args:
        if key not in known:
            raise CallError(f"{key}: not a parameter of {spec.name}")


def _object_arg(args: dict[str, Any], name: str) -> dict[str, Any]:
    value = args.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CallError(f"{name}: {_show(value)} is not an object")
    return value


def _names_arg(args: dict[str, Any], name: str) -> list[str]:
    value = args.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CallError(f"{name}: {_show(value)} is not a list of names")
    return value


def _set_and_remove(values: dict[str, Any], removed: list[str], what: str) -> dict[str, Any]:
    """``values`` without nulls (null: leave unchanged), plus ``removed`` keys as null."""
    out = {key: value for key, value in values.items() if value is not None}
    for key in removed:
        if key in out:
            raise CallError(f"{key}: both given a value and listed in {what}; choose one")
        out[key] = None
    return out


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def new_client_token() -> str:
    # AWS IoT allows up to 64 bytes; 16 hex digits are unique enough per device.
    return "mcp-" + secrets.token_hex(8)


def to_message(
    spec: ToolSpec, args: dict[str, Any] | None, client_token: str | None = None
) -> Message:
    """The message a publish tool call stands for. Raises CallError on a malformed call."""
    if spec.verb != "publish":
        raise CallError(f"{spec.name} reads; it sends no message")
    args = args or {}
    _known_arguments(spec, args)
    bindings = bindings_of(spec, args)
    topic = fill(spec.topic, bindings)
    replies = tuple(fill(r, bindings) for r in spec.replies)
    token: str | None = None
    if spec.payload == "shadow_update":
        token = client_token or new_client_token()
        desired = _set_and_remove(
            _object_arg(args, "desired"), _names_arg(args, "remove_desired"), "remove_desired"
        )
        doc: dict[str, Any] = {"state": {"desired": desired}}
        version = args.get("version")
        if version is not None:
            doc["version"] = version
        doc["clientToken"] = token
        payload = _dumps(doc)
    elif spec.payload == "config_patch":
        token = client_token or new_client_token()
        patch = _set_and_remove(_object_arg(args, "config"), _names_arg(args, "reset"), "reset")
        patch["clientToken"] = token
        payload = _dumps(patch)
    elif spec.payload == "command":
        arguments = {k: v for k, v in _object_arg(args, "arguments").items() if v is not None}
        payload = _dumps(arguments) if arguments else b""
    elif spec.payload in FREE_PAYLOADS:
        body = args.get("payload")
        if not isinstance(body, str):
            raise CallError("payload must be the message body as text")
        payload = body.encode()  # sent as written: the guard judges kind, size and schema
    else:
        payload = b""
    return Message(topic, payload, token, replies)


def read_topic(spec: ToolSpec, args: dict[str, Any] | None) -> str:
    """The topic (or filter) a read tool subscribes to."""
    if spec.verb != "subscribe":
        raise CallError(f"{spec.name} sends a message; it is not a read tool")
    args = args or {}
    _known_arguments(spec, args)
    return fill(spec.topic, bindings_of(spec, args))
