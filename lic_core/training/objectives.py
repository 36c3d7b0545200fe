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

:data:`OBJECTIVES` is the one registry of training modes: ``loss.mode`` is validated against it,
and :data:`MODES` and :data:`TASKS` (each mode's task names) are read from it. A new objective is
one subclass with its ``mode`` and ``tasks``, registered there. Objectives take a
:class:`~lic_core.config.TrainConfig` (this module does not import the config module, which
validates against this registry).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from lic_core.optim import QPWeighting, TaskWeighting, gamma_schedule
from lic_core.optim.balance import as_list
from lic_core.training import distributed as ddp
from lic_core.training import losses

Config = Any  # a lic_core.config.TrainConfig: not imported, the config module validates against this registry


def named_floats(names: Sequence[str], t: Tensor | None, prefix: str) -> dict[str, float]:
    """``{f"{prefix}_{name}": value}`` of a per-task tensor (``{}`` for None): a log record's fields."""
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
    tasks: tuple[str, ...] = ("D", "bpp")  # terms of losses.loss_terms, in the spec's order
    wrapped = True

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        offsets = as_list(cfg.balance.offset)
        self.offsets = torch.tensor(offsets * (len(self.tasks) // len(offsets)), device=device)

    def task_losses(self, terms: dict[str, Tensor]) -> Tensor:
        """This objective's task vector, averaged over ranks (every rank weights the same losses)."""
        return ddp.global_value(losses.task_vector(terms, self.tasks))

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

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__(cfg, device)
        b = cfg.balance
        kw = {"linear": {"end": b.gamma_end}, "cosine": {"end": b.gamma_end},
              "step": {"milestones": b.gamma_milestones, "factor": b.gamma_factor}}.get(b.gamma_schedule, {})
        self.schedules = [gamma_schedule(b.gamma_schedule, gamma, cfg.run.steps, **kw) for gamma in as_list(b.gamma)]
        self.weighting = TaskWeighting(len(self.tasks), w_lr=b.w_lr, gamma=None, offsets=self.offsets,
                                       names=self.tasks, device=device, on_bad="skip")
        self.gamma: list[float] = []  # γ at the last step: one value, or one per task

    def _gamma(self, step: int) -> float | list[float]:
        """γ at ``step`` from its schedules, kept in :attr:`gamma` for :meth:`record`."""
        self.gamma = [f(step) for f in self.schedules]
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
        w, gamma = self.weighting, self.gamma
        logged = {"gamma": gamma[0]} if len(gamma) == 1 else {f"gamma_{n}": v for n, v in zip(self.tasks, gamma)}
        return {**logged, "weight_skips": w.skipped, **named_floats(self.tasks, w.z, "z"),
                **named_floats(self.tasks, w.a, "a"), **named_floats(self.tasks, w.delta, "delta")}

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict(), "qp_clipped": 0}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.weighting.load_state_dict(sd["weighting"])


class Hierarchical(Balanced):
    """Solution 1 over five tasks ``[L_D, R_z, R_s1, R_s2, R_s3]``: each HPCM scale's rate is a
    task of its own (our extension of the paper's two-task split)."""

    mode = "hierarchical"
    tasks = ("D",) + losses.RATES


class QP(Objective):
    """Solution 2 (CVPR 2025, Eq. 14-16, our derivation): ``p.grad = sum_i z_i g_i`` with
    ``g_i = grad log D_i`` averaged over ranks and ``z`` from the equality-constrained QP on their
    Gram matrix, by :class:`~lic_core.optim.QPWeighting` (ridge ``balance.qp_ridge``)."""

    mode = "qp"
    wrapped = False  # the per-task gradients are averaged by the weighting (reduce), not by DDP

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__(cfg, device)
        self.qp = QPWeighting(len(self.tasks), offsets=self.offsets, ridge=cfg.balance.qp_ridge,
                              names=self.tasks, reduce=ddp.mean)

    @property
    def last(self) -> tuple[Tensor, Tensor] | None:
        """Weights ``z`` and gradient coefficients ``a`` of the last step (None before the first)."""
        return None if self.qp.last is None else (self.qp.z, self.qp.a)

    def backward(self, task: Tensor, params: list[Tensor], step: int) -> str | None:
        self.qp.backward(task, params)
        return None

    def record(self) -> dict[str, float]:
        if self.last is None:
            return {}
        z, a = self.last
        return {"qp_clipped": self.qp.n_clipped, **named_floats(self.tasks, z, "z"), **named_floats(self.tasks, a, "a")}

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": None, "qp_clipped": self.qp.n_clipped}  # the QP weights have no state

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.qp.n_clipped = sd["qp_clipped"]


OBJECTIVES: dict[str, type[Objective]] = {c.mode: c for c in (Standard, Balanced, Hierarchical, QP)}
MODES: tuple[str, ...] = tuple(OBJECTIVES)  # the values of loss.mode
TASKS: dict[str, tuple[str, ...]] = {m: c.tasks for m, c in OBJECTIVES.items()}  # each mode's task names


def objective(cfg: Config, device: torch.device) -> Objective:
    """The objective of ``loss.mode``."""
    return OBJECTIVES[cfg.loss.mode](cfg, device)
