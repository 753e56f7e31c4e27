"""Property: a subscription the policy allows never delivers a topic that receive would deny.

For a wildcard filter F that decide_subscribe allows, every concrete topic t that
matches F and uses registry names only must be allowed by decide_receive(t). Topics are
built from registry names and the templates' literal words; a topic is left out only if
it fits one of the agent's templates solely by putting a name where the registry has no
such name (a device of another tenant under {device}, a group name under {device}, ...):
such names may slip through a wildcard and are dropped by decide_receive, which is exact.
A cross-tenant topic is not left out (the tenant is registered), so a wildcard that
reached another tenant would fail the property.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy
from iot_guard.policy_models import PolicyDocument

POLICY_DIR = Path(__file__).parents[2] / "device_policies"

# A second policy with the shapes the example lacks: '#' and '+' in templates, an agent
# with every tenant, {group} and {command} in subscribe templates, overlapping templates.
EXTRA = """
tenants:
  acme:
    devices: {d1: {type: thermostat}, d2: {type: thermostat}, d3: {type: sensor}}
    groups: {g1: [d1, d2], g2: [d3]}
  globex:
    devices: {d1: {type: sensor}, d9: {type: thermostat}}
    groups: {g1: [d9]}
device_types:
  thermostat:
    commands: {reboot: {risk: high}, identify: {}}
  sensor:
    commands: {identify: {}}
tools:
  telemetry: {verb: subscribe, topic: 'tenants/{tenant}/devices/{device}/telemetry'}
  any_reply: {verb: subscribe, topic: 'tenants/{tenant}/devices/{device}/shadow/+/accepted'}
  get_only: {verb: subscribe, topic: 'tenants/{tenant}/devices/{device}/shadow/get/rejected'}
  logs: {verb: subscribe, topic: 'tenants/{tenant}/logs/#'}
  groups: {verb: subscribe, topic: 'tenants/{tenant}/groups/{group}/config/push'}
  identify_echo:
    verb: subscribe
    topic: 'tenants/{tenant}/devices/{device}/commands/{command}'
    conditions: {commands: [identify]}
  public: {verb: subscribe, topic: 'public/+/news'}
agents:
  all-tenants:
    tenants: [acme, globex]
    tools: [telemetry, any_reply, get_only, logs, groups, identify_echo, public]
  acme-only:
    tenants: [acme]
    tools: [telemetry, any_reply, logs, groups, identify_echo, public]
"""

# Compiled once at import; the folder is only needed while loading (no /tmp leftovers).
with tempfile.TemporaryDirectory(prefix="iot-guard-policy-") as _extra_dir:
    (Path(_extra_dir) / "policy.yaml").write_text(EXTRA)
    POLICIES = [CompiledPolicy.load(POLICY_DIR), CompiledPolicy.load(_extra_dir)]
AGENTS: list[AgentPolicy] = []
DOCS: dict[int, PolicyDocument] = {}
TEMPLATES: list[list[str]] = []
VOCAB: set[str] = set()
for compiled in POLICIES:
    doc = compiled.document
    for agent_id in doc.agents:
        agent = compiled.for_agent(agent_id)
        assert agent is not None
        AGENTS.append(agent)
        DOCS[id(agent)] = doc
    for tool in doc.tools.values():
        for template in tool.topics:
            levels = template.split("/")
            TEMPLATES.append(levels)
            VOCAB.update(x for x in levels if not x.startswith("{") and x not in ("+", "#"))
    for tenant_name, tenant in doc.tenants.items():
        VOCAB.add(tenant_name)
        VOCAB.update(tenant.devices)
        VOCAB.update(tenant.groups)
    for device_type in doc.device_types.values():
        VOCAB.update(device_type.commands)
WORDS = sorted(VOCAB)

word = st.sampled_from(WORDS)


def registered_topics(doc: PolicyDocument) -> list[str]:
    """Every template of every tool (publish too) with registered names of every tenant."""
    fill = ["zz", WORDS[0]]  # for template '+' / '#'
    out: set[str] = set()
    for tool in doc.tools.values():
        for template in tool.topics:
            partial: list[tuple[list[str], dict[str, str]]] = [([], {})]
            for part in template.split("/"):
                grown: list[tuple[list[str], dict[str, str]]] = []
                for levels, bound in partial:
                    tenant = doc.tenants.get(bound.get("tenant", ""))
                    if part == "{tenant}":
                        names = list(doc.tenants)
                    elif part == "{device}":
                        names = list(tenant.devices) if tenant else []
                    elif part == "{group}":
                        names = list(tenant.groups) if tenant else []
                    elif part == "{command}":
                        kind = tenant.devices[bound["device"]].type if tenant else ""
                        names = list(doc.device_types[kind].commands) if kind else []
                    elif part in ("+", "#"):
                        names = fill
                    else:
                        names = [part]
                    for name in names:
                        grown.append((levels + [name], {**bound, part.strip("{}"): name}))
                    if part == "#":
                        grown.append((levels, bound))  # '#' also matches the parent level
                partial = grown
            out.update("/".join(levels) for levels, _ in partial)
    return sorted(out)


UNIVERSE = {id(compiled.document): registered_topics(compiled.document) for compiled in POLICIES}


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching [MQTT-4.7.1-2] [MQTT-4.7.1-3], written plainly for the oracle."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


@st.composite
def template_filters(draw: st.DrawFn, doc: PolicyDocument) -> str:
    """A filter shaped like one of the policy's templates: variables mostly filled with
    names registered there (of any tenant), some levels widened to '+' or cut by '#'."""
    template = draw(st.sampled_from([t for tool in doc.tools.values() for t in tool.topics]))
    out: list[str] = []
    tenant = None
    device_type = ""
    for level in template.split("/"):
        # per 20: variables are widened to '+' often, literals seldom (else most filters
        # would be refused at once and the property would rarely be exercised). Hypothesis
        # favours the ends of a range, so 0 is the plain choice and 19 the rare '#'.
        choice = draw(st.integers(0, 19))
        variable = level.startswith("{")
        if level == "#" or choice == 19:
            out.append("#")
            break
        if level == "+" or choice >= (10 if variable else 16):
            out.append("+")
            continue
        if choice == 9:
            out.append(draw(word))  # anything, registered or not
            continue
        names: list[str] = [level]
        if level == "{tenant}":
            names = list(doc.tenants)
        elif level == "{device}" and tenant is not None:
            names = list(tenant.devices)
        elif level == "{group}" and tenant is not None:
            names = list(tenant.groups)
        elif level == "{command}" and device_type:
            names = list(doc.device_types[device_type].commands)
        elif level.startswith("{"):
            names = WORDS
        value = draw(st.sampled_from(names)) if names else draw(word)
        if level == "{tenant}":
            tenant = doc.tenants[value]
        if level == "{device}" and tenant is not None:
            device_type = tenant.devices[value].type
        out.append(value)
    return "/".join(out)


@st.composite
def random_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(word, st.just("+")), min_size=1, max_size=8))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@st.composite
def topics_matching(draw: st.DrawFn, topic_filter: str) -> str:
    out: list[str] = []
    for level in topic_filter.split("/"):
        if level == "+":
            out.append(draw(word))
        elif level == "#":
            out.extend(draw(st.lists(word, max_size=3)))  # '#' also matches the parent
        else:
            out.append(level)
    return "/".join(out) if out else draw(word)


def _fits(doc: PolicyDocument, template: str, topic: str, registered: bool) -> bool:
    """A plain matcher, independent of the trie: does topic fit the template? With
    registered=True a variable takes only names the registry has at that place."""
    levels = topic.split("/")
    bound: dict[str, str] = {}
    for i, part in enumerate(template.split("/")):
        if part == "#":
            return True
        if i >= len(levels):
            return False
        value = levels[i]
        if part.startswith("{"):
            var = part[1:-1]
            bound[var] = value
            if registered:
                tenant = doc.tenants.get(bound.get("tenant", ""))
                if var == "tenant" and tenant is None:
                    return False
                if var == "device" and (tenant is None or value not in tenant.devices):
                    return False
                if var == "group" and (tenant is None or value not in tenant.groups):
                    return False
                if var == "command":
                    device = tenant.devices.get(bound["device"]) if tenant else None
                    if device is None or value not in doc.device_types[device.type].commands:
                        return False
        elif part != "+" and part != value:
            return False
    return len(template.split("/")) == len(levels)


def unregistered_slip(agent: AgentPolicy, topic: str) -> bool:
    """Does topic fit the agent's templates only through names the registry lacks?"""
    doc = DOCS[id(agent)]
    templates = [
        t
        for name in agent.tools
        if doc.tools[name].verb == "subscribe"
        for t in doc.tools[name].topics
    ]
    if any(_fits(doc, t, topic, registered=True) for t in templates):
        return False
    return any(_fits(doc, t, topic, registered=False) for t in templates)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent=st.sampled_from(AGENTS), data=st.data())
def test_allowed_subscription_implies_receive_allowed(
    agent: AgentPolicy, data: st.DataObject
) -> None:
    doc = DOCS[id(agent)]
    topic_filter = data.draw(st.one_of(template_filters(doc), random_filters()), "filter")
    decision = agent.decide_subscribe(topic_filter)
    if not decision.allowed:
        return
    candidates = [t for t in UNIVERSE[id(doc)] if matches(topic_filter, t)]
    candidates += [data.draw(topics_matching(topic_filter)) for _ in range(5)]
    for topic in candidates:
        if unregistered_slip(agent, topic):
            continue
        received = agent.decide_receive(topic)
        assert received.allowed, (topic_filter, topic, received.reason)


@settings(max_examples=300, deadline=None)
@given(agent=st.sampled_from(AGENTS), data=st.data())
def test_a_concrete_filter_is_allowed_exactly_when_its_topic_is_receivable(
    agent: AgentPolicy, data: st.DataObject
) -> None:
    topic_filter = data.draw(template_filters(DOCS[id(agent)]), "filter")
    if "+" in topic_filter.split("/") or topic_filter.endswith("#"):
        return
    assert (
        agent.decide_subscribe(topic_filter).allowed == agent.decide_receive(topic_filter).allowed
    )


def test_the_generators_reach_allowed_wildcard_filters() -> None:
    """Guards the property against vacuity: some wildcard filters are allowed."""
    allowed = {
        f
        for agent in AGENTS
        for f in (
            "tenants/acme/devices/+/telemetry",
            "tenants/+/devices/+/shadow/+/accepted",
            "tenants/acme/logs/#",
            "public/+/news",
        )
        if agent.decide_subscribe(f).allowed
    }
    assert allowed == {
        "tenants/acme/devices/+/telemetry",
        "tenants/+/devices/+/shadow/+/accepted",
        "tenants/acme/logs/#",
        "public/+/news",
    }
