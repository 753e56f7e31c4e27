"""The kill switch and token revocation at the door: a CONNECT of a stopped agent, or with
a revoked or voided token, is refused.

Reads only the flags' local view (``state.FlagView``), which the flag store keeps current;
live sessions are ended by the control plane when a flag changes (``proxy/flag_watch.py``).
"""

from __future__ import annotations

from ..mqtt import ReasonCode
from ..policy.decision import Decision, Verdict
from ..state import FlagView
from .base import Request


class KillSwitchCheck:
    name = "kill_switch"
    kinds = frozenset({"connect"})
    # A brake is never only observed: dry-run mode forwards what the policy would refuse,
    # but a stopped agent stays stopped.
    enforce = True

    def __init__(self, view: FlagView) -> None:
        self._view = view

    def check(self, request: Request, decision: Decision, now: float) -> Decision | None:
        killed = self._view.is_killed(request.agent_id)
        if killed is not None:
            return Decision(Verdict.DENY, killed, ReasonCode.BANNED, "connect",
                            rule="guard: kill switch")
        void = self._view.token_void(request.agent_id, request.token_id, request.issued_at)
        if void is not None:
            return Decision(Verdict.DENY, f"{void}: connect with a new token",
                            ReasonCode.BAD_USER_NAME_OR_PASSWORD, "connect",
                            rule="guard: token revocation")
        return None
