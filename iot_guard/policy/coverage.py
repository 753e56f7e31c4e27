"""Subscription coverage: does an agent's set of subscribe templates cover a filter?

A filter is granted only if every registry-valid topic it can match is readable by
the agent (subset-correct): a filter's '+' at a variable level stands for every
registered name there (covered only if the agent has them all), at a literal level for
any string (covered only by a template '+' or '#'); a filter '#' only by a template
'#' at that level. '+' never absorbs '#'.
"""

from __future__ import annotations

from collections.abc import Callable

from . import wording
from .registry import NO_BINDINGS, WILD, Bindings, Scope, bind
from .trie import End, Node, end_ok

Cover = tuple[list[End] | None, str, Bindings]


def cover(
    scope: Scope,
    agent_id: str,
    states: list[tuple[Node, Bindings]],
    levels: list[str],
    i: int,
    keep: Callable[[End], bool],
) -> Cover:
    """Is every topic matching ``levels[i:]`` matched by some state's templates that
    ``keep`` accepts? Returns (contributing templates or None, why not, the bindings of
    the first state)."""
    n = len(levels)

    def ok(e: End, b: Bindings) -> bool:
        return keep(e) and end_ok(e, b, scope)

    while True:
        absorbed = [e for node, b in states for e in node.hash if ok(e, b)]
        if absorbed:
            return absorbed, "", states[0][1]
        if i == n:
            ends = [e for node, b in states for e in node.ends if ok(e, b)]
            if ends:
                return ends, "", states[0][1]
            return None, wording.NOTHING_MATCHES, states[0][1]
        level = levels[i]
        if level == "#":
            return None, wording.hash_uncovered(levels, i), states[0][1]
        if level == "+":
            plus = [(node.plus, b) for node, b in states if node.plus is not None]
            kinds: dict[int, list[tuple[Node, Bindings]]] = {}
            narrow = False
            for node, b in states:
                for slot, child in node.variables:
                    if not scope.full(slot):
                        narrow = True
                    kinds.setdefault(slot, []).append((child, bind(b, slot, WILD)))
            if narrow or not kinds:
                if not plus:
                    if narrow:
                        why = wording.plus_over_tenants(agent_id, scope.shown(), i)
                    else:
                        why = wording.plus_uncovered(levels, i)
                    return None, why, states[0][1]
                states = plus
            elif len(kinds) == 1:
                states = plus + next(iter(kinds.values()))
            else:
                # Different variables here: a name reaches only its own kind's
                # templates, so each kind must cover the rest on its own.
                all_ends: list[End] = []
                for group in kinds.values():
                    part, why, _ = cover(scope, agent_id, plus + group, levels, i + 1, keep)
                    if part is None:
                        return None, why, states[0][1]
                    all_ends.extend(part)
                return all_ends, "", states[0][1]
        else:
            nxt: list[tuple[Node, Bindings]] = []
            refused = ""
            for node, b in states:
                literal = node.literals.get(level)
                if literal is not None:
                    nxt.append((literal, b))
                for slot, vchild in node.variables:
                    if scope.accepts(slot, level, b):
                        nxt.append((vchild, bind(b, slot, level)))
                    elif not refused:
                        refused = wording.why_not(agent_id, scope.shown(), slot, level, b)
                if node.plus is not None:
                    nxt.append((node.plus, b))
            if not nxt:
                return None, refused or wording.level_uncovered(levels, i), states[0][1]
            states = nxt
        i += 1


def first_granting(
    scope: Scope, agent_id: str, root: Node, levels: list[str], orders: list[int], shared: bool
) -> tuple[list[End] | None, str, Bindings]:
    """The filter is credited to the FIRST tool (agent order) that grants it on its own,
    with that tool's QoS cap; only when no single tool covers it is the union of
    templates asked (then every contributing tool's cap applies)."""
    states = [(root, NO_BINDINGS)]
    for order in orders:
        ends, _, b = cover(scope, agent_id, states, levels, 0, _only(order, shared))
        if ends is not None:
            return ends, "", b
    return cover(scope, agent_id, states, levels, 0, _shared if shared else _any)


def _only(order: int, shared: bool) -> Callable[[End], bool]:
    def keep(end: End) -> bool:
        return end.order == order and (end.shared or not shared)

    return keep


def _shared(end: End) -> bool:
    return end.shared


def _any(end: End) -> bool:
    return True
