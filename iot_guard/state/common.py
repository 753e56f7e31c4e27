"""What every backend does the same way: strict JSON bodies, status lists, claims, watchers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from .records import Record

log = logging.getLogger("iot_guard.state")
T = TypeVar("T")


def strict_json(body: Mapping[str, Any]) -> str:
    """A body as strict JSON, before anything is stored: TypeError for what JSON cannot
    hold (bytes...), ValueError for NaN/Infinity (not JSON, RFC 8259 §6)."""
    return json.dumps(dict(body), allow_nan=False, separators=(",", ":"))


def expected_statuses(expect: str | Collection[str]) -> tuple[str, ...]:
    return (expect,) if isinstance(expect, str) else tuple(expect)


def holds_claim(rec: Record, owner: str, now: float) -> bool:
    """``owner``'s claim on ``rec`` is in force: its lease has not run out."""
    return rec.owner == owner and rec.lease_until is not None and rec.lease_until > now


def may_claim(rec: Record, owner: str, now: float) -> bool:
    """``owner`` may claim ``rec``: it is free (no owner, or its lease ran out) or already
    ``owner``'s (a claim again renews the lease)."""
    free = rec.owner is None or rec.lease_until is None or rec.lease_until <= now
    return free or rec.owner == owner


def notify(callbacks: list[Callable[[T], None]], items: Sequence[T]) -> None:
    """Ring every watcher; one that raises is logged and does not stop the others."""
    for item in items:
        for cb in list(callbacks):
            try:
                cb(item)
            except Exception:
                log.exception("state watcher %r failed", cb)
