"""The console log of ``iot-guard run``: one handler, text or JSON lines, on stderr.

The audit log is the record of decisions; this log is for the operator watching the
guard: start, upstream health, each agent's connect and disconnect (with how many of its
requests were refused), reloads. One handler on the ``iot_guard`` logger (never the root
logger twice), so no line is printed twice.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from .audit import utc_iso
from .audit.records import LineTemplate, TemplateRecord

LOGGER = "iot_guard"
_HANDLER_NAME = "iot-guard-console"
sessions = logging.getLogger("iot_guard.sessions")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the ``iot_guard`` loggers to ``stream`` (stderr) at ``level`` in ``fmt``."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    # The guard's lines are handled here; a root handler (basicConfig) would repeat them.
    logger.propagate = False


def log_session_records(records: Iterable[Mapping[str, Any]], refused: int) -> int:
    """Log a session's connect and disconnect from its audit records (already written);
    ``refused`` counts its refused requests so far; the new count is returned."""
    last: LineTemplate | None = None
    refusal = 0
    for record in records:
        if record.__class__ is TemplateRecord:
            # A message's record: whether it is a refusal is the template's, read once
            # (its memo), and the same for a run of records of that template.
            template = record.template
            if template is not last:
                memo = template.memo.get(_MEMO)
                refusal = _template_refusal(record) if memo is None else memo
                last = template if refusal is not _EACH else None
            if refusal is not _EACH:
                refused += refusal
                continue
        packet = record.get("packet")
        if packet == "connect" or packet == "disconnect":
            _log_session_event(record, refused)  # each one is logged
        else:
            refused += record.get("result_status", "success") != "success"
    return refused


_MEMO = "logs.refusal"
_EACH = -1  # a template whose records are each read (a session event, an open field)


def _template_refusal(record: TemplateRecord) -> int:
    """1 if the records of ``record``'s template are refusals, 0 if not (kept in its
    memo); _EACH when they must be read one by one."""
    template = record.template
    if template.fixed(("packet", "result_status")) is None:
        return _EACH
    packet = template.fields.get("packet")
    if packet == "connect" or packet == "disconnect":
        refusal = _EACH
    else:
        refusal = int(template.fields.get("result_status", "success") != "success")
    template.memo[_MEMO] = refusal
    return refusal


def _log_session_event(record: Mapping[str, Any], refused: int) -> None:
    agent = record.get("agent_id") or "(unknown agent)"
    where = f"session {record.get('session_id')} from {record.get('requested_scope')}"
    reason = record.get("reason")
    if record.get("packet") == "connect":
        if record.get("result_status") == "success":
            client_id = record.get("client_id")
            sessions.info("agent %s connected: %s%s", agent, where,
                          f", client id {client_id!r}" if client_id else "")
        else:
            sessions.info("refused CONNECT of %s: %s (0x%02X); %s", agent, reason,
                          record.get("reason_code") or 0, where)
    else:
        sessions.info("agent %s disconnected: %s; %d request(s) refused in the session "
                      "(the audit log has each); %s", agent, reason, refused, where)
