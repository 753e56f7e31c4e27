"""The policy loader: merged sections, and problems that name file:line and the path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.loader import PolicyError, load_policy, load_policy_source

from .policy_files import line_of, problems_of

POLICY_DIR = Path(__file__).parents[2] / "device_policies"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A copy of the example fleet the test may break."""
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    return target


def test_example_fleet_loads_with_every_registry_entry() -> None:
    source = load_policy_source(POLICY_DIR)
    doc = source.document
    assert sorted(doc.tenants) == ["acme", "globex"]
    assert sorted(doc.tenants["acme"].devices) == [f"therm-{i:03d}" for i in range(1, 11)]
    assert sorted(doc.agents) == ["globex-agent", "observer", "ops-agent"]
    assert [p.name for p in source.files] == [
        "agents.yaml",
        "anomaly.yaml",
        "approvals.yaml",
        "device_types.yaml",
        "limits.yaml",
        "tenants.yaml",
        "tools.yaml",
    ]
    assert load_policy(POLICY_DIR) == doc


def test_locate_gives_the_key_line_and_falls_back_to_the_nearest_ancestor() -> None:
    source = load_policy_source(POLICY_DIR)
    tools = POLICY_DIR / "tools.yaml"
    line = line_of(tools, "  shadow_update:")
    assert source.locate(("tools", "shadow_update")) == f"{tools}:{line}"
    # conditions.max_qos is not written for shadow_update: its nearest ancestor is named.
    conditions = line_of(tools, "      approval_above: medium")
    assert source.locate(("tools", "shadow_update", "conditions", "max_qos")) == (
        f"{tools}:{conditions - 1}"
    )
    # `topic:` shorthand: topics.0 points at the topic line.
    assert source.locate(("tools", "read_telemetry", "topics", 0)) == (
        f"{tools}:{line_of(tools, 'topic: tenants/{tenant}/devices/{device}/telemetry')}"
    )
    agents = POLICY_DIR / "agents.yaml"
    assert source.locate(("agents", "observer", "tools", 2)) == (
        f"{agents}:{line_of(agents, 'tools: [read_telemetry, read_status, read_shadow]')}"
    )


def test_bad_type_names_file_line_and_path(fleet: Path) -> None:
    tools = fleet / "tools.yaml"
    text = tools.read_text().replace("      approval_above: medium\n", "      max_qos: high\n", 1)
    tools.write_text(text)
    problems = problems_of(fleet)
    line = line_of(tools, "max_qos: high")
    assert problems == [
        f"{tools}:{line}: tools.shadow_update.conditions.max_qos: Input should be a valid integer"
    ]


def test_unknown_key_is_refused_where_it_is_written(fleet: Path) -> None:
    agents = fleet / "agents.yaml"
    agents.write_text(
        agents.read_text().replace("    tenants: [acme]\n", "    tenant: [acme]\n", 1)
    )
    problems = problems_of(fleet)
    line = line_of(agents, "tenant: [acme]")
    assert f"{agents}:{line}: agents.ops-agent.tenant: unknown key" in problems
    # ...and the required field it replaced is reported at the agent.
    assert f"{agents}:{line - 2}: agents.ops-agent.tenants: required field is missing" in problems


def test_unknown_tool_is_a_reference_problem_at_its_list_item(fleet: Path) -> None:
    agents = fleet / "agents.yaml"
    agents.write_text(agents.read_text().replace("read_status, read_shadow]", "read_statuz]"))
    problems = problems_of(fleet)
    line = line_of(agents, "read_statuz")
    assert problems == [f"{agents}:{line}: agents.observer.tools.1: unknown tool 'read_statuz'"]


def test_duplicate_key_in_one_file_is_an_error(fleet: Path) -> None:
    tenants = fleet / "tenants.yaml"
    text = tenants.read_text().replace(
        "      therm-002: {type: thermostat}\n",
        "      therm-002: {type: thermostat}\n      therm-001: {type: heater}\n",
    )
    tenants.write_text(text)
    problems = problems_of(fleet)
    dup = line_of(tenants, "therm-001: {type: heater}")
    first = line_of(tenants, "therm-001: {type: thermostat}")
    assert problems == [
        f"{tenants}:{dup}: tenants.acme.devices.therm-001: duplicate key "
        f"(first defined at line {first})"
    ]


def test_yaml_syntax_error_carries_yamls_mark_and_other_files_still_report(fleet: Path) -> None:
    write(fleet, "broken.yaml", "tools:\n  x: [unclosed\n  y: 1\n")
    agents = fleet / "agents.yaml"
    agents.write_text(agents.read_text().replace("read_status, read_shadow]", "nope]"))
    problems = problems_of(fleet)
    assert any(p.startswith(f"{fleet / 'broken.yaml'}:3: YAML syntax error") for p in problems), (
        problems
    )
    # Reference checks would be noise while a file is missing: only the syntax error.
    assert len(problems) == 1


def test_unquoted_off_in_an_enum_says_to_quote_it(fleet: Path) -> None:
    types = fleet / "device_types.yaml"
    types.write_text(types.read_text().replace('enum: ["off", "heat"', 'enum: [off, "heat"'))
    problems = problems_of(fleet)
    line = line_of(types, "enum: [off,")
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f"{types}:{line}: device_types.thermostat.config.mode.enum.0: "
        "Input should be a valid string"
    )
    assert 'quote it, e.g. "off"' in problems[0]


def test_same_tenant_in_two_files_names_both_places(fleet: Path) -> None:
    extra = write(fleet, "zz-tenants-2.yml", "# more\ntenants:\n  acme:\n    devices: {}\n")
    problems = problems_of(fleet)
    first = f"{fleet / 'tenants.yaml'}:{line_of(fleet / 'tenants.yaml', '  acme:')}"
    assert problems == [f"{extra}:3: tenants.acme: defined twice (also at {first})"]


def test_a_policy_in_a_sub_folder_is_not_merged_but_listed(fleet: Path) -> None:
    """Only the top level is the policy: a folder inside it (an old copy, another
    environment's policy) is never merged by surprise; the loader lists what it skipped."""
    nested = write(fleet, "staging/agents.yaml", "agents:\n  intruder:\n    tenants: [acme]\n")
    source = load_policy_source(fleet)
    assert "intruder" not in source.document.agents
    assert source.ignored == [nested]
    assert nested not in source.files


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """An unknown tool is reported with, not after, an invalid entry elsewhere; and
    pydantic's "Value error," prefix never reaches the operator."""
    write(tmp_path, "tenants.yaml", "tenants:\n  acme: {}\n")
    write(
        tmp_path,
        "tools.yaml",
        "tools:\n  bad:\n    verb: publish\n    topic: a/#\n    payload: none\n"
        "  good:\n    verb: publish\n    topic: a/b\n    payload: none\n",
    )
    agents = write(
        tmp_path, "agents.yaml", "agents:\n  bot:\n    tenants: [acme, nowhere]\n"
        "    tools: [good, bad, missing]\n"
    )
    problems = problems_of(tmp_path)
    assert problems == [
        f"{tmp_path / 'tools.yaml'}:2: tools.bad: topic template 'a/#': wildcard in topic "
        "name 'a/#' [MQTT-3.3.2-2]; '+' and '#' are only allowed in subscribe templates",
        f"{agents}:3: agents.bot.tenants.1: unknown tenant 'nowhere'",
        f"{agents}:4: agents.bot.tools.2: unknown tool 'missing'",
    ]


def test_unknown_section_and_non_mapping_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "agent:\n  x: {}\n")
    write(tmp_path, "b.yaml", "- just\n- a list\n")
    problems = problems_of(tmp_path)
    assert problems == [
        f"{tmp_path / 'a.yaml'}:1: agent: unknown section; expected one of "
        "device_types, tenants, tools, agents, approvals, limits, anomaly",
        f"{tmp_path / 'b.yaml'}:1: a policy file must be a mapping of sections "
        "('device_types', 'tenants', 'tools', 'agents', 'approvals', 'limits', "
        "'anomaly')",
    ]


def test_all_problems_are_collected_not_just_the_first(fleet: Path) -> None:
    tools = fleet / "tools.yaml"
    text = tools.read_text().replace("verb: subscribe", "verb: listen", 2)
    tools.write_text(text.replace("risk: medium", "risk: severe"))
    problems = problems_of(fleet)
    assert len(problems) == 3, problems
    assert sum("verb: Input should be 'publish' or 'subscribe'" in p for p in problems) == 2
    assert any("group_config_push.risk" in p for p in problems)


def test_template_problem_points_at_the_tool(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tools.yaml",
        "tools:\n  bad:\n    verb: publish\n    topic: tenants/{tenant}/#\n",
    )
    problems = problems_of(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: tools.bad: topic template")
    # The MQTT rule is iot_guard.mqtt.topics' [MQTT-3.3.2-2]; the template grammar adds
    # which verb may use wildcards.
    assert "[MQTT-3.3.2-2]" in problems[0]
    assert "'+' and '#' are only allowed in subscribe templates" in problems[0]


def test_anchors_and_merge_keys_are_allowed(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        "tools:\n"
        "  a: &base {verb: subscribe, topic: x/y, conditions: {max_qos: 2}}\n"
        "  b:\n    <<: *base\n    topic: x/z\n"
        "agents:\n  bot: {tenants: [t], tools: [a, b]}\n"
        "tenants:\n  t: {}\n",
    )
    doc = load_policy(tmp_path)
    assert doc.tools["b"].topics == ["x/z"]
    assert doc.tools["b"].conditions.max_qos == 2


def test_empty_directory_loads_and_denies_everything(tmp_path: Path) -> None:
    doc = load_policy(tmp_path)
    assert doc.agents == {} and doc.tools == {}
    assert CompiledPolicy.load(tmp_path).for_agent("ops-agent") is None


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a directory"]


def test_compile_refuses_a_typed_payload_without_a_device_in_the_topic(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tools.yaml",
        "tools:\n  t:\n    verb: publish\n    payload: config_patch\n"
        "    topics:\n      - tenants/{tenant}/config\n",
    )
    with pytest.raises(PolicyError) as info:
        CompiledPolicy.load(tmp_path)
    assert info.value.problems == [
        f"{path}:6: tools.t.topics.0: payload kind config_patch is validated against a device "
        "type, so the topic needs {device} or {group}"
    ]


def test_a_field_bound_must_be_a_finite_number(tmp_path: Path) -> None:
    """YAML reads .nan and .inf as floats: a NaN bound would refuse every value with no
    reason a person can act on, and an infinite one cannot bound an integer field."""
    path = write(
        tmp_path, "types.yaml",
        "device_types:\n  t:\n    config:\n      a:\n        type: number\n"
        "        minimum: .nan\n      b:\n        type: integer\n        maximum: .inf\n",
    )
    problems = problems_of(tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}:6: device_types.t.config.a.minimum: "), problems
    assert problems[1].startswith(f"{path}:9: device_types.t.config.b.maximum: "), problems
    assert all("finite" in p for p in problems), problems
