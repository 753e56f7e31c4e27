"""Audit records made from templates (records.line_template, feedback.AuditRecorder) write
exactly the bytes the dict records wrote: the same sessions, fed the same packets, once
with the templates and once with the dict path, seal to the same lines."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from iot_guard.audit import AuditError, AuditLog
from iot_guard.audit.chain import ChainState
from iot_guard.audit.records import (
    GENESIS,
    OPEN_BOOL,
    OPEN_INT,
    OPEN_PLAIN_STR,
    TemplateRecord,
    line_template,
    record_line,
)
from iot_guard.checks import Pipeline
from iot_guard.logs import log_session_records, sessions
from iot_guard.mqtt import Connack, Connect, Publish, Subscribe, Subscription, Will, encode
from iot_guard.policy.decision import Decision, Verdict
from iot_guard.proxy.stats import GuardStats
from iot_guard.session import (
    AgentData,
    AgentOpened,
    BrokerData,
    Event,
    GuardSession,
    SessionSettings,
    WriteAudit,
)
from iot_guard.session.feedback import AuditRecorder, audit_record

from .source import from_source
from .test_session import (
    FOREIGN_UPDATE,
    GOOD_SHADOW,
    GROUP_PUSH,
    HOLDING,
    POLICY,
    SECRET,
    SETTINGS,
    SHADOW_UPDATE,
    TELEMETRY,
    Refuse,
    token,
)

NOW = 1_800_000_000.0
PEER = "127.0.0.1:5000"
DRY = SessionSettings(secret=SECRET, upstream_username="iot-guard",
                      upstream_password=b"broker-pw", dry_run=True)
ODD_TOPIC = "tenants/acme/devices/th\u00e9rm-%d\"\\/shadow/update"  # non-ASCII, %, quote


def _reference_message(
    self: AuditRecorder, now: float, decision: Decision, packet: str, scope: str,
    payload: bytes, qos: int | None, retain: bool | None,
) -> dict[str, Any]:
    """The records as the session made them before templates: a dict per packet."""
    agent_id, client_id, token_id, mode = self.ident
    record = audit_record(now=now, agent_id=agent_id, session_id=self.session_id,
                          client_id=client_id, token_id=token_id, decision=decision,
                          packet=packet, scope=scope, payload=payload, qos=qos, retain=retain)
    record["mode"] = mode
    return record


class _ReferenceRecorder:
    """The session's recorder as it was before templates (``_reference_message``)."""

    def __init__(self, agent_id: str | None, session_id: str, client_id: str | None,
                 token_id: str | None, mode: str) -> None:
        self.ident = (agent_id, client_id, token_id, mode)
        self.session_id = session_id

    message = _reference_message


# The reference sessions run from the source with the recorder above: a compiled session
# (``make native``) makes its recorder past any attribute a test replaces.
_SOURCE_SESSION = from_source("iot_guard.session.session")
_SOURCE_SESSION.AuditRecorder = _ReferenceRecorder


def _publish(topic: str, payload: bytes, level: int, qos: int = 1, retain: bool = False,
             packet_id: int | None = 2) -> bytes:
    return encode(Publish(topic, payload, qos=qos, retain=retain,
                          packet_id=packet_id if qos else None), level)


def _run(settings: SessionSettings, pipeline: Callable[[], Pipeline] | None,
         events: list[tuple[Event, float]], reference: bool = False) -> list[Mapping[str, Any]]:
    """The records a session writes (``reference``: with dict records only)."""
    kind = _SOURCE_SESSION.GuardSession if reference else GuardSession
    session = kind(POLICY, settings, "s-1",
                   pipeline=pipeline() if pipeline is not None else None)
    records: list[Mapping[str, Any]] = []
    for event, now in events:
        records += [c.record for c in session.handle(event, now) if isinstance(c, WriteAudit)]
    return records


def _connected(level: int, password: bytes, will: Will | None = None) -> list[tuple[Event, float]]:
    connect = encode(Connect(client_id="agent-1", protocol_level=level, username="ops-agent",
                             password=password, will=will), level)
    return [(AgentOpened(PEER), NOW), (AgentData(connect), NOW),
            (BrokerData(encode(Connack(), level)), NOW)]


def twice(event: Event) -> list[tuple[Event, float]]:
    """A message seen again gets a template (the first of a topic gets a dict)."""
    return [(event, NOW), (event, NOW + 0.5)]


def _scenarios(level: int, password: bytes) -> dict[str, tuple[SessionSettings,
                                                                Callable[[], Pipeline] | None,
                                                                list[tuple[Event, float]]]]:
    start = _connected(level, password)
    batch = b"".join(_publish(SHADOW_UPDATE, GOOD_SHADOW[:-1] + b" " * k + b"}", level,
                              qos=k % 3, retain=k % 2 == 1, packet_id=10 + k)
                     for k in range(12))
    group = _publish(GROUP_PUSH, b'{"firmware_channel":"beta"}', level)
    return {
        "allowed, one read of 12 and reads at other times": (SETTINGS, None, [
            *start, (AgentData(batch), NOW + 0.25), (AgentData(batch), NOW + 0.5000005),
            (AgentData(_publish(SHADOW_UPDATE, GOOD_SHADOW, level)), NOW + 1.0)]),
        "denied (policy, payload, odd topic) and empty payloads": (SETTINGS, None, [
            *start, *twice(AgentData(_publish(FOREIGN_UPDATE, GOOD_SHADOW, level))),
            *twice(AgentData(_publish(
                SHADOW_UPDATE, b'{"state":{"desired":{"target_temp_c":45}}}', level))),
            *twice(AgentData(_publish(ODD_TOPIC, b"", level))),
            *twice(AgentData(_publish(SHADOW_UPDATE, b"", level)))]),
        "held, refused for want of an approvals service": (SETTINGS, None, [
            *start, *twice(AgentData(group))]),
        "held and parked": (HOLDING, None, [*start, (AgentData(group), NOW)]),
        "dry run": (DRY, None, [
            *start, *twice(AgentData(_publish(FOREIGN_UPDATE, GOOD_SHADOW, level))),
            *twice(AgentData(_publish(SHADOW_UPDATE, GOOD_SHADOW, level)))]),
        "observe-mode check": (SETTINGS, lambda: Pipeline([Refuse({"publish"}, enforce=False)]),
                               [*start, (AgentData(batch), NOW)]),
        "enforcing check": (SETTINGS, lambda: Pipeline([Refuse({"publish", "receive"})]),
                            [*start, (AgentData(batch), NOW)]),
        "receive and subscribe (no payload)": (SETTINGS, None, [
            *start,
            (AgentData(encode(Subscribe(1, [Subscription(TELEMETRY, 1)]), level)), NOW),
            *twice(BrokerData(_publish(TELEMETRY, b'{"t":21.5}', level, packet_id=4))),
            *twice(BrokerData(_publish(FOREIGN_UPDATE, b"{}", level, packet_id=5)))]),
        "will at connect": (SETTINGS, None, _connected(
            level, password, Will(topic=SHADOW_UPDATE, payload=GOOD_SHADOW, qos=1))),
    }


def _lines(records: list[Mapping[str, Any]]) -> list[bytes]:
    lines, _, _ = ChainState("test.iot-guard/audit").seal(records)
    return lines


@pytest.mark.parametrize("level", [4, 5])
def test_template_records_write_the_bytes_the_dict_records_wrote(level: int) -> None:
    password = token()
    for name, (settings, pipeline, events) in _scenarios(level, password).items():
        fast = _run(settings, pipeline, events)
        reference = _run(settings, pipeline, events, reference=True)
        assert all(type(r) is dict for r in reference), name
        assert _lines(fast) == _lines(reference), name
        # What readers see is the same too, key order included.
        assert [list(dict(r).items()) for r in fast] == [list(r.items()) for r in reference]
        # Records with a note or a status of their own (held, will, observed, dry run)
        # are dicts, made as before, and so is the first message of a topic.
        templated = any(type(r) is TemplateRecord for r in fast)
        assert templated is (name not in {"held and parked", "will at connect"}), name


def test_every_scenario_names_the_record_kinds_it_stands_for() -> None:
    """The scenarios above cover allowed, denied, held, dry-run and observe-mode records,
    messages with and without payload bytes, and records without a payload."""
    fast = [r for _, (s, p, e) in _scenarios(5, token()).items() for r in _run(s, p, e)]
    statuses = {r["result_status"] for r in fast}
    assert {"success", "denied", "would_deny"} <= statuses
    assert {r["decision"] for r in fast} >= {"allow", "deny", "hold"}
    assert {r.get("mode") for r in fast} == {"enforce", "dry-run"}
    assert any(r.get("payload_bytes") == 0 for r in fast)
    assert any(r["packet"] == "subscribe" and "payload_bytes" not in r for r in fast)
    assert any(r["packet"] == "receive" for r in fast)
    assert any("observe mode" in (r.get("note") or "") for r in fast)
    assert any("approval request" in (r.get("note") or "") for r in fast)


# --------------------------------------------------------------------------- line_template

OPEN = {"timestamp": OPEN_PLAIN_STR, "qos": OPEN_INT, "retain": OPEN_BOOL,
        "payload_bytes": OPEN_INT, "payload_sha256": OPEN_PLAIN_STR}


def _fill(record: dict[str, Any], values: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The dict with ``values`` in its open keys, and those values as a line holds them."""
    filled = {**record, **{k: v for k, v in values.items() if k in record}}
    held = tuple(
        v.encode() if isinstance(v, str) else (b"true" if v else b"false")
        if isinstance(v, bool) else v
        for k, v in values.items() if k in record
    )
    return filled, held


@pytest.mark.parametrize("record", [
    {},
    {"timestamp": "x"},
    {"a": 1, "timestamp": "x", "qos": 0, "retain": False},
    {"timestamp": "x", "agent_id": "\u00e9t\u00e9 \U0001f600 \u2028", "client_id": None,
     "scope": 'a%db%%c%s"\\\n\t\x00\x1f', "reason_code": 135, "max_qos": 1, "ok": True,
     "qos": 0, "retain": True, "payload_bytes": 0, "payload_sha256": "",
     "note": "100% sure", "mode": "enforce"},
    {"k%s": "%", "%d": 1, "qos": 2},
])
def test_a_template_line_is_record_line_of_the_filled_dict(record: dict[str, Any]) -> None:
    template = line_template(record, OPEN)
    assert template is not None
    values = {"timestamp": "2026-12-01T00:00:00.000001Z", "qos": 2, "retain": True,
              "payload_bytes": 65536, "payload_sha256": hashlib.sha256(b"x").hexdigest()}
    filled, held = _fill(record, values)
    made = TemplateRecord.of(template, held)
    for seq, prev in [(0, GENESIS), (10**18, hashlib.sha256(b"y").hexdigest().encode())]:
        assert made.line(seq, prev) == record_line(seq, prev, filled)
        assert record_line(seq, prev, made) == record_line(seq, prev, filled)
    assert list(dict(made).items()) == list(filled.items())
    assert made == filled and len(made) == len(filled)
    assert json.loads(made.line(1, GENESIS))["seq"] == 1


@pytest.mark.parametrize("record", [
    {"seq": 1},  # a reserved key
    {"big": 2**70},  # an int only json encodes
    {"bad": "\ud800"},  # not UTF-8: orjson refuses it
    {"what": object()},
])
def test_no_template_for_a_record_the_fast_line_cannot_hold(record: dict[str, Any]) -> None:
    assert line_template(record, OPEN) is None


def test_a_template_record_is_read_only_and_checks_its_values() -> None:
    template = line_template({"timestamp": "x", "n": 1}, OPEN)
    assert template is not None
    with pytest.raises(ValueError):
        TemplateRecord.of(template, ())
    made = TemplateRecord.of(template, (b"t",))
    assert made["timestamp"] == "t" and made.get("n") == 1 and made.get("missing") is None
    with pytest.raises(TypeError):
        made["n"] = 2  # type: ignore[index]


# --------------------------------------------------------------------------- AuditRecorder

ALLOW = Decision(Verdict.ALLOW, "allowed by tool shadow_update", 0, "write", "shadow_update",
                 "tools.shadow_update", "acme/therm-001", "medium")


def test_the_recorder_falls_back_to_the_dict_record_on_anything_unusual() -> None:
    recorder = AuditRecorder("ops-agent", "s-1", "agent-1", "tok", "enforce")
    # (The annotations hold in a compiled build: a float qos or an int retain is a
    # TypeError there, so the unusual values are those the types allow.)
    for qos, retain in [(True, False), (None, False), (1, None), (None, None)]:
        made = recorder.message(NOW, ALLOW, "publish", SHADOW_UPDATE, b"{}", qos, retain)
        assert type(made) is dict
        assert made == _reference_message(recorder, NOW, ALLOW, "publish", SHADOW_UPDATE,
                                          b"{}", qos, retain)  # type: ignore[arg-type]
    # A field orjson cannot encode: no template, the dict record, and writing it fails
    # closed as it always did.
    odd = AuditRecorder("ops-agent", "s-1", "agent-\ud800", "tok", "enforce")
    made = odd.message(NOW, ALLOW, "publish", SHADOW_UPDATE, b"{}", 1, False)
    assert type(made) is dict
    with pytest.raises(AuditError):
        AuditLog(None).write_many([made])


def test_the_recorder_follows_the_decision_and_bounds_its_templates() -> None:
    recorder = AuditRecorder("ops-agent", "s-1", "agent-1", "tok", "enforce")
    deny = Decision(Verdict.DENY, "no", 0x87, "write")
    made = [recorder.message(NOW, d, packet, SHADOW_UPDATE, b"{}", 1, False)
            for d, packet in [(ALLOW, "publish")] * 3 + [(deny, "publish")] * 2
            + [(ALLOW, "receive")] * 2 + [(ALLOW, "publish")]]
    # The first of each (packet, topic, decision) is a dict, the next ones a template's.
    assert [type(r) is TemplateRecord for r in made] == [False, True, True, False, True,
                                                          False, True, True]
    assert [(r["packet"], r["decision"]) for r in made] == (
        [("publish", "allow")] * 3 + [("publish", "deny")] * 2 + [("receive", "allow")] * 2
        + [("publish", "allow")])
    for k in range(100):  # an agent roaming over many topics: bounded, and dicts
        assert type(recorder.message(NOW, deny, "publish", f"t/{k % 50}", b"", 0,
                                     False)) is dict
    assert len(recorder._templates) <= 32


def test_making_a_template_keeps_the_current_second_formatted(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # utc_iso formats the date and time once per second; a template made with a stand-in
    # stamp of another second (1970's) cost two strftime per template, and a busy guard
    # with many sessions makes thousands of templates.
    import iot_guard.audit.records as records

    formatted: list[float] = []
    slow, fresh = records.datetime, records.datetime

    class Counting(slow):  # type: ignore[misc,valid-type]
        @classmethod
        def fromtimestamp(cls, t: float, tz: Any = None) -> Any:  # type: ignore[override]
            formatted.append(t)
            return fresh.fromtimestamp(t, tz)

    monkeypatch.setattr(records, "datetime", Counting)
    now = 1764576000.5
    recorder = AuditRecorder("ops-agent", "s-1", "agent-1", "tok", "enforce")
    made = [recorder.message(now + k * 1e-3, ALLOW, "publish", SHADOW_UPDATE, b"{}", 1, False)
            for k in range(3)]
    assert [type(r) is TemplateRecord for r in made] == [False, True, True]
    assert made[2]["timestamp"] == "2025-12-01T08:00:00.502000Z"
    assert formatted in ([1764576000.0], [])  # this second, at most once (once per process)


def test_a_session_whose_identity_changed_gets_a_new_recorder() -> None:
    events = _connected(5, token())
    session = GuardSession(POLICY, SETTINGS, "s-1")
    for event, now in events:
        session.handle(event, now)
    publish = AgentData(_publish(SHADOW_UPDATE, GOOD_SHADOW, 5))
    (before,) = [c.record for c in session.handle(publish, NOW) if isinstance(c, WriteAudit)]
    session._mode = "dry-run"  # what a swap of mode would do
    (after,) = [c.record for c in session.handle(publish, NOW) if isinstance(c, WriteAudit)]
    assert (before["mode"], after["mode"]) == ("enforce", "dry-run")


# --------------------------------------------------------------------------- readers


def test_metrics_and_console_count_template_records_as_their_dicts() -> None:
    events = _scenarios(5, token())
    records = [r for name in ("allowed, one read of 12 and reads at other times",
                              "enforcing check", "denied (policy, payload, odd topic) and "
                              "empty payloads")
               for r in _run(*events[name])]
    assert any(type(r) is TemplateRecord for r in records)
    as_dicts = [dict(r) for r in records]
    fast, slow = GuardStats(), GuardStats()
    fast.count_records(records)
    slow.count_records(as_dicts)
    assert fast.records == slow.records and sum(fast.records.values()) == len(records)
    assert log_session_records(records, 3) == log_session_records(as_dicts, 3) > 3


def test_metrics_and_console_read_one_record_per_read_as_their_dicts() -> None:
    # One record per call (one publish per read): the template's memo answers from the
    # second call on, and must say what the dict says, call after call.
    events = _scenarios(5, token())
    records = [r for name in ("allowed, one read of 12 and reads at other times",
                              "enforcing check", "denied (policy, payload, odd topic) and "
                              "empty payloads", "receive and subscribe (no payload)")
               for r in _run(*events[name])]
    assert sum(type(r) is TemplateRecord for r in records) > 10
    fast, slow = GuardStats(), GuardStats()
    fast_refused = slow_refused = 0
    for _ in range(2):
        for record in records:
            fast.count_records([record])
            slow.count_records([dict(record)])
            fast_refused = log_session_records([record], fast_refused)
            slow_refused = log_session_records([dict(record)], slow_refused)
    assert fast.records == slow.records and fast_refused == slow_refused > 0


class _Lines(logging.Handler):
    """The console's session lines (the ``iot_guard`` logger may not propagate to
    caplog's root handler once ``configure_logging`` ran in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self._level = sessions.level
        sessions.addHandler(self)
        sessions.setLevel(logging.INFO)
        return self.lines

    def __exit__(self, *exc: object) -> None:
        sessions.removeHandler(self)
        sessions.setLevel(self._level)


def test_readers_read_each_record_of_a_template_whose_counted_fields_are_open() -> None:
    # A template may leave open what the metrics and the console count (the session's do
    # not): then no memo, and no run taken as alike, only what each record says.
    base = {"timestamp": "x", "packet": "publish", "decision": "allow", "tool_name": "t",
            "reason_code": 0, "result_status": "success"}
    status_open = line_template(base, {"result_status": OPEN_PLAIN_STR, "reason_code": OPEN_INT})
    packet_open = line_template(base, {"packet": OPEN_PLAIN_STR})
    assert status_open is not None and packet_open is not None
    records = [TemplateRecord.of(status_open, (0, b"success")),
               TemplateRecord.of(status_open, (135, b"error")),
               TemplateRecord.of(status_open, (135, b"error")),
               TemplateRecord.of(status_open, (0, b"success")),
               TemplateRecord.of(packet_open, (b"publish",)),
               TemplateRecord.of(packet_open, (b"disconnect",)),
               TemplateRecord.of(packet_open, (b"receive",))]
    for batch in ([records], [[r] for r in records]):
        fast, slow = GuardStats(), GuardStats()
        fast_refused = slow_refused = 0
        with _Lines() as fast_lines:
            for part in batch:
                fast.count_records(part)
                fast_refused = log_session_records(part, fast_refused)
        with _Lines() as slow_lines:
            for part in batch:
                dicts = [dict(r) for r in part]
                slow.count_records(dicts)
                slow_refused = log_session_records(dicts, slow_refused)
        assert fast.records == slow.records
        assert fast.records[("publish", "allow", "t", 135, "error")] == 2
        assert fast_refused == slow_refused == 2
        assert fast_lines == slow_lines and len(fast_lines) == 1  # the disconnect
    assert not status_open.memo and not packet_open.memo


def test_a_session_event_template_is_logged_every_time() -> None:
    # connect and disconnect records are each logged, even made from one template.
    template = line_template({"timestamp": "x", "packet": "disconnect", "agent_id": "a",
                              "session_id": "s", "requested_scope": "peer", "reason": "bye",
                              "result_status": "success"}, {"timestamp": OPEN_PLAIN_STR})
    assert template is not None
    with _Lines() as lines:
        for k in range(3):
            refused = log_session_records([TemplateRecord.of(template, (b"t%d" % k,))], 4)
    assert refused == 4
    assert lines == [
        "agent a disconnected: bye; 4 request(s) refused in the session (the audit log has "
        "each); session s from peer"] * 3
