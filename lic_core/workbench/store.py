"""The store of trained checkpoints that users get (``checkpoints/<model>/``).

One folder, committed once: weights-only checkpoints (``torch.load(weights_only=True)``), each with
its model config and a ``meta`` dict (stage, λ, seed, step, evaluation, commit), float16 wherever
every value stays in range (the stored, rounded weights are the model: the study fine-tunes and
evaluates these files, and the ``eval`` in ``meta`` is the float32 run's last evaluation); ``SHA256SUMS`` (``sha256sum -c`` format) and ``index.json`` (every file's meta) beside
them. :func:`models` finds a curve in it by mode, the way :func:`lic_core.workbench.workbook.checkpoints_of`
finds one among training runs.

The codec's defaults come from here: :func:`qualities` numbers the shipped standard models by λ
(``compress --quality``), :func:`shipped_by_fingerprint` finds the weights a version-4 file names
(``decompress`` without ``--checkpoint``), and :func:`shipped_table` is what ``info`` lists, with
each model's mean bpp and PSNR on the 24 Kodak images from the study's real-bitstream evaluation.

Each shipped model also has an exact version (format version 5, :mod:`lic_core.models.exact`),
derived at load from the float file and its calibration spec in ``exact.json`` (a few hundred
bytes per model; no second weights file): :func:`exact_model`, :func:`exact_by_fingerprint`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lic_core.atomic import write_file
from lic_core.errors import LicError
from lic_core.models import exact
from lic_core.models.hpcm import HPCM, read_checkpoint, torch_save_atomic
from lic_core.paths import REPO

MANIFEST = "SHA256SUMS"
INDEX = "index.json"
SHIPPED = REPO / "checkpoints" / "tiny"  # the trained tiny-HPCM models that ship
KODAK = "kodak.json"  # each model's mean bpp and PSNR on the 24 whole Kodak images, by file
EXACT = "exact.json"  # each model's exact-path calibration spec and exact fingerprint, by file
MAX_MANIFEST_BYTES = 1 << 20


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


def read_manifest(folder: str | Path) -> dict[str, str]:
    """File name -> SHA-256 of a store's ``SHA256SUMS``; a missing or malformed manifest is a
    :class:`LicError` naming the line."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise LicError(f"{folder}: no {MANIFEST} (not a checkpoint store)")
    return read_sums(path)


def read_sums(path: Path) -> dict[str, str]:
    """File name -> SHA-256 of a file in ``sha256sum`` format (``#`` lines are comments, as for
    ``sha256sum -c``); a malformed file is a :class:`LicError` naming the line."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise LicError(f"{path}: over {MAX_MANIFEST_BYTES:,} bytes, not a manifest")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise LicError(f"{path}: not UTF-8 text") from None
    listed = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        name = parts[1].strip().removeprefix("*") if len(parts) == 2 else ""
        if (len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0])
                or not name or "/" in name or name in (".", "..")):
            raise LicError(f"{path}: line {i} is not '<sha256 hex>  <file name>'")
        listed[name] = parts[0]
    return listed


def verify_store(folder: str | Path) -> dict[str, str]:
    """Files of the store whose SHA-256 does not match the manifest (name -> problem)."""
    folder = Path(folder)
    bad = {}
    listed = read_manifest(folder)
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
    try:
        index = json.loads(path.read_bytes().decode())
    except RecursionError:
        raise LicError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:
        raise LicError(f"{path}: not a JSON index ({e})") from None
    if not isinstance(index, dict) or not all(isinstance(m, dict) for m in index.values()):
        raise LicError(f"{path}: not an object of file name -> meta objects")
    return index


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


# -- the codec's shipped models -----------------------------------------------------------------
def qualities(folder: str | Path = SHIPPED) -> dict[int, Path]:
    """``{quality: checkpoint}``: the store's standard seed-0 models numbered 1, 2, ... by rising λ
    (``compress --quality``)."""
    try:
        found = models(folder)
    except (TypeError, ValueError) as e:
        raise LicError(f"{folder}: bad {INDEX} ({e})") from None
    return {q: p for q, p in enumerate(found.values(), 1)}


def default_quality(folder: str | Path = SHIPPED) -> int:
    """The middle quality level (the upper middle of an even count)."""
    return len(qualities(folder)) // 2 + 1


def checked_file(path: Path) -> Path:
    """``path``, a file of a store, after checking its SHA-256 against the store's manifest."""
    digest = read_manifest(path.parent).get(path.name)
    if digest is None:
        raise LicError(f"{path}: not in {path.parent / MANIFEST}")
    if sha256(path) != digest:
        raise LicError(f"{path}: SHA-256 differs from {MANIFEST} (git checkout it again)")
    return path


_FINGERPRINTS: dict[tuple[str, float, int], bytes] = {}


def file_fingerprint(path: Path) -> bytes:
    """The codec's weights fingerprint of a checkpoint file (cached by path, mtime and size)."""
    from lic_core.coding.codec import fingerprint_of

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _FINGERPRINTS:
        sd = read_checkpoint(path).get("state_dict")
        if not isinstance(sd, dict):
            raise LicError(f"{path}: no state_dict")
        _FINGERPRINTS[key] = fingerprint_of(sd)
    return _FINGERPRINTS[key]


def shipped_by_fingerprint(fp: bytes, folder: str | Path = SHIPPED) -> Path | None:
    """The store's checkpoint whose weights have fingerprint ``fp`` (its SHA-256 checked), or None;
    the quality levels are tried first. A file that cannot be read does not stop the search; when
    none matches, the first such file is named (it may be the one the file needs)."""
    folder = Path(folder)
    if not is_store(folder):
        return None
    first = list(qualities(folder).values())
    rest = sorted(p for p in folder.glob("*.pt") if p not in first)
    unreadable = []
    for p in first + rest:
        try:
            if file_fingerprint(p) == fp:
                return checked_file(p)
        except LicError as e:
            unreadable.append(str(e))
    if unreadable:
        raise LicError(f"no readable model of {folder} has these weights, and {len(unreadable)} file(s) could not be "
                       f"read: {unreadable[0]} (git checkout it again)")
    return None


def kodak_of(path: Path, folder: str | Path | None = None) -> tuple[float, float] | None:
    """Mean bpp and PSNR (dB) of the 24 Kodak images coded with exactly this file (real
    bitstreams, whole images), as the store's ``kodak.json`` records them beside its SHA-256; None
    when the store has no such record."""
    path = Path(path)
    rec_file = Path(folder) if folder is not None else path.parent / KODAK
    try:
        rec = json.loads(rec_file.read_text())[path.name]
        if rec["sha256"] != sha256(path):
            return None
        return float(rec["bpp"]), float(rec["psnr"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def shipped_table(folder: str | Path = SHIPPED) -> list[dict[str, Any]]:
    """One row per quality level: quality, λ, file, weights fingerprint, Kodak bpp and PSNR."""
    index = read_index(folder)
    rows = []
    for q, p in qualities(folder).items():
        kodak = kodak_of(p)
        rows.append({"quality": q, "lmbda": float(index[p.name]["lmbda"]), "file": p,
                     "fingerprint": file_fingerprint(p).hex(), "bpp": kodak[0] if kodak else None,
                     "psnr": kodak[1] if kodak else None})
    return rows


# -- exact versions of the shipped models ---------------------------------------------------------
def exact_records(folder: str | Path = SHIPPED) -> dict[str, dict[str, Any]]:
    """File name -> ``{"sha256", "fingerprint", "spec"}`` of a store's ``exact.json`` ({} if none)."""
    path = Path(folder) / EXACT
    if not path.is_file():
        return {}
    try:
        rec = json.loads(path.read_text())["models"]
        if not isinstance(rec, dict) or not all(isinstance(r.get("spec"), dict) for r in rec.values()):
            raise ValueError("not file name -> record with a spec")
        return rec
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise LicError(f"{path}: not an exact-model record ({e})") from None


def exact_model(model: HPCM, path: Path) -> exact.ExactHPCM:
    """The exact version of the store file ``path`` (loaded as ``model``): derived from its float
    weights and the spec ``exact.json`` records for exactly this file (same SHA-256)."""
    path = Path(path)
    rec = exact_records(path.parent).get(path.name)
    if rec is None or rec.get("sha256") != sha256(path):
        raise LicError(f"{path}: no exact-model spec in {path.parent / EXACT} for this file "
                       "(lic_core.models.exact.calibrate makes the exact model of any checkpoint)")
    return exact.derive(model, rec["spec"]).eval()


def exact_by_fingerprint(fp: bytes, folder: str | Path = SHIPPED) -> Path | None:
    """The store file whose exact version has fingerprint ``fp`` (as ``exact.json`` records it;
    the decoder checks the derived model's own), its SHA-256 checked; or None."""
    for name, rec in exact_records(folder).items():
        if rec.get("fingerprint") == fp.hex() and (Path(folder) / name).is_file():
            return checked_file(Path(folder) / name)
    return None


def write_exact_records(images: list[torch.Tensor], folder: str | Path = SHIPPED,
                        source: str = "") -> Path:
    """Calibrate the exact version of each quality level of ``folder`` on ``images`` and write
    ``exact.json`` (spec, the file's SHA-256 and the exact model's fingerprint)."""
    from lic_core.coding.codec import fingerprint
    from lic_core.models.loading import load_checkpoint

    models = {}
    for p in qualities(folder).values():
        model = load_checkpoint(p)
        spec = exact.calibrate_spec(model, images)
        models[p.name] = {"sha256": sha256(p), "fingerprint": fingerprint(exact.derive(model, spec)).hex(), "spec": spec}
    doc = {"calibration": source, "models": models}
    return write_file(Path(folder) / EXACT, json.dumps(doc, indent=1) + "\n")
