"""Hostile and wrong command lines, run in process: every subcommand that takes arguments
or files answers a bad one with a non-zero exit status, ONE precise error line on stderr
(the file and line for a file's problem) and never a traceback.

Exit statuses (iot_guard/cli.py): 2 for a usage or configuration error (argparse's too),
1 for a policy that does not load ("policy refused": one line per problem and a count)
and for a decision that denies. Placeholders such as ``{secret}`` in the cases below are
the hostile files the ``files`` fixture writes under tmp_path.

``run``, ``mcp`` and ``simulate`` are long-running: they are only called with arguments
refused before anything starts (``run`` always with --check-config), under a timeout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from iot_guard.audit.signer import write_keys
from iot_guard.cli import main
from iot_guard.tokens import issue_token, new_secret

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "device_policies"
AGENT = "ops-agent"  # an agent of device_policies
USAGE, REFUSED = 2, 1
HOSTILE_TOPIC_LENGTH = 70_000

RUN = ["run", "--policy", "{policy}", "--secret-file", "{secret}"]
CHECK = "--check-config"  # last on every `run` line: it takes an optional FILE
MCP = ["mcp", "--agent", AGENT, "--guard", "127.0.0.1:1", "--policy", "{policy}"]
SIMULATE = ["simulate", "--broker", "127.0.0.1:1"]
ADMIN = ["--admin", "http://127.0.0.1:1"]
EXPLAIN = ["policy", "explain", "{policy}", "--agent", AGENT]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        """stderr's lines without argparse's usage lines (this CLI's parser prints none)."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        if lines and lines[0].startswith("usage:"):
            lines = [line for line in lines[1:] if not line.startswith(" ")]
        return lines


def cli(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> Result:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse (usage errors, --help)
        code = exc.code if isinstance(exc.code, int) else USAGE if exc.code else 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out and "Traceback" not in err, err
    return Result(code, out, err)


def one_error(result: Result, code: int, *expected: str) -> str:
    """The one error line, after checking the exit status and what it says."""
    assert result.code == code, result
    lines = result.error_lines()
    assert len(lines) == 1, f"expected one error line, got {lines}"
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert result.out == "", result.out
    return lines[0]


def policy_refused(result: Result, *expected: str) -> str:
    """A policy that does not load: its one problem, then the count, exit 1."""
    assert result.code == REFUSED, result
    lines = result.error_lines()
    assert len(lines) == 2 and lines[1] == "policy refused: 1 problem(s)", lines
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------------------- files

@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("IOT_GUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # nothing relative lands in the repository


def write(path: Path, content: str | bytes, mode: int = 0o600) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Placeholder -> path (or text) for the cases' command lines."""
    secret = new_secret()
    found = {
        "policy": str(POLICY),
        "tmp": str(tmp_path),
        "missing": str(tmp_path / "missing"),
        "dir": str(tmp_path / "folder"),
        "empty": write(tmp_path / "empty", ""),
        "bad_utf8": write(tmp_path / "bad_utf8.yaml", b"policy: \xff\xfe\n"),
        "secret": write(tmp_path / "guard.secret", secret + "\n"),
        "secret_public": write(tmp_path / "public.secret", secret + "\n", 0o644),
        "short": write(tmp_path / "short.secret", "short\n"),
        "blank": write(tmp_path / "blank.secret", "   \n\n"),
        "binary_secret": write(tmp_path / "binary.secret", b"\xff\xfe\xfd"),
        # config files
        "tab": write(tmp_path / "tab.yaml", "policy: x\n\tlisten: 127.0.0.1:1\n"),
        "bracket": write(tmp_path / "bracket.yaml", "policy: [x, y\n"),
        "list": write(tmp_path / "list.yaml", "- policy\n- secret_file\n"),
        "scalar": write(tmp_path / "scalar.yaml", "just words\n"),
        "not_setting": write(tmp_path / "typo.yaml", "# guard\npolcy: x\n"),
        "quoted_bool": write(tmp_path / "bool.yaml", 'mode: enforce\nupstream_tls: "no"\n'),
        "bare_port": write(tmp_path / "port.yaml", "listen: 1884\n"),
        "quoted_number": write(tmp_path / "number.yaml", 'max_packet_size: "big"\n'),
        "bad_port": write(tmp_path / "badport.yaml", "\n\nupstream: broker:70000\n"),
        # tokens
        "token_garbage": write(tmp_path / "garbage.token", "not-a-token\n"),
        "token_claims": write(tmp_path / "claims.token", "igt1.abc.def\n"),
        "token_jwt": write(tmp_path / "jwt.token", "eyJ.eyJ.sig\n"),
        "token_other": write(
            tmp_path / "other.token", issue_token(secret.encode(), "observer") + "\n"
        ),
        # audit
        "log_not_chain": write(tmp_path / "not-chain.jsonl", '{"a": 1}\n'),
    }
    (tmp_path / "folder").mkdir()
    keys = tmp_path / "keys"
    write_keys(keys, "test.example/audit")
    found["keys"] = str(keys)
    found["pubkey"] = str(keys / "audit.pub")
    found["privkey"] = str(keys / "audit.key")
    return found


def fill(template: Sequence[str], files: dict[str, str]) -> list[str]:
    return [part.format(**files) for part in template]


# ----------------------------------------------------------------------------- usage errors

HOST_PORTS = [
    "127.0.0.1", "", " ", ":1884", "::1:1884", "fe80::1:1883", "127.0.0.1:70000",
    "127.0.0.1:65536", "host:-1", "host:port", "host:", "[::1]", "[::1]:", "a b:1",
    "127.0.0.1:1884x", "127.0.0.1:1884:1", "[::1]:1884x",
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "the following arguments are required: command"),
        (["nope"], "invalid choice: 'nope'"),
        (["--bogus", "policy", "schema"], "unrecognized arguments: --bogus"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["policy", "schema", "--bogus"], "unrecognized arguments: --bogus"),
        (["policy"], "required: policy_command"),
        (["policy", "check"], "required: directory"),
        (["policy", "check", "{policy}", "extra"], "unrecognized arguments: extra"),
        (["policy", "explain", "{policy}", "--publish", "x"], "required: --agent"),
        (["policy", "explain", "{policy}", "--agent", "a"],
         "one of the arguments --publish --subscribe --receive is required"),
        ([*EXPLAIN, "--publish", "x", "--subscribe", "y"],
         "argument --subscribe: not allowed with argument --publish"),
        ([*EXPLAIN, "--publish", "x", "--qos", "3"], "argument --qos: invalid choice: 3"),
        ([*EXPLAIN, "--publish", "x", "--qos", "-1"], "argument --qos: invalid choice: -1"),
        ([*EXPLAIN, "--publish", "x", "--qos", "one"], "argument --qos: invalid int value"),
        (["token"], "required: token_command"),
        (["token", "issue", "--agent", "a"], "required: --secret-file"),
        (["token", "issue", "--secret-file", "{secret}"],
         "one of the arguments --agent --approver --admin is required"),
        (["token", "issue", "--agent", "a", "--admin", "b", "--secret-file", "{secret}"],
         "argument --admin: not allowed with argument --agent"),
        (["token", "issue", "--agent"], "argument --agent: expected one argument"),
        (["token", "revoke", "jti"], "required: --reason"),
        (["token", "revoke", "jti", "--reason", "r", "--expires-at", "soon"],
         "argument --expires-at: expected a number of seconds, got 'soon'"),
        (["token", "secret", "--out"], "argument --out: expected one argument"),
        (["audit"], "required: audit_command"),
        (["audit", "keygen"], "required: --out"),
        (["audit", "verify", "log"], "required: --pubkey"),
        (["audit", "verify", "--pubkey", "{pubkey}"], "required: LOG"),
        (["audit", "verify", "log", "--pubkey", "{pubkey}", "--prove", "x"],
         "argument --prove: invalid int value: 'x'"),
        (["audit", "verify", "log", "--pubkey", "{pubkey}", "--prove", "1.5"],
         "argument --prove: invalid int value: '1.5'"),
        (["approvals"], "required: approvals_command"),
        (["approvals", "show"], "required: id"),
        (["approvals", "deny"], "required: id"),
        (["kill"], "one of the arguments --agent --all is required"),
        (["kill", "--agent", "a", "--all"], "argument --all: not allowed with argument --agent"),
        (["tools"], "required: tools_command"),
        (["tools", "export", "{policy}"], "required: --agent"),
        (["tools", "export", "{policy}", "--agent", AGENT, "--format", "yaml"],
         "argument --format: invalid choice: 'yaml'"),
        (["tools", "export", "{policy}", "--agent", AGENT, "--max-enum", "many"],
         "argument --max-enum: expected a whole number, got 'many'"),
        (["mcp"], "required: --agent, --guard, --token-file, --policy"),
        ([*MCP, "--token-file", "t", "--transport", "carrier-pigeon"],
         "argument --transport: invalid choice: 'carrier-pigeon'"),
        ([*MCP, "--token-file", "t", "--reply-timeout", "soon"],
         "argument --reply-timeout: expected a number of seconds, got 'soon'"),
        ([*MCP, "--token-file", "t", "--reconnect-max", "1.5"],
         "argument --reconnect-max: invalid int value: '1.5'"),
        (["simulate"], "required: --broker"),
        ([*SIMULATE, "--scale", "lots"], "argument --scale: invalid int value: 'lots'"),
        ([*SIMULATE, "--mux-size", "nan"], "argument --mux-size: invalid int value: 'nan'"),
        ([*SIMULATE, "--start-timeout", "x"], "argument --start-timeout: invalid float value"),
        ([*SIMULATE, "--mode", "swarm"], "argument --mode: invalid choice: 'swarm'"),
    ],
)
@pytest.mark.timeout(20)
def test_usage_errors_are_one_argparse_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    line = one_error(cli(capsys, fill(argv, files)), USAGE, expected)
    assert line.startswith("iot-guard") and line.endswith("--help)")


@pytest.mark.parametrize(
    "value", ["abc", "", "-5", "0", "-0", "nan", "inf", "-inf", "1e400", "0x10", "-1e-9"]
)
def test_token_ttl_must_be_positive_seconds(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], value: str
) -> None:
    argv = ["token", "issue", "--agent", AGENT, "--secret-file", files["secret"], f"--ttl={value}"]
    one_error(cli(capsys, argv), USAGE, "argument --ttl: ", repr(value))


@pytest.mark.parametrize("value", ["0", "-1", "1001", "nan", "1e3", "ten", "", " 5"])
def test_approvals_limit_is_1_to_1000(capsys: pytest.CaptureFixture[str], value: str) -> None:
    one_error(cli(capsys, ["approvals", "list", f"--limit={value}"]), USAGE,
              "argument --limit: expected a number from 1 to 1000", repr(value))


@pytest.mark.parametrize("flag", ["--listen", "--upstream", "--admin", "--metrics"])
@pytest.mark.parametrize("value", HOST_PORTS)
@pytest.mark.timeout(20)
def test_run_host_port_flags_are_checked_by_argparse(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], flag: str, value: str
) -> None:
    argv = [*fill(RUN, files), flag, value, CHECK]
    one_error(cli(capsys, argv), USAGE, f"argument {flag}: expected HOST:PORT", repr(value))


@pytest.mark.parametrize("flag", ["--guard", "--listen"])
@pytest.mark.parametrize("value", HOST_PORTS)
@pytest.mark.timeout(20)
def test_mcp_host_port_flags_are_checked_by_argparse(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], flag: str, value: str
) -> None:
    argv = [*fill(MCP, files), "--token-file", files["token_garbage"], flag, value]
    one_error(cli(capsys, argv), USAGE, f"argument {flag}: expected HOST:PORT", repr(value))


@pytest.mark.parametrize("value", ["", "localhost", ":1883", "host:port", "host:", "1883",
                                   "127.0.0.1:70000", "::1:1883"])
@pytest.mark.timeout(20)
def test_simulate_broker_is_host_port(capsys: pytest.CaptureFixture[str], value: str) -> None:
    # The guard's own HOST:PORT rule (settings.parse_host_port): before, the simulator had
    # its own, which let a port above 65535 and an unbracketed IPv6 address through.
    one_error(cli(capsys, ["simulate", "--broker", value]), USAGE,
              "iot-guard simulate: --broker: expected HOST:PORT", repr(value))


@pytest.mark.timeout(20)
def test_simulate_broker_port_0_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Was a traceback (paho's "Invalid port number").
    one_error(cli(capsys, ["simulate", "--broker", "127.0.0.1:0"]), USAGE,
              "--broker: port 0 is not a broker's port")


# Each was a traceback (UnicodeDecodeError): a token or password file that is not text.
@pytest.mark.parametrize("command", ["approvals", "mcp", "simulate"])
@pytest.mark.timeout(20)
def test_a_credential_file_that_is_not_utf8_is_one_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], command: str
) -> None:
    path = files["binary_secret"]
    argv = {
        "approvals": ["approvals", "list", "--admin", "http://127.0.0.1:1", "--token-file", path],
        "mcp": [*fill(MCP, files), "--token-file", path],
        "simulate": [*SIMULATE, "--username", "u", "--password-file", path],
    }[command]
    one_error(cli(capsys, argv), USAGE, f"{path}: not UTF-8 text (byte 0)")


def test_an_empty_token_file_is_named(capsys: pytest.CaptureFixture[str],
                                      files: dict[str, str]) -> None:
    # It said "give --token-file F or set IOT_GUARD_ADMIN_TOKEN", though F was given.
    argv = ["approvals", "list", "--admin", "http://127.0.0.1:1", "--token-file", files["empty"]]
    one_error(cli(capsys, argv), USAGE, f"{files['empty']} is empty")


# ----------------------------------------------------------------------------- run settings

@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-packet-size", "abc", "valid integer"),
        ("--max-packet-size", "1.5", "valid integer"),
        ("--max-packet-size", "-1", "greater than or equal to 128"),
        ("--max-packet-size", "0", "greater than or equal to 128"),
        ("--max-packet-size", "99999999999999999999999", "less than or equal to 268435455"),
        ("--connect-timeout", "abc", "valid number"),
        ("--connect-timeout", "0", "greater than 0"),
        ("--connect-timeout", "-1", "greater than 0"),
        ("--connect-timeout", "601", "less than or equal to 600"),
        ("--connect-timeout", "inf", "less than or equal to 600"),
        ("--connect-timeout", "1e400", "less than or equal to 600"),
        ("--read-coalesce-ms", "-1", "greater than or equal to 0"),
        ("--read-coalesce-ms", "101", "less than or equal to 100"),
        ("--read-coalesce-ms", "soon", "valid number"),
        ("--upstream-check-interval", "0", "greater than 0"),
        ("--upstream-check-interval", "-30", "greater than 0"),
        ("--upstream-check-interval", "nan", "greater than 0"),
        ("--upstream-check-interval", "often", "valid number"),
        ("--audit-checkpoint-seconds", "0", "greater than 0"),
        ("--audit-checkpoint-seconds", "nan", "greater than 0"),
        ("--audit-checkpoint-seconds", "-1", "greater than 0"),
        ("--audit-checkpoint-records", "0", "greater than or equal to 1"),
        ("--audit-checkpoint-records", "-5", "greater than or equal to 1"),
        ("--audit-checkpoint-records", "1e3", "valid integer"),
        ("--audit-checkpoint-records", "nan", "valid integer"),
        ("--mode", "relaxed", "'enforce' or 'dry-run'"),
        ("--observe", "kill_switch", "unknown checks ['kill_switch']"),
        ("--log-level", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("--log-format", "xml", "'text' or 'json'"),
        ("--upstream-username", "", "at least 1 character"),
    ],
)
@pytest.mark.timeout(20)
def test_run_settings_name_the_flag(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], flag: str, value: str,
    expected: str,
) -> None:
    argv = [*fill(RUN, files), flag, value, CHECK]
    one_error(cli(capsys, argv), USAGE, f"iot-guard: {flag}: ", expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--policy", "{policy}", CHECK], "secret_file is required: give --secret-file"),
        (["run", "--secret-file", "{secret}", CHECK], "policy is required: give --policy"),
        ([*RUN, "--tls-cert", "{empty}", CHECK], "tls_cert and tls_key go together"),
        ([*RUN, "--upstream-ca", "{empty}", CHECK],
         "upstream_ca is set but upstream_tls is false"),
        ([*RUN, "--upstream-password-file", "{short}", CHECK],
         "an upstream password needs upstream_username"),
        ([*RUN, "--config", "{tab}", CHECK, "{bracket}"],
         "give the config file once: --config FILE or --check-config FILE"),
    ],
)
@pytest.mark.timeout(20)
def test_run_settings_that_contradict_or_are_missing(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    one_error(cli(capsys, fill(argv, files)), USAGE, "iot-guard: ", expected)


@pytest.mark.timeout(20)
def test_run_without_anything_names_each_missing_setting_once(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    for argv in (["run", CHECK], ["run", "--config", files["empty"], CHECK]):
        result = cli(capsys, argv)
        assert result.code == USAGE and result.out == ""
        lines = result.error_lines()
        assert [line.split(" is required")[0] for line in lines] == [
            "iot-guard: policy", "iot-guard: secret_file"
        ]


# ----------------------------------------------------------------------------- run: files

@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("missing", "{missing}: cannot read the config file: No such file or directory"),
        ("dir", "{dir}: cannot read the config file: Is a directory"),
        ("bad_utf8", "{bad_utf8}: cannot read the config file: 'utf-8' codec can't decode"),
        ("tab", "{tab}:2: YAML syntax error: found character '\\t'"),
        ("bracket", "{bracket}:2: YAML syntax error: expected ',' or ']'"),
        ("list", "{list}:1: the config file must be a mapping of setting: value"),
        ("scalar", "{scalar}:1: the config file must be a mapping of setting: value"),
        ("not_setting", "{not_setting}:2: polcy: is not a setting"),
        ("quoted_bool", "{quoted_bool}:2: upstream_tls: must be true or false (unquoted)"),
        ("bare_port", "{bare_port}:1: listen: expected HOST:PORT such as 127.0.0.1:1884, "
                      "got '1884'"),
        ("quoted_number", "{quoted_number}:1: max_packet_size: must be a number, not 'big'"),
        ("bad_port", "{bad_port}:3: upstream: expected HOST:PORT"),
    ],
)
@pytest.mark.parametrize("how", ["--config", CHECK])
@pytest.mark.timeout(20)
def test_run_config_file_problems_name_the_file_and_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], config: str, expected: str,
    how: str,
) -> None:
    path = files[config]
    argv = [*fill(RUN, files), "--config", path, CHECK] if how == "--config" else [
        *fill(RUN, files), CHECK, path]
    one_error(cli(capsys, argv), USAGE, "iot-guard: " + expected.format(**files))


SECRET_PROBLEMS = [
    ("missing", "secret file {missing}: No such file or directory (make one with"),
    ("dir", "secret file {dir}: Is a directory"),
    ("empty", "secret file {empty}: the token secret must be at least 32 bytes (got 0)"),
    ("blank", "secret file {blank}: the token secret must be at least 32 bytes (got 0)"),
    ("short", "secret file {short}: the token secret must be at least 32 bytes (got 5)"),
    ("binary_secret", "secret file {binary_secret}: the token secret must be at least 32 "
                      "bytes (got 3)"),
]


@pytest.mark.parametrize(("secret", "expected"), SECRET_PROBLEMS)
@pytest.mark.timeout(20)
def test_run_secret_file_problems(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], secret: str, expected: str
) -> None:
    argv = ["run", "--policy", files["policy"], "--secret-file", files[secret], CHECK]
    one_error(cli(capsys, argv), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.timeout(20)
def test_run_refuses_a_secret_others_may_read(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    argv = ["run", "--policy", files["policy"], "--secret-file", files["secret_public"], CHECK]
    one_error(cli(capsys, argv), USAGE,
              f"secret file {files['secret_public']} is readable by others (mode 0644)")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--upstream-password-file", "{missing}"],
         "upstream password file {missing}: No such file or directory"),
        (["--upstream-password-file", "{dir}"], "upstream password file {dir}: Is a directory"),
        (["--upstream-password-file", "{empty}"], "upstream password file {empty} is empty"),
        (["--upstream-password-file", "{blank}"], "upstream password file {blank} is empty"),
        (["--upstream-password-file", "{bad_utf8}"],
         "upstream password file {bad_utf8}: not UTF-8 text (byte 8)"),
    ],
)
@pytest.mark.timeout(20)
def test_run_password_file_problems(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    full = [*fill(RUN, files), "--upstream-username", "guard", *fill(argv, files), CHECK]
    one_error(cli(capsys, full), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tls-cert", "{missing}", "--tls-key", "{empty}"],
         "--tls-cert {missing} does not exist"),
        (["--tls-cert", "{empty}", "--tls-key", "{missing}"],
         "--tls-key {missing} does not exist"),
        (["--upstream-tls", "--upstream-ca", "{missing}"],
         "--upstream-ca {missing} does not exist"),
        (["--audit-key", "{missing}"], "--audit-key {missing} does not exist"),
    ],
)
@pytest.mark.timeout(20)
def test_run_files_it_opens_later_are_checked_first(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    full = [*fill(RUN, files), *fill(argv, files), CHECK]
    one_error(cli(capsys, full), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.timeout(20)
def test_run_refuses_a_policy_without_agents_or_a_missing_one(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    argv = ["run", "--policy", files["dir"], "--secret-file", files["secret"], CHECK]
    policy_refused(cli(capsys, argv), f"{files['dir']}: no agents in the policy")
    argv = ["run", "--policy", files["missing"], "--secret-file", files["secret"], CHECK]
    policy_refused(cli(capsys, argv), f"{files['missing']}: not a directory")


# ----------------------------------------------------------------------------- policy files

SCHEMA_POLICY = """\
tenants:
  acme: {}
tools:
  orders:
    verb: publish
    topic: orders/{tenant}
    payload: json_schema
    schema_file: schemas/order.json
agents:
  bot: {tenants: [acme], tools: [orders]}
"""

# (id, files of the policy directory, the one problem: {d} is the directory)
BROKEN_POLICIES: list[tuple[str, dict[str, str | bytes], str]] = [
    ("tab", {"a.yaml": "tenants:\n\tacme: {}\n"}, "{d}/a.yaml:2: YAML syntax error"),
    ("bracket", {"a.yaml": "tenants: {acme: [\n"}, "{d}/a.yaml:2: YAML syntax error"),
    ("list", {"a.yaml": "- tenants\n- tools\n"},
     "{d}/a.yaml:1: a policy file must be a mapping of sections"),
    ("bad-utf8", {"a.yaml": b"tenants:\n  \xff\xfe: {}\n"},
     "{d}/a.yaml: cannot read: 'utf-8' codec can't decode"),
    ("list-section", {"a.yaml": "tenants: []\n"},
     "{d}/a.yaml:1: tenants: must be a mapping of names to entries"),
    ("unknown-section", {"a.yaml": "\ntenant:\n  acme: {}\n"},
     "{d}/a.yaml:2: tenant: unknown section"),
    ("duplicate-key", {"a.yaml": "tenants:\n  acme: {}\n  acme: {}\n"},
     "{d}/a.yaml:3: tenants.acme: duplicate key (first defined at line 2)"),
    ("twice", {"a.yaml": "tenants:\n  acme: {}\n", "b.yaml": "\ntenants:\n  acme: {}\n"},
     "{d}/b.yaml:3: tenants.acme: defined twice (also at {d}/a.yaml:2)"),
    ("schema-invalid", {"p.yaml": SCHEMA_POLICY, "schemas/order.json":
                        '{\n  "type": "object",\n  "properties": {\n    "qty": {"type": "count"}'
                        "\n  }\n}\n"},
     "{d}/schemas/order.json:4: tools.orders.schema_file: schemas/order.json at "
     "/properties/qty/type: "),
    ("schema-not-json", {"p.yaml": SCHEMA_POLICY, "schemas/order.json": '{\n  "type": object\n}'},
     "{d}/schemas/order.json:2: tools.orders.schema_file: schemas/order.json: not JSON"),
    ("schema-empty", {"p.yaml": SCHEMA_POLICY, "schemas/order.json": ""},
     "{d}/schemas/order.json:1: tools.orders.schema_file: schemas/order.json: not JSON"),
    ("schema-array", {"p.yaml": SCHEMA_POLICY, "schemas/order.json": "[1, 2]"},
     "{d}/schemas/order.json:1: tools.orders.schema_file: schemas/order.json: a JSON Schema "
     "is an object or a boolean, not an array"),
    ("schema-bad-utf8", {"p.yaml": SCHEMA_POLICY, "schemas/order.json": b"\xff\xfe"},
     "{d}/p.yaml:8: tools.orders.schema_file: cannot read {d}/schemas/order.json: 'utf-8'"),
    ("schema-missing", {"p.yaml": SCHEMA_POLICY},
     "{d}/p.yaml:8: tools.orders.schema_file: cannot read {d}/schemas/order.json: "),
    ("schema-outside", {"p.yaml": SCHEMA_POLICY.replace("schemas/order.json", "../order.json")},
     "{d}/p.yaml:8: tools.orders.schema_file: ../order.json is outside the policy directory"),
]


def make_policy(tmp_path: Path, name: str, parts: dict[str, str | bytes]) -> str:
    directory = tmp_path / f"policy-{name}"
    for relative, content in parts.items():
        write(directory / relative, content, 0o644)
    directory.mkdir(exist_ok=True)
    return str(directory)


POLICY_COMMANDS = {
    "check": ["policy", "check", "{d}"],
    "explain": ["policy", "explain", "{d}", "--agent", "bot", "--publish", "orders/acme"],
    "tools-export": ["tools", "export", "{d}", "--agent", "bot"],
    "token-issue": ["token", "issue", "--agent", "bot", "--secret-file", "{secret}",
                    "--policy", "{d}"],
    "run": ["run", "--policy", "{d}", "--secret-file", "{secret}", CHECK],
    "mcp": ["mcp", "--agent", "bot", "--guard", "127.0.0.1:1", "--token-file",
            "{token_other}", "--policy", "{d}"],
}


# `token issue --policy` reads the policy files but compiles no schema (reported defect).
BROKEN_POLICY_CASES = [
    pytest.param(command, *case, id=f"{command}-{case[0]}")
    for command in POLICY_COMMANDS for case in BROKEN_POLICIES
    if not (command == "token-issue" and case[0].startswith("schema-"))
]


@pytest.mark.parametrize(("command", "name", "parts", "expected"), BROKEN_POLICY_CASES)
@pytest.mark.timeout(20)
def test_a_broken_policy_is_one_problem_at_its_file_and_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], tmp_path: Path, command: str,
    name: str, parts: dict[str, str | bytes], expected: str,
) -> None:
    directory = make_policy(tmp_path, name, parts)
    argv = [part.format(d=directory, **files) for part in POLICY_COMMANDS[command]]
    policy_refused(cli(capsys, argv), expected.format(d=directory))


@pytest.mark.parametrize("command", list(POLICY_COMMANDS))
@pytest.mark.parametrize("where", ["missing", "empty"])
@pytest.mark.timeout(20)
def test_a_policy_directory_that_is_not_one(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], command: str, where: str
) -> None:
    argv = [part.format(d=files[where], **files) for part in POLICY_COMMANDS[command]]
    result = cli(capsys, argv)
    if command in ("tools-export", "mcp"):  # the agent commands say it their way
        one_error(result, USAGE, f"iot-guard: {files[where]}: not a policy directory")
    else:
        policy_refused(result, f"{files[where]}: not a directory")


def test_policy_check_of_an_empty_directory_warns_that_run_would_not_start(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    # Honest, not an error: an empty policy loads (deny by default), with a warning.
    result = cli(capsys, ["policy", "check", files["dir"]])
    assert result.code == 0 and "0 agents" in result.out
    assert result.error_lines() == [
        f"{files['dir']}: warning: no agents, so every connection would be refused "
        "(`iot-guard run` does not start with this policy)"
    ]


# ----------------------------------------------------------------------------- unreadable

UNREADABLE_CONTENT = b"polcy: [\n"  # also wrong, so root (who reads it anyway) gets an error


@pytest.mark.parametrize(
    "command", ["config", "secret", "policy", "password", "mcp-token", "approvals-token",
                "pubkey"])
@pytest.mark.timeout(20)
def test_an_unreadable_file(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], tmp_path: Path, command: str
) -> None:
    """chmod 000: "Permission denied"; as root (who may read anything), the file's content
    is read and its own problem is the one line: either way one honest line."""
    policy = tmp_path / "locked-policy"
    path = Path(write(
        policy / "a.yaml" if command == "policy" else tmp_path / "locked", UNREADABLE_CONTENT,
        0o000,
    ))
    readable = os.access(path, os.R_OK)
    argv, denied, content = {
        "config": ([*fill(RUN, files), "--config", str(path), CHECK],
                   f"iot-guard: {path}: cannot read the config file: Permission denied",
                   f"iot-guard: {path}:2: YAML syntax error"),
        "secret": (["token", "issue", "--agent", AGENT, "--secret-file", str(path)],
                   f"iot-guard: secret file {path}: Permission denied",
                   f"iot-guard: secret file {path}: the token secret must be at least 32 "
                   "bytes (got 8)"),
        "policy": (["policy", "check", str(policy)],
                   f"{path}: cannot read: [Errno 13] Permission denied",
                   f"{path}:2: YAML syntax error"),
        # Any text is a password: as root the next check (a missing audit key) speaks.
        "password": ([*fill(RUN, files), "--upstream-username", "guard",
                      "--upstream-password-file", str(path), "--audit-key", files["missing"],
                      CHECK],
                     f"iot-guard: upstream password file {path}: Permission denied",
                     f"iot-guard: --audit-key {files['missing']} does not exist"),
        "mcp-token": ([*fill(MCP, files), "--token-file", str(path)],
                      f"iot-guard: {path}: Permission denied",
                      f"iot-guard: {path}:1: not an iot-guard token"),
        "approvals-token": (["approvals", "list", *ADMIN, "--token-file", str(path)],
                            f"iot-guard: {path}: Permission denied",
                            "iot-guard: cannot reach the admin API at http://127.0.0.1:1"),
        "pubkey": (["audit", "verify", files["log_not_chain"], "--pubkey", str(path)],
                   f"iot-guard: {path}: ", f"iot-guard: {path}:1: "),
    }[command]
    result = cli(capsys, argv)
    if not readable and command == "policy":
        policy_refused(result, denied)
    elif not readable:
        assert "Permission denied" in one_error(result, USAGE, denied)
    elif command == "policy":
        policy_refused(result, content)
    else:
        one_error(result, USAGE, content)


# ----------------------------------------------------------------------------- tokens

@pytest.mark.parametrize(("secret", "expected"), SECRET_PROBLEMS)
def test_token_issue_secret_file_problems(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], secret: str, expected: str
) -> None:
    argv = ["token", "issue", "--agent", AGENT, "--secret-file", files[secret]]
    one_error(cli(capsys, argv), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--agent", AGENT, "--tools", ","], "--tools names no tool"),
        (["--agent", AGENT, "--tools", " , ,"], "--tools names no tool"),
        (["--admin", "root", "--tools", "a"], "--tools narrows an agent's token"),
        (["--agent", AGENT, "--ttl", "1e300"],
         "--ttl 1e+300 is longer than 86400 s (the default maximum"),
        (["--agent", AGENT, "--ttl", "86401", "--policy", "{policy}"],
         "--ttl 86401 is longer than 86400 s (the agent's max_token_ttl_s in {policy})"),
        (["--agent", "nobody", "--policy", "{policy}"],
         "agent 'nobody' is not in the policy {policy} (agents: "),
        (["--agent", AGENT, "--policy", "{policy}", "--tools", "nope"],
         "no tools ['nope'] in the policy {policy}"),
        (["--approver", "nobody", "--policy", "{policy}"],
         "approver 'nobody' is not listed in the policy's approvals.approvers"),
    ],
)
def test_token_issue_refuses_what_the_policy_or_role_does_not_allow(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    full = ["token", "issue", "--secret-file", files["secret"], *fill(argv, files)]
    one_error(cli(capsys, full), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("secret", "{secret} exists; remove it first to replace the secret"),
        ("dir", "{dir} exists; remove it first"),
        ("missing_parent", "cannot write {missing}/deeper/guard.secret: No such file or "
                           "directory"),
    ],
)
def test_token_secret_never_overwrites_and_says_why_it_cannot_write(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], out: str, expected: str
) -> None:
    path = files["missing"] + "/deeper/guard.secret" if out == "missing_parent" else files[out]
    before = Path(files["secret"]).read_text()
    one_error(cli(capsys, ["token", "secret", "--out", path]), USAGE,
              "iot-guard: " + expected.format(**files))
    assert Path(files["secret"]).read_text() == before


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("missing", "{missing}: No such file or directory"),
        ("dir", "{dir}: Is a directory"),
        ("empty", "{empty} is empty"),
        ("token_garbage", "{token_garbage}:1: not an iot-guard token"),
        ("token_jwt", "{token_jwt}:1: not an iot-guard token"),
        ("token_claims", "{token_claims}:1: token claims are malformed"),
        ("secret", "{secret}:1: not an iot-guard token"),
        ("token_other", "{token_other}:1: the token is for agent 'observer', not 'ops-agent'"),
    ],
)
@pytest.mark.timeout(20)
def test_mcp_token_file_problems(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], token: str, expected: str
) -> None:
    argv = [*fill(MCP, files), "--token-file", files[token]]
    one_error(cli(capsys, argv), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["approvals", "list"], "give --admin URL or set IOT_GUARD_ADMIN_URL"),
        (["approvals", "list", "--admin", "", "--token-file", "{token_garbage}"],
         "give --admin URL or set IOT_GUARD_ADMIN_URL"),
        (["approvals", "list", *ADMIN], "give --token-file F or set IOT_GUARD_ADMIN_TOKEN"),
        (["approvals", "list", *ADMIN, "--token-file", "{missing}"],
         "{missing}: No such file or directory"),
        (["approvals", "show", "x", *ADMIN, "--token-file", "{dir}"], "{dir}: Is a directory"),
        (["approvals", "list", "--admin", "ftp://x", "--token-file", "{token_garbage}"],
         "admin URL must be http(s)://HOST:PORT, got 'ftp://x'"),
        (["approvals", "approve", "x", "--admin", "not a url", "--token-file",
          "{token_garbage}"], "admin URL must be http(s)://HOST:PORT, got 'not a url'"),
        (["approvals", "list", *ADMIN, "--token-file", "{token_garbage}"],
         "cannot reach the admin API at http://127.0.0.1:1"),
    ],
)
@pytest.mark.timeout(20)
def test_approvals_connection_options(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    one_error(cli(capsys, fill(argv, files)), USAGE, "iot-guard: " + expected.format(**files))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["kill", "--agent", AGENT], "give --reason: it goes to the audit log and to the agent"),
        (["kill", "--all", "--reason", " \t "], "give --reason"),
        (["kill", "--agent", AGENT, "--reason", "r"], "give --admin URL or set"),
        (["kill", "--agent", AGENT, "--reason", "r", "--state", "ftp://x"],
         "unknown state URL scheme 'ftp'; give a directory or redis://HOST:PORT/DB"),
        (["kill", "--agent", AGENT, "--reason", "r", "--state-dir", "{secret}"],
         "{secret}: cannot create the state directory"),
        (["kill", "--all", "--lift", "--state-dir", "{empty}"],
         "{empty}: cannot create the state directory"),
        (["token", "revoke", "--reason", "r"], "give a token id (JTI) or --agent ID"),
        (["token", "revoke", "jti", "--agent", AGENT, "--reason", "r"],
         "give a token id (JTI) or --agent ID, not both"),
        (["token", "revoke", "jti", "--reason", "r", "--state", "ftp://x"],
         "unknown state URL scheme 'ftp'"),
        (["token", "revoke", "jti", "--reason", "r"], "give --admin URL or set"),
    ],
)
def test_kill_and_revoke(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    one_error(cli(capsys, fill(argv, files)), USAGE, "iot-guard: " + expected.format(**files))


# ----------------------------------------------------------------------------- audit

@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["keygen", "--out", "{keys}"], USAGE,
         "iot-guard: {keys}/audit.key: already exists; not overwriting a key"),
        (["keygen", "--out", "{secret}"], USAGE, "iot-guard: {secret}: File exists"),
        (["keygen", "--out", "{tmp}/k1", "--origin", "a b"], USAGE,
         "iot-guard: 'a b' is not a valid key name/origin"),
        (["keygen", "--out", "{tmp}/k2", "--origin", "+x"], USAGE,
         "iot-guard: '+x' is not a valid key name/origin"),
        (["keygen", "--out", "{tmp}/k3", "--origin", "a\nb"], USAGE,
         "iot-guard: 'a\\nb' is not a valid key name/origin"),
        (["verify", "{log_not_chain}", "--pubkey", "{missing}"], USAGE,
         "iot-guard: {missing}: [Errno 2] No such file or directory"),
        (["verify", "{log_not_chain}", "--pubkey", "{dir}"], USAGE,
         "iot-guard: {dir}: [Errno 21] Is a directory"),
        (["verify", "{log_not_chain}", "--pubkey", "{empty}"], USAGE,
         "iot-guard: {empty}: no public key in the file"),
        (["verify", "{log_not_chain}", "--pubkey", "{bad_utf8}"], USAGE,
         "iot-guard: {bad_utf8}: 'utf-8' codec can't decode"),
        (["verify", "{log_not_chain}", "--pubkey", "{privkey}"], USAGE,
         "iot-guard: {privkey}:1: not an audit public key"),
        (["verify", "{missing}", "--pubkey", "{pubkey}"], USAGE,
         "iot-guard: {missing}: no such file"),
        (["verify", "{log_not_chain}", "--pubkey", "{pubkey}", "--prove", "-1"], USAGE,
         "iot-guard: --prove takes a record number (seq) >= 0"),
        (["verify", "{empty}", "--pubkey", "{pubkey}"], REFUSED, "{empty}: empty file"),
        (["verify", "{log_not_chain}", "--pubkey", "{pubkey}"], REFUSED,
         "{log_not_chain}:1: does not start with the chain's open record"),
        (["verify", "{bad_utf8}", "--pubkey", "{pubkey}"], REFUSED,
         "{bad_utf8}:1: does not start with the chain's open record"),
        (["verify", "{tab}", "--pubkey", "{pubkey}"], REFUSED,
         "{tab}:1: does not start with the chain's open record"),
    ],
)
def test_audit_keys_and_logs(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], code: int,
    expected: str,
) -> None:
    one_error(cli(capsys, ["audit", *fill(argv, files)]), code, expected.format(**files))


# ----------------------------------------------------------------------------- tools export

@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--agent", "nobody"], "agent 'nobody' is not in the policy"),
        (["--agent", AGENT, "--token-tools", ","], "--tools names no tool"),
    ],
)
def test_tools_export_refusals(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    full = ["tools", "export", files["policy"], *argv]
    one_error(cli(capsys, full), USAGE, "iot-guard: " + expected)


# ----------------------------------------------------------------------------- simulate

@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--fault", "bogus"], "unknown fault 'bogus'; choose from offline, latency_s"),
        (["--fault", ""], "unknown fault ''"),
        (["--fault", "=1@*"], "unknown fault ''"),
        (["--fault", "latency_s"], "fault latency_s needs a value, e.g. latency_s=0.5"),
        (["--fault", "latency_s=slow"], "fault latency_s: 'slow' is not a number"),
        (["--fault", "drop_rate="], "fault drop_rate: '' is not a number"),
        (["--fault", "offline=maybe"], "fault offline is on or off, not 'maybe'"),
        (["--username", "u"], "--username needs --password-file"),
        (["--username", "u", "--password-file", "{missing}"],
         "{missing}: No such file or directory"),
        (["--username", "u", "--password-file", "{dir}"], "{dir}: Is a directory"),
    ],
)
@pytest.mark.timeout(20)
def test_simulate_refuses_before_it_connects(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    full = [*SIMULATE, *fill(argv, files)]
    one_error(cli(capsys, full), USAGE, "iot-guard simulate: ", expected.format(**files))


# ----------------------------------------------------------------------------- explain

LONG = "a" * HOSTILE_TOPIC_LENGTH
LONG_LEVELS = "a/" * (HOSTILE_TOPIC_LENGTH // 2)
WIDE = "é" * (HOSTILE_TOPIC_LENGTH // 2)  # 35,000 characters, 70,000 bytes

# (request flag, topic, what the reason says)
HOSTILE_TOPICS = [
    *[(flag, topic, "wildcard in topic name")
      for flag in ("--publish", "--receive") for topic in ("#", "+", "acme/#", "acme/+/x")],
    *[(flag, "$SYS/broker/load", "reserved to the broker and the guard")
      for flag in ("--publish", "--receive", "--subscribe")],
    ("--subscribe", "$SYS/#", "[MQTT-4.7.2-1]"),
    ("--publish", "$guard/events", "[MQTT-4.7.2-1]"),
    ("--publish", "", "topic name is empty [MQTT-4.7.3-1]"),
    ("--receive", "", "topic name is empty [MQTT-4.7.3-1]"),
    ("--subscribe", "", "topic filter '': empty [MQTT-4.7.3-1]"),
    ("--publish", "a\x00b", "U+0000 in topic name [MQTT-4.7.3-2]"),
    ("--receive", "a\x00b", "U+0000 in topic name [MQTT-4.7.3-2]"),
    ("--subscribe", "a\x00b", "contains U+0000 [MQTT-4.7.3-2]"),
    ("--subscribe", "a/#/b", "'#' must be a whole level and the last one [MQTT-4.7.1-2]"),
    ("--subscribe", "#/a", "'#' must be a whole level and the last one"),
    ("--subscribe", "a+/b", "'+' must occupy an entire level [MQTT-4.7.1-3]"),
    *[(flag, topic, "topic name longer than 65535 bytes")
      for flag in ("--publish", "--receive") for topic in (LONG, LONG_LEVELS, WIDE)],
    *[("--subscribe", topic, "longer than 65535 bytes") for topic in (LONG, LONG_LEVELS, WIDE)],
    ("--subscribe", "#", "'#' at level 1 would include topics that no tool lets it read"),
]


@pytest.mark.parametrize(
    ("flag", "topic", "reason"), HOSTILE_TOPICS,
    ids=[f"{flag[2:]}-{topic[:12]!r}-{len(topic)}" for flag, topic, _ in HOSTILE_TOPICS],
)
def test_policy_explain_denies_hostile_topics_and_says_why(
    capsys: pytest.CaptureFixture[str], flag: str, topic: str, reason: str
) -> None:
    result = cli(capsys, ["policy", "explain", str(POLICY), "--agent", AGENT, flag, topic])
    assert result.code == REFUSED and result.err == ""
    verb = {"--publish": "publish", "--subscribe": "subscribe", "--receive": "receive"}[flag]
    first, why, code = result.out.splitlines()
    assert first.startswith(f"deny: {AGENT} may not {verb} ")
    assert why.startswith("  reason:") and reason in why, why
    assert code.startswith("  reason code: 0x")
    assert len(why) < 1_000  # the reason does not echo 70,000 characters back


@pytest.mark.parametrize(("flag", "topic", "reason"), HOSTILE_TOPICS[:12])
def test_policy_explain_json_for_hostile_topics(
    capsys: pytest.CaptureFixture[str], flag: str, topic: str, reason: str
) -> None:
    argv = ["policy", "explain", str(POLICY), "--agent", AGENT, flag, topic, "--json"]
    result = cli(capsys, argv)
    assert result.code == REFUSED and result.err == ""
    decision = json.loads(result.out)
    assert decision["decision"] == "deny" and reason in decision["reason"]


@pytest.mark.parametrize("agent", ["nobody", "", "ops-agent\nallow", "$SYS", "a" * 70_000])
def test_policy_explain_for_an_agent_not_in_the_policy(
    capsys: pytest.CaptureFixture[str], agent: str
) -> None:
    result = cli(capsys, ["policy", "explain", str(POLICY), "--agent", agent, "--publish", "x"])
    assert result.code == REFUSED and result.err == ""
    assert result.out == f"deny: agent {agent!r} is not in the policy (every action is denied)\n"


def test_policy_explain_tools_must_name_one(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "explain", str(POLICY), "--agent", AGENT, "--publish", "x", "--tools", ","]
    one_error(cli(capsys, argv), USAGE, "iot-guard: --tools names no tool")



@pytest.mark.parametrize("extra, expected", [
    (["--upstream-tls", "--upstream-ca", "{empty}"],
     "cannot start: TLS: NO_CERTIFICATE_OR_CRL_FOUND"),
    (["--state", "{empty}"], "cannot create the state directory"),
    (["--state", "ftp://x"], "cannot start: unknown state URL scheme 'ftp'"),
])
@pytest.mark.timeout(20)
def test_run_that_cannot_start_says_why_in_one_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], tmp_path: Path,
    extra: list[str], expected: str,
) -> None:
    # Each passed --check-config and then ended in a traceback (ssl.SSLError, StateError)
    # when the guard started.
    argv = [*fill(RUN, files), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1",
            "--audit-log", str(tmp_path / "audit.jsonl"), *fill(extra, files)]
    result = cli(capsys, argv)  # (no traceback: checked there)
    assert result.code == USAGE, result
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("iot-guard: cannot start: ") and expected in last, result.err


@pytest.mark.parametrize("topic", ["x\nallow: ops-agent may publish x", "a\x1b[2Jb", "\udcff"])
def test_explain_prints_a_hostile_topic_as_one_printable_line(
    capsys: pytest.CaptureFixture[str], topic: str
) -> None:
    # A newline in the topic forged an "allow:" line; an escape sequence reached the
    # terminal; a lone surrogate (an undecodable argument) failed a strict UTF-8 stdout.
    result = cli(capsys, ["policy", "explain", str(POLICY), "--agent", AGENT,
                          "--publish", topic])
    assert result.code == REFUSED, result
    lines = result.out.splitlines()
    assert lines[0].startswith("deny: ") and all(line.isprintable() for line in lines), lines
    assert not any(line.startswith("allow") for line in lines), lines
    assert len(lines) == 3, lines  # the verdict, the reason, the reason code


@pytest.mark.parametrize("argv, expected", [
    # Each was accepted (exit 0): a token for agent "", a kill switch for agent "", a
    # revocation that expires at NaN or before 1970, a revocation without a reason.
    (["token", "issue", "--agent", "", "--secret-file", "{secret}"],
     "argument --agent: expected an id, got ''"),
    (["token", "issue", "--approver", "a\nb", "--secret-file", "{secret}"],
     "argument --approver: expected an id"),
    (["kill", "--agent", " ", "--reason", "x", "--state-dir", "{tmp}"],
     "argument --agent: expected an id, got ' '"),
    (["token", "revoke", "j", "--reason", "x", "--expires-at", "nan", "--state-dir", "{tmp}"],
     "argument --expires-at: must be a positive number of seconds"),
    (["token", "revoke", "j", "--reason", "x", "--expires-at", "-5", "--state-dir", "{tmp}"],
     "argument --expires-at: must be a positive number of seconds"),
    (["token", "revoke", "j", "--reason", " ", "--state-dir", "{tmp}"],
     "argument --reason: must not be blank"),
    (["token", "revoke", "--agent", "", "--reason", "x", "--state-dir", "{tmp}"],
     "argument --agent: expected an id"),
])
def test_blank_ids_reasons_and_impossible_times_are_refused(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    one_error(cli(capsys, fill(argv, files)), USAGE, expected)


@pytest.mark.parametrize("argv, expected", [
    # Each was accepted: a negative enum limit; an MCP server whose waits are NaN, 0 or
    # negative (a reply "timed out" at once, or never); tools for agent "".
    (["tools", "export", "{policy}", "--agent", AGENT, "--max-enum", "-1"],
     "argument --max-enum: must be 0 or more, got '-1'"),
    (["tools", "export", "{policy}", "--agent", ""], "argument --agent: expected an id"),
    ([*MCP, "--token-file", "{token_garbage}", "--reply-timeout", "nan"],
     "argument --reply-timeout: must be a positive number of seconds"),
    ([*MCP, "--token-file", "{token_garbage}", "--read-timeout", "0"],
     "argument --read-timeout: must be a positive number of seconds"),
    ([*MCP, "--token-file", "{token_garbage}", "--ack-timeout", "-1"],
     "argument --ack-timeout: must be a positive number of seconds"),
    ([*MCP, "--token-file", "{token_garbage}", "--token-warn", "inf"],
     "argument --token-warn: must be a positive number of seconds"),
])
def test_agent_side_limits_and_waits_are_checked(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], expected: str
) -> None:
    one_error(cli(capsys, fill(argv, files)), USAGE, expected)
