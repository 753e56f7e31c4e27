"""Continue a chain after a restart: find its end in the log file's tail.

Only the tail is read: backwards to the last checkpoint (whose frontier its signature
vouches for) or open record, then forwards through the lines after it with the same
rules the verifier applies. A tail that does not continue the chain stops the guard:
writing after it would bury the damage under valid-looking records.

The anchor's own link is checked against the line before it too. That also checks the
line format a checkpoint names, which its signature does not cover: a checkpoint whose
format was changed no longer chains to the line before it. (Changing both its format
and its ``prev`` gets past recovery, but gains an intruder nothing: the unsigned lines
after the last checkpoint can be rewritten and relinked anyway, and the edited
checkpoint line stays in the signed tree for ``verify`` to find.)
"""

from __future__ import annotations

import os
from pathlib import Path

from .chain import ChainError, ChainState, link_to
from .checkpoint import Checkpoint, NoteError, parse_note
from .merkle import Frontier
from .records import (
    CHECKPOINT,
    FORMATS,
    OPEN,
    decode_frontier,
    format_named,
    parse_object,
    read_link,
)
from .signer import NoteVerifier
from .verifier import check_checkpoint, check_open, keys_by_origin

_BLOCK = 1 << 16


class RecoveryError(Exception):
    """The file's end is not a chain this guard can continue; the message says why."""


def _anchor_and_after(fd: int, size: int) -> tuple[bytes | None, list[bytes]]:
    """The line before the last open/checkpoint line (None when that is the file's
    first line), and the lines from it to the end (the final newline excluded), read
    backwards in blocks."""
    collected: list[bytes] = []
    found = False
    pos = size - 1  # the file ends with a newline (checked by the caller)
    carry = b""
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        chunk = os.pread(fd, step, pos) + carry
        parts = chunk.split(b"\n")
        # Until the start of the file is read, the first part may be a cut line.
        carry = parts.pop(0) if pos > 0 else b""
        for line in reversed(parts):
            if found:
                collected.reverse()
                return line, collected
            collected.append(line)
            link = read_link(line)
            found = link is not None and link.kind in (OPEN, CHECKPOINT)
    if found:
        collected.reverse()
        return None, collected
    raise RecoveryError("no open record or checkpoint in the file: not an iot-guard audit "
                        "chain (a log from an older version?)")


def _check_anchor_link(before: bytes, anchor: bytes, state: ChainState) -> None:
    """The anchor chains to the line before it: a checkpoint in the format it names (the
    format of the lines around it), an open record in either (it may start a new one)."""
    link = read_link(anchor)
    assert link is not None
    formats = (state.format,) if link.kind == CHECKPOINT else FORMATS
    if all(link_to(before, f) != link.prev for f in formats):
        raise RecoveryError(f"record {link.seq} (the last {link.kind} record) does not chain "
                            "to the line before it: one of the two was edited")


def _from_anchor(line: bytes, verifier: NoteVerifier | None, origin: str) -> ChainState:
    link = read_link(line)
    assert link is not None
    try:
        value = parse_object(line)
        tree = Frontier(link.seq, decode_frontier(value.get("frontier")))
        if link.kind == OPEN:
            found = value.get("origin")
            if not isinstance(found, str):
                raise ValueError("no origin")
            state = ChainState(_same(found, origin), link.seq, link.prev, tree)
            check_open(state, line, starting=True)
            return state
        note = value.get("checkpoint")
        if not isinstance(note, str):
            raise ValueError("no checkpoint note")
        checkpoint = Checkpoint.parse(parse_note(note)[0])
        line_format = format_named(value, default=1)  # format 1 checkpoints name none
    except (ValueError, NoteError) as exc:
        raise RecoveryError(f"record {link.seq} is damaged: {exc}") from exc
    state = ChainState(_same(checkpoint.origin, origin), link.seq, link.prev, tree,
                       signed=link.seq, format=line_format)
    if verifier is not None:
        # The frontier is unsigned; the checkpoint's signed root vouches for it.
        check_checkpoint(state, line, keys_by_origin([verifier]))
    elif checkpoint.root != tree.root():
        raise RecoveryError(f"record {link.seq}: the frontier does not match the checkpoint")
    return state


def _same(found: str, origin: str) -> str:
    if found != origin:
        raise RecoveryError(f"it holds the chain of {found!r} and this guard writes {origin!r}:"
                            " give each guard instance its own file")
    return found


def recover(
    path: Path, fd: int, verifier: NoteVerifier | None, origin: str
) -> ChainState | None:
    """The end of ``origin``'s chain in ``path`` (open as ``fd``); None for an empty file.

    ``verifier``: this guard's public key, to check the checkpoint the state is taken from.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise RecoveryError("the last line is cut short (a crash mid-write?)")
    before, lines = _anchor_and_after(fd, size)
    try:
        state = _from_anchor(lines[0], verifier, origin)
    except ChainError as err:
        raise RecoveryError(f"the chain's last checkpoint: {err.message}") from err
    if before is not None:
        _check_anchor_link(before, lines[0], state)
    state.append(lines[0])
    try:
        for line in lines[1:]:
            link = state.check(line)
            if link.kind == OPEN:
                check_open(state, line, starting=False)
            elif link.kind == CHECKPOINT:
                if verifier is not None:
                    check_checkpoint(state, line, keys_by_origin([verifier]))
                state.signed = link.seq
            state.append(line)
    except ChainError as err:
        raise RecoveryError(f"record {state.seq}: {err.message}") from err
    return state
