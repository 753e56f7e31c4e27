"""Payload validation against the example fleet in device_policies/ (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from iot_guard.payloads import (
    MAX_DOCUMENT_BYTES,
    PayloadValidators,
    PayloadVerdict,
)
from iot_guard.policy.loader import load_policy
from iot_guard.policy_models import PolicyDocument

from .source import from_source

POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"
T = "thermostat"


@pytest.fixture(scope="module")
def policy() -> PolicyDocument:
    return load_policy(POLICY_DIR)


@pytest.fixture(scope="module")
def v(policy: PolicyDocument) -> PayloadValidators:
    return PayloadValidators.build(policy)


@pytest.fixture(scope="module")
def device(policy: PolicyDocument) -> PayloadValidators:
    return PayloadValidators.build(policy, agent=False)


def desired(fields: dict[str, object], **top: object) -> bytes:
    return json.dumps({"state": {"desired": fields}, **top}).encode()


def refused(verdict: PayloadVerdict) -> str:
    assert not verdict.ok, verdict
    assert verdict.reason
    assert verdict.document is None
    return verdict.reason


# -- shadow updates: accepted -------------------------------------------------------------


def test_valid_shadow_update_reports_fields_risk_and_document(v: PayloadValidators) -> None:
    payload = desired({"target_temp_c": 21.5, "mode": "heat"}, version=7, clientToken="t-1")
    verdict = v.shadow_update(T, payload)
    assert verdict.ok and verdict.reason == ""
    assert verdict.risk == "low"
    assert verdict.fields == ("mode", "target_temp_c")  # sorted
    assert verdict.document == json.loads(payload)


def test_integer_is_a_number_and_bounds_are_inclusive(v: PayloadValidators) -> None:
    for value in (5, 30, 5.0, 30.0, 17):
        assert v.shadow_update(T, desired({"target_temp_c": value})).ok, value
    for value in (1, 3600):
        assert v.shadow_update(T, desired({"telemetry_interval_s": value})).ok, value


def test_every_mode_and_channel_is_accepted(v: PayloadValidators) -> None:
    for mode in ("off", "heat", "cool", "auto"):
        assert v.shadow_update(T, desired({"mode": mode})).ok
    for channel in ("stable", "beta"):
        assert v.shadow_update(T, desired({"firmware_channel": channel})).risk == "high"


def test_high_risk_field_raises_the_verdict_risk(v: PayloadValidators) -> None:
    verdict = v.shadow_update(T, desired({"mode": "cool", "firmware_channel": "beta"}))
    assert verdict.ok
    assert verdict.risk == "high"
    assert verdict.fields == ("firmware_channel", "mode")


def test_null_removes_a_desired_key_and_counts_for_risk(v: PayloadValidators) -> None:
    verdict = v.shadow_update(T, desired({"firmware_channel": None}))
    assert verdict.ok
    assert verdict.risk == "high"
    assert verdict.fields == ("firmware_channel",)
    assert verdict.document == {"state": {"desired": {"firmware_channel": None}}}


def test_version_zero_and_64_byte_client_token_pass(v: PayloadValidators) -> None:
    # 32 x "é" is 32 characters but 64 bytes of UTF-8: the limit counts bytes.
    verdict = v.shadow_update(T, desired({"mode": "auto"}, version=0, clientToken="é" * 32))
    assert verdict.ok, verdict.reason


def test_document_of_exactly_8192_bytes_passes(v: PayloadValidators) -> None:
    body = desired({"mode": "auto"})
    payload = body[:-1] + b" " * (MAX_DOCUMENT_BYTES - len(body)) + b"}"
    assert len(payload) == MAX_DOCUMENT_BYTES
    assert v.shadow_update(T, payload).ok


# -- shadow updates: refused, with the exact reason -----------------------------------------

REFUSALS = [
    ({"target_temp_c": "21"}, 'state.desired.target_temp_c: "21" is a string, not a number'),
    ({"target_temp_c": True}, "state.desired.target_temp_c: true is a boolean, not a number"),
    ({"telemetry_interval_s": 4.5}, "state.desired.telemetry_interval_s: 4.5 is not an integer"),
    # 60.0 is integral but a float in JSON: strict means an integer must be written as one.
    ({"telemetry_interval_s": 60.0}, "state.desired.telemetry_interval_s: 60.0 is not an integer"),
    ({"telemetry_interval_s": 0}, "state.desired.telemetry_interval_s: 0 is below the minimum 1"),
    (
        {"telemetry_interval_s": 3601},
        "state.desired.telemetry_interval_s: 3601 is above the maximum 3600",
    ),
    ({"target_temp_c": 45}, "state.desired.target_temp_c: 45 is above the maximum 30"),
    ({"target_temp_c": 4}, "state.desired.target_temp_c: 4 is below the minimum 5"),
    ({"target_temp_c": 30.01}, "state.desired.target_temp_c: 30.01 is above the maximum 30"),
    (
        {"mode": "turbo"},
        'state.desired.mode: "turbo" is not one of "off", "heat", "cool", "auto"',
    ),
    ({"mode": "HEAT"}, 'state.desired.mode: "HEAT" is not one of "off", "heat", "cool", "auto"'),
    ({"mode": False}, "state.desired.mode: false is a boolean, not a string"),
    ({"mode": {"x": 1}}, 'state.desired.mode: {"x": 1} is an object, not a string'),
    ({"admin_pin": "1234"}, "state.desired.admin_pin: admin_pin is not writable by an agent"),
    # Removing a read-only field is writing it too.
    ({"admin_pin": None}, "state.desired.admin_pin: admin_pin is not writable by an agent"),
    ({"colour": "red"}, "state.desired.colour: not a config field of device type thermostat"),
]


@pytest.mark.parametrize(("fields", "reason"), REFUSALS)
def test_invalid_desired_values_are_refused_naming_field_and_rule(
    v: PayloadValidators, fields: dict[str, object], reason: str
) -> None:
    assert refused(v.shadow_update(T, desired(fields))) == reason


def test_first_bad_field_in_payload_order_is_reported(v: PayloadValidators) -> None:
    payload = desired({"mode": "heat", "target_temp_c": 99, "telemetry_interval_s": -1})
    assert refused(v.shadow_update(T, payload)).startswith("state.desired.target_temp_c:")
    payload = desired({"telemetry_interval_s": -1, "target_temp_c": 99})
    assert refused(v.shadow_update(T, payload)).startswith("state.desired.telemetry_interval_s:")
    # A bad value before a refused key is reported first, and the other way round.
    payload = desired({"mode": "turbo", "admin_pin": "1"})
    assert refused(v.shadow_update(T, payload)).startswith("state.desired.mode:")
    payload = desired({"colour": "red", "mode": "turbo"})
    assert refused(v.shadow_update(T, payload)).startswith("state.desired.colour:")


def test_one_bad_field_refuses_the_whole_update(v: PayloadValidators) -> None:
    payload = desired({"mode": "heat", "firmware_channel": "nightly"})
    assert "firmware_channel" in refused(v.shadow_update(T, payload))


ENVELOPE_REFUSALS = [
    (
        {"state": {"reported": {"mode": "heat"}}},
        "state.reported: an agent may not write reported state",
    ),
    (
        {"state": {"desired": {"mode": "heat"}, "reported": {"mode": "heat"}}},
        "state.reported: an agent may not write reported state",
    ),
    (
        {"state": {"delta": {"mode": "heat"}}},
        "state.delta: unknown key; an agent may only write state.desired",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "metadata": {}},
        "metadata: unknown key; a shadow update has only state, version and clientToken",
    ),
    ({"version": 1}, "state: required in a shadow update"),
    ({"state": []}, "state: an array, not an object"),
    ({"state": {}}, "state: changes nothing (no desired state)"),
    ({"state": {"desired": None}}, "state.desired: null, not an object"),
    ({"state": {"desired": "mode=heat"}}, "state.desired: a string, not an object"),
    ({"state": {"desired": {}}}, "state.desired: changes nothing (empty object)"),
    (
        {"state": {"desired": {"mode": "heat"}}, "version": -1},
        "version: -1 is not an integer from 0 to 9223372036854775807",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "version": True},
        "version: true is not an integer from 0 to 9223372036854775807",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "version": 2.0},
        "version: 2.0 is not an integer from 0 to 9223372036854775807",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "version": "3"},
        'version: "3" is not an integer from 0 to 9223372036854775807',
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "version": 2**63},
        "version: 9223372036854775808 is not an integer from 0 to 9223372036854775807",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "clientToken": "x" * 65},
        "clientToken: 65 bytes; the limit is 64 bytes",
    ),
    (
        # 33 characters, 65 bytes.
        {"state": {"desired": {"mode": "heat"}}, "clientToken": "é" * 32 + "x"},
        "clientToken: 65 bytes; the limit is 64 bytes",
    ),
    (
        {"state": {"desired": {"mode": "heat"}}, "clientToken": 12},
        "clientToken: a number, not a string",
    ),
]


@pytest.mark.parametrize(("document", "reason"), ENVELOPE_REFUSALS)
def test_shadow_envelope_rules(v: PayloadValidators, document: object, reason: str) -> None:
    assert refused(v.shadow_update(T, json.dumps(document).encode())) == reason


# -- JSON and document limits (the same for every kind) -------------------------------------


def test_9_kb_document_is_refused(v: PayloadValidators) -> None:
    body = desired({"mode": "auto"})
    payload = body[:-1] + b" " * (9 * 1024 - len(body)) + b"}"
    assert refused(v.shadow_update(T, payload)) == "payload is 9216 bytes; the limit is 8192"
    # One byte over the limit is over the limit.
    payload = body[:-1] + b" " * (MAX_DOCUMENT_BYTES + 1 - len(body)) + b"}"
    assert refused(v.config_patch(T, payload)) == "payload is 8193 bytes; the limit is 8192"


def test_depth_six_is_allowed_and_depth_seven_refused(v: PayloadValidators) -> None:
    # {"state":{"desired":{...}}} is depth 3; three arrays make 6, four make 7.
    six = b'{"state":{"desired":{"mode":[[[1]]]}}}'
    seven = b'{"state":{"desired":{"mode":[[[[1]]]]}}}'
    assert refused(v.shadow_update(T, six)) == (
        "state.desired.mode: [[[1]]] is an array, not a string"
    )
    assert refused(v.shadow_update(T, seven)) == "payload nests deeper than 6 levels"
    assert refused(v.config_patch(T, b'{"mode":{"a":{"b":{"c":{"d":{"e":{}}}}}}}')) == (
        "payload nests deeper than 6 levels"
    )


def test_pathological_nesting_within_the_size_limit_is_refused_not_raised(
    v: PayloadValidators,
) -> None:
    payload = b"[" * 4000 + b"]" * 4000  # deeper than the json module's recursion limit
    assert refused(v.shadow_update(T, payload)) == "payload nests deeper than 6 levels"
    payload = b'{"a":' * 1300 + b"1" + b"}" * 1300
    assert refused(v.config_patch(T, payload)) == "payload nests deeper than 6 levels"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b'{"state":{"desired":{"mode":"heat","mode":"off"}}}',
            'payload is not valid JSON: duplicate key "mode"',
        ),
        (
            b'{"state":{"desired":{"mode":"heat"}},"state":{"desired":{"mode":"off"}}}',
            'payload is not valid JSON: duplicate key "state"',
        ),
        (
            b'{"state":{"desired":{"target_temp_c":NaN}}}',
            "payload is not valid JSON: NaN is not a JSON number",
        ),
        (
            b'{"state":{"desired":{"target_temp_c":Infinity}}}',
            "payload is not valid JSON: Infinity is not a JSON number",
        ),
        (
            b'{"state":{"desired":{"target_temp_c":-Infinity}}}',
            "payload is not valid JSON: -Infinity is not a JSON number",
        ),
        (
            b'{"state":{"desired":{"target_temp_c":1e400}}}',
            "payload is not valid JSON: number 1e400 is out of range",
        ),
        (b'{"state":{"desired":{"mode":"h\xffat"}}}', "payload is not valid UTF-8 (byte 30)"),
        (b"\xc3\x28", "payload is not valid UTF-8 (byte 0)"),
        (b"[]", "payload must be a JSON object, not an array"),
        (b'"state"', "payload must be a JSON object, not a string"),
        (b"42", "payload must be a JSON object, not a number"),
        (b"null", "payload must be a JSON object, not null"),
        (b"true", "payload must be a JSON object, not a boolean"),
    ],
)
def test_bad_json_is_refused(v: PayloadValidators, payload: bytes, reason: str) -> None:
    assert refused(v.shadow_update(T, payload)) == reason
    assert refused(v.config_patch(T, payload)) == reason


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"{",
        b'{"state":{"desired":{"mode":"heat"}}} trailing',
        b"{'state': {}}",
        b'{"state":{"desired":{"mode":"heat",}}}',
        # A byte order mark is not JSON text in a network payload (RFC 8259 section 8.1).
        b'\xef\xbb\xbf{"state":{"desired":{"mode":"heat"}}}',
        # UTF-16: json.loads(bytes) would decode it; an MQTT JSON payload is UTF-8.
        '{"state":{"desired":{"mode":"heat"}}}'.encode("utf-16"),
        # 5000 digits: more than Python's int() accepts from text.
        b'{"state":{"desired":{"target_temp_c":' + b"9" * 5000 + b"}}}",
    ],
)
def test_not_json_is_refused(v: PayloadValidators, payload: bytes) -> None:
    reason = refused(v.shadow_update(T, payload))
    assert reason.startswith(("payload is not valid JSON", "payload is not valid UTF-8"))


def test_lone_surrogate_is_refused(v: PayloadValidators) -> None:
    reason = refused(v.shadow_update(T, b'{"state":{"desired":{"admin_pin":"\\ud800"}}}'))
    assert reason == 'string "\\ud800" is not valid Unicode (lone surrogate)'
    reason = refused(v.config_patch(T, b'{"\\udfff":1}'))
    assert reason == 'key "\\udfff" is not valid Unicode (lone surrogate)'
    reason = refused(v.shadow_update(T, desired({"mode": "heat"}, clientToken="\ud800")))
    assert "lone surrogate" in reason
    # A valid escaped pair is fine.
    assert v.shadow_update(
        T, b'{"state":{"desired":{"mode":"heat"}},"clientToken":"\\ud83d\\ude00"}'
    ).ok


def test_reasons_are_ascii_and_short_whatever_the_key(v: PayloadValidators) -> None:
    # Reasons go into MQTT 5 reason strings: valid UTF-8, no U+0000 [MQTT-1.5.4-2].
    key = "\u0000\u00e9vil/" + "x" * 500
    reason = refused(v.shadow_update(T, desired({key: 1})))
    assert reason.isascii() and "\x00" not in reason
    assert reason.startswith('state.desired."\\u0000\\u00e9vil/')
    assert reason.endswith(": not a config field of device type thermostat")
    assert len(reason) < 120
    reason = refused(v.config_patch(T, json.dumps({"mode": "\u00e9" * 300}).encode()))
    assert reason.isascii() and len(reason) < 160


# -- config patches (RFC 7396) --------------------------------------------------------------


def test_valid_config_patch(v: PayloadValidators) -> None:
    verdict = v.config_patch(T, b'{"target_temp_c": 19, "mode": null}')
    assert verdict.ok
    assert verdict.risk == "low"
    assert verdict.fields == ("mode", "target_temp_c")
    assert verdict.document == {"target_temp_c": 19, "mode": None}


def test_config_patch_client_token_is_metadata_not_a_field(v: PayloadValidators) -> None:
    verdict = v.config_patch(T, b'{"firmware_channel": "beta", "clientToken": "push-42"}')
    assert verdict.ok
    assert verdict.risk == "high"
    assert verdict.fields == ("firmware_channel",)
    # The document keeps the token so the device can echo it on config/result.
    assert verdict.document == {"firmware_channel": "beta", "clientToken": "push-42"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{}", "payload: changes nothing (empty merge patch)"),
        (b'{"clientToken": "a"}', "payload: changes nothing (empty merge patch)"),
        (b'{"admin_pin": "0000"}', "admin_pin: admin_pin is not writable by an agent"),
        (b'{"target_temp_c": 31}', "target_temp_c: 31 is above the maximum 30"),
        (b'{"target_temp_c": "21"}', 'target_temp_c: "21" is a string, not a number'),
        (
            b'{"telemetry_interval_s": true}',
            "telemetry_interval_s: true is a boolean, not an integer",
        ),
        (b'{"mode": "turbo"}', 'mode: "turbo" is not one of "off", "heat", "cool", "auto"'),
        (
            b'{"state": {"desired": {"mode": "heat"}}}',
            "state: not a config field of device type thermostat",
        ),
        (b'{"mode": "heat", "clientToken": ["a"]}', "clientToken: an array, not a string"),
        (
            b'{"mode": "heat", "clientToken": "' + b"t" * 65 + b'"}',
            "clientToken: 65 bytes; the limit is 64 bytes",
        ),
    ],
)
def test_config_patch_refusals(v: PayloadValidators, payload: bytes, reason: str) -> None:
    assert refused(v.config_patch(T, payload)) == reason


# -- commands -------------------------------------------------------------------------------


def test_reboot_with_delay_is_high_risk(v: PayloadValidators) -> None:
    for delay in (0, 30, 300):
        verdict = v.command(T, "reboot", json.dumps({"delay_s": delay}).encode())
        assert verdict.ok, verdict.reason
        assert verdict.risk == "high"
        assert verdict.fields == ()
        assert verdict.document == {"delay_s": delay}


def test_identify_accepts_empty_bytes_and_empty_object(v: PayloadValidators) -> None:
    for payload in (b"", b"{}", b" { } "):
        verdict = v.command(T, "identify", payload)
        assert verdict.ok, payload
        assert verdict.risk == "low"
        assert verdict.document == {}


@pytest.mark.parametrize(
    ("command", "payload", "reason"),
    [
        ("reboot", b"", "reboot.delay_s: required by command reboot but missing"),
        ("reboot", b"{}", "reboot.delay_s: required by command reboot but missing"),
        ("reboot", b'{"delay_s": 301}', "reboot.delay_s: 301 is above the maximum 300"),
        ("reboot", b'{"delay_s": -1}', "reboot.delay_s: -1 is below the minimum 0"),
        ("reboot", b'{"delay_s": "30"}', 'reboot.delay_s: "30" is a string, not an integer'),
        ("reboot", b'{"delay_s": 1.5}', "reboot.delay_s: 1.5 is not an integer"),
        ("reboot", b'{"delay_s": null}', "reboot.delay_s: null is not allowed"),
        (
            "reboot",
            b'{"delay_s": 5, "force": true}',
            "reboot.force: not a payload field of command reboot",
        ),
        ("identify", b'{"x": 1}', "identify.x: not a payload field of command identify"),
        ("identify", b"[]", "payload must be a JSON object, not an array"),
        (
            "identify",
            b"\x00",
            "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        ("selfdestruct", b"{}", "command selfdestruct: not a command of device type thermostat"),
        ("../reboot", b"{}", 'command "../reboot": not a command of device type thermostat'),
    ],
)
def test_command_refusals(v: PayloadValidators, command: str, payload: bytes, reason: str) -> None:
    assert refused(v.command(T, command, payload)) == reason


# -- kind none, dispatch, unknown names -----------------------------------------------------


def test_empty_kind(v: PayloadValidators) -> None:
    assert v.empty(b"").ok
    assert refused(v.empty(b"{}")) == "payload: must be empty, got 2 bytes"


def test_for_kind_dispatches_on_payload_kind(v: PayloadValidators) -> None:
    update = desired({"firmware_channel": "stable"})
    assert v.for_kind("shadow_update", T, update) == v.shadow_update(T, update)
    assert v.for_kind("shadow_update", T, update).risk == "high"
    # The same bytes are not a valid config patch: dispatch really differs per kind.
    assert not v.for_kind("config_patch", T, update).ok
    assert v.for_kind("config_patch", T, b'{"mode":"off"}').ok
    assert v.for_kind("command", T, b'{"delay_s":1}', command="reboot").risk == "high"
    assert refused(v.for_kind("command", T, b"{}")) == "payload kind 'command' needs a command name"
    assert v.for_kind("none", T, b"").ok
    assert not v.for_kind("none", T, b"x").ok
    assert refused(v.for_kind("telepathy", T, b"")) == 'unknown payload kind "telepathy"'


def test_for_types_needs_every_type_and_takes_the_riskiest(
    policy: PolicyDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second type where `mode` is risky and `target_temp_c` does not exist (a mixed group).
    doc = policy.model_copy(deep=True)
    doc.device_types["boiler"] = PolicyDocument.model_validate(
        {"device_types": {"boiler": {"config": {"mode": {"type": "string", "risk": "critical"}}}}}
    ).device_types["boiler"]
    source = from_source("iot_guard.payloads.validators")  # the spy sees its calls
    both = source.PayloadValidators.build(doc)
    parses: list[bytes] = []
    real = source.parse_object
    monkeypatch.setattr(source, "parse_object", lambda b: (parses.append(b), real(b))[1])
    mode = b'{"mode": "heat"}'
    verdict = both.for_types("config_patch", (T, "boiler"), mode)
    assert verdict.ok and verdict.risk == "critical" and verdict.fields == ("mode",)
    assert parses == [mode]  # parsed once for both types
    assert both.for_types("config_patch", (T,), mode).risk == "low"
    temp = b'{"target_temp_c": 20}'
    assert both.for_types("config_patch", (T,), temp).ok
    assert "target_temp_c" in refused(both.for_types("config_patch", (T, "boiler"), temp))
    assert refused(both.for_types("config_patch", (), mode)) != ""


def test_unknown_device_type_is_a_refusal_not_an_exception(v: PayloadValidators) -> None:
    reason = 'unknown device type "toaster"'
    assert refused(v.shadow_update("toaster", desired({"mode": "heat"}))) == reason
    assert refused(v.config_patch("toaster", b'{"mode":"heat"}')) == reason
    assert refused(v.command("toaster", "identify", b"")) == reason
    assert refused(v.for_kind("command", "toaster", b"", command="identify")) == reason


# -- the device's own view (agent=False) ----------------------------------------------------


def test_device_view_may_write_admin_pin_within_its_rules(device: PayloadValidators) -> None:
    verdict = device.shadow_update(T, desired({"admin_pin": "4321"}))
    assert verdict.ok and verdict.risk == "critical"
    assert device.config_patch(T, b'{"admin_pin": null}').risk == "critical"
    assert refused(device.config_patch(T, b'{"admin_pin": "123456789"}')) == (
        'admin_pin: "123456789" is longer than 8 characters'
    )
    assert refused(device.config_patch(T, b'{"admin_pin": 1234}')) == (
        "admin_pin: 1234 is a number, not a string"
    )


def test_device_view_accepts_reported_state_but_stays_strict(device: PayloadValidators) -> None:
    payload = json.dumps(
        {"state": {"desired": {"mode": "heat"}, "reported": {"firmware_channel": "beta"}}}
    ).encode()
    verdict = device.shadow_update(T, payload)
    assert verdict.ok
    assert verdict.fields == ("firmware_channel", "mode")
    assert verdict.risk == "high"
    assert refused(device.shadow_update(T, b'{"state":{"reported":{"target_temp_c":"20"}}}')) == (
        'state.reported.target_temp_c: "20" is a string, not a number'
    )
    assert refused(device.shadow_update(T, b'{"state":{"delta":{}}}')) == (
        "state.delta: unknown key; state has only desired and reported"
    )


# -- build-time behaviour -------------------------------------------------------------------


def test_nothing_is_built_per_packet(v: PayloadValidators, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_building(*args: object, **kwargs: object) -> None:
        raise AssertionError("a validator was built on the per-packet path")

    monkeypatch.setattr(pydantic.TypeAdapter, "__init__", no_building)
    monkeypatch.setattr(pydantic, "create_model", no_building)
    assert v.shadow_update(T, desired({"mode": "heat"})).ok
    assert not v.shadow_update(T, desired({"mode": "turbo"})).ok
    assert v.config_patch(T, b'{"target_temp_c": 20}').ok
    assert v.command(T, "reboot", b'{"delay_s": 3}').ok


def _custom_policy(config: dict[str, object]) -> PolicyDocument:
    return PolicyDocument.model_validate({"device_types": {"lamp": {"config": config}}})


def test_integer_enum_and_boolean_fields_are_strict() -> None:
    validators = PayloadValidators.build(
        _custom_policy(
            {
                "level": {"type": "integer", "enum": [1, 2, 3]},
                "on": {"type": "boolean", "risk": "medium"},
                "label": {"type": "string", "enum": ["a", "bb"], "max_length": 1},
            }
        )
    )
    assert validators.config_patch("lamp", b'{"level": 2}').ok
    # pydantic's Literal[1, 2, 3] would take true and 1.0 even in strict mode.
    assert refused(validators.config_patch("lamp", b'{"level": true}')) == (
        "level: true is a boolean, not an integer"
    )
    assert refused(validators.config_patch("lamp", b'{"level": 1.0}')) == (
        "level: 1.0 is not an integer"
    )
    assert refused(validators.config_patch("lamp", b'{"level": 4}')) == (
        "level: 4 is not one of 1, 2, 3"
    )
    verdict = validators.config_patch("lamp", b'{"on": false}')
    assert verdict.ok and verdict.risk == "medium"
    assert refused(validators.config_patch("lamp", b'{"on": 1}')) == (
        "on: 1 is a number, not a boolean"
    )
    assert validators.config_patch("lamp", b'{"label": "a"}').ok
    assert refused(validators.config_patch("lamp", b'{"label": "bb"}')) == (
        'label: "bb" is longer than 1 characters'
    )
    assert refused(validators.config_patch("lamp", b'{"label": "c"}')) == (
        'label: "c" is not one of "a", "bb"'
    )


def test_a_config_field_named_client_token_is_refused_at_build() -> None:
    with pytest.raises(ValueError, match="clientToken"):
        PayloadValidators.build(_custom_policy({"clientToken": {"type": "string"}}))


def test_device_type_without_config_refuses_every_field() -> None:
    validators = PayloadValidators.build(_custom_policy({}))
    assert refused(validators.config_patch("lamp", b'{"mode": "on"}')) == (
        "mode: not a config field of device type lamp"
    )


@pytest.mark.parametrize("payload", [
    b'{"a":1}', b' {"a":1}\n', b'{"a":1} x', b"", b"  ", b"nul", b'{"a":1,"a":2}', b"[1e400]",
    b"NaN", b"1 2", b'"x"', b'{"a":', b'{"a":[1,]}', b"\t[]\t",
])
def test_parse_answers_as_the_full_decoder_does(payload: bytes) -> None:
    # parse_json scans a bare value directly; whitespace around it or anything after it
    # takes json's own path, so the value or the reason is the same either way.
    from iot_guard.payloads.jsondoc import _DECODER, JsonRefused, parse_json

    try:
        expected: tuple[object, str] = (_DECODER.decode(payload.decode()), "")
    except JsonRefused as exc:
        expected = (None, f"payload is not valid JSON: {exc}")
    except ValueError as exc:
        expected = (None, f"payload is not valid JSON: {str(exc)[:80]}")
    assert parse_json(payload) == expected
