"""Whole engine steps of each training mode, measured side by side: ratios to ``standard`` and
images per second.

    python benchmarks/bench_train.py                      # tiny HPCM, 128 px, batch 2, on CPU
    python benchmarks/bench_train.py --model base --patch 256 --batch 8 --speed   # on CUDA:
        # bf16 / channels_last / compile, each against float32 on the same GPU (on a CPU: compile,
        # and bf16 where oneDNN has bfloat16 kernels)
    python benchmarks/bench_train.py --batch 8 --modes standard,balanced,balanced-next-batch --compile
        # Solution 1's overhead with the compiled forward
    python benchmarks/bench_train.py --speed --batch 8 --modes standard,balanced --options fp32,compile
        # per option: each mode's step, and Solution 1's second forward timed alone (its floor)
    python benchmarks/bench_train.py --speed --options fp32,gemm,conv --batch 8 --modes standard,balanced
        # the autotuner (fp32: speed.autotune=true) against each of its paths forced
    python benchmarks/bench_train.py --grid --batches 2,4,8,16 --patches 64,128,256   # sizing table
    python benchmarks/bench_train.py --engine --batch 8 --steps 30 --modes standard,balanced
        # whole runs (CLI, photos, loader, logging): no photo cache (every crop decoded from its JPEG),
        # cache, cache + compile, and cache + bf16 + compile where the CPU has bfloat16 kernels
    python benchmarks/bench_train.py --layout --batch 8 --steps 30 --modes standard,balanced
        # whole CLI runs: 1 process x 2 threads vs torchrun 2 ranks x 1 thread, eager and compiled

Variants run in interleaved rounds (A B C, A B C, ...) on the same batch; a ratio is taken within
each round and the median of the per-round ratios is reported with its min and max, so one burst
of load spoils one round, not the table. The load average is printed: numbers taken on a loaded
machine are not final. In-process variants each run in their own ``speed.autotune`` mode; the speed
plan of each (what ``auto`` options became on this machine) and the autotuner's choices follow the
table. ``--grid`` times the standard step over batch x patch (images/s) for sizing.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's lic_core, as the runs use

from lic_core.config import PRESETS, TrainConfig  # noqa: E402
from lic_core.models import autotune  # noqa: E402
from lic_core.training.data import train_loader  # noqa: E402
from lic_core.provenance import commit, cpu_name  # noqa: E402
from lic_core.training.engine import Trainer, as_config, cpu_bf16  # noqa: E402
from lic_core.training.logging import load_history  # noqa: E402
from lic_core.training.objectives import losses_after_step  # noqa: E402

MODES: dict[str, dict] = {
    "standard": {"loss.mode": "standard"},
    "cautious": {"loss.mode": "standard", "optim.optimizer": "cautious"},
    "balanced": {"loss.mode": "balanced"},
    "balanced-next-batch": {"loss.mode": "balanced", "balance.next_batch": True},
    "hierarchical": {"loss.mode": "hierarchical"},
    "qp": {"loss.mode": "qp"},
}
SPEED: dict[str, dict] = {
    "fp32": {},
    "bf16": {"speed.bf16": True},
    "channels_last": {"speed.channels_last": True},
    "compile": {"speed.compile": True},
    "gemm": {"speed.autotune": "gemm"},  # the autotuner's paths forced (fp32 runs it in mode auto)
    "conv": {"speed.autotune": "conv"},
    "all": {"speed.bf16": True, "speed.channels_last": True, "speed.compile": True},
}


def make_trainer(base: dict, extra: dict, out: str, name: str) -> Trainer:
    ov = {**base, **extra, "run.out": out, "run.name": name, "run.resume": "never", "run.progress": False,
          "run.wandb_mode": "disabled"}
    return Trainer(as_config(None, ov))


def time_steps(tr: Trainer, x: torch.Tensor, n: int) -> float:
    """Seconds per step over ``n`` steps, in the trainer's own autotune mode (the mode is one per
    process: the last trainer built would set it for all)."""
    with autotune.forced(tr.plan.autotune):
        t0 = time.perf_counter()
        for _ in range(n):
            tr.train_step(x)
        return (time.perf_counter() - t0) / n


def time_second_forward(tr: Trainer, x: torch.Tensor, n: int) -> float:
    """Seconds per Solution 1 second forward (the engine's :func:`losses_after_step` of
    :meth:`Trainer.task_forward`) over ``n``: timed alone, its ratio to a standard step is the
    least a faithful step can add."""
    with autotune.forced(tr.plan.autotune):
        t0 = time.perf_counter()
        for _ in range(n):
            losses_after_step(lambda: tr.task_forward(x))
        return (time.perf_counter() - t0) / n


# --speed: the second forward of Solution 1 alone, timed on the standard mode's trainer of each option
SECOND = "second forward"


# Process layouts of one run on a CPU: (ranks, threads per rank). With ranks > 1 the run goes
# through torchrun (DDP over gloo) and data.batch is per rank, so the global batch is the same.
LAYOUTS: dict[str, tuple[int, int]] = {"1 process x 2 threads": (1, 2), "2 ranks x 1 thread": (2, 1)}
# The engine without the decoded-photo cache (every crop decoded from its JPEG), with it, and with
# it and torch.compile (plus bf16 where the CPU runs it): one process, 2 threads.
ENGINE: dict[str, dict] = {"no cache": {"data.cache_mb": 0}, "cache": {},
                           "cache + compiled": {"speed.compile": True},
                           "cache + bf16 + compiled": {"speed.bf16": True, "speed.compile": True}}


def run_name(name: str) -> str:
    """A run folder name from a variant name ("standard/cache + compiled" -> "standard_cache_compiled")."""
    return re.sub(r"[^\w.-]+", "_", name)


def cli_seconds(ov: dict, ranks: int, threads: int, out: str, name: str) -> float:
    """Wall seconds of ``python -m lic_core train`` with ``ov`` (through torchrun when ranks > 1)."""
    sets = [f"--set={k}={v}" for k, v in {**ov, "run.out": out, "run.name": name, "run.resume": "never",
                                          "run.progress": False, "run.wandb_mode": "disabled"}.items()]
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *launch, "-m", "lic_core", "train", *sets], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def whole_runs(base: dict, variants: dict[str, tuple[dict, int, int]], rounds: int, steps: int,
               short: int = 5) -> dict[str, list[float]]:
    """Seconds per step of whole runs (photos, loader, logging): ``variants`` maps a name to
    (overrides, ranks, threads per rank). Each run takes ``short + steps`` steps and logs every
    step; a step's time is the wall clock between the records of steps ``short`` and
    ``short + steps`` (``wall`` in ``metrics.jsonl``) over ``steps``, so process start-up,
    torch.compile (which happens in the first steps) and the final checkpoint are left out.
    One warm-up run per compiled variant first (it fills torch.compile's cache on disk)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    n = short + steps
    with tempfile.TemporaryDirectory() as out:
        def per_step(name: str, r: int) -> float:
            ov, ranks, threads = variants[name]
            run = run_name(f"{name}-{r}")
            cli_seconds({**base, **ov, "run.steps": n, "run.ckpt_every": n, "run.eval_every": n, "run.log_every": 1},
                        ranks, threads, out, run)
            wall = {h["step"]: h["wall"] for h in load_history(Path(out) / run, "train")}
            return (wall[n] - wall[short]) / steps
        for i, (ov, ranks, threads) in enumerate(variants.values()):
            if {**base, **ov}.get("speed.compile"):
                cli_seconds({**base, **ov, "run.steps": short}, ranks, threads, out, f"warm-up-{i}")
        for r in range(rounds):
            for name in variants:
                times[name].append(per_step(name, r))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--micro", action="store_true", help="the micro preset of the tests")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="compare GPU speed options (standard, balanced)")
    ap.add_argument("--options", default="",
                    help=f"--speed: which of {', '.join(SPEED)}, bf16 + compile (default: all this device runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--modes", default=",".join(MODES), help="modes to compare (first: the reference)")
    ap.add_argument("--grid", action="store_true", help="standard step over --batches x --patches")
    ap.add_argument("--batches", default="2,4,8,16")
    ap.add_argument("--patches", default="64,128,256")
    ap.add_argument("--compile", action="store_true", help="every variant with speed.compile (modes, grid)")
    ap.add_argument("--layout", action="store_true",
                    help="whole runs (CLI, photos) as 1 process x 2 threads vs torchrun 2 ranks x 1 thread, each "
                         "without and with speed.compile; --batch is the global batch")
    ap.add_argument("--engine", action="store_true",
                    help="whole CLI runs over the photos (loader included), each mode: no photo cache "
                         "(data.cache_mb=0), cache, cache + speed.compile, cache + bf16 + compile")
    ap.add_argument("--variants", default=",".join(k for k in ENGINE if "bf16" not in k or cpu_bf16()),
                    help=f"--engine: which of {', '.join(ENGINE)} (bf16: only where it runs)")
    ap.add_argument("--machine-cache", action="store_true",
                    help="take the autotuner's choices stored on this machine (default: measure afresh, "
                         "in this process and in every run it starts)")
    args = ap.parse_args(argv)
    saved = os.environ.get(autotune.STORE_ENV)
    if not args.machine_cache:
        os.environ[autotune.STORE_ENV] = ""  # inherited by the CLI runs of --engine and --layout
    try:
        with autotune.forced(autotune.mode()):  # each trainer sets the process's mode; restored after
            return run(args, ap)
    finally:
        if saved is None:
            os.environ.pop(autotune.STORE_ENV, None)
        else:
            os.environ[autotune.STORE_ENV] = saved


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """The benchmark of the parsed command line ``args``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    base = dict(PRESETS["micro"]) if args.micro else {"model.name": args.model}
    base.update({"data.patch": args.patch, "data.batch": args.batch, "optim.schedule": "constant",
                 "run.steps": 10**6})
    variants = {m: MODES[m] for m in args.modes.split(",")}
    if args.grid:
        variants = {f"batch {b} x {p}px": {"data.batch": int(b), "data.patch": int(p)}
                    for p in args.patches.split(",") for b in args.batches.split(",")}
    if args.speed:  # on a CPU: compile, and bf16 where oneDNN has kernels (channels_last is GPU-only)
        opts = SPEED if torch.cuda.is_available() else {k: SPEED[k] for k in ("fp32", "gemm", "conv", "compile")}
        if not torch.cuda.is_available() and cpu_bf16():  # "all" has channels_last, refused on a CPU
            opts |= {"bf16": SPEED["bf16"], "bf16 + compile": SPEED["bf16"] | SPEED["compile"]}
        if args.options:
            unknown = set(args.options.split(",")) - set(opts)
            if unknown:
                ap.error(f"--options: unknown or not run on this device: {sorted(unknown)} (here: {', '.join(opts)})")
            opts = {k: opts[k] for k in args.options.split(",")}
        variants = {f"{m}/{s}": {**MODES[m], **sov} for m in args.modes.split(",") for s, sov in opts.items()}
    base["speed.compile"] = args.compile  # explicit: auto would compile these endless runs
    if args.engine or args.layout:
        base = {**base, "run.log_every": 10**6, "data.test": ""}  # the step, not an evaluation
        modes = args.modes.split(",")
        if args.engine:
            unknown = set(args.variants.split(",")) - set(ENGINE)
            if unknown:
                ap.error(f"--variants: unknown {sorted(unknown)} (known: {', '.join(ENGINE)})")
            runs = {f"{m}/{v}": ({**MODES[m], **ENGINE[v]}, 1, 2) for m in modes for v in args.variants.split(",")}
        else:
            runs = {f"{m}/{lname}/{'compiled' if c else 'eager'}":
                    ({**MODES[m], "speed.compile": c, "data.batch": args.batch // ranks}, ranks, threads)
                    for m in modes for c in (False, True) for lname, (ranks, threads) in LAYOUTS.items()}
        times = whole_runs(base, runs, args.rounds, args.steps)
        return report(times, {k: args.batch for k in times}, "engine" if args.engine else "layout", args,
                      torch.device("cpu"), base.get("model.name", "micro"))
    with tempfile.TemporaryDirectory() as out:
        trainers = {name: make_trainer(base, ov, out, run_name(name)) for name, ov in variants.items()}
        first = next(iter(trainers.values()))
        cfg: TrainConfig = first.cfg
        xs = {}
        for name, tr in trainers.items():
            d = tr.cfg.data
            x = next(train_loader(tr.cfg.train_dir, d.patch, d.batch, seed=0)).to(tr.dev)
            xs[name] = x.contiguous(memory_format=torch.channels_last) if tr.cfg.speed.channels_last else x
            if args.warmup:
                time_steps(tr, xs[name], args.warmup)
        timed = {name: (time_steps, tr, xs[name]) for name, tr in trainers.items()}
        if args.speed and "standard" in args.modes.split(","):
            for name, tr in trainers.items():
                if name.startswith("standard/"):
                    probe = SECOND + name[len("standard"):]
                    timed[probe] = (time_second_forward, tr, xs[name])
                    time_second_forward(tr, xs[name], max(args.warmup, 1))  # compiles its no-grad graph
        times: dict[str, list[float]] = {k: [] for k in timed}
        for _ in range(args.rounds):
            for name, (fn, tr, x) in timed.items():
                times[name].append(fn(tr, x, args.steps))
    kind = "speed" if args.speed else "grid" if args.grid else "modes"
    report(times, {k: tr.cfg.data.batch for k, (_, tr, _) in timed.items()}, kind, args, first.dev, cfg.model.name)
    print_plans(trainers)
    return 0


def print_plans(trainers: dict[str, Trainer]) -> None:
    """Each variant's speed plan (``auto`` options as this machine resolved them) and every choice
    the autotuner made in this process."""
    plans: dict[str, int] = {}
    for tr in trainers.values():
        plans[tr.plan.describe()] = plans.get(tr.plan.describe(), 0) + 1
    print("\nSpeed plans (as resolved on this machine):")
    for plan, n in plans.items():
        print(f"  {n} variant(s): {plan}")
    print("Autotuner (key: path; how decided):\n  " + "\n  ".join(autotune.describe()))


def report(times: dict[str, list[float]], batch: dict[str, int], kind: str, args: argparse.Namespace,
           dev: torch.device, model: str) -> int:
    """The table: median s/step, images/s, and the median (min-max) of per-round ratios to the
    reference (modes: the first; speed: the same mode with the first option, fp32 by default; engine: the
    same mode without cache)."""
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    first = next(iter(times))
    shape = "batch x patch grid" if kind == "grid" else f"{args.batch}x{args.patch}px"
    print(f"model {model}{' (micro)' if args.micro else ''}, {shape}, {card}, "
          f"{args.rounds} rounds x {args.steps} steps, load average {load:.2f}, commit {commit()}")
    width = max(map(len, times)) + 2
    cross = kind in ("speed", "engine")  # also each mode's ratio to the first mode, same option
    print(f"{'variant':<{width}}{'s/step':>10}{'img/s':>8}{'ratio (median, min-max of rounds)':>38}"
          + (f"{'to ' + first.split('/')[0] + ' (same option)':>38}" if cross else ""))
    base_opt = first.split("/", 1)[-1]  # speed: the first option (fp32 unless --options says otherwise)
    refs = {"speed": lambda n: n.split("/")[0] + "/" + base_opt, "engine": lambda n: n.split("/")[0] + "/no cache",
            "layout": lambda n: n.split("/")[0] + f"/{next(iter(LAYOUTS))}/eager", "modes": lambda n: first,
            "grid": lambda n: first}

    def ratios(name: str, ref: str) -> str:
        r = sorted(a / b for a, b in zip(times[name], times[ref]))
        return f"{statistics.median(r):.2f} ({r[0]:.2f}-{r[-1]:.2f})"
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"{name:<{width}}{med:>10.4f}{batch[name] / med:>8.1f}{ratios(name, refs[kind](name)):>38}"
        if cross:
            line += f"{ratios(name, first.split('/')[0] + '/' + name.split('/', 1)[1]):>38}"
        print(line)
    what = {"speed": f"the same mode in {base_opt}", "engine": "the same mode without the photo cache",
            "layout": f"the same mode, {next(iter(LAYOUTS))}, eager", "modes": first, "grid": first}
    print(f"(ratio: to {what[kind]}, within each round)")
    if any(n.startswith(SECOND + "/") for n in times):
        print(f"({SECOND}: Solution 1's forward of the same batch after the step, no autograd, alone; "
              "its ratio to standard is the least the faithful step adds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
