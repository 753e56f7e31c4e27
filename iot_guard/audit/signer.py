"""Ed25519 note keys: generate, store, sign checkpoints, verify them.

Key files use the signed-note key encodings that Go's golang.org/x/mod/sumdb/note reads,
so a checkpoint can be checked with standard transparency-log tools too:

    audit.key  PRIVATE+KEY+<name>+<key ID hex>+base64(0x01 || 32-byte seed)
    audit.pub  <name>+<key ID hex>+base64(0x01 || 32-byte public key)

The key name is the chain's origin: one key per guard instance (issue 11: each guard
signs its own chain with its instance name). Key ID = SHA-256(name || 0x0A || 0x01 ||
public key)[:4] [signed-note, Ed25519 signatures].
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .checkpoint import NoteError, NoteSignature, check_key_name

ED25519 = 0x01  # signature type identifier byte [signed-note, Signature types]
_PRIVATE_PREFIX = "PRIVATE+KEY+"


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file."""


def key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_id: int
    public_key: Ed25519PublicKey

    def verify(self, text: str, signature: NoteSignature) -> bool:
        """True when ``signature`` is this key's and valid over ``text``."""
        if signature.name != self.name or signature.key_id != self.key_id:
            return False
        try:
            self.public_key.verify(signature.signature, text.encode())
        except InvalidSignature:
            return False
        return True

    def vkey(self) -> str:
        blob = bytes([ED25519]) + _raw_public(self.public_key)
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(blob).decode()}"

    @classmethod
    def parse(cls, text: str) -> NoteVerifier:
        parts = text.strip().split("+", 2)  # base64 may hold "+"
        if len(parts) != 3:
            raise NoteError("expected <name>+<key id hex>+<base64 key>")
        name, id_text, key_text = parts
        raw = _decode_key(key_text)
        verifier = cls(check_key_name(name), _parse_id(id_text),
                       Ed25519PublicKey.from_public_bytes(raw))
        if key_id(name, raw) != verifier.key_id:
            raise NoteError(f"key ID {id_text} does not match the key")
        return verifier


class NoteSigner:
    """Signs note texts with one Ed25519 key under one name (the chain's origin)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = check_key_name(name)
        self._private = private_key
        public = private_key.public_key()
        self.verifier = NoteVerifier(name, key_id(name, _raw_public(public)), public)

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    def sign(self, text: str) -> NoteSignature:
        return NoteSignature(self.name, self.key_id, self._private.sign(text.encode()))

    def skey(self) -> str:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        blob = bytes([ED25519]) + seed
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id:08x}+{base64.b64encode(blob).decode()}"

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        text = text.strip()
        if not text.startswith(_PRIVATE_PREFIX):
            raise NoteError(f"expected {_PRIVATE_PREFIX}<name>+<key id hex>+<base64 key>")
        parts = text[len(_PRIVATE_PREFIX):].split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"expected {_PRIVATE_PREFIX}<name>+<key id hex>+<base64 key>")
        name, id_text, key_text = parts
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(_decode_key(key_text)))
        if signer.key_id != _parse_id(id_text):
            raise NoteError(f"key ID {id_text} does not match the key")
        return signer


def _parse_id(text: str) -> int:
    if len(text) != 8:
        raise NoteError(f"key ID {text!r} is not 8 hex digits")
    try:
        return int(text, 16)
    except ValueError:
        raise NoteError(f"key ID {text!r} is not 8 hex digits") from None


def _decode_key(text: str) -> bytes:
    try:
        blob = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise NoteError(f"key is not base64: {exc}") from exc
    if len(blob) != 33 or blob[0] != ED25519:
        raise NoteError("not an Ed25519 note key (type byte 0x01 and 32 bytes)")
    return blob[1:]


# ----------------------------------------------------------------------------- files

def write_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """``directory/audit.key`` (0600, never overwritten) and ``directory/audit.pub``."""
    signer = NoteSigner.generate(name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, pub_path = directory / "audit.key", directory / "audit.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(f"{path}: already exists; not overwriting a key")
    # O_EXCL: never follow or truncate something another process put there meanwhile.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(signer.skey() + "\n")
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(signer.verifier.vkey() + "\n")
    return key_path, pub_path


def load_signer(path: Path) -> NoteSigner:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # As ssh does: a signing key others can read signs nothing.
        raise KeyFileError(f"{path}: private key is accessible by others (mode "
                           f"{stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        return NoteSigner.parse(text)
    except (NoteError, ValueError) as exc:
        raise KeyFileError(f"{path}:1: not an audit private key: {exc}") from exc


def load_verifiers(path: Path) -> list[NoteVerifier]:
    """Every public key in the file (one per line; blank lines and # comments skipped)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    verifiers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            verifiers.append(NoteVerifier.parse(line))
        except (NoteError, ValueError) as exc:
            hint = " (that is the private key: give the .pub file)" if line.startswith(
                _PRIVATE_PREFIX) else ""
            raise KeyFileError(f"{path}:{number}: not an audit public key: {exc}{hint}") from exc
    if not verifiers:
        raise KeyFileError(f"{path}: no public key in the file")
    return verifiers
