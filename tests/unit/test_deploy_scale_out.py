"""The scale-out deployment example stays true to the guard: every flag and setting it
gives ``iot-guard run`` exists, and the load balancer fronts exactly the guards it runs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from iot_guard.settings import ENV_PREFIX, RunSettings

DEPLOY = Path(__file__).parents[2] / "iot_guard" / "deploy" / "scale-out"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def guards() -> dict[str, dict]:
    services = compose()["services"]
    return {name: s for name, s in services.items() if s.get("command", [None])[0] == "run"}


def test_every_guard_flag_and_variable_is_a_run_setting() -> None:
    known = set(RunSettings.model_fields)
    assert len(guards()) >= 2
    for name, service in guards().items():
        for arg in service["command"][1:]:
            flag = arg.split("=", 1)[0]
            assert flag.startswith("--"), (name, arg)
            assert flag[2:].replace("-", "_") in known, f"{name}: {flag} is not a run setting"
        for variable in service.get("environment", {}):
            assert variable.startswith(ENV_PREFIX)
            assert variable[len(ENV_PREFIX):].lower() in known, f"{name}: {variable}"
        state = next(a for a in service["command"] if a.startswith("--state="))
        assert state.startswith("--state=redis://")  # they share one Redis


def test_haproxy_fronts_exactly_the_guards_with_readiness_checks() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = set(re.findall(r"^\s*server\s+(\S+)\s+\1:1884", text, re.M))
    assert servers == set(guards())
    assert "option httpchk GET /readyz" in text and "balance leastconn" in text
