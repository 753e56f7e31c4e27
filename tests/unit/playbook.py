"""Session tests as playbooks: events in, the exact commands out (mitmproxy's Playbook).

    assert (
        Playbook(session)
        >> AgentData(encode(publish, 5))
        << audit(decision="allow", tool="shadow_update")
        << SendToBroker(encode(publish, 5))
    )

``>>`` feeds an event; every ``<<`` after it names one command the session must return
for that event, in order, and nothing else may come. A command is compared exactly,
except where a matcher stands in for it (``audit(**fields)`` compares the named fields
of an audit record; ``ANY`` matches any one command).
"""

from __future__ import annotations

from typing import Any

from iot_guard.session import Command, Event, GuardSession, WriteAudit

NOW = 1_800_000_000.0


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class audit:  # noqa: N801 - reads as a command in a playbook
    """Matches a WriteAudit whose record has these fields (others are not compared)."""

    def __init__(self, **fields: object) -> None:
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WriteAudit):
            return False
        return all(other.record.get(k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        return f"audit({', '.join(f'{k}={v!r}' for k, v in self.fields.items())})"


class Playbook:
    def __init__(self, session: GuardSession, now: float = NOW) -> None:
        self.session = session
        self.now = now
        self._steps: list[tuple[Event, list[object]]] = []
        self.actual: list[list[Command]] = []

    def __rshift__(self, event: Event) -> Playbook:
        self._steps.append((event, []))
        return self

    def __lshift__(self, expected: object) -> Playbook:
        assert self._steps, "a playbook starts with an event (>>)"
        self._steps[-1][1].append(expected)
        return self

    def at(self, now: float) -> Playbook:
        """Events after this one happen at ``now``."""
        self._steps.append((_At(now), []))  # type: ignore[arg-type]
        return self

    def __bool__(self) -> bool:
        for event, expected in self._steps:
            if isinstance(event, _At):
                self.now = event.now
                continue
            got = self.session.handle(event, self.now)
            self.actual.append(got)
            if len(got) != len(expected) or any(e != g for e, g in zip(expected, got, strict=True)):
                lines = [f"after {event!r} the session returned:"]
                lines += [f"  {g!r}" for g in got]
                lines.append("the playbook expected:")
                lines += [f"  {e!r}" for e in expected]
                raise AssertionError("\n".join(lines))
        return True


class _At:
    def __init__(self, now: float) -> None:
        self.now = now
