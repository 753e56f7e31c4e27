"""The audit log: chained JSON lines, written before anything is forwarded.

Fail closed (DESIGN principle 1): if a record cannot be written, ``write_many`` raises
AuditError and the proxy forwards nothing for that packet and ends the session.
Payloads are never logged raw: only their size and SHA-256 (session/feedback.py).

Per record the hot path adds a link (seq, hash of the previous line) and one Merkle
leaf to an O(log n) frontier: one SHA-256 of the line, which is both the leaf and the
next line's link (records.FORMAT), and on average one node hash.
Checkpoints are signed off that path: when N records have piled up a callback is
queued on the event loop (``attach``), and a timer signs every T seconds, so no
packet waits for Ed25519. One file, one writer: the file is locked (flock) while open.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .chain import ChainState
from .checkpoint import Checkpoint
from .records import utc_iso
from .recovery import RecoveryError, recover
from .signer import KeyFileError, NoteSigner, load_signer

log = logging.getLogger("iot_guard.audit")

__all__ = ["AuditError", "AuditLog", "default_origin", "utc_iso"]


class AuditError(Exception):
    """The audit log cannot be written: the guard must not forward anything."""


def default_origin() -> str:
    """This host's guard, when no key names the chain (key names have no spaces or '+')."""
    host = "".join(ch for ch in socket.gethostname() if not ch.isspace() and ch != "+")
    return f"{host or 'localhost'}/iot-guard"


class AuditLog:
    """Appends chained lines to a file (or stderr when no path is given).

    Each batch is one ``os.write`` on an O_APPEND descriptor: no user-space buffer that
    could hold a record the guard believes written. ``signer`` (the guard instance's
    key, whose name is the chain's origin) turns signed checkpoints on: every
    ``checkpoint_records`` records or ``checkpoint_seconds`` seconds, and at ``close``.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        signer: NoteSigner | None = None,
        origin: str | None = None,
        checkpoint_records: int = 1000,
        checkpoint_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.signer = signer
        if signer is not None and origin is not None and origin != signer.name:
            raise AuditError(f"the audit key is named {signer.name!r}, not {origin!r}: the "
                             "key's name is the chain's origin")
        self.origin = signer.name if signer is not None else (origin or default_origin())
        if signer is not None and self.path is None:
            raise AuditError("signed checkpoints need an audit log file (--audit-log)")
        if checkpoint_records < 1 or checkpoint_seconds <= 0:
            raise AuditError("checkpoint intervals must be positive")
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._regular = False
        self._broken: str | None = None  # set after a partial write: the file's tail is cut
        self._pending_open: str | None = None  # reason of the open record still to write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = False
        # Told of each checkpoint written (on the loop), e.g. to keep a head store in step.
        self.on_checkpoint: Callable[[ChainState, Checkpoint], None] | None = None
        self.state = ChainState(self.origin)
        if self.path is not None:
            self._fd = self._open(self.path)
            recovered = self._recover(self.path, self._fd)
            self.state = recovered if recovered is not None else self.state
            self._pending_open = "restart" if recovered is not None else "start"
        else:
            self._pending_open = "start"

    @classmethod
    def open(
        cls, path: Path | None, key: Path | None = None, *, checkpoint_records: int = 1000,
        checkpoint_seconds: float = 10.0,
    ) -> AuditLog:
        """The guard's log: ``key`` is the audit.key file that signs its checkpoints."""
        signer = None
        if key is not None:
            try:
                signer = load_signer(key)
            except KeyFileError as exc:
                raise AuditError(str(exc)) from exc
        return cls(path, signer=signer, checkpoint_records=checkpoint_records,
                   checkpoint_seconds=checkpoint_seconds)

    # ------------------------------------------------------------------ files

    def _open(self, path: Path) -> int:
        try:
            if path.parent != Path("/dev"):
                path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: the log names agents, devices and reasons.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {path}: {exc}") from exc
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if self._regular:
            try:
                # One chain has one writer (issue 11): a second guard on this file stops.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise AuditError(f"audit log {path} is in use by another guard (one chain, "
                                 "one writer): give each guard instance its own file") from exc
        return fd

    def _recover(self, path: Path, fd: int) -> ChainState | None:
        if not self._regular:
            return None  # a pipe or device: nothing to read back
        try:
            read_fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            os.close(fd)
            raise AuditError(f"cannot read audit log {path} to continue its chain: {exc}") \
                from exc
        try:
            verifier = self.signer.verifier if self.signer else None
            state = recover(path, read_fd, verifier, self.origin)
        except RecoveryError as exc:
            os.close(fd)
            raise AuditError(f"{path}: cannot continue the audit chain: {exc}; check it with "
                             "`iot-guard audit verify` and move it aside") from exc
        finally:
            os.close(read_fd)
        return state

    # ------------------------------------------------------------------ writing

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """All records in one write: what one read from a peer decided, before forwarding."""
        with self._lock:
            state = self.state
            if len(records) == 1 and self._pending_open is None:
                # One record, what one read decides at low load: the batch path without
                # its lists (the same line, the same chain).
                try:
                    line = state.line(records[0])
                except (TypeError, ValueError) as exc:
                    raise AuditError(f"cannot encode audit record: {exc}") from exc
                self._write(line + b"\n")
                state.append(line)  # only once written, as below
                due = self.signer is not None and state.unsigned >= self.checkpoint_records
            else:
                due = self._write_batch(state, records)
        if due:
            self._checkpoint_due()

    def _write_batch(self, state: ChainState, records: Sequence[Mapping[str, Any]]) -> bool:
        """``write_many`` of any number of records, under the lock; True if a checkpoint
        is due."""
        try:
            head = b""
            if self._pending_open is not None:  # the first write of this file or run
                state = state.copy()
                head = self._open_line(state)
            lines, prev, leaves = state.seal(records)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"cannot encode audit record: {exc}") from exc
        lines.append(b"")
        self._write(head + b"\n".join(lines))
        lines.pop()
        # Only once written: a failed write leaves the chain where the file ends.
        state.commit(prev, leaves)
        self._commit(state)
        return self.signer is not None and state.unsigned >= self.checkpoint_records

    def _open_line(self, state: ChainState) -> bytes:
        if self._pending_open is None:
            return b""
        key_id = self.signer.key_id if self.signer is not None else None
        return state.open_record(self._pending_open, key_id, self.clock(), os.getpid())

    def _commit(self, state: ChainState) -> None:
        self.state = state
        self._pending_open = None

    def _write(self, data: bytes) -> None:
        """Everything or nothing the caller may count on; raises AuditError."""
        if self._broken is not None:
            raise AuditError(self._broken)
        try:
            if self._fd is None:
                if self.path is not None:
                    raise OSError("audit log is closed")
                sys.stderr.write(data.decode())
                sys.stderr.flush()
                return
            written = os.write(self._fd, data)
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot write audit log: {exc}") from exc
        if written != len(data):
            # A cut line is in the file now: nothing after it could chain cleanly.
            self._broken = (f"audit log {self.path} broken by a short write ({written} of "
                            f"{len(data)} bytes); the guard forwards nothing more")
            raise AuditError(self._broken)

    # ------------------------------------------------------------------ checkpoints

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sign from ``loop``: a timer every ``checkpoint_seconds``, and a queued callback
        when ``checkpoint_records`` records are unsigned (never inside a packet's write)."""
        self._loop = loop
        if self.signer is not None:
            self._timer = loop.call_later(self.checkpoint_seconds, self._tick)

    def _checkpoint_due(self) -> None:
        if self._loop is None:
            self._safe_checkpoint()  # no loop (a script, a test): sign right away
            return
        if not self._due:
            self._due = True
            self._loop.call_soon_threadsafe(self._run_due)

    def _run_due(self) -> None:
        self._due = False
        self._safe_checkpoint()

    def _tick(self) -> None:
        self._safe_checkpoint()
        if self._loop is not None and self._fd is not None:
            self._timer = self._loop.call_later(self.checkpoint_seconds, self._tick)

    def _safe_checkpoint(self) -> None:
        try:
            self.checkpoint()
        except AuditError as exc:
            # The next record write fails the same way and closes its session.
            log.error("audit checkpoint failed: %s", exc)

    def checkpoint(self) -> bool:
        """Sign the records written so far (if any are unsigned); True if a line was written."""
        if self.signer is None:
            return False
        with self._lock:
            if self._fd is None or (self.state.unsigned == 0 and self._pending_open is None):
                return False
            if self.state.seq == 0 and self._pending_open == "start":
                return False  # nothing written yet: no chain to sign
            state = self.state.copy()
            head = self._open_line(state)
            line, checkpoint = state.checkpoint(self.signer)
            data = head + line
            self._write(data)
            self._commit(state)
        if self.on_checkpoint is not None:
            self.on_checkpoint(state.copy(), checkpoint)
        return True

    # ------------------------------------------------------------------ rotation, close

    def reopen(self) -> bool:
        """After logrotate moved the file: sign and close the old one, continue the chain
        in a new file at the same path. True if a new file was opened."""
        if self.path is None or not self._regular:
            return False
        with self._lock:
            if self._fd is None:
                raise AuditError("audit log is closed")
            try:
                current = os.stat(self.path)
                if (current.st_dev, current.st_ino) == self._identity():
                    return False  # not moved: nothing to do
            except FileNotFoundError:
                pass
        self.checkpoint()  # the old file ends signed
        with self._lock:
            assert self._fd is not None
            new_fd = self._open(self.path)
            if os.fstat(new_fd).st_size != 0:
                os.close(new_fd)
                raise AuditError(f"cannot reopen {self.path}: a non-empty file is there; "
                                 "still writing to the moved file")
            old_fd, self._fd = self._fd, new_fd
            os.close(old_fd)
            # The new file starts with an open record: it verifies on its own.
            self._pending_open = "rotate"
            state = self.state.copy()
            self._write(self._open_line(state))
            self._commit(state)
        return True

    def health(self) -> str | None:
        """None when records can be written, else why not (for ``/readyz``). Cheap: no
        write; a full disk shows as no free blocks."""
        if self._broken is not None:
            return self._broken
        if self.path is None:
            return None  # stderr
        fd = self._fd
        if fd is None:
            return f"audit log {self.path} is closed"
        try:
            if os.fstatvfs(fd).f_bavail == 0:
                return f"audit log {self.path}: no space left on its file system"
        except OSError as exc:
            return f"audit log {self.path}: {exc}"
        return None

    def _identity(self) -> tuple[int, int]:
        assert self._fd is not None
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        """Sign what is unsigned (a clean shutdown leaves no unsigned tail), then close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            self._safe_checkpoint()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
