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
from typing import Any


class AuditError(Exception):
    """The audit log cannot be written: the guard must not forward anything."""


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


class AuditLog:
    """Appends JSON lines to a file (or stderr when no path is given).

    Each record is one ``os.write`` on an O_APPEND descriptor: no user-space buffer
    that could hold a record the guard believes written, and whole lines even when
    several guards share a file.
    """

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            try:
                if self.path.parent != Path("/dev"):
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                # Owner-only: the log names agents, devices and reasons.
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """All records in one write: what one read from a peer decided, before forwarding."""
        line = "".join(
            json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
            for record in records
        ).encode()
        try:
            with self._lock:
                if self._fd is None:
                    sys.stderr.write(line.decode())
                    sys.stderr.flush()
                elif os.write(self._fd, line) != len(line):
                    raise OSError("short write")
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot write audit log: {exc}") from exc

    def reopen(self) -> None:
        """Open the path again (logrotate moved the file away): later records go to a
        fresh file at the same path. Raises AuditError when it cannot be opened."""
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot reopen audit log {self.path}: {exc}") from exc
        with self._lock:
            old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
