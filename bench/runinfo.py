"""What every benchmark prints about its run: uptime and load, tool versions, Lancang's commit,
and the nearest-rank percentile all the figures use."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p50 of 30 values = the 15th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def first_line(command: list[str]) -> str:
    """The first line a command prints (stdout, else stderr), or "?"."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def lancang_revision() -> dict:
    """The measured code: Lancang's commit and the tracked files changed since it."""
    git = ["git", "-C", str(REPO)]
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.split("\n")
    return {"lancang_commit": first_line([*git, "rev-parse", "--short", "HEAD"]),
            "lancang_modified_files": [line[3:] for line in dirty if line.strip()]}
