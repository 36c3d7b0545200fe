"""Training checkpoints: atomic files, RNG state capture, rotation (last k plus best).

A checkpoint is a dict of tensors and plain Python values, so ``torch.load(weights_only=True)``
reads it. Its ``config`` and ``state_dict`` keys are the model checkpoint format of
``lic_core.models.hpcm`` (the codec and the evaluation load a training checkpoint directly); the
rest is the training state: ``train_config``, ``step``, ``optimizer``, ``weighting``, ``scheduler``,
``rng`` (one entry per rank), ``history`` (evaluations) and counters.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lic_core.errors import CheckpointError
from lic_core.models.hpcm import read_checkpoint, torch_save_atomic

STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")
BEST = "best.pt"


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and ``random`` states as tensors and plain values."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["mt"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -------------------------------------------------------------------------------------- saving


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of floating tensors in ``obj`` holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [n for k, v in items for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and ``os.replace``.

    Refuses (``CheckpointError``, nothing written) a payload with a non-finite tensor, so a
    checkpoint on disk is never poisoned.
    """
    bad = nonfinite_tensors(payload)
    if bad:
        raise CheckpointError(f"refusing to save {path}: non-finite values in {', '.join(bad[:5])}")
    return torch_save_atomic(payload, path)


# ------------------------------------------------------------------------------------ rotation


def step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_########.pt`` files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = ((STEP_FILE.match(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def step_file(folder: str | Path, step: int) -> Path:
    """The checkpoint of ``step`` in ``folder`` (whether or not it exists)."""
    return Path(folder) / f"step_{step:08d}.pt"


def latest(folder: str | Path) -> Path | None:
    """The newest step checkpoint in ``folder`` (None when there is none)."""
    ckpts = step_checkpoints(folder)
    return ckpts[-1][1] if ckpts else None


class CheckpointFallbackWarning(UserWarning):
    """The newest step checkpoint does not load (cut short, damaged); an older one is used."""


def read_latest(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest step checkpoint in ``folder`` that loads and holds a ``state_dict``, with its
    content (None when there is none). A newer file that does not load (a copy cut short, a full
    disk) is skipped with a :class:`CheckpointFallbackWarning` naming it; when none loads, a
    :class:`CheckpointError` names the newest."""
    ckpts = step_checkpoints(folder)
    for _, path in reversed(ckpts):
        try:
            obj = read_checkpoint(path)
            if not isinstance(obj.get("state_dict"), dict):
                raise CheckpointError(f"{path}: no state_dict")
        except CheckpointError as e:
            warnings.warn(CheckpointFallbackWarning(f"{e}; resuming from the previous step checkpoint"), stacklevel=2)
            continue
        return path, obj
    if ckpts:
        raise CheckpointError(f"{ckpts[-1][1].parent}: no step checkpoint loads (the newest: {ckpts[-1][1].name})")
    return None


def _link_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes another name of ``src`` (a hard link, so deleting ``src`` keeps it)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: copy
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def save_rotating(payload: dict[str, Any], folder: str | Path, step: int, keep_last: int,
                  best: bool = False) -> Path:
    """Save ``step_<step>.pt``, also as ``best.pt`` when ``best``, and delete all but the newest
    ``keep_last`` step files (``best.pt`` is kept apart)."""
    folder = Path(folder)
    path = save_atomic(payload, step_file(folder, step))
    if best:
        _link_atomic(path, folder / BEST)
    for _, old in step_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path
