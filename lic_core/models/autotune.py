"""Per-machine choice between equivalent implementations of a layer, measured once per shape.

Some layers have two implementations with the same parameters and the same result (to float32
rounding) whose speed depends on the CPU: the context model's 1x1 convolutions (:class:`~lic_core.
models.blocks.Conv1x1`) run faster as one GEMM over the positions on an Intel Xeon with AMX, and
faster as oneDNN convolutions on an AMD EPYC with AVX-512. Like ``torch.backends.cudnn.benchmark``
on a GPU, the layer asks :func:`choose` on each call; the first call with a new key (shape, layout,
dtype, grad mode, device) times every path on that very input, in interleaved rounds, and the
answer is cached for the rest of the process, and for later processes on the same machine in a
small JSON file (the *machine cache*: ``~/.cache/lic_core/autotune.json``, or ``LIC_AUTOTUNE_CACHE``;
empty: none), keyed by CPU model, torch version and thread count. The first process to measure a
key decides it for every process after it, so that two runs of one config on one machine take the
same paths and stay bit-identical to each other, as they did before the autotuner.

The mode (``speed.autotune`` of a training config, or the ``LIC_AUTOTUNE`` environment variable
for any other process) is one of:

* ``auto`` (config ``true``, the default): measure on a CPU kind the project has measured (x86
  with AVX-512, which includes AMX) and on CUDA; elsewhere (AVX2-only x86, ARM, any CPU capped
  below AVX-512) run the portable default without timing anything.
* ``off`` (config ``false``): the portable default everywhere, nothing timed.
* a path name (``gemm``, ``conv``): that path everywhere.

The portable default of an op is the first of its paths in :data:`PATHS`: for ``conv1x1`` the GEMM,
the implementation this project shipped before the autotuner, which the conformance data, the
cross-CPU measurements and every bitstream written so far were made with.

Two places never time anything:

* While PyTorch is asked for deterministic algorithms (``torch.use_deterministic_algorithms``, or
  ``torch.backends.cudnn.deterministic``, which the entropy coder sets while it runs), every op
  runs its portable default: an encoder and a decoder in two processes must compute the same
  scales, whatever each process would have measured.
* Inside ``torch.compile`` nothing runs to be timed: the traced path is the forced one, else the
  path an eager call with the same shape took in this process (a compiled run then computes what
  the eager run before it computed), else the portable default.

A training run records :func:`record` in its checkpoints and a resumed run :func:`restore`s it, so
it runs every key on the path the original run took, on this machine or another one (see
docs/PERFORMANCE_AUTOTUNE.md).
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from lic_core.errors import ConfigError

# op -> its paths; the first is the portable default
PATHS: dict[str, tuple[str, ...]] = {"conv1x1": ("gemm", "conv")}
MODES = ("auto", "off", *sorted({p for paths in PATHS.values() for p in paths}))
ENV = "LIC_AUTOTUNE"
STORE_ENV = "LIC_AUTOTUNE_CACHE"
ROUNDS = (3, 50)  # timed rounds per path after a warm-up call each: at least 3, then more, up to
BUDGET_S = 0.05  # 50, while the rounds took less than this (a tiny op's time is in the noise)
MARGIN = 0.05  # another path replaces the default only when it is this much faster
MEASURED_CPUS = ("AVX512",)  # ATen CPU capabilities the project has timed both paths on

_mode: str = "auto"
_choices: dict[str, str] = {}  # key -> path, measured or restored
_times: dict[str, dict[str, float]] = {}  # key -> path -> best seconds (measured keys only)
_sources: dict[str, str] = {}  # key -> how it was decided: measured, machine cache, checkpoint, portable
_eager: dict[tuple, str] = {}  # (op, *shape key) -> the path eager calls took: what compiled code traces


def normalize(value: bool | str, key: str = "speed.autotune") -> str:
    """The mode of a config value (true, false, auto, off or a path name); one-line ConfigError
    naming ``key`` for anything else."""
    if value is True:
        return "auto"
    if value is False:
        return "off"
    if isinstance(value, str) and value.lower() in MODES:
        return value.lower()
    raise ConfigError(f"{key}: {value!r} is not true, false, {', '.join(MODES)}")


def set_mode(value: bool | str) -> str:
    """Set the process-wide mode (see :func:`normalize`); returns it. Cached choices stay, as
    measurements of this machine; an explicit path or ``off`` takes precedence over them."""
    global _mode
    _mode = normalize(value)
    return _mode


def mode() -> str:
    return _mode


@contextmanager
def forced(value: bool | str) -> Iterator[str]:
    """Run a block in another mode (``forced("conv")``), the previous one restored after."""
    before = _mode
    try:
        yield set_mode(value)
    finally:
        set_mode(before)


def clear() -> None:
    """Forget every cached choice and timing (the next call of each key measures again)."""
    _choices.clear()
    _times.clear()
    _sources.clear()
    _eager.clear()


def choices() -> dict[str, str]:
    """Key -> path of every choice made (or restored) in this process so far."""
    return dict(_choices)


def timings() -> dict[str, dict[str, float]]:
    """Key -> path -> best seconds of every key measured in this process."""
    return {k: dict(v) for k, v in _times.items()}


def unmeasured_reason(device: torch.device) -> str:
    """Why ``auto`` runs the portable default on ``device`` without timing ("" when it times)."""
    if device.type == "cuda":
        return ""
    if device.type != "cpu":
        return f"device {device.type}: not a device the autotuner times"
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in MEASURED_CPUS:
        return f"CPU capability {cap}: not a CPU kind the project has measured"
    return ""


def deterministic() -> bool:
    """Whether PyTorch is asked for deterministic algorithms (the entropy coder asks)."""
    return torch.are_deterministic_algorithms_enabled() or bool(torch.backends.cudnn.deterministic)


def default(op: str) -> str:
    return PATHS[op][0]


def traced_path(op: str, shape_key: tuple = ()) -> str:
    """The path ``torch.compile`` traces for a call whose :func:`taken` key is ``shape_key``: the
    forced one, else the one eager calls took in this process, else the portable default."""
    if _mode in PATHS[op]:
        return _mode
    return _eager.get((op, *shape_key), default(op))


def taken(op: str, shape_key: tuple, path: str) -> str:
    """Note that an eager call of ``op`` with ``shape_key`` (plain Python values and dtypes, which
    ``torch.compile`` can look up while it traces) ran ``path``; returns ``path``. Only choices of
    mode ``auto`` count: forced and deterministic calls say nothing about this machine."""
    if _mode == "auto" and not deterministic():
        _eager[(op, *shape_key)] = path
    return path


def choose(op: str, key: str, device: torch.device, candidates: Callable[[], Mapping[str, Callable[[], object]]]) -> str:
    """The path of ``op`` for ``key`` (one call's shape, layout, dtype, grad mode and device).
    ``candidates()`` gives each path as a function running it once on the call's input (detached
    copies: nothing it does may reach the caller's graph, gradients or RNG); it is only built
    when the key is measured."""
    paths = PATHS[op]
    if _mode in paths:
        return _mode
    if _mode == "off" or deterministic():
        return paths[0]
    full = f"{op} {key}"
    hit = _choices.get(full)
    if hit is not None:
        return hit
    stored = _stored(op, full) if device.type == "cpu" else None
    if unmeasured_reason(device):
        path, source = paths[0], "portable"
    elif stored is not None:
        path, source = stored, "machine cache"
    else:
        best = measure(candidates(), device)
        _times[full] = best
        fastest = min(best, key=best.__getitem__)
        path = fastest if best[fastest] < (1 - MARGIN) * best[paths[0]] else paths[0]
        path, source = (_store(full, path) if device.type == "cpu" else path), "measured"
    _choices[full], _sources[full] = path, source
    return path


def store_path() -> Path | None:
    """The machine cache file (``LIC_AUTOTUNE_CACHE``; set but empty: none)."""
    env = os.environ.get(STORE_ENV)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lic_core" / "autotune.json"


def machine() -> str:
    """The machine cache's key of this process: CPU model, torch version and threads."""
    from lic_core.provenance import cpu_name

    return f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def _read_store(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or damaged: as if empty
        return {}
    return data if isinstance(data, dict) else {}


def _stored(op: str, full: str) -> str | None:
    path = store_path()
    entry = _read_store(path).get(machine(), {}) if path else {}
    got = entry.get(full) if isinstance(entry, dict) else None
    return got if got in PATHS[op] else None


def _store(full: str, path: str) -> str:
    """Add ``full -> path`` to the machine cache unless another process stored the key first (then
    its path wins, for every process alike); returns the path that holds. A cache that cannot be
    written leaves the choice in this process only."""
    file = store_path()
    if file is None:
        return path
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with _locked(file.with_name(file.name + ".lock")):
            data = _read_store(file)
            entry = data.get(machine())
            if not isinstance(entry, dict):
                entry = data[machine()] = {}
            if entry.get(full) in PATHS[full.split(" ", 1)[0]]:
                return entry[full]
            entry[full] = path
            from lic_core.atomic import write_file

            write_file(file, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
    return path


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on ``lock`` (POSIX ``flock``; elsewhere none) for the read-modify-write."""
    try:
        import fcntl
    except ImportError:  # Windows: the last writer wins
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure(fns: Mapping[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """Best seconds of each of ``fns`` over interleaved rounds (A B, A B, ...) after a warm-up call
    each, so that a burst of load slows every path alike; ``ROUNDS`` and ``BUDGET_S`` bound the
    rounds."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    best = {k: math.inf for k in fns}
    start, done = time.perf_counter(), 0
    while done < ROUNDS[0] or (done < ROUNDS[1] and time.perf_counter() - start < BUDGET_S):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
        done += 1
    return best


def record() -> dict[str, object]:
    """What a training checkpoint keeps: the mode and every choice made so far."""
    return {"mode": _mode, "choices": choices()}


def restore(rec: Mapping[str, object] | None) -> str:
    """Take a checkpoint's :func:`record`: its mode and its choices (so a resumed run runs every
    key the original run had chosen on the same path). A checkpoint without one was written before
    the autotuner existed, when every op ran its portable default: mode ``off``. Returns the mode."""
    if rec is None:
        return set_mode("off")
    picks = rec.get("choices", {})
    for key, path in dict(picks).items():  # type: ignore[call-overload]
        op = str(key).split(" ", 1)[0]
        if op not in PATHS or path not in PATHS[op]:
            raise ConfigError(f"speed.autotune: the checkpoint's choice {key!r} -> {path!r} is not a path "
                              "of this version")
        _choices[str(key)], _sources[str(key)] = str(path), "checkpoint"
    return set_mode(str(rec.get("mode", "off")))


def describe() -> list[str]:
    """One line per choice made in this process (key: path, and the timings when measured), and
    the mode first: what the benchmarks print."""
    cap = torch.backends.cpu.get_cpu_capability()
    why = unmeasured_reason(torch.device("cpu"))
    head = f"autotune mode {_mode} (CPU capability {cap}" + (f"; {why}: portable default)" if why and _mode == "auto" else ")")
    lines = [head]
    for key, path in sorted(_choices.items()):
        t = _times.get(key)
        how = ", ".join(f"{p} {1e3 * s:.3f} ms" for p, s in t.items()) if t else ""
        lines.append(f"{key}: {path} ({_sources.get(key, 'measured')}{': ' + how if how else ''})")
    return lines


def _from_env() -> str:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return "auto"
    return normalize({"true": True, "false": False}.get(value.lower(), value), ENV)


_mode = _from_env()
