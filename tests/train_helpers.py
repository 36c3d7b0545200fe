"""Shared by the training-engine tests: small image folders and micro run configs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import requires
from PIL import Image

from lic_core.config import PRESETS, TrainConfig
from lic_core.training.engine import as_config, cpu_bf16

# a CPU feature: skips, said so, on a CPU without AVX-512 (see conftest.skip_or_fail)
needs_cpu_bf16 = requires(cpu_bf16, "speed.bf16: oneDNN has no bfloat16 kernels for this CPU (needs AVX-512)",
                          kind="cpu")


def smooth_images(folder: Path, n: int = 6, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """``n`` smooth colour PNGs (gradients plus mild noise): compressible, fast to decode."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * xx, b * yy, c * (1 - xx * yy)], -1) + rng.normal(0, 0.02, (h, w, 3))
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def micro_config(out: Path, train: Path, **sets) -> TrainConfig:
    """The micro preset, quiet (no bar, no wandb), every step logged; ``sets``: dotted keys with
    ``__`` for ``.`` (``loss__mode="balanced"``)."""
    ov = {**PRESETS["micro"], "data.train": str(train), "run.out": str(out), "run.name": "run",
          "run.steps": 4, "run.log_every": 1, "run.eval_every": 1000, "run.ckpt_every": 1000,
          "run.progress": False, "run.wandb_mode": "disabled", "optim.schedule": "constant",
          "optim.lr": 1e-3}
    ov.update({k.replace("__", "."): v for k, v in sets.items()})
    return as_config(None, ov)


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    """Import into a test module: wandb is disabled in its tests."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Import into a test module: a folder of :func:`smooth_images`."""
    return smooth_images(tmp_path_factory.mktemp("imgs"))
