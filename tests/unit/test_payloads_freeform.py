"""Payload kinds any, json and json_schema (FreeFormValidator), without a policy."""

from __future__ import annotations

import pytest

from iot_guard.payloads import FreeFormValidator, SchemaProblem, compile_schema, load_schema_text
from iot_guard.payloads.freeform import DEFAULT_ANY_MAX_BYTES, DEFAULT_JSON_MAX_DEPTH


def test_any_takes_opaque_bytes_up_to_max_bytes() -> None:
    v = FreeFormValidator("any", max_bytes=8)
    for ok in (b"", b"hello", b"\x00\xff\xfe\x80 bin", b"12345678"):
        assert v.check(ok) is None
    assert v.check(b"123456789") == "payload is 9 bytes; the limit is 8"
    assert FreeFormValidator("any").max_bytes == DEFAULT_ANY_MAX_BYTES


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"a": 1, "a": 2}', 'duplicate key "a"'),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1e400}', "out of range"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"text"', "must be a JSON object, not a string"),
        (b"{", "not valid JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
    ],
)
def test_json_refuses_what_two_parsers_could_read_differently(payload: bytes, why: str) -> None:
    problem = FreeFormValidator("json").check(payload)
    assert problem is not None and why in problem


def test_json_accepts_any_object_within_its_limits() -> None:
    v = FreeFormValidator("json", max_bytes=64, max_depth=3)
    assert v.check(b'{"text": "hello \\u00e9", "n": [1, 2.5, {"x": null}]}') is None
    deep = v.check(b'{"a": {"b": {"c": {}}}}')
    assert deep == "payload nests deeper than 3 levels"
    assert v.check(b'{"a": "' + b"x" * 80 + b'"}') == "payload is 89 bytes; the limit is 64"
    assert FreeFormValidator("json").max_depth == DEFAULT_JSON_MAX_DEPTH


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "level": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
    },
    "required": ["level"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "maxLength": 4}},
}


def test_json_schema_validates_with_draft_2020_12_and_names_the_place() -> None:
    v = FreeFormValidator("json_schema", validator=compile_schema(SCHEMA), schema_name="s.json")
    assert v.check(b'{"level": 3, "tags": ["a", "bb"]}') is None
    assert v.check(b'{"level": 11}') == (
        "payload.level: 11 is greater than the maximum of 10 (schema s.json)"
    )
    problem = v.check(b'{"level": 1, "tags": ["toolong"]}')
    assert problem is not None and problem.startswith("payload.tags[0]: ")
    assert "is too long" in problem
    missing = v.check(b"{}")
    assert missing is not None and "'level' is a required property" in missing
    # The strict parse comes first: the schema never sees a duplicate key.
    dup = v.check(b'{"level": 1, "level": 2}')
    assert dup is not None and "duplicate key" in dup


def test_json_schema_reasons_stay_ascii_and_short() -> None:
    v = FreeFormValidator(
        "json_schema", validator=compile_schema({"const": "x"}), schema_name="c.json"
    )
    problem = v.check(("\"" + "é" * 500 + "\"").encode())
    assert problem is not None and problem.isascii() and len(problem) <= 200


@pytest.mark.parametrize(
    ("schema", "path", "why"),
    [
        ({"type": "strng"}, ("type",), "is not valid under any of the given schemas"),
        ({"properties": {"a": {"minimum": "3"}}}, ("properties", "a", "minimum"), "number"),
        ({"$ref": "https://example.com/s.json"}, ("$ref",), "does not resolve inside"),
        ({"$ref": "#/$defs/missing"}, ("$ref",), "does not resolve inside"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, ("$schema",), "2020-12"),
        ([1, 2], (), "object or a boolean"),
    ],
)
def test_a_schema_that_does_not_compile_says_where(
    schema: object, path: tuple[object, ...], why: str
) -> None:
    with pytest.raises(SchemaProblem) as info:
        compile_schema(schema)
    assert info.value.path == path and why in info.value.message


def test_schema_text_is_parsed_strictly_with_a_line() -> None:
    with pytest.raises(SchemaProblem) as info:
        load_schema_text('{\n  "type": "object",\n  "type" "x"\n}')
    assert info.value.line == 3
    with pytest.raises(SchemaProblem) as info:
        load_schema_text('{"type": "object", "type": "array"}')
    assert "duplicate key" in info.value.message


def test_unknown_kind_or_missing_schema_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        FreeFormValidator("shadow_update")
    with pytest.raises(ValueError):
        FreeFormValidator("json_schema")
