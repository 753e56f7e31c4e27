"""`iot-guard run` stops cleanly on a signal that arrives while the server is starting.

The listener opens before the addons (upstream check, approvals, admin) finish starting, so
a client can be served and a SIGTERM sent inside that window. The default action there
would kill the guard (exit -15, audit left unclosed); CI once caught exactly that.
"""
from __future__ import annotations

import asyncio
import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from iot_guard import cli
from iot_guard.proxy import server as server_module


class StartingServer:
    """Stands in for GuardServer: signals itself in the middle of start()."""

    instances: list[StartingServer] = []

    def __init__(self, config: Any, policy: Any, addons: list[object]) -> None:
        self.links: list[object] = []
        self.handler_at_start: object = None
        self.stopped = False
        StartingServer.instances.append(self)

    async def start(self) -> None:
        self.handler_at_start = signal.getsignal(signal.SIGTERM)
        if self.handler_at_start is signal.SIG_DFL:
            return  # sending SIGTERM now would kill the test run; the assertion says why
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0)  # still starting when the signal lands

    async def stop(self) -> None:
        self.stopped = True


def test_sigterm_while_starting_stops_the_guard_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "GuardServer", StartingServer)
    settings = SimpleNamespace(admin=None, metrics=None, upstream_check_interval=30.0)
    config = SimpleNamespace(secret=b"s" * 32)
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(
            asyncio.wait_for(cli._serve(settings, config, None), timeout=10))  # type: ignore[arg-type]
    finally:
        loop.close()
    server = StartingServer.instances[-1]
    assert server.handler_at_start is not signal.SIG_DFL, "SIGTERM had its default action"
    assert code == cli.EXIT_OK
    assert server.stopped
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop gave it back
