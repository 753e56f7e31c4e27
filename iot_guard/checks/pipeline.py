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
_ALLOW = Verdict.ALLOW  # a module constant: an Enum class attribute costs a descriptor call


@dataclass(frozen=True, slots=True)
class Objection:
    """What an observe-mode check would have done."""

    check: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Judgement:
    decision: Decision  # what is enforced
    observed: tuple[Objection, ...] = ()  # would_deny / would_hold of observe-mode checks


# Judgements of "nothing to add" kept per decision object (the policy hands out one shared
# Decision per topic and verdict): at most this many, then the table starts over.
JUDGED_CACHE = 4096


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
        # id(decision) -> Judgement(decision): what most packets get (the checks had nothing
        # to say about the decision they were given). The judgement holds its decision,
        # so the id is not reused while it is in the table.
        self._judged: dict[int, Judgement] = {}

    def wants(self, kind: str) -> bool:
        return bool(self._by_kind[kind])

    def run(self, request: Request, decision: Decision, now: float) -> Judgement:
        given = decision
        observed: list[Objection] | None = None
        for check in self._by_kind[request.kind]:
            objection = check.check(request, decision, now)
            if objection is None or objection.verdict is _ALLOW:
                continue
            if not check.enforce:
                if observed is None:
                    observed = []
                observed.append(Objection(check.name, objection))
            elif _SEVERITY[objection.verdict] > _SEVERITY[decision.verdict]:
                decision = objection
        if observed is not None:
            return Judgement(decision, tuple(observed))
        if decision is not given:  # a check's own refusal: new per packet, not kept
            return Judgement(decision)
        judged = self._judged.get(id(decision))
        if judged is None:
            if len(self._judged) >= JUDGED_CACHE:
                self._judged.clear()
            judged = self._judged[id(decision)] = Judgement(decision)
        return judged
