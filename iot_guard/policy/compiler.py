"""The compiled policy: per-agent tries over topic levels, and the per-packet decisions.

Compilation happens once (principle 5). Each agent gets two tries, one for its
publish tools and one for its subscribe tools, built from those tools' topic
templates only. A trie node maps a literal level to a child (one dict lookup), holds
the variable children (``{tenant}``, ``{device}``, ``{group}``, ``{command}``), a
``+`` child and ``#`` terminals, and the templates that end there. A variable stands
for exactly one level and only for registry names, checked with set/dict lookups
against the registry index, so no decision touches more than a handful of nodes
however many tenants and devices there are. Topic-level results are cached per topic
(bounded); the payload check still runs for every publish.

Deny by default: a topic no tool matches is denied, and every decision says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from iot_guard.payloads import PayloadValidators

from ..mqtt.reason_codes import ReasonCode
from ..mqtt.topics import split_shared, topic_filter_problem, topic_name_problem
from ..policy_models import RISK_ORDER, RISKS, PolicyDocument, Tool, risk_max
from .decision import INVOKE, READ, WRITE, Decision, Verdict, deny
from .loader import PolicyError, PolicySource, dotted, load_policy_source

# Per-agent topic caches are cleared when they reach this size: a bound on memory
# that an agent probing random topics cannot push further.
CACHE_LIMIT = 10_000
# Distinct (agent, token tool list) pairs kept compiled.
AGENT_CACHE_LIMIT = 1_024

# Binding of a variable under a '+' in a subscription filter: "every registered name
# here". '+' can never be a registry name, so it cannot collide with a real one.
WILD = "+"

_VARS = {"tenant": 0, "device": 1, "group": 2, "command": 3}
# Payload kinds validated against a device type (so the topic must name a device or group).
_TYPED_KINDS = ("shadow_update", "config_patch", "command")

Bindings = tuple[str | None, str | None, str | None, str | None]  # tenant, device, group, command
_NO_BINDINGS: Bindings = (None, None, None, None)
_V = TypeVar("_V")


def _fill(cache: dict[str, _V], topic: str, build: Callable[[str], _V]) -> _V:
    """A per-topic cache miss: build the result and keep it, clearing a full cache first.

    Callers do the ``cache.get`` themselves, so a hit costs one lookup and no bound
    method; the cache holds no reference back to its owner (no reference cycle).
    """
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    value = cache[topic] = build(topic)
    return value


def _bind(b: Bindings, slot: int, value: str) -> Bindings:
    as_list = list(b)
    as_list[slot] = value
    return (as_list[0], as_list[1], as_list[2], as_list[3])


# --- the registry index -------------------------------------------------------------


@dataclass(slots=True)
class _Tenant:
    devices: dict[str, str]  # device -> device type
    groups: dict[str, tuple[str, ...]]  # group -> distinct device types of its members
    commands: frozenset[str]  # every command of any of its device types


class _Registry:
    """The fleet registry as sets and dicts: every variable check is one lookup."""

    def __init__(self, document: PolicyDocument):
        self.commands_by_type: dict[str, frozenset[str]] = {
            name: frozenset(dt.commands) for name, dt in document.device_types.items()
        }
        self.tenants: dict[str, _Tenant] = {}
        self.device_names: set[str] = set()
        self.group_names: set[str] = set()
        all_commands: set[str] = set()
        for name, tenant in document.tenants.items():
            devices = {d: dev.type for d, dev in tenant.devices.items()}
            groups = {
                g: tuple(sorted({devices[m] for m in members if m in devices}))
                for g, members in tenant.groups.items()
            }
            commands = frozenset(
                c for t in set(devices.values()) for c in self.commands_by_type.get(t, ())
            )
            self.tenants[name] = _Tenant(devices, groups, commands)
            self.device_names.update(devices)
            self.group_names.update(groups)
            all_commands |= commands
        self.all_tenants = frozenset(self.tenants)
        self.all_commands = frozenset(all_commands)

    def commands_under(self, b: Bindings) -> frozenset[str]:
        """Every registered command a topic with these tenant/device bindings can name."""
        tenant, device = b[0], b[1]
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


# --- the trie -------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _End:
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


@dataclass(slots=True, eq=False)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    variables: list[tuple[int, _Node]] = field(default_factory=list)  # (binding slot, child)
    plus: _Node | None = None
    hash: list[_End] = field(default_factory=list)  # templates with '#' at this level
    ends: list[_End] = field(default_factory=list)

    def insert(self, levels: list[str], end: _End) -> None:
        node = self
        for level in levels:
            if level == "#":
                node.hash.append(end)
                return
            if level == "+":
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            elif level.startswith("{") and level.endswith("}"):
                slot = _VARS[level[1:-1]]
                for s, child in node.variables:
                    if s == slot:
                        node = child
                        break
                else:
                    child = _Node()
                    node.variables.append((slot, child))
                    node = child
            else:
                literal = node.literals.get(level)
                if literal is None:
                    literal = node.literals[level] = _Node()
                node = literal
        node.ends.append(end)


# --- publish matches ------------------------------------------------------------------


class _PubMatch:
    """One publish tool matching one concrete topic: everything but the payload decided.

    The decisions are built on first use and then kept: a topic usually sees one or two
    of the dozen possible outcomes, and building them all up front cost more than the
    topic lookup itself.
    """

    __slots__ = (
        "end",
        "topic",
        "resource",
        "device_types",
        "command",
        "action_type",
        "_allow",
        "_hold",
        "_qos_denied",
        "_retain_denied",
    )

    def __init__(
        self,
        end: _End,
        topic: str,
        resource: str | None,
        device_types: tuple[str, ...],
        command: str | None,
        action_type: str,
    ):
        self.end = end
        self.topic = topic
        self.resource = resource
        self.device_types = device_types  # payload is validated against each
        self.command = command
        self.action_type = action_type
        self._allow: dict[str, Decision] = {}  # by effective risk
        self._hold: dict[str, Decision] = {}
        self._qos_denied: dict[int, Decision] = {}  # by requested QoS
        self._retain_denied: Decision | None = None

    def allow(self, risk: str) -> Decision:
        d = self._allow.get(risk)
        if d is None:
            end = self.end
            d = self._allow[risk] = Decision(
                Verdict.ALLOW,
                f"allowed by tool {end.tool}",
                ReasonCode.SUCCESS,
                self.action_type,
                end.tool,
                end.rule,
                self.resource,
                risk,
            )
        return d

    def hold(self, risk: str) -> Decision:
        d = self._hold.get(risk)
        if d is None:
            end = self.end
            d = self._hold[risk] = Decision(
                Verdict.HOLD,
                f"held for human approval: risk {risk} is above the tool's approval "
                f"threshold {end.approval_above} (tool {end.tool})",
                ReasonCode.NOT_AUTHORIZED,
                self.action_type,
                end.tool,
                end.rule,
                self.resource,
                risk,
            )
        return d

    def qos_denied(self, qos: int) -> Decision:
        # MQTT QoS is 0-2 [MQTT-3.3.1-4]: out-of-range requests share the clamped entry.
        q = min(max(qos, 0), 2)
        d = self._qos_denied.get(q)
        if d is None:
            end = self.end
            d = self._qos_denied[q] = deny(
                f"QoS {q} is above the maximum QoS {end.max_qos} that tool {end.tool} allows "
                f"for {self.topic}; publish with QoS {end.max_qos} or lower",
                self.action_type,
                tool=end.tool,
                rule=end.rule,
                resource=self.resource,
            )
        return d

    def retain_denied(self) -> Decision:
        d = self._retain_denied
        if d is None:
            end = self.end
            d = self._retain_denied = deny(
                f"tool {end.tool} does not allow retained messages on {self.topic}; publish "
                "with retain=false",
                self.action_type,
                tool=end.tool,
                rule=end.rule,
                resource=self.resource,
            )
        return d


def _resource(b: Bindings) -> str | None:
    tenant, device, group = b[0], b[1], b[2]
    if tenant is None:
        return None
    if device is not None:
        return f"{tenant}/{device}"
    if group is not None:
        return f"{tenant}/groups/{group}"
    return tenant


def _names(names: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")


def _under(levels: list[str], i: int) -> str:
    """'under a/b/ ' for a refusal reason; built only when a refusal needs it."""
    return f"under {'/'.join(levels[:i])}/ " if i else ""


class AgentPolicy:
    """One agent's compiled allowlist; ``decide_*`` are the per-packet calls."""

    def __init__(
        self,
        agent_id: str,
        tools: list[tuple[str, Tool]],
        tenants: frozenset[str],
        registry: _Registry,
        validators: PayloadValidators | None,
        rule_of: dict[str, str],
        unknown_reason: str | None = None,
    ):
        self.agent_id = agent_id
        self.tools: tuple[str, ...] = tuple(name for name, _ in tools)
        self.tenants = tenants
        self._registry = registry
        self._validators = validators
        self._unknown = unknown_reason
        self._publish = _Node()
        self._subscribe = _Node()
        self._any_shared = False
        for order, (name, tool) in enumerate(tools):
            cond = tool.conditions
            end = _End(
                order=order,
                tool=name,
                rule=rule_of.get(name, f"tools.{name}"),
                payload=tool.payload,
                risk=tool.risk,
                max_qos=cond.max_qos,
                retain=cond.retain,
                shared=cond.shared_subscription,
                approval_above=cond.approval_above,
                commands=frozenset(cond.commands) if cond.commands is not None else None,
                uses_command=any("{command}" in t for t in tool.topics),
            )
            trie = self._publish if tool.verb == "publish" else self._subscribe
            for template in tool.topics:
                trie.insert(template.split("/"), end)
            if tool.verb == "subscribe" and cond.shared_subscription:
                self._any_shared = True
        # A '+' at the {tenant} level covers every registered tenant only if the agent
        # has them all; decided once here, not per subscription.
        self._all_tenants = bool(registry.all_tenants) and registry.all_tenants <= tenants
        self._pub_cache: dict[str, tuple[_PubMatch, ...] | Decision] = {}
        self._sub_cache: dict[str, Decision] = {}
        self._recv_cache: dict[str, Decision] = {}

    def __repr__(self) -> str:
        return f"AgentPolicy({self.agent_id!r}, tools={list(self.tools)})"

    # -- variables ----------------------------------------------------------------------

    def _accepts(self, slot: int, value: str, b: Bindings) -> bool:
        """May ``value`` stand for the variable in ``slot`` given earlier bindings?"""
        reg = self._registry
        if slot == 0:
            return value in self.tenants
        tenant = b[0]
        if slot == 1 or slot == 2:
            if tenant == WILD:
                return value in (reg.device_names if slot == 1 else reg.group_names)
            t = reg.tenants.get(tenant) if tenant is not None else None
            return t is not None and value in (t.devices if slot == 1 else t.groups)
        if tenant is None or b[1] is None:
            return False
        return value in reg.commands_under(b)

    def _why_not(self, slot: int, value: str, b: Bindings) -> str:
        if slot == 0:
            return (
                f"{value!r} is not a tenant of agent {self.agent_id} "
                f"(its tenants: {_names(self.tenants) or 'none'})"
            )
        tenant = b[0]
        if slot == 1:
            return f"{value!r} is not a registered device of tenant {tenant!r}"
        if slot == 2:
            return f"{value!r} is not a group of tenant {tenant!r}"
        return f"{value!r} is not a command of device {b[1]!r}"

    def _full(self, slot: int) -> bool:
        """Does the agent's domain of this variable hold every registered name there?"""
        # Devices, groups and commands of a tenant the agent has all belong to it;
        # only the tenant level can be narrower than the registry.
        return slot != 0 or self._all_tenants

    def _end_ok(self, end: _End, b: Bindings, shared_only: bool = False) -> bool:
        if shared_only and not end.shared:
            return False
        if end.uses_command and end.commands is not None:
            command = b[3]
            if command == WILD:
                return self._registry.commands_under(b) <= end.commands
            return command in end.commands
        return True

    # -- concrete topics ------------------------------------------------------------------

    def _match(self, root: _Node, levels: list[str]) -> list[tuple[_End, Bindings]]:
        """Every template matching a concrete topic, with registry-valid bindings."""
        found: list[tuple[_End, Bindings]] = []
        stack: list[tuple[_Node, int, Bindings]] = [(root, 0, _NO_BINDINGS)]
        n = len(levels)
        while stack:
            node, i, b = stack.pop()
            # '#' also matches the parent level itself [MQTT-4.7.1-2]. Most nodes have
            # neither '#' nor ends: the guards skip building an empty generator.
            if node.hash:
                found.extend((e, b) for e in node.hash if self._end_ok(e, b))
            if i == n:
                if node.ends:
                    found.extend((e, b) for e in node.ends if self._end_ok(e, b))
                continue
            level = levels[i]
            child = node.literals.get(level)
            if child is not None:
                stack.append((child, i + 1, b))
            for slot, vchild in node.variables:
                if self._accepts(slot, level, b):
                    stack.append((vchild, i + 1, _bind(b, slot, level)))
            if node.plus is not None:
                stack.append((node.plus, i + 1, b))
        found.sort(key=lambda eb: eb[0].order)
        return found

    def _miss_detail(self, root: _Node, levels: list[str]) -> str:
        """Why no template matched: the first variable or tool condition that refused."""
        stack: list[tuple[_Node, int, Bindings]] = [(root, 0, _NO_BINDINGS)]
        n = len(levels)
        while stack:
            node, i, b = stack.pop()
            if i == n:
                for e in node.ends:
                    if not self._end_ok(e, b):
                        return f"tool {e.tool} may only use the commands {_names(e.commands or ())}"
                continue
            level = levels[i]
            child = node.literals.get(level)
            if child is not None:
                stack.append((child, i + 1, b))
            for slot, vchild in node.variables:
                if self._accepts(slot, level, b):
                    stack.append((vchild, i + 1, _bind(b, slot, level)))
                elif self._leads_to_end(vchild, levels, i + 1):
                    return self._why_not(slot, level, b)
            if node.plus is not None:
                stack.append((node.plus, i + 1, b))
        return ""

    def _leads_to_end(self, node: _Node, levels: list[str], i: int) -> bool:
        """Would the rest of the topic reach a template if variables took any name?"""
        if node.hash:
            return True
        if i == len(levels):
            return bool(node.ends)
        child = node.literals.get(levels[i])
        if child is not None and self._leads_to_end(child, levels, i + 1):
            return True
        if node.plus is not None and self._leads_to_end(node.plus, levels, i + 1):
            return True
        return any(self._leads_to_end(c, levels, i + 1) for _, c in node.variables)

    # -- publish ---------------------------------------------------------------------------

    def _publish_matches(self, topic: str) -> tuple[_PubMatch, ...] | Decision:
        # A malformed name is 0x90 whoever asks: the codec's rules, checked first.
        problem = topic_name_problem(topic)
        if problem is not None:
            return deny(problem, WRITE, ReasonCode.TOPIC_NAME_INVALID)
        if self._unknown is not None:
            return deny(self._unknown, WRITE)
        if topic.startswith("$"):
            return deny(
                f"topics starting with '$' are reserved to the broker and the guard; "
                f"agent {self.agent_id} may not publish to {topic} [MQTT-4.7.2-1]",
                WRITE,
            )
        levels = topic.split("/")
        found = self._match(self._publish, levels)
        if not found:
            detail = self._miss_detail(self._publish, levels)
            return deny(
                f"agent {self.agent_id} has no tool that allows publishing to {topic}"
                + (f": {detail}" if detail else ""),
                WRITE,
            )
        return tuple(self._pub_match(end, b, topic) for end, b in found)

    def _pub_match(self, end: _End, b: Bindings, topic: str) -> _PubMatch:
        reg = self._registry
        action = INVOKE if end.payload == "command" else WRITE
        resource = _resource(b)
        device_types: tuple[str, ...] = ()
        tenant = reg.tenants.get(b[0]) if b[0] is not None else None
        if tenant is not None and b[1] is not None:
            device_types = (tenant.devices[b[1]],)
        elif tenant is not None and b[2] is not None:
            device_types = tenant.groups[b[2]]
        return _PubMatch(end, topic, resource, device_types, b[3], action)

    def decide_publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> Decision:
        """May this agent publish ``payload`` to ``topic``? Allow, deny or hold."""
        matches = self._pub_cache.get(topic)
        if matches is None:
            matches = _fill(self._pub_cache, topic, self._publish_matches)
        if isinstance(matches, Decision):
            return matches
        refusal: Decision | None = None
        refusal_rank = -1
        for m in matches:
            end = m.end
            if qos > end.max_qos:
                if refusal_rank < 1:
                    refusal, refusal_rank = m.qos_denied(qos), 1
                continue
            if retain and not end.retain:
                if refusal_rank < 1:
                    refusal, refusal_rank = m.retain_denied(), 1
                continue
            risk = end.risk
            if end.payload != "none" or payload:
                verdict_risk, problem = self._check_payload(m, payload)
                if problem is not None:
                    if refusal_rank < 2:
                        refusal = deny(
                            f"payload refused by tool {end.tool}: {problem}",
                            m.action_type,
                            ReasonCode.PAYLOAD_FORMAT_INVALID,
                            end.tool,
                            end.rule,
                            m.resource,
                        )
                        refusal_rank = 2
                    continue
                risk = risk_max(risk, verdict_risk)
            if end.approval_above is not None and RISK_ORDER[risk] > RISK_ORDER[end.approval_above]:
                return m.hold(risk)
            return m.allow(risk)
        assert refusal is not None  # matches is never empty
        return refusal

    def _check_payload(self, m: _PubMatch, payload: bytes) -> tuple[str, str | None]:
        """(risk, None) if every device type the topic reaches accepts the payload."""
        kind = m.end.payload
        if self._validators is None:
            return "low", "the policy has no payload validators"
        if kind == "none":
            # A tool without a payload kind carries no data (e.g. shadow/get): anything
            # else would reach devices unvalidated (principle 2).
            v = self._validators.empty(payload)
            return v.risk, (None if v.ok else v.reason)
        if not m.device_types:
            return "low", f"{m.resource} has no devices to validate the payload against"
        # Every device type the topic reaches must accept it; parsed once for all of them.
        v = self._validators.for_types(kind, m.device_types, payload, command=m.command)
        return v.risk, (None if v.ok else v.reason)

    # -- subscribe --------------------------------------------------------------------------

    def decide_subscribe(self, topic_filter: str, qos: int = 0) -> Decision:
        """May this agent subscribe to ``topic_filter``? ``max_qos`` caps the granted QoS."""
        decision = self._sub_cache.get(topic_filter)
        if decision is None:
            decision = _fill(self._sub_cache, topic_filter, self._subscribe_decision)
        return decision

    def _subscribe_decision(self, topic_filter: str) -> Decision:
        # A malformed filter ($share/ form included) is 0x8F whoever asks: the codec's rules.
        problem = topic_filter_problem(topic_filter)
        if problem is not None:
            return deny(problem, READ, ReasonCode.TOPIC_FILTER_INVALID)
        if self._unknown is not None:
            return deny(self._unknown, READ)
        share_name, inner = split_shared(topic_filter)
        shared = share_name is not None
        levels = inner.split("/")
        if inner.startswith("$"):
            return deny(
                f"topics starting with '$' ($SYS, $CONTROL, $guard, ...) are reserved to the "
                f"broker and the guard; agent {self.agent_id} may not subscribe to {inner} "
                "[MQTT-4.7.2-1]",
                READ,
            )
        if shared and not self._any_shared:
            return deny(
                f"agent {self.agent_id} has no tool that allows shared subscriptions; "
                f"subscribe to {inner} without $share",
                READ,
                ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            )
        states = [(self._subscribe, _NO_BINDINGS)]
        ends, detail, bindings = self._cover(states, levels, 0, shared)
        if ends is None and shared:
            plain, _, _ = self._cover(states, levels, 0, False)
            if plain is not None:
                tools = _names({e.tool for e in plain})
                return deny(
                    f"tool {tools} does not allow shared subscriptions; subscribe to {inner} "
                    "without $share",
                    READ,
                    ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                )
        if ends is None:
            return deny(f"agent {self.agent_id} may not subscribe to {inner}: {detail}", READ)
        first = min(ends, key=lambda e: e.order)
        # Where several tools cover parts of the filter, grant what all of them allow.
        max_qos = min(e.max_qos for e in ends)
        return Decision(
            Verdict.ALLOW,
            f"allowed by tool {first.tool}",
            ReasonCode.SUCCESS,
            READ,
            first.tool,
            first.rule,
            _resource(bindings),
            RISKS[max(RISK_ORDER[e.risk] for e in ends)],
            max_qos,
        )

    def _cover(
        self,
        states: list[tuple[_Node, Bindings]],
        levels: list[str],
        i: int,
        shared_only: bool,
    ) -> tuple[list[_End] | None, str, Bindings]:
        """Is every readable-registry topic matching ``levels[i:]`` matched by some state?

        Subset-correct: a filter's '+' at a variable level stands for every registered
        name there (covered only if the agent has them all), at a literal level for any
        string (covered only by a template '+' or '#'); a filter '#' only by a template
        '#' at that level. '+' never absorbs '#'. Returns (contributing templates or
        None, why not, the bindings of the first state).
        """
        n = len(levels)
        while True:
            absorbed = [
                e for node, b in states for e in node.hash if self._end_ok(e, b, shared_only)
            ]
            if absorbed:
                return absorbed, "", states[0][1]
            if i == n:
                ends = [
                    e for node, b in states for e in node.ends if self._end_ok(e, b, shared_only)
                ]
                if ends:
                    return ends, "", states[0][1]
                return None, "no tool lets it read topics that match it", states[0][1]
            level = levels[i]
            if level == "#":
                return (
                    None,
                    f"'#' at level {i + 1} would include topics {_under(levels, i)}that no tool "
                    "lets it read (only a tool topic with '#' at that level covers '#')",
                    states[0][1],
                )
            if level == "+":
                plus = [(node.plus, b) for node, b in states if node.plus is not None]
                kinds: dict[int, list[tuple[_Node, Bindings]]] = {}
                narrow = False
                for node, b in states:
                    for slot, child in node.variables:
                        if not self._full(slot):
                            narrow = True
                        kinds.setdefault(slot, []).append((child, _bind(b, slot, WILD)))
                if narrow or not kinds:
                    if not plus:
                        if narrow:
                            why = (
                                f"'+' at level {i + 1} would include tenants agent "
                                f"{self.agent_id} may not read (its tenants: "
                                f"{_names(self.tenants)})"
                            )
                        else:
                            why = (
                                f"'+' at level {i + 1} would include topics "
                                f"{_under(levels, i)}that no tool lets it read (tool topics "
                                "name the level there)"
                            )
                        return None, why, states[0][1]
                    states = plus
                elif len(kinds) == 1:
                    states = plus + next(iter(kinds.values()))
                else:
                    # Different variables here: a name reaches only its own kind's
                    # templates, so each kind must cover the rest on its own.
                    all_ends: list[_End] = []
                    for group in kinds.values():
                        part, why, _ = self._cover(plus + group, levels, i + 1, shared_only)
                        if part is None:
                            return None, why, states[0][1]
                        all_ends.extend(part)
                    return all_ends, "", states[0][1]
            else:
                nxt: list[tuple[_Node, Bindings]] = []
                refused = ""
                for node, b in states:
                    literal = node.literals.get(level)
                    if literal is not None:
                        nxt.append((literal, b))
                    for slot, vchild in node.variables:
                        if self._accepts(slot, level, b):
                            nxt.append((vchild, _bind(b, slot, level)))
                        elif not refused:
                            refused = self._why_not(slot, level, b)
                    if node.plus is not None:
                        nxt.append((node.plus, b))
                if not nxt:
                    return (
                        None,
                        refused
                        or f"no tool lets it read topics {_under(levels, i)}named {level!r}",
                        states[0][1],
                    )
                states = nxt
            i += 1

    # -- receive ---------------------------------------------------------------------------

    def decide_receive(self, topic: str) -> Decision:
        """May the agent be delivered a PUBLISH on this concrete topic?"""
        decision = self._recv_cache.get(topic)
        if decision is None:
            decision = _fill(self._recv_cache, topic, self._receive_decision)
        return decision

    def _receive_decision(self, topic: str) -> Decision:
        problem = topic_name_problem(topic)
        if problem is not None:
            return deny(problem, READ, ReasonCode.TOPIC_NAME_INVALID)
        if self._unknown is not None:
            return deny(self._unknown, READ)
        if topic.startswith("$"):
            return deny(
                f"topics starting with '$' are reserved to the broker and the guard; agent "
                f"{self.agent_id} may not receive {topic} [MQTT-4.7.2-1]",
                READ,
            )
        levels = topic.split("/")
        found = self._match(self._subscribe, levels)
        if not found:
            detail = self._miss_detail(self._subscribe, levels)
            return deny(
                f"agent {self.agent_id} has no tool that allows reading {topic}"
                + (f": {detail}" if detail else ""),
                READ,
            )
        end, b = found[0]
        return Decision(
            Verdict.ALLOW,
            f"allowed by tool {end.tool}",
            ReasonCode.SUCCESS,
            READ,
            end.tool,
            end.rule,
            _resource(b),
            end.risk,
            end.max_qos,
        )


class CompiledPolicy:
    """The whole policy compiled once; ``for_agent`` hands out per-agent policies."""

    def __init__(self, source: PolicySource | PolicyDocument):
        if isinstance(source, PolicySource):
            self.document = source.document
            self.source: PolicySource | None = source
        else:
            self.document = source
            self.source = None
        problems = compile_problems(self.document)
        if problems:
            raise PolicyError(
                [f"{self._where(path)}{dotted(path)}: {message}" for path, message in problems]
            )
        self._registry = _Registry(self.document)
        self._validators = PayloadValidators.build(self.document)
        self._rules = {
            name: (self.source.rule(("tools", name)) if self.source else f"tools.{name}")
            for name in self.document.tools
        }
        self._agents: dict[tuple[str, frozenset[str] | None], AgentPolicy] = {}

    def _where(self, path: tuple[str | int, ...]) -> str:
        where = self.source.locate(path) if self.source is not None else ""
        return f"{where}: " if where else ""

    @classmethod
    def load(cls, directory: Path | str) -> CompiledPolicy:
        return cls(load_policy_source(directory))

    def for_agent(self, agent_id: str, tools: frozenset[str] | None = None) -> AgentPolicy | None:
        """The agent's compiled policy, or None for an agent the policy does not name.

        ``tools`` (e.g. from a token) narrows the agent's allowlist: a tool the agent
        does not have grants nothing.
        """
        agent = self.document.agents.get(agent_id)
        if agent is None:
            return None
        key = (agent_id, tools)
        policy = self._agents.get(key)
        if policy is None:
            if len(self._agents) >= AGENT_CACHE_LIMIT:
                self._agents.clear()
            names = [t for t in agent.tools if t in self.document.tools]
            if tools is not None:
                names = [t for t in names if t in tools]
            policy = self._agents[key] = AgentPolicy(
                agent_id,
                [(t, self.document.tools[t]) for t in names],
                frozenset(t for t in agent.tenants if t in self._registry.tenants),
                self._registry,
                self._validators,
                self._rules,
            )
        return policy

    def deny_all(self, agent_id: str) -> AgentPolicy:
        """A policy that refuses everything, saying the agent is not in the policy."""
        return AgentPolicy(
            agent_id,
            [],
            frozenset(),
            self._registry,
            None,
            {},
            unknown_reason=f"agent {agent_id} is not in the policy; every action is denied",
        )


def compile_policy(source: PolicySource | PolicyDocument) -> CompiledPolicy:
    return CompiledPolicy(source)


def compile_problems(document: PolicyDocument) -> list[tuple[tuple[str | int, ...], str]]:
    """Tools the index could not enforce as written (the loader cannot see these)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for name, tool in document.tools.items():
        for i, template in enumerate(tool.topics):
            levels = template.split("/")
            where = ("tools", name, "topics", i)
            if (
                tool.payload in _TYPED_KINDS
                and "{device}" not in levels
                and ("{group}" not in levels or tool.payload == "command")
            ):
                problems.append(
                    (
                        where,
                        f"payload kind {tool.payload} is validated against a device type, so "
                        "the topic needs {device}"
                        + (" or {group}" if tool.payload != "command" else ""),
                    )
                )
            if tool.payload == "command" and "{command}" not in levels:
                problems.append((where, "payload kind command needs {command} in the topic"))
            if tool.verb == "publish" and "{command}" in levels and tool.payload != "command":
                problems.append(
                    (
                        where,
                        "a publish topic with {command} needs payload kind command, so the "
                        "command's payload is validated",
                    )
                )
    return problems
