"""Tools with free-form payload kinds (any, json, json_schema) export a text payload the
model can fill, and the call becomes exactly that body, which the guard then judges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from iot_guard.agent.calls import CallError, to_message
from iot_guard.agent.tools import agent_tool_specs
from iot_guard.policy.compiler import CompiledPolicy
from iot_guard.policy.decision import Verdict

POLICY_DIR = Path(__file__).parents[2] / "device_policies"

EXTRA = """
tools:
  post_note:
    description: Leave a note for the tenant's operators.
    verb: publish
    topic: tenants/{tenant}/notes
    payload: json
    max_bytes: 200
  post_text:
    description: Leave a plain text line.
    verb: publish
    topic: tenants/{tenant}/log
    payload: any
agents:
  note-taker:
    tenants: [acme]
    tools: [post_note, post_text]
"""


@pytest.fixture
def policy(tmp_path: Path) -> CompiledPolicy:
    target = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, target)
    (target / "notes.yaml").write_text(EXTRA)
    return CompiledPolicy.load(target)


def test_free_form_tools_take_the_body_as_text_and_send_it_as_written(policy) -> None:
    specs = {s.name: s for s in agent_tool_specs(policy, "note-taker")}
    note = specs["post_note"]
    payload = note.schema["properties"]["payload"]
    assert payload["type"] == "string" and payload["maxLength"] == 200
    assert "JSON object" in note.description and "empty message" not in note.description
    call = {"tenant": "acme", "payload": json.dumps({"text": "hi"})}
    jsonschema.validate(call, note.schema)
    message = to_message(note, call)
    assert (message.topic, message.payload) == ("tenants/acme/notes", b'{"text": "hi"}')
    agent = policy.for_agent("note-taker")
    assert agent is not None
    assert agent.decide_publish(message.topic, message.payload, 1, False).verdict is Verdict.ALLOW
    # Too long for the schema, and refused by the guard if forced.
    long_call = {"tenant": "acme", "payload": json.dumps({"text": "x" * 300})}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(long_call, note.schema)
    forced = to_message(note, long_call)
    assert agent.decide_publish(forced.topic, forced.payload, 1, False).verdict is Verdict.DENY
    text = specs["post_text"]
    assert to_message(text, {"tenant": "acme", "payload": "boiler noisy"}).payload == (
        b"boiler noisy")
    with pytest.raises(CallError):
        to_message(text, {"tenant": "acme", "payload": 42})
