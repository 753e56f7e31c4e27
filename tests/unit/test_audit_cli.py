"""``iot-guard audit keygen|verify``: exit codes and one-line answers (in-process, no network)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from iot_guard.audit import AuditLog
from iot_guard.audit.signer import load_signer
from iot_guard.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(capsys, "audit", "keygen", "--out", str(tmp_path / "keys"),
                       "--origin", "guard-a.test/audit")
    assert code == 0 and "for origin guard-a.test/audit" in out
    return tmp_path / "keys"


@pytest.fixture
def log(tmp_path: Path, keys: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(path, keys / "audit.key", checkpoint_records=10)
    for i in range(25):
        audit.write({"agent_id": "ops-agent", "n": i})
    audit.close()
    return path


def test_keygen_writes_owner_only_key_and_refuses_to_overwrite(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE((keys / "audit.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "audit.pub").stat().st_mode) == 0o644
    assert load_signer(keys / "audit.key").name == "guard-a.test/audit"
    code, _, err = run(capsys, "audit", "keygen", "--out", str(keys))
    assert code == 2
    assert err == f"iot-guard: {keys / 'audit.key'}: already exists; not overwriting a key\n"
    code, _, err = run(capsys, "audit", "keygen", "--out", str(keys / "x"), "--origin", "a b")
    assert code == 2 and err.count("\n") == 1 and "not a valid key name" in err


def test_verify_prints_the_count_and_exits_0(
    log: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = len(log.read_bytes().splitlines())
    code, out, err = run(capsys, "audit", "verify", str(log), "--pubkey", str(keys / "audit.pub"))
    assert (code, err) == (0, "")
    assert out.startswith(f"guard-a.test/audit: ok: {lines} records verified (seq 0..{lines - 1})")


def test_verify_names_the_first_bad_line_and_exits_1(
    log: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"n":3', b'"n":4')
    log.write_bytes(b"".join(lines))
    code, out, err = run(capsys, "audit", "verify", str(log), "--pubkey", str(keys / "audit.pub"))
    assert (code, out) == (1, "")
    assert err == (f"{log}:5: record 4 was edited: its hash does not match the prev of record 5"
                   f" ({log}:6)\n")


def test_verify_prove_prints_a_checked_inclusion_proof(
    log: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "audit", "verify", str(log), "--pubkey", str(keys / "audit.pub"),
                       "--prove", "3")
    assert code == 0
    assert f"record 3 at {log}:4: leaf hash " in out
    assert out.rstrip().endswith("inclusion proof verified")


@pytest.mark.parametrize("case", ["missing log", "missing key", "private key as pubkey",
                                  "negative prove"])
def test_usage_errors_are_one_line_and_exit_2(
    case: str, log: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {
        "missing log": [str(log) + ".nope", "--pubkey", str(keys / "audit.pub")],
        "missing key": [str(log), "--pubkey", str(keys / "nope.pub")],
        "private key as pubkey": [str(log), "--pubkey", str(keys / "audit.key")],
        "negative prove": [str(log), "--pubkey", str(keys / "audit.pub"), "--prove", "-1"],
    }[case]
    code, out, err = run(capsys, "audit", "verify", *args)
    assert code == 2 and out == ""
    assert err.startswith("iot-guard: ") and err.count("\n") == 1, err


def test_run_with_an_unusable_audit_key_is_a_one_line_error(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (keys / "audit.key").chmod(0o640)
    secret = tmp_path / "secret"
    secret.write_text("s" * 48)
    secret.chmod(0o600)  # `run` refuses a secret others may read
    code, _, err = run(capsys, "run", "--policy", str(Path(__file__).parents[2] /
                                                       "device_policies"),
                       "--upstream", "127.0.0.1:1", "--secret-file", str(secret),
                       "--audit-log", str(tmp_path / "a.jsonl"),
                       "--audit-key", str(keys / "audit.key"))
    assert code == 2
    assert err.splitlines()[-1] == (f"iot-guard: {keys / 'audit.key'}: private key is accessible "
                                    "by others (mode 0640); chmod 600 it")
