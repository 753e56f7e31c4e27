"""The README's Quickstart, run as written, top to bottom, against the Mosquitto installed here
(issue 9, point 1): broker accounts and ACL, the simulated fleet, the guard, an agent."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from simulator.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def quickstart_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quickstart")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", readme[start:end], re.S)


def test_the_install_block_is_what_ci_installs() -> None:
    """The first block installs Mosquitto and the package; CI's .ci/install has done both
    for this run (it cannot be repeated inside a test), so it is checked, not run."""
    install = quickstart_blocks()[0]
    commands = [line.split("#")[0].strip() for line in install.splitlines() if line.strip()]
    assert commands == [
        "sudo apt-get install -y mosquitto mosquitto-clients",
        "pip install -e .",
    ]
    ci = (ROOT / ".ci" / "install").read_text()
    assert "apt-get install -y -qq mosquitto mosquitto-clients" in ci
    assert "pip install" in ci and "-e \"." in ci


def test_the_quickstart_runs_top_to_bottom(tmp_path: Path) -> None:
    blocks = quickstart_blocks()
    assert len(blocks) == 3, "install, run, stop"
    script = blocks[1] + "\n" + blocks[2]
    env = {
        **os.environ,
        "BROKER_PORT": str(free_port()),
        "GUARD_PORT": str(free_port()),
        "TMPDIR": str(tmp_path),  # where its mktemp -d goes: checked empty at the end
    }
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        # Whatever happened, nothing the block started outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    # The agent read a reading through the guard, changed a shadow, and was refused twice.
    assert re.search(r'^\{"timestamp".*"target_temp_c"', out, re.M), out
    assert "Warning: Publish 1 failed: Payload format invalid." in out
    assert "All subscription requests were denied." in out
    # ... and the audit log (the block prints its refusals) says why.
    assert "payload refused by tool shadow_update: state.desired.target_temp_c: 45 is above" in out
    assert "'globex' is not a tenant of agent ops-agent" in out
    # The guard's console log told the story.
    assert "the broker accepts the guard's account 'iot-guard'" in out
    assert "agent ops-agent connected" in out
    assert "1 request(s) refused in the session" in out
    # The last block removed the work folder (and with it the broker's files).
    assert list(tmp_path.iterdir()) == []
