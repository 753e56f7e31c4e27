"""The README's examples, run as written against a real guard (issue 9, points 11 and 14)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from iot_guard.tokens import issue_token

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
T1 = "tenants/acme/devices/therm-001"


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_aiomqtt_example_sees_the_refusal_on_guard_events(
    iot_guard: Any, iot_guard_secret: bytes
) -> None:
    """aiomqtt hides the PUBACK reason code; the README's example reads $guard/events."""
    (code,) = re.findall(
        r"```python\n(.*?)```", section("Refusals with clients that hide reason codes")
        , re.S,
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md (aiomqtt example)", "exec"), namespace)  # noqa: S102
    token = issue_token(iot_guard_secret, "ops-agent", ttl_s=60)
    event = asyncio.run(
        namespace["publish_and_explain"]("127.0.0.1", iot_guard.port, "ops-agent", token)
    )
    assert event["decision"] == "deny" and event["reason_code"] == 0x99
    assert "target_temp_c: 45 is above the maximum 30" in event["reason"]


def test_the_sample_event_is_what_the_guard_sends(
    iot_guard_agent: Any, iot_guard_policy_dir: Path
) -> None:
    """The README's sample $guard/events payload, field by field (the timestamp aside), and
    its rule names the line that really holds the field that refused."""
    (sample_text,) = re.findall(r"```json\n(.*?)```", section("How a packet is judged"), re.S)
    sample = json.loads(sample_text)
    agent = iot_guard_agent("ops-agent")
    agent.subscribe("$guard/events")
    agent.publish(f"{T1}/shadow/update", {"state": {"desired": {"target_temp_c": 45}}})
    event = agent.guard_event(where=lambda e: e["topic"] == f"{T1}/shadow/update")
    assert set(event) == set(sample)
    real_rule = event.pop("rule").replace(f"{iot_guard_policy_dir}/", "device_policies/")
    assert sample.pop("rule") == real_rule
    event.pop("timestamp"), sample.pop("timestamp")
    assert event == sample
    # The line the rule cites holds the field whose bounds refused the value.
    where = real_rule.split(" ")[0]
    file, line = where.rsplit(":", 1)
    root = iot_guard_policy_dir.parent
    assert (root / file).read_text().splitlines()[int(line) - 1].strip() == "target_temp_c:"
