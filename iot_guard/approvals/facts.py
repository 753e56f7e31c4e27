"""What the policy says about a held action, frozen into its request (pure).

- ``policy_version``: a hash of the compiled policy; an approval is void if it changed.
- ``devices_reached``: the devices a topic reaches (a device, or every member of a group),
  as "tenant/device", in the registry's order; void if it changed before execution.
- ``changes``: the change as approvers read it: field, current value (when the guard knows
  it; it does not track device state, so null), proposed value, the field's risk.
"""

from __future__ import annotations

import json
from typing import Any

from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy_models import PolicyDocument


def policy_version(policy: CompiledPolicy) -> str:
    """The compiled policy's version (a hash of its files): an approval is bound to it."""
    return policy.version


def devices_reached(policy: CompiledPolicy, agent_id: str, topic: str) -> tuple[str, ...]:
    """Every device ``topic`` reaches for ``agent_id`` ("tenant/device"), frozen in order."""
    agent = policy.for_agent(agent_id)
    return tuple(agent.devices_reached(topic)) if agent is not None else ()


def changes(
    document: PolicyDocument, tool: str | None, devices: tuple[str, ...], payload: bytes
) -> list[dict[str, Any]]:
    """The fields a config patch or shadow update proposes, each with its risk."""
    spec = document.tools.get(tool) if tool else None
    if spec is None or spec.payload not in ("config_patch", "shadow_update"):
        return []
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict):
        return []
    if spec.payload == "shadow_update":
        state = doc.get("state")
        doc = state.get("desired") if isinstance(state, dict) else None
        if not isinstance(doc, dict):
            return []
    fields: dict[str, str] = {}
    for device in devices:
        tenant, _, name = device.partition("/")
        entry = document.tenants.get(tenant)
        dev = entry.devices.get(name) if entry else None
        dtype = document.device_types.get(dev.type) if dev else None
        if dtype is not None:
            fields.update({k: v.risk for k, v in dtype.config.items()})
    return [
        {"field": key, "current": None, "proposed": value, "risk": fields.get(key, "low")}
        for key, value in doc.items()
        if key != "clientToken"
    ]
