"""The policy's approvals section and tool rollouts: models and loader checks (file:line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from iot_guard.policy.loader import load_policy_source

from .policy_files import line_of, problems_of

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_example_fleet_has_a_three_level_chain_and_a_rollout() -> None:
    doc = load_policy_source(POLICY_DIR).document
    chain = doc.approvals.chains["fleet-change"]
    assert [level.approvers for level in chain.levels] == [["alice"], ["bob"], ["carol"]]
    assert {a: v.levels for a, v in doc.approvals.approvers.items()} == {
        "alice": [1], "bob": [2], "carol": [3]
    }
    assert "secops" in doc.approvals.admins
    tool = doc.tools["group_config_push"]
    assert tool.conditions.approval_chain == "fleet-change"
    assert tool.rollout is not None and tool.rollout.abort is not None
    assert tool.rollout.device_topic == "tenants/{tenant}/devices/{device}/config/patch"


def test_unknown_approver_in_a_chain_names_file_and_line(fleet: Path) -> None:
    path = fleet / "approvals.yaml"
    edit(path, "{approvers: [bob], timeout_s: 300}", "{approvers: [dave], timeout_s: 300}")
    problems = problems_of(fleet)
    assert problems == [
        f"{path}:{line_of(path, '[dave]')}: approvals.chains.fleet-change.levels.1.approvers.0: "
        "unknown approver 'dave'"
    ]


def test_an_approver_listed_at_a_level_they_may_not_act_at_is_refused(fleet: Path) -> None:
    path = fleet / "approvals.yaml"
    edit(path, "{approvers: [carol], timeout_s: 300}", "{approvers: [alice], timeout_s: 300}")
    (problem,) = problems_of(fleet)
    level_1 = line_of(path, "- {approvers: [alice], timeout_s: 300}")
    assert problem.startswith(f"{path}:{level_1 + 2}:")  # the level 3 entry
    assert "approver 'alice' may not act at level 3" in problem


def test_an_agent_identity_can_never_be_an_approver(fleet: Path) -> None:
    path = fleet / "approvals.yaml"
    edit(path, "    alice:\n", "    ops-agent:\n      levels: [1]\n    alice:\n")
    (problem,) = problems_of(fleet)
    assert problem == (
        f"{path}:{line_of(path, 'ops-agent:')}: approvals.approvers.ops-agent: "
        "'ops-agent' is also an agent; an agent never approves"
    )


def test_a_tool_naming_an_unknown_chain_is_refused(fleet: Path) -> None:
    path = fleet / "tools.yaml"
    edit(path, "approval_chain: fleet-change", "approval_chain: nobody")
    assert problems_of(fleet) == [
        f"{path}:{line_of(path, 'approval_chain: nobody')}: "
        "tools.group_config_push.conditions.approval_chain: unknown approval chain 'nobody'"
    ]


def test_levels_and_timeouts_are_bounded(fleet: Path) -> None:
    path = fleet / "approvals.yaml"
    edit(path, "levels: [1]", "levels: [4]")
    edit(path, "{approvers: [bob], timeout_s: 300}", "{approvers: [bob], timeout_s: 0}")
    problems = problems_of(fleet)
    assert any(p.startswith(f"{path}:{line_of(path, 'levels: [4]')}:") and "less than or equal to 3"
               in p for p in problems), problems
    assert any("levels.1.timeout_s" in p and "greater than 0" in p for p in problems), problems


def test_a_chain_has_at_most_three_levels(fleet: Path) -> None:
    path = fleet / "approvals.yaml"
    edit(path, "        - {approvers: [carol], timeout_s: 300}\n",
         "        - {approvers: [carol], timeout_s: 300}\n"
         "        - {approvers: [carol], timeout_s: 300}\n")
    (problem,) = problems_of(fleet)
    assert "approvals.chains.fleet-change.levels" in problem and "at most 3" in problem


def test_rollout_needs_a_group_tool_and_device_templates(fleet: Path) -> None:
    path = fleet / "tools.yaml"
    edit(path, "device_topic: tenants/{tenant}/devices/{device}/config/patch",
         "device_topic: tenants/{tenant}/config/patch")
    (problem,) = problems_of(fleet)
    assert problem.startswith(f"{path}:")
    assert "tools.group_config_push.rollout" in problem and "needs {device}" in problem


def test_rollout_abort_percentage_is_bounded(fleet: Path) -> None:
    path = fleet / "tools.yaml"
    edit(path, "failure_pct: 40", "failure_pct: 140")
    (problem,) = problems_of(fleet)
    assert problem.startswith(f"{path}:{line_of(path, 'failure_pct: 140')}:")
    assert "rollout.abort.failure_pct" in problem
