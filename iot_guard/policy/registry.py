"""The fleet registry as sets and dicts, and an agent's view of it (its scope).

Every check a topic variable needs is one set or dict lookup here, so a decision
touches a handful of entries however many tenants and devices the fleet has.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..policy_models import PolicyDocument

# Binding of a variable under a '+' in a subscription filter: "every registered name
# here". '+' can never be a registry name, so it cannot collide with a real one.
WILD = "+"

# Topic template variables and their binding slots.
VARIABLES = {"tenant": 0, "device": 1, "group": 2, "command": 3}
TENANT, DEVICE, GROUP, COMMAND = 0, 1, 2, 3

Bindings = tuple[str | None, str | None, str | None, str | None]  # tenant, device, group, command
NO_BINDINGS: Bindings = (None, None, None, None)


def bind(b: Bindings, slot: int, value: str) -> Bindings:
    as_list = list(b)
    as_list[slot] = value
    return (as_list[0], as_list[1], as_list[2], as_list[3])


def resource_of(b: Bindings) -> str | None:
    """How a decision names what it touches: "acme/therm-001", "acme/groups/floor-1"."""
    tenant, device, group = b[0], b[1], b[2]
    if tenant is None:
        return None
    if device is not None:
        return f"{tenant}/{device}"
    if group is not None:
        return f"{tenant}/groups/{group}"
    return tenant


@dataclass(slots=True)
class TenantIndex:
    devices: dict[str, str]  # device -> device type
    groups: dict[str, tuple[str, ...]]  # group -> distinct device types of its members
    members: dict[str, tuple[str, ...]]  # group -> its registered member devices, in order
    commands: frozenset[str]  # every command of any of its device types


class Registry:
    """The fleet registry of one policy, indexed once."""

    def __init__(self, document: PolicyDocument):
        self.commands_by_type: dict[str, frozenset[str]] = {
            name: frozenset(dt.commands) for name, dt in document.device_types.items()
        }
        self.tenants: dict[str, TenantIndex] = {}
        self.device_names: set[str] = set()
        self.group_names: set[str] = set()
        all_commands: set[str] = set()
        for name, tenant in document.tenants.items():
            devices = {d: dev.type for d, dev in tenant.devices.items()}
            members = {
                g: tuple(dict.fromkeys(m for m in names if m in devices))
                for g, names in tenant.groups.items()
            }
            groups = {g: tuple(sorted({devices[m] for m in ms})) for g, ms in members.items()}
            commands = frozenset(
                c for t in set(devices.values()) for c in self.commands_by_type.get(t, ())
            )
            self.tenants[name] = TenantIndex(devices, groups, members, commands)
            self.device_names.update(devices)
            self.group_names.update(groups)
            all_commands |= commands
        self.all_tenants = frozenset(self.tenants)
        self.all_commands = frozenset(all_commands)

    def commands_under(self, b: Bindings) -> frozenset[str]:
        """Every registered command a topic with these tenant/device bindings can name."""
        tenant, device = b[TENANT], b[DEVICE]
        if tenant is None or tenant == WILD:
            if device is None or device == WILD:
                return self.all_commands
            return frozenset(
                c
                for t in self.tenants.values()
                if device in t.devices
                for c in self.commands_by_type.get(t.devices[device], ())
            )
        t = self.tenants[tenant]
        if device is None or device == WILD:
            return t.commands
        return self.commands_by_type.get(t.devices[device], frozenset())

    def device_types(self, b: Bindings) -> tuple[str, ...]:
        """The device types a concrete topic's bindings reach (a group: its members')."""
        name, device, group = b[TENANT], b[DEVICE], b[GROUP]
        tenant = self.tenants.get(name) if name is not None else None
        if tenant is None:
            return ()
        if device is not None:
            return (tenant.devices[device],)
        if group is not None:
            return tenant.groups[group]
        return ()

    def devices_reached(self, b: Bindings) -> tuple[str, ...]:
        """"tenant/device" of every device a concrete topic reaches: the device it names,
        or the members of the group it names; () when it names neither."""
        name, device, group = b[TENANT], b[DEVICE], b[GROUP]
        tenant = self.tenants.get(name) if name is not None else None
        if tenant is None:
            return ()
        if device is not None:
            return (f"{name}/{device}",)
        if group is not None:
            return tuple(f"{name}/{m}" for m in tenant.members[group])
        return ()

    def reach(self, b: Bindings) -> int:
        """How many devices a concrete topic reaches (a group push: its group's size)."""
        name, device, group = b[TENANT], b[DEVICE], b[GROUP]
        if device is not None:
            return 1
        tenant = self.tenants.get(name) if name is not None else None
        if tenant is not None and group is not None:
            return len(tenant.members[group])
        return 0


class Scope:
    """What one agent's variables may stand for: its tenants, then the registry under them."""

    __slots__ = ("registry", "tenants", "own", "all_tenants", "_shown")

    def __init__(self, registry: Registry, tenants: frozenset[str]):
        self.registry = registry
        self.tenants = tenants
        # The agent's tenants' indexes: one small dict answers "is it mine" and "its
        # devices" (the registry's dict holds every tenant of the fleet).
        self.own: dict[str, TenantIndex] = {
            t: registry.tenants[t] for t in tenants if t in registry.tenants
        }
        # A '+' at the {tenant} level covers every registered tenant only if the agent
        # has them all; decided once here, not per subscription.
        self.all_tenants = bool(registry.all_tenants) and registry.all_tenants <= tenants
        self._shown: str | None = None

    def shown(self) -> str:
        """The agent's tenants as a refusal names them (sorted once, on first refusal)."""
        if self._shown is None:
            from .wording import names  # (wording imports this module)

            self._shown = names(self.tenants)
        return self._shown

    def accepts(self, slot: int, value: str, b: Bindings) -> bool:
        """May ``value`` stand for the variable in ``slot`` given earlier bindings?"""
        reg = self.registry
        if slot == TENANT:
            return value in self.tenants
        tenant = b[TENANT]
        if slot in (DEVICE, GROUP):
            if tenant == WILD:
                return value in (reg.device_names if slot == DEVICE else reg.group_names)
            t = reg.tenants.get(tenant) if tenant is not None else None
            return t is not None and value in (t.devices if slot == DEVICE else t.groups)
        if tenant is None or b[DEVICE] is None:
            return False
        return value in reg.commands_under(b)

    def full(self, slot: int) -> bool:
        """Does the agent's domain of this variable hold every registered name there?"""
        # Devices, groups and commands of a tenant the agent has all belong to it;
        # only the tenant level can be narrower than the registry.
        return slot != TENANT or self.all_tenants
