"""Training objectives: how one step turns the task losses of a batch into gradients, and how
each objective's task weights evolve. One class per objective; :class:`~lic_core.training.engine.Trainer`
runs any of them in the same order (forward, task losses, backward, clip, step, :meth:`after_step`).

* :class:`Standard`: ``L_D + bpp`` (the HPCM paper's recipe, Li et al., ICCV 2025).
* :class:`Balanced`: Solution 1 of Balanced R-D (Zhang et al., CVPR 2025, Alg. 1): FAMO weights of
  ``[L_D, bpp]``; the gradient is ``sum_i a_i grad L_i`` from ``sum_i z_i log D_i / c`` (Eq. 8-10),
  the logits step from the loss decrease measured by a second forward on the same batch (Eq. 11-12),
  or with ``balance.next_batch`` from the next batch (ours).
* :class:`Hierarchical`: Solution 1 over the five tasks ``[L_D, R_z, R_s1, R_s2, R_s3]``.
* :class:`QP`: Solution 2 (our derivation of the paper's equality-constrained QP, Eq. 14-16): per-task
  gradients of ``log D_i``, weights from the QP, the model stepped with their combination.

A new objective is one subclass registered in :data:`OBJECTIVES` under its ``loss.mode`` name.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from lic_core.training import losses
from lic_core.config import TrainConfig, as_list
from lic_core.optim import TaskWeighting, gamma_schedule, solve_qp
from lic_core.optim.balance import EPS_D
from lic_core.training import distributed as ddp


def _floats(names: tuple[str, ...] | list[str], t: Tensor | None, prefix: str) -> dict[str, float]:
    return {} if t is None else {f"{prefix}_{n}": float(v) for n, v in zip(names, t.tolist())}


def losses_after_step(forward: Callable[[], Tensor]) -> Tensor:
    """Solution 1's second forward (Alg. 1, the loss decrease of Eq. 11-12): ``forward()``'s task
    losses averaged over ranks, under inference mode (no_grad's values without autograd's view and
    version tracking)."""
    with torch.inference_mode():
        after = ddp.mean(forward())
    return after.clone()  # an ordinary tensor again


class Objective:
    """Plain sum of the task losses; subclasses weight them. ``wrapped``: the forward runs through
    the DDP wrapper (which averages gradients over ranks)."""

    mode = "standard"
    wrapped = True

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.tasks = cfg, losses.TASKS[self.mode]
        offsets = as_list(cfg.balance.offset)
        self.offsets = torch.tensor(offsets * (len(self.tasks) // len(offsets)), device=device)

    def task_losses(self, terms: dict[str, Tensor]) -> Tensor:
        """This objective's task vector, averaged over ranks (every rank weights the same losses)."""
        return ddp.global_value(losses.task_vector(terms, self.mode))

    def backward(self, task: Tensor, params: list[Tensor], step: int) -> str | None:
        """Gradients of one step into ``params``; a reason when the step must be skipped."""
        task.sum().backward()
        return None

    def after_step(self, forward: Callable[[], Tensor], task: Tensor, step: int) -> None:
        """After the optimizer step: ``forward()`` gives the same batch's task losses again."""

    def record(self) -> dict[str, float]:
        """What this objective adds to a step's log record."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": None, "qp_clipped": 0}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        pass


class Standard(Objective):
    """``L = L_D + bpp`` with ``L_D = λ·255²·MSE`` (HPCM, ICCV 2025, Eq. 1)."""


class Balanced(Objective):
    """Solution 1 of Balanced R-D (CVPR 2025, Alg. 1): FAMO task weighting of ``[L_D, bpp]``
    (:class:`~lic_core.optim.TaskWeighting`), meant for Cautious Adam. It owns the logit decay γ
    and its schedule (``balance.gamma``, ``balance.gamma_schedule``)."""

    mode = "balanced"

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        b = cfg.balance
        kw = {"linear": {"end": b.gamma_end}, "cosine": {"end": b.gamma_end},
              "step": {"milestones": b.gamma_milestones, "factor": b.gamma_factor}}.get(b.gamma_schedule, {})
        self.gammas = [gamma_schedule(b.gamma_schedule, g, cfg.run.steps, **kw) for g in as_list(b.gamma)]
        self.weighting = TaskWeighting(len(self.tasks), w_lr=b.w_lr, gamma=None, offsets=self.offsets,
                                       names=self.tasks, device=device, on_bad="skip")
        self.gamma: list[float] = []

    def _gamma(self, step: int) -> float | list[float]:
        self.gamma = [f(step) for f in self.gammas]
        return self.gamma[0] if len(self.gamma) == 1 else self.gamma

    def backward(self, task: Tensor, params: list[Tensor], step: int) -> str | None:
        gamma = self._gamma(step)
        if self.cfg.balance.next_batch:
            self.weighting.update_next_batch(task.detach(), gamma)
        loss = self.weighting.weighted_loss(task)
        if loss is None:  # the weighting refused the losses (see TaskWeighting.last_skip)
            return "weights"
        loss.backward()
        return None

    def after_step(self, forward: Callable[[], Tensor], task: Tensor, step: int) -> None:
        if not self.cfg.balance.next_batch:
            self.weighting.update(task.detach(), losses_after_step(forward), self._gamma(step))

    def record(self) -> dict[str, float]:
        w, g = self.weighting, self.gamma
        gam = {"gamma": g[0]} if len(g) == 1 else {f"gamma_{n}": v for n, v in zip(self.tasks, g)}
        return {**gam, "weight_skips": w.skipped, **_floats(self.tasks, w.z, "z"),
                **_floats(self.tasks, w.a, "a"), **_floats(self.tasks, w.delta, "delta")}

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict(), "qp_clipped": 0}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.weighting.load_state_dict(sd["weighting"])


class Hierarchical(Balanced):
    """Solution 1 over five tasks ``[L_D, R_z, R_s1, R_s2, R_s3]``: each HPCM scale's rate is a
    task of its own (our extension of the paper's two-task split)."""

    mode = "hierarchical"


class QP(Objective):
    """Solution 2 (CVPR 2025, Eq. 14-16, our derivation): ``p.grad = sum_i z_i g_i`` with
    ``g_i = grad log D_i`` averaged over ranks and ``z`` from the equality-constrained QP on their
    Gram matrix (:func:`~lic_core.optim.solve_qp`, ridge ``balance.qp_ridge``)."""

    mode = "qp"
    wrapped = False  # the per-task gradients are averaged here, not by DDP

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        self.clipped = 0
        self.last: tuple[Tensor, Tensor] | None = None

    def backward(self, task: Tensor, params: list[Tensor], step: int) -> str | None:
        log_d = (task - self.offsets + EPS_D).log()
        flat = []
        for i in range(len(self.tasks)):
            gs = torch.autograd.grad(log_d[i], params, retain_graph=i < len(self.tasks) - 1, allow_unused=True)
            flat.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for g, p in zip(gs, params)]))
        g = ddp.mean(torch.stack(flat))
        res = solve_qp(g.double() @ g.double().T, self.cfg.balance.qp_ridge)
        self.clipped += int(res.clipped)
        self.last = (res.z, res.z / (task.detach() - self.offsets + EPS_D))
        for p, part in zip(params, (res.z.to(g) @ g).split([p.numel() for p in params])):
            p.grad = part.view_as(p)
        return None

    def record(self) -> dict[str, float]:
        if self.last is None:
            return {}
        return {"qp_clipped": self.clipped, **_floats(self.tasks, self.last[0], "z"),
                **_floats(self.tasks, self.last[1], "a")}

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": None, "qp_clipped": self.clipped}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.clipped = sd["qp_clipped"]


OBJECTIVES: dict[str, type[Objective]] = {c.mode: c for c in (Standard, Balanced, Hierarchical, QP)}


def objective(cfg: TrainConfig, device: torch.device) -> Objective:
    """The objective of ``loss.mode``."""
    return OBJECTIVES[cfg.loss.mode](cfg, device)
