"""The audit log's line format: every line a JSON object that starts with its chain link.

    {"seq":41,"prev":"<hex SHA-256 of line 40's exact bytes>", ...the decision record...}

``seq`` numbers the lines of one guard instance's chain from 0 and ``prev`` hashes the
exact stored bytes of the line before (newline excluded), so an edited, removed,
inserted or moved line breaks the chain. The link comes first so a verifier reads it
without parsing the whole record.

The chain's own lines carry ``"audit"`` right after the link:
- ``"open"``: written when a guard starts, restarts or opens a rotated file. It names the
  chain's origin (the guard instance) and carries the Merkle frontier of the lines
  before it, so a file verifies on its own even when older files were deleted.
- ``"checkpoint"``: a C2SP signed checkpoint over lines 0..seq-1, and the frontier.
  Its bytes are canonical: a verifier rebuilds them from the parsed values.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, datetime
from typing import Any, NamedTuple

from orjson import dumps as _orjson_dumps

GENESIS = b"0" * 64  # the prev of line 0: no line before it
RESERVED = frozenset({"seq", "prev", "audit"})
OPEN, CHECKPOINT = "open", "checkpoint"
FORMAT = 1  # in the open record: the line format version a verifier must understand



def _utc_iso_slow(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


# Every record is stamped, and a busy guard stamps thousands a second: the date and time
# up to the second are formatted once per second, the microseconds appended.
_second: list[Any] = [None, ""]


def utc_iso(timestamp: float) -> str:
    """``2026-11-30T23:50:44.123456Z``: exactly what datetime gives (same rounding)."""
    frac, whole = math.modf(timestamp)
    # datetime.fromtimestamp rounds the fraction half-even to microseconds, carrying a
    # full second into the seconds (CPython _PyTime_ObjectToTimeval, ROUND_HALF_EVEN).
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    if whole != _second[0]:
        if not -62135596800.0 <= whole < 253402300799.0:  # outside years 1..9999
            return _utc_iso_slow(timestamp)
        _second[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = whole
    return f"{_second[1]}.{micros:06d}Z"


# Built once: json.dumps with options makes a new encoder per call, and a line is
# encoded per record. The C encoder when there is one (CPython), else the same options.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode: Any = (
    _c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                    False, False, True)
    if _c_make_encoder is not None else None
)


def dumps(value: Any) -> bytes:
    if _encode is None:
        return _ENCODER.encode(value).encode()
    try:
        return "".join(_encode(value, 0)).encode()
    except RecursionError as exc:  # no circular-reference markers on this encoder
        raise ValueError("circular reference in an audit record") from exc


def record_body(record: dict[str, Any]) -> bytes:
    """A decision record as compact UTF-8 JSON: what ``dumps`` writes for strings, ints,
    booleans and null, at a seventh of the cost (orjson; every audited packet pays this).
    Floats are written in their shortest form (``1e16`` where json writes ``1e+16``: the
    same number) and a non-finite float as null, which JSON has for want of NaN
    (RFC 8259 section 6). What orjson cannot encode (an integer beyond 64 bits, a
    non-string key) goes through ``dumps``, so no record is refused that was not before."""
    try:
        return _orjson_dumps(record)
    except TypeError:
        return dumps(record)


def record_line(seq: int, prev: bytes, record: dict[str, Any]) -> bytes:
    """One decision record behind its link; raises ValueError/TypeError if it cannot be."""
    if not RESERVED.isdisjoint(record):
        raise ValueError(f"audit record uses reserved keys {sorted(RESERVED & set(record))}")
    body = record_body(record)
    link = b'{"seq":%d,"prev":"%s"' % (seq, prev)
    return link + b"}" if body == b"{}" else link + b"," + body[1:]


def encode_frontier(nodes: list[bytes]) -> list[str]:
    return [base64.b64encode(node).decode() for node in nodes]


def decode_frontier(value: object) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("frontier is not a list of base64 hashes")
    try:
        return [base64.b64decode(v, validate=True) for v in value]
    except binascii.Error as exc:
        raise ValueError(f"frontier is not base64: {exc}") from exc


def open_line(
    seq: int, prev: bytes, *, origin: str, reason: str, frontier: list[bytes],
    key_id: int | None, timestamp: float, pid: int,
) -> bytes:
    return dumps({
        "seq": seq, "prev": prev.decode(), "audit": OPEN, "format": FORMAT, "origin": origin,
        "reason": reason, "frontier": encode_frontier(frontier),
        "key_id": f"{key_id:08x}" if key_id is not None else None,
        "timestamp": utc_iso(timestamp), "pid": pid,
    })


def checkpoint_line(seq: int, prev: bytes, note: str, frontier: list[bytes]) -> bytes:
    return dumps({
        "seq": seq, "prev": prev.decode(), "audit": CHECKPOINT, "checkpoint": note,
        "frontier": encode_frontier(frontier),
    })


class Link(NamedTuple):
    seq: int
    prev: bytes
    kind: str | None  # OPEN, CHECKPOINT or None for a decision record


# The link, matched in C: a canonical seq (no leading zero), a lowercase hex hash, then
# either the end of the object or the next member (the chain's own lines name their kind).
LINK = re.compile(
    rb'\{"seq":(0|[1-9][0-9]{0,19}),"prev":"([0-9a-f]{64})"(?:\}$|,(?:"audit":"(open|checkpoint)"[,}])?)'
)


def read_link(line: bytes) -> Link | None:
    """The link at the start of a line, without parsing the rest; None if there is none."""
    match = LINK.match(line)
    if match is None:
        return None
    kind = match[3]
    return Link(int(match[1]), match[2], kind.decode() if kind is not None else None)


def is_hex_hash(value: bytes) -> bool:
    return len(value) == 64 and all(c in b"0123456789abcdef" for c in value)


def parse_object(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JSON line: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
