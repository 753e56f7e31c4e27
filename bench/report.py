"""The rows of the final table and how they print."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    name: str
    direct: str
    guard: str
    ratio: str
    goal: str
    met: bool | None  # None: informational, no goal

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


def table(rows: list[Row]) -> str:
    head = Row("benchmark", "direct / cedar", "guard / compiled", "ratio", "goal", None)
    cols = [
        max(len(r.name) for r in [head, *rows]),
        max(len(r.direct) for r in [head, *rows]),
        max(len(r.guard) for r in [head, *rows]),
        max(len(r.ratio) for r in [head, *rows]),
        max(len(r.goal) for r in [head, *rows]),
    ]

    def fmt(r: Row, verdict: str) -> str:
        return (
            f"{r.name:<{cols[0]}}  {r.direct:>{cols[1]}}  {r.guard:>{cols[2]}}  "
            f"{r.ratio:>{cols[3]}}  {r.goal:<{cols[4]}}  {verdict}"
        ).rstrip()

    line = "-" * len(fmt(head, "verdict"))
    return "\n".join([fmt(head, "verdict"), line, *(fmt(r, r.verdict) for r in rows), line])
