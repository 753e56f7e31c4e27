"""What a decision says: to the agent (``$guard/events``), to the audit log, and to the
operator (``iot-guard policy explain``).

One decision, one explanation (DESIGN principle 6): ``decision_view`` is the one
rendering of a Decision; the event, the audit record and the explain output (text and
JSON) are all built from it. The audit log keeps its documented names for two fields
(``tool_name``, ``resource_id``: README "Audit log").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..audit import utc_iso
from ..audit.hashes import hex_sha256
from ..audit.records import (
    OPEN_BOOL,
    OPEN_INT,
    OPEN_PLAIN_STR,
    LineTemplate,
    TemplateRecord,
    line_template,
)
from ..policy.decision import Decision, Verdict
from ..printable import one_line

# The guard's own topic: agents subscribe to it for refusal events; it never reaches
# the broker.
EVENTS_TOPIC = "$guard/events"

_STATUS = {Verdict.ALLOW: "success", Verdict.DENY: "denied", Verdict.HOLD: "denied"}


def guard_refusal(reason: str, reason_code: int) -> Decision:
    """A refusal the guard makes itself, before the policy is asked."""
    return Decision(
        verdict=Verdict.DENY, reason=reason, reason_code=int(reason_code), action_type="write",
        rule="guard: protocol rule",
    )


def decision_view(decision: Decision) -> dict[str, Any]:
    """The fields every rendering of a decision shows, JSON-ready, in this order."""
    view: dict[str, Any] = {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "reason_code": int(decision.reason_code),
        "tool": decision.tool,
        "rule": decision.rule,
        "risk": decision.risk,
        "resource": decision.resource,
        "action_type": decision.action_type,
    }
    if decision.max_qos is not None:
        view["max_qos"] = decision.max_qos  # subscribe/receive: the QoS granted at most
    return view


# The audit log's established names (README "Audit log") for two of the view's fields.
_AUDIT_NAMES = {"tool": "tool_name", "resource": "resource_id"}

# The view under its audit names, per Decision object: a record is built per packet,
# and a session's packets share a few Decision objects (the policy keeps the ones it
# makes per topic). Keyed by identity; each entry holds its decision, so that id is not
# reused while the entry lives. Decisions are frozen: a view never goes stale.
_audit_views: dict[int, tuple[Decision, dict[str, Any]]] = {}
_AUDIT_VIEWS_MAX = 1024  # ~1 MB at most


def audit_view(decision: Decision) -> dict[str, Any]:
    """``decision_view`` with the audit log's names, shared: copy it, never change it."""
    entry = _audit_views.get(id(decision))
    if entry is not None:
        return entry[1]
    view = {_AUDIT_NAMES.get(key, key): value for key, value in decision_view(decision).items()}
    if len(_audit_views) >= _AUDIT_VIEWS_MAX:
        _audit_views.clear()  # one-off refusals must not pile up
    _audit_views[id(decision)] = (decision, view)
    return view


def explain_text(decision: Decision, agent_id: str, request: str) -> str:
    """``policy explain``'s human output: a verdict line, then the view's fields."""
    view = decision_view(decision)
    lines = [f"{view['decision']}: {agent_id} may{'' if decision.allowed else ' not'} {request}"]
    for key, value in view.items():
        if key == "decision" or value is None or key == "action_type":
            continue
        label = key.replace("_", " ") + ":"
        shown = f"0x{value:02X}" if key == "reason_code" else value
        lines.append(f"  {label:<12} {shown}")
    # What the agent asked (a topic) is the operator's to read, not to be written by: one
    # printable line each, so a topic cannot forge a verdict line.
    return "\n".join(one_line(line) for line in lines)


def explain_json(decision: Decision, agent_id: str, request: str) -> str:
    """``policy explain --json``: the view, with who asked what."""
    return json.dumps({"agent": agent_id, "request": request, **decision_view(decision)}, indent=2)


def event_payload(
    decision: Decision, action: str, topic: str, now: float, approval_id: str | None = None
) -> bytes:
    event: dict[str, object] = {"action": action, "topic": topic, **decision_view(decision)}
    event["timestamp"] = utc_iso(now)
    if approval_id is not None:
        event["approval_id"] = approval_id
    return json.dumps(event, separators=(",", ":")).encode()


def audit_record(
    *,
    now: float,
    agent_id: str | None,
    session_id: str,
    client_id: str | None,
    token_id: str | None,
    decision: Decision,
    packet: str,
    scope: str,
    payload: bytes | None = None,
    qos: int | None = None,
    retain: bool | None = None,
    note: str | None = None,
    status: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """A decision's audit record (README "Audit log"); ``mode`` (enforce, dry-run) last."""
    allowed = decision.verdict is Verdict.ALLOW
    record: dict[str, Any] = {
        "timestamp": utc_iso(now),
        "agent_id": agent_id,
        "session_id": session_id,
        "client_id": client_id,
        "token_id": token_id,
        "packet": packet,
        "requested_scope": scope,
        "granted_scope": scope if allowed else None,
        "result_status": status or _STATUS[decision.verdict],
    }
    record.update(audit_view(decision))
    if qos is not None:
        record["qos"] = qos
    if retain is not None:
        record["retain"] = retain
    if payload is not None:
        # Never the payload itself: its size and digest are enough to match it later.
        record["payload_bytes"] = len(payload)
        record["payload_sha256"] = hex_sha256(payload).decode("ascii")
    if note:
        record["note"] = note
    if mode is not None:
        record["mode"] = mode
    return record


# What varies between the records of one session's messages on one topic with one
# decision; every other field is the template's, and so is the line around them.
_MESSAGE_OPEN = {"timestamp": OPEN_PLAIN_STR, "qos": OPEN_INT, "retain": OPEN_BOOL,
                 "payload_bytes": OPEN_INT, "payload_sha256": OPEN_PLAIN_STR}
# Topics per session with a template (~2 KB each) or a first sighting; a session past it
# starts over. An agent going round more topics than this gets dict records, as before.
_TEMPLATES_MAX = 32


class AuditRecorder:
    """The audit records of one session's messages (publish, receive), the same as
    ``audit_record`` makes, at a fraction of the cost: for a topic (and decision) seen
    again, the record is made once as a template (``records.line_template``) and each
    message is a ``TemplateRecord`` of it with its own timestamp, QoS, retain flag,
    payload size and digest. A template costs a few records' worth to make, so the
    first message of a topic, and anything out of the ordinary (a QoS or retain flag of
    another type, a field the template cannot hold), gets ``audit_record``'s dict.

    ``ident`` is what the session was when this was made (agent, client id, token id,
    mode): a session whose ident changed needs a new recorder.
    """

    __slots__ = ("ident", "session_id", "_templates", "_now", "_stamp")

    def __init__(
        self, agent_id: str | None, session_id: str, client_id: str | None,
        token_id: str | None, mode: str,
    ) -> None:
        self.ident = (agent_id, client_id, token_id, mode)
        self.session_id = session_id
        # (packet, topic, decision id) -> (the decision, its template or None, whether that
        # template was made: a first sighting has none yet; None made: it cannot have one)
        self._templates: dict[
            tuple[str, str, int], tuple[Decision, LineTemplate | None, bool]] = {}
        self._now: float | None = None
        self._stamp = b""

    def message(
        self, now: float, decision: Decision, packet: str, scope: str, payload: bytes,
        qos: int | None, retain: bool | None,
    ) -> Mapping[str, Any]:
        # The decision is part of the key: a topic's decision may differ by QoS or retain
        # flag. The entry holds the decision, so its id is not reused while it lives.
        key = (packet, scope, id(decision))
        templates = self._templates
        entry = templates.get(key)
        template = None
        if entry is None or entry[0] is not decision:
            if len(templates) >= _TEMPLATES_MAX:
                templates.clear()  # an agent roaming over many topics: bounded memory
            templates[key] = (decision, None, False)  # seen once
        elif entry[2]:
            template = entry[1]
        else:  # seen again: worth a template
            template = self._template(key, decision, now)
            templates[key] = (decision, template, True)
        if template is None or qos.__class__ is not int or retain.__class__ is not bool:
            agent_id, client_id, token_id, mode = self.ident
            return audit_record(now=now, agent_id=agent_id, session_id=self.session_id,
                                client_id=client_id, token_id=token_id, decision=decision,
                                packet=packet, scope=scope, payload=payload, qos=qos,
                                retain=retain, mode=mode)
        if now != self._now:  # the messages of one read share their ``now``
            self._stamp = utc_iso(now).encode()
            self._now = now
        # Never the payload itself: its size and digest are enough to match it later.
        return TemplateRecord(template, (self._stamp, qos, b"true" if retain else b"false",
                                         len(payload), hex_sha256(payload)))

    def _template(
        self, key: tuple[str, str, int], decision: Decision, now: float
    ) -> LineTemplate | None:
        agent_id, client_id, token_id, mode = self.ident
        # The open fields hold stand-ins; each record has its own. The stand-in stamp is
        # ``now``'s: utc_iso keeps the current second formatted, and another second (say
        # 1970's) would cost two strftime, this one's and the next record's.
        record = audit_record(now=now, agent_id=agent_id, session_id=self.session_id,
                              client_id=client_id, token_id=token_id, decision=decision,
                              packet=key[0], scope=key[1], payload=b"", qos=0, retain=False,
                              mode=mode)
        return line_template(record, _MESSAGE_OPEN)
