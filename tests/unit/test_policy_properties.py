"""Property: a subscription the policy allows never delivers a topic that receive would deny.

For a wildcard filter F that decide_subscribe allows, every concrete topic t that
matches F and uses registry names (and the templates' literal words) only must be
allowed by decide_receive(t). Unregistered names may slip through a wildcard; those
are dropped by decide_receive, which is exact, so they are outside the property.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy

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

_extra_dir = Path(tempfile.mkdtemp(prefix="iot-guard-policy-"))
(_extra_dir / "policy.yaml").write_text(EXTRA)

POLICIES = [CompiledPolicy.load(POLICY_DIR), CompiledPolicy.load(_extra_dir)]
AGENTS: list[AgentPolicy] = []
TEMPLATES: list[list[str]] = []
VOCAB: set[str] = set()
for compiled in POLICIES:
    doc = compiled.document
    for agent_id in doc.agents:
        agent = compiled.for_agent(agent_id)
        assert agent is not None
        AGENTS.append(agent)
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


@st.composite
def template_filters(draw: st.DrawFn) -> str:
    """A filter shaped like a template: variables filled, some levels widened."""
    levels = list(draw(st.sampled_from(TEMPLATES)))
    out: list[str] = []
    for level in levels:
        if level == "#":
            out.append("#")
            break
        choice = draw(st.integers(0, 9))
        if choice == 0:
            out.append("#")
            break
        if choice <= 3 or level == "+":
            out.append("+" if choice <= 3 else draw(word))
        elif level.startswith("{"):
            out.append(draw(word))
        else:
            out.append(level)
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    agent=st.sampled_from(AGENTS),
    topic_filter=st.one_of(template_filters(), random_filters()),
    data=st.data(),
)
def test_allowed_subscription_implies_receive_allowed(
    agent: AgentPolicy, topic_filter: str, data: st.DataObject
) -> None:
    decision = agent.decide_subscribe(topic_filter)
    if not decision.allowed:
        return
    for _ in range(10):
        topic = data.draw(topics_matching(topic_filter))
        if topic.startswith("/") or "//" in topic:  # empty levels are not registry names
            continue
        received = agent.decide_receive(topic)
        assert received.allowed, (topic_filter, topic, received.reason)


@settings(max_examples=300, deadline=None)
@given(agent=st.sampled_from(AGENTS), topic_filter=template_filters())
def test_a_concrete_filter_is_allowed_exactly_when_its_topic_is_receivable(
    agent: AgentPolicy, topic_filter: str
) -> None:
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
