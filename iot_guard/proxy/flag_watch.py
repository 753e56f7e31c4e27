"""Flag changes reach live sessions: a kill, a revoked token or a void-before time ends
the sessions it covers, through the control plane.

The flag store calls ``on_flag`` after its view shows the change (so a reconnect racing
the kill is refused at the door by ``KillSwitchCheck``); a doorbell may ring twice for one
change, and disconnecting an agent that is gone is a no-op, so this is idempotent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..mqtt import ReasonCode
from ..state import ALL_AGENTS, FlagEvent

if TYPE_CHECKING:
    from .control import ControlPlane

log = logging.getLogger("iot_guard.flags")


class FlagWatch:
    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    def on_flag(self, event: FlagEvent) -> None:
        control = self._control
        if event.kind == "kill":
            agent = None if event.agent == ALL_AGENTS else event.agent
            who = "every agent" if agent is None else f"agent {agent}"
            ended = control.disconnect(
                agent, ReasonCode.ADMINISTRATIVE_ACTION,
                f"kill switch for {who} by {event.by}: {event.reason}",
            )
            log.warning("kill switch for %s by %s (%s): %d session(s) ended", who, event.by,
                        event.reason, ended)
        elif event.kind == "revoke" and event.jti is not None:
            control.disconnect_where(
                lambda s: s.token_id == event.jti, ReasonCode.NOT_AUTHORIZED,
                f"token {event.jti} revoked: {event.reason}",
            )
        elif event.kind == "void_before":
            everyone = event.agent in (None, ALL_AGENTS)
            control.disconnect_where(
                lambda s: (everyone or s.agent_id == event.agent)
                and (s.token_issued_at is None or s.token_issued_at < event.at),
                ReasonCode.NOT_AUTHORIZED,
                f"tokens issued before {event.at:.0f} are void: {event.reason}",
            )
