"""The flags' local view: what the per-packet path asks, answered from memory.

``FlagView`` holds one immutable ``FlagSnapshot``; the flag store replaces it whole on every
change it learns of (its own writes at once, other guards' or the local CLI's by a doorbell
and a periodic re-read), so a check reads a consistent snapshot with a couple of dict
lookups and never waits on a store.
"""

from __future__ import annotations

from .records import ALL_AGENTS, FlagEvent, FlagSnapshot


class FlagView:
    """Synchronous, read-only answers from the latest snapshot of the flags."""

    __slots__ = ("_snap",)

    def __init__(self, snapshot: FlagSnapshot | None = None) -> None:
        self._snap = snapshot or FlagSnapshot()

    @property
    def snapshot(self) -> FlagSnapshot:
        return self._snap

    def replace(self, snapshot: FlagSnapshot) -> None:
        """Swap in a new snapshot (one reference assignment: readers see old or new, whole)."""
        self._snap = snapshot

    def is_killed(self, agent: str) -> str | None:
        """The reason ``agent`` is stopped (its own switch first, then the fleet-wide one)."""
        kills = self._snap.kills
        if not kills:
            return None
        kill = kills.get(agent) or kills.get(ALL_AGENTS)
        if kill is None:
            return None
        scope = "every agent" if kill.agent == ALL_AGENTS else f"agent {agent}"
        return f"kill switch for {scope} by {kill.by}: {kill.reason}"

    def token_void(self, agent: str, jti: str | None, issued_at: float | None) -> str | None:
        """Why a token may not be used (revoked id, or issued before a void-before time).

        ``issued_at`` is the token's ``iat``, whole seconds rounded down: a token whose ``iat``
        is before the void time may have been issued before it, so it is void (fail closed;
        a token issued in the same second after a kill is void too, issue a new one). A token
        without ``iat`` is void wherever a void-before time applies.
        """
        snap = self._snap
        if jti is not None and snap.revoked:
            rev = snap.revoked.get(jti)
            if rev is not None:
                return f"token {jti} revoked: {rev.reason}"
        if snap.void_before:
            for key in (agent, ALL_AGENTS):
                vb = snap.void_before.get(key)
                if vb is not None and (issued_at is None or issued_at < vb.before):
                    who = "every agent" if key == ALL_AGENTS else f"agent {agent}"
                    return f"tokens of {who} issued before {vb.before:.0f} are void: {vb.reason}"
        return None


def diff_flags(old: FlagSnapshot, new: FlagSnapshot) -> list[FlagEvent]:
    """The changes from ``old`` to ``new``, as events for watchers (kills, lifts, new
    revocations, later void-before times). Forgetting an expired revocation is no event."""
    events: list[FlagEvent] = []
    for agent, kill in new.kills.items():
        if old.kills.get(agent) != kill:
            events.append(FlagEvent("kill", agent, kill.reason, kill.at, by=kill.by))
    for agent, kill in old.kills.items():
        if agent not in new.kills:
            lift = new.lifts.get(agent)
            by, at = (lift.by, lift.at) if lift is not None else (None, kill.at)
            events.append(FlagEvent("lift", agent, kill.reason, at, by=by))
    for jti, rev in new.revoked.items():
        if jti not in old.revoked:
            events.append(FlagEvent("revoke", rev.agent, rev.reason, rev.at, jti=jti))
    for agent, vb in new.void_before.items():
        prev = old.void_before.get(agent)
        if prev is None or vb.before > prev.before:
            events.append(FlagEvent("void_before", agent, vb.reason, vb.before))
    return events
