"""The store of trained checkpoints that users get (``checkpoints/<model>/``).

One folder, committed once: weights-only checkpoints (``torch.load(weights_only=True)``), each with
its model config and a ``meta`` dict (stage, λ, seed, step, evaluation, commit), float16 wherever
every value stays in range (the stored, rounded weights are the model: the study fine-tunes and
evaluates these files, and the ``eval`` in ``meta`` is the float32 run's last evaluation); ``SHA256SUMS`` (``sha256sum -c`` format) and ``index.json`` (every file's meta) beside
them. :func:`models` finds a curve in it by mode, the way :func:`lic_core.workbench.workbook.checkpoints_of`
finds one among training runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lic_core.atomic import write_file
from lic_core.errors import LicError
from lic_core.models.hpcm import read_checkpoint, torch_save_atomic
from lic_core.paths import REPO

MANIFEST = "SHA256SUMS"
INDEX = "index.json"
SHIPPED = REPO / "checkpoints" / "tiny"  # the tiny-HPCM models of the study (studies/tiny/study.yaml)


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float16 where that keeps every value in range (no overflow to inf, no nonzero value
    flushed to 0), else unchanged: a constant such as the likelihood floor 1e-9 would become 0 in
    float16 and turn every rate into inf."""
    if not t.is_floating_point():
        return t
    h = t.half()
    lossy = bool((~torch.isfinite(h) & torch.isfinite(t)).any() or ((h == 0) & (t != 0)).any())
    return t if lossy else h


def export(run_ckpt: Path, dest: Path, meta: dict[str, Any]) -> Path:
    """Weights-only copy of a training checkpoint: model config, state_dict in float16 where that
    is safe (:func:`compact`), ``meta``; then the store's manifest is rewritten."""
    obj = read_checkpoint(run_ckpt)
    sd = {k: compact(v) for k, v in obj["state_dict"].items()}
    torch_save_atomic({"config": obj["config"], "state_dict": sd, "meta": meta}, dest)
    write_manifest(dest.parent)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> Path:
    """``SHA256SUMS`` (``sha256sum -c`` format) and ``index.json`` (each file's meta) of ``folder``."""
    files = sorted(folder.glob("*.pt"))
    write_file(folder / MANIFEST, "".join(f"{sha256(p)}  {p.name}\n" for p in files))
    index = {p.name: read_checkpoint(p).get("meta", {}) for p in files}
    return write_file(folder / INDEX, json.dumps(index, indent=1))


def verify_store(folder: str | Path) -> dict[str, str]:
    """Files of the store whose SHA-256 does not match the manifest (name -> problem)."""
    folder = Path(folder)
    bad = {}
    listed = {}
    for line in (folder / MANIFEST).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    for name, digest in listed.items():
        p = folder / name
        if not p.is_file():
            bad[name] = "missing"
        elif sha256(p) != digest:
            bad[name] = "SHA-256 differs from the manifest"
    for p in folder.glob("*.pt"):
        if p.name not in listed:
            bad[p.name] = "not in the manifest"
    return bad


def is_store(folder: str | Path) -> bool:
    return (Path(folder) / INDEX).is_file()


def read_index(folder: str | Path) -> dict[str, dict[str, Any]]:
    """File name -> meta of a store folder."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise LicError(f"{folder}: not a checkpoint store (no {INDEX})")
    return json.loads(path.read_text())


def mode_of(meta: dict[str, Any]) -> str | None:
    """The training mode a stored model's curve belongs to: bases were trained with the standard
    loss (Adam); fine-tuned models record their mode."""
    return "standard" if meta.get("stage") == "base" else meta.get("mode")


def models(folder: str | Path, mode: str = "standard", seed: int = 0) -> dict[float, Path]:
    """``{λ: checkpoint}`` of one curve of a store: the models of ``mode`` and trunk ``seed``."""
    found = {float(m["lmbda"]): Path(folder) / name for name, m in read_index(folder).items()
             if mode_of(m) == mode and m.get("seed") == seed and m.get("stage") != "trunk"}
    return dict(sorted(found.items()))


def checked(folder: str | Path = SHIPPED) -> Path:
    """``folder`` after checking every file against its SHA-256 manifest (LicError naming the first
    that differs)."""
    bad = verify_store(folder)
    if bad:
        name, why = next(iter(bad.items()))
        raise LicError(f"checkpoint store {folder}: {name}: {why} ({len(bad)} problem(s); git checkout it again)")
    return Path(folder)
