"""The audit log's line format: every line a JSON object that starts with its chain link.

    {"seq":41,"prev":"<hex of line 40's RFC 6962 leaf hash>", ...the decision record...}

``seq`` numbers the lines of one guard instance's chain from 0 and ``prev`` hashes the
exact stored bytes of the line before (newline excluded), so an edited, removed,
inserted or moved line breaks the chain. The link comes first so a verifier reads it
without parsing the whole record.

How ``prev`` hashes that line is the line format, which each open record names for
the links after it: format 2 (written now) takes the line's Merkle leaf hash,
SHA-256(0x00 || line) [RFC 6962 §2.1], which the tree needs anyway, so one hash serves
both; format 1 (logs written before) took SHA-256(line). A file may hold both: a guard
that restarts on an older log goes on with an open record of format 2.

The chain's own lines carry ``"audit"`` right after the link:
- ``"open"``: written when a guard starts, restarts or opens a rotated file. It names the
  chain's origin (the guard instance) and the line format, and carries the Merkle
  frontier of the lines before it, so a file verifies on its own even when older files
  were deleted.
- ``"checkpoint"``: a C2SP signed checkpoint over lines 0..seq-1, and the frontier; from
  format 2 on, the format too, so a restart that reads back only to the last checkpoint
  knows how the lines after it link. Its bytes are canonical: a verifier rebuilds them
  from the parsed values.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from orjson import dumps as _orjson_dumps

GENESIS = b"0" * 64  # the prev of line 0: no line before it
RESERVED = frozenset({"seq", "prev", "audit"})
OPEN, CHECKPOINT = "open", "checkpoint"
FORMAT = 2  # the line format this version writes (in open records and checkpoints)
FORMATS = (1, 2)  # the line formats it reads: logs of earlier versions still verify


def format_named(value: Mapping[str, Any], default: int | None = None) -> int:
    """The line format an open record (or checkpoint) names, ``default`` when it names
    none; ValueError when it is not one this version reads (JSON's true is not 1)."""
    found = value.get("format", default)
    if found.__class__ is not int or found not in FORMATS:
        raise ValueError(f"line format {value.get('format')!r} is not one this version reads "
                         f"({', '.join(map(str, FORMATS))}): written by a later iot-guard "
                         "version?")
    return int(found)


def _utc_iso_slow(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


# Every record is stamped, and a busy guard stamps thousands a second: the date and time
# up to the second are formatted once per second, the microseconds appended. Each cache
# is one (key, text) tuple, read once and replaced whole: utc_iso is a shared helper any
# thread may call (the console's JSON formatter runs in the logging thread), and a pair of
# list slots written one after the other could be read half old, half new: a stamp with
# another second's date.
_second: tuple[float | None, str] = (None, "")  # (whole seconds, "...T23:50:44.")
_last: tuple[float | None, str] = (None, "")  # the last timestamp formatted (NaN never equals)
_modf = math.modf


def utc_iso(timestamp: float) -> str:
    """``2026-11-30T23:50:44.123456Z``: exactly what datetime gives (same rounding)."""
    global _second, _last
    last = _last
    if timestamp == last[0]:
        return last[1]  # the packets of one read share their ``now``
    frac, whole = _modf(timestamp)
    # datetime.fromtimestamp rounds the fraction half-even to microseconds, carrying a
    # full second into the seconds (CPython _PyTime_ObjectToTimeval, ROUND_HALF_EVEN).
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    second = _second
    if whole != second[0]:
        if not -62135596800.0 <= whole < 253402300799.0:  # outside years 1..9999
            return _utc_iso_slow(timestamp)
        second = _second = (
            whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    stamp = f"{second[1]}{str(micros).zfill(6)}Z"  # micros: 0..999999
    _last = (timestamp, stamp)
    return stamp


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


def record_line(seq: int, prev: bytes, record: Mapping[str, Any]) -> bytes:
    """One decision record behind its link; raises ValueError/TypeError if it cannot be."""
    if record.__class__ is TemplateRecord:
        return record.line(seq, prev)
    if not RESERVED.isdisjoint(record):
        raise ValueError(f"audit record uses reserved keys {sorted(RESERVED & set(record))}")
    body = record_body(record if isinstance(record, dict) else dict(record))
    link = b'{"seq":%d,"prev":"%s"' % (seq, prev)
    return link + b"}" if body == b"{}" else link + b"," + body[1:]


# How a line template writes a value it leaves open, and the value a record holds for it:
# an int as it is; a boolean as b"true"/b"false"; a string JSON writes as it is (ASCII,
# no quote, backslash or control character: a timestamp, a hex digest) as its bytes.
OPEN_INT, OPEN_BOOL, OPEN_PLAIN_STR = b"%d", b"%s", b'"%s"'
_READ_OPEN: dict[bytes, Callable[[Any], Any]] = {
    OPEN_INT: int, OPEN_BOOL: b"true".__eq__, OPEN_PLAIN_STR: bytes.decode,
}


class LineTemplate:
    """Records that differ only in the values of a few keys (``open``), as one record
    (``fields``, with stand-ins for those values) and the format of their lines:
    ``line_format % (seq, prev, *open_values)`` is ``record_line``'s line for the
    record ``fields`` with ``open_values`` (as OPEN_* says) in the open keys.

    ``memo`` keeps what a reader derives from the fixed fields alone (the metrics' key,
    the console's verdict), once per template instead of once per record: see ``fixed``."""

    __slots__ = ("fields", "line_format", "open_index", "readers", "memo")

    def __init__(self, fields: dict[str, Any], line_format: bytes,
                 open_index: dict[str, int], readers: list[Callable[[Any], Any]]) -> None:
        self.fields = fields
        self.line_format = line_format
        self.open_index = open_index
        self.readers = readers
        self.memo: dict[str, Any] = {}

    def fixed(self, keys: tuple[str, ...]) -> tuple[Any, ...] | None:
        """The values of ``keys`` (None for a missing one, as ``Mapping.get``) that every
        record of this template shares; None when one of them is open (per record)."""
        if not self.open_index.keys().isdisjoint(keys):
            return None
        fields = self.fields
        return tuple([fields.get(key) for key in keys])


# The open keys' places and readers, shared by the templates of one layout (a few).
_Layout = tuple[dict[str, int], list[Callable[[Any], Any]]]
_layouts: dict[tuple[tuple[str, bytes], ...], _Layout] = {}


def line_template(record: dict[str, Any], open_keys: dict[str, bytes]) -> LineTemplate | None:
    """The template of records shaped like ``record`` (the same keys in the same order,
    the same values but for ``open_keys``, which say how each is written). None when
    ``record_line`` would not encode such a record with orjson (a reserved key, a value
    only ``dumps`` encodes): those records are encoded one by one, as always.

    A JSON object's members are written one after another: the runs of fixed members
    are encoded once (by orjson, as ``record_body`` does), the open ones go between.
    The template keeps ``record`` (its stand-in values are never read): leave it be."""
    if not RESERVED.isdisjoint(record):
        return None
    items = list(record.items())
    parts = [b'{"seq":%d,"prev":"%s"']
    opened: list[tuple[str, bytes]] = []
    start = 0
    try:
        for i, (key, _) in enumerate(items):
            kind = open_keys.get(key)
            if kind is None:
                continue
            if i > start:
                parts.append(b"," + _orjson_dumps(dict(items[start:i]))[1:-1].replace(b"%", b"%%"))
            parts.append(b"," + _orjson_dumps(key).replace(b"%", b"%%") + b":" + kind)
            opened.append((key, kind))
            start = i + 1
        if start < len(items):
            parts.append(b"," + _orjson_dumps(dict(items[start:]))[1:-1].replace(b"%", b"%%"))
    except TypeError:
        return None
    parts.append(b"}")
    layout = _layouts.get(tuple(opened))
    if layout is None:
        if len(_layouts) >= 64:
            _layouts.clear()
        layout = _layouts[tuple(opened)] = (
            {key: i for i, (key, _) in enumerate(opened)},
            [_READ_OPEN[kind] for _, kind in opened])
    return LineTemplate(record, b"".join(parts), *layout)


class TemplateRecord(Mapping[str, Any]):
    """A decision record as a template and its open values, as its line holds them:
    made per packet instead of a dict of twenty keys, and written without encoding a
    dict (``line``). Readers get a read-only mapping of exactly what the line says
    (``dict(record)`` for a dict). Made by ``TemplateRecord.of`` (checked), or on the
    packet path by the constructor itself (the recorder's values fit by construction)."""

    __slots__ = ("template", "open_values")

    template: LineTemplate
    open_values: tuple[Any, ...]

    def __init__(self, template: LineTemplate, open_values: tuple[Any, ...]) -> None:
        self.template = template
        self.open_values = open_values

    @classmethod
    def of(cls, template: LineTemplate, open_values: tuple[Any, ...]) -> TemplateRecord:
        if len(open_values) != len(template.open_index):
            raise ValueError(f"{len(template.open_index)} open values, not "
                             f"{len(open_values)}")
        return cls(template, open_values)

    def line(self, seq: int, prev: bytes) -> bytes:
        return self.template.line_format % (seq, prev, *self.open_values)

    def __getitem__(self, key: str) -> Any:
        template = self.template
        i = template.open_index.get(key)
        if i is None:
            return template.fields[key]
        return template.readers[i](self.open_values[i])

    def __iter__(self) -> Iterator[str]:
        return iter(self.template.fields)

    def __len__(self) -> int:
        return len(self.template.fields)

    def __repr__(self) -> str:
        return f"TemplateRecord({dict(self)!r})"


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


def checkpoint_line(
    seq: int, prev: bytes, note: str, frontier: list[bytes], format: int
) -> bytes:
    # Format 1 checkpoints name no format: those bytes stay as they were written.
    named = {"format": format} if format != 1 else {}
    return dumps({
        "seq": seq, "prev": prev.decode(), "audit": CHECKPOINT, **named, "checkpoint": note,
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
