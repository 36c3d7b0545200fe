"""HPCM against the reference data: the computations ``python -m lic_core conformance``
(:mod:`lic_core.analysis.conformance`) prints and the tests assert.

* HPCM Base / Large against the authors' function (``reference/hpcm/CONFORMANCE.md``): weights from
  its deterministic rule loaded through our converter of the authors' tensor names, the kodim23
  centre crop, eval-mode forward; the largest absolute difference of every array, and the number
  of differing symbols.
* The generalized-Gaussian likelihoods alone, from the reference symbols and scales.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lic_core.errors import LicError
from lic_core.paths import datasets_root, reference_root

CLOSE = ("y", "z", "z_hat", "y_hat", "means_hat", "scales_hat", "x_hat")  # tolerance 1e-4
EXACT = ("z_q", "y_q")
LIKELIHOODS = ("y_likelihoods", "z_likelihoods")  # tolerance 1e-5
TOLERANCE = {**{k: 1e-4 for k in CLOSE}, **{k: 0.0 for k in EXACT}, **{k: 1e-5 for k in LIKELIHOODS}}
KODIM23_SUM = 46_743_410  # of the uint8 centre crop rows 128:384, columns 128:640


def rule_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """CONFORMANCE.md Sec. 2: randn seeded by crc32(key), scaled by the first matching rule."""
    r = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    if key.endswith("scales_hyper"):
        return 0.5 + 0.5 * r.abs()
    if key.endswith("means_hyper"):
        return 0.1 * r
    if key.startswith("adaptive_params_list."):
        return 1 + 0.1 * r
    if len(shape) >= 2:
        return r * (0.8 * (1 / math.sqrt(math.prod(shape) / shape[0])))
    return 0.01 * r


def tsv_rows(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:]]
    return [(key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for key, shape, _ in rows]


def authors_state_dict(ref: Path, name: str) -> dict[str, torch.Tensor]:
    """The authors' tensor names of HPCM-``name`` with the rule's values (their buffers left out)."""
    from lic_core.models.authors import AUTHORS_BUFFERS

    return {k: rule_value(k, s) for k, s in tsv_rows(ref / f"state_dict_{name}.tsv") if k not in AUTHORS_BUFFERS}


def kodim23_crop(kodak: Path) -> torch.Tensor:
    from lic_core.imageio import read_rgb

    img = read_rgb(kodak / "kodim23.png")[0][128:384, 128:640]
    if int(img.sum(dtype=np.int64)) != KODIM23_SUM:
        raise LicError(f"{kodak / 'kodim23.png'}: not the Kodak image the conformance data was made from")
    return torch.from_numpy(img.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def run_model(name: str, reference: Path | None = None, kodak: Path | None = None) -> tuple[dict, dict, Any]:
    """(reference arrays, our arrays, our model) of HPCM-``name`` on the kodim23 crop."""
    from lic_core.models.authors import load_authors_state_dict
    from lic_core.models.hpcm import hpcm

    ref = (reference or reference_root()) / "hpcm"
    npz = dict(np.load(ref / f"conformance_{name}.npz", allow_pickle=False))
    model = load_authors_state_dict(hpcm(name), authors_state_dict(ref, name)).eval()
    x = kodim23_crop(kodak or datasets_root() / "kodak")
    with torch.no_grad():
        out = model(x)
    ours = {k: out[k] for k in (*CLOSE, *EXACT) if k in out}
    ours["y_likelihoods"], ours["z_likelihoods"] = out["likelihoods"]["y"], out["likelihoods"]["z"]
    return npz, {k: v.numpy() for k, v in ours.items()}, model


def difference(ref: np.ndarray, ours: np.ndarray, name: str) -> float:
    """Largest absolute difference (``EXACT`` arrays: the number of differing symbols)."""
    if ref.shape != ours.shape:
        raise LicError(f"{name}: shape {ours.shape}, the reference has {ref.shape}")
    if name in EXACT:
        return float((ref != ours).sum())
    return float(np.abs(ref.astype(np.float64) - ours.astype(np.float64)).max())


def model_rows(name: str, reference: Path | None = None, kodak: Path | None = None) -> list[dict[str, Any]]:
    npz, ours, _ = run_model(name, reference, kodak)
    return [{"check": f"HPCM-{name.capitalize()} {k}", "difference": difference(npz[k], ours[k], k),
             "tolerance": TOLERANCE[k], "unit": "symbols" if k in EXACT else "max abs"}
            for k in (*CLOSE, *EXACT, *LIKELIHOODS) if k in npz and k in ours]


def entropy_rows(reference: Path | None = None) -> list[dict[str, Any]]:
    from lic_core.coding.entropy import GeneralizedGaussian

    npz = dict(np.load((reference or reference_root()) / "hpcm" / "conformance_base.npz"))
    gg = GeneralizedGaussian()
    y = gg.likelihood(torch.from_numpy(npz["y_q"]), torch.from_numpy(npz["scales_hat"])).numpy()
    sh = rule_value("scales_hyper", (1, 256, 1, 1))
    z = gg.likelihood(torch.from_numpy(npz["z_q"]), sh).numpy()
    return [{"check": f"generalized Gaussian {k}", "difference": difference(npz[k], v, k), "tolerance": 1e-5,
             "unit": "max abs"} for k, v in (("y_likelihoods", y), ("z_likelihoods", z))]
