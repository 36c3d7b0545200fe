"""Schedules of the FAMO logit decay gamma over training (ours; ``shared/spec/BALANCED.md``).

Each schedule is a pure function of ``(step, total)``: the same arguments always give the same
value, so a resumed run needs no schedule state. ``step`` counts from 0; values past ``total``
stay at the end value.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

__all__ = ["constant", "linear", "cosine", "step", "SCHEDULES", "gamma_schedule"]


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


def gamma_schedule(kind: str, base: float, total_steps: int, **kw) -> Callable[[int], float]:
    """``f(step) -> gamma`` for ``kind`` in constant | linear | cosine | step (keywords: ``end``;
    ``milestones``, ``factor``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown gamma schedule {kind!r}; choose from {sorted(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    fn = partial(SCHEDULES[kind], base=base, **kw)
    return lambda t: fn(t, total_steps)
