"""``iot-guard audit verify``: replay chains from their files and check every checkpoint.

A series of files (rotation) is one chain when they share an origin; they are put in
order by the seq of their first line, so ``audit.jsonl*`` can be given in any order.
Several origins (several guard instances) are verified as separate chains. The first
problem of a chain is reported as ``file:line: what is wrong``.
"""

from __future__ import annotations

import base64
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .chain import ChainError, ChainState
from .checkpoint import Checkpoint, NoteError, parse_note
from .merkle import Frontier, inclusion_proof, leaf_hash, verify_inclusion
from .records import (
    CHECKPOINT,
    FORMAT,
    GENESIS,
    LINK,
    OPEN,
    Link,
    checkpoint_line,
    decode_frontier,
    format_named,
    is_hex_hash,
    parse_object,
    read_link,
)
from .signer import NoteVerifier

Keys = dict[str, list[NoteVerifier]]  # public keys by key name (= origin)


def keys_by_origin(verifiers: list[NoteVerifier]) -> Keys:
    keys: Keys = {}
    for verifier in verifiers:
        keys.setdefault(verifier.name, []).append(verifier)
    return keys


# ----------------------------------------------------------------------------- line checks

def check_checkpoint(state: ChainState, line: bytes, keys: Keys) -> Checkpoint:
    """A checkpoint line at ``state`` (before it is appended): canonical bytes, a valid
    signature by a known key for the chain's origin, and the root of the lines before it."""
    try:
        value = parse_object(line)
        note, nodes = value.get("checkpoint"), decode_frontier(value.get("frontier"))
        if not isinstance(note, str):
            raise ValueError("no checkpoint note")
        text, signatures = parse_note(note)
        checkpoint = Checkpoint.parse(text)
    except (ValueError, NoteError) as exc:
        raise ChainError("checkpoint", f"checkpoint line is damaged: {exc}") from exc
    if checkpoint_line(state.seq, state.prev, note, nodes, state.format) != line:
        raise ChainError("checkpoint", "checkpoint line was edited (not as the guard wrote it)")
    if checkpoint.origin != state.origin:
        raise ChainError("checkpoint", f"checkpoint of origin {checkpoint.origin!r} in the "
                                       f"chain of {state.origin!r}")
    known = keys.get(state.origin, [])
    if not known:
        raise ChainError("key", f"no public key given for origin {state.origin!r} (--pubkey "
                                f"for keys named: {', '.join(sorted(keys)) or 'none'})")
    ours = [(v, s) for s in signatures for v in known
            if s.name == v.name and s.key_id == v.key_id]
    if not ours:
        found = ", ".join(f"{s.name}/{s.key_id:08x}" for s in signatures)
        raise ChainError("signature", f"checkpoint is not signed by the key of "
                                      f"{state.origin!r} (signed by {found}): forged or "
                                      "signed with another key")
    for verifier, signature in ours:
        # A known key whose signature fails rejects the whole note [signed-note, Signatures].
        if not verifier.verify(text, signature):
            raise ChainError("signature", f"bad signature on the checkpoint for "
                                          f"{checkpoint.size} records")
    if checkpoint.size != state.seq:
        raise ChainError("checkpoint", f"checkpoint for {checkpoint.size} records placed after "
                                       f"{state.seq} records")
    if checkpoint.root != state.tree.root():
        raise ChainError("checkpoint", f"signed root for {checkpoint.size} records does not "
                                       "match the records: a record before it was changed")
    if nodes != state.tree.nodes:
        raise ChainError("checkpoint", "checkpoint frontier does not match the records")
    return checkpoint


def check_open(state: ChainState, line: bytes, *, starting: bool) -> None:
    """An open record: same origin; its frontier is the tree so far (unless it starts
    the series, where it is taken as given and later checkpoints vouch for it). The
    state then links by the line format it names (append it after this)."""
    try:
        value = parse_object(line)
        nodes = decode_frontier(value.get("frontier"))
    except ValueError as exc:
        raise ChainError("open", f"open record is damaged: {exc}") from exc
    try:
        named = format_named(value)
    except ValueError as exc:
        raise ChainError("open", str(exc)) from exc
    if value.get("origin") != state.origin:
        raise ChainError("open", f"a guard of origin {value.get('origin')!r} wrote into the "
                                 f"chain of {state.origin!r} (one chain, one writer)")
    if not starting and nodes != state.tree.nodes:
        raise ChainError("open", "open record's frontier does not match the records before it")
    state.format = named


def start_state(line: bytes) -> ChainState:
    """The chain a series begins with: from its first line, which must be an open record."""
    link = read_link(line)
    if link is None or link.kind != OPEN:
        raise ChainError("start", "does not start with the chain's open record: lines were "
                                  "removed from its start, or it is not an iot-guard audit log")
    try:
        value = parse_object(line)
        origin = value.get("origin")
        if not isinstance(origin, str) or not origin:
            raise ValueError("no origin")
        tree = Frontier(link.seq, decode_frontier(value.get("frontier")))
    except ValueError as exc:
        raise ChainError("open", f"open record is damaged: {exc}") from exc
    if link.seq == 0 and link.prev != GENESIS or not is_hex_hash(link.prev):
        raise ChainError("open", "open record's prev is not a hash (or not the genesis value "
                                 "at record 0)")
    return ChainState(origin, link.seq, link.prev, tree)


# ----------------------------------------------------------------------------- series

@dataclass
class Proof:
    seq: int
    where: str
    leaf: bytes
    size: int
    root: bytes
    checkpoint_at: str
    path: list[bytes]
    ok: bool

    def lines(self) -> list[str]:
        b64 = base64.b64encode
        out = [
            f"record {self.seq} at {self.where}: leaf hash {b64(self.leaf).decode()}",
            f"checkpoint at {self.checkpoint_at}: {self.size} records, root "
            f"{b64(self.root).decode()}",
            f"inclusion proof ({len(self.path)} hashes, leaf level first, RFC 9162 §2.1.3):",
        ]
        out += [f"  {b64(h).decode()}" for h in self.path]
        out.append("inclusion proof verified" if self.ok else "inclusion proof FAILED")
        return out


@dataclass
class ChainReport:
    origin: str
    files: list[Path]
    first_seq: int = 0
    lines: int = 0
    checkpoints: int = 0
    last_checkpoint: tuple[str, Checkpoint] | None = None
    problem: str | None = None
    proof: Proof | None = None
    formats: list[int] = field(default_factory=list)  # line formats met, in order
    _leaves: list[bytes] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        last = self.first_seq + self.lines - 1
        text = (f"{self.origin}: ok: {self.lines} records verified (seq {self.first_seq}.."
                f"{last}) in {len(self.files)} file(s), {self.checkpoints} signed checkpoint(s)")
        if self.last_checkpoint is not None:
            where, cp = self.last_checkpoint
            text += (f"; last at {where}: {cp.size} records, root "
                     f"{base64.b64encode(cp.root).decode()}")
        if self.first_seq:
            text += f"; starts at record {self.first_seq} (earlier files not given)"
        if self.formats != [FORMAT]:  # e.g. a log that began before the upgrade
            text += f"; line format {' then '.join(map(str, self.formats))}"
        return text


def open_log(path: Path) -> io.BufferedIOBase:
    """A log file for reading; rotated files logrotate compressed (gzip) too."""
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, whether it had one)."""
    with open_log(path) as f:
        for number, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                yield number, raw[:-1], True
            else:
                yield number, raw, False


def _find_seq(files: list[Path], seq: int) -> str | None:
    """Where record ``seq`` is, if anywhere (on the error path only: a full scan)."""
    for path in files:
        for number, line, _ in _lines(path):
            link = read_link(line)
            if link is not None and link.seq == seq:
                return f"{path}:{number}"
    return None


def _diagnose(
    err: ChainError, files: list[Path], index: int, number: int, line: bytes,
    before: str, after: bytes | None, state: ChainState,
) -> str:
    """One line: where, and what kind of tampering the break shows."""
    here = f"{files[index]}:{number}"
    if err.kind == "gap":
        link = read_link(line)
        assert link is not None
        found = _find_seq(files[index:], state.seq)
        if found is not None and found != here:
            return (f"{here}: record {link.seq} comes before record {state.seq} (at {found}):"
                    " lines were reordered")
        missing = (f"record {state.seq}" if link.seq == state.seq + 1
                   else f"records {state.seq}..{link.seq - 1}")
        where = "before this line" if number > 1 else f"between {before} and this file"
        return f"{here}: {missing} missing {where}: removed (or a file not given)"
    if err.kind == "behind":
        link = read_link(line)
        assert link is not None
        if link.seq == state.seq - 1:
            return (f"{here}: record {link.seq} appears twice (here and on the line before): a "
                    "line was inserted (or copied)")
        return (f"{here}: record {link.seq} appears again after record {state.seq - 1}: "
                "a line was inserted (or copied) here")
    if err.kind == "prev":
        follower = read_link(after) if after is not None else None
        if follower is not None and follower.prev == state.prev:
            return f"{here}: a line was inserted here (the next line chains to the one before)"
        return (f"{before}: record {state.seq - 1} was edited: its hash does not match the prev"
                f" of record {state.seq} ({here})")
    if err.kind == "format":
        try:
            parse_object(line)
        except ValueError:
            return f"{here}: not a chain line (not even JSON): edited or damaged"
        return f"{here}: a line without seq/prev: inserted (or its link was edited)"
    return f"{here}: {err.message}"


def _line_after(path: Path, number: int) -> bytes | None:
    """Line ``number + 1`` of ``path`` (error path only)."""
    for n, line, _ in _lines(path):
        if n == number + 1:
            return line
    return None


def verify_chain(files: list[Path], keys: Keys, prove: int | None = None) -> ChainReport:
    """Replay ``files`` (in order) as one chain.

    The loop is the hot path of ``audit verify``: a decision record that continues the
    chain costs one regex match and, in line format 2, two SHA-256 (the leaf, which is
    also the link, and ~one node; format 1 adds the line's own); anything else (the
    chain's own lines, a break) goes through ``ChainState.check`` and the checks above,
    which also say what is wrong.
    """
    report = ChainReport(origin="?", files=files)
    state: ChainState | None = None
    match = LINK.match
    before = ""  # where the previous line is, for messages
    for index, path in enumerate(files):
        number = 0
        with open_log(path) as f:
            for raw in f:
                number += 1
                line = raw[:-1]
                if raw[-1:] != b"\n":
                    report.problem = (f"{path}:{number}: the last line is cut short (no "
                                      "newline): the file was truncated mid-record")
                    return report
                if state is not None and prove is None:
                    m = match(line)
                    if (m is not None and m[3] is None and m[2] == state.prev
                            and int(m[1]) == state.seq):
                        state.append(line)
                        continue
                here = f"{path}:{number}"
                try:
                    if state is None:
                        state = start_state(line)
                        report.origin, report.first_seq = state.origin, state.seq
                    link: Link = state.check(line)
                    if link.kind == CHECKPOINT:
                        checkpoint = check_checkpoint(state, line, keys)
                        state.signed = link.seq
                        report.checkpoints += 1
                        report.last_checkpoint = (here, checkpoint)
                    elif link.kind == OPEN:
                        check_open(state, line, starting=state.seq == report.first_seq)
                        if report.formats[-1:] != [state.format]:
                            report.formats.append(state.format)
                except ChainError as err:
                    if state is None:
                        report.problem = f"{here}: {err}"
                        return report
                    if number > 1:
                        before = f"{path}:{number - 1}"
                    report.problem = _diagnose(err, files, index, number, line, before,
                                               _line_after(path, number), state)
                    return report
                if prove is not None:
                    leaf = leaf_hash(line)
                    report._leaves.append(leaf)
                    if link.seq == prove:
                        report.proof = Proof(prove, here, leaf, 0, b"", "", [], False)
                state.append(line)
        if number == 0:
            report.problem = f"{path}: empty file"
            return report
        before = f"{path}:{number}"
    assert state is not None
    report.lines = state.seq - report.first_seq
    if state.unsigned:
        if report.last_checkpoint is None:
            report.problem = (f"{before}: no signed checkpoint: all {state.unsigned} records are"
                              " unsigned (was the guard run with --audit-key?)")
        else:
            report.problem = (f"{before}: the last {state.unsigned} record(s), after the "
                              f"checkpoint at {report.last_checkpoint[0]}, are unsigned: the "
                              "tail was truncated, or the guard did not shut down cleanly "
                              "(a running guard signs within its checkpoint interval)")
    if prove is not None and report.ok:
        _prove(report, prove)
    return report


def _prove(report: ChainReport, seq: int) -> None:
    if report.first_seq:
        report.problem = (f"{report.files[0]}: an inclusion proof needs the chain from record 0"
                          f" (these files start at record {report.first_seq})")
        return
    if report.proof is None or report.last_checkpoint is None:
        report.problem = f"record {seq} is not in {report.origin}'s chain"
        return
    where, checkpoint = report.last_checkpoint
    if seq >= checkpoint.size:
        report.problem = f"record {seq} is after the last checkpoint ({checkpoint.size} records)"
        return
    proof = report.proof
    path = inclusion_proof(report._leaves, seq, checkpoint.size)
    proof.size, proof.root, proof.checkpoint_at, proof.path = (
        checkpoint.size, checkpoint.root, where, path)
    proof.ok = verify_inclusion(proof.leaf, seq, checkpoint.size, path, checkpoint.root)
    if not proof.ok:  # pragma: no cover - a proof built from verified leaves always checks
        report.problem = f"record {seq}: inclusion proof does not verify"


# ----------------------------------------------------------------------------- many files

def _first_link(path: Path) -> tuple[str, int] | str:
    """(origin, first seq) of a file, or a problem."""
    try:
        with open_log(path) as f:
            first = f.readline()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if not first:
        return f"{path}: empty file"
    try:
        state = start_state(first.rstrip(b"\n"))
    except ChainError as err:
        return f"{path}:1: {err.message}"
    return state.origin, state.seq


def verify_logs(
    paths: list[Path], verifiers: list[NoteVerifier], prove: int | None = None
) -> list[ChainReport]:
    """One report per chain (origin) found in ``paths``."""
    keys = keys_by_origin(verifiers)
    series: dict[str, list[tuple[int, Path]]] = {}
    reports: list[ChainReport] = []
    for path in paths:
        first = _first_link(path)
        if isinstance(first, str):
            reports.append(ChainReport(origin="?", files=[path], problem=first))
            continue
        origin, seq = first
        series.setdefault(origin, []).append((seq, path))
    for origin, members in series.items():
        members.sort(key=lambda m: m[0])
        starts = [seq for seq, _ in members]
        if len(set(starts)) != len(starts):
            twins = [str(p) for seq, p in members if starts.count(seq) > 1]
            reports.append(ChainReport(origin=origin, files=[p for _, p in members], problem=(
                f"{' and '.join(twins)} both start at the same record of {origin!r}: two chains "
                "with one origin (a guard restarted on an empty file?); verify them separately"
            )))
            continue
        reports.append(verify_chain([p for _, p in members], keys, prove))
    return reports
