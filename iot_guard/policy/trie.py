"""A trie over topic levels, built from one agent's tool templates, and its walks.

A node maps a literal level to a child (one dict lookup), holds the variable children
(``{tenant}``, ``{device}``, ``{group}``, ``{command}``), a ``+`` child and ``#``
terminals, and the templates that end there. A variable stands for exactly one level
and only for registry names (``Scope.accepts``), so a walk touches a handful of nodes
however large the fleet is. Subscription coverage (filters with wildcards) is in
``coverage.py``; this module answers for concrete topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .registry import COMMAND, NO_BINDINGS, VARIABLES, WILD, Bindings, Scope, bind

if TYPE_CHECKING:
    from iot_guard.payloads import FreeFormValidator


@dataclass(slots=True, eq=False)
class End:
    """A template that ends at a trie node, with its tool's compiled facts."""

    order: int  # position of the tool in the agent's list: earlier wins
    tool: str
    rule: str
    payload: str
    risk: str
    max_qos: int
    retain: bool
    shared: bool
    approval_above: str | None
    commands: frozenset[str] | None  # None: every command of the device's type
    uses_command: bool
    # Blast radius: above this many devices reached, the risk goes up one class.
    approval_above_devices: int | None = None
    radius_rule: str | None = None  # where approval_above_devices is written
    free: FreeFormValidator | None = None  # payload kinds any / json / json_schema
    allowed_reason: str = ""  # "allowed by tool X", built once

    def __post_init__(self) -> None:
        self.allowed_reason = f"allowed by tool {self.tool}"


@dataclass(slots=True, eq=False)
class Node:
    literals: dict[str, Node] = field(default_factory=dict)
    variables: list[tuple[int, Node]] = field(default_factory=list)  # (binding slot, child)
    plus: Node | None = None
    hash: list[End] = field(default_factory=list)  # templates with '#' at this level
    ends: list[End] = field(default_factory=list)

    def insert(self, levels: list[str], end: End) -> None:
        node = self
        for level in levels:
            if level == "#":
                node.hash.append(end)
                return
            if level == "+":
                if node.plus is None:
                    node.plus = Node()
                node = node.plus
            elif level.startswith("{") and level.endswith("}"):
                slot = VARIABLES[level[1:-1]]
                for s, child in node.variables:
                    if s == slot:
                        node = child
                        break
                else:
                    child = Node()
                    node.variables.append((slot, child))
                    node = child
            else:
                literal = node.literals.get(level)
                if literal is None:
                    literal = node.literals[level] = Node()
                node = literal
        node.ends.append(end)

    def has_wildcards(self) -> bool:
        """Does any template below use '+' or '#' (so topics outside the registry match)?"""
        if self.plus is not None or self.hash:
            return True
        return any(c.has_wildcards() for c in self.literals.values()) or any(
            c.has_wildcards() for _, c in self.variables
        )


def end_ok(end: End, b: Bindings, scope: Scope, shared_only: bool = False) -> bool:
    """Does this template's tool accept these bindings (its command list, $share)?"""
    if shared_only and not end.shared:
        return False
    if end.uses_command and end.commands is not None:
        command = b[COMMAND]
        if command == WILD:
            return scope.registry.commands_under(b) <= end.commands
        return command in end.commands
    return True


def match(root: Node, levels: list[str], scope: Scope) -> list[tuple[End, Bindings]]:
    """Every template matching a concrete topic, with registry-valid bindings, in tool
    order."""
    found: list[tuple[End, Bindings]] = []
    stack: list[tuple[Node, int, Bindings]] = [(root, 0, NO_BINDINGS)]
    n = len(levels)
    accepts = scope.accepts
    while stack:
        node, i, b = stack.pop()
        # '#' also matches the parent level itself [MQTT-4.7.1-2]. Most nodes have
        # neither '#' nor ends: the guards skip building an empty generator.
        if node.hash:
            found.extend((e, b) for e in node.hash if end_ok(e, b, scope))
        if i == n:
            if node.ends:
                found.extend((e, b) for e in node.ends if end_ok(e, b, scope))
            continue
        level = levels[i]
        child = node.literals.get(level)
        if child is not None:
            stack.append((child, i + 1, b))
        for slot, vchild in node.variables:
            if accepts(slot, level, b):
                stack.append((vchild, i + 1, bind(b, slot, level)))
        if node.plus is not None:
            stack.append((node.plus, i + 1, b))
    found.sort(key=lambda eb: eb[0].order)
    return found


def miss(root: Node, levels: list[str], scope: Scope) -> tuple[End, int, str, Bindings] | None:
    """Why no template matched: the first variable (slot, value) or tool command list
    that refused a template the topic otherwise fits; None when none fits at all.

    Returns (template end or a placeholder, slot or -1 for a command list, refused
    value, bindings so far); ``wording.miss_detail`` words it.
    """
    stack: list[tuple[Node, int, Bindings]] = [(root, 0, NO_BINDINGS)]
    n = len(levels)
    while stack:
        node, i, b = stack.pop()
        if i == n:
            for e in node.ends:
                if not end_ok(e, b, scope):
                    return e, -1, "", b
            continue
        level = levels[i]
        child = node.literals.get(level)
        if child is not None:
            stack.append((child, i + 1, b))
        for slot, vchild in node.variables:
            if scope.accepts(slot, level, b):
                stack.append((vchild, i + 1, bind(b, slot, level)))
            else:
                end = _first_end(vchild, levels, i + 1)
                if end is not None:
                    return end, slot, level, b
        if node.plus is not None:
            stack.append((node.plus, i + 1, b))
    return None


def _first_end(node: Node, levels: list[str], i: int) -> End | None:
    """A template the rest of the topic would reach if variables took any name."""
    if node.hash:
        return node.hash[0]
    if i == len(levels):
        return node.ends[0] if node.ends else None
    child = node.literals.get(levels[i])
    if child is not None:
        found = _first_end(child, levels, i + 1)
        if found is not None:
            return found
    if node.plus is not None:
        found = _first_end(node.plus, levels, i + 1)
        if found is not None:
            return found
    for _, c in node.variables:
        found = _first_end(c, levels, i + 1)
        if found is not None:
            return found
    return None
