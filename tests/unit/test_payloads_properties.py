"""Property tests for payload validation and merge_patch (hypothesis, no network)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_guard.payloads import PayloadValidators, merge_patch
from iot_guard.payloads.fields import field_problem
from iot_guard.policy.loader import load_policy
from iot_guard.policy_models import RISK_ORDER, FieldSpec, PolicyDocument

from .strategies import field_specs as shared_field_specs

POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"
T = "thermostat"
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def v() -> PayloadValidators:
    return PayloadValidators.build(load_policy(POLICY_DIR))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-10, max_value=4000)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["off", "heat", "cool", "auto", "stable", "beta", "21", "", "1234"])
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)

FIELDS = ["target_temp_c", "mode", "telemetry_interval_s", "firmware_channel", "admin_pin"]


def thermostat_accepts(field: str, value: object) -> bool:
    """The example fleet's config rules, written out by hand (the test's oracle)."""
    if field == "admin_pin":
        return False  # never writable by an agent, not even null
    if value is None:
        return True
    if field == "target_temp_c":
        return type(value) in (int, float) and 5 <= value <= 30  # type: ignore[operator]
    if field == "telemetry_interval_s":
        return type(value) is int and 1 <= value <= 3600
    if field == "mode":
        return type(value) is str and value in ("off", "heat", "cool", "auto")
    return type(value) is str and value in ("stable", "beta")


RISK = {"target_temp_c": "low", "mode": "low", "telemetry_interval_s": "low",
        "firmware_channel": "high", "admin_pin": "critical"}  # fmt: skip


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=5))
def test_shadow_update_matches_the_hand_written_rules(
    v: PayloadValidators, fields: dict[str, object]
) -> None:
    payload = json.dumps({"state": {"desired": fields}}).encode()
    verdict = v.shadow_update(T, payload)
    expected = all(thermostat_accepts(name, value) for name, value in fields.items())
    assert verdict.ok == expected, (fields, verdict.reason)
    if verdict.ok:
        assert verdict.fields == tuple(sorted(fields))
        assert verdict.risk == max((RISK[f] for f in fields), key=RISK_ORDER.__getitem__)
        assert verdict.document == {"state": {"desired": fields}}
    else:
        # The reason names the first refused field in the payload's order.
        first_bad = next(n for n, val in fields.items() if not thermostat_accepts(n, val))
        assert verdict.reason.startswith(f"state.desired.{first_bad}: "), verdict.reason
    # A config patch follows the same field rules.
    assert v.config_patch(T, json.dumps(fields).encode()).ok == expected


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_reasons_stay_ascii(
    v: PayloadValidators, payload: bytes
) -> None:
    for verdict in (
        v.shadow_update(T, payload),
        v.config_patch(T, payload),
        v.command(T, "reboot", payload),
        v.command(T, "identify", payload),
        v.empty(payload),
    ):
        assert verdict.ok or (verdict.reason.isascii() and "\x00" not in verdict.reason)


@SETTINGS
@given(json_values, st.sampled_from(["shadow_update", "config_patch", "command", "none"]))
def test_arbitrary_json_never_raises(v: PayloadValidators, value: object, kind: str) -> None:
    payload = json.dumps(value).encode()
    verdict = v.for_kind(kind, T, payload, command="reboot")
    assert isinstance(verdict.ok, bool)
    if not verdict.ok:
        assert verdict.reason.isascii() and verdict.document is None


# Random field specs: the fast pydantic path and field_problem (which writes the reasons)
# must agree on every value, or a reason would be missing or a bad value could slip through.
bounds = st.none() | st.integers(-50, 50) | st.floats(-50, 50, allow_nan=False)


field_specs = partial(shared_field_specs, bounds, st.integers(-5, 5), ["a", "bb", "ccc"])


@settings(max_examples=200, deadline=None)
@given(field_specs(), st.lists(json_scalars | st.sampled_from([1, 2, -3, "a", "bb"]), max_size=8))
def test_pydantic_path_and_reasons_agree(spec: FieldSpec, values: list[object]) -> None:
    policy = PolicyDocument.model_validate(
        {"device_types": {"x": {"config": {"f": spec.model_dump(exclude_none=True)}}}}
    )
    validators = PayloadValidators.build(policy)
    for value in values:
        verdict = validators.config_patch("x", json.dumps({"f": value}).encode())
        problem = field_problem(spec, value, nullable=True)
        if problem is None:
            assert verdict.ok, (spec, value, verdict.reason)
        else:
            assert verdict.reason == f"f: {problem}", (spec, value)


# -- merge_patch ----------------------------------------------------------------------------

json_objects = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4)


@SETTINGS
@given(json_objects, json_objects)
def test_merge_patch_properties(target: dict[str, object], patch: dict[str, object]) -> None:
    result = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    for key, value in target.items():
        if key not in patch:
            assert result[key] == value
    # RFC 7396 patches are idempotent: applying one twice changes nothing more.
    assert merge_patch(result, patch) == result
