"""Checkpoints as C2SP signed notes (c2sp.org/tlog-checkpoint, c2sp.org/signed-note).

A checkpoint's text is three lines: the origin (this guard instance's chain), the tree
size in decimal, and the base64 RFC 6962 root hash. A signed note is that text, a blank
line, and signature lines ``— <key name> base64(key ID || signature)``. Only formats
here; keys and signing live in ``signer``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

# The signature line prefix: U+2014 EM DASH and a space [signed-note, Format].
SIGNATURE_PREFIX = "\u2014 "


class NoteError(ValueError):
    """Text that is not a well-formed signed note or checkpoint."""


def check_key_name(name: str) -> str:
    """Key names (and so origins) are non-empty, without Unicode spaces or '+' [signed-note]."""
    if not name or any(ch.isspace() or ch == "+" for ch in name):
        raise NoteError(f"{name!r} is not a valid key name/origin: it must be non-empty, "
                        "without spaces or '+'")
    if any(ord(ch) < 0x20 for ch in name):
        raise NoteError(f"{name!r} contains control characters")
    return name


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        """The note text, final newline included (the bytes the signature covers)."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The first three lines [tlog-checkpoint, Note text]; extension lines are ignored."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise NoteError("checkpoint text must be at least three non-empty lines")
        origin, size_text, root_text = lines[:3]
        # ASCII decimal, no leading zeroes unless the tree is empty.
        if not size_text.isascii() or not size_text.isdigit() or (
            len(size_text) > 1 and size_text[0] == "0"
        ):
            raise NoteError(f"checkpoint tree size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise NoteError(f"checkpoint root hash is not base64: {exc}") from exc
        if len(root) != 32:
            raise NoteError(f"checkpoint root hash has {len(root)} bytes, not 32")
        return cls(check_key_name(origin), int(size_text), root)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"


def format_note(text: str, signatures: list[NoteSignature]) -> str:
    return text + "\n" + "".join(sig.line() for sig in signatures)


def parse_note(note: str, max_signatures: int = 100) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signatures [signed-note, Format]."""
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise NoteError("a signed note has no control characters other than newline")
    # The text is separated from the signatures by the last empty line.
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("not a signed note: no blank line before the signatures")
    text, block = note[: cut + 1], note[cut + 2:]
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"malformed signature line {line[:40]!r}")
        name, sep, blob_text = line[len(SIGNATURE_PREFIX):].partition(" ")
        if not sep:
            raise NoteError(f"malformed signature line {line[:40]!r}")
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except binascii.Error as exc:
            raise NoteError(f"signature is not base64: {exc}") from exc
        if len(blob) < 5:
            raise NoteError("signature too short for a key ID and a signature")
        signatures.append(NoteSignature(
            check_key_name(name), int.from_bytes(blob[:4], "big"), blob[4:]))
    if not signatures:
        raise NoteError("a signed note has at least one signature")
    if len(signatures) > max_signatures:
        raise NoteError(f"more than {max_signatures} signatures")
    return text, signatures
