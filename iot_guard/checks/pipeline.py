"""The ordered list of checks every agent action passes after the policy.

Verdicts only get stricter along the pipeline: allow < hold < deny. The first deny
stays the reason given; later checks still see the request (and may record
observations) but cannot soften it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..policy.decision import Decision, Verdict
from .base import KINDS, Check, Request

_SEVERITY = {Verdict.ALLOW: 0, Verdict.HOLD: 1, Verdict.DENY: 2}


@dataclass(frozen=True, slots=True)
class Objection:
    """What an observe-mode check would have done."""

    check: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Judgement:
    decision: Decision  # what is enforced
    observed: tuple[Objection, ...] = ()  # would_deny / would_hold of observe-mode checks


class Pipeline:
    """Checks registered at start-up, indexed by the kinds of action they look at, so an
    action no check asks for costs one dict lookup."""

    def __init__(self, checks: Iterable[Check] = ()) -> None:
        self.checks: tuple[Check, ...] = tuple(checks)
        for check in self.checks:
            unknown = set(check.kinds) - KINDS
            if unknown:
                raise ValueError(f"check {check.name!r} asks for unknown kinds {sorted(unknown)}")
        self._by_kind: dict[str, tuple[Check, ...]] = {
            kind: tuple(c for c in self.checks if kind in c.kinds) for kind in KINDS
        }

    def wants(self, kind: str) -> bool:
        return bool(self._by_kind[kind])

    def run(self, request: Request, decision: Decision, now: float) -> Judgement:
        observed: list[Objection] = []
        for check in self._by_kind[request.kind]:
            objection = check.check(request, decision, now)
            if objection is None or objection.verdict is Verdict.ALLOW:
                continue
            if not check.enforce:
                observed.append(Objection(check.name, objection))
            elif _SEVERITY[objection.verdict] > _SEVERITY[decision.verdict]:
                decision = objection
        return Judgement(decision, tuple(observed))
