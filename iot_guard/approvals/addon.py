"""The approvals addon: plugs the approval service into a running guard.

Hooks (``proxy.hooks``): ``on_hold`` parks a held publish as a request (scheduled on the
loop: the packet path never waits on the store), ``on_guard_subscribe`` answers an agent's
``$guard/approvals/...`` subscription with the state of its requests, and ``start``/``stop``
open the state store, the executor connection and the service.

``addon.service`` exists from construction, so the admin API can subscribe to it before the
guard starts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from iot_guard.state import StateError, Stores, default_state_dir, open_state

from .executor import ExecutorClient, ExecutorError
from .service import ApprovalService, HeldLike

log = logging.getLogger("iot_guard.approvals")

EXECUTOR_PREFIX = "iotguard-exec:"


class ApprovalsAddon:
    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        state: Stores | None = None,
        instance: str | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.service = ApprovalService()
        if lease_s is not None:
            self.service.lease_s = lease_s
        self._state_dir = state_dir
        self._state = state
        self._own_state = state is None
        self.instance = instance or secrets.token_hex(4)
        self.executor: ExecutorClient | None = None
        self._server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, server: Any) -> None:
        self._server = server
        config = server.config
        if self._state is None and self._state_dir is None and getattr(server, "state", None):
            # The guard's own state store (opened at its start, fail closed).
            self._state, self._own_state = server.state, False
        if self._state is None:
            where = self._state_dir or default_state_dir(config.audit_path)
            self._state = await open_state(where)
        # The guard's own broker account, a client id no agent can take (theirs are
        # namespaced "iotguard:<agent>:...").
        self.executor = ExecutorClient(
            config.upstream_host,
            config.upstream_port,
            EXECUTOR_PREFIX + self.instance,
            username=config.upstream_username,
            password=config.upstream_password,
            ssl_context=getattr(server, "upstream_ssl", None),
        )
        control = server.control
        self.service.bind(
            self._state.approvals,
            lambda: server.policy,
            executor=self.executor,
            audit=server.audit.write,
            notify=control.notify,
            hold_resolved=control.hold_resolved,
            flags=self._state.flags.view,
            # Claims on requests being carried out name this guard (several share a store).
            instance=EXECUTOR_PREFIX + self.instance,
        )
        await self.executor.start()
        try:
            await self.executor.wait_connected(config.connect_timeout)
        except ExecutorError as exc:
            # Requests are still parked and decided; carrying them out waits for the broker.
            log.error("approvals: %s; retrying in the background", exc)
        await self.service.start()
        log.info("approvals service started (state %s, executor %s)",
                 self._state.location, self.executor.client_id)

    async def stop(self) -> None:
        await self.service.stop()
        if self.executor is not None:
            await self.executor.stop()
        if self._state is not None and self._own_state:
            await self._state.close()
            self._state = None

    # -- hooks --------------------------------------------------------------------------------

    def on_hold(self, held: HeldLike) -> None:
        task = asyncio.get_running_loop().create_task(self._hold(held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold(self, held: HeldLike) -> None:
        try:
            await self.service.hold(held)
        except Exception as exc:
            # Fail closed: a request that cannot be stored is refused (nothing is sent), the
            # agent is told on $guard/approvals/<id> and by its hold's outcome, and audited.
            log.error("approvals: could not park held action %s: %s", held.hold_id, exc)
            self.service.refuse_hold(held, f"the approvals state is unreachable ({exc})"
                                     if isinstance(exc, StateError) else f"internal error: {exc}")

    def on_guard_subscribe(self, agent_id: str, session_id: str, topic_filter: str) -> None:
        self.service.on_guard_subscribe(agent_id, session_id, topic_filter)
