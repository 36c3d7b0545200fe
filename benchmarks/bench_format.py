"""What a coding variant costs: encode and decode time of format versions and model precisions
against the first variant, on the same images, in interleaved rounds (per-round ratio, median and
min-max).

    python benchmarks/bench_format.py --models tiny,base --kodak 2 --crop 256 --rounds 7
    python benchmarks/bench_format.py --models tiny --variants v4,v4-float64 --kodak 1 --crop 0 --rounds 3

A variant is ``v<version>`` of a version this build writes (3 or 4) with an optional ``-float64``
(the model and the coding in float64, which decodes identically across instruction sets:
benchmarks/cross_cpu.py). Version 3 carries a CRC-32 of the symbols (both sides) and of the
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

from lic_core.coding import codec  # noqa: E402
from lic_core.coding.bitstream import WRITABLE  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models.hpcm import hpcm  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402


def parse_variant(v: str) -> tuple[int, torch.dtype]:
    version, _, dtype = v.removeprefix("v").partition("-")
    if not version.isdigit() or int(version) not in WRITABLE or dtype not in ("", "float64"):
        raise SystemExit(f"bench_format: variant {v!r} is not v<version>[-float64] with a version in {list(WRITABLE)}")
    return int(version), torch.float64 if dtype else torch.float32


def rounds_of(name: str, images: list[torch.Tensor], variants: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per round (all images) for encode and decode of each variant, interleaved."""
    t: dict[str, list[float]] = {f"{op} {v}": [] for op in ("encode", "decode") for v in variants}
    version = {v: parse_variant(v)[0] for v in variants}
    models = {v: codec.synthetic_weights(hpcm(name), 0.7).eval().to(parse_variant(v)[1]) for v in variants}
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,base")
    ap.add_argument("--variants", default="v3,v4", help="comma list; ratios are to the first")
    ap.add_argument("--kodak", type=int, default=2, help="Kodak images per round")
    ap.add_argument("--crop", type=int, default=256, help="top-left crop side (0: whole image)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    for v in variants:
        parse_variant(v)
    torch.set_num_threads(a.threads)
    paths = sorted((datasets_root() / "kodak").glob("kodim*.png"))[: a.kodak]
    images = [load_image(p)[0] for p in paths]
    images = [x[:, :, : a.crop, : a.crop] if a.crop else x for x in images]
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
