"""The audit chain on disk: verify catches each kind of tampering; rotation; restart.

Files in a temp dir, no network; each tampering test changes a log the way an attacker
with file access would and checks the one-line diagnosis names the right line.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from iot_guard.audit import AuditError, AuditLog
from iot_guard.audit.chain import ChainState
from iot_guard.audit.checkpoint import format_note, parse_note
from iot_guard.audit.records import (
    FORMAT,
    OPEN_INT,
    OPEN_PLAIN_STR,
    TemplateRecord,
    checkpoint_line,
    line_template,
    read_link,
    record_line,
)
from iot_guard.audit.signer import NoteSigner
from iot_guard.audit.verifier import ChainReport, verify_logs

ORIGIN = "guard-a.test/audit"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def record(i: int) -> dict[str, Any]:
    return {"timestamp": f"2026-01-01T00:00:{i % 60:02d}Z", "agent_id": "ops-agent",
            "packet": "publish", "decision": "allow", "reason": f"rule {i}", "n": i}


def write_log(path: Path, signer: NoteSigner, n: int, every: int = 10) -> AuditLog:
    log = AuditLog(path, signer=signer, checkpoint_records=every)
    for i in range(n):
        log.write_many([record(i)])
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def save(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def verify(paths: list[Path], signer: NoteSigner, prove: int | None = None) -> ChainReport:
    (report,) = verify_logs(paths, [signer.verifier], prove)
    return report


@pytest.fixture
def log_path(tmp_path: Path, signer: NoteSigner) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, signer, 30).close()
    return path


def test_an_untouched_log_verifies_with_every_line_counted(
    log_path: Path, signer: NoteSigner
) -> None:
    report = verify([log_path], signer)
    assert report.ok, report.problem
    lines = lines_of(log_path)
    assert report.lines == len(lines)
    assert report.checkpoints == sum(b'"audit":"checkpoint"' in line for line in lines) >= 3
    assert [read_link(line).seq for line in lines] == list(range(len(lines)))  # type: ignore[union-attr]
    assert b'"audit":"checkpoint"' in lines[-1]  # a clean close leaves nothing unsigned


def test_an_edited_byte_names_the_edited_record(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    assert b'"reason":"rule 4"' in lines[5]
    lines[5] = lines[5].replace(b"rule 4", b"rule 5")
    save(log_path, lines)
    assert verify([log_path], signer).problem == (
        f"{log_path}:6: record 5 was edited: its hash does not match the prev of record 6 "
        f"({log_path}:7)")


def test_a_removed_line_is_reported_missing(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    del lines[7]
    save(log_path, lines)
    problem = verify([log_path], signer).problem
    assert problem == (f"{log_path}:8: record 7 missing before this line: removed (or a file "
                       "not given)")


def test_swapped_lines_are_reported_as_reordering(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    lines[7], lines[8] = lines[8], lines[7]
    save(log_path, lines)
    problem = verify([log_path], signer).problem
    assert problem == (f"{log_path}:8: record 8 comes before record 7 (at {log_path}:9): lines "
                       "were reordered")


def test_an_inserted_line_is_found(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    # A well-forged line: the right seq and the right prev, so it passes on its own.
    prev_state = ChainState(ORIGIN)
    for line in lines[:7]:
        prev_state.append(line)
    forged = record_line(7, prev_state.prev, {"agent_id": "ops-agent", "decision": "allow"})
    save(log_path, [*lines[:7], forged, *lines[7:]])
    assert verify([log_path], signer).problem == (
        f"{log_path}:9: record 7 appears twice (here and on the line before): a line was "
        "inserted (or copied)")
    # A copy of an older line further down.
    save(log_path, [*lines[:12], lines[3], *lines[12:]])
    assert verify([log_path], signer).problem == (
        f"{log_path}:13: record 3 appears again after record 11: a line was inserted (or copied)"
        " here")
    # A plain JSON line slipped in.
    save(log_path, [*lines[:7], b'{"agent_id":"x"}', *lines[7:]])
    assert verify([log_path], signer).problem == (
        f"{log_path}:8: a line without seq/prev: inserted (or its link was edited)")


def test_a_truncated_tail_is_reported_never_accepted(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    save(log_path, lines[:-3])  # the final checkpoint and two records before it
    problem = verify([log_path], signer).problem
    assert problem is not None
    assert problem.startswith(f"{log_path}:{len(lines) - 3}: the last ")
    assert "are unsigned: the tail was truncated" in problem
    log_path.write_bytes(log_path.read_bytes()[:-10])  # cut mid-line
    assert "was truncated mid-record" in str(verify([log_path], signer).problem)


def test_a_checkpoint_forged_with_another_key_is_refused(
    log_path: Path, signer: NoteSigner
) -> None:
    lines = lines_of(log_path)
    value = json.loads(lines[-1])
    text, _ = parse_note(value["checkpoint"])
    forger = NoteSigner.generate(ORIGIN)  # same name, another key
    note = format_note(text, [forger.sign(text)])
    link = read_link(lines[-1])
    assert link is not None
    frontier = [base64.b64decode(v) for v in value["frontier"]]
    lines[-1] = checkpoint_line(link.seq, link.prev, note, frontier, FORMAT)
    save(log_path, lines)
    problem = verify([log_path], signer).problem
    assert problem is not None and problem.startswith(f"{log_path}:{len(lines)}: ")
    assert "is not signed by the key of 'guard-a.test/audit'" in problem and "forged" in problem


def test_a_damaged_signature_is_a_bad_signature(log_path: Path, signer: NoteSigner) -> None:
    lines = lines_of(log_path)
    value = json.loads(lines[-1])
    text, (sig,) = parse_note(value["checkpoint"])
    flipped = type(sig)(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    link = read_link(lines[-1])
    assert link is not None
    frontier = [base64.b64decode(v) for v in value["frontier"]]
    lines[-1] = checkpoint_line(link.seq, link.prev, format_note(text, [flipped]), frontier,
                                FORMAT)
    save(log_path, lines)
    assert "bad signature on the checkpoint" in str(verify([log_path], signer).problem)


def test_a_rewritten_chain_is_caught_by_the_signed_root(
    log_path: Path, signer: NoteSigner
) -> None:
    """An attacker who edits a record and re-links every later line (no key needed for
    that) still cannot re-sign: the first checkpoint after the edit does not match."""
    lines = lines_of(log_path)
    state = ChainState(ORIGIN)
    rewritten = []
    for i, line in enumerate(lines):
        link = read_link(line)
        assert link is not None
        value = json.loads(line)
        if link.kind == "checkpoint":
            new = checkpoint_line(state.seq, state.prev, value["checkpoint"], state.tree.nodes,
                                  state.format)
        elif i == 0:
            new = line
        else:
            body = {k: v for k, v in value.items() if k not in ("seq", "prev")}
            if body.get("n") == 3:
                body["decision"] = "deny"
            new = record_line(state.seq, state.prev, body)
        state.append(new)
        rewritten.append(new)
    save(log_path, rewritten)
    problem = verify([log_path], signer).problem
    assert problem is not None and "signed root for" in problem
    assert "does not match the records: a record before it was changed" in problem


def test_inclusion_proof_for_one_record(log_path: Path, signer: NoteSigner) -> None:
    report = verify([log_path], signer, prove=7)
    assert report.ok and report.proof is not None and report.proof.ok
    assert report.proof.where == f"{log_path}:8"
    assert report.proof.size == report.last_checkpoint[1].size  # type: ignore[index]
    assert "inclusion proof verified" in report.proof.lines()[-1]
    beyond = verify([log_path], signer, prove=10_000)
    assert beyond.problem == f"record 10000 is not in {ORIGIN}'s chain"


# ----------------------------------------------------------------------------- rotation

def test_rotated_files_verify_as_one_chain_in_any_order(tmp_path: Path, signer: NoteSigner) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_log(path, signer, 12)
    names = []
    for k in (1, 2):
        rotated = tmp_path / f"audit.jsonl.{3 - k}"
        path.rename(rotated)  # what logrotate does, then it asks the guard to reopen
        assert log.reopen()
        names.append(rotated)
        for i in range(12):
            log.write(record(100 * k + i))
    assert not log.reopen()  # not moved again: nothing to do
    log.close()
    old2, old1 = names
    whole = verify([path, old1, old2], signer)
    assert whole.ok, whole.problem
    assert whole.files == [old2, old1, path] and whole.first_seq == 0
    assert whole.lines == sum(len(lines_of(p)) for p in (path, old1, old2))
    # Each rotated file ends signed, and the newest starts with its own open record.
    assert b'"audit":"checkpoint"' in lines_of(old2)[-1]
    assert b'"reason":"rotate"' in lines_of(path)[0]
    old2_lines = len(lines_of(old2))
    # logrotate's compress: a gzipped rotated file verifies as it is.
    old2.write_bytes(gzip.compress(old2.read_bytes()))
    assert verify([path, old1, old2], signer).ok
    # Older files deleted by retention: the rest still verifies, and says where it starts.
    recent = verify([path], signer)
    assert recent.ok and recent.first_seq > 0
    assert "earlier files not given" in recent.summary()
    # A file missing in the middle of the series is a gap.
    gap = verify([old2, path], signer).problem
    assert gap is not None and gap.startswith(f"{path}:1: records ")
    assert f"missing between {old2}:{old2_lines} and this file" in gap


def test_several_guard_instances_verify_as_their_own_chains(tmp_path: Path) -> None:
    a, b = NoteSigner.generate("guard-a.test/audit"), NoteSigner.generate("guard-b.test/audit")
    write_log(tmp_path / "a.jsonl", a, 15).close()
    write_log(tmp_path / "b.jsonl", b, 25).close()
    reports = verify_logs([tmp_path / "b.jsonl", tmp_path / "a.jsonl"], [a.verifier, b.verifier])
    assert {r.origin: r.ok for r in reports} == {a.name: True, b.name: True}
    reports = verify_logs([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], [a.verifier])
    problems = {r.origin: r.problem for r in reports}
    assert problems[a.name] is None
    assert "no public key given for origin 'guard-b.test/audit'" in str(problems[b.name])


# ----------------------------------------------------------------------------- restart

def test_a_restart_continues_the_chain_from_the_file(tmp_path: Path, signer: NoteSigner) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, signer, 12).close()
    before = len(lines_of(path))
    log = AuditLog(path, signer=signer, checkpoint_records=10)
    assert log.state.seq == before  # recovered from the tail, not restarted at 0
    log.write(record(99))
    log.close()
    lines = lines_of(path)
    assert b'"reason":"restart"' in lines[before]
    assert verify([path], signer).ok


def test_a_crash_leaves_an_unsigned_tail_that_the_next_run_signs(
    tmp_path: Path, signer: NoteSigner
) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_log(path, signer, 25, every=10)
    assert log._fd is not None
    os.close(log._fd)  # the process dies: no final checkpoint
    log._fd = None
    crashed = verify([path], signer)
    assert crashed.problem is not None and "are unsigned" in crashed.problem
    log = AuditLog(path, signer=signer, checkpoint_records=10)
    log.close()  # even with no new record, the restart is recorded and everything signed
    assert verify([path], signer).ok


def test_a_restart_refuses_a_tail_that_does_not_continue_the_chain(
    tmp_path: Path, signer: NoteSigner
) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_log(path, signer, 25, every=10)
    assert log._fd is not None
    os.close(log._fd)
    log._fd = None
    lines = lines_of(path)
    lines[-2] = lines[-2].replace(b"ops-agent", b"ops-agenT")
    save(path, lines)
    with pytest.raises(AuditError, match="cannot continue the audit chain: record .* does not "
                                         "chain to the line before it"):
        AuditLog(path, signer=signer)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(AuditError, match="last line is cut short"):
        AuditLog(path, signer=signer)


def test_one_file_has_one_writer(tmp_path: Path, signer: NoteSigner) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_log(path, signer, 3)
    with pytest.raises(AuditError, match="in use by another guard"):
        AuditLog(path, signer=signer)
    first.close()
    other = NoteSigner.generate("guard-b.test/audit")
    with pytest.raises(AuditError, match="holds the chain of 'guard-a.test/audit' and this"):
        AuditLog(path, signer=other)


def test_a_failed_write_forwards_nothing_and_does_not_advance_the_chain() -> None:
    log = AuditLog("/dev/full")  # accepts the open, fails every write (ENOSPC)
    with pytest.raises(AuditError, match="cannot write audit log"):
        log.write(record(1))
    assert log.state.seq == 0
    with pytest.raises(AuditError, match="reserved keys"):
        log.write({"seq": 1})
    log.close()


def test_one_record_per_write_is_the_batch_path_byte_for_byte(tmp_path: Path) -> None:
    # write_many of one record (the common read) has its own path: the same file as the
    # same records written in batches, template records and dicts alike.
    template = line_template({"timestamp": "x", "agent_id": "ops-agent", "n": 0, "qos": 0},
                             {"timestamp": OPEN_PLAIN_STR, "qos": OPEN_INT})
    assert template is not None
    records: list[Mapping[str, Any]] = [
        TemplateRecord.of(template, (b"2026-01-01T00:00:%02dZ" % i, i % 3)) if i % 3
        else record(i) for i in range(40)]
    single = AuditLog(tmp_path / "single.jsonl", clock=lambda: 1.5)
    batched = AuditLog(tmp_path / "batched.jsonl", clock=lambda: 1.5)
    for i, r in enumerate(records):
        single.write_many([r])
        assert single.state.seq == i + 2  # the open record, then one line per write
    for start, size in ((0, 1), (1, 7), (8, 1), (9, 31)):
        batched.write_many(records[start:start + size])
    assert (tmp_path / "single.jsonl").read_bytes() == (tmp_path / "batched.jsonl").read_bytes()
    assert single.state.prev == batched.state.prev and single.state.tree == batched.state.tree
    single.close()
    batched.close()


def test_a_failed_single_write_leaves_the_chain_where_the_file_ends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write_many([record(0)])  # the open record and one line: the one-record path next
    seq, prev, tree = log.state.seq, log.state.prev, log.state.tree.copy()
    with pytest.raises(AuditError, match="reserved keys"):
        log.write_many([{"seq": 1}])
    with pytest.raises(AuditError, match="cannot encode"):
        log.write_many([{"bad": "\ud800", "n": 2**70}])
    full = os.open("/dev/full", os.O_WRONLY)
    fd, log._fd = log._fd, full  # the disk fills up
    try:
        with pytest.raises(AuditError, match="cannot write audit log"):
            log.write_many([record(1)])
    finally:
        log._fd = fd
        os.close(full)
    assert (log.state.seq, log.state.prev, log.state.tree) == (seq, prev, tree)
    log.write_many([record(1)])  # the chain goes on from the file's last line
    log.close()
    assert len(lines_of(tmp_path / "audit.jsonl")) == 3


# ----------------------------------------------------------------------------- timing

def test_checkpoints_are_signed_on_the_loop_not_inside_the_write(
    tmp_path: Path, signer: NoteSigner
) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(path, signer=signer, checkpoint_records=5, checkpoint_seconds=3600)
        signed = asyncio.Event()
        log.on_checkpoint = lambda state, checkpoint: signed.set()
        log.attach(asyncio.get_running_loop())
        log.write_many([record(i) for i in range(5)])
        # The write returned with the records on disk and no signature yet...
        assert b'"audit":"checkpoint"' not in path.read_bytes()
        await asyncio.wait_for(signed.wait(), 5)
        # ...the loop signed right after.
        assert b'"audit":"checkpoint"' in lines_of(path)[-1]
        signed.clear()
        log.checkpoint_seconds = 0.05
        log._tick()  # restart the timer with the short period
        log.write(record(9))
        await asyncio.wait_for(signed.wait(), 5)  # the timer signs a lone record
        log.close()

    asyncio.run(scenario())
    assert verify([path], signer).ok


# ----------------------------------------------------------------------------- head store

def test_the_state_store_catches_a_cut_the_file_alone_cannot_show(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """A log cut right after an earlier checkpoint verifies on its own; the chain head kept
    in the state store shows records were removed, and the guard refuses to start."""
    from iot_guard.audit.headstore import ChainHeadSync
    from iot_guard.state import open_state

    path = tmp_path / "audit.jsonl"

    async def run_guard(n: int) -> None:
        stores = await open_state(tmp_path / "state")
        try:
            log = AuditLog(path, signer=signer, checkpoint_records=10)
            sync = ChainHeadSync(log, stores.chain)
            await sync.check()
            log.on_checkpoint = sync.on_checkpoint
            log.attach(asyncio.get_running_loop())
            for i in range(n):
                log.write(record(i))
            log.close()
            await sync.flush()
            head = await stores.chain.head(ORIGIN)
            assert head is not None and head.seq == log.state.seq - 1
            assert head.hash == log.state.prev.decode()
            assert head.checkpoint_size == log.state.seq - 1
        finally:
            await stores.close()

    asyncio.run(run_guard(25))
    asyncio.run(run_guard(5))  # a restart: the file reaches the stored head
    lines = lines_of(path)
    cut = max(i for i, line in enumerate(lines[:-1]) if b'"audit":"checkpoint"' in line)
    save(path, lines[:cut + 1])  # ends with an older checkpoint: looks clean
    assert verify([path], signer).ok
    with pytest.raises(AuditError, match=r"the state store says the chain of guard-a.test/audit "
                                         r"reached record \d+ .* records were removed"):
        asyncio.run(run_guard(1))


@pytest.mark.parametrize("timestamp", [
    0.0, 1e-7, 0.9999994, 0.9999995, 0.9999996,  # half-even rounding, and a carry
    1700000000.0000005, 1700000000.0000015, 1700000059.9999997,  # carry into a new minute
    1799999999.9999999, 1767225599.9999996,  # carry into a new year (2026 -> 2027)
    1764546644.123456, 4102444800.5,
    -1.5, -0.0000004, -86400.9999996, -1e-7,  # before 1970: a negative fraction
])
def test_utc_iso_matches_datetime_to_the_microsecond(timestamp: float) -> None:
    from datetime import UTC, datetime

    from iot_guard.audit.records import utc_iso

    expected = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")
    assert utc_iso(timestamp) == expected.replace("+00:00", "Z")
    # Again after another second was formatted: the cached second must not leak.
    utc_iso(timestamp + 3601.0)
    assert utc_iso(timestamp) == expected.replace("+00:00", "Z")


def test_utc_iso_matches_datetime_over_a_sweep_of_microseconds() -> None:
    # Every width of the microseconds (zero-padded to six digits), across second and
    # minute boundaries, as the packets of a busy guard stamp them one after another.
    from datetime import UTC, datetime

    from iot_guard.audit.records import utc_iso

    for start in (1764546659.99, 1700000000.0, 12.0):
        for k in range(0, 20000, 7):
            ts = start + k * 1.3e-6
            expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
            assert utc_iso(ts) == expected.replace("+00:00", "Z"), ts


def test_lines_encode_as_compact_utf8_json() -> None:
    from iot_guard.audit.records import dumps

    value = {"reason": "é \u2028 \"quoted\"", "n": [1, 2.5, None, True], "nested": {"x": 1e300}}
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        dumps(loop)
    with pytest.raises(TypeError):
        dumps({"not json": object()})


def test_record_body_is_the_same_json_and_refuses_nothing_dumps_accepts() -> None:
    from iot_guard.audit.records import dumps, record_body

    typical = {"timestamp": "2026-01-01T00:00:00.000001Z", "agent_id": "ops-agent",
               "reason": "é \u2028 \x7f \x1f \"q\"", "reason_code": 0x97, "retain": False,
               "granted_scope": None, "tags": ["a", "b"], "nested": {"n": 1}}
    assert record_body(typical) == dumps(typical)  # strings, ints, booleans, null: same bytes
    floats = {"rate": 1e16, "z": 0.1, "tiny": 1e-7}
    assert json.loads(record_body(floats)) == floats  # shortest form, the same numbers
    assert json.loads(record_body({"score": float("nan")})) == {"score": None}
    # Beyond orjson (an integer past 64 bits, a non-string key): json's encoder writes it.
    odd: dict[Any, Any] = {"big": 2**70, 3: "int key"}
    assert record_body(odd) == dumps(odd)
    with pytest.raises(TypeError):
        record_body({"not json": object()})
