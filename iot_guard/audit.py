"""The audit log: one JSON line per decision, written before anything is forwarded.

Fail closed (DESIGN principle 1): if a record cannot be written, ``AuditLog.write``
raises and the proxy forwards nothing for that packet and ends the session.
Payloads are never logged raw: only their size and SHA-256.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


class AuditError(Exception):
    """The audit log cannot be written: the guard must not forward anything."""


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


class AuditLog:
    """Appends JSON lines to a file (or stderr when no path is given)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stream: IO[str]
        if self.path is None:
            self._stream = sys.stderr
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Owner-only: the log names agents, devices and reasons.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        try:
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot write audit log: {exc}") from exc

    def close(self) -> None:
        if self.path is not None:
            self._stream.close()
