"""Step time of each training mode, measured side by side, printed as ratios to ``standard``.

    python benchmarks/bench_train.py                      # tiny HPCM, 128 px, batch 2, on CPU
    python benchmarks/bench_train.py --model base --patch 256 --batch 8 --speed   # on CUDA:
        # also bf16 / channels_last / compile, each against float32 on the same GPU

Variants run in interleaved rounds (A B C A B C ...) on the same batch, so a machine that gets
busier affects all of them alike; the median per variant is reported. Numbers taken on a loaded
machine (see the load average printed) are not final.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from lic_core.config import PRESETS, TrainConfig
from lic_core.data import train_loader
from lic_core.train.engine import Trainer, as_config

MODES: dict[str, dict] = {
    "standard": {"loss.mode": "standard"},
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
    "all": {"speed.bf16": True, "speed.channels_last": True, "speed.compile": True},
}


def make_trainer(base: dict, extra: dict, out: str, name: str) -> Trainer:
    ov = {**base, **extra, "run.out": out, "run.name": name, "run.resume": "never", "run.progress": False,
          "run.wandb_mode": "disabled"}
    return Trainer(as_config(None, ov))


def time_steps(tr: Trainer, x: torch.Tensor, n: int) -> float:
    """Seconds per step over ``n`` steps."""
    t0 = time.perf_counter()
    for _ in range(n):
        tr.train_step(x)
    return (time.perf_counter() - t0) / n


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
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    base = dict(PRESETS["micro"]) if args.micro else {"model.name": args.model}
    base.update({"data.patch": args.patch, "data.batch": args.batch, "optim.schedule": "constant",
                 "run.steps": 10**6})
    variants = {m: ov for m, ov in MODES.items()}
    if args.speed:
        variants = {f"{m}/{s}": {**MODES[m], **sov} for m in ("standard", "balanced") for s, sov in SPEED.items()}
    with tempfile.TemporaryDirectory() as out:
        trainers = {name: make_trainer(base, ov, out, name.replace("/", "-")) for name, ov in variants.items()}
        first = next(iter(trainers.values()))
        cfg: TrainConfig = first.cfg
        x = next(train_loader(cfg.train_dir, cfg.data.patch, cfg.data.batch, seed=0)).to(first.dev)
        for tr in trainers.values():
            xx = x.contiguous(memory_format=torch.channels_last) if tr.cfg.speed.channels_last else x
            time_steps(tr, xx, args.warmup)
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for _ in range(args.rounds):
            for name, tr in trainers.items():
                xx = x.contiguous(memory_format=torch.channels_last) if tr.cfg.speed.channels_last else x
                times[name].append(time_steps(tr, xx, args.steps))
    dev = first.dev
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ref_name = next(iter(times))
    ref = statistics.median(times[ref_name])
    print(f"model {cfg.model.name}{' (micro)' if args.micro else ''}, {args.batch}x{args.patch}px, {card}, "
          f"{args.rounds} rounds x {args.steps} steps, load average {load:.2f}")
    print(f"{'variant':<28}{'s/step':>10}{'ratio':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ref_m = statistics.median(times[name.split("/")[0] + "/fp32"]) if args.speed else ref
        print(f"{name:<28}{med:>10.4f}{med / ref_m:>8.2f}")
    print(f"(ratio: to {'the same mode in fp32' if args.speed else ref_name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
