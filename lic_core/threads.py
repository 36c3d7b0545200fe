"""CPU threads of the processes lic_core starts (notebook kernels, sweep jobs, the training CLI).

Two rules keep a busy machine from turning a 1x job into a 10x one:

* idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``). OpenMP reads the
  variable once, when torch loads its runtime, so it is set in the environment of a child process
  before that child imports torch;
* a process uses no more threads than the cores it may run on (``os.sched_getaffinity``, which
  honours ``taskset``, cgroup cpusets and Slurm's allocation), shared between the jobs that run
  side by side.

An ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY`` the user exported is kept.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

WAIT_POLICY = "PASSIVE"
COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fair_share(jobs: int = 1) -> int:
    """Threads per job when ``jobs`` jobs run side by side on :func:`cores`."""
    return max(1, cores() // max(1, jobs))


def _exported(env: Mapping[str, str]) -> int:
    """The user's ``OMP_NUM_THREADS`` when it is a positive integer, else 0."""
    value = env.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


def child_env(threads: int = 0, jobs: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables for a child process: ``OMP_WAIT_POLICY`` and the thread count
    (``threads`` when > 0, else the user's ``OMP_NUM_THREADS``, else :func:`fair_share`)."""
    base = os.environ if base is None else base
    n = threads if threads > 0 else (_exported(base) or fair_share(jobs))
    return {"OMP_WAIT_POLICY": base.get("OMP_WAIT_POLICY") or WAIT_POLICY,
            **{k: str(n) for k in COUNT_VARS}}


@contextlib.contextmanager
def for_children(threads: int = 0, jobs: int = 1) -> Iterator[dict[str, str]]:
    """``os.environ`` holds :func:`child_env` inside the block (processes started there inherit
    it: papermill's kernels, worker processes), restored afterwards."""
    new = child_env(threads, jobs)
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield new
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def limit_process(threads: int = 0, jobs: int = 1) -> int:
    """This process: torch's intra-op threads to the share of :func:`child_env`, and that
    environment for the processes it starts later (data loaders, DDP workers). Returns the count."""
    import torch

    env = child_env(threads, jobs)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    n = int(env["OMP_NUM_THREADS"])
    torch.set_num_threads(n)
    return n
