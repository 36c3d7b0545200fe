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
from lic_core.errors import LicError, command
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


CODECS: dict[str, PillowCodec] = {
    "jpeg": PillowCodec("JPEG", "JPEG", "jpg", "libjpeg_turbo", tuple(range(5, 100, 5)),
                        lambda q: {"quality": int(q)}, "quality 1..95"),
    "webp": PillowCodec("WebP", "WEBP", "webp", "webp", tuple(range(5, 100, 10)),
                        lambda q: {"quality": int(q), "method": 6}, "quality 0..100"),
    "jpeg2000": PillowCodec("JPEG 2000", "JPEG2000", "jpg_2000", "jpg_2000", tuple(range(24, 44, 2)),
                            lambda q: {"quality_mode": "dB", "quality_layers": [float(q)],
                                       "irreversible": True, "mct": 1}, "target PSNR in dB"),
    "avif": PillowCodec("AVIF", "AVIF", "avif", "avif", tuple(range(10, 100, 10)),
                        lambda q: {"quality": int(q)}, "quality 0..100"),
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


def code(key: str, rgb: np.ndarray, quality: float) -> dict:
    """Encode + decode one image; returns the metrics of one point (bpp from the real bytes)."""
    c = CODECS[key]
    t0 = time.perf_counter()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=c.fmt, **c.options(quality))
    t1 = time.perf_counter()
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        rec = np.asarray(im.convert("RGB"))
    t2 = time.perf_counter()
    x, x_hat = metrics.image_tensor(rgb), metrics.image_tensor(rec)
    h, w = rgb.shape[:2]
    return {"bpp": buf.getbuffer().nbytes * 8 / (h * w), "psnr-rgb": metrics.psnr(x_hat, x),
            "ms-ssim-rgb": metrics.ms_ssim(x_hat, x), "encoding_time": t1 - t0,
            "decoding_time": t2 - t1}


def sweep(key: str, images: Sequence[Path], qualities: Sequence[float] | None = None,
          crop: int = 0, progress: bool = True) -> dict:
    """CompressAI JSON of codec ``key`` on ``images``: per quality, the mean over images."""
    if (why := unsupported(key)) is not None:
        raise LicError(why)
    if not images:
        raise LicError("no images to code")
    qualities = list(qualities or CODECS[key].qualities)
    rgbs = [center_crop(read_rgb(p)[0], crop) for p in images]
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
    return {"name": CODECS[key].name, "description": "; ".join([desc, *notes]), "results": results}


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop of an (H,W,3) image; 0 keeps the image."""
    if size <= 0:
        return rgb
    h, w = rgb.shape[:2]
    if size > min(h, w):
        raise LicError(f"crop {size} is larger than an image of {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


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
        qualities = [float(q) for q in args.qualities.split(",")] if args.qualities else None
        args.out.mkdir(parents=True, exist_ok=True)
        for key in runnable:
            data = sweep(key, images, qualities, args.crop)
            path = args.out / f"{key}.json"
            write_file(path, json.dumps(data, indent=2) + "\n")
            print(f"{CODECS[key].name}: {len(data['results']['bpp'])} points on {name} -> {path}")
    except (LicError, ValueError) as e:
        print(f"anchors: {e}", file=sys.stderr)
        return 2
    return 0 if len(runnable) == len(keys) else 1
