"""The iot-guard command, run as a user runs it (subprocesses, a real broker)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iot_guard import __version__
from iot_guard.tokens import verify_token
from simulator.broker import MosquittoBroker, free_port
from tests.rawmqtt import RawMqtt

ROOT = Path(__file__).parents[2]
POLICY_DIR = ROOT / "device_policies"
DEPLOY = ROOT / "iot_guard" / "deploy"


def iot_guard(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iot_guard", *args], capture_output=True, text=True, timeout=60, **kw
    )  # type: ignore[call-overload]


def test_policy_check_accepts_the_example_fleet() -> None:
    result = iot_guard("policy", "check", str(POLICY_DIR))
    assert result.returncode == 0, result.stderr
    assert "2 tenants, 13 devices" in result.stdout


def test_policy_check_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        "agents:\n  bot:\n    tenants: [acme]\n    tools: [no_such_tool]\n"
    )
    (tmp_path / "tenants.yaml").write_text("tenants:\n  acme: {}\n")
    result = iot_guard("policy", "check", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'agents.yaml'}:4:" in result.stderr
    assert "no_such_tool" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"target_temp_c":21}}}',
            ],
            0,
            "allow",
        ),
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"target_temp_c":"21"}}}',
            ],
            1,
            "target_temp_c",
        ),
        (
            [
                "--publish",
                "tenants/acme/devices/therm-001/shadow/update",
                "--payload",
                '{"state":{"desired":{"firmware_channel":"beta"}}}',
            ],
            1,
            "approval",
        ),
        (["--subscribe", "tenants/acme/#"], 1, "deny"),
        (["--receive", "tenants/globex/devices/therm-101/telemetry"], 1, "deny"),
    ],
)
def test_policy_explain(args: list[str], code: int, words: str) -> None:
    result = iot_guard("policy", "explain", str(POLICY_DIR), "--agent", "ops-agent", *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert words in result.stdout


def test_policy_explain_json_matches_the_proxy_decision() -> None:
    result = iot_guard(
        "policy",
        "explain",
        str(POLICY_DIR),
        "--agent",
        "observer",
        "--json",
        "--publish",
        "tenants/acme/devices/therm-001/shadow/get",
    )
    decision = json.loads(result.stdout)
    assert decision["decision"] == "deny" and decision["reason_code"] == 0x87


def test_token_issue_prints_a_verifiable_token(tmp_path: Path) -> None:
    secret_file = tmp_path / "guard.secret"
    secret = iot_guard("token", "secret")
    secret_file.write_text(secret.stdout)
    result = iot_guard(
        "token",
        "issue",
        "--agent",
        "observer",
        "--secret-file",
        str(secret_file),
        "--ttl",
        "60",
        "--tools",
        "read_telemetry",
        "--policy",
        str(POLICY_DIR),
    )
    assert result.returncode == 0, result.stderr
    claims = verify_token(
        secret_file.read_text().strip().encode(), result.stdout.strip(), time.time()
    )
    assert claims.agent_id == "observer" and claims.tools == frozenset({"read_telemetry"})
    refused = iot_guard(
        "token",
        "issue",
        "--agent",
        "observer",
        "--secret-file",
        str(secret_file),
        "--tools",
        "shadow_update",
        "--policy",
        str(POLICY_DIR),
    )
    assert refused.returncode == 2 and "shadow_update" in refused.stderr


def test_run_serves_agents_from_a_config_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "guard.secret"
    secret_file.write_text("a" * 48)
    secret_file.chmod(0o600)
    port = free_port()
    with MosquittoBroker(auth=False) as broker:
        (tmp_path / "guard.yaml").write_text(
            f"policy: {POLICY_DIR}\nlisten: 127.0.0.1:{port}\n"
            f"upstream: {broker.host}:{broker.port}\nsecret_file: {secret_file}\n"
            f"audit_log: {tmp_path / 'audit.jsonl'}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "iot_guard", "run", "--config", str(tmp_path / "guard.yaml")],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "guard did not listen"
                    time.sleep(0.05)
            token = iot_guard(
                "token", "issue", "--agent", "ops-agent", "--secret-file", str(secret_file)
            ).stdout.strip()
            client = RawMqtt(port)
            assert client.connect("ops-agent", token).reason_code == 0
            client.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("packet") == "connect" and r["result_status"] == "success" for r in records)


def test_run_refuses_to_start_with_a_broken_policy(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "agents.yaml").write_text("agents: [not, a, mapping]\n")
    (tmp_path / "s").write_text("b" * 48)
    (tmp_path / "s").chmod(0o600)
    result = iot_guard(
        "run",
        "--policy",
        str(tmp_path / "policy"),
        "--upstream",
        "127.0.0.1:1",
        "--secret-file",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    assert "agents.yaml:1" in result.stderr


# ----------------------------------------------------------------------------- helpers

def make_secret(tmp_path: Path) -> Path:
    path = tmp_path / "guard.secret"
    if path.exists():
        return path
    result = iot_guard("token", "secret", "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr, never a traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--policy", str(POLICY_DIR), "--secret-file", str(make_secret(tmp_path)),
            *extra]


# ----------------------------------------------------------------------------- version

def test_version() -> None:
    result = iot_guard("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"iot-guard {__version__}"


# ----------------------------------------------------------------------------- user errors

def test_listen_without_a_host_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(iot_guard(*run_args(tmp_path, "--listen", "1884")))
    assert "--listen" in line and "expected HOST:PORT such as 127.0.0.1:1884, got '1884'" in line


def test_missing_password_file_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(iot_guard(*run_args(
        tmp_path, "--upstream-username", "iot-guard", "--upstream-password-file",
        str(tmp_path / "nope"),
    )))
    missing = tmp_path / "nope"
    assert line == f"iot-guard: upstream password file {missing}: No such file or directory"


def test_listen_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "IOT_GUARD_UPSTREAM_USERNAME": "iot-guard",
               "IOT_GUARD_UPSTREAM_PASSWORD": "pw"}
        line = one_line_error(iot_guard(*run_args(
            tmp_path, "--listen", f"127.0.0.1:{port}", "--audit-log", str(tmp_path / "a.jsonl")
        ), env=env))
    assert line.startswith("iot-guard: cannot start: ") and f"('127.0.0.1', {port})" in line
    assert "address already in use" in line and "choose another --listen" in line


@pytest.mark.parametrize("ttl", ["-5", "0", "soon", "nan"])
def test_token_ttl_must_be_positive(tmp_path: Path, ttl: str) -> None:
    secret = make_secret(tmp_path)
    line = one_line_error(iot_guard(
        "token", "issue", "--agent", "ops-agent", "--secret-file", str(secret), "--ttl", ttl
    ))
    assert "--ttl" in line


def test_a_wrong_type_in_the_config_file_names_file_and_line(tmp_path: Path) -> None:
    secret = make_secret(tmp_path)
    config = tmp_path / "guard.yaml"
    config.write_text(f'policy: {POLICY_DIR}\nsecret_file: {secret}\nupstream_tls: "no"\n')
    line = one_line_error(iot_guard("run", "--config", str(config)))
    assert line == (
        f"iot-guard: {config}:3: upstream_tls: must be true or false (unquoted), not 'no'"
    )


def test_an_environment_variable_is_a_setting_and_is_type_checked(tmp_path: Path) -> None:
    env = {**os.environ, "IOT_GUARD_MAX_PACKET_SIZE": "lots"}
    line = one_line_error(iot_guard(*run_args(tmp_path, "--check-config"), env=env))
    assert line.startswith("iot-guard: IOT_GUARD_MAX_PACKET_SIZE: Input should be a valid")
    env = {**os.environ, "IOT_GUARD_LISTEN": "127.0.0.1:1999", "IOT_GUARD_POLICY": "ignored"}
    ok = iot_guard(*run_args(tmp_path, "--check-config"), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "listen 127.0.0.1:1999" in ok.stdout and f"policy {POLICY_DIR}" in ok.stdout


def test_unknown_command_is_one_line() -> None:
    line = one_line_error(iot_guard("frobnicate"))
    assert "invalid choice: 'frobnicate'" in line and "iot-guard --help" in line


# ----------------------------------------------------------------------------- secrets

def test_token_secret_out_writes_an_owner_only_file_once(tmp_path: Path) -> None:
    path = make_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32
    before = path.read_text()
    line = one_line_error(iot_guard("token", "secret", "--out", str(path)))
    assert "exists" in line and path.read_text() == before  # never overwritten


def test_run_refuses_a_secret_file_others_can_read(tmp_path: Path) -> None:
    path = make_secret(tmp_path)
    path.chmod(0o644)
    args = ["run", "--policy", str(POLICY_DIR), "--secret-file", str(path), "--check-config"]
    line = one_line_error(iot_guard(*args))
    assert "readable by others (mode 0644)" in line and f"chmod o-rwx {path}" in line
    path.chmod(0o640)  # a service group may read it
    assert iot_guard(*args).returncode == 0


# ----------------------------------------------------------------------------- tokens

def test_an_empty_tool_list_is_refused_never_widened(tmp_path: Path) -> None:
    secret = make_secret(tmp_path)
    for tools in ("", " , "):
        line = one_line_error(iot_guard(
            "token", "issue", "--agent", "ops-agent", "--secret-file", str(secret), "--tools",
            tools,
        ))
        assert "--tools names no tool" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--agent", "nobody"], "agent 'nobody' is not in the policy"),
        (["--agent", "ops-agent", "--tools", "no_such_tool"], "no tools ['no_such_tool'] in"),
        (["--agent", "observer", "--tools", "shadow_update"], "has no tools ['shadow_update']"),
        (["--agent", "ops-agent", "--ttl", "86401"], "longer than 86400 s"),
    ],
)
def test_token_issue_checks_agent_tools_and_ttl_against_the_policy(
    tmp_path: Path, args: list[str], words: str
) -> None:
    secret = make_secret(tmp_path)
    line = one_line_error(iot_guard(
        "token", "issue", "--secret-file", str(secret), "--policy", str(POLICY_DIR), *args
    ))
    assert words in line


def test_the_policy_sets_the_longest_token_lifetime(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy)
    agents = policy / "agents.yaml"
    agents.write_text(agents.read_text().replace(
        "  ops-agent:\n", "  ops-agent:\n    max_token_ttl_s: 600\n", 1
    ))
    secret = make_secret(tmp_path)
    issue = ["token", "issue", "--agent", "ops-agent", "--secret-file", str(secret)]
    assert "longer than 600 s" in one_line_error(
        iot_guard(*issue, "--policy", str(policy), "--ttl", "900")
    )
    assert iot_guard(*issue, "--policy", str(policy), "--ttl", "600").returncode == 0
    # Without --policy the default ceiling (24 h) applies.
    assert "longer than 86400 s" in one_line_error(iot_guard(*issue, "--ttl", "90000"))


# ----------------------------------------------------------------------------- policies

def test_run_refuses_a_policy_without_agents(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = iot_guard(
        "run", "--policy", str(tmp_path / "empty"), "--secret-file", str(make_secret(tmp_path))
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no agents in the policy (0 policy file(s) read)" in result.stderr


def test_policy_check_warns_about_a_policy_in_a_sub_folder(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy)
    (policy / "old").mkdir()
    shutil.copy(POLICY_DIR / "agents.yaml", policy / "old" / "agents.yaml")
    result = iot_guard("policy", "check", str(policy))
    assert result.returncode == 0, result.stderr
    assert f"{policy / 'old' / 'agents.yaml'}: warning: not read" in result.stderr


def test_explain_without_payload_says_it_is_missing() -> None:
    result = iot_guard(
        "policy", "explain", str(POLICY_DIR), "--agent", "ops-agent", "--publish",
        "tenants/acme/devices/therm-001/shadow/update",
    )
    assert result.returncode == 1
    assert "payload is missing: tool shadow_update needs a shadow_update payload" in result.stdout
    assert "Expecting value" not in result.stdout


# ----------------------------------------------------------------------------- CLI shape

def test_the_cli_does_not_import_the_simulator() -> None:
    """`simulate` is registered through the iot_guard.commands entry point; importing the
    CLI (and building its parser) never loads the simulator's fleet or devices."""
    code = (
        "import sys; import iot_guard.cli as c; assert 'simulator' not in sys.modules; "
        "p = c.build_parser(); assert 'simulator.fleet' not in sys.modules; "
        "assert 'simulator.device' not in sys.modules; print('simulate' in p.format_help())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_log_format_json(tmp_path: Path) -> None:
    """The console log in JSON: one object per line (here the warning that no upstream
    credentials are set)."""
    result = iot_guard(*run_args(tmp_path, "--check-config", "--log-format", "json"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["level"] for r in records] == ["warning"]
    assert records[0]["message"].startswith("no upstream credentials")


# ----------------------------------------------------------------------------- deployment

def test_the_example_guard_yaml_passes_check_config(tmp_path: Path) -> None:
    """iot_guard/deploy/guard.yaml, with its /etc and /var paths moved under tmp_path."""
    text = (DEPLOY / "guard.yaml").read_text()
    moved = text.replace("/etc/iot-guard/", f"{tmp_path}/etc/").replace(
        "/var/log/iot-guard/", f"{tmp_path}/log/"
    )
    assert moved != text
    (tmp_path / "etc").mkdir()
    shutil.copytree(POLICY_DIR, tmp_path / "etc" / "policy")
    iot_guard("token", "secret", "--out", str(tmp_path / "etc" / "guard.secret"))
    password = tmp_path / "etc" / "upstream.password"
    password.write_text("broker-password\n")
    password.chmod(0o600)
    config = tmp_path / "guard.yaml"
    config.write_text(moved)
    result = iot_guard("run", "--check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok: listen 0.0.0.0:1884, upstream 127.0.0.1:1883")
    assert result.stderr == ""  # credentials set: no warning


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of systemd; install systemd to verify the unit"
    unit = tmp_path / "iot-guard.service"
    # verify resolves ExecStart: point it at this interpreter's iot-guard entry point.
    text = (DEPLOY / "iot-guard.service").read_text()
    exe = shutil.which("iot-guard") or f"{sys.executable} -m iot_guard"
    unit.write_text(text.replace("/usr/local/bin/iot-guard", exe))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [
        line for line in result.stderr.splitlines()
        if str(unit) in line or "iot-guard.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_dockerfile_uses_a_slim_base_and_a_non_root_user() -> None:
    """No Docker engine on this machine: the Dockerfile's shape is checked here, the image
    build is not (see README)."""
    lines = [
        line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    assert froms and all("python:3" in f and "-slim" in f for f in froms)
    users = [line for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1].split()[1] not in ("root", "0")
    assert any(line.startswith("ENTRYPOINT") and "iot-guard" in line for line in lines)
