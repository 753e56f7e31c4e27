"""The fast reading of payloads (orjson, a sure pass, no pydantic call) gives exactly the
answer of the strict one (the standard library's parser, pydantic), on valid and hostile
payloads, written out and generated (seeded, so a failure replays).

The reference is the strict path forced: ``strict_parse_json`` for the parser, and for
the validators the same checks on the strict parse with field sets sure of no value
(``sure_value`` and ``alike`` never true: pydantic decides every field, as before the
fast paths existed).
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import iot_guard.payloads.jsondoc as jsondoc
from iot_guard.payloads import (
    FreeFormValidator,
    PayloadValidators,
    PayloadVerdict,
    compile_schema,
)
from iot_guard.payloads.fields import alike, field_problem, sure_value, value_type
from iot_guard.payloads.jsondoc import (
    MAX_DEPTH,
    members_match,
    parse_json,
    show,
    strict_parse_json,
    strict_parse_object,
)
from iot_guard.policy.loader import load_policy
from iot_guard.policy_models import FieldSpec, PolicyDocument

from .source import from_source
from .strategies import field_specs as shared_field_specs

POLICY_DIR = Path(__file__).resolve().parents[2] / "device_policies"
T = "thermostat"
BENCH = b'{"state":{"desired":{"target_temp_c":21.5}},"clientToken":"bench-00000001"}'


def same(a: object, b: object) -> bool:
    """Equal, with the same types everywhere (1 is not 1.0 nor True), the same float
    bits (-0.0 is not 0.0) and the same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    return a == b


# -- hand-written hostile and edge payloads -------------------------------------------------

HOSTILE: list[bytes] = [
    b"", b" ", b"{", b"}", b"{}", b"[]", b"null", b"true", b"0", b'"x"', b"{}x", b"{} {}",
    b'{"a":1,"a":2}', b'{"a":1,"b":{"c":1,"c":2}}', b'[{"a":1},{"a":1,"a":1}]',
    b'{"a":{"x":1},"a":{"y":2}}', b'{"a":1,"\\u0061":2}', b'{"a:":1,"a:":2}',
    b'{"a\\":":1,"a\\":":2}', b'{"a":"x:y","a":"z"}', b'{"k":":::","k":1}',
    b'{"a\\\\":1,"a\\\\":2}', b'{"\\"":1,"\\"":2}', b'{"a":1, "a" :2}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b"NaN", b"-Infinity",
    b'{"a":1e400}', b'{"a":-1e400}', b'{"a":1e-400}', b'{"a":1E308}', b'{"a":2e308}',
    b'{"a":123456789012345678901234567890}', b'{"a":-123456789012345678901234567890}',
    b'{"a":18446744073709551615}', b'{"a":18446744073709551616}',
    b'{"a":9223372036854775807}', b'{"a":9223372036854775808}',
    b'{"a":-9223372036854775808}', b'{"a":-9223372036854775809}',
    b'{"a":9223372036854775808.0}', b'{"a":1.8446744073709552e19}', b'{"a":1e19}',
    b"-0", b"-0.0", b"0.0", b"1E5", b"1e+5", b"1.5e-3", b"01", b"1.", b".5", b"+1", b"-",
    b"1e", b"1e+", b"--1", b"0x10", b'{"a":' + b"1" * 5000 + b"}", b"9" * 4300, b"9" * 4301,
    b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\udc00"', b'"\\ud83d\\ude00"', b'"\\ud800x"',
    b'"\\ud800\\u0041"', b'{"\\ud800":1}', b'"\\u0000"', b'"\\u003a"', b'{"a\\u003a":1}',
    b'"\xed\xa0\x80"', b'"\xff"', b'"\xc3"', b'"\xc3\xa9"', b'"\xe2\x82\xac"', b"\xef\xbb\xbf{}",
    b'"a\x00"', b'"a\x1f"', b'"a\x7f"', b'"\\x41"', b'"\\a"', b'"\\/"', b'"\\b\\f\\n\\r\\t"',
    b"[1,]", b'{"a":1,}', b"{,}", b'{"a"}', b'{"a":}', b"{'a':1}", b"[1 2]", b'{"a" 1}',
    b"\t{}\r\n", b"\x0b{}", b"{}\x0c", b"\xa0{}", b" \n [ 1 , { \"a\" : [ ] } ] \n ",
    b"[" * 6 + b"]" * 6, b"[" * 7 + b"]" * 7, b"{\"a\":" * 6 + b"1" + b"}" * 6,
    b"{\"a\":" * 7 + b"1" + b"}" * 7, b"[" * 1100 + b"]" * 1100, b"[" * 5000,
    b'{"state":{"desired":{"target_temp_c":21.5}},"state":{"desired":{"mode":"heat"}}}',
    b'{"state":{"desired":{"mode":"heat","mode":"cool"}}}',
    b'{"state":{"desired":{"mode":"heat"},"desired":{"mode":"cool"}}}',
    b'{"clientToken":"a","clientToken":"b","state":{"desired":{"mode":"heat"}}}',
    b'{"clientToken":"a:b","state":{"desired":{"mode":"heat","mode":"off"}}}',
    b'{"clientToken":"x\\":","state":{"desired":{"mode":"heat","mode":"off"}}}',
    b'{"state":{"desired":{"target_temp_c":1e400}}}',
    b'{"state":{"desired":{"target_temp_c":20000000000000000000}}}',
    b'{"state":{"desired":{"telemetry_interval_s":20000000000000000000}}}',
    b'{"version":18446744073709551616,"state":{"desired":{"mode":"heat"}}}',
    b'{"version":18446744073709551615,"state":{"desired":{"mode":"heat"}}}',
    b'{"version":9223372036854775807,"state":{"desired":{"mode":"heat"}}}',
    b'{"clientToken":"\\ud800","state":{"desired":{"mode":"heat"}}}',
    b'{"state":{"desired":{"mode":"he\\u0061t"}}}', b'{"state":{"desired":{"m\\u006fde":"off"}}}',
    BENCH, BENCH + b" ", b" " + BENCH, BENCH + b"\x00", BENCH[:-1],
]


@pytest.fixture(params=["walk first up to 256 bytes", "C first", "walk first"])
def proof(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with each way ``proven`` has of proving orjson's reading: the walk
    (the dict sizes against the colons outside strings) and the C-only proof (orjson's
    writing back, digit runs, indentation), whatever the payload's size."""
    small = {"walk first up to 256 bytes": 256, "C first": -1, "walk first": 10**9}
    monkeypatch.setattr(jsondoc, "_SMALL", small[request.param])


@pytest.mark.usefixtures("proof")
@pytest.mark.parametrize("payload", HOSTILE)
@pytest.mark.parametrize("max_depth", [MAX_DEPTH, 1, 0, 32, 2000])
def test_parse_json_answers_as_the_strict_parser(payload: bytes, max_depth: int) -> None:
    for max_bytes in (8192, len(payload), max(len(payload) - 1, 0)):
        fast = parse_json(payload, max_bytes=max_bytes, max_depth=max_depth)
        strict = strict_parse_json(payload, max_bytes=max_bytes, max_depth=max_depth)
        assert fast[1] == strict[1], payload
        assert same(fast[0], strict[0]), payload


@pytest.mark.usefixtures("proof")
def test_every_byte_around_a_document_is_read_alike() -> None:
    # JSON whitespace is only space, tab, LF and CR (RFC 8259 section 2).
    for byte in range(256):
        b = bytes([byte])
        for payload in (b + b"{}", b"{}" + b, b"[" + b + b"1]", b'{"a"' + b + b":1}",
                        b'"' + b + b'"', b"1" + b, b"{\"a\":" + b + b"}"):
            fast, strict = parse_json(payload), strict_parse_json(payload)
            assert fast[1] == strict[1] and same(fast[0], strict[0]), payload


@pytest.mark.usefixtures("proof")
def test_every_escape_is_read_alike() -> None:
    for code in list(range(0, 0x80)) + [0xE9, 0x2028, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF,
                                         0xE000, 0xFFFD, 0xFFFF]:
        for payload in (b'"\\u%04x"' % code, b'"\\u%04X"' % code, b'{"\\u%04x":1}' % code,
                        b'"\\ud83d\\u%04x"' % code, b'"\\u%04x\\ude00"' % code):
            fast, strict = parse_json(payload), strict_parse_json(payload)
            assert fast[1] == strict[1] and same(fast[0], strict[0]), payload
    for char in range(0x20, 0x7F):
        payload = b'"\\' + bytes([char]) + b'"'
        fast, strict = parse_json(payload), strict_parse_json(payload)
        assert fast[1] == strict[1] and same(fast[0], strict[0]), payload


@pytest.mark.usefixtures("proof")
def test_numbers_are_read_alike() -> None:
    rng = random.Random(8259)
    texts = ["0", "-0", "0.0", "-0.0", "1e-400", "5e-324", "2.2250738585072011e-308",
             "1.7976931348623157e308", "1.7976931348623159e308", "9007199254740993",
             "9007199254740993.0", "0.1", "0.30000000000000004"]
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        digits = digits.lstrip("0") or "0"
        sign = rng.choice(["", "-"])
        form = rng.randrange(4)
        if form == 0:
            texts.append(sign + digits)  # an integer, maybe beyond 64 bits
        elif form == 1:
            texts.append(f"{sign}{digits[0]}.{digits[1:] or '0'}e{rng.randint(-340, 330)}")
        elif form == 2:
            bits = rng.getrandbits(64)
            value = struct.unpack("<d", struct.pack("<Q", bits))[0]
            if math.isfinite(value):
                texts += [repr(value), f"{value:.25e}", f"{value:.17g}"]
        else:
            texts.append(f"{sign}{digits}.{rng.randint(0, 10**9)}")
    for text in texts:
        for payload in (text.encode(), b'{"n":%s}' % text.encode(), b"[%s]" % text.encode()):
            fast, strict = parse_json(payload), strict_parse_json(payload)
            assert fast[1] == strict[1] and same(fast[0], strict[0]), payload


# -- generated documents, written with duplicates, escapes and whitespace -------------------

KEYS = ["a", "b", "a:", ":", 'q"', "\\", "é", "\u2028", "state", "desired", "mode", "x y"]
STRINGS = ["", "x", "x:y", ":", '"', '":', "\\", "\\:", "é:", "\U0001f600", "a\nb", "{", "[}"]


def write_string(rng: random.Random, text: str) -> str:
    if rng.random() < 0.5:
        return json.dumps(text, ensure_ascii=rng.random() < 0.5)
    # Escape some plain characters too, as \\uXXXX: "\u0061" is the key "a".
    return '"' + "".join(
        f"\\u{ord(c):04x}" if rng.random() < 0.2 and ord(c) < 0x10000
        else json.dumps(c, ensure_ascii=False)[1:-1]
        for c in text
    ) + '"'


def write(rng: random.Random, depth: int) -> str:
    pick = rng.random()
    space = rng.choice(["", "", " ", "\n\t"])
    if depth < 5 and pick < 0.3:
        count = rng.randint(0, 4)
        keys = [rng.choice(KEYS) for _ in range(count)]  # duplicates arise naturally
        members = [f"{write_string(rng, k)}{space}:{space}{write(rng, depth + 1)}" for k in keys]
        return "{" + f",{space}".join(members) + "}"
    if depth < 5 and pick < 0.45:
        return "[" + ",".join(write(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    kind = rng.randrange(7)
    if kind == 0:
        return write_string(rng, rng.choice(STRINGS))
    if kind == 1:
        return rng.choice(["null", "true", "false", "-0", "0", "1", "-1.5", "1e3"])
    if kind == 2:
        return str(rng.choice([2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
                               10**25, -(10**25), rng.randint(-(10**6), 10**6)]))
    if kind == 3:
        return repr(rng.uniform(-1e6, 1e6))
    if kind == 4:
        return rng.choice(["1e400", "NaN", "-Infinity", "1e19", "9.3e18", "-9.3e18"])
    return write_string(rng, "".join(rng.choice("ab:\"\\é") for _ in range(rng.randint(0, 6))))


def generated(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        text = write(rng, 0).encode()
        yield text
        if text:
            # A mutation: a byte dropped, doubled or replaced (hostile, mostly not JSON).
            at = rng.randrange(len(text))
            yield rng.choice([
                text[:at] + text[at + 1:],
                text[:at] + text[at:at + 1] * 2 + text[at + 1:],
                text[:at] + bytes([rng.randrange(256)]) + text[at + 1:],
            ])


@pytest.mark.usefixtures("proof")
def test_generated_documents_are_read_alike() -> None:
    duplicates = fast_ones = 0
    for payload in generated(6962, 6000):
        for max_depth in (MAX_DEPTH, 3):
            fast = parse_json(payload, max_depth=max_depth)
            strict = strict_parse_json(payload, max_depth=max_depth)
            assert fast[1] == strict[1], payload
            assert same(fast[0], strict[0]), payload
        duplicates += "duplicate key" in strict[1]
        fast_ones += not strict[1]
    # The battery does reach both sides: refused duplicates and accepted documents.
    assert duplicates > 200 and fast_ones > 1000


def test_members_match_counts_members_not_colons_in_strings() -> None:
    # (members: the dict sizes orjson read, which a duplicate key shrinks)
    assert members_match(b'{"a":"x:y"}', 1)
    assert not members_match(b'{"a":"x:y","a":1}', 1)  # 3 colons, 2 members, 1 read
    assert members_match(b'{"a\\":":"\\\\:","b":{"c::":1}}', 3)
    assert not members_match(b'{"a\\":":"\\\\:","a\\":{"c::":1}}', 2)
    assert members_match(b'{"\\u003a":":"}', 1)
    assert not members_match(b'{"a":1,"\\u0061":":"}', 1)


@pytest.mark.usefixtures("proof")
def test_json_kinds_answer_as_before() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}}
    kinds = [FreeFormValidator("json"), FreeFormValidator("json", max_depth=2, max_bytes=64),
             FreeFormValidator("json_schema", validator=compile_schema(schema), schema_name="s")]
    for payload in [*HOSTILE, *generated(7396, 1500)]:
        for kind in kinds:
            fast = kind.check(payload)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("iot_guard.payloads.freeform.parse_json", strict_parse_json)
                assert kind.check(payload) == fast, payload


# -- the validators ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> PolicyDocument:
    return load_policy(POLICY_DIR)


# The reference runs from the source, its field sets too: a compiled build's calls skip
# the patches below (a compiled FieldSet reads its own module's predicates directly).
_SOURCE = from_source("iot_guard.payloads.validators")
_FIELDS = from_source("iot_guard.payloads.fields")
_TWINS: dict[int, tuple[PayloadValidators, Any]] = {}


def _never(value: object) -> bool:
    return False


def _rule_of(path: tuple[str, ...]) -> str:
    return "rule:" + ".".join(path)  # each field's own, so a wrong one shows


def build(doc: PolicyDocument, agent: bool = True) -> PayloadValidators:
    """``PayloadValidators.build``, with its twin from the source for ``strict_answer``."""
    v = PayloadValidators.build(doc, agent=agent, rule_of=_rule_of)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_SOURCE, "FieldSet", _FIELDS.FieldSet)
        # Its field sets are sure of no value: pydantic decides every one.
        mp.setattr(_FIELDS, "sure_value", lambda spec, nullable: _never)
        mp.setattr(_FIELDS, "alike", lambda spec: _never)
        _TWINS[id(v)] = (v, _SOURCE.PayloadValidators.build(doc, agent=agent, rule_of=_rule_of))
    return v


def strict_answer(
    v: PayloadValidators, kind: str, types: tuple[str, ...], payload: bytes, command: str | None
) -> PayloadVerdict:
    """The verdict with every fast path off: strict parse, pydantic on every field (by
    ``v``'s twin from the source, see ``build``)."""
    built, twin = _TWINS[id(v)]
    assert built is v, "validators made without build()"
    with pytest.MonkeyPatch.context() as mp:
        def refuse(payload: bytes) -> object:
            raise ValueError("the strict path only")

        mp.setattr(_SOURCE, "_loads", refuse)
        mp.setattr(_SOURCE, "parse_object", strict_parse_object)
        verdict: PayloadVerdict = twin.for_types(kind, types, payload, command)
        return verdict


def assert_same_answer(
    v: PayloadValidators, kind: str, types: tuple[str, ...], payload: bytes,
    command: str | None = None,
) -> PayloadVerdict:
    want = strict_answer(v, kind, types, payload, command)
    got = v.for_types(kind, types, payload, command)
    where = (kind, types, command, payload)
    assert (got.ok, got.reason, got.risk, got.fields, got.rule) == (
        want.ok, want.reason, want.risk, want.fields, want.rule
    ), where
    assert same(got.document, want.document), where
    assert v.judge(kind, types, payload, command) == (
        want.risk, None if want.ok else want.reason, want.rule
    ), where
    return want


def shadow_payloads(seed: int, count: int) -> Iterator[bytes]:
    """Shadow updates near and across every rule of the example thermostat."""
    rng = random.Random(seed)
    values: dict[str, list[Any]] = {
        "target_temp_c": [21.5, 5, 30, 5.0, 30.0, 4.999, 30.0001, 29.999999999999996, -0.0, 0,
                          None, True, "21", 2**53, 2**53 + 1, 1e19, 10**20, [21], {"v": 1}],
        "mode": ["heat", "off", "auto", "HEAT", "", None, 1, "he\u0301at", ["heat"]],
        "telemetry_interval_s": [1, 3600, 0, 3601, 60.0, True, None, 2**63, 10**30, -1],
        "firmware_channel": ["stable", "beta", "alpha", None, False],
        "admin_pin": ["1234", None, "123456789"],
        "unknown_field": [1],
        "clientToken": ["t", None],
    }
    tokens: list[Any] = ["bench-00000001", "", "t" * 64, "t" * 65, "é" * 32, "é" * 33,
                         "\U0001f600" * 16, "\U0001f600" * 17, "a:b", 'q"', 7, None, ["t"]]
    versions: list[Any] = [0, 1, 2**63 - 1, 2**63, -1, 1.0, True, "1", None]
    for _ in range(count):
        desired: dict[str, Any] = {}
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 4])):
            name = rng.choice(list(values))
            # Half the time a valid value (the first few of each list), so both sides show.
            usual = rng.random() < 0.6 and name not in ("admin_pin", "unknown_field")
            desired[name] = rng.choice(values[name][:3] if usual else values[name])
        state: dict[str, Any] = {"desired": desired}
        roll = rng.random()
        if roll < 0.05:
            state = {}
        elif roll < 0.1:
            state["reported"] = dict(desired)
        elif roll < 0.13:
            state = {"reported": desired}
        elif roll < 0.16:
            state["delta"] = {}
        doc: dict[str, Any] = {"state": state}
        if rng.random() < 0.6:
            doc["clientToken"] = rng.choice(tokens[:5] if rng.random() < 0.6 else tokens)
        if rng.random() < 0.3:
            doc["version"] = rng.choice(versions[:3] if rng.random() < 0.6 else versions)
        if rng.random() < 0.05:
            doc["metadata"] = {}
        if rng.random() < 0.05:
            doc = rng.choice([{"desired": desired}, {}, {"state": None}, {"state": [1]}])
        text = json.dumps(doc, separators=rng.choice([(",", ":"), (", ", ": ")]),
                          ensure_ascii=rng.random() < 0.8)
        starts = [i for i in range(len(text)) if text.startswith('{"', i)]
        if starts and rng.random() < 0.15:
            # A duplicate key: the first member of some object written twice (when that
            # member holds an object, the copy may not even be JSON: hostile too).
            at = rng.choice(starts)
            end = min(i for i in (text.find(",", at), text.find("}", at)) if i > 0)
            text = text[:at + 1] + text[at + 1:end] + "," + text[at + 1:]
        yield text.encode()


def patch_payloads(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for payload in shadow_payloads(seed, count):
        try:
            doc = json.loads(payload)
        except ValueError:
            yield payload
            continue
        state = doc.get("state")
        desired = state.get("desired", {}) if isinstance(state, dict) else {}
        patch = dict(desired) if isinstance(desired, dict) else {"x": desired}
        if "clientToken" in doc:
            patch["clientToken"] = doc["clientToken"]
        text = json.dumps(patch)
        if rng.random() < 0.1 and len(patch) > 0:
            first = text[1:].split(",")[0].rstrip("}")
            text = "{" + first + "," + text[1:]
        yield text.encode()


def accepted_on_both_sides(policy: PolicyDocument, kind: str, payloads: list[bytes]) -> int:
    """Each payload through the agent's and the device's validators, each answer checked
    against the strict path: how many answers were accepts."""
    sides = (build(policy), build(policy, agent=False))
    return sum(assert_same_answer(v, kind, (T,), payload).ok
               for payload in payloads for v in sides)


def test_shadow_updates_answer_as_the_strict_path(policy: PolicyDocument) -> None:
    accepted = accepted_on_both_sides(
        policy, "shadow_update", [*HOSTILE, *shadow_payloads(1, 2500), *generated(2, 500)])
    assert accepted > 500  # the generator reaches the accept side, not only refusals


def test_config_patches_and_commands_answer_as_the_strict_path(policy: PolicyDocument) -> None:
    accepted = accepted_on_both_sides(
        policy, "config_patch", [*HOSTILE, *patch_payloads(3, 2000), *generated(4, 500)])
    agent = build(policy)
    commands = [b"", b"{}", b'{"delay_s":0}', b'{"delay_s":300}', b'{"delay_s":301}',
                b'{"delay_s":1.0}', b'{"delay_s":true}', b'{"delay_s":null}', b'{"delay_s":5,'
                b'"delay_s":6}', b'{"delay_s":5,"x":1}', b'{"delay_s":18446744073709551616}',
                b"[]", b"null", b'{"delay_s":"5"}', b' {"delay_s" : 5} ']
    for payload in [*commands, *HOSTILE]:
        for command in ("reboot", "identify", "nonexistent", None):
            assert_same_answer(agent, "command", (T,), payload, command)
    assert accepted > 400


@pytest.mark.usefixtures("proof")
def test_groups_and_odd_kinds_answer_as_the_strict_path(policy: PolicyDocument) -> None:
    doc = policy.model_copy(deep=True)
    doc.device_types["boiler"] = PolicyDocument.model_validate(
        {"device_types": {"boiler": {"config": {"mode": {"type": "string", "risk": "critical"}}}}}
    ).device_types["boiler"]
    v = build(doc)
    for payload in [*HOSTILE[:60], *patch_payloads(5, 300)]:
        for kind in ("config_patch", "shadow_update", "none", "telepathy"):
            for types in ((T, "boiler"), ("boiler",), (), ("toaster",)):
                assert_same_answer(v, kind, types, payload)


def test_the_reference_asks_pydantic_about_every_field(
    policy: PolicyDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strict path is what the fast ones are checked against: pydantic decides every
    field there, a valid one and a refused one (compiled or not)."""
    v = build(policy)
    asked: list[object] = []
    real = TypeAdapter.validate_python
    monkeypatch.setattr(TypeAdapter, "validate_python",
                        lambda self, obj, **kw: (asked.append(obj), real(self, obj, **kw))[1])
    assert strict_answer(v, "shadow_update", (T,), BENCH, None).ok
    assert asked == [{"target_temp_c": 21.5}]
    refused = b'{"state":{"desired":{"target_temp_c":99}}}'
    assert not strict_answer(v, "shadow_update", (T,), refused, None).ok
    assert asked[1:] == [{"target_temp_c": 99}]


def test_a_valid_update_takes_the_fast_path(
    policy: PolicyDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = from_source("iot_guard.payloads.validators")  # the spy sees its calls
    v = source.PayloadValidators.build(policy)
    calls: list[bytes] = []
    real = source.strict_parse_object
    monkeypatch.setattr(source, "strict_parse_object",
                        lambda payload: (calls.append(payload), real(payload))[1])
    def no_pydantic(*args: object, **kwargs: object) -> None:
        raise AssertionError("pydantic asked about a payload the sure pass accepts")

    monkeypatch.setattr(TypeAdapter, "validate_python", no_pydantic)
    spaced = json.dumps({"state": {"desired": {"mode": "heat", "target_temp_c": 20}},
                         "clientToken": "agent:7", "version": 3}).encode()
    for payload in (BENCH, spaced):
        assert v.judge("shadow_update", (T,), payload) == ("low", None, None)
    assert v.judge("shadow_update", (T,), b'{"state":{"desired":{"firmware_channel":"beta"}}}') \
        == ("high", None, None)
    assert v.judge("config_patch", (T,), b'{"mode":"off","clientToken":"c"}') == ("low", None, None)
    assert v.judge("command", (T,), b'{"delay_s":5}', "reboot") == ("high", None, None)
    assert calls == []
    # A duplicate key goes the strict way, and gets the strict parser's reason.
    duplicate = b'{"state":{"desired":{"mode":"heat","mode":"off"}}}'
    assert v.judge("shadow_update", (T,), duplicate)[1] == (
        'payload is not valid JSON: duplicate key "mode"'
    )
    assert calls == [duplicate]


# -- the field predicates ------------------------------------------------------------------

bounds = st.none() | st.integers(-60, 60) | st.floats(-60, 60, allow_nan=False) \
    | st.sampled_from([2.0**53, -(2.0**53), 2.0**63, 1e300, 0.5])


field_specs = partial(
    shared_field_specs, bounds, st.integers(-5, 5) | st.just(2**53 + 1), ["a", "bb", "ccc", "é"]
)


values = (
    st.none() | st.booleans() | st.integers(-70, 70) | st.integers()
    | st.floats() | st.text(max_size=4) | st.sampled_from(
        ["a", "bb", "ccc", "é", "\ud800", 2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64,
         10**400, 1, 1.0, 0.5, -0.0, float("nan"), float("inf"), [1], {"a": 1}]
    )
)


@settings(max_examples=400, deadline=None)
@given(field_specs(), st.booleans(), st.lists(values, max_size=10))
def test_sure_values_are_values_pydantic_accepts(
    spec: FieldSpec, nullable: bool, samples: list[object]
) -> None:
    vtype = value_type(spec)
    adapter: TypeAdapter[Any] = TypeAdapter(vtype | None if nullable else vtype)
    sure = sure_value(spec, nullable)
    for value in samples:
        if sure(value):
            try:
                adapter.validate_python(value, strict=True)
            except ValidationError:  # pragma: no cover - the failure this test is for
                pytest.fail(f"sure of {value!r} for {spec}, which pydantic refuses")


def test_sure_values_cover_the_usual_values(policy: PolicyDocument) -> None:
    config = PayloadValidators.build(policy)._types[T].config
    assert config.sure_rank({"target_temp_c": 21.5, "mode": "heat", "telemetry_interval_s": 60,
                             "firmware_channel": "beta"}) == 2
    assert config.sure_rank({"target_temp_c": None, "mode": None}) == 0
    for doubtful in ({"target_temp_c": 31}, {"mode": "warm"}, {"admin_pin": "1"},
                     {"telemetry_interval_s": 1.0}, {"target_temp_c": True}, {"x": 1}):
        assert config.sure_rank(doubtful) == -1


@settings(max_examples=400, deadline=None)
@given(field_specs(), st.booleans(), st.lists(values, max_size=10))
def test_alike_values_get_pydantic_verdict_from_field_problem(
    spec: FieldSpec, nullable: bool, samples: list[object]
) -> None:
    """Where ``alike`` holds, field_problem's None or reason is pydantic's verdict: the
    ground on which a refusal skips pydantic."""
    vtype = value_type(spec)
    adapter: TypeAdapter[Any] = TypeAdapter(vtype | None if nullable else vtype)
    same = alike(spec)
    for value in samples:
        if not same(value):
            continue
        try:
            adapter.validate_python(value, strict=True)
            accepted = True
        except ValidationError:
            accepted = False
        problem = field_problem(spec, value, nullable=nullable)
        assert (problem is None) == accepted, (spec, nullable, value, problem)


def test_alike_covers_the_usual_refusals_and_leaves_the_edges() -> None:
    def spec(**data: object) -> FieldSpec:
        return FieldSpec.model_validate(data)

    temp = alike(spec(type="number", minimum=5, maximum=30))
    for usual in (99, 4.5, -1, "21", True, None, [21], {"v": 1}, 2**53):
        assert temp(usual), usual
    for edge in (2**53 + 1, -(2**53) - 1, float("nan"), float("inf")):
        assert not temp(edge), edge
    # An enum member no double holds: pydantic compares it as a double, so always ask.
    assert not alike(spec(type="number", enum=[2**53 + 1]))(3)
    assert alike(spec(type="number", enum=[2**53]))(3)
    whole = alike(spec(type="integer", minimum=1, maximum=3600))
    for usual in (0, 3601, 60.0, True, "60", None):
        assert whole(usual), usual
    assert not whole(2**63)
    assert not alike(spec(type="integer", maximum=2.0**63))(1)
    word = alike(spec(type="string", enum=["heat", "off"]))
    assert word("warm") and word(1) and word(None) and not word("\ud800")
    assert alike(spec(type="boolean"))(1)


def test_a_usual_refusal_asks_no_pydantic(
    policy: PolicyDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value out of its bounds, out of its enum or of the wrong type is refused with
    the strict path's words and rule, without a call to pydantic; a doubtful value
    before it still goes to pydantic."""
    v = build(policy)
    refused = [
        (b'{"state":{"desired":{"target_temp_c":99}}}', None),
        (b'{"state":{"desired":{"mode":"heat","target_temp_c":"21"}}}', None),
        (b'{"state":{"desired":{"mode":"warm"}}}', None),
        (b'{"state":{"desired":{"telemetry_interval_s":60.0}},"clientToken":"t"}', None),
        (b'{"mode":"off","telemetry_interval_s":0}', "config_patch"),
        (b'{"delay_s":301}', "reboot"),
        (b'{"delay_s":true}', "reboot"),
    ]
    wants = []
    for payload, how in refused:
        kind, command = ("command", how) if how == "reboot" else (how or "shadow_update", None)
        want = strict_answer(v, kind, (T,), payload, command)
        assert not want.ok and want.rule and want.rule.startswith("rule:"), payload
        wants.append((kind, command, payload, want))
    doubtful = b'{"state":{"desired":{"target_temp_c":9007199254740993,"mode":"warm"}}}'
    doubt_want = strict_answer(v, "shadow_update", (T,), doubtful, None)
    asked: list[object] = []
    real = TypeAdapter.validate_python
    monkeypatch.setattr(TypeAdapter, "validate_python",
                        lambda self, obj, **kw: (asked.append(obj), real(self, obj, **kw))[1])
    for kind, command, payload, want in wants:
        assert v.judge(kind, (T,), payload, command) == (want.risk, want.reason, want.rule)
    assert asked == []
    assert v.judge("shadow_update", (T,), doubtful) == (
        doubt_want.risk, doubt_want.reason, doubt_want.rule)
    assert asked, "a value beyond 2**53 is left to pydantic"


scalars = (
    st.integers() | st.floats() | st.text() | st.booleans() | st.none()
    | st.sampled_from(["\ud800", "\x00", "\u2028", "\U0001f600", '"\\/', -0.0, 5e-324,
                       1e300, 2**64])
)


@settings(max_examples=500, deadline=None)
@given(scalars, st.integers(4, 60))
def test_show_writes_a_scalar_as_ascii_json(value: object, limit: int) -> None:
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    except ValueError:
        text = ascii(value)  # NaN and the infinities: not JSON
    want = text if len(text) <= limit else text[: limit - 3] + "..."
    assert show(value, limit) == want


def test_sure_value_leaves_the_edges_to_pydantic() -> None:
    def spec(**data: object) -> FieldSpec:
        return FieldSpec.model_validate(data)

    # pydantic compares a number as a double: 2**53 + 1 becomes 2**53, out of this enum.
    big = spec(type="number", enum=[2**53 + 1])
    assert not sure_value(big, False)(2**53 + 1)
    assert not sure_value(spec(type="number", enum=[-(2**53) - 1]), False)(-(2**53) - 1)
    assert not sure_value(spec(type="number"), False)(2**53 + 1)
    assert not sure_value(spec(type="number"), False)(1e300)
    assert not sure_value(spec(type="number"), False)(float("nan"))
    assert sure_value(spec(type="number"), False)(2**53)
    assert not sure_value(spec(type="integer"), False)(2**63)
    assert sure_value(spec(type="integer"), False)(2**63 - 1)
    assert not sure_value(spec(type="integer", minimum=0.5), False)(0)
    assert sure_value(spec(type="integer", minimum=0.5), False)(1)
    # pydantic refuses a lone surrogate in a str (the parsers never make one).
    for text_spec in (spec(type="string"), spec(type="string", max_length=3)):
        assert sure_value(text_spec, False)("ok")
        assert not sure_value(text_spec, False)("\ud800")
    assert sure_value(spec(type="boolean"), True)(None)
    assert not sure_value(spec(type="boolean"), False)(None)
    assert not sure_value(spec(type="boolean"), False)(1)
