"""The compiled policy: per-agent tries and topic maps, and the per-packet decisions.

Compilation happens once (principle 5). Each agent gets two tries (``trie.py``), one
for its publish tools and one for its subscribe tools, built from those tools' topic
templates only, and, for templates without wildcards, an index by topic shape
(``shapes.py``), so the first packet on a topic is a lookup and a few checks.
At CONNECT every topic the agent may publish to or receive on is decided in advance
(``_TopicMaps``, shared by agents with the same tools and tenants): such a packet is
one dict lookup however large the fleet. Other topics are decided on demand and
cached per agent (bounded); the payload check still runs for every publish that
carries one (``pubmatch.check_payload``). Subscription filters are judged by ``coverage.py``;
every refusal is worded by ``wording.py``.

Deny by default: a topic no tool matches is denied, and every decision says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

from ..mqtt.reason_codes import ReasonCode
from ..mqtt.topics import split_shared, topic_filter_problem, topic_name_problem
from ..payloads import FreeFormValidator, PayloadValidators
from ..policy_models import (
    RISK_ORDER,
    RISKS,
    TYPED_PAYLOADS,
    PolicyDocument,
    Tool,
    risk_above,
    risk_max,
)
from . import wording
from .coverage import first_granting
from .decision import READ, WRITE, Decision, Verdict, decision, deny
from .loader import PolicyError, PolicySource, dotted, load_policy_source
from .pubmatch import PubMatch, check_payload
from .registry import Bindings, Registry, Scope, resource_of
from .schemas import free_form_checkers
from .shapes import Miss, ShapeIndex
from .trie import End, Node, match, miss

# Per-agent topic caches are cleared when they reach this size: a bound on memory
# that an agent probing random topics cannot push further.
CACHE_LIMIT = 10_000
# Distinct (agent, token tool list) pairs kept compiled.
AGENT_CACHE_LIMIT = 1_024
# Topics per agent and direction decided in advance (see AgentPolicy._precompute).
EXACT_LIMIT = 4_096

_V = TypeVar("_V")
# Enum members as module constants: a global read is cheaper than a class attribute.
_ALLOW, _SUCCESS = Verdict.ALLOW, ReasonCode.SUCCESS


def _kept(cache: dict[str, _V], topic: str, value: _V) -> dict[str, _V]:
    """The on-demand cache to keep once ``topic`` is decided: ``cache`` with it added,
    or, when ``cache`` is full or is the shared empty one (``_NOT_YET``), a new one
    holding only it (a full cache is dropped whole). Written out in ``decide_publish``
    and ``decide_receive``, the per-packet calls.

    Only on-demand answers live here: the topics decided at CONNECT are in the agent's
    own maps, which nothing evicts, so dropping a cache touches no precomputed entry and
    costs the same however many topics the agent may use. A limit of 0 keeps one topic
    (the last), which a bench uses to make every new topic a miss.
    """
    if cache is _NOT_YET or len(cache) >= CACHE_LIMIT:
        return {topic: value}
    cache[topic] = value
    return cache


# The maps of a tool list that reaches no topic one way (an agent without publish tools,
# one the policy does not name): one empty dict shared by all of them, never written
# (only on-demand caches are), so its lookup reads memory every such agent keeps hot.
_NO_PUBLISH: dict[str, _PubTopic] = {}
_NO_RECEIVE: dict[str, Decision] = {}
# An agent's on-demand caches until it has something to keep: one shared empty dict,
# never written (``_kept`` gives the agent its own), so an agent that never meets a
# topic outside its maps has none (three dicts less per agent) and a lookup in it
# reads memory that stays hot.
_NOT_YET: dict[str, Any] = {}


class _Shared:
    """What every agent of one compiled policy shares: registry, validators, rule
    locations, and the compiled tool lists (tries and shape indexes depend only on the
    agent's tools, in order: agents with the same list share them)."""

    __slots__ = ("registry", "validators", "rules", "radius_rules", "free", "toolsets", "maps")

    def __init__(
        self,
        registry: Registry,
        validators: PayloadValidators | None,
        rules: dict[str, str],
        radius_rules: dict[str, str],
        free: dict[str, FreeFormValidator],
    ):
        self.registry = registry
        self.validators = validators
        self.rules = rules
        self.radius_rules = radius_rules
        self.free = free
        self.toolsets: dict[tuple[str, ...], _Toolset] = {}
        self.maps: dict[tuple[tuple[str, ...], frozenset[str]], _TopicMaps] = {}

    def toolset(self, tools: list[tuple[str, Tool]]) -> _Toolset:
        key = tuple(name for name, _ in tools)
        found = self.toolsets.get(key)
        if found is None:
            if len(self.toolsets) >= AGENT_CACHE_LIMIT:
                self.toolsets.clear()
                self.maps.clear()  # built from those toolsets' templates
            found = self.toolsets[key] = _Toolset(tools, self)
        return found

    def topic_maps(
        self, tools: tuple[str, ...], tenants: frozenset[str], compiled: _Toolset
    ) -> _TopicMaps:
        """The precomputed topic maps of this tool list over these tenants (shared)."""
        key = (tools, tenants)
        found = self.maps.get(key)
        if found is None:
            if len(self.maps) >= AGENT_CACHE_LIMIT:
                self.maps.clear()
            scope = Scope(self.registry, tenants)
            found = self.maps[key] = _TopicMaps(compiled, scope, self.registry)
        return found


class _Toolset:
    """One ordered tool list compiled: two tries, two shape indexes, subscribe facts."""

    __slots__ = (
        "publish", "subscribe", "pub_shapes", "recv_shapes", "sub_orders", "any_shared",
        "publishes",
    )

    def __init__(self, tools: list[tuple[str, Tool]], shared: _Shared):
        self.publish = Node()
        self.subscribe = Node()
        self.any_shared = False
        self.sub_orders: list[int] = []
        templates: dict[str, list[tuple[list[str], End]]] = {"publish": [], "subscribe": []}
        for order, (name, tool) in enumerate(tools):
            cond = tool.conditions
            end = End(
                order=order,
                tool=name,
                rule=shared.rules.get(name, f"tools.{name}"),
                payload=tool.payload,
                risk=tool.risk,
                max_qos=cond.max_qos,
                retain=cond.retain,
                shared=cond.shared_subscription,
                approval_above=cond.approval_above,
                commands=frozenset(cond.commands) if cond.commands is not None else None,
                uses_command=any("{command}" in t for t in tool.topics),
                approval_above_devices=cond.approval_above_devices,
                radius_rule=shared.radius_rules.get(name),
                free=shared.free.get(name),
            )
            trie = self.publish if tool.verb == "publish" else self.subscribe
            for template in tool.topics:
                trie.insert(template.split("/"), end)
                templates[tool.verb].append((template.split("/"), end))
            if tool.verb == "subscribe":
                self.sub_orders.append(order)
                if cond.shared_subscription:
                    self.any_shared = True
        self.publishes = bool(templates["publish"])
        # Shape indexes answer for concrete topics when no template has a wildcard
        # (publish templates never do); otherwise the trie walks.
        self.pub_shapes = (
            None if self.publish.has_wildcards() else ShapeIndex(templates["publish"])
        )
        self.recv_shapes = (
            None if self.subscribe.has_wildcards() else ShapeIndex(templates["subscribe"])
        )


class _TopicMaps:
    """Every topic one tool list may use over one set of tenants, decided in advance.

    Built when the first agent with that tool list and those tenants connects and shared
    by every agent with the same ones (the answers name no agent): ``publish`` maps a
    topic to its ``_PubTopic``, ``receive`` to its allow decision. A list whose
    templates reach more than ``EXACT_LIMIT`` topics one way leaves that map empty
    (bounded memory and CONNECT time): those topics are decided on demand.
    """

    __slots__ = ("scope", "publish", "receive")

    def __init__(self, compiled: _Toolset, scope: Scope, registry: Registry):
        self.scope = scope
        self.publish: dict[str, _PubTopic] = _NO_PUBLISH
        self.receive: dict[str, Decision] = _NO_RECEIVE
        # One "tenant/device" string per resource, whichever topics and tools name it.
        names: dict[Bindings, str | None] = {}

        def resource(b: Bindings) -> str | None:
            name = names.get(b)
            if name is None:
                name = names[b] = resource_of(b)
            return name

        if compiled.pub_shapes is not None:
            published = compiled.pub_shapes.enumerate(scope, EXACT_LIMIT)
            if published:
                self.publish = {
                    topic: _PubTopic(tuple(
                        PubMatch(e, b, topic, registry, resource(b)) for e, b in found
                    ))
                    for topic, found in published.items()
                }
        if compiled.recv_shapes is not None:
            received = compiled.recv_shapes.enumerate(scope, EXACT_LIMIT)
            if received:
                self.receive = {
                    topic: _allow_receive(found[0][0], found[0][1], resource(found[0][1]))
                    for topic, found in received.items()
                }


def _allow_receive(end: End, b: Bindings, resource: str | None = None) -> Decision:
    return decision(
        _ALLOW, end.allowed_reason, _SUCCESS, READ, end.tool, end.rule,
        resource if resource is not None else resource_of(b), end.risk, end.max_qos,
    )


def _settle(m: PubMatch, risk: str) -> Decision:
    """A publish that passed the QoS, retain and payload checks: held when its risk
    (one class higher past the tool's blast radius) is above the tool's approval
    threshold, else allowed."""
    raised_from: str | None = None
    if m.raised:
        raised_from, risk = risk, risk_above(risk)
    above = m.end.approval_above
    if above is not None and RISK_ORDER[risk] > RISK_ORDER[above]:
        return m.hold(risk, raised_from)
    return m.allow(risk)


class _PubTopic:
    """A concrete topic some publish tools of the agent match: the matches (tool order)
    and, when the topic alone settles an empty publish (the first match's payload kind
    is none, so no payload check runs), that answer and the QoS and retain flag up to
    which it holds: the common publish is then one lookup and three comparisons."""

    __slots__ = ("quick", "quick_qos", "quick_retain", "matches")

    def __init__(self, matches: tuple[PubMatch, ...]):
        self.matches = matches
        first = matches[0]
        end = first.end
        self.quick: Decision | None = None
        self.quick_qos = -1
        self.quick_retain = False
        if end.payload == "none":
            # decide_publish's loop stops at the first match when it passes: its QoS and
            # retain checks are the conditions below, and it runs no payload check for
            # an empty payload of kind none.
            self.quick = _settle(first, end.risk)
            self.quick_qos = end.max_qos
            self.quick_retain = end.retain


class AgentPolicy:
    """One agent's compiled allowlist; ``decide_*`` are the per-packet calls.

    A decision about a topic the agent may use is one lookup in the maps decided at
    CONNECT (``_TopicMaps``); any other topic is decided on demand and kept in a bounded
    per-agent cache, so the first packet on a topic costs the same whatever the size of
    the fleet.
    """

    # Slots: the per-packet calls read a few attributes; no instance dict to go through.
    # CPython lays slots out in sorted name order, and this object's header starts a
    # 64-byte cache line (GC header + 19 slots: 192-byte pymalloc blocks, each at 48
    # mod 64 in its pool). So what every packet reads sorts first and shares the
    # header's line, which the call touches anyway (one memory fetch per packet instead
    # of two when thousands of agents' handles are out of the CPU cache): the agent's
    # name (``_agent``, a second reference to ``agent_id``, for a refusal's words), the
    # maps decided at CONNECT ("_decided_*") and the on-demand caches ("_demand_*").
    # The second line holds what deciding a topic on demand reads ("_denial" to
    # "_sub_orders"). tests/unit/test_policy_first_packet.py checks order and size.
    __slots__ = (
        "_agent", "_decided_pub", "_decided_recv", "_demand_pub", "_demand_recv",
        "_demand_sub", "_denial", "_pub_shapes", "_publish", "_publishes", "_recv_shapes",
        "_scope", "_shared_subs", "_sub_orders", "_subscribe", "_validators", "agent_id",
        "tenants", "tools",
    )

    def __init__(
        self,
        agent_id: str,
        tools: list[tuple[str, Tool]],
        tenants: frozenset[str],
        shared: _Shared,
        unknown_reason: str | None = None,
    ):
        self.agent_id = self._agent = agent_id
        self.tools: tuple[str, ...] = tuple(name for name, _ in tools)
        self.tenants = tenants
        self._validators = shared.validators
        self._denial = unknown_reason
        compiled = shared.toolset(tools)
        self._publish = compiled.publish
        self._subscribe = compiled.subscribe
        self._pub_shapes = compiled.pub_shapes
        self._recv_shapes = compiled.recv_shapes
        self._sub_orders = compiled.sub_orders
        self._shared_subs = compiled.any_shared
        self._publishes = compiled.publishes
        # Decided on demand (bounded by CACHE_LIMIT): refusals name the agent.
        self._demand_pub: dict[str, _PubTopic | Decision] = _NOT_YET
        self._demand_sub: dict[str, Decision] = _NOT_YET
        self._demand_recv: dict[str, Decision] = _NOT_YET
        if unknown_reason is None:
            maps = shared.topic_maps(self.tools, tenants, compiled)
            self._scope = maps.scope
            self._decided_pub = maps.publish
            self._decided_recv = maps.receive
        else:
            self._scope = Scope(shared.registry, tenants)
            self._decided_pub = _NO_PUBLISH
            self._decided_recv = _NO_RECEIVE

    def __repr__(self) -> str:
        return f"AgentPolicy({self._agent!r}, tools={list(self.tools)})"

    def clear_cache(self) -> None:
        """Forget every answer decided on demand (the maps decided at CONNECT stay)."""
        self._demand_pub = self._demand_sub = self._demand_recv = _NOT_YET

    def _concrete(
        self, root: Node, shapes: ShapeIndex | None, levels: list[str], first_only: bool
    ) -> tuple[list[tuple[End, Bindings]], Miss | None]:
        """The templates a concrete topic matches (tool order), and why none did."""
        if shapes is not None:
            return shapes.match(levels, self._scope, first_only)
        found = match(root, levels, self._scope)
        return found, (None if found else miss(root, levels, self._scope))

    # -- publish ---------------------------------------------------------------------------

    def decide_publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> Decision:
        """May this agent publish ``payload`` to ``topic``? Allow, deny or hold.

        The first tool (agent order) whose checks all pass decides; else the most
        telling refusal (a payload problem over a QoS/retain one).
        """
        entry = self._decided_pub.get(topic)
        if entry is None:
            cache = self._demand_pub
            found = cache.get(topic)
            if found is None:
                found = self._publish_entry(topic)
                # _kept, inline: a call less per new topic.
                if cache is _NOT_YET or len(cache) >= CACHE_LIMIT:
                    self._demand_pub = {topic: found}
                else:
                    cache[topic] = found
            if isinstance(found, Decision):
                return found
            entry = found
        quick = entry.quick
        if (
            quick is not None
            and not payload
            and qos <= entry.quick_qos
            and (not retain or entry.quick_retain)
        ):
            return quick
        refusal: Decision | None = None
        refusal_rank = -1
        for m in entry.matches:
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
                verdict_risk, problem, field_rule = check_payload(m, self._validators, payload)
                if problem is not None:
                    if refusal_rank < 2:
                        refusal, refusal_rank = m.payload_denied(problem, field_rule), 2
                    continue
                risk = risk_max(risk, verdict_risk)
            return _settle(m, risk)
        assert refusal is not None  # matches is never empty
        return refusal

    def _publish_entry(self, topic: str) -> _PubTopic | Decision:
        # A malformed name is 0x90 whoever asks: the codec's rules, checked first.
        problem = topic_name_problem(topic)
        if problem is not None:
            return deny(problem, WRITE, ReasonCode.TOPIC_NAME_INVALID)
        if self._denial is not None:
            return deny(self._denial, WRITE)
        if topic[0] == "$":  # not empty: topic_name_problem refused that
            return deny(wording.reserved(self._agent, "publish", topic), WRITE)
        if not self._publishes:
            # No publish tool (an observer): no template matches, none to say why
            # (_no_tool's words for that, inline: a call less per refused topic).
            return deny(wording.no_tool(self._agent, "publish", topic, ""), WRITE)
        found, refused = self._concrete(self._publish, self._pub_shapes, topic.split("/"), False)
        if not found:
            return self._no_tool("publish", topic, refused, WRITE)
        return _PubTopic(tuple(PubMatch(end, b, topic, self._scope.registry) for end, b in found))

    def _no_tool(self, verb: str, topic: str, refused: Miss | None, action: str) -> Decision:
        if refused is None:  # no template to say why: the agent's tenants go unnamed
            return deny(wording.no_tool(self._agent, verb, topic, ""), action)
        return deny(wording.no_tool_miss(self._agent, verb, topic, self._scope, refused), action)

    def devices_reached(self, topic: str) -> list[str]:
        """"tenant/device" of every device a publish on ``topic`` reaches: the device a
        device topic names, the members of a group topic's group (registry order); []
        when no publish tool of this agent matches the topic. A frozen list: approvals
        bind to it."""
        entry = self._decided_pub.get(topic) or self._demand_pub.get(topic)
        if entry is None:
            entry = self._publish_entry(topic)
        if isinstance(entry, Decision):
            return []
        return list(self._scope.registry.devices_reached(entry.matches[0].bindings))

    # -- subscribe --------------------------------------------------------------------------

    def decide_subscribe(self, topic_filter: str, qos: int = 0) -> Decision:
        """May this agent subscribe to ``topic_filter``? ``max_qos`` caps the granted QoS."""
        cache = self._demand_sub
        decision = cache.get(topic_filter)
        if decision is None:
            decision = self._subscribe_decision(topic_filter)
            self._demand_sub = _kept(cache, topic_filter, decision)
        return decision

    def _subscribe_decision(self, topic_filter: str) -> Decision:
        # A malformed filter ($share/ form included) is 0x8F whoever asks: the codec's rules.
        problem = topic_filter_problem(topic_filter)
        if problem is not None:
            return deny(problem, READ, ReasonCode.TOPIC_FILTER_INVALID)
        if self._denial is not None:
            return deny(self._denial, READ)
        share_name, inner = split_shared(topic_filter)
        shared = share_name is not None
        levels = inner.split("/")
        if inner.startswith("$"):
            return deny(wording.reserved(self._agent, "subscribe", inner), READ)
        if shared and not self._shared_subs:
            return deny(
                wording.no_shared_tools(self._agent, inner),
                READ,
                ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            )
        scope, root, orders = self._scope, self._subscribe, self._sub_orders
        ends, detail, bindings = first_granting(scope, self._agent, root, levels, orders, shared)
        if ends is None and shared:
            plain, _, _ = first_granting(scope, self._agent, root, levels, orders, False)
            if plain is not None:
                return deny(
                    wording.not_shared({e.tool for e in plain}, inner),
                    READ,
                    ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                )
        if ends is None:
            return deny(wording.may_not_subscribe(self._agent, inner, detail), READ)
        first = min(ends, key=lambda e: e.order)
        # One tool granting it alone: its cap. Several covering parts together: what
        # all of them allow.
        return Decision(
            Verdict.ALLOW,
            first.allowed_reason,
            ReasonCode.SUCCESS,
            READ,
            first.tool,
            first.rule,
            resource_of(bindings),
            RISKS[max(RISK_ORDER[e.risk] for e in ends)],
            min(e.max_qos for e in ends),
        )

    # -- receive ---------------------------------------------------------------------------

    def decide_receive(self, topic: str) -> Decision:
        """May the agent be delivered a PUBLISH on this concrete topic?"""
        decision = self._decided_recv.get(topic)
        if decision is None:
            cache = self._demand_recv
            decision = cache.get(topic)
            if decision is None:
                decision = self._receive_decision(topic)
                # _kept, inline: a call less per new topic.
                if cache is _NOT_YET or len(cache) >= CACHE_LIMIT:
                    self._demand_recv = {topic: decision}
                else:
                    cache[topic] = decision
        return decision

    def _receive_decision(self, topic: str) -> Decision:
        problem = topic_name_problem(topic)
        if problem is not None:
            return deny(problem, READ, ReasonCode.TOPIC_NAME_INVALID)
        if self._denial is not None:
            return deny(self._denial, READ)
        if topic[0] == "$":  # not empty: topic_name_problem refused that
            return deny(wording.reserved(self._agent, "receive", topic), READ)
        levels = topic.split("/")
        shapes = self._recv_shapes
        if shapes is not None:
            found, refused = shapes.match(levels, self._scope, True)
        else:
            found, refused = self._concrete(self._subscribe, None, levels, True)
        if found:
            return _allow_receive(*found[0])
        if refused is not None:  # _no_tool, inline: the common refusal of a first packet
            return deny(
                wording.no_tool_miss(self._agent, "receive", topic, self._scope, refused), READ
            )
        return deny(wording.no_tool(self._agent, "receive", topic, ""), READ)


class CompiledPolicy:
    """The whole policy compiled once; ``for_agent`` hands out per-agent policies.

    ``version`` is a hex SHA-256 over the policy's source (every YAML file's path and
    bytes, and the schema files its tools name): the same files give the same version,
    any change gives another (an approval is bound to it).
    """

    def __init__(self, source: PolicySource | PolicyDocument):
        if isinstance(source, PolicySource):
            self.document = source.document
            self.source: PolicySource | None = source
        else:
            self.document = source
            self.source = None
        problems = [
            f"{self._where(path)}{dotted(path)}: {message}"
            for path, message in compile_problems(self.document)
        ]
        free, schema_problems, schema_bytes = free_form_checkers(self.document, self.source)
        problems += schema_problems
        if problems:
            raise PolicyError(problems)
        self.version = _version(self.document, self.source, schema_bytes)
        self._registry = Registry(self.document)
        rule = self.source.rule if self.source else dotted
        self._shared = _Shared(
            self._registry,
            # Each field's rule, so a refusal names the field that refused, not only the tool.
            PayloadValidators.build(self.document, rule_of=rule),
            {name: rule(("tools", name)) for name in self.document.tools},
            {
                name: rule(("tools", name, "conditions", "approval_above_devices"))
                for name, tool in self.document.tools.items()
                if tool.conditions.approval_above_devices is not None
            },
            free,
        )
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
                self._shared,
            )
        return policy

    def deny_all(self, agent_id: str) -> AgentPolicy:
        """A policy that refuses everything, saying the agent is not in the policy."""
        return AgentPolicy(
            agent_id, [], frozenset(), self._shared, unknown_reason=wording.not_in_policy(agent_id)
        )


def _version(
    document: PolicyDocument, source: PolicySource | None, schemas: dict[str, bytes]
) -> str:
    digest = hashlib.sha256()
    if source is not None and source.directory is not None:
        for path in source.files:
            digest.update(str(path.relative_to(source.directory)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    else:
        digest.update(document.model_dump_json().encode() + b"\0")
    for name in sorted(schemas):
        digest.update(f"schema:{name}".encode() + b"\0" + schemas[name] + b"\0")
    return digest.hexdigest()


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
                tool.payload in TYPED_PAYLOADS
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
