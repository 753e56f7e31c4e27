"""Signed notes and checkpoints: byte-for-byte the C2SP formats (Go's sumdb/note example)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from iot_guard.audit.checkpoint import (
    Checkpoint,
    NoteError,
    NoteSignature,
    check_key_name,
    format_note,
    parse_note,
)
from iot_guard.audit.signer import (
    KeyFileError,
    NoteSigner,
    NoteVerifier,
    key_id,
    load_signer,
    load_verifiers,
    write_keys,
)

# The example key pair, text and signed note of golang.org/x/mod/sumdb/note (data).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + (
    "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_signing_reproduces_the_reference_note_exactly() -> None:
    signer = NoteSigner.parse(GO_SKEY)
    assert signer.key_id == 0xC74F20A3
    assert signer.verifier.vkey() == GO_VKEY
    assert signer.skey() == GO_SKEY
    # Ed25519 is deterministic (RFC 8032): the same key and text give the same bytes.
    assert format_note(GO_TEXT, [signer.sign(GO_TEXT)]) == GO_NOTE


def test_the_reference_note_verifies_and_an_edited_one_does_not() -> None:
    verifier = NoteVerifier.parse(GO_VKEY)
    text, signatures = parse_note(GO_NOTE)
    assert text == GO_TEXT and len(signatures) == 1
    assert verifier.verify(text, signatures[0])
    assert not verifier.verify(text.replace("answer", "Answer"), signatures[0])
    other = NoteSigner.generate("PeterNeumann")
    assert not other.verifier.verify(text, signatures[0])  # same name, another key ID


def test_key_id_is_the_recommended_hash() -> None:
    raw = base64.b64decode(GO_VKEY.split("+", 2)[2])[1:]
    assert key_id("PeterNeumann", raw) == 0xC74F20A3


def test_checkpoint_text_round_trips_and_rejects_malformed_bodies() -> None:
    cp = Checkpoint("guard-a.example/audit", 20852163, bytes(range(32)))
    assert cp.text() == ("guard-a.example/audit\n20852163\n"
                         + base64.b64encode(bytes(range(32))).decode() + "\n")
    assert Checkpoint.parse(cp.text()) == cp
    for bad in ("o\n012\n" + base64.b64encode(bytes(32)).decode() + "\n",  # leading zero
                "o\n12\nnot base64!\n", "o\n12\n" + base64.b64encode(bytes(31)).decode() + "\n",
                "o\n12\n", "with space\n1\n" + base64.b64encode(bytes(32)).decode() + "\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_note_parsing_rejects_what_the_format_forbids() -> None:
    sig = NoteSignature("n", 1, b"x" * 64).line()
    for bad in ("text\n" + sig,  # no blank line
                "text\n\n",  # no signature
                "text\n\n-- n AAAA\n",  # not an em dash
                "te\x01xt\n\n" + sig):  # control character
        with pytest.raises(NoteError):
            parse_note(bad)
    for name in ("", "a b", "a+b"):
        with pytest.raises(NoteError):
            check_key_name(name)


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    key_path, pub_path = write_keys(tmp_path / "keys", "guard-a.example/audit")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    signer = load_signer(key_path)
    (verifier,) = load_verifiers(pub_path)
    assert signer.name == verifier.name == "guard-a.example/audit"
    assert verifier.verify("t\n", signer.sign("t\n"))
    with pytest.raises(KeyFileError, match="already exists"):
        write_keys(tmp_path / "keys", "guard-a.example/audit")
    os.chmod(key_path, 0o644)
    with pytest.raises(KeyFileError, match="accessible by others"):
        load_signer(key_path)
    with pytest.raises(KeyFileError, match=r"audit\.key:1: not an audit public key.*private"):
        load_verifiers(key_path)
