"""The demo's wall time idle and under competing CPU load, and their ratio (target: at most 3x).

    python benchmarks/demo_under_load.py                                # the full demo, 2 load processes
    python benchmarks/demo_under_load.py --steps 2 --limit 1 --crop 128 # smoke size (seconds of training)
    python benchmarks/demo_under_load.py --load 4 --keep                # 4 load processes, keep the outputs

Runs ``python -m lic_core demo`` twice, each into a fresh folder (so nothing is reused): first on
the machine as it is, then while ``--load`` CPU-bound processes (a pure-Python busy loop each,
started and stopped by this script) compete for the same cores. Prints a header (command, CPU,
cores, commit, date, load average before each run) and the two times with their ratio. The idle
run is only as idle as the machine: a load average well above zero before it means the ratio
understates the slowdown, and the header says so.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's lic_core, as the demo runs it

from lic_core import provenance  # noqa: E402
from lic_core.threads import cores  # noqa: E402

TARGET = 3.0
BUSY_LOOP = "while True: pass"


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes (one busy Python loop each), in their own process groups."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    """Stop the processes :func:`start_load` started (by their own ids) and reap them."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def run_demo(out: Path, demo_args: list[str], log: Path) -> float:
    """Seconds of one ``python -m lic_core demo --out OUT ...`` (its output in ``log``)."""
    cmd = [sys.executable, "-m", "lic_core", "demo", "--out", str(out), *demo_args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"demo_under_load: the demo failed (exit {rc}); last lines of {log}:\n{tail}")
    return seconds


def header(args: argparse.Namespace, demo_args: list[str]) -> list[str]:
    return [*provenance.header(),
            f"# demo: python -m lic_core demo {shlex.join(demo_args)}; cores this process may use: {cores()}",
            f"# load: {args.load} CPU-bound processes started by this script for the loaded run"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", type=int, default=2, help="competing CPU-bound processes (default 2)")
    ap.add_argument("--steps", type=int, help="demo: fine-tuning steps per run (default: sweeps/demo.yaml)")
    ap.add_argument("--limit", type=int, help="demo: test images evaluated")
    ap.add_argument("--crop", type=int, help="demo: center crop of the test images")
    ap.add_argument("--out", type=Path, help="folder for both demo runs and their logs (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the demo outputs")
    args = ap.parse_args(argv)
    demo_args = [f"--{k}={v}" for k in ("steps", "limit", "crop") if (v := getattr(args, k)) is not None]
    root = args.out or Path(tempfile.mkdtemp(prefix="demo-under-load-"))
    for sub in ("idle", "loaded"):
        shutil.rmtree(root / sub, ignore_errors=True)  # a fresh demo: no finished job reused
    root.mkdir(parents=True, exist_ok=True)
    print("\n".join(header(args, demo_args)), flush=True)
    try:
        print(f"# load average before the idle run: {provenance.load_average()}", flush=True)
        if os.getloadavg()[0] > 0.5 * cores():
            print(f"# WARNING: the machine is busy before the idle run ({os.getloadavg()[0]:.1f} on "
                  f"{cores()} cores): both times include that load, so the ratio is not the idle-vs-load "
                  "measurement", flush=True)
        idle = run_demo(root / "idle", demo_args, root / "idle.log")
        print(f"idle:   {idle / 60:6.2f} min", flush=True)
        procs = start_load(args.load)
        try:
            time.sleep(2)  # the load is running before the demo starts
            print(f"# load average before the loaded run: {provenance.load_average()}", flush=True)
            loaded = run_demo(root / "loaded", demo_args, root / "loaded.log")
        finally:
            stop_load(procs)
        print(f"loaded: {loaded / 60:6.2f} min  ({args.load} CPU-bound processes)", flush=True)
    finally:
        if not (args.keep or args.out):
            shutil.rmtree(root, ignore_errors=True)
    ratio = loaded / idle
    verdict = "within" if ratio <= TARGET else "ABOVE"
    print(f"ratio:  {ratio:.2f}x ({verdict} the target of {TARGET:g}x)")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
