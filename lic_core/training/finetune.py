"""Fine-tuning: initial weights from a checkpoint (ours or the authors'), parameter groups by module
with learning-rate multipliers, freezing and progressive unfreezing by step."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from lic_core.config import MODULE_GROUPS, FinetuneConfig
from lic_core.errors import CheckpointError
from lic_core.models.authors import load_authors_state_dict
from lic_core.models.hpcm import HPCM, load_strict, read_checkpoint

# Parameter-name prefixes of each group of HPCM; everything else is the context model
# (adaptors, quant vectors, priors, attention, transitions).
PREFIXES: dict[str, tuple[str, ...]] = {
    "transform": ("g_a.", "g_s."),
    "hyper": ("h_a.", "h_s.", "means_hyper", "scales_hyper"),
}


def group_of(name: str) -> str:
    """``transform``, ``hyper`` or ``context`` for a parameter name of HPCM."""
    return next((g for g, pre in PREFIXES.items() if name.startswith(pre)), "context")


def load_init(model: HPCM, path: str, fmt: str = "auto") -> str:
    """Load weights from ``path`` into ``model`` in place; returns the format used.

    ``ours``: a checkpoint with ``config`` and ``state_dict`` (a model or training checkpoint), whose
    model config must equal ``model``'s (the init seed aside); ``authors``: the authors' state_dict.
    """
    obj = read_checkpoint(path)
    if fmt == "auto":
        fmt = "ours" if "config" in obj else "authors"
    if fmt == "authors":
        sd = obj.get("state_dict", obj)
        load_authors_state_dict(model, {k.removeprefix("module."): v for k, v in sd.items()})
        return fmt
    if "config" not in obj:
        raise CheckpointError(f"{path}: no 'config' entry; is it an authors' checkpoint (init_format: authors)?")
    want = {k: v for k, v in asdict(model.cfg).items() if k != "seed"}
    for k, v in want.items():
        got = obj["config"].get(k)
        if (tuple(got) if isinstance(got, list) else got) != v:
            raise CheckpointError(f"{path}: model.{k} is {got!r} in the checkpoint, {v!r} in the config")
    load_strict(model, obj["state_dict"], str(path))
    return fmt


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """One optimizer group per module group, with ``lr_mult`` (default 1) recorded in the group.
    Frozen groups stay in the optimizer: :func:`set_frozen` only flips ``requires_grad``, and a
    parameter without a gradient is left alone by Adam."""
    named: dict[str, list] = {g: [] for g in MODULE_GROUPS}
    for name, p in model.named_parameters():
        named[group_of(name)].append(p)
    groups = []
    for g, params in named.items():
        if params:
            groups.append({"params": params, "name": g, "lr_mult": float(cfg.lr_mult.get(g, 1.0))})
    return groups


def frozen_at(cfg: FinetuneConfig, step: int) -> set[str]:
    """Groups frozen at ``step``: listed in ``freeze`` and not yet at their ``unfreeze_at`` step."""
    return {g for g in cfg.freeze if cfg.unfreeze_at.get(g, -1) < 0 or cfg.unfreeze_at[g] > step}


def set_frozen(groups: list[dict[str, Any]], frozen: set[str]) -> None:
    for grp in groups:
        for p in grp["params"]:
            p.requires_grad_(grp["name"] not in frozen)
