"""Real-bitstream evaluation of HPCM checkpoints on an image folder.

Per image: the bitstream of :func:`lic_core.coding.codec.encode` gives the bpp (``len(bytes) * 8 / pixels``)
and the actual bytes of each stream (z, s1, s2, s3, header); the decoder's 8-bit output gives PSNR
and MS-SSIM (:mod:`lic_core.analysis.metrics`); the eval forward's likelihoods give the estimated bpp and
per-scale bits (:func:`lic_core.training.losses.rate_terms`, padded image, over the real pixel count).

Output, in ``--out``: ``NAME.json`` in CompressAI's format, one point per checkpoint (the mean over
images, as ``compressai.utils.eval_model``), and ``<checkpoint>.images.json`` per checkpoint with
every image's record. That per-image file is rewritten atomically after each image, and images it
already holds are not coded again: an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lic_core.analysis import metrics
from lic_core.analysis.anchors import center_crop
from lic_core.imageio import read_rgb
from lic_core.atomic import write_file
from lic_core.cliargs import bounded_int
from lic_core.datasets import resolve
from lic_core.errors import LicError, command, printable
from lic_core.training.losses import RATES, rate_terms

SCALES = ("z", "s1", "s2", "s3")
MEAN_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time", "bpp_est",
             "bpp_header", *(f"bpp_{s}" for s in SCALES), *(f"bpp_est_{s}" for s in SCALES),
             "psnr_forward")


def load_model(spec: str):
    """(model in eval mode, fingerprint): a checkpoint path, or ``tiny``/``base``/``large`` for
    the seeded default init of that config."""
    from lic_core.models.hpcm import CONFIGS, hpcm
    from lic_core.models.loading import load_checkpoint

    path = Path(spec)
    if path.is_file():
        return load_checkpoint(path).eval(), f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    if spec in CONFIGS:
        return hpcm(spec).eval(), f"default-init:{spec}"
    raise LicError(f"{spec}: neither a checkpoint file nor a model config ({', '.join(CONFIGS)})")


def model_names(specs: Sequence[str]) -> list[str]:
    """File stems of the checkpoints, prefixed by their folder where two stems coincide; a training
    run's checkpoint (``<run>/checkpoints/<stem>.pt``) is always named ``<run>-<stem>``."""
    stems = [f"{Path(s).parent.parent.name}-{Path(s).stem}" if Path(s).parent.name == "checkpoints"
             else Path(s).stem for s in specs]
    names = [f"{Path(s).parent.name}-{st}" if stems.count(st) > 1 else st for s, st in zip(specs, stems)]
    if len(set(names)) < len(names):
        raise LicError(f"checkpoints {list(specs)} do not have distinct names; rename or copy them")
    return names


def estimate(model, x: torch.Tensor) -> dict[str, float]:
    """Estimated bits from the eval forward on ``x`` padded as the codec pads it."""
    from lic_core.coding.codec import pad_image

    h, w = x.shape[-2:]
    out = model(pad_image(x, model.cfg.pad_multiple))
    terms = rate_terms(out, h * w)
    x_hat = out["x_hat"][..., :h, :w]
    est = {f"bpp_est_{s}": float(terms[r]) for s, r in zip(SCALES, RATES)}
    return {"bpp_est": float(terms["bpp"]), **est, "psnr_forward": metrics.psnr(x_hat, x)}


def code_image(model, x: torch.Tensor) -> dict[str, Any]:
    """One image through the real codec: actual bytes, quality of the decoded image, timings."""
    from lic_core.coding.codec import decompress, encode

    h, w = x.shape[-2:]
    t0 = time.perf_counter()
    enc = encode(model, x)
    t1 = time.perf_counter()
    x_hat = decompress(enc.data, model)
    t2 = time.perf_counter()
    if tuple(x_hat.shape) != tuple(x.shape):
        raise LicError(f"decoder returned {tuple(x_hat.shape)} for an input of {tuple(x.shape)}")
    px = h * w
    rec = {"height": h, "width": w, "bytes": len(enc.data), "bpp": len(enc.data) * 8 / px,
           "bpp_header": enc.header_bytes * 8 / px,
           **{f"bpp_{s}": enc.stream_bytes[s] * 8 / px for s in SCALES},
           "psnr-rgb": metrics.psnr(x_hat, x), "ms-ssim-rgb": metrics.ms_ssim(x_hat, x),
           "encoding_time": t1 - t0, "decoding_time": t2 - t1}
    note = metrics.ms_ssim_setting(h, w)[2]
    return rec | ({"ms_ssim_note": note} if note else {})


def _per_image_file(path: Path, meta: dict) -> list[dict]:
    """Records already in ``path``; a file made with another checkpoint or crop is an error."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        old = {k: data[k] for k in meta}
        records = list(data["images"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LicError(f"{path}: not a per-image result file of lic_core ({e}); move it away") from None
    if old != meta:
        diff = ", ".join(f"{k}={old[k]!r} (now {meta[k]!r})" for k in meta if old[k] != meta[k])
        raise LicError(f"{path} was made with {diff}; use another --out or remove the file")
    return records


def image_keys(images: Sequence[Path]) -> list[str]:
    """How the per-image file names each image: its path relative to the images' common folder."""
    root = Path(os.path.commonpath([p.parent for p in images]))
    return [str(p.relative_to(root)) for p in images]


def stored(out: Path, name: str, keys: Sequence[str], crop: int = 0) -> dict[str, Any] | None:
    """The per-image file ``out/NAME.images.json`` when it already holds every image of ``keys``
    (:func:`image_keys`) at ``crop``, in their order; else None. Its checkpoint need not exist any
    more: a study commits these files, not the weights of every fine-tuned run."""
    path = out / f"{name}.images.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    by_key = {r["image"]: r for r in data.get("images", [])}
    if data.get("model") != name or data.get("crop") != crop or not set(keys) <= set(by_key):
        return None
    return {**data, "images": [by_key[k] for k in keys]}


def evaluate_model(spec: str, images: Sequence[Path], out: Path, crop: int = 0,
                   name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate one checkpoint (or config name) on ``images``; returns the per-image file's dict."""
    name = name or model_names([spec])[0]
    if not Path(spec).is_file() and (kept := stored(out, name, image_keys(images), crop)) is not None:
        return kept  # the weights are gone (not committed), their complete result is not
    model, fingerprint = load_model(spec)
    meta = {"model": name, "checkpoint": str(spec), "fingerprint": fingerprint, "crop": crop}
    path = out / f"{name}.images.json"
    records = _per_image_file(path, meta)
    done = {r["image"] for r in records}
    keys = image_keys(images)
    todo = [(k, p) for k, p in zip(keys, images) if k not in done]
    bar = tqdm(todo, desc=name, unit="img", disable=not progress, initial=len(images) - len(todo),
               total=len(images))
    with torch.no_grad():
        for key, p in bar:
            x = metrics.image_tensor(center_crop(read_rgb(p)[0], crop))
            rec = {"image": key, **code_image(model, x), **estimate(model, x)}
            records.append(rec)
            write_file(path, json.dumps({**meta, "images": records}, indent=1) + "\n")
            bar.set_postfix(bpp=f"{rec['bpp']:.3f}", psnr=f"{rec['psnr-rgb']:.2f}")
    order = {k: i for i, k in enumerate(keys)}
    records = sorted((r for r in records if r["image"] in order), key=lambda r: order[r["image"]])
    return {**meta, "images": records}


def aggregate(runs: Sequence[dict[str, Any]], name: str, description: str) -> dict[str, Any]:
    """CompressAI JSON: one point per run (mean over its images), plus our extra keys."""
    results: dict[str, list] = {k: [] for k in MEAN_KEYS}
    for run in runs:
        imgs = run["images"]
        for k in MEAN_KEYS:
            results[k].append(float(np.mean([r[k] for r in imgs])))
    results["checkpoint"] = [r["checkpoint"] for r in runs]
    results["num_images"] = [len(r["images"]) for r in runs]
    notes = sorted({r["ms_ssim_note"] for run in runs for r in run["images"] if "ms_ssim_note" in r})
    return {"name": name, "description": "; ".join([description, *notes]), "results": results}


def evaluate(specs: Sequence[str], dataset: str | Path, out: str | Path, limit: int = 0,
             crop: int = 0, name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate every checkpoint in ``specs``; writes and returns ``out/NAME.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds_name, images = resolve(dataset, limit)
    runs = [evaluate_model(s, images, out, crop, n, progress) for s, n in zip(specs, model_names(specs))]
    name = name or "-".join(r["model"] for r in runs)
    desc = (f"lic_core real-bitstream evaluation on {ds_name} ({len(images)} images"
            + (f", center crops {crop}px" if crop else "") + ")")
    data = aggregate(runs, name, desc)
    write_file(out / f"{name}.json", json.dumps(data, indent=2) + "\n")
    return data


@command("eval")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core eval --checkpoint CKPT... --dataset kodak|FOLDER --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m lic_core eval", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", nargs="+", help="checkpoint files (one R-D point each)")
    src.add_argument("--model", choices=("tiny", "base", "large"),
                     help="a config with its seeded default init instead of a checkpoint")
    p.add_argument("--dataset", default="kodak", help="registered dataset name or image folder")
    p.add_argument("--limit", type=bounded_int(0, 1 << 20), default=0, help="first N images only")
    p.add_argument("--crop", type=bounded_int(0, 1 << 16), default=0, help="center crop of S x S pixels")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    p.add_argument("--name", help="curve name (default: the checkpoint names joined by '-')")
    p.add_argument("--threads", type=bounded_int(0, 1024), default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.name is not None and (not re.fullmatch(r"[\w.+=@-]+", args.name) or args.name in (".", "..")):
        raise LicError(f"--name {printable(args.name)!r}: a curve name is one file name (letters, digits, . _ - + = @)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = evaluate(args.checkpoint or [args.model], args.dataset, args.out, args.limit, args.crop, args.name)
    r = data["results"]
    for ck, bpp, est, ps in zip(r["checkpoint"], r["bpp"], r["bpp_est"], r["psnr-rgb"]):
        print(f"{ck}: bpp {bpp:.4f} (estimated {est:.4f})  PSNR {ps:.2f} dB")
    print(f"wrote {args.out / (data['name'] + '.json')}")
    return 0
