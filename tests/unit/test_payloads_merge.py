"""merge_patch against RFC 7396 (section 3 and the Appendix A examples)."""

from __future__ import annotations

import copy
import json

import pytest

from iot_guard.payloads import merge_patch

# RFC 7396 Appendix A, the rows whose target and patch are both objects.
APPENDIX_A = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("target", "patch", "result"), APPENDIX_A)
def test_rfc7396_appendix_a(target: str, patch: str, result: str) -> None:
    assert merge_patch(json.loads(target), json.loads(patch)) == json.loads(result)


def test_rfc7396_section_3_example() -> None:
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


def test_object_replaces_scalar_and_nulls_inside_it_are_dropped() -> None:
    # The target member is not an object, so the patch merges into {} (RFC 7396 section 2).
    result = merge_patch({"a": 5}, {"a": {"x": 1, "y": None}})
    assert result == {"a": {"x": 1}}


def test_removing_a_missing_key_is_a_no_op() -> None:
    assert merge_patch({"mode": "heat"}, {"target_temp_c": None}) == {"mode": "heat"}


def test_inputs_are_not_modified_and_the_result_shares_nothing() -> None:
    target = {"a": {"b": [1, 2]}, "keep": {"deep": [3]}}
    patch = {"a": {"c": [4]}, "n": {"m": [5]}}
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    result = merge_patch(target, patch)
    assert result == {"a": {"b": [1, 2], "c": [4]}, "keep": {"deep": [3]}, "n": {"m": [5]}}
    assert target == target_before and patch == patch_before
    # Mutating the result must not reach either input.
    result["a"]["b"].append(99)  # type: ignore[index, union-attr]
    result["a"]["c"].append(99)  # type: ignore[index, union-attr]
    result["keep"]["deep"].append(99)  # type: ignore[index, union-attr]
    result["n"]["m"].append(99)  # type: ignore[index, union-attr]
    assert target == target_before and patch == patch_before


def test_target_key_order_is_kept() -> None:
    result = merge_patch({"a": 1, "b": 2, "c": 3}, {"a": 9, "d": 4, "b": None})
    assert list(result) == ["a", "c", "d"]


def test_a_patch_that_is_not_an_object_is_a_type_error() -> None:
    # RFC 7396 would return the patch itself; a config is always an object, so we refuse.
    for patch in (["c"], "bar", None, 3):
        with pytest.raises(TypeError):
            merge_patch({"a": "b"}, patch)  # type: ignore[arg-type]
