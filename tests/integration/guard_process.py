"""A guard in a process of its own, for tests that kill one (``kill -9``: no clean stop, no
claim released): ``python -m tests.integration.guard_process CONFIG_JSON``.

The guard runs as ``iot-guard run`` builds it (the approvals addon, the admin API) with a
short approvals lease so a takeover is quick, and prints one JSON line with its ports once
it listens. The parent reads that line (``GuardProcess.start``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


async def _serve(spec: dict[str, Any]) -> None:
    from iot_guard.admin import AdminApp
    from iot_guard.approvals.addon import ApprovalsAddon
    from iot_guard.proxy.server import GuardConfig, GuardServer

    config = GuardConfig(
        policy_dir=Path(spec["policy"]), upstream_host=spec["upstream_host"],
        upstream_port=spec["upstream_port"], secret=bytes.fromhex(spec["secret"]),
        upstream_username=spec["username"], upstream_password=spec["password"],
        listen_port=0, audit_path=Path(spec["audit"]), state=spec["state"],
    )
    admin = AdminApp("127.0.0.1", 0, config.secret)
    addon = ApprovalsAddon(lease_s=spec["lease_s"], instance=spec["instance"])
    server = GuardServer(config, addons=[addon, admin])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    await server.start()
    print(json.dumps({"port": server.port, "admin": admin.url}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


class GuardProcess:
    def __init__(self, **spec: Any) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.admin_url = ""

    def start(self, timeout: float = 15.0) -> GuardProcess:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), os.environ.get("PYTHONPATH", "")])}
        with open(self.spec["log"], "w") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.guard_process", json.dumps(self.spec)],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=root, env=env)
        assert self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.kill()
                raise TimeoutError(f"guard process did not start within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            err = Path(self.spec["log"]).read_text()
            raise RuntimeError(f"guard process failed to start: {err[-2000:]}")
        ready = json.loads(line)
        self.port, self.admin_url = ready["port"], ready["admin"]
        return self

    def kill(self) -> None:
        """SIGKILL: the guard dies mid-work, releasing nothing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1])))
