"""The first packet on a topic (decided on demand) through its short paths gets exactly
the answer the general path gives: the same refusal words, reason code and fields.

The general path is spelled out here from the pieces every other decision uses (the
trie's walk, ``wording.miss_detail`` + ``wording.no_tool``, ``deny``), so a short path
that drifts from it (a word, a field, a template order) fails.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from iot_guard.mqtt.reason_codes import ReasonCode
from iot_guard.policy import compiler, shapes, wording
from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy
from iot_guard.policy.decision import READ, WRITE, Decision, deny
from iot_guard.policy.registry import COMMAND, DEVICE, GROUP, TENANT
from iot_guard.policy.trie import End, match, miss

from .test_policy_decide import agent_of, small_policy
from .test_policy_shapes import POLICY_DIR, topics


def general_receive(agent: AgentPolicy, topic: str) -> Decision:
    """What decide_receive answers for a plain topic outside the agent's maps, by the
    trie (not the shape index) and the composed wording."""
    levels = topic.split("/")
    found = match(agent._subscribe, levels, agent._scope)
    if found:
        decided = agent._decided_recv.get(topic)
        assert decided is not None  # an allowed topic was decided at CONNECT
        return decided
    refused = miss(agent._subscribe, levels, agent._scope)
    detail = wording.miss_detail(agent.agent_id, agent._scope.shown(), refused)
    return deny(wording.no_tool(agent.agent_id, "receive", topic, detail), READ)


def test_a_refused_first_packet_is_worded_as_the_general_path_words_it() -> None:
    policy = CompiledPolicy.load(POLICY_DIR)
    asked = 0
    for agent_id in policy.document.agents:
        agent = agent_of(policy, agent_id)
        extra = [f"tenants/{t}/devices/therm-999/telemetry" for t in ("acme", "globex", "x")]
        for topic in itertools.chain(topics(seed=11, count=1500), extra):
            if not topic or "+" in topic or topic.startswith("$"):
                continue
            agent.clear_cache()
            assert agent.decide_receive(topic) == general_receive(agent, topic), topic
            asked += 1
    assert asked > 1000
    assert shapes._NONE == []  # the shared "nothing matched" list is never appended to


def test_the_short_wording_is_the_composed_wording() -> None:
    end = End(order=0, tool="cmd", rule="tools.cmd", payload="command", risk="low",
              max_qos=1, retain=False, shared=False, approval_above=None,
              commands=frozenset({"reboot", "identify"}), uses_command=True)
    policy = CompiledPolicy.load(POLICY_DIR)
    agent = agent_of(policy, "ops-agent")
    scope = agent._scope
    cases = [
        (end, TENANT, "globex", (None, None, None, None)),
        (end, DEVICE, "therm-999", ("acme", None, None, None)),
        (end, GROUP, "floor-9", ("acme", None, None, None)),
        (end, COMMAND, "explode", ("acme", "therm-001", None, None)),
        (end, -1, "", ("acme", "therm-001", None, None)),
    ]
    for verb, case in itertools.product(("receive", "publish"), cases):
        composed = wording.no_tool(
            "ops-agent", verb, "a/b", wording.miss_detail("ops-agent", scope.shown(), case)
        )
        assert wording.no_tool_miss("ops-agent", verb, "a/b", scope, case) == composed
    no_tenants = CompiledPolicy.load(POLICY_DIR).deny_all("ghost")._scope
    case = (end, TENANT, "acme", (None, None, None, None))
    assert wording.no_tool_miss("ghost", "receive", "t", no_tenants, case).endswith(
        "(its tenants: none)"
    )


def observer_policy(tmp_path: Path) -> CompiledPolicy:
    return small_policy(
        tmp_path,
        "tenants: {a: {devices: {d: {type: t}}}}\ndevice_types: {t: {}}\n"
        "tools:\n"
        "  look: {verb: subscribe, topic: 'x/{tenant}/{device}/v'}\n"
        "  poke: {verb: publish, topic: 'x/{tenant}/{device}/p', payload: none}\n"
        "agents:\n"
        "  watcher: {tenants: [a], tools: [look]}\n"
        "  other: {tenants: [a], tools: [look]}\n"
        "  worker: {tenants: [a], tools: [look, poke]}\n"
    )


def test_agents_without_a_topic_one_way_share_one_empty_map_nobody_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = observer_policy(tmp_path)
    watcher, worker = agent_of(policy, "watcher"), agent_of(policy, "worker")
    ghost = policy.deny_all("ghost")
    assert watcher._decided_pub is compiler._NO_PUBLISH is ghost._decided_pub
    assert ghost._decided_recv is compiler._NO_RECEIVE
    assert worker._decided_pub and worker._decided_pub is not compiler._NO_PUBLISH
    monkeypatch.setattr(compiler, "CACHE_LIMIT", 0)  # every new topic stored after a clear
    for agent in (watcher, ghost):
        for topic in ("x/a/d/p", "x/a/d/v", "x/b/d/p", "$SYS/x", "x/+/d/p"):
            agent.decide_publish(topic, b"")
            agent.decide_receive(topic)
    refused = watcher.decide_publish("x/a/d/p", b"")
    assert refused == deny("agent watcher has no tool that allows publishing to x/a/d/p", WRITE)
    assert ghost.decide_receive("x/a/d/v") == deny(
        "agent ghost is not in the policy; every action is denied", READ
    )
    assert ghost.decide_receive("x/+/v").reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert not compiler._NO_PUBLISH and not compiler._NO_RECEIVE
    assert worker.decide_publish("x/a/d/p", b"").allowed


def test_templates_ending_alike_at_other_depths_are_told_apart(tmp_path: Path) -> None:
    """The shape index looks a topic up by its last level: templates with that last
    level at another depth, and templates ending in a variable, must not answer."""
    policy = small_policy(
        tmp_path,
        "tenants: {a: {devices: {d: {type: t}, e: {type: t}}}}\ndevice_types: {t: {}}\n"
        "tools:\n"
        "  short: {verb: subscribe, topic: 'x/{tenant}/v'}\n"
        "  long: {verb: subscribe, topic: 'x/{tenant}/{device}/v'}\n"
        "  open: {verb: subscribe, topic: 'y/{tenant}/{device}'}\n"
        "agents:\n  g: {tenants: [a], tools: [short, long, open]}\n"
    )
    agent = agent_of(policy, "g")
    assert agent._recv_shapes is not None
    assert agent.decide_receive("x/a/v").tool == "short"
    assert agent.decide_receive("x/a/d/v").tool == "long"
    assert agent.decide_receive("y/a/e").tool == "open"
    # "v" is a last level the index knows, at depth 3 and 4: depth 4 through 'open'?
    assert agent.decide_receive("y/a/v").reason == general_receive(agent, "y/a/v").reason
    for topic in ("x/a/d/e/v", "x/b/v", "x/a/z/v", "y/a/z", "v", "x/a/d", "y/a/d/v"):
        agent.clear_cache()
        assert agent.decide_receive(topic) == general_receive(agent, topic), topic
        assert not agent.decide_receive(topic).allowed


def test_the_slots_every_packet_reads_share_the_handle_header_line() -> None:
    """CPython lays __slots__ out in sorted order after the 16-byte object header; with
    the 16-byte GC header the object fits a 192-byte pymalloc block, and blocks of that
    size start at 48 mod 64 in a pool (48-byte pool header), so the object header
    starts a cache line and the first six slots share it."""
    layout = sorted(AgentPolicy.__slots__)
    assert layout[:6] == [
        "_agent", "_decided_pub", "_decided_recv", "_demand_pub", "_demand_recv", "_demand_sub"
    ]
    assert 176 < AgentPolicy.__basicsize__ + 16 <= 192  # the 192-byte size class


def test_an_agent_gets_its_own_on_demand_cache_only_when_it_has_something_to_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = observer_policy(tmp_path)
    watcher, other = agent_of(policy, "watcher"), agent_of(policy, "other")
    for agent in (watcher, other):
        assert agent._demand_pub is agent._demand_recv is agent._demand_sub is compiler._NOT_YET
    assert watcher.decide_receive("x/a/d/v").allowed  # decided at CONNECT: nothing kept
    assert watcher._demand_recv is compiler._NOT_YET
    first = watcher.decide_receive("x/a/e/v")
    again = watcher.decide_receive("x/a/e/v")
    assert again is first and not first.allowed
    assert list(watcher._demand_recv) == ["x/a/e/v"]
    assert watcher.decide_publish("x/a/d/q", b"") is watcher.decide_publish("x/a/d/q", b"")
    assert watcher.decide_subscribe("x/b/#") is watcher.decide_subscribe("x/b/#")
    assert list(watcher._demand_pub) == ["x/a/d/q"] and list(watcher._demand_sub) == ["x/b/#"]
    # The shared empty cache is never written, whoever decides what.
    assert not compiler._NOT_YET and other._demand_recv is compiler._NOT_YET
    theirs = other.decide_receive("x/a/e/v")
    assert theirs.reason == first.reason.replace("agent watcher", "agent other")
    assert other._demand_recv is not watcher._demand_recv
    monkeypatch.setattr(compiler, "CACHE_LIMIT", 3)
    for i in range(10):
        watcher.decide_receive(f"x/a/e{i}/v")
        assert 1 <= len(watcher._demand_recv) <= 3
    assert "x/a/e9/v" in watcher._demand_recv
    watcher.clear_cache()
    assert watcher._demand_recv is watcher._demand_pub is compiler._NOT_YET
    assert not compiler._NOT_YET
