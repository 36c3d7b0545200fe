"""Step time of the Balanced R-D training variants against plain Adam, side by side in one run.

One HPCM training step (forward, task losses, backward, clip 1.0, optimizer step) per method, each
method on its own copy of the same model, measured in interleaved rounds (the method order rotates
every round) so machine load affects every method alike; the table gives median times and ratios
to Adam. Methods:

    adam        Adam on L_D + bpp (the standard baseline)
    cautious    Cautious Adam on L_D + bpp (the optimizer's own cost)
    faithful    Solution 1 as the reference: TaskWeighting + Cautious Adam + second forward
    next-batch  Solution 1 with L_new from the next batch's forward (ours, no second forward)
    qp          Solution 2: per-task gradients, QP weights, Cautious Adam: the training objective
                ``qp`` (its QPWeighting, on its own tasks D and bpp)

Targets: faithful <= 1.25x Adam (the paper reports +20-23% per epoch), next-batch
<= 1.05x; qp is reported. Timings on a loaded machine are not final.

    python benchmarks/bench_optim.py [--quick] [--config tiny] [--tasks hierarchical] [--device cuda]
    python benchmarks/bench_optim.py --optimizer-step --config base --steps 7   # opt.step() alone
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lic_core.config import LossConfig, OptimConfig, TrainConfig  # noqa: E402
from lic_core.models.hpcm import hpcm  # noqa: E402
from lic_core.optim import CautiousAdam, QPWeighting, TaskWeighting  # noqa: E402
from lic_core.training.engine import compiler_missing, make_optimizer  # noqa: E402
from lic_core.training.losses import task_losses  # noqa: E402
from lic_core.training.objectives import QP, TASKS  # noqa: E402

TARGETS = {"faithful": 1.25, "next-batch": 1.05}
Step = Callable[[torch.Tensor], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clip(model: torch.nn.Module) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


def make_steps(model: torch.nn.Module, tasks: str, lr: float = 1e-4) -> dict[str, tuple[Step, object]]:
    """One closure per method, each on its own deep copy of ``model``; values are (step, state)."""
    loss_cfg = LossConfig(lmbda=0.013, metric="mse", mode=tasks)
    names, std = TASKS[tasks], TASKS["standard"]
    k = len(names)
    steps: dict[str, tuple[Step, object]] = {}

    def plain(mode: str) -> Step:
        m = copy.deepcopy(model)
        opt = make_optimizer(m.parameters(), OptimConfig(lr=lr), mode)  # the engine's optimizer of the mode

        def step(x):
            opt.zero_grad(set_to_none=True)
            task_losses(m(x), x, loss_cfg, std).sum().backward()
            _clip(m)
            opt.step()
        return step

    def solution1(next_batch: bool) -> tuple[Step, TaskWeighting]:
        m = copy.deepcopy(model)
        opt = CautiousAdam(m.parameters(), lr=lr)
        tw = TaskWeighting(k)

        def step(x):
            opt.zero_grad(set_to_none=True)
            losses = task_losses(m(x), x, loss_cfg, names)
            if next_batch:
                tw.update_next_batch(losses.detach())
            tw.weighted_loss(losses).backward()
            _clip(m)
            opt.step()
            if not next_batch:
                with torch.no_grad():  # the second forward, same batch, still in train mode
                    tw.update(losses.detach(), task_losses(m(x), x, loss_cfg, names))
        return step, tw

    def solution2() -> tuple[Step, QPWeighting]:
        m = copy.deepcopy(model)
        opt = CautiousAdam(m.parameters(), lr=lr)
        qp = QP(TrainConfig(), next(m.parameters()).device)  # the training objective, on its own tasks

        def step(x):
            opt.zero_grad(set_to_none=True)
            qp.backward(task_losses(m(x), x, loss_cfg, qp.tasks), list(m.parameters()), 0)
            _clip(m)
            opt.step()
        return step, qp.qp

    steps["adam"] = (plain("standard"), None)
    steps["cautious"] = (plain("balanced"), None)
    steps["faithful"] = solution1(False)
    steps["next-batch"] = solution1(True)
    steps["qp"] = solution2()
    return steps


OPTIMIZERS: dict[str, Callable] = {
    "adam (torch default)": lambda ps: torch.optim.Adam(ps, lr=1e-4),
    "adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=True),
    "adam fused (engine)": lambda ps: make_optimizer(ps, OptimConfig(lr=1e-4), "standard"),
    "cautious per tensor": lambda ps: CautiousAdam(ps, lr=1e-4, foreach=False),
    "cautious foreach (engine)": lambda ps: make_optimizer(ps, OptimConfig(lr=1e-4), "balanced"),
    "cautious compiled (engine, speed.compile)": lambda ps: make_optimizer(ps, OptimConfig(lr=1e-4), "balanced",
                                                                          compiled=True),
}


def optimizer_steps(model: torch.nn.Module, rounds: int, compiled: bool = True) -> dict[str, list[float]]:
    """Seconds of ``opt.step()`` alone for each of :data:`OPTIMIZERS`, each on its own copy of the
    model's parameters with the same fixed gradients, in interleaved rounds after one warm-up step
    (which compiles the compiled one; left out without a compiler or ``compiled``)."""
    gen = torch.Generator().manual_seed(0)
    opts = {}
    for name, make in OPTIMIZERS.items():
        if "compiled" in name and (not compiled or compiler_missing(torch.device("cpu"))):
            continue
        ps = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).to(p)
        opts[name] = make(ps)
        opts[name].step()
    times: dict[str, list[float]] = {n: [] for n in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    return times


def measure(steps: dict[str, tuple[Step, object]], batches: list[torch.Tensor], warmup: int,
            device: torch.device) -> dict[str, list[float]]:
    """Seconds per step per method, interleaved rounds with a rotating method order."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + len(batches)):
        x = batches[r % len(batches)]
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            _sync(device)
            t0 = time.perf_counter()
            steps[n][0](x)
            _sync(device)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=None, help="HPCM config (default: base on CUDA, tiny on CPU)")
    p.add_argument("--tasks", default="balanced", choices=["balanced", "hierarchical"])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="crop side (default: the pad multiple)")
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 timed rounds, 1 warm-up (--optimizer-step: no compiled row)")
    p.add_argument("--optimizer-step", action="store_true",
                   help="time opt.step() alone: torch's Adam paths and Cautious Adam's, per-round ratios")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    model = hpcm(a.config or ("base" if cuda else "tiny")).to(device).train()
    if a.optimizer_step:
        return print_optimizer_steps(model, a.steps if not a.quick else 2, device, compiled=not a.quick)
    size = a.size or model.cfg.pad_multiple
    batch = a.batch or (8 if cuda else 1)
    steps_n, warmup = (2, 1) if a.quick else (a.steps, a.warmup)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch, 3, size, size, generator=gen).to(device) for _ in range(steps_n)]
    methods = make_steps(model, a.tasks)
    times = measure(methods, batches, warmup, device)
    base = statistics.median(times["adam"])
    print(f"HPCM {model.cfg.name} on {device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}, "
          f"{torch.get_num_threads()} threads), batch {batch}x3x{size}x{size}, tasks {a.tasks}, "
          f"{steps_n} timed rounds after {warmup} warm-up")
    print(f"{'method':<11} {'median ms':>10} {'min ms':>9} {'x Adam':>7}  target")
    for n, ts in times.items():
        med = statistics.median(ts)
        target = TARGETS.get(n)
        verdict = "" if target is None else f"<= {target:.2f} {'ok' if med / base <= target else 'MISSED'}"
        print(f"{n:<11} {med * 1e3:10.1f} {min(ts) * 1e3:9.1f} {med / base:7.3f}  {verdict}")
    tw, qp = methods["faithful"][1], methods["qp"][1]
    print(f"faithful z = {[round(v, 4) for v in tw.z.tolist()]}, "
          f"qp z = {[round(v, 4) for v in qp.z.tolist()]}, qp clipped {qp.n_clipped} times")
    return 0


def print_optimizer_steps(model: torch.nn.Module, rounds: int, device: torch.device, compiled: bool) -> int:
    if device.type != "cpu":
        raise SystemExit("bench_optim: --optimizer-step times CPU steps (a GPU's would need synchronising)")
    times = optimizer_steps(model, rounds, compiled)
    ref = times["adam (torch default)"]
    n = sum(p.numel() for p in model.parameters())
    print(f"HPCM {model.cfg.name}: {n / 1e6:.2f} M parameters in {len(list(model.parameters()))} tensors, "
          f"cpu, {torch.get_num_threads()} threads, {rounds} interleaved rounds after a warm-up step")
    print("| optimizer | step ms (median) | to torch's default Adam (median of rounds, min-max) |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        r = [a / b for a, b in zip(ts, ref)]
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
