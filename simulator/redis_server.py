"""A real redis-server for tests and demos of several guards, on a free loopback port.

Like ``MosquittoBroker``: a config in a temp directory, started and stopped (and restarted
on the same port, for "Redis went away" tests). Without a ``redis-server`` binary,
``start()`` raises ``RedisUnavailable`` saying how to install it: tests never skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from .broker import free_port

INSTALL_HINT = ("redis-server is needed for the shared state. Install it with "
                "`sudo apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`.")


class RedisUnavailable(RuntimeError):
    """No redis-server here; the message says how to install it."""


class RedisServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="iot-guard-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, prefix: str | None = None) -> str:
        """A URL for the guard's ``--state``; ``prefix`` keeps tests' keys apart."""
        url = f"redis://{self.host}:{self.port}/{db}"
        return f"{url}?prefix={prefix}" if prefix else url

    def fresh_url(self) -> str:
        """A URL whose keys no other test has used (empty state without a FLUSHALL)."""
        return self.url(prefix=f"t{uuid.uuid4().hex[:12]}")

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(INSTALL_HINT)
        conf = self._dir / "redis.conf"
        conf.write_text(
            f"bind {self.host}\nport {self.port}\nprotected-mode no\n"
            f"dir {self._dir}\nlogfile {self._dir / 'redis.log'}\n"
            # Durable like a production deployment: every write appended and fsynced.
            "appendonly yes\nappendfsync everysec\nsave ''\ndaemonize no\n"
        )
        self._proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)  # a bounded wait for the server's port, failing loudly below
        raise RuntimeError(f"redis-server not up in {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        log = self._dir / "redis.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer({self.host}:{self.port})"
