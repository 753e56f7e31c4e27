"""Which humans decide a held action, level by level, and for how long (pure, from the policy).

A tool names its chain (``conditions.approval_chain``); a tool without one gets the default
for the action's effective risk, from the table operators know:

| risk     | default                                                                  |
| -------- | ------------------------------------------------------------------------ |
| medium   | level 1 decides within 15 min, then the request is denied as expired     |
| high     | 5 min per level, escalating 1 -> 2 -> 3; denied (expired) + alert at the last |
| critical | like high, and never approved by one person: every level approves in turn |

Levels of a default chain are the policy's approvers who may act there; a level nobody may
act at is skipped. A chain with no approver at all cannot approve anything: the request is
refused at once (fail closed). A timeout never approves.
"""

from __future__ import annotations

from dataclasses import dataclass

from iot_guard.policy_models import Approvals

MEDIUM_TIMEOUT_S = 15 * 60.0
HIGH_TIMEOUT_S = 5 * 60.0


@dataclass(frozen=True, slots=True)
class Level:
    number: int  # 1..3
    approvers: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Chain:
    name: str  # the policy's chain name, or "default:<risk>"
    levels: tuple[Level, ...]
    # Critical actions: every level approves in turn (no single person carries one out).
    every_level: bool = False
    # High and critical: an expiry at the last level raises an alert.
    alert_on_expiry: bool = False

    @property
    def total_s(self) -> float:
        return sum(level.timeout_s for level in self.levels)

    def to_record(self) -> dict[str, object]:
        return {
            "name": self.name,
            "every_level": self.every_level,
            "alert_on_expiry": self.alert_on_expiry,
            "levels": [
                {"number": lv.number, "approvers": list(lv.approvers), "timeout_s": lv.timeout_s}
                for lv in self.levels
            ],
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Chain:
        levels = record["levels"]
        assert isinstance(levels, list)
        return cls(
            name=str(record["name"]),
            levels=tuple(
                Level(int(lv["number"]), tuple(lv["approvers"]), float(lv["timeout_s"]))
                for lv in levels
            ),
            every_level=bool(record["every_level"]),
            alert_on_expiry=bool(record["alert_on_expiry"]),
        )


def approver_levels(approvals: Approvals, approver: str) -> set[int]:
    """The levels ``approver`` may act at (empty: not an approver)."""
    entry = approvals.approvers.get(approver)
    return set(entry.levels) if entry is not None else set()


def chain_for(approvals: Approvals, chain_name: str | None, risk: str) -> Chain:
    """The chain deciding an action of effective ``risk`` on a tool naming ``chain_name``."""
    high = risk in ("high", "critical")
    critical = risk == "critical"
    if chain_name is not None:
        spec = approvals.chains[chain_name]  # the loader checked the reference
        levels = tuple(
            Level(i, tuple(lv.approvers), float(lv.timeout_s))
            for i, lv in enumerate(spec.levels, start=1)
        )
        return Chain(chain_name, levels, every_level=critical, alert_on_expiry=high)
    by_level = {
        n: tuple(sorted(a for a, spec in approvals.approvers.items() if n in spec.levels))
        for n in (1, 2, 3)
    }
    if not high:
        levels = (Level(1, by_level[1], MEDIUM_TIMEOUT_S),) if by_level[1] else ()
        return Chain(f"default:{risk}", levels)
    return Chain(
        f"default:{risk}",
        tuple(Level(n, who, HIGH_TIMEOUT_S) for n, who in sorted(by_level.items()) if who),
        every_level=critical,
        alert_on_expiry=True,
    )
