"""The devices a simulated fleet consists of, derived from the policy's registry.

Both the broker harness (accounts and ACL) and the fleet (virtual devices) read this,
so the broker's lock-down and the devices always agree on names and topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from iot_guard.policy_models import PolicyDocument


@dataclass(frozen=True)
class DeviceSpec:
    """One device: where it lives in the topic tree and which groups it belongs to."""

    tenant: str
    name: str
    type: str
    groups: tuple[str, ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.name)

    @property
    def client_id(self) -> str:
        # The device's MQTT client id (and broker username), e.g. "acme-therm-001".
        return f"{self.tenant}-{self.name}"

    @property
    def base(self) -> str:
        return f"tenants/{self.tenant}/devices/{self.name}"

    def group_topic(self, group: str) -> str:
        return f"tenants/{self.tenant}/groups/{group}/config/push"

    def inbound_filters(self) -> list[str]:
        """The filters a device subscribes to: requests for it, never its own replies."""
        filters = [
            f"{self.base}/shadow/update",
            f"{self.base}/shadow/get",
            f"{self.base}/config/patch",
            f"{self.base}/commands/+",
        ]
        filters.extend(self.group_topic(g) for g in self.groups)
        return filters


def registry_devices(document: PolicyDocument, scale: int = 0) -> list[DeviceSpec]:
    """The policy's devices, plus ``scale - len(registry)`` generated ones if scale is larger.

    Generated devices (``sim-00001`` ...) are spread round-robin over the tenants and take
    the first device type of their tenant; they are not in the policy, so the guard will not
    let an agent reach them: they exist to load the broker and the simulator.
    """
    specs: list[DeviceSpec] = []
    for tenant_name, tenant in document.tenants.items():
        memberships: dict[str, list[str]] = {}
        for group, members in tenant.groups.items():
            for member in members:
                memberships.setdefault(member, []).append(group)
        for device_name, device in tenant.devices.items():
            specs.append(
                DeviceSpec(
                    tenant_name, device_name, device.type, tuple(memberships.get(device_name, ()))
                )
            )
    extra = scale - len(specs)
    if extra > 0:
        tenants = [t for t, tenant in document.tenants.items() if tenant.devices]
        if not tenants:
            raise ValueError("cannot scale a fleet whose policy has no devices")
        for i in range(extra):
            tenant_name = tenants[i % len(tenants)]
            first = next(iter(document.tenants[tenant_name].devices.values()))
            specs.append(DeviceSpec(tenant_name, f"sim-{i + 1:05d}", first.type))
    return specs


def select(specs: Iterable[DeviceSpec], target: str) -> list[DeviceSpec]:
    """Devices matching a target: ``*``, ``TENANT/*`` or ``TENANT/DEVICE``."""
    if target in ("*", ""):
        return list(specs)
    tenant, _, device = target.partition("/")
    return [s for s in specs if s.tenant == tenant and (device in ("", "*") or s.name == device)]
