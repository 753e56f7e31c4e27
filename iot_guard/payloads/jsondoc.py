"""Strict parsing of a JSON payload (bytes) into a plain Python object.

A payload comes from an untrusted agent and goes on to devices whose JSON parsers
we do not know, so anything two parsers might read differently is refused:
duplicate keys (RFC 8259 section 4 leaves their meaning open), NaN/Infinity (not
JSON), numbers that overflow a double, lone surrogates (not Unicode), a byte order
mark, invalid UTF-8. Size and nesting are bounded before and after parsing.

Two readers, one answer. ``strict_parse_json`` is the reference: the standard library's
parser with hooks that refuse what is listed above, and a reason for every refusal.
``parse_json`` first reads the payload with orjson (in C: no Python call per object or
number) and keeps that reading only when it can prove it is the strict parser's value
(``proven``); on any refusal or doubt it returns what ``strict_parse_json`` returns, so
every refusal keeps its reason. What orjson reads differently, and how it is caught:

- duplicate keys (orjson keeps the last): every object member has one colon outside
  string literals (RFC 8259 section 4), and a duplicate shrinks a dict but not the text,
  so the members of the dicts must add up to those colons (``members_match``); or, in
  C: orjson writing the value back has as many colons as the payload (a duplicate
  drops a member, its colon and its strings' colons; without a \\u escape a string's
  colons are the same read or written);
- an integer literal beyond 64 bits (orjson reads it as a float): such a float is at
  least 2**63 in magnitude, and any float that large is doubted; or, in C: no run of
  19 digits in the payload (2**63 has 19);
- nesting (orjson allows 1024 levels): counted in the walk; or, in C: the brackets, or
  the indentation of orjson's indented writing (a value inside n containers is
  indented 2n spaces).

orjson itself refuses NaN/Infinity, numbers that overflow a double, invalid UTF-8, a
byte order mark and lone surrogates (it builds strings from UTF-8, which cannot hold
one); it reads every other number and escape as the standard library does
(tests/unit/test_payload_fastpath.py runs both readers on valid and hostile payloads).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

# AWS IoT caps a shadow document at 8 KB; we use the same bound for every JSON payload.
MAX_DOCUMENT_BYTES = 8192
# Counted so that {"state": {"desired": {...}}} is depth 3 (every object or array is one level).
MAX_DEPTH = 6
# AWS IoT: "clientToken ... must be no more than 64 bytes" (UTF-8 encoded).
MAX_CLIENT_TOKEN_BYTES = 64

_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


class JsonRefused(ValueError):
    """Raised inside the decoder's hooks; carries the one-line reason."""


def _pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRefused(f"duplicate key {show(key)}")
            seen.add(key)
    return obj


def _constant_hook(name: str) -> object:
    # json accepts NaN, Infinity and -Infinity by default; RFC 8259 section 6 does not.
    raise JsonRefused(f"{name} is not a JSON number")


def _float_hook(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # e.g. 1e400: Python reads it as inf, another parser may refuse or clamp it.
        raise JsonRefused(f"number {text[:40]} is out of range")
    return value


# One decoder, built once: json.loads(..., hooks) would build a new one per call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_hook, parse_constant=_constant_hook, parse_float=_float_hook
)
# Its scanner, called directly for a payload that is one value and nothing else (the
# usual case); anything else goes through ``decode`` for its whitespace rules and errors.
_SCAN: Callable[[str, int], tuple[object, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


# json.dumps with any non-default option builds a new encoder per call, about half of a
# refusal's wording cost: one encoder, built once, with dumps' defaults otherwise.
_ascii_json = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
# The function that encoder calls for a str (C, in CPython's _json).
_ascii_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def show(value: object, limit: int = 40) -> str:
    """A value as short ASCII JSON for a reason string.

    ASCII keeps the reason valid UTF-8 without U+0000 whatever the agent sent, as an
    MQTT 5 reason string must be [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    """
    # A refused field's value is mostly a scalar: written here as the encoder writes it
    # (repr for an int and a finite float, its own escaping for a str), without the
    # encoder's Python-level dispatch, the larger part of a refusal's wording cost.
    # Exact types only (a subclass may have its own repr); NaN and infinities go the
    # encoder's way, which refuses them (allow_nan=False).
    if type(value) is str:
        text = _ascii_str(value)
    elif type(value) is int or (type(value) is float and math.isfinite(value)):
        text = repr(value)
    else:
        try:
            text = _ascii_json(value)
        except (TypeError, ValueError):  # pragma: no cover - parsed JSON always dumps
            text = ascii(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def kind_name(value: object) -> str:
    return _KIND_NAMES.get(type(value), "a value")


def _deep_problem(value: object, depth: int, max_depth: int) -> str | None:
    """Nesting and lone surrogates, walking only as deep as the limit allows."""
    if isinstance(value, dict):
        depth += 1
        if depth > max_depth:
            return f"payload nests deeper than {max_depth} levels"
        for key, item in value.items():
            if _has_surrogate(key):
                return f"key {show(key)} is not valid Unicode (lone surrogate)"
            problem = _deep_problem(item, depth, max_depth)
            if problem:
                return problem
    elif isinstance(value, list):
        depth += 1
        if depth > max_depth:
            return f"payload nests deeper than {max_depth} levels"
        for item in value:
            problem = _deep_problem(item, depth, max_depth)
            if problem:
                return problem
    elif isinstance(value, str) and _has_surrogate(value):
        return f"string {show(value)} is not valid Unicode (lone surrogate)"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_loads = orjson.loads
_dumps = orjson.dumps
# An integer literal beyond 64 bits has at least 19 digits (2**63 has 19).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
# Up to this size a payload is proven by a walk first (measured: cheaper below it).
_SMALL = 256
# The deepest limit the walk proves (policies allow 64): well inside Python's recursion limit.
_WALK_DEPTH = 256
# orjson reads an integer literal beyond 64 bits as a float of at least this magnitude.
_BIG_FLOAT = 2.0**63
# A JSON string literal in a text orjson accepted (so every quote outside one opens one).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


# What loads_unproven returns for a payload it did not read (None is JSON null).
UNREAD: object = object()


def loads_unproven(payload: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> object:
    """orjson's reading of a payload within ``max_bytes``, or ``UNREAD`` when orjson
    refuses it or it is too big (``strict_parse_json`` then says why).

    Unproven: the caller keeps it only after proving it is ``strict_parse_json``'s value
    (``proven``, or the typed validators' own walk plus ``members_match``).
    """
    if len(payload) > max_bytes:
        return UNREAD
    try:
        return _loads(payload)
    except ValueError:  # orjson.JSONDecodeError
        return UNREAD


def members_match(payload: bytes, members: int) -> bool:
    """True when ``members`` (the sizes of every dict read from ``payload`` by orjson,
    added up) is the number of object members in the text: then no key was repeated.

    A colon outside string literals only ever ends a member's key (RFC 8259 section 4),
    and a duplicate key shrinks its dict, not the text. The colons of the whole payload
    are at least the members, so if they equal the dict sizes no duplicate was dropped;
    otherwise the colons inside strings are removed and the rest counted.
    """
    if payload.count(b":") == members:
        return True
    if b"\\" not in payload:
        # No escapes: every quote opens or closes a string, so the even pieces are outside.
        outside = b"".join(payload.split(b'"')[::2])
    else:
        outside = _STRING.sub(b"", payload)
    return outside.count(b":") == members


def _members(value: Any, depth: int, max_depth: int) -> int:
    """The sizes of every dict in ``value`` (a dict or a list at nesting level
    ``depth + 1``) added up, or -1 when it nests deeper than ``max_depth`` or holds a
    float to doubt."""
    depth += 1
    if depth > max_depth:
        return -1
    items: Iterable[Any]
    if type(value) is dict:
        count = len(value)
        items = value.values()
    else:
        count = 0
        items = value
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            inner = _members(item, depth, max_depth)
            if inner < 0:
                return -1
            count += inner
        elif kind is float and not -_BIG_FLOAT < item < _BIG_FLOAT:
            return -1
    return count


def proven(payload: bytes, value: Any, max_depth: int) -> bool:
    """True when ``value`` (orjson's reading of ``payload``) is surely what
    ``strict_parse_json`` returns for it: no duplicate key, no float read from a
    too-big integer, no deeper than ``max_depth``."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return kind is not float or -_BIG_FLOAT < value < _BIG_FLOAT
    # Up to _SMALL bytes (a few values) walking them costs less than writing the value
    # back, so only a bigger payload tries C first.
    if (
        len(payload) > _SMALL
        and max_depth >= 1
        and b"\\u" not in payload
        and _NINETEEN_DIGITS not in payload.translate(_DIGITS_AS_ZERO)
    ):
        # In C, without a walk (see the module's docstring): no 19-digit integer, the same
        # colons written back (no duplicate key), nesting from brackets or indentation.
        shallow = payload.count(b"{") + payload.count(b"[") <= max_depth
        try:
            text = _dumps(value) if shallow else _dumps(value, option=orjson.OPT_INDENT_2)
        except TypeError:  # orjson.JSONEncodeError: nests deeper than orjson writes
            text = b""
        if text:
            if text.count(b":") != payload.count(b":"):
                return False  # a duplicate key
            if shallow or b"\n" + b" " * (2 * max_depth) not in text:
                return True
    if max_depth > _WALK_DEPTH:
        # The strict parser (the standard library's, recursive) refuses what nests past
        # Python's recursion limit: so deep a limit is strict's to decide, compiled or not.
        return False
    try:
        members = _members(value, 0, max_depth)
    except RecursionError:  # a call stack already deep: strict decides
        return False
    return members >= 0 and members_match(payload, members)


def parse_json(
    payload: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH
) -> tuple[object, str]:
    """Parse a payload that must be one JSON value: (value, "") or (None, reason).

    The same answer as ``strict_parse_json``, at a fraction of the cost when the payload
    is valid (see the module's docstring)."""
    value = loads_unproven(payload, max_bytes)
    if value is not UNREAD and proven(payload, value, max_depth):
        return value, ""
    return strict_parse_json(payload, max_bytes=max_bytes, max_depth=max_depth)


def strict_parse_json(
    payload: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH
) -> tuple[object, str]:
    """Parse a payload that must be one JSON value: (value, "") or (None, reason), with
    the standard library's parser (the reference ``parse_json`` falls back to)."""
    size = len(payload)
    if size > max_bytes:
        return None, f"payload is {size} bytes; the limit is {max_bytes}"
    try:
        # Explicit UTF-8: json.loads(bytes) would also guess UTF-16/32 (RFC 8259 section 8.1).
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"payload is not valid UTF-8 (byte {exc.start})"
    try:
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1  # no value at 0 (whitespace first, or not JSON): decode says which
        if end != len(text):
            value = _DECODER.decode(text)
    except JsonRefused as exc:
        return None, f"payload is not valid JSON: {exc}"
    except RecursionError:
        return None, f"payload nests deeper than {max_depth} levels"
    except ValueError as exc:
        # JSONDecodeError, or int() refusing a number with more than 4300 digits.
        return None, f"payload is not valid JSON: {str(exc)[:80]}"
    # Fast path: with at most max_depth brackets the depth cannot exceed it, and without
    # a \u escape valid UTF-8 input cannot produce a lone surrogate.
    if payload.count(b"{") + payload.count(b"[") > max_depth or b"\\u" in payload:
        problem = _deep_problem(value, 0, max_depth)
        if problem:
            return None, problem
    return value, ""


def parse_object(
    payload: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH
) -> tuple[dict[str, object] | None, str]:
    """Parse a payload that must be one JSON object: (object, "") or (None, reason)."""
    return _object(parse_json(payload, max_bytes=max_bytes, max_depth=max_depth))


def strict_parse_object(
    payload: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH
) -> tuple[dict[str, object] | None, str]:
    """``parse_object`` with the standard library's parser only (``strict_parse_json``)."""
    return _object(strict_parse_json(payload, max_bytes=max_bytes, max_depth=max_depth))


def _object(parsed: tuple[Any, str]) -> tuple[dict[str, object] | None, str]:
    value, problem = parsed
    if problem:
        return None, problem
    if type(value) is not dict:
        return None, f"payload must be a JSON object, not {kind_name(value)}"
    return value, ""
