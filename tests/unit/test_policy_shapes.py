"""The shape index answers exactly what the trie answers for concrete topics (the same
templates in tool order, and a refusal naming the same kind of reason)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from iot_guard.policy import compiler
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision
from iot_guard.policy.pubmatch import PubMatch
from iot_guard.policy.trie import match

from .test_policy_decide import agent_of, small_policy

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def topics(seed: int = 3, count: int = 3000) -> list[str]:
    rng = random.Random(seed)
    words = {
        0: ["tenants", "x", ""],
        1: ["acme", "globex", "nobody", "+"],
        2: ["devices", "groups", "dev"],
        3: ["therm-001", "therm-010", "therm-101", "floor-1", "lab", "therm-999"],
        4: ["shadow", "config", "commands", "telemetry", "status"],
        5: ["get", "update", "patch", "push", "result", "identify", "reboot", "accepted"],
        6: ["accepted", "rejected", "delta", "x"],
    }
    out = []
    for _ in range(count):
        n = rng.randint(1, 7)
        out.append("/".join(rng.choice(words[i]) for i in range(n)))
    return out


def test_shapes_and_trie_agree_on_every_agent_and_topic() -> None:
    policy = CompiledPolicy.load(POLICY_DIR)
    for agent_id in policy.document.agents:
        agent = agent_of(policy, agent_id)
        for root, shapes in ((agent._publish, agent._pub_shapes),
                             (agent._subscribe, agent._recv_shapes)):
            assert shapes is not None  # the example has no wildcard templates
            for topic in itertools.chain(topics(), ["tenants/acme/groups/floor-1/config/push"]):
                levels = topic.split("/")
                expected = match(root, levels, agent._scope)
                found, refused = shapes.match(levels, agent._scope)
                assert [(e.tool, b) for e, b in found] == [(e.tool, b) for e, b in expected]
                if not found and refused is not None:
                    # The refused template fits the topic's literal levels.
                    assert refused[1] in (-1, 0, 1, 2, 3) and refused[0].tool in agent.tools


def test_a_wildcard_template_keeps_the_trie(tmp_path: Path) -> None:
    policy = small_policy(
        tmp_path,
        "tenants: {a: {devices: {d: {type: t}}}}\ndevice_types: {t: {}}\n"
        "tools:\n"
        "  one: {verb: subscribe, topic: 'x/{tenant}/{device}/v'}\n"
        "  all: {verb: subscribe, topic: 'x/{tenant}/#'}\n"
        "agents:\n  g: {tenants: [a], tools: [one, all]}\n"
    )
    agent = agent_of(policy, "g")
    assert agent._recv_shapes is None and agent._pub_shapes is not None
    assert agent.decide_receive("x/a/d/v").tool == "one"
    assert agent.decide_receive("x/a/anything/else").tool == "all"
    assert not agent.decide_receive("x/b/d/v").allowed


def test_precomputed_topics_are_what_the_trie_decides() -> None:
    """Every topic decided in advance at CONNECT gets the answer an on-demand decision
    gives (same verdict, tool, rule, resource, risk, QoS cap), for every agent."""
    policy = CompiledPolicy.load(POLICY_DIR)
    for agent_id in policy.document.agents:
        agent = agent_of(policy, agent_id)
        assert agent._decided_recv
        for topic, decided in agent._decided_recv.items():
            agent._demand_recv.clear()
            assert agent._receive_decision(topic) == decided, topic
        for topic, entry in agent._decided_pub.items():
            again = agent._publish_entry(topic)
            assert not isinstance(again, Decision)
            assert [(m.end.tool, m.bindings) for m in again.matches] == [
                (m.end.tool, m.bindings) for m in entry.matches
            ], topic
    ops = agent_of(policy, "ops-agent")
    # 10 devices x (telemetry, status, 6 shadow/result topics) for acme's agent.
    assert len(ops._decided_recv) == 80
    assert "tenants/acme/groups/floor-1/config/push" in ops._decided_pub


def test_an_agent_past_the_limit_decides_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiler, "EXACT_LIMIT", 5)
    policy = CompiledPolicy.load(POLICY_DIR)
    ops = agent_of(policy, "ops-agent")
    assert not ops._decided_recv and not ops._decided_pub
    assert ops.decide_receive("tenants/acme/devices/therm-001/telemetry").allowed
    assert not ops.decide_receive("tenants/globex/devices/therm-101/telemetry").allowed


def _without_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile later policies with no precomputed empty-publish answers: every publish
    then goes through decide_publish's checks loop."""
    original = compiler._PubTopic.__init__

    def slow(self: compiler._PubTopic, matches: tuple[PubMatch, ...]) -> None:
        original(self, matches)
        self.quick = None

    monkeypatch.setattr(compiler._PubTopic, "__init__", slow)


QUICK_POLICY = """
tenants:
  a: {devices: {d1: {type: x}, d2: {type: x}}, groups: {all: [d1, d2]}}
  b: {devices: {d1: {type: x}}}
device_types:
  x: {}
tools:
  ping: {verb: publish, topic: 'p/{tenant}/{device}/ping', payload: none, risk: low}
  poke:
    verb: publish
    topic: 'p/{tenant}/{device}/poke'
    payload: none
    risk: high
    conditions: {approval_above: medium, max_qos: 0}
  wave:
    verb: publish
    topic: 'p/{tenant}/groups/{group}/wave'
    payload: none
    risk: low
    conditions: {approval_above: low, approval_above_devices: 1, retain: true}
  also: {verb: publish, topic: 'p/{tenant}/{device}/ping', payload: any}
agents:
  one: {tenants: [a], tools: [ping, poke, wave, also]}
  two: {tenants: [a], tools: [ping, poke, wave, also]}
  three: {tenants: [a, b], tools: [also, ping]}
"""


@pytest.mark.parametrize("where", ["example", "small"])
def test_an_empty_publish_answered_in_advance_is_what_the_checks_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The answer an exact topic keeps for an empty publish (allow, hold, a blast radius
    raise) equals the checks loop's for every QoS, retain flag and payload, and topics
    decided on demand (hostile ones included) agree too."""
    if where == "small":
        (tmp_path / "p.yaml").write_text(QUICK_POLICY)
        directory = tmp_path
    else:
        directory = POLICY_DIR
    fast = CompiledPolicy.load(directory)
    agents = {agent_id: fast.for_agent(agent_id) for agent_id in fast.document.agents}
    _without_quick(monkeypatch)  # the maps are built at for_agent: fast's are built
    slow = CompiledPolicy.load(directory)
    quick_seen: set[tuple[str, str | None]] = set()
    for agent_id, a in agents.items():
        b = slow.for_agent(agent_id)
        assert a is not None and b is not None
        assert all(e.quick is None for e in b._decided_pub.values())
        quick_seen.update(
            (e.quick.verdict, e.quick.risk) for e in a._decided_pub.values() if e.quick
        )
        for topic in itertools.chain(a._decided_pub, topics(count=300), HOSTILE):
            for qos, retain, payload in itertools.product(
                (0, 1, 2, 3), (False, True), (b"", b"{}", b"x")
            ):
                assert a.decide_publish(topic, payload, qos, retain) == b.decide_publish(
                    topic, payload, qos, retain
                ), (agent_id, topic, qos, retain, payload)
    if where == "small":
        # Allowed, held for its risk, and held after a blast-radius raise.
        assert quick_seen == {("allow", "low"), ("hold", "high"), ("hold", "medium")}
    else:
        assert ("allow", "low") in quick_seen  # shadow_get


HOSTILE = [
    "", "#", "+", "/", "//", "$SYS/x", "$guard/p/a/d1/ping", "p/a/d1/ping/", "/p/a/d1/ping",
    "p//d1/ping", "p/a//ping", "p/+/d1/ping", "p/a/#", "p/a/d1/ping\x00", "p/a/d1/pïng",
    "tenants/acme/devices/therm-001/shadow/get" + "/x" * 5000, "p/" + "a" * 70000,
    "tenants/acme/devices/therm-001/shadow/get\n", " tenants/acme/devices/therm-001/status",
]


def test_the_topic_maps_are_complete_and_agree_with_the_trie_on_hostile_topics() -> None:
    """Every topic an agent may use is in its maps (a topic outside them is refused,
    with the trie's refusal), and hostile topics are decided as the trie decides."""
    policy = CompiledPolicy.load(POLICY_DIR)
    for agent_id in policy.document.agents:
        agent = agent_of(policy, agent_id)
        for topic in itertools.chain(topics(seed=11), HOSTILE):
            levels = topic.split("/")
            for exact, root, verb in (
                (agent._decided_pub, agent._publish, "publish"),
                (agent._decided_recv, agent._subscribe, "receive"),
            ):
                valid = topic and not set("+#\x00") & set(topic) and len(topic) < 65536
                trie = match(root, levels, agent._scope) if valid and topic[0] != "$" else []
                assert (topic in exact) == bool(trie), (agent_id, verb, topic)
            received = agent.decide_receive(topic)
            assert received.allowed == (topic in agent._decided_recv), topic
            if topic not in agent._decided_recv:
                assert received == agent._receive_decision(topic)


def test_agents_with_the_same_tools_and_tenants_share_their_topic_maps(tmp_path: Path) -> None:
    policy = small_policy(tmp_path, QUICK_POLICY)
    one, two, three = (agent_of(policy, a) for a in ("one", "two", "three"))
    assert one._decided_pub is two._decided_pub and one._decided_pub
    assert three._decided_pub is not one._decided_pub
    # Shared answers name no agent; refusals (decided on demand) name the one asking.
    assert one.decide_publish("p/a/d1/ping", b"") is two.decide_publish("p/a/d1/ping", b"")
    assert "agent one " in one.decide_publish("p/b/d1/ping", b"").reason
    assert "agent two " in two.decide_publish("p/b/d1/ping", b"").reason
    assert three.decide_publish("p/b/d1/ping", b"x").allowed


def test_a_full_on_demand_cache_keeps_the_precomputed_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compiler, "CACHE_LIMIT", 0)
    policy = CompiledPolicy.load(POLICY_DIR)
    ops = agent_of(policy, "ops-agent")
    exact = dict(ops._decided_recv)
    for i in range(5):
        assert not ops.decide_receive(f"junk/{i}").allowed
        # A limit of 0 keeps only the last topic decided on demand.
        assert list(ops._demand_recv) == [f"junk/{i}"]
    assert ops._decided_recv == exact
    assert ops.decide_receive("tenants/acme/devices/therm-001/telemetry").allowed
    assert not ops.decide_publish("junk/p", b"").allowed and ops._demand_pub
    assert not ops.decide_subscribe("junk/#").allowed and ops._demand_sub
    ops.clear_cache()
    assert not ops._demand_recv and not ops._demand_pub and not ops._demand_sub
    assert ops._decided_recv == exact and ops._decided_pub
    assert ops.decide_receive("tenants/acme/devices/therm-001/telemetry").allowed


def test_an_agent_without_publish_tools_is_refused_as_the_index_would(tmp_path: Path) -> None:
    policy = small_policy(tmp_path, QUICK_POLICY.replace(
        "  three: {tenants: [a, b], tools: [also, ping]}",
        "  three: {tenants: [a, b], tools: [also, ping]}\n  four: {tenants: [a], tools: [look]}",
    ).replace(
        "tools:\n", "tools:\n  look: {verb: subscribe, topic: 'p/{tenant}/{device}/ping'}\n", 1
    ))
    four = agent_of(policy, "four")
    assert not four._publishes and not four._decided_pub
    for topic in itertools.chain(["p/a/d1/ping", "p/b/d1/ping"], topics(count=300), HOSTILE):
        short = four._publish_entry(topic)
        four._publishes = True  # the shape index's way, for comparison
        try:
            assert short == four._publish_entry(topic), topic
        finally:
            four._publishes = False
    assert four.decide_receive("p/a/d1/ping").allowed
