"""What produced a result: the commit of the code that ran and the machine it ran on. Every result
file (study runs, benchmark tables) names both."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone

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


def header(argv: list[str] | None = None) -> list[str]:
    """The comment lines a result file starts with: the command that wrote it, when, on which CPU
    and code, and how loaded the machine was."""
    import torch

    dirty = dirty_paths()
    code = commit() + (f" (uncommitted: {', '.join(dirty)})" if dirty else "")
    return [f"# $ {shlex.join(['python', *(sys.argv if argv is None else argv)])}",
            f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, commit {code}",
            f"# load average at the start {load_average()} (1, 5, 15 min); this process at nice {os.nice(0)}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
