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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = b"0" * 64  # the prev of line 0: no line before it
RESERVED = frozenset({"seq", "prev", "audit"})
OPEN, CHECKPOINT = "open", "checkpoint"
FORMAT = 1  # in the open record: the line format version a verifier must understand

_SEQ = b'{"seq":'
_PREV = b'"prev":"'
_KINDS = ((b',"audit":"open"', OPEN), (b',"audit":"checkpoint"', CHECKPOINT))


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def record_line(seq: int, prev: bytes, record: dict[str, Any]) -> bytes:
    """One decision record behind its link; raises ValueError/TypeError if it cannot be."""
    if not RESERVED.isdisjoint(record):
        raise ValueError(f"audit record uses reserved keys {sorted(RESERVED & set(record))}")
    body = dumps(record)
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


@dataclass(frozen=True, slots=True)
class Link:
    seq: int
    prev: bytes
    kind: str | None  # OPEN, CHECKPOINT or None for a decision record


def read_link(line: bytes) -> Link | None:
    """The link at the start of a line, without parsing the rest; None if there is none."""
    if not line.startswith(_SEQ):
        return None
    comma = line.find(b",", 7, 40)
    digits = line[7:comma]
    if comma < 0 or not digits.isdigit() or (len(digits) > 1 and digits[0] == 48):
        return None
    start = comma + 1 + len(_PREV)
    if line[comma + 1:start] != _PREV or line[start + 64:start + 65] != b'"':
        return None
    rest = start + 65
    tail = line[rest:rest + 1]
    if tail == b"}" and rest + 1 == len(line):
        return Link(int(digits), line[start:start + 64], None)
    if tail != b",":
        return None
    for marker, kind in _KINDS:
        if line.startswith(marker, rest):
            return Link(int(digits), line[start:start + 64], kind)
    return Link(int(digits), line[start:start + 64], None)


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
