"""decision()/deny() build real, frozen Decisions (the policy hands the same object to
every packet on a topic, so none may be changed after it is made)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from iot_guard.mqtt.reason_codes import ReasonCode
from iot_guard.policy.decision import Decision, Verdict, _Draft, decision, deny

FIELDS: dict[str, Any] = {
    "verdict": Verdict.HOLD,
    "reason": "held for human approval",
    "reason_code": ReasonCode.NOT_AUTHORIZED,
    "action_type": "write",
    "tool": "shadow_update",
    "rule": "tools.yaml:23 (tools.shadow_update)",
    "resource": "acme/therm-001",
    "risk": "high",
    "max_qos": 1,
}


def test_the_fast_constructors_set_every_field_of_a_real_decision() -> None:
    assert [f.name for f in dataclasses.fields(Decision)] == list(FIELDS)
    # A field added to Decision must be stored by decision() (and deny()) too: _Draft
    # shares Decision's slots, and a slot never stored raises AttributeError when read.
    assert list(inspect.signature(decision).parameters) == list(FIELDS)
    assert _Draft.__slots__ == Decision.__slots__
    made = decision(*FIELDS.values())
    refused = deny("no", "read", ReasonCode.TOPIC_NAME_INVALID, "t", "r", "a/b", "low")
    for d, expected in (
        (made, Decision(**FIELDS)),
        (refused, Decision(Verdict.DENY, "no", ReasonCode.TOPIC_NAME_INVALID, "read",
                           "t", "r", "a/b", "low", None)),
    ):
        assert type(d) is Decision
        assert d == expected and hash(d) == hash(expected) and repr(d) == repr(expected)
        assert dataclasses.astuple(d) == dataclasses.astuple(expected)
        assert pickle.loads(pickle.dumps(d)) == d
    assert dataclasses.replace(made, reason="x").reason == "x" and made.reason != "x"
    assert deny("no", "read").max_qos is None and not deny("no", "read").allowed


@pytest.mark.parametrize("name", list(FIELDS))
def test_a_decision_made_fast_is_frozen(name: str) -> None:
    d = decision(*FIELDS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(d, name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(d, name)
    assert getattr(d, name) == FIELDS[name]
