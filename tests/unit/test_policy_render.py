"""One rendering of a Decision: the audit record, the $guard/events payload and the
`policy explain` output (text and JSON) show the same fields with the same values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Decision
from iot_guard.session.feedback import (
    audit_record,
    audit_view,
    decision_view,
    event_payload,
    explain_json,
    explain_text,
)

POLICY_DIR = Path(__file__).parents[2] / "device_policies"
DEV = "tenants/acme/devices/therm-001"


def decisions() -> list[Decision]:
    ops = CompiledPolicy.load(POLICY_DIR).for_agent("ops-agent")
    assert ops is not None
    return [
        ops.decide_publish(f"{DEV}/shadow/update", b'{"state":{"desired":{"mode":"heat"}}}'),
        ops.decide_publish(f"{DEV}/shadow/update", b'{"state":{"desired":{"mode":"boil"}}}'),
        ops.decide_publish("tenants/acme/groups/floor-1/config/push",
                           b'{"firmware_channel":"beta"}'),
        ops.decide_subscribe("tenants/acme/devices/+/telemetry"),
        ops.decide_receive("tenants/globex/devices/therm-101/telemetry"),
    ]


@pytest.mark.parametrize("decision", decisions(), ids=lambda d: d.verdict.value + d.reason[:20])
def test_every_output_shows_the_same_view(decision: Decision) -> None:
    view = decision_view(decision)
    assert view["decision"] == decision.verdict.value and view["reason"] == decision.reason
    assert type(view["reason_code"]) is int  # JSON-ready, not an enum

    event = json.loads(event_payload(decision, "publish", "t", 0.0))
    assert {k: event[k] for k in view} == view

    record = audit_record(now=0.0, agent_id="a", session_id="s", client_id="c", token_id=None,
                          decision=decision, packet="PUBLISH", scope="t")
    renamed = {{"tool": "tool_name", "resource": "resource_id"}.get(k, k): v
               for k, v in view.items()}
    assert {k: record[k] for k in renamed} == renamed

    explained = json.loads(explain_json(decision, "ops-agent", "publish t"))
    assert {k: explained[k] for k in view} == view
    assert explained["agent"] == "ops-agent" and explained["request"] == "publish t"

    text = explain_text(decision, "ops-agent", "publish t")
    assert text.splitlines()[0].startswith(f"{decision.verdict.value}: ops-agent may")
    assert f"reason code: 0x{decision.reason_code:02X}" in text
    for key in ("reason", "tool", "rule", "risk", "resource"):
        if view[key] is not None:
            assert f"{view[key]}" in text


def test_audit_view_is_built_once_per_decision_and_records_do_not_share_it() -> None:
    first, refused = decisions()[:2]
    view = audit_view(first)
    assert audit_view(first) is view  # the per-packet path reuses it
    assert view == {{"tool": "tool_name", "resource": "resource_id"}.get(k, k): v
                    for k, v in decision_view(first).items()}
    assert audit_view(refused)["decision"] == "deny"  # another decision, its own view
    record = audit_record(now=0.0, agent_id="a", session_id="s", client_id="c", token_id=None,
                          decision=first, packet="publish", scope="t")
    record["reason"] = "changed by a caller"
    assert audit_view(first)["reason"] == first.reason
