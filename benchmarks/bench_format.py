"""What format version 3's decoder checks cost: encode and decode time of version 3 against
version 2 on the same images, in interleaved rounds (per-round ratio, median and min-max).

    python benchmarks/bench_format.py --models tiny,base --kodak 2 --crop 256 --rounds 7

Version 3 adds a CRC-32 of the symbols (both sides) and of the encoder's 8-bit image, which costs
the encoder one synthesis pass (:mod:`lic_core.codec`). Synthetic weights (no trained Base here).
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

from lic_core import codec  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models.hpcm import hpcm  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402

VERSIONS = (2, 3)


def rounds_of(model: torch.nn.Module, images: list[torch.Tensor], rounds: int) -> dict[str, list[float]]:
    """Seconds per round (all images) for encode and decode in each version, interleaved."""
    t: dict[str, list[float]] = {f"{op} v{v}": [] for op in ("encode", "decode") for v in VERSIONS}
    data = {v: [codec.encode(model, x, version=v).data for x in images] for v in VERSIONS}  # warm-up
    for _ in range(rounds):
        for v in VERSIONS:
            t0 = time.perf_counter()
            for x in images:
                codec.encode(model, x, version=v)
            t[f"encode v{v}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for d in data[v]:
                codec.decompress(d, model)
            t[f"decode v{v}"].append(time.perf_counter() - t0)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,base")
    ap.add_argument("--kodak", type=int, default=2, help="Kodak images per round")
    ap.add_argument("--crop", type=int, default=256, help="top-left crop side (0: whole image)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    paths = sorted((datasets_root() / "kodak").glob("kodim*.png"))[: a.kodak]
    images = [load_image(p)[0] for p in paths]
    images = [x[:, :, : a.crop, : a.crop] if a.crop else x for x in images]
    print(f"{len(images)} Kodak images ({a.crop or 'whole'}), {a.rounds} rounds, {a.threads} threads; "
          f"seconds per round (median) and v3 / v2 per round (median, min-max)")
    print(f"{'model':6} {'encode v2':>10} {'encode v3':>10} {'v3/v2':>17} {'decode v2':>10} {'decode v3':>10} {'v3/v2':>17}")
    for name in a.models.split(","):
        t = rounds_of(codec.synthetic_weights(hpcm(name), 0.7).eval(), images, a.rounds)
        cells = []
        for op in ("encode", "decode"):
            v2, v3 = t[f"{op} v2"], t[f"{op} v3"]
            cells += [f"{statistics.median(v2):10.3f}", f"{statistics.median(v3):10.3f}", f"{spread(per_round(v3, v2)):>17}"]
        print(f"{name:6} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
