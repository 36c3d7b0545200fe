"""Classical codecs as R-D anchors, run live through Pillow over a quality sweep.

Each image is encoded in memory, its real byte count gives the bpp, the decoded 8-bit RGB gives
PSNR and MS-SSIM (:mod:`lic_core.analysis.metrics`, small-image fallback included). Results are averaged
over images per quality, as CompressAI's ``compressai.utils.bench`` does, and written in its JSON
format (``name``, ``description``, ``results``: ``psnr-rgb``, ``ms-ssim-rgb``, ``bpp``,
``encoding_time``, ``decoding_time`` plus ``quality``).

Codecs: JPEG (libjpeg-turbo; Pillow defaults: IJG tables, 4:2:0 chroma, no Huffman optimisation,
the settings of CompressAI's reference ``jpeg.json``), WebP (libwebp, ``method=6``), JPEG 2000
(OpenJPEG, irreversible 9/7 wavelet with the colour transform; the sweep value is the target PSNR
in dB of OpenJPEG's ``dB`` rate control) and AVIF (libavif). A codec the installed Pillow was built
without is reported as unsupported (:func:`unsupported`), never silently dropped.

Qualities: the codec's fixed ladder (``CODECS[key].qualities``), or qualities chosen for the images
at hand so that the anchor's PSNR range spans a test curve's (:func:`span_qualities`, a bisection on
the set's mean PSNR), which is what a BD-rate against the anchor needs to be defined.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL
from PIL import Image, features
from tqdm import tqdm

from lic_core.analysis import metrics
from lic_core.errors import LicError, command, one_line
from lic_core.imageio import read_rgb


@dataclass(frozen=True)
class PillowCodec:
    """A Pillow format, the ``PIL.features`` name that says whether it is built in, its default
    sweep and how a sweep value becomes ``Image.save`` options."""

    name: str
    fmt: str
    feature: str
    library: str
    qualities: tuple[float, ...]
    options: Callable[[float], dict]
    meaning: str
    bounds: tuple[int, int] = (1, 95)  # integer sweep values a search may use


CODECS: dict[str, PillowCodec] = {
    "jpeg": PillowCodec("JPEG", "JPEG", "jpg", "libjpeg_turbo", tuple(range(5, 100, 5)),
                        lambda q: {"quality": int(q)}, "quality 1..95"),
    "webp": PillowCodec("WebP", "WEBP", "webp", "webp", tuple(range(5, 100, 10)),
                        lambda q: {"quality": int(q), "method": 6}, "quality 0..100", (0, 100)),
    "jpeg2000": PillowCodec("JPEG 2000", "JPEG2000", "jpg_2000", "jpg_2000", tuple(range(24, 44, 2)),
                            lambda q: {"quality_mode": "dB", "quality_layers": [float(q)],
                                       "irreversible": True, "mct": 1}, "target PSNR in dB", (15, 60)),
    "avif": PillowCodec("AVIF", "AVIF", "avif", "avif", tuple(range(10, 100, 10)),
                        lambda q: {"quality": int(q)}, "quality 0..100", (0, 100)),
}


def unsupported(key: str) -> str | None:
    """Why codec ``key`` cannot run with the installed Pillow, or None when it can."""
    if key not in CODECS:
        return f"unknown codec {key!r}; choose from {', '.join(CODECS)}"
    c = CODECS[key]
    check = features.check_module if c.feature in features.modules else features.check_codec
    if not check(c.feature):
        return f"Pillow {PIL.__version__} was built without {c.name} support ({c.feature})"
    return None


def describe(key: str) -> str:
    """``"JPEG. Pillow 13.0.0, libjpeg_turbo 3.2.0; sweep: quality 1..95"``."""
    c = CODECS[key]
    return (f"{c.name}. Pillow {PIL.__version__}, {c.library} {features.version(c.library)}; "
            f"sweep: {c.meaning}")


def roundtrip(key: str, rgb: np.ndarray, quality: float) -> tuple[int, np.ndarray, float, float]:
    """(bytes, decoded 8-bit RGB, encoding s, decoding s) of one image through codec ``key``."""
    c = CODECS[key]
    t0 = time.perf_counter()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=c.fmt, **c.options(quality))
    t1 = time.perf_counter()
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        rec = np.asarray(im.convert("RGB"))
    return buf.getbuffer().nbytes, rec, t1 - t0, time.perf_counter() - t1


def code(key: str, rgb: np.ndarray, quality: float) -> dict:
    """Encode + decode one image; returns the metrics of one point (bpp from the real bytes)."""
    nbytes, rec, t_enc, t_dec = roundtrip(key, rgb, quality)
    x, x_hat = metrics.image_tensor(rgb), metrics.image_tensor(rec)
    h, w = rgb.shape[:2]
    return {"bpp": nbytes * 8 / (h * w), "psnr-rgb": metrics.psnr(x_hat, x),
            "ms-ssim-rgb": metrics.ms_ssim(x_hat, x), "encoding_time": t_enc, "decoding_time": t_dec}


def sweep(key: str, images: Sequence[Path], qualities: Sequence[float] | None = None,
          crop: int = 0, progress: bool = True, span: tuple[float, float] | None = None,
          points: int = 6) -> dict:
    """CompressAI JSON of codec ``key`` on ``images``: per quality, the mean over images.

    Qualities: ``qualities``; else, with ``span`` (a PSNR range in dB), ``points`` qualities found
    by :func:`span_qualities` on these images; else the codec's fixed ladder."""
    if (why := unsupported(key)) is not None:
        raise LicError(why)
    if not images:
        raise LicError("no images to code")
    rgbs = [center_crop(read_rgb(p)[0], crop) for p in images]
    qualities_given = bool(qualities)
    if qualities:
        qualities = list(qualities)
    elif span is not None:
        qualities = span_qualities(key, rgbs, span, points)
    else:
        qualities = list(CODECS[key].qualities)
    rows: list[list[dict]] = [[] for _ in qualities]
    bar = tqdm(total=len(qualities) * len(rgbs), desc=CODECS[key].name, unit="img", disable=not progress)
    for row, q in zip(rows, qualities):
        for rgb in rgbs:
            row.append(code(key, rgb, q))
            bar.update()
    bar.close()
    keys = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
    results = {k: [float(np.mean([r[k] for r in row])) for row in rows] for k in keys}
    results["quality"] = [float(q) for q in qualities]
    notes = sorted({metrics.ms_ssim_setting(*rgb.shape[:2])[2] for rgb in rgbs} - {""})
    desc = describe(key) + (f"; {len(images)} images" + (f", center crops {crop}px" if crop else ""))
    if span is not None and not qualities_given:
        desc += f"; qualities chosen to span PSNR {span[0]:.2f}..{span[1]:.2f} dB"
    return {"name": CODECS[key].name, "description": "; ".join([desc, *notes]), "results": results}


def mean_psnr(key: str, rgbs: Sequence[np.ndarray], quality: float) -> float:
    """Mean PSNR (RGB, dB) of codec ``key`` at ``quality`` over the images ``rgbs``."""
    return float(np.mean([metrics.psnr(metrics.image_tensor(roundtrip(key, rgb, quality)[1]),
                                       metrics.image_tensor(rgb)) for rgb in rgbs]))


def _bisect(key: str, rgbs: Sequence[np.ndarray], target: float, below: bool,
            cache: dict[int, float]) -> int:
    """The highest quality whose mean PSNR is <= ``target`` (``below``), or the lowest whose mean
    PSNR is >= ``target``; the end of the codec's range where none is."""
    lo, hi = CODECS[key].bounds

    def left(q: int) -> bool:  # q lies on the low side of the target
        if q not in cache:
            cache[q] = mean_psnr(key, rgbs, q)
        return cache[q] <= target if below else cache[q] < target

    if not left(lo):
        return lo
    if left(hi):
        return hi
    a, b = lo, hi  # left(a) and not left(b)
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (mid, b) if left(mid) else (a, mid)
    return a if below else b


def span_qualities(key: str, rgbs: Sequence[np.ndarray], psnr_range: tuple[float, float],
                   points: int = 6) -> list[float]:
    """``points`` qualities of codec ``key`` whose mean PSNR over ``rgbs`` spans ``psnr_range``,
    evenly spaced between two ends found by bisection on the set's mean PSNR (which grows with
    quality). Each end is whichever of the two qualities around the range's end comes closer to it,
    so that the anchor's PSNR range matches the range (BD's overlap is intersection over union). A
    range beyond the codec's reach stops at the end of its quality range."""
    low, high = sorted(map(float, psnr_range))
    cache: dict[int, float] = {}
    q_lo = _bisect(key, rgbs, low, True, cache)
    q_hi = _bisect(key, rgbs, high, False, cache)
    bounds = CODECS[key].bounds
    q_lo = _nearest(key, rgbs, low, [q_lo, min(q_lo + 1, q_hi)], cache)
    q_hi = max(_nearest(key, rgbs, high, [max(q_hi - 1, q_lo), q_hi], cache), q_lo)
    q_lo, q_hi = max(q_lo, bounds[0]), min(q_hi, bounds[1])
    n = min(max(points, 2), q_hi - q_lo + 1)
    return sorted({float(round(q)) for q in np.linspace(q_lo, q_hi, n)})


def _nearest(key: str, rgbs: Sequence[np.ndarray], target: float, qualities: Sequence[int],
             cache: dict[int, float]) -> int:
    """The quality among ``qualities`` whose mean PSNR is closest to ``target``."""
    for q in qualities:
        if q not in cache:
            cache[q] = mean_psnr(key, rgbs, q)
    return min(qualities, key=lambda q: (abs(cache[q] - target), q))


def psnr_span(curves: Sequence[dict]) -> tuple[float, float]:
    """(lowest, highest) mean PSNR over CompressAI JSON curves (the range anchors must cover)."""
    values = [float(v) for c in curves for v in c["results"]["psnr-rgb"] if np.isfinite(v)]
    if not values:
        raise LicError("no finite PSNR in the curves to span")
    return min(values), max(values)


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop of an (H,W,3) image; 0 keeps the image."""
    if size < 0:
        raise LicError(f"crop {size}: must be 0 (the whole image) or a positive side")
    if size == 0:
        return rgb
    h, w = rgb.shape[:2]
    if size > min(h, w):
        raise LicError(f"crop {size} is larger than an image of {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def parse_qualities(keys: Sequence[str], text: str) -> list[float]:
    """``--qualities``: distinct numbers within every chosen codec's range (integers where the codec
    takes integers); else a ValueError naming the value and the range."""
    try:
        values = [float(q) for q in text.split(",")]
    except ValueError:
        raise ValueError(f"--qualities {text!r}: comma-separated numbers, e.g. 10,50,90") from None
    if len(set(values)) != len(values):
        raise ValueError(f"--qualities {text!r}: a value twice (each one is one R-D point)")
    for key in keys:
        lo, hi = CODECS[key].bounds
        whole = key != "jpeg2000"  # JPEG 2000's sweep value is a target PSNR in dB
        bad = [q for q in values if not lo <= q <= hi or (whole and q != int(q))]
        if bad:
            raise ValueError(f"--qualities {bad[0]:g}: {CODECS[key].name} takes "
                             f"{'integers' if whole else 'values'} {lo}..{hi} ({CODECS[key].meaning})")
    return values


@command("anchors")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core anchors --codec jpeg --dataset kodak --out DIR [--qualities 10,50]``."""
    from lic_core.atomic import write_file
    from lic_core.datasets import resolve

    p = argparse.ArgumentParser(prog="python -m lic_core anchors", description=__doc__.split("\n")[0])
    p.add_argument("--codec", action="append", choices=sorted(CODECS),
                   help="repeatable; default: every codec this Pillow supports")
    p.add_argument("--dataset", default="kodak", help="registered dataset name or image folder")
    p.add_argument("--qualities", help="comma-separated sweep values (default: the codec's sweep)")
    p.add_argument("--limit", type=int, default=0, help="first N images only")
    p.add_argument("--crop", type=int, default=0, help="center crop of S x S pixels")
    p.add_argument("--out", type=Path, default=Path("anchors"), help="folder for CODEC.json files")
    args = p.parse_args(argv)
    keys = args.codec or list(CODECS)
    runnable = []
    for key in keys:
        if (why := unsupported(key)) is not None:
            print(f"anchors: skipping {key}: {why}", file=sys.stderr)
        else:
            runnable.append(key)
    if not runnable:
        return 2
    try:
        name, images = resolve(args.dataset, args.limit)
        qualities = parse_qualities(runnable, args.qualities) if args.qualities else None
        args.out.mkdir(parents=True, exist_ok=True)
        for key in runnable:
            data = sweep(key, images, qualities, args.crop)
            path = args.out / f"{key}.json"
            write_file(path, json.dumps(data, indent=2) + "\n")
            print(f"{CODECS[key].name}: {len(data['results']['bpp'])} points on {name} -> {path}")
    except (LicError, ValueError) as e:
        print(f"anchors: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0 if len(runnable) == len(keys) else 1
