"""The guard's run settings: one typed model, from flags, environment and a YAML file.

Precedence, highest first: command-line flags, ``IOT_GUARD_<NAME>`` environment variables
(every setting has one, e.g. ``IOT_GUARD_UPSTREAM_TLS=true``), the ``--config`` file, the
defaults below. pydantic-settings reads the environment; the config file is read here so
that its errors name ``file:line`` like the policy's do.

Types are checked, not guessed: in the YAML file a switch must be an unquoted ``true`` or
``false`` (``upstream_tls: "no"`` is an error, never "TLS on"), a port must be a number.
Every problem is reported in one pass, each on one line saying where the value came from
(``--listen``, ``IOT_GUARD_LISTEN`` or ``guard.yaml:3``) and what to write instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "IOT_GUARD_"
# Checks that may run in observe mode (--observe); the kill switch always enforces.
OBSERVABLE_CHECKS = ("rate_limit", "anomaly")
# The largest MQTT packet the Remaining Length can describe [MQTT-2.2.3].
MQTT_MAX_PACKET = 268_435_455


class SettingsError(Exception):
    """The settings cannot be used; ``problems`` are one-line messages."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT`` (``[::1]:1884`` for IPv6); the host is required, the port 0-65535."""
    match = _HOST_PORT.match(text.strip())
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:1884, got {text!r}")
    return HostPort(match["v6"] or match["host"], int(match["port"]))


def _check_host_port(value: object) -> str:
    text = str(value)  # `listen: 1884` in YAML is a number: still say what is missing
    parse_host_port(text)
    return text.strip()


def _names(value: object) -> object:
    """``a,b`` (a flag or an environment variable) or a YAML list: the names, no blanks."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


HostPortText = Annotated[str, BeforeValidator(_check_host_port)]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)
]


# The config file's values while RunSettings.load builds a model (sources are classmethods,
# so this is how the file reaches the source without a global).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("iot_guard_config_file", default=None)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The ``--config`` file's values, below the environment and the flags."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class RunSettings(BaseSettings):
    """Everything ``iot-guard run`` needs. Field names are the config file's keys; flags are
    ``--name-with-dashes``; environment variables ``IOT_GUARD_NAME``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid", validate_default=True
    )

    policy: Path = Field(description="policy directory (its top-level *.yaml files)")
    listen: HostPortText = Field("127.0.0.1:1884", description="HOST:PORT agents connect to")
    upstream: HostPortText = Field("127.0.0.1:1883", description="HOST:PORT of the broker")
    secret_file: Path = Field(
        description="token signing secret (iot-guard token secret --out F); not readable by others"
    )
    upstream_username: str | None = Field(None, min_length=1, description="the broker account")
    upstream_password: SecretStr | None = Field(
        None, description="its password (prefer upstream_password_file)"
    )
    upstream_password_file: Path | None = Field(None, description="file with the password")
    audit_log: Path | None = Field(None, description="audit JSON lines file (default: stderr)")
    audit_key: Path | None = Field(
        None, description="key that signs audit checkpoints (iot-guard audit keygen)"
    )
    audit_checkpoint_records: int = Field(
        1000, ge=1, description="sign a checkpoint every N records"
    )
    audit_checkpoint_seconds: float = Field(
        10.0, gt=0, description="... and every T seconds while records are unsigned"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: agents connect with TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    upstream_tls: bool = Field(False, description="connect to the broker over TLS")
    upstream_ca: Path | None = Field(None, description="CA bundle for the broker's certificate")
    max_packet_size: int = Field(
        256 * 1024, ge=128, le=MQTT_MAX_PACKET, description="largest packet an agent may send"
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds for a CONNECT, and for the broker to be reached "
        "and accept the session (its CONNACK)"
    )
    read_coalesce_ms: float = Field(
        1.0, ge=0, le=100, description="after a broker read of 1 KiB or more, read that "
        "connection again after this many ms or the guard's next write to it (0: at once; "
        "plain TCP only, never with upstream_tls)",
    )
    upstream_check_interval: float = Field(
        30.0, gt=0, description="seconds between checks of the guard's own broker login"
    )
    state: str | None = Field(
        None, description="state store: a directory (SQLite) or redis://...; default: state/ "
        "beside the audit log",
    )
    mode: Literal["enforce", "dry-run"] = Field(
        "enforce", description="dry-run: decide and audit everything, refuse nothing"
    )
    observe: Annotated[list[str], NoDecode, BeforeValidator(_names)] = Field(
        default_factory=list,
        description=f"checks (by name) that only observe: {', '.join(OBSERVABLE_CHECKS)}",
    )
    metrics: HostPortText | None = Field(
        None, description="HOST:PORT of /metrics (Prometheus), /healthz and /readyz"
    )
    admin: HostPortText | None = Field(
        None, description="HOST:PORT of the admin API and approval console (off when unset)"
    )
    log_level: LogLevel = Field("info", description="debug | info | warning | error")
    log_format: Literal["text", "json"] = Field("text", description="console log: text | json")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @field_validator("observe")
    @classmethod
    def _observable(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(OBSERVABLE_CHECKS))
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {list(OBSERVABLE_CHECKS)}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> RunSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.upstream_password is not None and self.upstream_password_file is not None:
            raise ValueError("set upstream_password or upstream_password_file, not both")
        has_password = self.upstream_password is not None or self.upstream_password_file
        if has_password and self.upstream_username is None:
            # MQTT 3.1.1 forbids a password without a user name [MQTT-3.1.2-22].
            raise ValueError("an upstream password needs upstream_username")
        if self.upstream_ca is not None and not self.upstream_tls:
            raise ValueError("upstream_ca is set but upstream_tls is false: set upstream_tls")
        return self

    @property
    def listen_address(self) -> HostPort:
        return parse_host_port(self.listen)

    @property
    def upstream_address(self) -> HostPort:
        return parse_host_port(self.upstream)

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        config_file: Path | str | None = None,
    ) -> RunSettings:
        """Merge the three sources; raise :class:`SettingsError` with every problem at once.

        ``flags``: what the command line gave (None values are "not given"). The environment
        is ``os.environ``, read by pydantic-settings.
        """
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        env = dict(os.environ)
        file_values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        problems: list[str] = []
        if config_file is not None:
            file_values, lines, problems = read_config_file(Path(config_file))
        shown = str(config_file)
        token = _FILE_VALUES.set(file_values)
        try:
            settings = cls(**given)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                problems.append(_describe(error, given, env, shown, lines))
            raise SettingsError(problems) from None
        finally:
            _FILE_VALUES.reset(token)
        if problems:
            raise SettingsError(problems)
        return settings


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """``IOT_GUARD_*`` variables that name no setting (a typo silently does nothing)."""
    known = {env_name(name) for name in RunSettings.model_fields}
    return sorted(
        k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "value_error":
        # pydantic prefixes "Value error, "; the operator needs our sentence only.
        return str(error["ctx"]["error"])
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "is not a setting"
    if error["type"] == "path_type":
        return f"must be a path, not {error['input']!r}"
    return str(error["msg"])


def _describe(
    error: Mapping[str, Any], flags: Mapping[str, Any], env: Mapping[str, str], shown: str,
    lines: Mapping[str, int],
) -> str:
    """One line: where the bad value came from, the setting, what is wrong."""
    loc = error["loc"]
    name = str(loc[0]) if loc else ""
    message = _message(error)
    if not name:  # a whole-model rule (two settings that contradict each other)
        return message
    if error["type"] == "missing":
        return (
            f"{name} is required: give {flag_name(name)}, set {env_name(name)} "
            f"or put `{name}:` in the --config file"
        )
    upper = {k.upper(): k for k in env}
    if name in flags:
        return f"{flag_name(name)}: {message}"
    if env_name(name) in upper:
        return f"{upper[env_name(name)]}: {message}"
    if name in lines:
        return f"{shown}:{lines[name]}: {name}: {message}"
    return f"{name}: {message}"


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """The file's settings, the line of each key, and the problems found (file:line each).

    A file that cannot be read or parsed raises :class:`SettingsError` at once: nothing
    else can be said about its settings.

    Keys may use dashes or underscores. A switch must be a YAML boolean and a number a YAML
    number: a quoted "no" or "1884" is refused here, where it still has a line number.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError([f"{path}: cannot read the config file: {reason}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SettingsError([f"{path}{line}: YAML syntax error: {exc.problem}"]) from None
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise SettingsError([f"{path}:1: the config file must be a mapping of setting: value"])
    lines = {
        str(key.value).replace("-", "_"): key.start_mark.line + 1 for key, _ in node.value
    }
    values: dict[str, Any] = {}
    problems: list[str] = []
    fields = RunSettings.model_fields
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        where = f"{path}:{lines.get(key, 1)}"
        if key not in fields:
            close = [n for n in fields if n.startswith(key[:4])]
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: {raw_key}: is not a setting{hint}")
            continue
        annotation = fields[key].annotation
        if annotation is bool and not isinstance(value, bool):
            problems.append(
                f"{where}: {key}: must be true or false (unquoted), not {value!r}"
            )
            continue
        if annotation in (int, float) and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            problems.append(f"{where}: {key}: must be a number, not {value!r}")
            continue
        if value is None:
            continue  # `key:` with nothing: the default
        values[key] = value
    return values, lines, problems
