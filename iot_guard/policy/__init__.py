"""The operator's policy: loader with file:line errors, compiled index, decisions.

The models of the YAML format live in the leaf module ``iot_guard.policy_models``,
which both this package and ``iot_guard.payloads`` import: no import cycle, so the
names below are plain imports.
"""

from __future__ import annotations

from ..policy_models import PolicyDocument
from .compiler import AgentPolicy, CompiledPolicy, compile_policy
from .decision import Decision, Verdict
from .loader import PolicyError, PolicySource, load_policy, load_policy_source

__all__ = [
    "AgentPolicy",
    "CompiledPolicy",
    "Decision",
    "PolicyDocument",
    "PolicyError",
    "PolicySource",
    "Verdict",
    "compile_policy",
    "load_policy",
    "load_policy_source",
]
