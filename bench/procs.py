"""Start benchmark processes (workers, the guard) and read their JSON lines with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulator.broker import free_port

REPO = Path(__file__).resolve().parent.parent


def wait_for_port(
    host: str, port: int, deadline_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``host:port`` accepts a connection; raise if the deadline passes first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # polling a port that is not open yet
    raise TimeoutError(f"{host}:{port} did not accept connections within {deadline_s}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # Fields 14 and 15 of stat (utime, stime), counted after the ")" of the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (Linux /proc), 0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def stop_process(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, up to ``grace_s`` to exit (the guard's CLI stops cleanly, and cProfile
    writes its file), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def raise_fd_limit() -> int:
    """The guard's own rule (it raises its limit at start too): soft open-files limit up
    to the hard one, so thousands of sessions fit. Children inherit it."""
    from iot_guard.proxy.limits import raise_open_files_limit

    return raise_open_files_limit()


class Worker:
    """One ``bench.workers`` process; its stderr goes to a file named in every error.

    Roles that wait for a start signal read a line from stdin: ``go()`` sends it.
    """

    def __init__(self, role: str, args: dict[str, Any], logdir: Path, name: str) -> None:
        self.name = name
        self.err_path = logdir / f"{name}.stderr"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.workers", role, json.dumps(args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
            )
        self._buf = b""

    def line(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON line on stdout; raise with the worker's stderr if it does not come."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no output within {timeout_s}s{self._stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}{self._stderr()}"
                    )
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\n")
        return dict(json.loads(raw))

    def go(self) -> None:
        """Tell a waiting worker to go on (one line on its stdin)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise RuntimeError(f"{self.name} exited early{self._stderr()}") from exc

    def _stderr(self) -> str:
        try:
            tail = self.err_path.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return ""
        return ("\n--- " + str(self.err_path) + " ---\n" + "\n".join(tail)) if tail else ""

    def finish(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)
        self.stop()

    def stop(self) -> None:
        stop_process(self.proc, 5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class GuardProcess:
    """``python -m iot_guard run`` in its own process (its own GIL), optionally profiled."""

    def __init__(
        self,
        policy_dir: Path,
        upstream_port: int,
        workdir: Path,
        profile: Path | None = None,
        host: str = "127.0.0.1",
        state: str | None = None,
    ) -> None:
        from iot_guard.tokens import new_secret

        self.host = host
        self.policy_dir = policy_dir
        self.port = free_port(host)
        self.workdir = workdir
        secret_text = new_secret()
        self.secret = secret_text.encode()
        self.secret_file = workdir / "guard.secret"
        self.secret_file.write_text(secret_text + "\n")
        self.secret_file.chmod(0o600)
        self.audit_path = workdir / "audit.jsonl"
        self.log_path = workdir / "guard.log"
        # The audit chain is on as in production: hashed records, signed checkpoints.
        from iot_guard.audit.signer import write_keys

        self.audit_key, self.audit_pub = write_keys(workdir / "audit-keys", "bench.iot-guard/audit")
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += [
            "-m", "iot_guard", "run",
            "--policy", str(policy_dir),
            "--listen", f"{host}:{self.port}",
            "--upstream", f"127.0.0.1:{upstream_port}",
            "--secret-file", str(self.secret_file),
            "--audit-log", str(self.audit_path),
            "--audit-key", str(self.audit_key),
            *(["--state", state] if state else []),  # e.g. redis:// (scale-out bench)
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        try:
            wait_for_port(host, self.port, 30.0, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"the guard did not start: {exc}\n{self.log_tail()}") from exc

    def token(self, agent_id: str) -> str:
        from iot_guard.tokens import issue_token

        return issue_token(self.secret, agent_id, ttl_s=3600)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no guard log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.proc, 20)


class PassthroughProcess:
    """``python -m bench.passthrough``: a byte-copying proxy in front of the broker, the
    benches' reference for what one more process on the path costs (see passthrough.py)."""

    def __init__(self, upstream_port: int, workdir: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.log_path = workdir / "passthrough.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.passthrough", str(self.port), str(upstream_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )
        try:
            wait_for_port(host, self.port, 30.0, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"the passthrough did not start: {exc}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}") from exc

    def stop(self) -> None:
        stop_process(self.proc, 10)
