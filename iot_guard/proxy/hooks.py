"""Addons: behaviour added to the server without editing the session or the proxy.

An addon is any object with some of these methods (mitmproxy's addon model):

``on_hold(held)``                       a publish was held for a human (must not block)
``on_guard_subscribe(agent_id, session_id, topic_filter)``  an agent subscribed to a
                                        ``$guard/...`` topic the guard answers itself
``on_session_closed(info)``             a session ended (its per-session state can go)
``on_policy_swapped(policy)``           a new policy is in force
``on_alert(alert)``                     a check raised an alert (``checks.alerts.Alert``)
``async start(server)`` / ``async stop()``  addons that run services (approvals, admin)

A hook that raises is logged and the others still run: one broken addon must not stop
the proxy from serving every other agent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("iot_guard.hooks")

HOOKS = frozenset({
    "on_hold", "on_guard_subscribe", "on_session_closed",
    "on_policy_swapped", "on_alert",
})


class Hooks:
    def __init__(self, addons: Iterable[object] = ()) -> None:
        self.addons: tuple[object, ...] = tuple(addons)
        self._by_name: dict[str, tuple[Any, ...]] = {
            name: tuple(getattr(a, name) for a in self.addons if callable(getattr(a, name, None)))
            for name in HOOKS
        }

    def has(self, name: str) -> bool:
        return bool(self._by_name[name])

    def call(self, name: str, *args: object) -> None:
        for hook in self._by_name[name]:
            try:
                hook(*args)
            except Exception:
                log.exception("addon hook %s failed", name)

    async def start(self, server: object) -> None:
        for addon in self.addons:
            start = getattr(addon, "start", None)
            if start is not None:
                await start(server)

    async def stop(self) -> None:
        for addon in reversed(self.addons):
            stop = getattr(addon, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("addon %r failed to stop", addon)
