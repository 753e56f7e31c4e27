"""What the policy says about a held action, frozen into its request (pure).

- ``policy_version``: a hash of the compiled policy; an approval is void if it changed.
- ``devices_reached``: the devices a topic reaches (a device, or every member of a group),
  as "tenant/device", in the registry's order; void if it changed before execution.
- ``changes``: the change as approvers read it: field, current value (when the guard knows
  it; it does not track device state, so null), proposed value, the field's risk.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy_models import PolicyDocument


def policy_version(policy: CompiledPolicy) -> str:
    """The compiled policy's version (the policy lane's hash), or a hash of its document."""
    version = getattr(policy, "version", None)
    if isinstance(version, str) and version:
        return version
    cached = getattr(policy, "_approvals_version", None)
    if cached is None:
        text = policy.document.model_dump_json()
        cached = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        policy._approvals_version = cached  # type: ignore[attr-defined]
    return str(cached)


def devices_reached(
    policy: CompiledPolicy, agent_id: str, topic: str, resource: str | None
) -> tuple[str, ...]:
    """Every device ``topic`` reaches for ``agent_id`` ("tenant/device"), frozen in order."""
    agent = policy.for_agent(agent_id)
    reached = getattr(agent, "devices_reached", None) if agent is not None else None
    if callable(reached):
        return tuple(reached(topic))
    return _from_resource(policy.document, resource)


def _from_resource(document: PolicyDocument, resource: str | None) -> tuple[str, ...]:
    # A decision's resource is "tenant/device" or "tenant/groups/group".
    if not resource:
        return ()
    parts = resource.split("/")
    tenant = document.tenants.get(parts[0])
    if tenant is None:
        return ()
    if len(parts) == 2 and parts[1] in tenant.devices:
        return (resource,)
    if len(parts) == 3 and parts[1] == "groups":
        return tuple(f"{parts[0]}/{m}" for m in tenant.groups.get(parts[2], ()))
    return ()


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
