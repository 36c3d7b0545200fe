"""Rate and distortion terms of one forward pass, and task loss vectors built from them.

Everything that reports a rate computes it here, so the per-scale rates of HPCM (Li et al., ICCV
2025) add up to the bpp exactly: ``R_z`` (bits of z) and ``R_s1``, ``R_s2``, ``R_s3`` (bits of the y
symbols coded at scale s1, s2, s3, split by the model's ``scale_masks``), each over the pixel count,
and ``bpp = R_z + R_s1 + R_s2 + R_s3`` computed as that sum.

Task losses follow Balanced R-D (Zhang et al., CVPR 2025), ``shared/spec/BALANCED.md``: lambda is
folded into ``L_D`` and the rate tasks carry none. Which terms are the tasks of a training mode is
the objective's (:data:`lic_core.training.objectives.TASKS`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

RATES = ("R_z", "R_s1", "R_s2", "R_s3")


def _bits(likelihoods: Tensor) -> Tensor:
    """Per-element information content in bits, in float32 whatever the autocast dtype."""
    return -torch.log2(likelihoods.float())


def rate_terms(out: dict[str, Any], num_pixels: int) -> dict[str, Tensor]:
    """``R_z``, ``R_s1``, ``R_s2``, ``R_s3`` and their sum ``bpp``, in bits per pixel.

    ``out`` is an HPCM forward output: ``likelihoods["y"]`` (B, M, h, w), ``likelihoods["z"]`` and
    ``scale_masks`` (3, M, h, w), a partition of the y grid. ``num_pixels`` counts every pixel of the
    batch (B * H * W), so the terms are per-image averages, as CompressAI's bpp.
    """
    lik = out["likelihoods"]
    bits_y = _bits(lik["y"])
    masks = out["scale_masks"].to(bits_y.device)
    terms = {"R_z": _bits(lik["z"]).sum() / num_pixels}
    for name, mask in zip(RATES[1:], masks):
        terms[name] = (bits_y * mask).sum() / num_pixels
    terms["bpp"] = terms["R_z"] + terms["R_s1"] + terms["R_s2"] + terms["R_s3"]
    return terms


def distortion(x_hat: Tensor, x: Tensor, metric: str = "mse", lmbda: float = 1.0) -> Tensor:
    """``lmbda * 255^2 * MSE`` or ``lmbda * (1 - MS-SSIM)`` (pytorch_msssim, data range 1), in float32.

    ``x_hat`` is used unclamped, as in CompressAI's training loss.
    """
    x_hat, x = x_hat.float(), x.float()
    if metric == "mse":
        return lmbda * 255**2 * torch.mean((x_hat - x) ** 2)
    if metric == "ms-ssim":
        return lmbda * (1 - ms_ssim(x_hat, x, data_range=1.0))
    raise ValueError(f"metric must be 'mse' or 'ms-ssim', got {metric!r}")


def loss_terms(out: dict[str, Any], x: Tensor, cfg: Any) -> dict[str, Tensor]:
    """Every term of one forward, computed once: ``D``, the four rates and ``bpp``.

    ``cfg`` has ``lmbda`` and ``metric`` (a :class:`~lic_core.config.LossConfig`, or a
    :class:`~lic_core.config.TrainConfig` whose ``loss`` is used).
    """
    cfg = getattr(cfg, "loss", cfg)
    b, _, h, w = x.shape
    terms = rate_terms(out, b * h * w)
    terms["D"] = distortion(out["x_hat"], x, cfg.metric, cfg.lmbda)
    return terms


def task_vector(terms: dict[str, Tensor], tasks: Sequence[str]) -> Tensor:
    """The terms named by ``tasks`` (e.g. ``("D", "bpp")``) stacked in that order."""
    if isinstance(tasks, str):
        raise ValueError(f"tasks: a sequence of term names (a mode's: objectives.TASKS[mode]), got {tasks!r}")
    if not tasks or any(k not in terms for k in tasks):
        raise ValueError(f"tasks must name terms of {', '.join(terms)}, got {list(tasks)}")
    return torch.stack([terms[k] for k in tasks])


def task_losses(out: dict[str, Any], x: Tensor, cfg: Any, tasks: Sequence[str]) -> Tensor:
    """Tensor[K] of the task losses ``tasks`` of one forward (:func:`loss_terms` of ``cfg``), e.g.
    ``objectives.TASKS["hierarchical"]`` = ``[D, R_z, R_s1, R_s2, R_s3]``."""
    return task_vector(loss_terms(out, x, cfg), tasks)
