"""How the policy words its answers: one sentence an agent (an LLM) can act on.

Only built when a decision needs it; refusal reasons are built once per topic and
then cached with the decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .registry import DEVICE, GROUP, TENANT, Bindings
from .trie import End

if TYPE_CHECKING:
    from .registry import Scope


def names(items: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(items)
    shown = ", ".join(ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")


def under(levels: list[str], i: int) -> str:
    """'under a/b/ ' for a refusal reason."""
    return f"under {'/'.join(levels[:i])}/ " if i else ""


def why_not(agent_id: str, tenants: str, slot: int, value: str, b: Bindings) -> str:
    """Why ``value`` may not stand for the variable in ``slot`` (``tenants``: the agent's,
    as ``Scope.shown`` words them)."""
    if slot == TENANT:
        return f"{value!r} is not a tenant of agent {agent_id} (its tenants: {tenants or 'none'})"
    tenant = b[TENANT]
    if slot == DEVICE:
        return f"{value!r} is not a registered device of tenant {tenant!r}"
    if slot == GROUP:
        return f"{value!r} is not a group of tenant {tenant!r}"
    return f"{value!r} is not a command of device {b[DEVICE]!r}"


def miss_detail(
    agent_id: str, tenants: str, miss: tuple[End, int, str, Bindings] | None
) -> str:
    """The detail after "has no tool that allows ...": what refused the closest template."""
    if miss is None:
        return ""
    end, slot, value, b = miss
    if slot < 0:
        return f"tool {end.tool} may only use the commands {names(end.commands or ())}"
    return why_not(agent_id, tenants, slot, value, b)


VERB_TEXT = {"publish": "publishing to", "receive": "reading"}


def no_tool(agent_id: str, verb: str, topic: str, detail: str) -> str:
    # One f-string: a refused first packet builds this once.
    sep = ": " if detail else ""
    return f"agent {agent_id} has no tool that allows {VERB_TEXT[verb]} {topic}{sep}{detail}"


def no_tool_miss(
    agent_id: str, verb: str, topic: str, scope: Scope, miss: tuple[End, int, str, Bindings]
) -> str:
    """``no_tool(agent_id, verb, topic, miss_detail(agent_id, scope.shown(), miss))`` in
    one call: the two refusals of a first packet that happen most (a device or a tenant
    not the agent's) as one f-string each, with the same words as ``why_not`` (a test
    compares them), the tenants named only when the refusal names them."""
    end, slot, value, b = miss
    if slot == DEVICE:
        return (
            f"agent {agent_id} has no tool that allows {VERB_TEXT[verb]} {topic}: "
            f"{value!r} is not a registered device of tenant {b[TENANT]!r}"
        )
    tenants = scope.shown()
    if slot == TENANT:
        return (
            f"agent {agent_id} has no tool that allows {VERB_TEXT[verb]} {topic}: "
            f"{value!r} is not a tenant of agent {agent_id} (its tenants: {tenants or 'none'})"
        )
    return no_tool(agent_id, verb, topic, miss_detail(agent_id, tenants, miss))


def reserved(agent_id: str, verb: str, topic: str) -> str:
    if verb == "subscribe":
        return (
            f"topics starting with '$' ($SYS, $CONTROL, $guard, ...) are reserved to the "
            f"broker and the guard; agent {agent_id} may not subscribe to {topic} "
            "[MQTT-4.7.2-1]"
        )
    return (
        f"topics starting with '$' are reserved to the broker and the guard; agent "
        f"{agent_id} may not {verb} {'to ' if verb == 'publish' else ''}{topic} [MQTT-4.7.2-1]"
    )


def not_in_policy(agent_id: str) -> str:
    return f"agent {agent_id} is not in the policy; every action is denied"


# -- publish ---------------------------------------------------------------------------------


def held(risk: str, end: End, raised_from: str | None, reach: int) -> str:
    text = (
        f"held for human approval: risk {risk} is above the tool's approval threshold "
        f"{end.approval_above} (tool {end.tool})"
    )
    if raised_from is not None:
        text += (
            f"; raised from {raised_from} because it reaches {reach} "
            f"device{'' if reach == 1 else 's'}, more than "
            f"approval_above_devices {end.approval_above_devices}"
        )
    return text


def qos_denied(end: End, qos: int, topic: str) -> str:
    return (
        f"QoS {qos} is above the maximum QoS {end.max_qos} that tool {end.tool} allows "
        f"for {topic}; publish with QoS {end.max_qos} or lower"
    )


def retain_denied(end: End, topic: str) -> str:
    return f"tool {end.tool} does not allow retained messages on {topic}; publish with retain=false"


def payload_refused(end: End, problem: str) -> str:
    return f"payload refused by tool {end.tool}: {problem}"


# -- subscribe -------------------------------------------------------------------------------


def no_shared_tools(agent_id: str, inner: str) -> str:
    return (
        f"agent {agent_id} has no tool that allows shared subscriptions; "
        f"subscribe to {inner} without $share"
    )


def not_shared(tools: Iterable[str], inner: str) -> str:
    return (
        f"tool {names(tools)} does not allow shared subscriptions; subscribe to {inner} "
        "without $share"
    )


def may_not_subscribe(agent_id: str, inner: str, detail: str) -> str:
    return f"agent {agent_id} may not subscribe to {inner}: {detail}"


def hash_uncovered(levels: list[str], i: int) -> str:
    return (
        f"'#' at level {i + 1} would include topics {under(levels, i)}that no tool "
        "lets it read (only a tool topic with '#' at that level covers '#')"
    )


def plus_over_tenants(agent_id: str, tenants: str, i: int) -> str:
    return (
        f"'+' at level {i + 1} would include tenants agent {agent_id} may not read "
        f"(its tenants: {tenants})"
    )


def plus_uncovered(levels: list[str], i: int) -> str:
    return (
        f"'+' at level {i + 1} would include topics {under(levels, i)}that no tool lets it "
        "read (tool topics name the level there)"
    )


def level_uncovered(levels: list[str], i: int) -> str:
    return f"no tool lets it read topics {under(levels, i)}named {levels[i]!r}"


NOTHING_MATCHES = "no tool lets it read topics that match it"
