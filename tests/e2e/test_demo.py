"""`make demo` end to end: the scripted agent through a real guard, broker and fleet."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from simulator import demo

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_step_and_exits_zero(tmp_path: Path) -> None:
    out = io.StringIO()
    assert demo.run(out, workdir=tmp_path) == 0, out.getvalue()
    text = out.getvalue()
    rows = re.findall(r"^\s+(\d+)\s{2}(.+?)\s{2,}(ok|FAIL)\s", text, flags=re.MULTILINE)
    assert [(n, result) for n, _, result in rows] == [(str(i), "ok") for i in range(1, 12)]
    # Reasons reach the agent: the tenant, the field and the approval threshold are named.
    assert "'globex' is not a tenant of agent ops-agent" in text
    assert "target_temp_c" in text and "0x99" in text
    assert "approval" in text
    # The held push: the agent got the id, the CLI approved it, the guard rolled it out
    # device by device; a second was denied and a third expired after escalating.
    assert re.search(r"PUBACK 0x83; held for approval \w+ \(the agent has the id\)", text)
    assert "rollout: 1/5 succeeded" in text and "rollout: 5/5 succeeded" in text
    assert "devices report firmware_channel ['beta']" in text
    assert "denied by alice: not during business hours" in text
    assert "escalated through levels [1, 2, 3]; expired" in text
    # The example policy's limit: 20 identify commands a minute, the 21st refused; alerts.
    assert "20 of 20 identified; 21st PUBACK 0x97: rate limit: tool identify_device" in text
    assert "ALERT rate_limit (alert) agent=ops-agent" in text
    # The guard recorded the refusals; the audit log outlives the demo.
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("result_status") == "denied" for r in records)
    assert any(r.get("result_status") == "success" for r in records)
    executed = [r for r in records if r.get("event") == "approval_execute"]
    assert [r["resource_id"] for r in executed] == [f"acme/therm-00{i}" for i in range(1, 6)]
    actions = [r["action"] for r in records if r.get("event") == "approval"]
    assert actions.count("escalated") == 2 and "expired" in actions and "denied" in actions
    # Everything it started is stopped: the broker's log ends with its shutdown.
    assert "mosquitto version 2" in (tmp_path / "broker" / "mosquitto.log").read_text()
    assert "terminating" in (tmp_path / "broker" / "mosquitto.log").read_text()


def test_python_m_simulator_demo_is_what_make_demo_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every step behaved as expected" in proc.stdout
    assert not proc.stderr.strip(), proc.stderr
    # Its temp folder (broker files, audit log) is gone: nothing left behind in /tmp.
    assert "iot-guard-demo-" in proc.stdout
    assert list(tmp_path.iterdir()) == []
