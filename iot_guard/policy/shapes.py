"""An agent's topic templates indexed by shape: the first packet on a topic is a lookup.

A concrete topic can only match templates with as many levels as it has, and (for a
template whose last level is a literal, e.g. ``.../telemetry``) the same last level. So
each agent's wildcard-free templates are indexed once, at CONNECT, by last level (a
str key: cheaper to look up than a (count, last) tuple), each template then comparing
its level count: a decision about a topic the session has not seen before is a split,
one dict lookup and a check of the one or two templates found (their level count and
literal levels, then each variable against the registry), instead of a walk over trie
nodes. A refusal knows which variable refused without a second walk.

The answers are the trie's (``trie.match``, which stays the engine for templates with
'+' or '#'): the same templates, in tool order, with the same variable rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

from .registry import (
    COMMAND,
    DEVICE,
    GROUP,
    NO_BINDINGS,
    TENANT,
    Bindings,
    Registry,
    Scope,
    bind,
)
from .trie import End, end_ok

Miss = tuple[End, int, str, Bindings]

# What ``match`` answers when no template matches: one empty list, never appended to
# (``match`` makes a list of its own for a topic that matches), so a refusal builds none.
_NONE: list[tuple[End, Bindings]] = []


class Shape:
    """One template: its literal levels to compare and its variables to look up."""

    __slots__ = (
        "end", "levels", "count", "literals", "variables", "check_end", "lit_get", "lit_want",
        "td",
    )

    def __init__(self, end: End, levels: list[str], skip_last: bool):
        self.end = end
        self.levels = levels
        self.count = len(levels)
        # Only a tool with a command list has a condition beyond the variables.
        self.check_end = end.uses_command and end.commands is not None
        last = len(levels) - 1
        self.literals = tuple(
            (i, level)
            for i, level in enumerate(levels)
            if not level.startswith("{") and not (skip_last and i == last)
        )
        slots = {"tenant": TENANT, "device": DEVICE, "group": GROUP, "command": COMMAND}
        self.variables = tuple(
            (i, slots[level[1:-1]]) for i, level in enumerate(levels) if level.startswith("{")
        )
        # The literal levels compared in one C call (itemgetter gives a scalar for one).
        positions = tuple(i for i, _ in self.literals)
        wanted = tuple(level for _, level in self.literals)
        self.lit_get = itemgetter(*positions) if positions else None
        self.lit_want: object = wanted[0] if len(wanted) == 1 else wanted
        # Most templates bind {tenant} then {device}: that case has its own short path.
        kinds = tuple(slot for _, slot in self.variables)
        self.td = (
            (self.variables[0][0], self.variables[1][0]) if kinds == (TENANT, DEVICE) else None
        )


class ShapeIndex:
    """The wildcard-free templates of one agent's publish or subscribe tools."""

    __slots__ = ("_by_last", "_by_count", "_all")

    def __init__(self, templates: list[tuple[list[str], End]]):
        by_last: dict[str, list[Shape]] = {}  # templates ending in a literal, by it
        by_count: dict[int, list[Shape]] = {}  # templates ending in a variable
        everything: list[Shape] = []
        for levels, end in templates:
            n, last = len(levels), levels[-1]
            if last.startswith("{"):
                shape = Shape(end, levels, False)
                by_count.setdefault(n, []).append(shape)
            else:
                shape = Shape(end, levels, True)
                by_last.setdefault(last, []).append(shape)
            everything.append(shape)
        everything.sort(key=lambda s: s.end.order)
        self._all = tuple(everything)
        # A topic's candidates: the templates ending in its last level and those ending
        # in a variable, merged once here in tool order (a stable sort keeps template
        # order); ``match`` skips those of another level count.
        ending_in_variable = [shape for n in by_count for shape in by_count[n]]
        for shapes in by_last.values():
            shapes.extend(ending_in_variable)
            shapes.sort(key=lambda s: s.end.order)
        for shapes in by_count.values():
            shapes.sort(key=lambda s: s.end.order)
        self._by_last = {key: tuple(shapes) for key, shapes in by_last.items()}
        self._by_count = {key: tuple(shapes) for key, shapes in by_count.items()}

    def enumerate(
        self, scope: Scope, limit: int
    ) -> dict[str, list[tuple[End, Bindings]]] | None:
        """Every concrete topic these templates match for this scope, with its matches in
        tool order (what ``match`` answers for it); None past ``limit`` topics."""
        out: dict[str, list[tuple[End, Bindings]]] = {}
        registry = scope.registry
        for shape in self._all:
            # Bindings level by level: a device or group ranges over its tenant's names,
            # a command over its device type's.
            partial: list[tuple[list[str], Bindings]] = [(list(shape.levels), NO_BINDINGS)]
            for i, slot in shape.variables:
                grown: list[tuple[list[str], Bindings]] = []
                for levels, b in partial:
                    for value in _domain(scope, registry, slot, b):
                        named = levels.copy()
                        named[i] = value
                        grown.append((named, bind(b, slot, value)))
                        if len(grown) > limit:
                            return None
                partial = grown
            for levels, b in partial:
                if shape.check_end and not end_ok(shape.end, b, scope):
                    continue
                out.setdefault("/".join(levels), []).append((shape.end, b))
            if len(out) > limit:
                return None
        return out

    def match(
        self, levels: list[str], scope: Scope, first_only: bool = False
    ) -> tuple[list[tuple[End, Bindings]], Miss | None]:
        """The templates ``levels`` matches in tool order, and when none does, the first
        refusal (template, variable slot or -1 for a command list, value, bindings)."""
        n = len(levels)
        shapes = self._by_last.get(levels[-1])
        if shapes is None:
            shapes = self._by_count.get(n, ())
        found: list[tuple[End, Bindings]] = _NONE  # a list of its own once one matches
        refused: Miss | None = None
        own = scope.own
        for shape in shapes:
            if shape.count != n:
                continue
            get = shape.lit_get
            if get is not None and get(levels) != shape.lit_want:
                continue
            td = shape.td
            if td is not None:
                tenant = levels[td[0]]
                index = own.get(tenant)
                if index is None:
                    if refused is None:
                        refused = (shape.end, TENANT, tenant, NO_BINDINGS)
                    continue
                device = levels[td[1]]
                if device not in index.devices:
                    if refused is None:
                        refused = (shape.end, DEVICE, device, (tenant, None, None, None))
                    continue
                b: Bindings = (tenant, device, None, None)
            else:
                b, why, value = _bind(shape, levels, scope)
                if why >= 0:
                    if refused is None:
                        refused = (shape.end, why, value, b)
                    continue
            if shape.check_end and not end_ok(shape.end, b, scope):
                if refused is None:
                    refused = (shape.end, -1, "", b)
                continue
            if first_only:
                return [(shape.end, b)], None
            if found is _NONE:
                found = []
            found.append((shape.end, b))
        return found, refused


def _bind(shape: Shape, levels: list[str], scope: Scope) -> tuple[Bindings, int, str]:
    """The bindings of any template's variables, or the slot and value that refused
    (slot -1: none refused)."""
    registry = scope.registry
    tenant = device = group = command = None
    index = None
    for i, slot in shape.variables:
        value = levels[i]
        if slot == TENANT:
            index = scope.own.get(value)
            if index is None:
                return (tenant, device, group, command), slot, value
            tenant = value
        elif slot == DEVICE:
            if index is None or value not in index.devices:
                return (tenant, device, group, command), slot, value
            device = value
        elif slot == GROUP:
            if index is None or value not in index.groups:
                return (tenant, device, group, command), slot, value
            group = value
        else:
            if tenant is None or device is None or value not in (
                registry.commands_under((tenant, device, group, None))
            ):
                return (tenant, device, group, command), slot, value
            command = value
    return (tenant, device, group, command), -1, ""


def _domain(scope: Scope, registry: Registry, slot: int, b: Bindings) -> Iterable[str]:
    if slot == TENANT:
        return scope.own
    tenant = b[TENANT]
    index = scope.own.get(tenant) if tenant is not None else None
    if index is None:
        return ()
    if slot == DEVICE:
        return index.devices
    if slot == GROUP:
        return index.groups
    return registry.commands_under(b) if b[DEVICE] is not None else ()
