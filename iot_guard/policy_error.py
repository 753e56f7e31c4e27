"""The error a policy that cannot be loaded raises: a leaf module, so the CLI can catch
it without importing the policy stack (pydantic models, jsonschema) for every command."""

from __future__ import annotations


class PolicyError(Exception):
    """The policy cannot be loaded; ``problems`` are 'file:line: path: message' strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
