"""The 10-parameter two-task toy of ``shared/reference/balanced_toy/TOY_SPEC.md``.

Runs Solution 1 of Balanced R-D (our :class:`TaskWeighting` + :class:`CautiousAdam` +
``torch.nn.utils.clip_grad_norm_``) or the Adam baseline on the closed-form problem, in float64,
and writes the reference CSV columns. With the defaults it reproduces ``trajectory.csv`` /
``trajectory_adam.csv``; every hyper-parameter is an argument so other settings run the same way::

    python -m lic_core.optim.toy --out balanced.csv [--mode adam] [--gamma 0.001] [--steps 500]
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lic_core.atomic import write_file
from lic_core.errors import command
from lic_core.optim import GAMMA, W_LR, CautiousAdam, TaskWeighting

N = 10
BALANCED_COLUMNS = ["step", "L_D", "L_R", "w_D", "w_R", "logit_D", "logit_R", "coef_D", "coef_R",
                    "gnorm_preclip", "gnorm_postclip", "mask_frac", "L_D_new", "L_R_new",
                    "w_D_new", "w_R_new", "theta_norm"]
ADAM_COLUMNS = ["step", "L_D", "L_R", "w_D", "w_R", "gnorm_preclip", "gnorm_postclip",
                "L_D_new", "L_R_new", "theta_norm"]


@dataclass
class ToyConfig:
    """Hyper-parameters of TOY_SPEC.md section 2 (defaults = the reference run)."""

    mode: str = "balanced"  # "balanced" (Solution 1) or "adam" (baseline, loss = L_D + L_R)
    steps: int = 200
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    gamma: float = GAMMA
    w_lr: float = W_LR
    max_norm: float = 1.0
    second_clip: float = 2.0  # the training script's clip_max_norm default (a no-op after max_norm)
    offsets: tuple[float, float] = (-1.0, -1.0)
    lmbda: float = 2.0


def problem() -> tuple[Tensor, Tensor, Tensor]:
    """A, b, theta0 of TOY_SPEC.md section 1 (float64, closed form)."""
    a = [[float(i == j) + 0.3 * math.sin(i + 2 * j + 1) for j in range(N)] for i in range(N)]
    b = [1 + 0.5 * math.cos(i) for i in range(N)]
    theta0 = [0.1 * (i - 4.5) for i in range(N)]
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (a, b, theta0))


def task_losses(theta: Tensor, a: Tensor, b: Tensor, lmbda: float) -> Tensor:
    """``[L_D, L_R]``: ``lambda*|A theta - b|^2`` and ``mean(softplus(2 theta + 0.5))``."""
    l_d = lmbda * ((a @ theta - b) ** 2).sum()
    l_r = F.softplus(2 * theta + 0.5).sum() / N
    return torch.stack([l_d, l_r])


def _clip(theta: Tensor, cfg: ToyConfig) -> tuple[float, float]:
    pre = float(torch.nn.utils.clip_grad_norm_(theta, cfg.max_norm))
    torch.nn.utils.clip_grad_norm_(theta, cfg.second_clip)
    return pre, float(theta.grad.norm())


def run(cfg: ToyConfig) -> list[dict[str, float]]:
    """One run; a row per step with the columns of TOY_SPEC.md section 4 (the last row also holds
    ``theta``, the final parameters, as a list)."""
    if cfg.mode not in ("balanced", "adam"):
        raise ValueError(f"mode must be 'balanced' or 'adam', got {cfg.mode!r}")
    torch.manual_seed(0)
    a, b, theta0 = problem()
    theta = theta0.clone().requires_grad_(True)
    balanced = cfg.mode == "balanced"
    if balanced:
        opt = CautiousAdam([theta], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                           weight_decay=cfg.weight_decay)
        tw = TaskWeighting(2, w_lr=cfg.w_lr, gamma=cfg.gamma, offsets=list(cfg.offsets),
                           names=["D", "R"], dtype=torch.float64)
    else:
        opt = torch.optim.Adam([theta], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
    rows = []
    for t in range(1, cfg.steps + 1):
        opt.zero_grad()
        losses = task_losses(theta, a, b, cfg.lmbda)
        row: dict[str, float] = {"step": t, "L_D": float(losses[0].detach()),
                                  "L_R": float(losses[1].detach())}
        if balanced:
            z, w = tw.z, tw.logits
            tw.weighted_loss(losses).backward()
            row.update(w_D=float(z[0]), w_R=float(z[1]), logit_D=float(w[0]), logit_R=float(w[1]),
                       coef_D=float(tw.a[0]), coef_R=float(tw.a[1]))
        else:
            losses.sum().backward()
            row.update(w_D=1.0, w_R=1.0)
        row["gnorm_preclip"], row["gnorm_postclip"] = _clip(theta, cfg)
        opt.step()
        with torch.no_grad():
            new = task_losses(theta, a, b, cfg.lmbda)
        if balanced:
            row["mask_frac"] = opt.last_mask_fraction
            tw.update(losses.detach(), new)
            row.update(w_D_new=float(tw.z[0]), w_R_new=float(tw.z[1]))
        row.update(L_D_new=float(new[0]), L_R_new=float(new[1]),
                   theta_norm=float(theta.detach().norm()))
        rows.append(row)
    rows[-1]["theta"] = theta.detach().tolist()
    return rows


def write_csv(rows: list[dict[str, float]], path: Path | str, mode: str = "balanced") -> None:
    """Rows as CSV, floats written with ``repr`` (full precision), reference column order."""
    cols = BALANCED_COLUMNS if mode == "balanced" else ADAM_COLUMNS
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(cols)
    out.writerows([[r[c] if c == "step" else repr(float(r[c])) for c in cols] for r in rows])
    write_file(path, text.getvalue())


def read_csv(path: Path | str) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


@command("toy")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lic_core.optim.toy", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="CSV file to write")
    defaults = ToyConfig()
    for f in fields(ToyConfig):
        val = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(val, tuple):
            p.add_argument(flag, type=float, nargs=len(val), default=val)
        else:
            p.add_argument(flag, type=type(val), default=val)
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    cfg = ToyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    rows = run(cfg)
    write_csv(rows, out, cfg.mode)
    last = rows[-1]
    print(f"{cfg.mode}: {cfg.steps} steps, L_D {last['L_D_new']:.6f} L_R {last['L_R_new']:.6f} "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
