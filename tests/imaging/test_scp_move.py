"""C-MOVE with dcmtk movescu as the destination (it binds 0.0.0.0: private network namespace)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_move_to_registered_destination_only(tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for peers that bind 0.0.0.0")
    command = f"ip link set lo up && exec {sys.executable} -m tests.imaging.move_scenario {tmp_path}"
    done = subprocess.run(["unshare", "-n", "bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict["stored"] == [0] * 6
    assert verdict["move_rc"] == 0 and verdict["received"] and verdict["count"] == 6, verdict["move_output"]
    assert verdict["identical"]
    # A destination of another institution and an unknown one get nothing.
    assert verdict["foreign_received"] == 0
    assert "MoveDestinationUnknown" in verdict["unknown_output"]
