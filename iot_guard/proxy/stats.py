"""What the guard counts for its metrics: plain ints on the packet path, read at scrape time.

The per-packet path only adds to ints and dicts here (no locks, no label lookups, no
prometheus-client objects): the guard runs on one event loop, and the Prometheus collector
(``admin/metrics.py``) turns these into metric families when ``/metrics`` is scraped.
Decisions are counted from the audit records the link already builds (one dict increment
per record), so nothing decides twice and the counts match the audit log.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..audit.records import LineTemplate, TemplateRecord

# Seconds. The session decides a read of bytes in microseconds; the audit write is one
# os.write (tens of microseconds, more on a slow disk).
DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1)
AUDIT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0)

# (packet, decision, tool, reason_code, result_status) of an audit record
RecordKey = tuple[Any, Any, Any, Any, Any]


class Histogram:
    """Fixed buckets as a list of ints; ``observe`` is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations <= it), +Inf last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class GuardStats:
    __slots__ = ("records", "bytes_from_agents", "bytes_from_broker", "sessions_opened",
                 "decision_latency", "audit_latency", "audit_failures", "broker_reads_coalesced")

    def __init__(self) -> None:
        self.records: dict[RecordKey, int] = {}
        self.bytes_from_agents = 0
        self.bytes_from_broker = 0
        self.sessions_opened = 0
        self.decision_latency = Histogram(DECISION_BUCKETS)
        self.audit_latency = Histogram(AUDIT_BUCKETS)
        self.audit_failures = 0
        self.broker_reads_coalesced = 0  # pauses after a large broker read (proxy/link.py)

    def count_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        counts = self.records
        # Records made from one template (a session's messages on one topic: most of a
        # batch) share every field counted here: their key is read once per template
        # (kept in its memo) and a run of them is counted as a run.
        last: LineTemplate | None = None
        key: RecordKey = _NO_KEY
        run = 0
        for r in records:
            if r.__class__ is TemplateRecord:
                template = r.template
                if template is last:
                    run += 1
                    continue
                memo = template.memo.get(_MEMO)
                found = memo if memo is not None else _template_key(template, r)
                # A key that is per record (an open field) is not shared by a run.
                shared = template if _MEMO in template.memo else None
            else:
                found, shared = _record_key(r), None
            if run:
                counts[key] = counts.get(key, 0) + run
            key, last, run = found, shared, 1
        if run:
            counts[key] = counts.get(key, 0) + run


_COUNTED = ("packet", "decision", "tool_name", "reason_code", "result_status")
_NO_KEY: RecordKey = (None, None, None, None, None)
_MEMO = "stats.key"


def _template_key(template: LineTemplate, record: Mapping[str, Any]) -> RecordKey:
    """The key of ``record``, kept in its template's memo when every record of the
    template has it (none of the counted fields is open: what the session makes)."""
    fixed = template.fixed(_COUNTED)
    if fixed is None:
        return _record_key(record)
    key: RecordKey = fixed
    template.memo[_MEMO] = key
    return key


def _record_key(record: Mapping[str, Any]) -> RecordKey:
    return (record.get("packet"), record.get("decision"), record.get("tool_name"),
            record.get("reason_code"), record.get("result_status"))
