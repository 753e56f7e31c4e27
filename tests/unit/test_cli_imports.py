"""Every ``iot-guard`` command pays for what the CLI imports to build its parser: the
policy stack (compiled policy, jsonschema) and the admin server (aiohttp) load only in
the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "jsonschema", "iot_guard.policy", "iot_guard.policy.compiler",
         "iot_guard.payloads")

PROBE = f"""
import json, sys
from iot_guard.cli import build_parser
build_parser().parse_args(["token", "issue", "--agent", "a", "--secret-file", "s"])
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


def test_the_parser_loads_without_the_policy_stack_or_the_admin_server() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout) == []
