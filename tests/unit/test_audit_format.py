"""The audit log's line formats: format 2 links each line by the Merkle leaf hash of the
line before; logs written in format 1 (SHA-256 of the line) still verify, and a guard
that restarts on one goes on in format 2 in the same chain.

``data/audit_format1`` was written by iot-guard at 96ec066 (format 1), signed by a key
made for it whose private half was not kept: its bytes are the previous version's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from iot_guard.audit import AuditError, AuditLog
from iot_guard.audit.chain import ChainState
from iot_guard.audit.headstore import ChainHeadSync
from iot_guard.audit.merkle import leaf_hash
from iot_guard.audit.records import FORMAT, open_line, read_link, record_line
from iot_guard.audit.signer import NoteSigner, load_verifiers
from iot_guard.audit.verifier import ChainReport, verify_logs
from iot_guard.state import ChainHead, open_state

FORMAT1 = Path(__file__).parent / "data" / "audit_format1"
ORIGIN = "format2.test/audit"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def save(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def sha256_link(line: bytes) -> bytes:
    return hashlib.sha256(line).hexdigest().encode()


def leaf_link(line: bytes) -> bytes:
    return binascii.hexlify(leaf_hash(line))


def verify_format1(path: Path) -> ChainReport:
    (report,) = verify_logs([path], load_verifiers(FORMAT1 / "audit.pub"))
    return report


def record(i: int) -> dict[str, Any]:
    return {"timestamp": f"2026-12-01T00:00:{i % 60:02d}Z", "agent_id": "ops-agent",
            "decision": "allow", "n": i}


def format1_chain(records: int) -> tuple[ChainState, list[bytes]]:
    """A format 1 chain of ORIGIN as the previous version wrote it (its open record and
    ``records`` records), and the state at its end."""
    state = ChainState(ORIGIN, format=1)
    first = open_line(0, state.prev, origin=ORIGIN, reason="start", frontier=[], key_id=None,
                      timestamp=0.0, pid=1).replace(b'"format":2', b'"format":1')
    state.append(first)
    lines = [first]
    for i in range(records):
        lines.append(record_line(state.seq, state.prev, record(i)))
        state.append(lines[-1])
    return state, lines


def upgrade(
    path: Path, signer: NoteSigner, checkpoint_records: int
) -> tuple[AuditLog, list[bytes]]:
    """A format 1 chain of this key (``format1_chain(3)``) saved in ``path``, a signing
    guard of today opened on it, and the chain's lines."""
    _, lines = format1_chain(3)
    save(path, lines)
    return AuditLog(path, signer=signer, checkpoint_records=checkpoint_records), lines


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def test_the_guard_links_each_line_by_the_leaf_hash_of_the_line_before(
    tmp_path: Path, signer: NoteSigner
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, signer=signer, checkpoint_records=4)
    for i in range(5):
        log.write(record(i))
    log.write_many([record(i) for i in range(5, 12)])  # a batch: the sealed form
    log.close()
    lines = lines_of(path)
    assert FORMAT == 2
    assert json.loads(lines[0])["format"] == 2
    checkpoints = [json.loads(line) for line in lines if b'"audit":"checkpoint"' in line]
    assert checkpoints and all(c["format"] == 2 for c in checkpoints)
    for before, line in zip(lines, lines[1:], strict=False):
        link = read_link(line)
        assert link is not None
        assert link.prev == leaf_link(before) != sha256_link(before)
    (report,) = verify_logs([path], [signer.verifier])
    assert report.ok, report.problem
    assert report.formats == [2] and "line format" not in report.summary()  # only new ones


def test_a_format_1_log_of_the_previous_version_still_verifies(tmp_path: Path) -> None:
    lines = lines_of(FORMAT1 / "audit.jsonl")
    assert json.loads(lines[0])["format"] == 1
    for before, line in zip(lines, lines[1:], strict=False):
        link = read_link(line)
        assert link is not None and link.prev == sha256_link(before)
    report = verify_format1(FORMAT1 / "audit.jsonl")
    assert report.ok, report.problem
    assert (report.lines, report.checkpoints) == (14, 3)
    assert report.summary().endswith("; line format 1")
    # Its links are still checked as format 1 links: an edited record is found.
    copy = tmp_path / "audit.jsonl"
    save(copy, [*lines[:2], lines[2].replace(b'"allow"', b'"deny"'), *lines[3:]])
    assert verify_format1(copy).problem == (
        f"{copy}:3: record 2 was edited: its hash does not match the prev of record 3 "
        f"({copy}:4)")


def test_a_guard_restarting_on_a_format_1_log_goes_on_in_format_2(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # The tail after the last checkpoint but one: recovery reads back to a format 1
    # checkpoint (which names no format) and checks the record after it as format 1.
    old = lines_of(FORMAT1 / "audit.jsonl")[:13]
    save(path, old)
    log = AuditLog(path, origin="format1.test/audit")
    assert (log.state.seq, log.state.format) == (13, 1)
    for i in range(3):
        log.write(record(i))
    log.close()
    lines = lines_of(path)
    assert lines[:13] == old
    opened = json.loads(lines[13])
    assert (opened["audit"], opened["reason"], opened["format"]) == ("open", "restart", 2)
    assert read_link(lines[13]) == (13, sha256_link(old[12]), "open")  # format 1's link
    for before, line in zip(lines[13:], lines[14:], strict=False):
        link = read_link(line)
        assert link is not None and link.prev == leaf_link(before)  # format 2's
    # Without the key, this run signed nothing: the verifier accepts every link, both
    # formats, and reports only the unsigned records after the old checkpoint.
    report = verify_format1(path)
    assert report.lines == 17
    assert report.problem == (
        f"{path}:17: the last 5 record(s), after the checkpoint at {path}:12, are unsigned: "
        "the tail was truncated, or the guard did not shut down cleanly (a running guard "
        "signs within its checkpoint interval)")


def test_a_signing_guard_continues_a_format_1_chain_and_signs_both_formats(
    tmp_path: Path, signer: NoteSigner
) -> None:
    # A format 1 chain of this key, written as the previous version wrote it.
    path = tmp_path / "audit.jsonl"
    log, lines = upgrade(path, signer, checkpoint_records=2)
    assert log.state.format == 1
    for i in range(3, 8):
        log.write(record(i))
    log.close()
    (report,) = verify_logs([path], [signer.verifier])
    assert report.ok, report.problem
    # The operator sees that the older part of the chain is format 1.
    assert report.formats == [1, 2]
    assert report.summary().endswith("; line format 1 then 2")
    # An open record naming a format this version does not read is refused, not guessed.
    for named in (b'"format":3', b'"format":true', b'"format":1.0', b'"format":"2"'):
        save(path, [lines[0].replace(b'"format":1', named), *lines[1:]])
        (report,) = verify_logs([path], [signer.verifier])
        assert report.problem is not None and "is not one this version reads" in report.problem
        with pytest.raises(AuditError, match="is not one this version reads"):
            AuditLog(path, signer=signer)


def test_a_checkpoint_stripped_of_its_format_is_an_edit(tmp_path: Path, signer: NoteSigner) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, signer=signer, checkpoint_records=100)
    for i in range(3):
        log.write(record(i))
    log.close()
    lines = lines_of(path)
    assert b',"format":2,"checkpoint":' in lines[-1]
    save(path, [*lines[:-1], lines[-1].replace(b',"format":2', b"")])
    (report,) = verify_logs([path], [signer.verifier])
    assert report.problem == (f"{path}:{len(lines)}: checkpoint line was edited (not as the "
                              "guard wrote it)")


def test_a_restart_after_a_format_2_checkpoint_links_the_lines_after_it_by_leaf(
    tmp_path: Path, signer: NoteSigner
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, signer=signer, checkpoint_records=4)
    for i in range(6):  # a checkpoint after 4, then records: the tail recovery reads
        log.write(record(i))
    assert log._fd is not None
    shutil.copy(path, tmp_path / "crashed.jsonl")  # the process dies here
    log.close()
    crashed = tmp_path / "crashed.jsonl"
    again = AuditLog(crashed, signer=signer, checkpoint_records=4)
    assert again.state.format == 2 and again.state.seq == len(lines_of(crashed))
    again.write(record(6))
    again.close()
    (report,) = verify_logs([crashed], [signer.verifier])
    assert report.ok, report.problem


def _crashed_after_a_checkpoint(tmp_path: Path, signer: NoteSigner) -> Path:
    """A format 2 log whose guard died three records after a checkpoint."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, signer=signer, checkpoint_records=4)
    for i in range(6):  # the open record and three: a checkpoint; then three more
        log.write(record(i))
    crashed = tmp_path / "crashed.jsonl"
    shutil.copy(path, crashed)
    log.close()
    lines = lines_of(crashed)
    assert [b'"audit":"checkpoint"' in line for line in lines[-5:]] == [
        False, True, False, False, False]
    return crashed


@pytest.mark.parametrize("edit", ["strip format", "format 1", "edit prev"])
def test_a_restart_refuses_a_last_checkpoint_whose_link_or_format_was_edited(
    tmp_path: Path, signer: NoteSigner, edit: str
) -> None:
    # Recovery starts from the last checkpoint, and its format says how the lines after
    # it link; the signature does not cover it, the link to the line before does.
    path = _crashed_after_a_checkpoint(tmp_path, signer)
    lines = lines_of(path)
    checkpoint = lines[-4]
    if edit == "strip format":
        edited = checkpoint.replace(b',"format":2', b"")
    elif edit == "format 1":
        edited = checkpoint.replace(b'"format":2', b'"format":1')
    else:
        link = read_link(checkpoint)
        assert link is not None
        edited = checkpoint.replace(link.prev, sha256_link(lines[-5]))  # format 1's link
    # The lines after it relinked to match (which needs no key): only the anchor's
    # own link can tell.
    state = ChainState(ORIGIN, format=1 if edit != "edit prev" else 2)
    tail = [edited]
    for line in lines[-3:]:
        link = read_link(line)
        assert link is not None
        before = tail[-1]
        prev = sha256_link(before) if state.format == 1 else leaf_link(before)
        tail.append(line.replace(link.prev, prev))
    save(path, [*lines[:-4], *tail])
    # (A format 1 checkpoint names no format: "format":1 is not a canonical line either.)
    with pytest.raises(AuditError, match=r"record \d+ \(the last checkpoint record\) does not "
                                         r"chain to the line before it|checkpoint line was edited"):
        AuditLog(path, signer=signer)
    # Untouched, the same file continues.
    save(path, lines)
    AuditLog(path, signer=signer).close()
    (report,) = verify_logs([path], [signer.verifier])
    assert report.ok, report.problem


def test_a_format_1_checkpoint_given_a_format_is_refused_at_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = lines_of(FORMAT1 / "audit.jsonl")[:13]  # ends: checkpoint (seq 11), record
    edited = old[11].replace(b'"audit":"checkpoint",', b'"audit":"checkpoint","format":2,')
    relinked = old[12].replace(read_link(old[12]).prev, leaf_link(edited))  # type: ignore[union-attr]
    save(path, [*old[:11], edited, relinked])
    with pytest.raises(AuditError, match="does not chain to the line before it"):
        AuditLog(path, origin="format1.test/audit")


def test_a_rotation_right_after_upgrading_chains_both_files_in_both_formats(
    tmp_path: Path, signer: NoteSigner
) -> None:
    # A format 1 chain of this key (as in the test above), restarted, rotated before
    # and after records: each file verifies alone and the series as one chain.
    path = tmp_path / "audit.jsonl"
    log, _ = upgrade(path, signer, checkpoint_records=100)
    path.rename(tmp_path / "audit.jsonl.1")
    assert log.reopen()
    log.write(record(3))
    path.rename(tmp_path / "audit.jsonl.2")
    assert log.reopen()
    log.write(record(4))
    log.close()
    files = [tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1"]
    (report,) = verify_logs(files, [signer.verifier])  # any order
    assert report.ok, report.problem
    assert report.lines == sum(len(lines_of(f)) for f in files)
    for f in files[:2]:  # the rotated-to files start with an open record of format 2
        assert json.loads(lines_of(f)[0])["format"] == 2


def test_a_chain_head_stored_by_the_previous_version_still_matches(
    tmp_path: Path, signer: NoteSigner
) -> None:
    # A format 1 chain that ended with a checkpoint, and the head the previous version
    # stored for it: the hash of its last line by format 1's rule.
    path = tmp_path / "audit.jsonl"
    state, lines = format1_chain(3)
    line, checkpoint = state.checkpoint(signer)
    lines.append(line[:-1])
    save(path, lines)
    assert state.prev == sha256_link(lines[-1])
    root = base64.b64encode(checkpoint.root).decode()

    async def main() -> None:
        stores = await open_state(tmp_path / "state")
        try:
            old = ChainHead(state.seq - 1, state.prev.decode(), checkpoint.size, root, 0.0)
            assert await stores.chain.put_head(ORIGIN, old, expect_seq=None)
            log = AuditLog(path, signer=signer)
            await ChainHeadSync(log, stores.chain).check()  # the file reaches that head
            log.close()
            # Had the last line been replaced, the stored head still tells (here: a head
            # whose hash is the last line's format 2 link, which no line of it has).
            save(path, lines)
            other = ChainHead(state.seq - 1, leaf_link(lines[-1]).decode(), checkpoint.size,
                              root, 0.0)
            assert await stores.chain.put_head(ORIGIN, other, expect_seq=old.seq)
            log = AuditLog(path, signer=signer)
            with pytest.raises(AuditError, match="the end of the log was replaced"):
                await ChainHeadSync(log, stores.chain).check()
            log.close()
        finally:
            await stores.close()

    asyncio.run(main())


def test_recovery_finds_the_anchor_and_the_line_before_it_across_any_block_boundary(
    tmp_path: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recovery reads the file backwards in blocks; the anchor and the line before it may
    # straddle any block boundary. Tiny blocks put a boundary at every offset.
    import iot_guard.audit.recovery as recovery

    path = _crashed_after_a_checkpoint(tmp_path, signer)
    lines = lines_of(path)
    whole = AuditLog(path, signer=signer)  # the normal block size
    expected = (whole.state.seq, whole.state.prev, whole.state.tree, whole.state.format)
    assert whole._fd is not None
    os.close(whole._fd)  # unwritten: no restart record, the file stays as it is
    whole._fd = None
    link = read_link(lines[-4])
    assert link is not None
    edited = [*lines[:-4], lines[-4].replace(link.prev, sha256_link(lines[-5])), *lines[-3:]]
    for block in (1, 2, 3, 7, 64, 333, len(lines[-4]), len(lines[-5]) + 1):
        monkeypatch.setattr(recovery, "_BLOCK", block)
        save(path, lines)
        log = AuditLog(path, signer=signer)
        assert (log.state.seq, log.state.prev, log.state.tree, log.state.format) == expected
        assert log._fd is not None
        os.close(log._fd)
        log._fd = None
        save(path, edited)
        with pytest.raises(AuditError, match="does not chain to the line before it"):
            AuditLog(path, signer=signer)
