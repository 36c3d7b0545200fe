"""What produced a result: the commit of the code that ran and the machine it ran on. Every result
file (study runs, benchmark tables) names both."""
from __future__ import annotations

import os
import subprocess

from lic_core.paths import REPO


def commit() -> str:
    """The commit of the code that runs (``+dirty`` when it has uncommitted changes)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def dirty_paths() -> list[str]:
    """The tracked files with uncommitted changes (what ``+dirty`` in :func:`commit` stands for)."""
    out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                         capture_output=True, text=True).stdout
    return [ln[3:] for ln in out.splitlines() if ln.strip()]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), or the architecture where that is not readable."""
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return os.uname().machine
