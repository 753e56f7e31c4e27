"""One guard instance's chain: where it ends, how a line continues it (sans-IO).

The writer and every reader (the verifier, restart recovery) use this one state and
these one set of rules, so what the guard writes is exactly what verify accepts.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from .checkpoint import Checkpoint, format_note
from .hashes import hex_sha256, leaf_hash
from .merkle import Frontier
from .records import (
    FORMAT,
    GENESIS,
    Link,
    TemplateRecord,
    checkpoint_line,
    open_line,
    read_link,
    record_line,
)
from .signer import NoteSigner

_hexlify = binascii.hexlify  # bytes of the hex digest, as the line holds it


def _link(line: bytes, leaf: bytes, format: int) -> bytes:
    """The ``prev`` of the line after ``line``, whose Merkle leaf hash is ``leaf``, in line
    format ``format`` (records.FORMAT): format 2 that leaf hash, format 1 the line's own
    SHA-256, in hex. The writer has the leaf anyway (the tree needs it)."""
    return _hexlify(leaf) if format != 1 else hex_sha256(line)


def link_to(line: bytes, format: int) -> bytes:
    """``_link`` for a line whose leaf is not at hand (recovery's anchor check)."""
    return _link(line, leaf_hash(line), format)


class ChainError(Exception):
    """A line that does not continue the chain. ``kind`` says how:
    format (no link), gap (a later seq than expected), behind (an earlier one),
    prev (the previous line's hash differs: that line was edited), or a checkpoint or
    open-record problem (checkpoint, signature, key, open)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ChainState:
    """The end of a chain: the next seq, the hash of the last line, the Merkle frontier
    over lines 0..seq-1, the seq of the last checkpoint line (-1: none yet), and the line
    format the next link is made by (the last open record's; see records.FORMAT)."""

    __slots__ = ("format", "origin", "prev", "seq", "signed", "tree")

    def __init__(
        self, origin: str, seq: int = 0, prev: bytes = GENESIS, tree: Frontier | None = None,
        signed: int = -1, format: int = FORMAT,
    ) -> None:
        self.origin = origin
        self.seq = seq
        self.prev = prev
        self.tree = tree if tree is not None else Frontier()
        if self.tree.size != seq:
            raise ValueError(f"a chain at seq {seq} has a tree of {seq} leaves, not "
                             f"{self.tree.size}")
        self.signed = signed
        self.format = format

    def copy(self) -> ChainState:
        return ChainState(self.origin, self.seq, self.prev, self.tree.copy(), self.signed,
                          self.format)

    @property
    def unsigned(self) -> int:
        """Lines after the last checkpoint line (all of them when there is none)."""
        return self.seq - self.signed - 1

    def append(self, line: bytes) -> None:
        """Advance past ``line`` (written): the one-line ``seal`` and ``commit``."""
        leaf = leaf_hash(line)
        self.prev = _link(line, leaf, self.format)
        self.tree.append(leaf)
        self.seq += 1

    def line(self, record: Mapping[str, Any]) -> bytes:
        """The next line: ``record``'s, sealed alone (``append`` it once it is written).
        Raises ValueError/TypeError for a record that cannot be a line."""
        if record.__class__ is TemplateRecord:  # record_line's first case, inline
            return record.template.line_format % (self.seq, self.prev, *record.open_values)
        return record_line(self.seq, self.prev, record)

    # ------------------------------------------------------------------ writing

    def seal(
        self, records: Iterable[Mapping[str, Any]]
    ) -> tuple[list[bytes], bytes, list[bytes]]:
        """The lines for ``records``, the link to the last one and their Merkle leaves,
        leaving this state as it is: ``commit`` them once they are written. Raises
        ValueError/TypeError for a record that cannot be a line."""
        seq, prev, format = self.seq, self.prev, self.format
        lines: list[bytes] = []
        leaves: list[bytes] = []
        add, add_leaf = lines.append, leaves.append
        for record in records:
            if record.__class__ is TemplateRecord:  # record_line's first case, inline
                line = record.template.line_format % (seq, prev, *record.open_values)
            else:
                line = record_line(seq, prev, record)
            leaf = leaf_hash(line)
            prev = _link(line, leaf, format)
            seq += 1
            add(line)
            add_leaf(leaf)
        return lines, prev, leaves

    def commit(self, prev: bytes, leaves: list[bytes]) -> None:
        """Advance past the lines ``seal`` made ``prev`` and ``leaves`` for (now on disk)."""
        self.tree.append_leaves(leaves)
        self.seq += len(leaves)
        self.prev = prev

    def open_record(
        self, reason: str, key_id: int | None, timestamp: float, pid: int
    ) -> bytes:
        line = open_line(self.seq, self.prev, origin=self.origin, reason=reason,
                         frontier=self.tree.nodes, key_id=key_id, timestamp=timestamp, pid=pid)
        self.format = FORMAT  # the links after an open record are made by its format
        self.append(line)
        return line + b"\n"

    def checkpoint(self, signer: NoteSigner) -> tuple[bytes, Checkpoint]:
        """A signed checkpoint over lines 0..seq-1, as the next line."""
        checkpoint = Checkpoint(self.origin, self.seq, self.tree.root())
        text = checkpoint.text()
        note = format_note(text, [signer.sign(text)])
        line = checkpoint_line(self.seq, self.prev, note, self.tree.nodes, self.format)
        self.signed = self.seq
        self.append(line)
        return line + b"\n", checkpoint

    # ------------------------------------------------------------------ reading

    def check(self, line: bytes) -> Link:
        """The link of ``line`` if it continues this chain; ChainError otherwise."""
        link = read_link(line)
        if link is None:
            raise ChainError("format", "not a chain line (no seq/prev link at its start)")
        if link.seq != self.seq:
            if link.seq > self.seq:
                raise ChainError("gap", f"record {link.seq} where record {self.seq} was due")
            raise ChainError("behind", f"record {link.seq} again where record {self.seq} "
                                       "was due")
        if link.prev != self.prev:
            raise ChainError("prev", f"record {link.seq} does not chain to the line before "
                                     "it: that line's hash differs from its prev")
        return link
