"""The shape index answers exactly what the trie answers for concrete topics (the same
templates in tool order, and a refusal naming the same kind of reason)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision
from iot_guard.policy.trie import match

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
        agent = policy.for_agent(agent_id)
        assert agent is not None
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
    (tmp_path / "p.yaml").write_text(
        "tenants: {a: {devices: {d: {type: t}}}}\ndevice_types: {t: {}}\n"
        "tools:\n"
        "  one: {verb: subscribe, topic: 'x/{tenant}/{device}/v'}\n"
        "  all: {verb: subscribe, topic: 'x/{tenant}/#'}\n"
        "agents:\n  g: {tenants: [a], tools: [one, all]}\n"
    )
    agent = CompiledPolicy.load(tmp_path).for_agent("g")
    assert agent is not None and agent._recv_shapes is None and agent._pub_shapes is not None
    assert agent.decide_receive("x/a/d/v").tool == "one"
    assert agent.decide_receive("x/a/anything/else").tool == "all"
    assert not agent.decide_receive("x/b/d/v").allowed


def test_precomputed_topics_are_what_the_trie_decides() -> None:
    """Every topic decided in advance at CONNECT gets the answer an on-demand decision
    gives (same verdict, tool, rule, resource, risk, QoS cap), for every agent."""
    policy = CompiledPolicy.load(POLICY_DIR)
    for agent_id in policy.document.agents:
        agent = policy.for_agent(agent_id)
        assert agent is not None and agent._recv_exact
        for topic, decided in agent._recv_exact.items():
            agent._recv_cache.clear()
            assert agent._receive_decision(topic) == decided, topic
        for topic, entry in agent._pub_exact.items():
            again = agent._publish_entry(topic)
            assert not isinstance(again, Decision)
            assert [(m.end.tool, m.bindings) for m in again.matches] == [
                (m.end.tool, m.bindings) for m in entry.matches
            ], topic
    ops = policy.for_agent("ops-agent")
    assert ops is not None
    # 10 devices x (telemetry, status, 6 shadow/result topics) for acme's agent.
    assert len(ops._recv_exact) == 80
    assert "tenants/acme/groups/floor-1/config/push" in ops._pub_exact


def test_an_agent_past_the_limit_decides_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    from iot_guard.policy import compiler

    monkeypatch.setattr(compiler, "EXACT_LIMIT", 5)
    policy = CompiledPolicy.load(POLICY_DIR)
    ops = policy.for_agent("ops-agent")
    assert ops is not None and not ops._recv_exact and not ops._pub_exact
    assert ops.decide_receive("tenants/acme/devices/therm-001/telemetry").allowed
    assert not ops.decide_receive("tenants/globex/devices/therm-101/telemetry").allowed
