"""Helpers for tests of policy files: the loader's problems, and the line a test expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_guard.policy.loader import PolicyError, load_policy_source


def problems_of(directory: Path) -> list[str]:
    """The problems the loader reports for ``directory`` (it must refuse it)."""
    with pytest.raises(PolicyError) as info:
        load_policy_source(directory)
    return info.value.problems


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing needle (the tests' expected lines)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")
