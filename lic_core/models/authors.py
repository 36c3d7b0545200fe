"""Loading the HPCM authors' checkpoints (lyq133/LIC-HPCM, MIT; tensor names as listed in
``reference/hpcm/state_dict_{base,large}.tsv``) into :class:`~lic_core.models.hpcm.HPCM`.

The mapping is strict: every authors' parameter must map onto one of ours with the same shape,
except the ten learnable vectors ``adaptive_params_list.*``, which early releases did not register
and which default to ones. The authors' coding-table buffers are accepted and ignored (our tables
are built by :mod:`lic_core.coding.entropy`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor

from lic_core.errors import CheckpointError
from lic_core.models.hpcm import CONFIGS, HPCM, HPCMConfig, build, load_strict

AUTHORS_BUFFERS = frozenset({
    "scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z", "quantized_cdf_y",
    "cdf_length_y", "offset_y", "entropy_estimation.beta",
    "entropy_estimation.scale_lower_bound.bound", "entropy_estimation.likelihood_lower_bound.bound",
})
OPTIONAL_PREFIX = "adaptive_params_list."
# Our adaptor k (schedule.py numbering) is the authors' list entry ADAPTOR_NAMES[k].
ADAPTOR_NAMES = ("s1.0", "s2.0", "s2.1", "s2.2", "s3.0", "s3.1", "s3.2", "s3.3", "s3.4", "s3.5")

# (pattern on our name, replacement in the authors' naming), applied in order.
_RULES: tuple[tuple[str, Any], ...] = (
    (r"^(g_a|g_s|h_a|h_s)\.(\d+)\.", r"\1.branch.\2."),
    (r"^priors\.0\.", "y_spatial_prior_s1_s2."),
    (r"^priors\.1\.", "y_spatial_prior_s3."),
    (r"\.pconv\.", ".branch.0.pconv."),
    (r"\.dw\.", ".branch.0."),
    (r"\.fc1\.", ".branch.1."),
    (r"\.fc2\.", ".branch.3."),
    (r"^adaptors\.(\d+)\.", lambda m: f"y_spatial_prior_adaptor_list_{ADAPTOR_NAMES[int(m[1])]}."),
    (r"^quant\.", OPTIONAL_PREFIX),
    (r"^attns\.(\d)\.(q|k|v|out)\.", lambda m: f"attn_s{int(m[1]) + 1}.conv_{m[2]}."),
    (r"^transitions\.", "context_net."),
)


def authors_name(ours: str) -> str:
    """The authors' name of our parameter ``ours``."""
    for pattern, repl in _RULES:
        ours = re.sub(pattern, repl, ours)
    return ours


def authors_config(sd: Mapping[str, Tensor]) -> HPCMConfig:
    """Base or Large, told apart by the depth of g_a (4 or 8 blocks at 384 channels)."""
    if "g_a.branch.0.weight" not in sd:
        raise CheckpointError("not an HPCM authors' state_dict: no tensor 'g_a.branch.0.weight'")
    return CONFIGS["large"] if "g_a.branch.15.weight" in sd else CONFIGS["base"]


def convert_authors_state_dict(sd: Mapping[str, Tensor], model: HPCM) -> dict[str, Tensor]:
    """The authors' state_dict renamed to ``model``'s names (strict, see module docstring);
    raises :class:`CheckpointError` naming the first unexpected, mis-shaped or missing tensor."""
    own = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    theirs = {authors_name(n): n for n in own if n in params}
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}
    for key, val in sd.items():
        if key in AUTHORS_BUFFERS:
            continue
        if key not in theirs:
            raise CheckpointError(f"authors' checkpoint: unexpected tensor {key!r}")
        ours = theirs[key]
        if not isinstance(val, Tensor) or tuple(val.shape) != tuple(own[ours].shape):
            shape = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
            raise CheckpointError(
                f"authors' checkpoint: tensor {key!r} has shape {shape}, expected {tuple(own[ours].shape)}"
            )
        out[ours] = val
    for key, ours in theirs.items():
        if ours in out:
            continue
        if not key.startswith(OPTIONAL_PREFIX):
            raise CheckpointError(f"authors' checkpoint: missing tensor {key!r}")
        out[ours] = torch.ones_like(own[ours])
    out.update({n: t for n, t in own.items() if n not in params})  # our buffers keep their values
    return out


def load_authors_state_dict(model: HPCM, sd: Mapping[str, Tensor]) -> HPCM:
    """Load the authors' tensors into ``model`` (in place); returns ``model``."""
    load_strict(model, convert_authors_state_dict(sd, model), "authors' checkpoint")
    return model


def load_authors_checkpoint(obj: Mapping[str, Any], what: str = "checkpoint") -> HPCM:
    """An HPCM (eval mode) from a loaded authors' checkpoint: their state_dict itself or a dict
    holding it under ``state_dict``."""
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: 'state_dict' is not a dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        cfg = authors_config(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    return load_authors_state_dict(build(cfg), sd).eval()
