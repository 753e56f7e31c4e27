"""The guard raises its open-files limit at start: two sockets per session."""

from __future__ import annotations

import resource
import secrets
from pathlib import Path

from iot_guard.proxy.limits import raise_open_files_limit
from iot_guard.proxy.server import GuardConfig, GuardThread

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def lower_soft_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    return hard


def test_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = lower_soft_limit()
    assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_the_guard_raises_it_when_it_starts(tmp_path: Path) -> None:
    hard = lower_soft_limit()
    config = GuardConfig(POLICY_DIR, secret=secrets.token_bytes(32), listen_port=0,
                         audit_path=tmp_path / "audit.jsonl")
    with GuardThread(config):
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
