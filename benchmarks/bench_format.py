"""What a coding variant costs: encode and decode time of format versions and model precisions
against the first variant, on the same images, in interleaved rounds (per-round ratio, median and
min-max).

    python benchmarks/bench_format.py --models tiny,base --kodak 2 --crop 256 --rounds 7
    python benchmarks/bench_format.py --models tiny --variants v4,v4-float64 --kodak 1 --crop 0 --rounds 3
    python benchmarks/bench_format.py --models checkpoints/tiny/base-l0.013-s0.pt --variants v4,v5 --kodak 1
    python benchmarks/bench_format.py --bdrate checkpoints/tiny/base-l0.0035-s0.pt,...,base-l0.025-s0.pt \\
        --kodak 24 --crop 256

A variant is ``v<version>`` of a version this build writes (3, 4 or 5) with an optional ``-float64``
(the model and the coding in float64, which decodes identically across instruction sets:
benchmarks/cross_cpu.py). ``v5`` codes with the model's exact version (lic_core.models.exact: a
store checkpoint's from its exact.json, a synthetic model's calibrated on the benchmark's images).
A model is a config name (synthetic weights) or a checkpoint. ``--bdrate`` codes every image with
each checkpoint of an R-D curve as format 4 (float) and 5 (exact), real bitstreams, and prints
the BD-rate of exact against float (lic_core.analysis.bdrate). Version 3 carries a CRC-32 of the symbols (both sides) and of the
encoder's 8-bit image, which costs the encoder one synthesis pass (:mod:`lic_core.coding.codec`);
version 4 adds the weights' fingerprint (a SHA-256 of the weights, cached per model). Versions 1
and 2 are no longer written: benchmarks/results/bench_format_cpu.txt holds the last version 2 vs
3 run. Synthetic weights (no trained Base here).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import per_round, spread  # noqa: E402

import numpy as np  # noqa: E402

from lic_core.analysis.bdrate import Curve, bd_delta  # noqa: E402
from lic_core.analysis.metrics import psnr  # noqa: E402
from lic_core.coding import codec  # noqa: E402
from lic_core.coding.bitstream import EXACT, WRITABLE  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models import exact  # noqa: E402
from lic_core.models.hpcm import HPCM, hpcm  # noqa: E402
from lic_core.models.loading import load_checkpoint  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402
from lic_core.workbench import store  # noqa: E402


def parse_variant(v: str) -> tuple[int, torch.dtype]:
    version, _, dtype = v.removeprefix("v").partition("-")
    if not version.isdigit() or int(version) not in WRITABLE or dtype not in ("", "float64"):
        raise SystemExit(f"bench_format: variant {v!r} is not v<version>[-float64] with a version in {list(WRITABLE)}")
    return int(version), torch.float64 if dtype else torch.float32


def model_of(name: str, version: int, dtype: torch.dtype, images: list[torch.Tensor]) -> HPCM:
    """A config name's synthetic weights (factor 0.7) or a checkpoint; for version 5 its exact
    version (a store file's record, else calibrated on ``images``)."""
    path = Path(name)
    model = load_checkpoint(path).eval() if path.suffix in (".pt", ".tar", ".pth") else \
        codec.synthetic_weights(hpcm(name), 0.7).eval()
    if version >= EXACT:
        known = path.name in store.exact_records(path.parent) if path.suffix == ".pt" else False
        model = store.exact_model(model, path) if known else exact.calibrate(model, images)
    return model.to(dtype)


def rounds_of(name: str, images: list[torch.Tensor], variants: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per round (all images) for encode and decode of each variant, interleaved."""
    t: dict[str, list[float]] = {f"{op} {v}": [] for op in ("encode", "decode") for v in variants}
    version = {v: parse_variant(v)[0] for v in variants}
    models = {v: model_of(name, *parse_variant(v), images) for v in variants}
    data = {v: [codec.encode(models[v], x, version=version[v]).data for x in images] for v in variants}
    for _ in range(rounds):
        for v in variants:
            t0 = time.perf_counter()
            for x in images:
                codec.encode(models[v], x, version=version[v])
            t[f"encode {v}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for d in data[v]:
                codec.decompress(d, models[v])
            t[f"decode {v}"].append(time.perf_counter() - t0)
    return t


def rd_points(ckpts: list[str], images: list[torch.Tensor]) -> dict[str, dict[str, list[float]]]:
    """Mean bpp and PSNR (8-bit, real bitstreams) per checkpoint, float (v4) and exact (v5)."""
    out: dict[str, dict[str, list[float]]] = {"v4": {"bpp": [], "psnr": []}, "v5": {"bpp": [], "psnr": []}}
    for ckpt in ckpts:
        for v in ("v4", "v5"):
            model = model_of(ckpt, *parse_variant(v), images)
            encs = [codec.encode(model, x) for x in images]
            out[v]["bpp"].append(float(np.mean([e.bpp for e in encs])))
            out[v]["psnr"].append(float(np.mean([psnr(e.image, x) for e, x in zip(encs, images)])))
            print(f"{Path(ckpt).name:24} {v}: {out[v]['bpp'][-1]:.5f} bpp, {out[v]['psnr'][-1]:.4f} dB", flush=True)
    return out


def bdrate_exact(ckpts: list[str], images: list[torch.Tensor]) -> None:
    pts = rd_points(ckpts, images)
    curves = {v: Curve(v, np.array(p["bpp"]), np.array(p["psnr"]), "psnr-rgb") for v, p in pts.items()}
    order = {v: np.argsort(c.bpp) for v, c in curves.items()}
    curves = {v: Curve(v, c.bpp[order[v]], c.quality[order[v]], c.metric) for v, c in curves.items()}
    for method in ("cubic", "pchip"):
        r = bd_delta(curves["v4"], curves["v5"], method=method)
        print(f"BD-rate exact (v5) vs float32 (v4), {method}: {r.bd_rate:+.3f} %, BD-PSNR {r.bd_quality:+.4f} dB"
              + (f" ({'; '.join(r.warnings)})" if r.warnings else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,base")
    ap.add_argument("--variants", default="v3,v4", help="comma list; ratios are to the first")
    ap.add_argument("--kodak", type=int, default=2, help="Kodak images per round")
    ap.add_argument("--crop", type=int, default=256, help="top-left crop side (0: whole image)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bdrate", help="comma list of an R-D curve's checkpoints: BD-rate of exact (v5) vs float (v4)")
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    for v in variants:
        parse_variant(v)
    torch.set_num_threads(a.threads)
    paths = sorted((datasets_root() / "kodak").glob("kodim*.png"))[: a.kodak]
    images = [load_image(p)[0] for p in paths]
    images = [x[:, :, : a.crop, : a.crop] if a.crop else x for x in images]
    if a.bdrate:
        print(f"{len(images)} Kodak images ({a.crop or 'whole'}), {a.threads} threads; mean bpp and PSNR of real bitstreams")
        bdrate_exact(a.bdrate.split(","), images)
        return 0
    print(f"{len(images)} Kodak images ({a.crop or 'whole'}), {a.rounds} rounds, {a.threads} threads; "
          f"seconds per round (median) and each variant / {variants[0]} per round (median, min-max)")
    for name in a.models.split(","):
        t = rounds_of(name, images, variants, a.rounds)
        for op in ("encode", "decode"):
            ref = t[f"{op} {variants[0]}"]
            cells = [f"{v} {statistics.median(t[f'{op} {v}']):.3f} s" + ("" if v == variants[0] else
                     f", {spread(per_round(t[f'{op} {v}'], ref))}") for v in variants]
            print(f"{name:6} {op}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
