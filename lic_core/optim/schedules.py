"""Schedules over training: the FAMO logit decay gamma (ours; ``shared/spec/BALANCED.md``) and the
model's learning rate (:class:`LRSchedule`, ``optim.schedule`` of the training config).

Each gamma schedule is a pure function of ``(step, total)``: the same arguments always give the
same value, so a resumed run needs no schedule state. ``step`` counts from 0; values past
``total`` stay at the end value. The learning-rate schedule's ``plateau`` kind has state, which
it hands to the checkpoint.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

__all__ = ["constant", "linear", "cosine", "step", "SCHEDULES", "gamma_schedule", "LR_SCHEDULES", "LRSchedule"]


def _progress(t: int, total: int) -> float:
    if total <= 0:
        raise ValueError(f"total_steps must be > 0, got {total}")
    return min(max(t, 0), total) / total


def constant(t: int, total: int, base: float) -> float:
    """``base`` at every step."""
    return base


def linear(t: int, total: int, base: float, end: float = 0.0) -> float:
    """From ``base`` at step 0 to ``end`` at ``total``, linearly."""
    return base + (end - base) * _progress(t, total)


def cosine(t: int, total: int, base: float, end: float = 0.0) -> float:
    """Half-cosine from ``base`` at step 0 to ``end`` at ``total``."""
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * _progress(t, total)))


def step(t: int, total: int, base: float, milestones: Sequence[float] = (), factor: float = 0.1) -> float:
    """``base * factor**k``, k the number of milestones reached (``t >= milestone``).

    Milestones below 1 are fractions of ``total``; others are step numbers.
    """
    _progress(t, total)
    marks = [m * total if m < 1 else m for m in milestones]
    return base * factor ** sum(t >= m for m in marks)


SCHEDULES: dict[str, Callable[..., float]] = {"constant": constant, "linear": linear,
                                                "cosine": cosine, "step": step}


def gamma_schedule(kind: str, gamma: float, total_steps: int, **kw) -> Callable[[int], float]:
    """``f(step) -> gamma`` starting at ``gamma`` for ``kind`` in constant | linear | cosine | step
    (keywords: ``end``; ``milestones``, ``factor``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown gamma schedule {kind!r}; choose from {sorted(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    fn = partial(SCHEDULES[kind], base=gamma, **kw)
    return lambda t: fn(t, total_steps)


# ------------------------------------------------------------------------------- learning rate

LR_SCHEDULES = ("constant", "step", "plateau", "cosine")


class LRSchedule:
    """Multiplier of the base learning rate at a step, for ``o.schedule`` in :data:`LR_SCHEDULES`.

    ``o`` is an optimizer config (:class:`~lic_core.config.OptimConfig`: ``lr``, ``schedule``,
    ``milestones`` and ``step_lrs`` (fractions of ``total_steps`` and the lr after each),
    ``min_lr``, ``factor``, ``patience``). ``step`` returns ``step_lrs[i] / lr`` after milestone
    ``i``; ``cosine`` anneals from 1 to ``min_lr / lr`` (:func:`cosine`); ``plateau`` multiplies
    by ``factor`` (not below ``min_lr / lr``) after ``patience`` observed values without a
    relative improvement of 1e-4; ``constant`` is 1.
    """

    def __init__(self, o: Any, total_steps: int):
        if o.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {o.schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        self.o, self.total = o, total_steps
        self.best, self.bad, self.scale = math.inf, 0, 1.0  # plateau state

    def factor(self, step: int) -> float:
        o = self.o
        if o.schedule == "step":
            t = step / self.total
            hit = [lr for m, lr in zip(o.milestones, o.step_lrs) if t >= m]
            return hit[-1] / o.lr if hit else 1.0
        if o.schedule == "cosine":
            return cosine(step, self.total, 1.0, o.min_lr / o.lr)
        return self.scale  # constant: 1; plateau: reduced by observe()

    def observe(self, value: float) -> None:
        """Plateau: one evaluation of the monitored loss."""
        if self.o.schedule != "plateau" or not math.isfinite(value):
            return
        if value < self.best * (1 - 1e-4):
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.o.patience:
            self.scale = max(self.scale * self.o.factor, self.o.min_lr / self.o.lr)
            self.bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad": self.bad, "scale": self.scale}

    def load_state_dict(self, sd: dict[str, float]) -> None:
        self.best, self.bad, self.scale = sd["best"], sd["bad"], sd["scale"]
