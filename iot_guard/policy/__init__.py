"""The operator's policy: models, loader with file:line errors, compiled index, decisions.

Names are imported on first use: ``iot_guard.payloads`` imports ``policy.models`` and
``policy.compiler`` imports ``iot_guard.payloads``, so an eager package import would be
circular.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compiler import AgentPolicy, CompiledPolicy, compile_policy
    from .decision import Decision, Verdict
    from .loader import PolicyError, PolicySource, load_policy, load_policy_source
    from .models import PolicyDocument
    from .schema import policy_json_schema

_WHERE = {
    "AgentPolicy": "compiler",
    "CompiledPolicy": "compiler",
    "compile_policy": "compiler",
    "Decision": "decision",
    "Verdict": "decision",
    "PolicyError": "loader",
    "PolicySource": "loader",
    "load_policy": "loader",
    "load_policy_source": "loader",
    "PolicyDocument": "models",
    "policy_json_schema": "schema",
}

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
    "policy_json_schema",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
