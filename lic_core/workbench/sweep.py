"""Parameter sweeps: a YAML grid expanded into papermill executions of one notebook.

``python -m lic_core sweep FILE.yaml [--executor local|slurm] [--jobs N] [--dry-run]``

A sweep YAML (relative paths resolve against the current directory)::

    name: lambda-grid                  # sweep name -> papermill_runs/<name>/
    notebook: notebooks/01_train.ipynb
    output: papermill_runs/lambda-grid # optional, this is the default
    kernel: python3                    # optional
    timeout: 3600                      # optional, seconds one job may run
    jobs: 2                            # optional, jobs at a time (local) / array parallelism (Slurm)
    threads: 1                         # optional, OpenMP threads per job (default: the job's share
                                       #   of the cores it may use, see lic_core.threads)
    parameters: {model: tiny, steps: 300}   # fixed, given to every job
    grid: {lmbda: [0.0035, 0.013], mode: [standard, balanced]}   # cartesian product
    exclude: [{lmbda: 0.0035, mode: balanced}]                    # optional, drop grid points
    include: [{lmbda: 0.0483, mode: balanced}]                    # optional, extra jobs
    slurm: {slurm_partition: gpu, gpus_per_node: 1, cpus_per_task: 8}   # submitit parameters

Each job runs the notebook through papermill (parameters injected after the cell tagged
``parameters``, plus ``run_dir``) into ``<output>/<job>/``: ``notebook.ipynb`` (executed, kept on
failure), ``parameters.json``, ``run/`` (= ``run_dir``, where the notebook writes checkpoints and
``metrics.json``), ``log.txt`` and, on failure, ``error.txt``. ``<output>/manifest.json`` holds
every job's state (pending / running / done / failed), written atomically under a file lock by
the workers themselves, so it stays true when the sweep process dies. Re-running the same command
skips done jobs and runs the rest (failed, pending, and running jobs whose process is gone).

Every kernel starts with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of
spinning, which on a busy machine costs the job far more than its share of the CPU) and a thread
count that fits the cores it gets. With ``progress``, the sweep prints a line per finished job
(its time, the jobs left and an estimate of the time left) and, while jobs run, a heartbeat every
30 s naming each running job and its last training step.

Underneath is the project's one scheduler, :func:`run_tasks`: a list of :class:`Task` (a
picklable function with its arguments, a name, and the names of the earlier tasks it needs) run in
order, locally in ``jobs`` spawned worker processes or through submitit (on Slurm, in waves of job
arrays), each task with its own torch thread count. The caller decides what is finished (a
``done`` predicate: re-runs resume); a failing task is reported by name and fails only the tasks
that need it. Notebook sweeps and the studies' protocols both run through it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import multiprocessing
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from filelock import FileLock, Timeout

from lic_core.atomic import sigterm_exits, write_file
from lic_core.config import parse_yaml
from lic_core.errors import ConfigError, LicError, command, one_line
from lic_core.paths import REPO

STATES = ("pending", "running", "done", "failed")
EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")
KEYS = {"name", "notebook", "output", "kernel", "timeout", "jobs", "threads", "parameters", "grid",
        "exclude", "include", "slurm"}
RESERVED = ("run_dir",)
MANIFEST, SPEC_FILE = "manifest.json", "sweep.json"
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                "SUSPENDED"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Job:
    """One notebook execution: its directory name and full parameters (``run_dir`` excluded)."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep YAML; :meth:`expand` gives the jobs in a deterministic order."""

    name: str
    notebook: Path
    output: Path
    kernel: str = "python3"
    timeout: float | None = None
    jobs: int = 1
    threads: int = 0  # torch/OpenMP threads per job's kernel (0: the library default)
    parameters: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)

    def expand(self) -> list[Job]:
        """Grid points (in YAML key order) minus ``exclude``, then ``include``; names unique."""
        keys = list(self.grid)
        points = [dict(zip(keys, vals)) for vals in itertools.product(*self.grid.values())]
        points = [p for p in points if not any(_matches(p, ex) for ex in self.exclude)]
        varying = keys + [k for inc in self.include for k in inc if k not in keys]
        jobs: dict[str, Job] = {}
        for where, point in [*((f"grid point {p}", p) for p in points),
                             *((f"include[{i}]", p) for i, p in enumerate(self.include))]:
            job = Job(job_name(self.parameters | point, varying), self.parameters | point)
            if job.name in jobs:
                raise ConfigError(f"sweep {self.name!r}: {where} repeats job {job.name!r}")
            jobs[job.name] = job
        return list(jobs.values())


def _matches(point: dict[str, Any], partial: dict[str, Any]) -> bool:
    return all(k in point and point[k] == v for k, v in partial.items())


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def job_name(parameters: dict[str, Any], varying: list[str]) -> str:
    """Readable slug of the varying parameters + 8 hex digits of a hash of *all* parameters.

    ``{"lmbda": 0.013, "mode": "balanced", "steps": 300}`` varying over lmbda, mode ->
    ``lmbda-0.013_mode-balanced-<hash>``. Changing a fixed parameter changes every name, so a
    stale result is never mistaken for a new one.
    """
    parts = [f"{k}-{_slug(parameters[k])}" for k in varying if k in parameters]
    slug = "_".join(parts)[:80].strip("_-.") or "job"
    return f"{slug}-{hashlib.sha1(_canonical(parameters).encode()).hexdigest()[:8]}"


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return re.sub(r"[^A-Za-z0-9.+]+", "~", text).strip("~") or "~"


# --------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, base: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep YAML; relative paths resolve against ``base`` (default: cwd)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    raw = parse_yaml(path.read_bytes(), f"sweep file {path}")
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path}: expected a mapping of keys, got {type(raw).__name__}")
    return spec_from_dict(raw, base=base, source=str(path))


def spec_from_dict(raw: dict[str, Any], base: str | Path | None = None,
                   source: str = "sweep") -> SweepSpec:
    """Build a :class:`SweepSpec` from a YAML mapping; every error names ``source`` and the key."""
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(KEYS)}")
    for key in ("name", "notebook"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{source}: '{key}' is required (a string)")
    name = raw["name"]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{source}: name {name!r} must be letters, digits, '.', '_' or '-'")
    base = Path(base) if base is not None else Path.cwd()
    notebook = (base / raw["notebook"]).resolve()
    if not notebook.is_file():
        raise ConfigError(f"{source}: notebook {notebook} does not exist")
    output = (base / raw.get("output", Path("papermill_runs") / name)).resolve()
    spec = SweepSpec(
        name=name, notebook=notebook, output=output,
        kernel=_typed(raw, "kernel", str, "python3", source),
        timeout=_positive(raw, "timeout", float, source),
        jobs=_positive(raw, "jobs", int, source) or 1,
        threads=_positive(raw, "threads", int, source) or 0,
        parameters=_typed(raw, "parameters", dict, {}, source),
        grid=_typed(raw, "grid", dict, {}, source),
        exclude=_dict_list(raw, "exclude", source),
        include=_dict_list(raw, "include", source),
        slurm=_typed(raw, "slurm", dict, {}, source))
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key} must be a non-empty list, got {values!r}")
    for where, mapping in _settings(spec):
        taken = sorted(set(mapping) & set(RESERVED))
        if taken:
            raise ConfigError(f"{source}: {where} sets {taken}, which the sweep sets per job")
    if not spec.expand():
        raise ConfigError(f"{source}: the sweep has no jobs (empty grid after exclude, no include)")
    return spec


def _settings(spec: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """Where the YAML sets notebook parameters: (its key, the mapping)."""
    return [("parameters", spec.parameters), ("grid", spec.grid),
            *((f"include[{i}]", inc) for i, inc in enumerate(spec.include))]


def _check_parameters(spec: SweepSpec, source: str) -> None:
    """Every parameter the sweep sets must be one of the notebook's (its ``parameters`` cell):
    papermill only warns about another name, and the job would run with the default."""
    import papermill

    try:
        known = set(papermill.inspect_notebook(str(spec.notebook)))
    except Exception as e:  # not a notebook papermill can read
        raise ConfigError(f"sweep {source}: notebook {spec.notebook} cannot be read ({one_line(e)})") from None
    for where, mapping in _settings(spec):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"sweep {source}: {where}.{unknown[0]} is not a parameter of {spec.notebook.name} "
                              f"(it has: {', '.join(sorted(known))})")


def _typed(raw: dict, key: str, kind: type, default: Any, source: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ConfigError(f"{source}: '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _positive(raw: dict, key: str, kind: type, source: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{source}: '{key}' must be a positive number, got {value!r}")
    return kind(value)


def _dict_list(raw: dict, key: str, source: str) -> list[dict]:
    value = _typed(raw, key, list, [], source)
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not item:
            raise ConfigError(f"{source}: {key}[{i}] must be a non-empty mapping, got {item!r}")
    return value


# --------------------------------------------------------------------------- manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_json(path: Path, obj: Any) -> None:
    write_file(path, json.dumps(obj, indent=2, default=str))


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """The manifest of a sweep folder (``{"sweep", "notebook", "jobs": {name: record}}``)."""
    path = Path(sweep_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: not a sweep folder (or never run)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the sweep folder is damaged") from None


@contextlib.contextmanager
def _manifest(sweep_dir: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the manifest under its lock (between processes and threads)."""
    with FileLock(str(sweep_dir / (MANIFEST + ".lock")), timeout=120):
        data = read_manifest(sweep_dir)
        yield data
        data["updated"] = _now()
        _write_json(sweep_dir / MANIFEST, data)


def _update_job(sweep_dir: Path, name: str, **fields: Any) -> dict[str, Any]:
    with _manifest(sweep_dir) as data:
        data["jobs"][name].update(fields)
        return dict(data["jobs"][name])


def _prepare(spec: SweepSpec, jobs: list[Job]) -> None:
    """Create the sweep folder, its resolved spec and manifest; add jobs not yet recorded."""
    spec.output.mkdir(parents=True, exist_ok=True)
    with FileLock(str(spec.output / (MANIFEST + ".lock")), timeout=120):
        if not (spec.output / MANIFEST).exists():
            _write_json(spec.output / MANIFEST, {"sweep": spec.name, "notebook": str(spec.notebook),
                                                 "created": _now(), "jobs": {}})
    with _manifest(spec.output) as data:
        if data["notebook"] != str(spec.notebook):
            raise ConfigError(f"{spec.output} holds a sweep of {data['notebook']}, not of "
                              f"{spec.notebook}: give the sweep another name or output")
        for job in jobs:
            data["jobs"].setdefault(job.name, {"state": "pending", "parameters": job.parameters,
                                               "attempts": 0, "created": _now()})
    _write_json(spec.output / SPEC_FILE, asdict(spec))  # after the check: a refused run leaves it as it was


def _process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            return True
        return False


def _active_elsewhere(sweep_dir: Path, rec: dict[str, Any]) -> bool:
    """Whether a job not finished is still being run by a live process or Slurm job."""
    if rec["state"] not in ("pending", "running"):
        return False
    if rec.get("slurm_job_id"):
        return _slurm_state(sweep_dir, rec["slurm_job_id"]) in SLURM_ACTIVE
    if rec["state"] == "running" and rec.get("host") == socket.gethostname() and rec.get("pid"):
        return rec["pid"] != os.getpid() and _process_alive(rec["pid"])
    return False


def _slurm_state(sweep_dir: Path, job_id: str) -> str:
    import submitit

    try:
        return submitit.SlurmJob(folder=sweep_dir / "submitit", job_id=job_id).state
    except Exception:  # no sacct here: the job cannot be still running on this machine's cluster
        return "UNKNOWN"


# --------------------------------------------------------------------------- one job


def run_job(sweep_dir: str | Path, name: str, side_by_side: int = 1) -> str:
    """Execute one job of a prepared sweep folder; returns its final state (never raises).

    This is what a local worker process or a Slurm task runs: the state transitions
    (running -> done | failed) are written to the manifest here, by the job itself. The kernel
    gets the sweep's ``threads`` or its share of this process's cores among ``side_by_side`` jobs.
    """
    sweep_dir = Path(sweep_dir)
    spec = json.loads((sweep_dir / SPEC_FILE).read_text())
    job_dir = sweep_dir / name
    run_dir = job_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "error.txt").unlink(missing_ok=True)
    with _manifest(sweep_dir) as data:
        rec = data["jobs"][name]
        rec.update(state="running", started=_now(), finished=None, error=None,
                   host=socket.gethostname(), pid=os.getpid(), attempts=rec["attempts"] + 1)
        params = rec["parameters"] | {"run_dir": str(run_dir)}
    _write_json(job_dir / "parameters.json", params)
    t0 = time.monotonic()
    with open(job_dir / "log.txt", "a") as log:
        log.write(f"=== attempt started {_now()} on {socket.gethostname()} pid {os.getpid()}\n")
        log.flush()
        try:
            with _alarm(spec["timeout"]), _kernel_env(spec.get("threads", 0), side_by_side):
                _execute(Path(spec["notebook"]), job_dir / "notebook.ipynb", params,
                         spec["kernel"], spec["timeout"], log)
            fields = {"state": "done", "error": None}
        except Exception as e:  # noqa: BLE001 -- any failure is recorded, the sweep goes on
            message, detail = _describe(e)
            (job_dir / "error.txt").write_text(detail)
            log.write(detail)
            fields = {"state": "failed", "error": message}
    _update_job(sweep_dir, name, finished=_now(), duration_s=round(time.monotonic() - t0, 2),
                metrics=(run_dir / "metrics.json").is_file(), **fields)
    return fields["state"]


def _execute(notebook: Path, out: Path, params: dict, kernel: str, timeout: float | None,
             log) -> None:
    from lic_core.workbench.notebooks import execute

    execute(notebook, out, params, kernel=kernel, log_output=True, stdout_file=log, stderr_file=log,
            execution_timeout=int(timeout) if timeout else None)


@contextlib.contextmanager
def _kernel_env(threads: int = 0, side_by_side: int = 1) -> Iterator[None]:
    """Environment of a job's kernel: this checkout first on ``PYTHONPATH`` (a notebook may sit in
    any folder), idle OpenMP threads that sleep, and ``threads`` OpenMP/MKL threads when > 0, else
    this job's share of the cores (:mod:`lic_core.threads`; several small jobs side by side, one
    thread each, beat one job on all cores when per-op overhead dominates)."""
    from lic_core import threads as cpu

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([old] if old else [])])
    try:
        with cpu.for_children(threads, side_by_side):
            yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class JobTimeout(Exception):
    """A job ran longer than the sweep's ``timeout``."""


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise :class:`JobTimeout` after ``seconds`` (main thread; papermill then saves the notebook)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(*_: Any) -> None:
        raise JobTimeout(f"job ran past the sweep timeout of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _describe(e: BaseException) -> tuple[str, str]:
    """(one-line message for the manifest, full text for error.txt)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(e, PapermillExecutionError):
        message = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
        detail = "\n".join(_ANSI.sub("", line) for line in e.traceback)
    else:
        message = f"{type(e).__name__}: {e}"
        detail = "".join(traceback.format_exception(e))
    return message, f"{message}\n\n{detail}\n"


# --------------------------------------------------------------------------- scheduler


@dataclass(frozen=True)
class Task:
    """One unit of work for :func:`run_tasks`: ``fn(*args)`` in a worker process once the tasks
    named in ``needs`` (earlier in the list) are done; ``threads`` > 0: torch's threads while it
    runs. ``fn`` and ``args`` must pickle (a module-level function; no lambdas)."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    needs: tuple[str, ...] = ()
    threads: int = 0


@dataclass
class Outcome:
    """How one task ended: ``done`` (``value`` is what it returned) or ``failed`` (``error``: one
    line naming the exception or the failed task it needed; ``detail``: the traceback).
    ``ran`` is False for a task skipped as done before the run, or never started."""

    state: str
    value: Any = None
    error: str | None = None
    detail: str = ""
    ran: bool = True
    seconds: float | None = None


class Progress:
    """What :func:`run_tasks` reports while it runs; this base says nothing."""

    def submitted(self, name: str, job_id: str) -> None:
        """A task went to a submitit executor as job ``job_id``."""

    def started(self, name: str) -> None:
        """A task went to a local worker process."""

    def finished(self, name: str, outcome: Outcome) -> None:
        """A task ended (or failed without running, because a task it needs failed)."""

    def waiting(self, running: list[str]) -> None:
        """``heartbeat`` seconds passed with ``running`` tasks and none ended."""


class Lines(Progress):
    """``[label] <task>: started`` and ``[label] <task>: done`` / ``failed (<error>)`` lines."""

    def __init__(self, label: str):
        self.label = label

    def started(self, name: str) -> None:
        print(f"[{self.label}] {name}: started", flush=True)

    def finished(self, name: str, outcome: Outcome) -> None:
        why = f" ({outcome.error})" if outcome.error else ""
        print(f"[{self.label}] {name}: {outcome.state}{why}", flush=True)


def run_tasks(tasks: Sequence[Task], jobs: int = 1, executor: str = "local",
              done: Callable[[Task], bool] | None = None, progress: Progress | None = None,
              heartbeat: float | None = None, folder: str | Path | None = None,
              slurm: dict[str, Any] | None = None) -> dict[str, Outcome]:
    """Run ``tasks`` in their order, each after the tasks it needs; returns ``{name: Outcome}``.

    Tasks for which ``done(task)`` holds are skipped (the caller decides what is finished, so a
    re-run resumes). A failing task fails the tasks that need it and nothing else: the others run
    on, and what finished stays finished. ``executor``: ``local`` (``jobs`` spawned worker
    processes; a task starts as soon as a worker is free and its needs are done), ``slurm``
    (submitit, ``folder`` for its files, ``slurm`` its parameters; the tasks go in waves, each a
    job array of the tasks whose needs are done, ``jobs`` at a time) or ``submitit-local`` /
    ``submitit-debug`` (the same path on this machine).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    _check_order(tasks)
    progress = progress or Progress()
    outcomes = {t.name: Outcome("done", ran=False) for t in tasks if done is not None and done(t)}
    todo = [t for t in tasks if t.name not in outcomes]
    if executor == "local":
        _local(todo, outcomes, jobs, progress, heartbeat)
    elif todo:
        if folder is None:
            raise ConfigError(f"the {executor} executor needs a folder for its files")
        _submitit(todo, outcomes, jobs, executor.removeprefix("submitit-"), progress, Path(folder),
                  slurm or {})
    return {t.name: outcomes[t.name] for t in tasks}


def _check_order(tasks: Sequence[Task]) -> None:
    """Names are unique and each task needs only tasks before it (so no cycle can form)."""
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise ConfigError(f"task {t.name!r} appears twice")
        unknown = [d for d in t.needs if d not in seen]
        if unknown:
            raise ConfigError(f"task {t.name!r} needs {unknown}, which are not earlier tasks")
        seen.add(t.name)


def _call(fn: Callable[..., Any], args: tuple, threads: int) -> Any:
    """What a worker runs: ``fn(*args)`` with ``threads`` torch threads when > 0."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    return fn(*args)


def _blocker(task: Task, outcomes: dict[str, Outcome]) -> Outcome | None:
    """The failure of ``task`` when a task it needs failed (None: it may still run)."""
    failed = [d for d in task.needs if d in outcomes and outcomes[d].state == "failed"]
    return Outcome("failed", error=f"needs {failed[0]}, which failed", ran=False) if failed else None


def _failure(e: BaseException, seconds: float | None = None) -> Outcome:
    return Outcome("failed", error=f"{type(e).__name__}: {e}", seconds=seconds,
                   detail="".join(traceback.format_exception(e)))


class _Workers:
    """``n`` spawned worker processes (no fork of a process that holds threads); a pool whose
    worker died (killed, out of memory) is replaced for the tasks still to come."""

    def __init__(self, n: int):
        self.n, self.pool = n, None

    def submit(self, task: Task) -> Future:
        for _ in range(2):
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"))
            try:
                return self.pool.submit(_call, task.fn, task.args, task.threads)
            except BrokenExecutor:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None
        raise LicError(f"task {task.name}: cannot start a worker process")

    def close(self, stop: bool = False) -> None:
        """Wait for the running tasks, or with ``stop`` end their workers now (the scheduler was
        interrupted: nothing may keep training behind it; a task's checkpoints are written
        atomically, so a re-run resumes it)."""
        if self.pool is None:
            return
        if stop:
            for proc in list(self.pool._processes.values()):  # no public API before Python 3.14
                proc.terminate()
        self.pool.shutdown(wait=not stop, cancel_futures=stop)


@contextlib.contextmanager
def _sleeping_omp() -> Iterator[None]:
    """Workers started inside the block get ``OMP_WAIT_POLICY=PASSIVE`` unless one is exported."""
    from lic_core import threads as cpu

    exported = "OMP_WAIT_POLICY" in os.environ
    os.environ.setdefault("OMP_WAIT_POLICY", cpu.WAIT_POLICY)
    try:
        yield
    finally:
        if not exported:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _local(todo: list[Task], outcomes: dict[str, Outcome], n: int, progress: Progress,
           heartbeat: float | None) -> None:
    """The local scheduler: in list order, start each task whose needs are done while fewer than
    ``n`` run; wait for the first to end (``heartbeat``: at most that long between reports)."""
    pending, running, workers = list(todo), {}, _Workers(n)
    finished = False
    try:
        with _sleeping_omp(), sigterm_exits():
            while True:
                for t in list(pending):
                    if len(running) >= n:
                        break
                    if blocked := _blocker(t, outcomes):
                        outcomes[t.name] = blocked
                        pending.remove(t)
                        progress.finished(t.name, blocked)
                    elif all(d in outcomes for d in t.needs):
                        running[workers.submit(t)] = (t, time.monotonic())
                        pending.remove(t)
                        progress.started(t.name)
                if not running:
                    break
                ended, _ = wait(running, timeout=heartbeat, return_when=FIRST_COMPLETED)
                if not ended:
                    progress.waiting([t.name for t, _ in running.values()])
                for fut in ended:
                    t, t0 = running.pop(fut)
                    outcomes[t.name] = _result(fut, time.monotonic() - t0)
                    progress.finished(t.name, outcomes[t.name])
        finished = True
    finally:
        workers.close(stop=not finished)


def _result(fut: Future, seconds: float) -> Outcome:
    try:
        return Outcome("done", value=fut.result(), seconds=seconds)
    except BaseException as e:  # noqa: BLE001 -- the task failed (or its worker died): it alone
        return _failure(e, seconds)


def _waves(todo: list[Task]) -> list[list[Task]]:
    """``todo`` in waves: a task goes one wave after the last wave of the tasks it needs."""
    level: dict[str, int] = {}
    for t in todo:
        level[t.name] = 1 + max((level[d] for d in t.needs if d in level), default=-1)
    return [[t for t in todo if level[t.name] == k] for k in range(1 + max(level.values(), default=-1))]


def _submitit(todo: list[Task], outcomes: dict[str, Outcome], n: int, cluster: str,
              progress: Progress, folder: Path, params: dict[str, Any]) -> None:
    """Each wave as one submitit batch (a Slurm job array, ``n`` at a time); results in order."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # e.g. no srun / sbatch on this machine
        raise LicError(f"cannot use the {cluster!r} executor here: {e}") from None
    try:
        executor.update_parameters(**{"slurm_array_parallelism": n, **params})
    except (ValueError, TypeError, NameError) as e:
        raise ConfigError(f"bad 'slurm' parameters: {e}") from None
    for wave in _waves(todo):
        ready = []
        for t in wave:
            if blocked := _blocker(t, outcomes):
                outcomes[t.name] = blocked
                progress.finished(t.name, blocked)
            else:
                ready.append(t)
        if not ready:
            continue
        with executor.batch():
            submitted = [(t, executor.submit(_call, t.fn, t.args, t.threads)) for t in ready]
        for t, job in submitted:
            progress.submitted(t.name, job.job_id)
        for t, job in submitted:
            try:
                outcomes[t.name] = Outcome("done", value=job.result())
            except Exception as e:  # noqa: BLE001 -- the task failed, or its node / time limit
                outcomes[t.name] = _failure(e)
            progress.finished(t.name, outcomes[t.name])


# --------------------------------------------------------------------------- executors


def run_sweep(spec: SweepSpec | str | Path, executor: str = "local", jobs: int | None = None,
              dry_run: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the jobs of ``spec`` not yet done; returns ``{job: manifest record}`` for its jobs.

    ``executor``: ``local`` (``jobs`` worker processes at a time), ``slurm`` (submitit job array,
    parameters from the YAML's ``slurm`` mapping), or ``submitit-local`` / ``submitit-debug``
    (the same submitit path on this machine, to check a sweep without a cluster).
    """
    spec = load_sweep(spec) if isinstance(spec, (str, Path)) else spec
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    n = jobs or spec.jobs
    if n < 1:
        raise ConfigError(f"jobs must be >= 1, got {n}")
    expanded = spec.expand()
    _check_parameters(spec, spec.name)
    if dry_run:
        return _dry_run(spec, expanded)
    _check_kernel(spec.kernel)
    spec.output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(spec.output / "sweep.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LicError(f"another sweep process is running {spec.output} (lock {lock.lock_file})") from None
    try:
        _prepare(spec, expanded)
        todo = _claim(spec.output, expanded)
        if progress:
            print(f"sweep {spec.name}: {len(expanded)} jobs, {len(expanded) - len(todo)} done or "
                  f"running elsewhere, {len(todo)} to run ({executor}, {n} at a time) -> {spec.output}")
        if todo:
            _run_jobs(spec, todo, n, executor, progress)
    finally:
        lock.release()
    records = read_manifest(spec.output)["jobs"]
    return {j.name: records[j.name] for j in expanded}


def _claim(sweep_dir: Path, jobs: list[Job]) -> list[str]:
    """Jobs to run now (not done, not alive elsewhere), reset to pending for this attempt."""
    with _manifest(sweep_dir) as data:
        recs = data["jobs"]
        todo = [j.name for j in jobs if recs[j.name]["state"] != "done"
                and not _active_elsewhere(sweep_dir, recs[j.name])]
        for name in todo:
            recs[name].update(state="pending", slurm_job_id=None)
    return todo


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs()
    if kernel not in found:
        raise ConfigError(f"kernel {kernel!r} is not installed (found {sorted(found)}); for the "
                          "current Python run `python -m ipykernel install --sys-prefix`")


def _dry_run(spec: SweepSpec, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    try:
        records = read_manifest(spec.output)["jobs"]
    except ConfigError:
        records = {}
    return {j.name: records.get(j.name, {"state": "pending", "parameters": j.parameters})
            for j in jobs}


HEARTBEAT_S = 30.0  # longest silence while jobs run


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _last_step(job_dir: Path) -> str:
    """``mode step N`` of the newest training log under a job's run folder ('' when none)."""
    logs = sorted(job_dir.glob("run/**/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    try:
        with open(logs[-1], "rb") as f:
            f.seek(max(0, logs[-1].stat().st_size - 4096))
            last = json.loads(f.read().decode(errors="replace").strip().splitlines()[-1])
        return f"{logs[-1].parent.name} step {int(last['step'])}"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


@contextlib.contextmanager
def heartbeat(what: str, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Print ``  ... <what>: still running after N min`` every ``every`` seconds inside the block
    (a long step in a terminal or CI log never looks hung)."""
    stop, t0 = threading.Event(), time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            print(f"  ... {what}: still running after {_minutes(time.monotonic() - t0)}", flush=True)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class _Progress:
    """One line per finished job (time taken, jobs left, an estimate of the time left) and a
    heartbeat while jobs run (readable in a terminal, a log file and CI alike)."""

    def __init__(self, spec: SweepSpec, total: int, active: bool, parallel: int = 1):
        self.spec, self.total, self.active, self.parallel = spec, total, active, max(1, parallel)
        self.done, self.t0, self.durations = 0, time.monotonic(), []

    def _say(self, text: str) -> None:
        if self.active:
            print(f"  sweep {self.spec.name} {text}", flush=True)

    def finished(self, name: str, state: str) -> None:
        self.done += 1
        rec = read_manifest(self.spec.output)["jobs"].get(name, {})
        took = rec.get("duration_s")
        if took is not None:
            self.durations.append(float(took))
        left = self.total - self.done
        text = f"[{self.done}/{self.total}] {name}: {state}" + (f" in {_minutes(took)}" if took else "")
        if left:
            eta = self.estimate(left)
            text += f"; {left} left" + (f", about {_minutes(eta)} more" if eta is not None else "")
        self._say(text)

    def estimate(self, left: int) -> float | None:
        """Seconds for ``left`` jobs: mean job time so far, ``parallel`` jobs at a time."""
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * -(-left // self.parallel)

    def heartbeat(self, running: list[str]) -> None:
        """``still running: <job> (mode step N), ...`` and the time since the sweep started."""
        parts = [f"{n}" + (f" ({s})" if (s := _last_step(self.spec.output / n)) else "") for n in running]
        self._say(f"[{self.done}/{self.total}] still running after {_minutes(time.monotonic() - self.t0)}: "
                  + (", ".join(parts) or "jobs starting"))


class _SweepProgress(Progress):
    """The scheduler's reports as a sweep's: each job's state from the manifest its worker wrote
    (a job whose worker or Slurm task died is failed there), Slurm job ids recorded for re-runs,
    :class:`_Progress` lines and heartbeats."""

    def __init__(self, spec: SweepSpec, bar: _Progress, executor: str):
        self.spec, self.bar, self.executor = spec, bar, executor

    def submitted(self, name: str, job_id: str) -> None:
        if self.executor == "slurm":
            _update_job(self.spec.output, name, slurm_job_id=job_id)

    def finished(self, name: str, outcome: Outcome) -> None:
        if outcome.state == "done":
            state = outcome.value
        else:
            died = "worker process died: " if self.executor == "local" else ""
            state = _settle(self.spec.output, name, f"{died}{outcome.error}"[:600])
        self.bar.finished(name, state)

    def waiting(self, running: list[str]) -> None:
        self.bar.heartbeat(_running(self.spec.output, running))


def _run_jobs(spec: SweepSpec, names: list[str], n: int, executor: str, progress: bool) -> None:
    """The notebook jobs through :func:`run_tasks`: locally ``n`` worker processes, each running
    jobs one after another (papermill imported once) with its share of the cores; with submitit
    one job array (Slurm: ``n`` at a time)."""
    side_by_side = min(n, len(names)) if executor == "local" else 1
    tasks = [Task(name, run_job, (str(spec.output), name, side_by_side)) for name in names]
    bar = _Progress(spec, len(names), progress, min(n, len(names)) if executor == "local" else n)
    slurm = {"name": f"sweep-{spec.name}",
             "timeout_min": int(-(-spec.timeout // 60)) + 2 if spec.timeout else 24 * 60, **spec.slurm}
    try:
        run_tasks(tasks, n, executor, progress=_SweepProgress(spec, bar, executor), heartbeat=HEARTBEAT_S,
                  folder=spec.output / "submitit", slurm=slurm)
    except ConfigError as e:
        raise ConfigError(f"sweep {spec.name}: {e}") from None


def _running(sweep_dir: Path, names: list[str]) -> list[str]:
    """The jobs among ``names`` the manifest shows running."""
    jobs = read_manifest(sweep_dir)["jobs"]
    return [n for n in names if jobs.get(n, {}).get("state") == "running"]


def _settle(sweep_dir: Path, name: str, why: str) -> str:
    """After a worker ended: a job it left pending/running died with it -> failed with ``why``."""
    with _manifest(sweep_dir) as data:
        rec = data["jobs"][name]
        if rec["state"] in ("pending", "running"):
            rec.update(state="failed", error=why, finished=_now())
        return rec["state"]


# --------------------------------------------------------------------------- results


def sweep_results(sweep_dir: str | Path, states: tuple[str, ...] = ("done",)):
    """A pandas DataFrame, one row per job in ``states``: its parameters then its metrics.

    Metrics are the job's ``run/metrics.json`` (nested keys flattened ``a.b``); columns that
    collide with a parameter name are prefixed ``metric.``. Index: job name.
    """
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows = []
    for name, rec in read_manifest(sweep_dir)["jobs"].items():
        if rec["state"] not in states:
            continue
        metrics_file = sweep_dir / name / "run" / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        flat = pd.json_normalize(metrics).to_dict("records")[0] if metrics else {}
        params = rec["parameters"]
        rows.append({"job": name, "state": rec["state"], **params,
                     **{(f"metric.{k}" if k in params else k): v for k, v in flat.items()}})
    return pd.DataFrame(rows).set_index("job") if rows else pd.DataFrame()


def summarize(records: dict[str, dict[str, Any]], sweep_dir: Path) -> str:
    """The text printed at the end of a sweep: counts per state and each failure."""
    counts = {s: sum(r["state"] == s for r in records.values()) for s in STATES}
    lines = [f"{len(records)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])]
    lines += [f"  FAILED {name}: {r.get('error')}\n         see {sweep_dir / name / 'error.txt'}"
              for name, r in records.items() if r["state"] == "failed"]
    lines += [f"  {r['state']} {name}" for name, r in records.items()
              if r["state"] in ("pending", "running")]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


@command("sweep")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core sweep FILE.yaml``; exit 0 when every job is done, 1 otherwise."""
    ap = argparse.ArgumentParser(prog="python -m lic_core sweep",
                                 description="Run a notebook over a parameter grid with papermill.")
    ap.add_argument("file", help="sweep YAML")
    ap.add_argument("--executor", default="local", choices=EXECUTORS,
                    help="local worker processes, Slurm via submitit, or submitit on this machine")
    ap.add_argument("--jobs", type=int, default=None, help="jobs at a time (default: YAML 'jobs' or 1)")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs and their states; run nothing")
    args = ap.parse_args(argv)
    spec = load_sweep(args.file)
    records = run_sweep(spec, executor=args.executor, jobs=args.jobs, dry_run=args.dry_run)
    if args.dry_run:
        for name, rec in records.items():
            print(f"{rec['state']:<8} {name}  {_canonical(rec['parameters'])}")
        print(f"{len(records)} jobs -> {spec.output} (dry run: nothing executed)")
        return 0
    print(summarize(records, spec.output))
    return 0 if all(r["state"] == "done" for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
