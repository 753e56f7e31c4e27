"""Payload kinds for any topic layout: ``any``, ``json`` and ``json_schema``.

Built once per tool at policy load (a JSON Schema is compiled there, never per
packet); ``check(payload)`` is the per-packet call and never raises.

- ``any``: opaque bytes, at most ``max_bytes``.
- ``json``: one well-formed JSON object, parsed strictly (``jsondoc``: duplicate keys,
  NaN/Infinity, numbers that overflow a double, lone surrogates and invalid UTF-8 are
  refused), at most ``max_bytes`` and ``max_depth``.
- ``json_schema``: any JSON value, parsed as strictly, that a Draft 2020-12 schema
  accepts. The library is ``jsonschema`` (4.x): it implements Draft 2020-12 fully and
  is maintained; ``fastjsonschema`` is faster but stops at draft 7. ``$ref`` resolves
  only inside the schema file (no retrieval from the network or disk: fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from iot_guard.policy_models import (
    DEFAULT_ANY_MAX_BYTES,
    DEFAULT_JSON_MAX_BYTES,
    DEFAULT_JSON_MAX_DEPTH,
)

from .jsondoc import kind_name, parse_json

_REASON_LIMIT = 200
_BASE_URI = "urn:iot-guard:payload-schema"


class SchemaProblem(ValueError):
    """A schema that does not compile: ``path`` is where in the schema (JSON keys), or
    ``line`` (1-based) for a file that is not JSON."""

    def __init__(self, message: str, path: tuple[str | int, ...] = (), line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line


def compile_schema(schema: object) -> Draft202012Validator:
    """A validator for ``schema`` (Draft 2020-12), or SchemaProblem saying where it is wrong."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaProblem(f"a JSON Schema is an object or a boolean, not {kind_name(schema)}")
    declared = schema.get("$schema") if isinstance(schema, dict) else None
    if declared is not None and declared not in (
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    ):
        raise SchemaProblem(
            f"$schema is {declared!r}; the guard validates with Draft 2020-12 "
            "(https://json-schema.org/draft/2020-12/schema)",
            ("$schema",),
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaProblem(exc.message, tuple(exc.path)) from None
    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
    resolver = registry.resolver(base_uri=_BASE_URI)
    for path, ref in _refs(schema, ()):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise SchemaProblem(
                f"$ref {ref!r} does not resolve inside this schema (the guard never fetches "
                "schemas: use #/$defs/...)",
                path,
            ) from None
    return Draft202012Validator(schema, registry=registry)


def _refs(node: object, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path + (key,), value
            else:
                yield from _refs(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, path + (i,))


def _ascii(text: str) -> str:
    # A reason string must be valid UTF-8 without U+0000 [MQTT-1.5.4-1]: keep it ASCII.
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


class FreeFormValidator:
    """One tool's payload check for the kinds any, json and json_schema."""

    __slots__ = ("kind", "max_bytes", "max_depth", "schema_name", "_validator")

    def __init__(
        self,
        kind: str,
        max_bytes: int | None = None,
        max_depth: int | None = None,
        validator: Draft202012Validator | None = None,
        schema_name: str | None = None,
    ):
        if kind not in ("any", "json", "json_schema"):
            raise ValueError(f"not a free-form payload kind: {kind!r}")
        if kind == "json_schema" and validator is None:
            raise ValueError("payload kind json_schema needs a compiled schema")
        self.kind = kind
        default = DEFAULT_ANY_MAX_BYTES if kind == "any" else DEFAULT_JSON_MAX_BYTES
        self.max_bytes = default if max_bytes is None else max_bytes
        self.max_depth = DEFAULT_JSON_MAX_DEPTH if max_depth is None else max_depth
        self.schema_name = schema_name
        self._validator = validator

    def check(self, payload: bytes) -> str | None:
        """None when the payload is acceptable, else the reason (never raises)."""
        size = len(payload)
        if size > self.max_bytes:
            return f"payload is {size} bytes; the limit is {self.max_bytes}"
        if self.kind == "any":
            return None
        value, problem = parse_json(payload, max_bytes=self.max_bytes, max_depth=self.max_depth)
        if problem:
            return problem
        if self.kind == "json":
            if type(value) is not dict:
                return f"payload must be a JSON object, not {kind_name(value)}"
            return None
        validator = self._validator
        assert validator is not None
        try:
            if validator.is_valid(value):
                return None
            error = best_match(validator.iter_errors(value))
        except Exception as exc:  # noqa: BLE001 - a schema that cannot evaluate refuses
            return _ascii(f"schema {self.schema_name} could not be evaluated: {exc}")
        where = "payload" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        return _ascii(f"{where}: {error.message} (schema {self.schema_name})")


def load_schema_text(text: str) -> object:
    """A schema file's JSON, parsed strictly (duplicate keys refused, as in payloads)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaProblem(f"not JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    data = text.encode("utf-8")
    value, problem = parse_json(data, max_bytes=len(data), max_depth=64)
    if problem:
        raise SchemaProblem(problem.replace("payload", "schema", 1))
    return value


__all__ = [
    "DEFAULT_ANY_MAX_BYTES",
    "DEFAULT_JSON_MAX_BYTES",
    "DEFAULT_JSON_MAX_DEPTH",
    "FreeFormValidator",
    "SchemaProblem",
    "compile_schema",
    "load_schema_text",
]
