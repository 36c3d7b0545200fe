"""Bjøntegaard-delta tables: a thin layer over the ``bjontegaard`` package.

BD-rate (average bit-rate difference in percent at equal quality) and BD-PSNR (average quality
difference at equal rate) follow G. Bjøntegaard, "Calculation of average PSNR differences between
RD-curves", VCEG-M33, 2001, with the interpolations of C. Herglotz et al., "Beyond Bjøntegaard",
ICIP 2022 (``cubic`` = VCEG-M33 cubic polynomial fit, ``pchip`` = JCT-VC CTC sheet, ``akima``).

What this layer adds: curves read from CompressAI JSON files or dicts, points sorted by rate and
checked, the package's overlap warnings captured and returned with each result (never swallowed),
and tables of many curves against one anchor as a pandas DataFrame.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import bjontegaard as bd
import numpy as np
import pandas as pd

from lic_core.atomic import check_output, write_file
from lic_core.cliargs import bounded_float
from lic_core.errors import LicError, command

METHODS = ("cubic", "pchip", "akima")
METRICS = ("psnr-rgb", "ms-ssim-rgb", "ms-ssim-db")
MAX_CURVE_BYTES = 64 << 20  # an R-D curve file larger than this is refused before it is read

CurveSource = Union[str, Path, Mapping[str, Any]]


@dataclass(frozen=True)
class Curve:
    """One R-D curve: points sorted by increasing rate (bits per pixel)."""

    name: str
    bpp: np.ndarray
    quality: np.ndarray
    metric: str


@dataclass
class BDResult:
    """BD-rate (%) and BD-quality (metric units, dB for PSNR) of ``test`` against ``anchor``."""

    anchor: str
    test: str
    metric: str
    method: str
    bd_rate: float
    bd_quality: float
    warnings: list[str] = field(default_factory=list)


def read_results(src: CurveSource) -> tuple[str, dict[str, list[float]]]:
    """(name, results) of a CompressAI JSON file or dict; a bare ``{"bpp": ..., ...}`` dict works too."""
    where = str(src)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise LicError(f"{path}: no such R-D curve file" if not path.exists() else f"{path}: not a regular file")
        if path.stat().st_size > MAX_CURVE_BYTES:
            raise LicError(f"{path}: over {MAX_CURVE_BYTES:,} bytes, not an R-D curve file")
        try:
            data = json.loads(path.read_bytes().decode())
        except UnicodeDecodeError:
            raise LicError(f"{path}: not UTF-8 text") from None
        except RecursionError:
            raise LicError(f"{path}: JSON nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, and integers too long to convert
            raise LicError(f"{path}: not JSON ({' '.join(str(e).split())[:120]})") from None
        default = path.stem
    else:
        data, default, where = dict(src), "curve", str(src.get("name", "curve"))
    if not isinstance(data, dict):
        raise LicError(f"{where}: expected a JSON object with 'results', got {type(data).__name__}")
    results = data.get("results", data)
    if not isinstance(results, dict) or "bpp" not in results:
        raise LicError(f"{where}: no 'results.bpp' (CompressAI JSON: name, description, results)")
    return str(data.get("name", default)), results


def load_curve(src: CurveSource, metric: str = "psnr-rgb", name: str | None = None,
               min_points: int = 2, monotonic: bool = True) -> Curve:
    """A checked curve; ``ms-ssim-db`` is -10 log10(1 - MS-SSIM) computed from ``ms-ssim-rgb``.
    BD needs 2 points; a plot takes ``min_points=1`` (one checkpoint evaluated)."""
    if metric not in METRICS:
        raise LicError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    found, results = read_results(src)
    name = name or found
    key = "ms-ssim-rgb" if metric == "ms-ssim-db" else metric
    if key not in results:
        raise LicError(f"curve {name!r}: no {key!r} in results (has {', '.join(results)})")
    try:
        bpp, q = np.asarray(results["bpp"], float), np.asarray(results[key], float)
    except (TypeError, ValueError, OverflowError):
        raise LicError(f"curve {name!r}: 'bpp' and {key!r} must be lists of numbers") from None
    if metric == "ms-ssim-db":
        q = -10 * np.log10(np.clip(1 - q, 1e-12, None))
    _check(name, key, bpp, q, min_points, monotonic)
    order = np.argsort(bpp)
    return Curve(name, bpp[order], q[order], metric)


class CurveError(LicError):
    """R-D points that exist but cannot enter a BD computation (too few, not increasing, not finite)."""


def _check(name: str, key: str, bpp: np.ndarray, q: np.ndarray, min_points: int,
           monotonic: bool = True) -> None:
    if bpp.ndim != 1 or bpp.shape != q.shape:
        raise LicError(f"curve {name!r}: {len(bpp)} bpp values but {len(q)} {key!r} values")
    if len(bpp) < min_points:
        raise CurveError(f"curve {name!r}: needs at least {min_points} points, has {len(bpp)}")
    if not (np.isfinite(bpp).all() and np.isfinite(q).all()) or (bpp <= 0).any():
        raise CurveError(f"curve {name!r}: bpp must be finite and > 0 and {key!r} finite")
    s = q[np.argsort(bpp)]
    if monotonic and ((np.diff(np.sort(bpp)) <= 0).any() or (np.diff(s) <= 0).any()):
        raise CurveError(f"curve {name!r}: {key!r} must increase strictly with bpp "
                       f"(sorted by bpp: {np.round(s, 4).tolist()})")


def _captured(fn, *args, **kw) -> tuple[float, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(fn(*args, **kw))
    return value, [str(w.message) for w in caught]


def bd_delta(anchor: CurveSource | Curve, test: CurveSource | Curve, metric: str = "psnr-rgb",
             method: str = "cubic", min_overlap: float = 0.75, strict: bool = True) -> BDResult:
    """BD-rate and BD-quality of ``test`` against ``anchor``; negative BD-rate = fewer bits.

    Curves may have different numbers of points. Warnings of ``bjontegaard`` (insufficient or
    no overlap) are returned in ``BDResult.warnings``, prefixed with which axis they concern.
    ``strict``: a value whose axis overlaps less than ``min_overlap`` is undefined (NaN, the
    warning says why) instead of an extrapolated number.
    """
    if method not in METHODS:
        raise LicError(f"unknown BD method {method!r}; choose from {', '.join(METHODS)}")
    a = anchor if isinstance(anchor, Curve) else load_curve(anchor, metric)
    t = test if isinstance(test, Curve) else load_curve(test, metric)
    args = (a.bpp, a.quality, t.bpp, t.quality)
    kw = dict(method=method, require_matching_points=False, min_overlap=min_overlap)
    rate, w_rate = _captured(bd.bd_rate, *args, **kw)
    qual, w_qual = _captured(bd.bd_psnr, *args, **kw)
    notes = [f"BD-rate ({a.metric} axis): {m}" for m in w_rate]
    notes += [f"BD-{a.metric} (rate axis): {m}" for m in w_qual]
    if strict:
        rate, qual = (float("nan") if w else v for v, w in ((rate, w_rate), (qual, w_qual)))
    return BDResult(a.name, t.name, a.metric, method, rate, qual, notes)


def _curve_or_reason(src: CurveSource, metric: str) -> tuple[Curve | None, str, str]:
    """(curve, name, "") or (None, name, why it cannot enter a BD computation); a file that cannot
    be read at all still raises."""
    name = src.name if isinstance(src, Curve) else read_results(src)[0]
    try:
        return load_curve(src, metric), name, ""
    except CurveError as e:
        return None, name, str(e)


def bd_table(anchor: CurveSource, tests: Sequence[CurveSource], metric: str = "psnr-rgb",
             methods: Sequence[str] = ("cubic",), min_overlap: float = 0.75, strict: bool = True) -> pd.DataFrame:
    """One row per test curve: ``BD-rate <method> (%)`` and ``BD-<metric> <method>`` columns and
    a ``warnings`` column joining the distinct overlap warnings of that row.

    A curve that cannot enter a BD computation (too few points, quality not increasing with rate,
    as happens for barely trained models) gets NaN and the reason in ``warnings`` instead of
    stopping the whole table; an unusable anchor makes every row NaN with its reason.
    """
    a, a_name, a_why = _curve_or_reason(anchor, metric)
    rows = []
    for src in tests:
        t, name, why = _curve_or_reason(src, metric)
        row: dict[str, Any] = {"curve": name}
        notes: list[str] = [f"anchor {a_name}: {a_why}"] if a_why else ([why] if why else [])
        for m in methods:
            r = bd_delta(a, t, metric, m, min_overlap, strict) if a is not None and t is not None else None
            row[f"BD-rate {m} (%)"] = r.bd_rate if r else float("nan")
            row[f"BD-{_short(metric)} {m}"] = r.bd_quality if r else float("nan")
            notes += r.warnings if r else []
        row["warnings"] = "; ".join(dict.fromkeys(notes))  # overlap does not depend on the method
        rows.append(row)
    df = pd.DataFrame(rows).set_index("curve")
    df.attrs.update(anchor=a_name, metric=metric)
    return df


def _short(metric: str) -> str:
    return {"psnr-rgb": "PSNR (dB)", "ms-ssim-rgb": "MS-SSIM", "ms-ssim-db": "MS-SSIM (dB)"}[metric]


def format_table(df: pd.DataFrame, fmt: str = "md", digits: int = 2) -> str:
    """The table as Markdown, LaTeX (booktabs) or CSV text; only CSV keeps the warnings column."""
    from lic_core.analysis import tables

    if fmt == "csv":
        return df.to_csv(float_format="%.6g")
    numbers = df.drop(columns="warnings", errors="ignore")
    if fmt == "md":
        return tables.table_markdown(numbers, digits=digits)
    if fmt == "latex":
        caption = f"BD-rate against {df.attrs.get('anchor', 'the anchor')} ({df.attrs.get('metric', '')})."
        return tables.table_latex(numbers, digits=digits, caption=caption)
    raise LicError(f"unknown table format {fmt!r}; choose md, latex or csv")


@command("bdrate")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core bdrate ANCHOR.json CURVE.json... [--metric] [--method] [--format]``."""
    p = argparse.ArgumentParser(prog="python -m lic_core bdrate", description=__doc__.split("\n")[0])
    p.add_argument("anchor", help="CompressAI JSON of the anchor (e.g. reference/kodak/vtm.json)")
    p.add_argument("curves", nargs="+", help="CompressAI JSON files of the curves to compare")
    p.add_argument("--metric", default="psnr-rgb", choices=METRICS)
    p.add_argument("--method", action="append", choices=METHODS,
                   help="interpolation (repeatable; default cubic)")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv"))
    p.add_argument("--min-overlap", type=bounded_float(0.0, 1.0), default=0.75,
                   help="a value whose curves overlap less than this fraction is undefined (NaN)")
    p.add_argument("--lenient", action="store_true",
                   help="print the extrapolated value of a low-overlap pair (with its warning) instead of NaN")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.out:
        check_output(args.out, inputs=[args.anchor, *args.curves])  # never one of the curves it reads
    df = bd_table(args.anchor, args.curves, args.metric, args.method or ["cubic"], args.min_overlap,
                  strict=not args.lenient)
    text = format_table(df, args.format)
    print(text)
    for name, w in df["warnings"].items():
        if w:
            print(f"warning: {name}: {w}", file=sys.stderr)
    if args.out:
        write_file(args.out, text)
    return 0 if all(math.isfinite(v) for v in df.drop(columns="warnings").to_numpy().ravel()) else 1


# ------------------------------------------------------------------------------ paired bootstrap


@dataclass
class ImageCurve:
    """A curve kept per image: ``bpp`` and ``quality`` of shape (points, images), the same images
    in the same order at every point (what a paired bootstrap resamples)."""

    name: str
    bpp: np.ndarray
    quality: np.ndarray
    metric: str = "psnr-rgb"

    def mean(self, idx: np.ndarray | None = None) -> Curve:
        """The curve of the mean over the images (``idx``: a resample of image indices)."""
        sel = slice(None) if idx is None else idx
        return Curve(self.name, self.bpp[:, sel].mean(1), self.quality[:, sel].mean(1), self.metric)


def image_curve(points: Sequence[Sequence[Mapping[str, Any]]], name: str,
                metric: str = "psnr-rgb") -> ImageCurve:
    """An :class:`ImageCurve` from per-image records (``lic_core.analysis.evaluation`` files' ``images``), one
    list per point; every point must hold the same images."""
    keys = [[r["image"] for r in recs] for recs in points]
    if any(k != keys[0] for k in keys):
        raise LicError(f"curve {name!r}: its points were evaluated on different images")
    return ImageCurve(name, np.array([[r["bpp"] for r in recs] for recs in points], float),
                      np.array([[r[metric] for r in recs] for recs in points], float), metric)


def bd_rate_or_nan(anchor: Curve, test: Curve, method: str = "pchip", min_overlap: float = 0.75) -> tuple[float, str]:
    """Strict BD-rate (%) of ``test`` against ``anchor`` and, when undefined (NaN), the reason:
    a curve whose quality does not rise with rate, or quality ranges overlapping < ``min_overlap``."""
    for c in (anchor, test):
        try:
            _check(c.name, c.metric, c.bpp, c.quality, 2)
        except CurveError as e:
            return float("nan"), str(e)
    order_a, order_t = np.argsort(anchor.bpp), np.argsort(test.bpp)
    a = Curve(anchor.name, anchor.bpp[order_a], anchor.quality[order_a], anchor.metric)
    t = Curve(test.name, test.bpp[order_t], test.quality[order_t], test.metric)
    r = bd_delta(a, t, a.metric, method, min_overlap, strict=True)
    return r.bd_rate, "; ".join(w for w in r.warnings if w.startswith("BD-rate"))


def quality_gaps(anchor: Curve, test: Curve) -> list[float]:
    """Quality of each ``test`` point minus ``anchor``'s curve at the same rate (PCHIP in log rate),
    for the test points inside the anchor's rate range, in rate order: where the curves overlap too
    little for a BD-rate, whether the test points lie above (+) or below (-) the anchor's curve."""
    from scipy.interpolate import PchipInterpolator

    order = np.argsort(anchor.bpp)
    bpp, quality = anchor.bpp[order], anchor.quality[order]
    if not np.all(np.diff(bpp) > 0):  # no curve to read a rate from (e.g. an untrained model)
        return []
    curve = PchipInterpolator(np.log(bpp), quality)
    inside = (test.bpp >= bpp[0]) & (test.bpp <= bpp[-1])
    return [float(q - curve(np.log(b))) for b, q in zip(test.bpp[inside], test.quality[inside])]


def rate_gaps(anchor: Curve, test: Curve) -> list[float]:
    """Rate of each ``test`` point against ``anchor``'s curve at the same quality, in percent (PCHIP
    of log rate in quality; negative: fewer bits), for the test points inside the anchor's quality
    range, in quality order: the point-wise counterpart of a BD-rate where the curves overlap too
    little for one."""
    from scipy.interpolate import PchipInterpolator

    order = np.argsort(anchor.quality)
    bpp, quality = anchor.bpp[order], anchor.quality[order]
    if not (np.all(np.diff(quality) > 0) and np.all(np.diff(bpp) > 0)):  # not a monotone curve
        return []
    log_rate = PchipInterpolator(quality, np.log(bpp))
    inside = (test.quality >= quality[0]) & (test.quality <= quality[-1])
    return [float(100 * (b / np.exp(log_rate(q)) - 1)) for b, q in zip(test.bpp[inside], test.quality[inside])]


def paired_bootstrap(pairs: Sequence[tuple[ImageCurve, ImageCurve]], method: str = "pchip",
                     samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Percentile interval of the mean BD-rate over ``pairs`` (anchor, test) when the test images
    are resampled with replacement: one draw of image indices per sample, shared by every curve
    (paired), so the interval shows how much the answer depends on which images were tested.
    Samples where any pair's BD-rate is undefined are dropped and counted."""
    n = pairs[0][0].bpp.shape[1]
    if any(c.bpp.shape[1] != n for p in pairs for c in p):
        raise LicError("paired bootstrap: every curve must hold the same images")
    rng = np.random.default_rng(seed)
    means, dropped = [], 0
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        vals = [bd_rate_or_nan(a.mean(idx), t.mean(idx), method)[0] for a, t in pairs]
        if all(math.isfinite(v) for v in vals):
            means.append(float(np.mean(vals)))
        else:
            dropped += 1
    if not means:
        return {"low": float("nan"), "high": float("nan"), "samples": 0, "dropped": dropped}
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(lo), "high": float(hi), "samples": len(means), "dropped": dropped}
