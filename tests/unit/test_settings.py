"""The run settings: one typed model from flags, IOT_GUARD_* variables and a YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_guard.settings import (
    HostPort,
    RunSettings,
    SettingsError,
    parse_host_port,
    unknown_env,
)

BASE = {"policy": "device_policies", "secret_file": "guard.secret"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("IOT_GUARD_"):
            monkeypatch.delenv(name)


def problems(flags: dict[str, object] | None = None, config: Path | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        RunSettings.load(flags, config)
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "guard.yaml"
    path.write_text(text)
    return path


def test_defaults_and_types() -> None:
    settings = RunSettings.load(BASE)
    assert settings.listen_address == HostPort("127.0.0.1", 1884)
    assert settings.upstream_address == HostPort("127.0.0.1", 1883)
    assert settings.policy == Path("device_policies")
    assert settings.upstream_tls is False and settings.max_packet_size == 256 * 1024
    assert (settings.log_level, settings.log_format) == ("info", "text")


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        "policy: from-file\nsecret_file: s\nlisten: 127.0.0.1:1000\nupstream: 10.0.0.1:1883\n"
        "audit-log: /var/log/a.jsonl\n",
    )
    monkeypatch.setenv("IOT_GUARD_LISTEN", "127.0.0.1:2000")
    monkeypatch.setenv("iot_guard_upstream", "10.0.0.2:1883")  # names are case-insensitive
    settings = RunSettings.load({"listen": "127.0.0.1:3000", "policy": None}, config)
    assert settings.listen == "127.0.0.1:3000"  # flag
    assert settings.upstream == "10.0.0.2:1883"  # environment over file
    assert settings.policy == Path("from-file")  # a flag not given does not hide the file
    assert settings.audit_log == Path("/var/log/a.jsonl")  # dashes or underscores in keys


def test_every_setting_has_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_GUARD_POLICY", "p")
    monkeypatch.setenv("IOT_GUARD_SECRET_FILE", "s")
    monkeypatch.setenv("IOT_GUARD_UPSTREAM_TLS", "true")
    monkeypatch.setenv("IOT_GUARD_MAX_PACKET_SIZE", "4096")
    monkeypatch.setenv("IOT_GUARD_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("IOT_GUARD_LOG_FORMAT", "json")
    monkeypatch.setenv("IOT_GUARD_UPSTREAM_USERNAME", "iot-guard")
    monkeypatch.setenv("IOT_GUARD_UPSTREAM_PASSWORD", "pw")
    settings = RunSettings.load({})
    assert settings.upstream_tls is True and settings.max_packet_size == 4096
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    assert settings.upstream_password is not None
    assert settings.upstream_password.get_secret_value() == "pw"
    assert "pw" not in repr(settings)  # a secret never shows in logs or errors


def test_a_quoted_no_is_not_true(tmp_path: Path) -> None:
    """Before: `upstream_tls: "no"` turned TLS on (bool("no") is True)."""
    config = write(tmp_path, 'policy: p\nsecret_file: s\nupstream_tls: "no"\n')
    assert problems(None, config) == [
        f"{config}:3: upstream_tls: must be true or false (unquoted), not 'no'"
    ]


def test_every_file_problem_in_one_pass_with_file_and_line(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "policy: p\nsecret_file: s\nlisten: 1884\nmax_packet_size: '4096'\n"
        "upstrem: 127.0.0.1:1883\nlog_level: loud\n",
    )
    found = problems(None, config)
    assert f"{config}:3: listen: expected HOST:PORT such as 127.0.0.1:1884, got '1884'" in found
    assert f"{config}:4: max_packet_size: must be a number, not '4096'" in found
    assert f"{config}:5: upstrem: is not a setting (did you mean upstream?)" in found
    assert any(p.startswith(f"{config}:6: log_level: Input should be 'debug'") for p in found)
    assert len(found) == 4
    assert not any("Value error" in p for p in found)


def test_errors_name_the_flag_or_variable_that_gave_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOT_GUARD_UPSTREAM_TLS", "maybe")
    found = problems({**BASE, "listen": "1884"})
    assert "--listen: expected HOST:PORT such as 127.0.0.1:1884, got '1884'" in found
    assert any(p.startswith("IOT_GUARD_UPSTREAM_TLS: Input should be a valid bool") for p in found)


def test_missing_settings_say_every_way_to_give_them() -> None:
    assert problems({}) == [
        "policy is required: give --policy, set IOT_GUARD_POLICY or put `policy:` in the "
        "--config file",
        "secret_file is required: give --secret-file, set IOT_GUARD_SECRET_FILE or put "
        "`secret_file:` in the --config file",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"upstream_password_file": "pw"}, "an upstream password needs upstream_username"),
        ({"upstream_ca": "ca.pem"}, "upstream_ca is set but upstream_tls is false"),
        ({"max_packet_size": 10}, "--max-packet-size: Input should be greater than or equal"),
        ({"connect_timeout": 0}, "--connect-timeout: Input should be greater than 0"),
        ({"read_coalesce_ms": -1}, "--read-coalesce-ms: Input should be greater than or equal"),
        ({"read_coalesce_ms": 500}, "--read-coalesce-ms: Input should be less than or equal"),
    ],
)
def test_settings_that_contradict_or_are_out_of_range(
    extra: dict[str, object], message: str
) -> None:
    found = problems({**BASE, **extra})
    assert len(found) == 1 and message in found[0], found


def test_config_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    assert problems(None, write(tmp_path, "- a\n- b\n")) == [
        f"{tmp_path / 'guard.yaml'}:1: the config file must be a mapping of setting: value"
    ]
    bad = write(tmp_path, "policy: [unclosed\n")
    assert problems(None, bad)[0].startswith(f"{bad}:2: YAML syntax error")
    missing = tmp_path / "nope.yaml"
    assert problems(None, missing) == [
        f"{missing}: cannot read the config file: No such file or directory"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1884", HostPort("127.0.0.1", 1884)),
        ("broker.example:8883", HostPort("broker.example", 8883)),
        ("[::1]:1884", HostPort("::1", 1884)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
    ],
)
def test_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["1884", ":1884", "host:", "host:65536", "host:port", "::1:1884"])
def test_host_port_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_host_port(text)


def test_unknown_environment_variables_are_found() -> None:
    environ = {"IOT_GUARD_UPSTREAM_PASWORD": "x", "IOT_GUARD_LISTEN": "h:1", "HOME": "/root"}
    assert unknown_env(environ) == ["IOT_GUARD_UPSTREAM_PASWORD"]


def test_state_mode_and_observed_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_GUARD_OBSERVE", "rate_limit, anomaly")
    settings = RunSettings.load({**BASE, "mode": "dry-run", "state": "redis://127.0.0.1/0"})
    assert settings.mode == "dry-run" and settings.state == "redis://127.0.0.1/0"
    assert settings.observe == ["rate_limit", "anomaly"]
    monkeypatch.delenv("IOT_GUARD_OBSERVE")
    assert RunSettings.load(BASE).observe == [] and RunSettings.load(BASE).mode == "enforce"
    found = problems({**BASE, "mode": "relaxed"})
    assert len(found) == 1 and found[0].startswith("--mode: Input should be 'enforce' or 'dry-run'")
