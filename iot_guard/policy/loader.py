"""Load a policy directory (every *.yaml / *.yml file) into a PolicyDocument.

Minimal version: merges the sections of every file. File:line error reporting is
added on top of this by the policy work.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .models import PolicyDocument

SECTIONS = ("device_types", "tenants", "tools", "agents")


class PolicyError(Exception):
    """The policy cannot be loaded; ``problems`` are 'file:line: message' strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def policy_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in Path(directory).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
    )


def load_policy(directory: Path | str) -> PolicyDocument:
    merged: dict[str, dict] = {name: {} for name in SECTIONS}
    files = policy_files(Path(directory))
    if not files:
        raise PolicyError([f"{directory}: no policy files (*.yaml) found"])
    for path in files:
        data = yaml.safe_load(path.read_text()) or {}
        for section, entries in data.items():
            merged[section].update(entries or {})
    document = PolicyDocument.model_validate(merged)
    problems = document.reference_problems()
    if problems:
        raise PolicyError([f"{'.'.join(map(str, p))}: {m}" for p, m in problems])
    return document
