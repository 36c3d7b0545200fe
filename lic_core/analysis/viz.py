"""Figures and tables in one house style (matplotlib Agg + seaborn ``paper`` context).

Every plotting function takes plain data (lists, dicts, DataFrames, CompressAI JSON files or dicts,
training JSONL records with keys ``step, loss, D, bpp, R_z, R_s1, R_s2, R_s3, psnr`` and, for the
task-weighted modes, ``z_<task>`` (softmax weights) and ``a_<task>`` (gradient coefficients), e.g.
``z_D, z_R``; a ``run`` column (``workbook.history_frame``) draws one line per run) and returns a
``Figure``; :func:`save_figure` writes it as PDF + PNG at a paper size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import matplotlib.pyplot as plt  # noqa: E402  (headless: matplotlib falls back to Agg by itself)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lic_core.atomic import write_atomic, write_file  # noqa: E402
from lic_core.errors import LicError  # noqa: E402
from lic_core.analysis.tables import table_latex, table_markdown  # noqa: E402

# Widths of a two-column paper (IEEE / CVPR): one column 3.5 in, full page 7.16 in.
SIZES: dict[str, tuple[float, float]] = {
    "column": (3.5, 2.6),
    "column-tall": (3.5, 3.5),
    "page": (7.16, 2.8),
    "page-tall": (7.16, 4.8),
}
SCALES = ("z", "s1", "s2", "s3")
METRIC_LABELS = {"psnr-rgb": "PSNR (RGB) [dB]", "ms-ssim-rgb": "MS-SSIM (RGB)",
                 "ms-ssim-db": "MS-SSIM (RGB) [dB]", "bpp": "Bit-rate [bpp]"}
Source = Union[str, Path, Mapping[str, Any]]


def house_style() -> None:
    """Seaborn whitegrid + colorblind palette, paper font sizes, embedded TrueType fonts."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight",
                         "legend.frameon": False, "axes.titlesize": "medium",
                         "lines.markersize": 4, "lines.linewidth": 1.2})


def _figure(size: str | tuple[float, float] = "column", ncols: int = 1, **kw) -> tuple[Figure, Any]:
    house_style()
    kw.setdefault("layout", "constrained" if ncols > 1 else None)  # panels' labels never overlap
    fig, axes = plt.subplots(1, ncols, figsize=_size(size), squeeze=ncols == 1, **kw)
    return fig, axes if ncols == 1 else list(axes[0])


def _size(size: str | tuple[float, float]) -> tuple[float, float]:
    if isinstance(size, str):
        if size not in SIZES:
            raise LicError(f"unknown figure size {size!r}; choose from {', '.join(SIZES)} or (w, h)")
        return SIZES[size]
    return float(size[0]), float(size[1])


def save_figure(fig: Figure, name: str, folder: str | Path = "figures",
                size: str | tuple[float, float] | None = None,
                formats: Sequence[str] = ("pdf", "png"), dpi: int = 300) -> list[Path]:
    """Write ``folder/name.{pdf,png}`` (atomically: a killed job leaves the old file) and close
    ``fig``. ``size`` (a name of :data:`SIZES` or inches) resizes the figure first."""
    if not re.fullmatch(r"[\w.\-]+", name):
        raise LicError(f"figure name {name!r}: use letters, digits, '.', '-' and '_' only")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if size is not None:
        fig.set_size_inches(*_size(size))
    paths = [write_atomic(folder / f"{name}.{ext}", lambda f, e=ext: fig.savefig(f, format=e, dpi=dpi))
             for ext in formats]
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- data helpers
def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (one JSON object per line; blank lines skipped)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LicError(f"{path}:{i}: not a JSON record ({e})") from None
    return out


def _records(data: Iterable[Mapping] | pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(data, (str, Path)):
        data = read_jsonl(data)
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    if df.empty:
        raise LicError("no records to plot")
    return df


def _need(df: pd.DataFrame, keys: Iterable[str], what: str) -> None:
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise LicError(f"{what}: records lack {', '.join(missing)} (have {', '.join(map(str, df.columns))})")


def _prefixed(df: pd.DataFrame, prefix: str) -> list[str]:
    """Columns ``<prefix>_<task>`` in record order (``z_D, z_R`` or ``a_D, a_R_z, ...``)."""
    return [str(c) for c in df.columns if str(c).startswith(f"{prefix}_") and df[c].notna().any()]


def _runs(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per run of a multi-run table; one unlabeled run otherwise."""
    if "run" not in df.columns:
        return [("", df)]
    return [(str(k), g) for k, g in df.groupby("run", sort=False)]


# --------------------------------------------------------------------------- figures
CURVE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def data_note(name: str, images: int, crop: int = 0) -> str:
    """``Kodak, 2 images (center crops 128 px)``: the data behind a figure or a number."""
    return f"{name}, {images} image{'s' if images != 1 else ''}" + (f" (center crops {crop} px)" if crop else
                                                                    " (full size)")


def rd_curves(curves: Sequence[Source], anchors: Sequence[Source] = (), metric: str = "psnr-rgb",
              size: str | tuple[float, float] = "column", title: str | None = None, data: str = "",
              reference: str = "", zoom: bool = True, note: str = "") -> Figure:
    """Rate-distortion curves: ``curves`` solid, each its color and marker (every other one
    hollow), ``anchors`` dashed grey. ``data`` (:func:`data_note`) and ``reference`` (the BD-rate reference curve) are
    written under the title, ``note`` (what each curve is) under the axes. ``zoom``: when the
    anchors reach far beyond the curves, an inset shows the curves' own range."""
    from lic_core.analysis.bdrate import load_curve

    fig, ax = _figure(size, layout="constrained")
    grey = sns.color_palette("Greys", len(anchors) + 2)[2:]
    lines = [(load_curve(src, metric, min_points=1, monotonic=False), dict(
        linestyle="--", marker=".", color=color, linewidth=0.8)) for src, color in zip(anchors, grey)]
    palette = sns.color_palette("colorblind")
    mine = [load_curve(src, metric, min_points=1, monotonic=False) for src in curves]
    lines += [(c, dict(linestyle="-", marker=CURVE_MARKERS[i % len(CURVE_MARKERS)],
                       color=palette[i % len(palette)], markerfacecolor="none" if i % 2 else None))
              for i, c in enumerate(mine)]
    for c, style in lines:
        ax.plot(c.bpp, c.quality, label=c.name, **style)
    notes = [t for t in (data, f"BD reference: {reference}" if reference else "") if t]
    ax.set(xlabel=METRIC_LABELS["bpp"], ylabel=METRIC_LABELS[metric],
           title="\n".join([t for t in (title, "; ".join(notes)) if t]) or None)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    box = _bounds([c for c in mine])
    if zoom and anchors and box is not None and _far_beyond(ax, box):
        inset = ax.inset_axes([0.5, 0.06, 0.47, 0.45])
        for c, style in lines:
            inset.plot(c.bpp, c.quality, **style)
        inset.set(xlim=box[:2], ylim=box[2:])
        inset.tick_params(labelsize="xx-small")
        inset.set_title("zoom: the curves' range", fontsize="xx-small")
        ax.indicate_inset_zoom(inset, edgecolor="0.4")
    if note:
        fig.text(0.0, 0.0, note, fontsize="x-small", va="top", wrap=True)
    return fig


def _bounds(curves: Sequence[Any], pad: float = 0.12) -> tuple[float, float, float, float] | None:
    """(x0, x1, y0, y1) around the points of ``curves``, padded by ``pad`` of each span."""
    x = np.concatenate([np.asarray(c.bpp, float) for c in curves]) if curves else np.array([])
    y = np.concatenate([np.asarray(c.quality, float) for c in curves]) if curves else np.array([])
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x, y = x[ok], y[ok]
    dx, dy = max(np.ptp(x), 0.05 * abs(x.max()) or 0.01), max(np.ptp(y), 0.5)
    return x.min() - pad * dx, x.max() + pad * dx, y.min() - pad * dy, y.max() + pad * dy


def _far_beyond(ax: Any, box: tuple[float, float, float, float], share: float = 0.4) -> bool:
    """Whether the curves' box covers less than ``share`` of the axes' width or height."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    return (box[1] - box[0]) < share * (x1 - x0) or (box[3] - box[2]) < share * (y1 - y0)


def bd_bars(values: Mapping[str, float] | pd.Series | pd.DataFrame, column: str | None = None,
            size: str | tuple[float, float] = "column", xlabel: str = "BD-rate [%]", title: str = "") -> Figure:
    """Horizontal bars of BD-rate per curve (a ``bdrate.bd_table`` DataFrame, a Series or dict);
    ``title``: the reference curve and the data."""
    if isinstance(values, pd.DataFrame):
        column = column or next(c for c in values.columns if str(c).startswith("BD-rate"))
        values = values[column]
    s = pd.Series(values, dtype=float)
    fig, ax = _figure(size)
    ok = s.notna().to_numpy()  # an undefined value (NaN) gets a label, never a bar
    colors = [sns.color_palette("colorblind")[2 if v < 0 else 3] for v in s[ok]]
    y = np.arange(len(s))
    ax.barh(y[ok], s.to_numpy()[ok], color=colors)
    ax.set_yticks(y, list(map(str, s.index)))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    for i, v in enumerate(s):
        text, x = ("undefined", 0.0) if v != v else (f"{v:+.1f}", v)
        ax.annotate(text, (x, i), xytext=(3 if x >= 0 else -3, 0), textcoords="offset points",
                    ha="left" if x >= 0 else "right", va="center", fontsize="x-small")
    ax.margins(x=0.2)  # room for the value labels outside the bar tips
    ax.grid(axis="y", visible=False)
    ax.set(xlabel=xlabel)
    if title:
        ax.set_title(title, fontsize="small", wrap=True)
    return fig


def weight_trajectories(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                        size: str | tuple[float, float] = "page", title: str = "") -> Figure:
    """Balanced R-D task weights against step: ``z_i = softmax(w)_i`` (left) and the gradient
    coefficients ``a_i = z_i / (c D_i)`` that actually scale each task's gradient (right). They
    differ because the weighted loss is log-scaled (BALANCED.md, Solution 1 step 2)."""
    df = _records(records)
    _need(df, ["step"], "weight_trajectories")
    fig, axes = _figure(size, ncols=2)
    for ax, prefix, label in zip(axes, ("z", "a"), ("task weight $z_i$", "gradient coefficient $a_i$")):
        if not _prefixed(df, prefix):
            raise LicError(f"weight_trajectories: records have no {prefix}_<task> keys (z_D, z_R, ...)")
        for run, rows in _runs(df):
            for k in _prefixed(rows, prefix):
                task = k[len(prefix) + 1:]
                ax.plot(rows["step"], rows[k], label=f"{run} {task}".strip())
        ax.set(xlabel="step", ylabel=label)
    axes[1].legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="small")
    return fig


def compare_training(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                     keys: Sequence[str] = ("loss", "bpp", "psnr"), smooth: int = 5,
                     size: str | tuple[float, float] = "page", title: str = "") -> Figure:
    """One panel per key against step, one line per run (rolling mean over ``smooth`` records);
    ``title``: what was trained on what."""
    df = _records(records)
    _need(df, ["step", *keys], "compare_training")
    fig, axes = _figure(size, ncols=len(keys))
    axes = axes if len(keys) > 1 else [axes]
    for run, rows in _runs(df):
        for ax, k in zip(axes, keys):
            ax.plot(rows["step"], rows[k].rolling(smooth, min_periods=1).mean(), label=run or None)
    for ax, k in zip(axes, keys):
        ax.set(xlabel="step", ylabel=k)
    if "run" in df.columns:
        axes[-1].legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="small")
    return fig


def compare_scales(records: Iterable[Mapping] | pd.DataFrame | str | Path, smooth: int = 5,
                   size: str | tuple[float, float] = "page") -> Figure:
    """Per-scale rates (``R_z``, ``R_s1``, ``R_s2``, ``R_s3``, bpp) against step, one panel per
    scale and one line per run."""
    keys = [f"R_{s}" for s in SCALES]
    df = _records(records)
    _need(df, ["step", *keys], "compare_scales")
    fig, axes = _figure(size, ncols=len(keys), sharex=True)
    for run, rows in _runs(df):
        for ax, k in zip(axes, keys):
            ax.plot(rows["step"], rows[k].rolling(smooth, min_periods=1).mean(), label=run or None)
    for ax, s in zip(axes, SCALES):
        ax.set(xlabel="step", title=s)
    axes[0].set_ylabel("rate [bpp]")
    if "run" in df.columns:
        axes[-1].legend(fontsize="x-small")
    return fig


def heatmap(grid: pd.DataFrame, label: str = "", fmt: str = ".4g",
            size: str | tuple[float, float] = "column-tall") -> Figure:
    """A (rows x columns) table of one metric, annotated, lowest value outlined."""
    if grid.empty:
        raise LicError("heatmap: the grid is empty")
    fig, ax = _figure(size)
    sns.heatmap(grid, annot=True, fmt=fmt, cmap="viridis_r", ax=ax, cbar_kws={"label": label})
    r, c = np.unravel_index(np.nanargmin(grid.to_numpy(float)), grid.shape)
    ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return fig


def scale_bpp_training(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                       size: str | tuple[float, float] = "column") -> Figure:
    """Stacked per-scale rates ``R_z, R_s1, R_s2, R_s3`` (bpp) over training steps."""
    df = _records(records)
    keys = [f"R_{s}" for s in SCALES]
    _need(df, ["step", *keys], "scale_bpp_training")
    fig, ax = _figure(size)
    ax.stackplot(df["step"], *[df[k] for k in keys], labels=list(SCALES), alpha=0.85)
    ax.set(xlabel="step", ylabel="rate [bpp]")
    ax.legend(fontsize="small", loc="upper right")
    return fig


def scale_bpp_images(per_image: Iterable[Mapping] | pd.DataFrame | str | Path,
                     prefix: str = "bpp_", size: str | tuple[float, float] = "page", title: str = "") -> Figure:
    """Stacked bars of per-scale bpp (``bpp_z, bpp_s1, bpp_s2, bpp_s3``) for every image; ``title``
    names the model, its λ and the data (the per-image file of :mod:`lic_core.analysis.evaluation`
    names the model when none is given)."""
    if isinstance(per_image, (str, Path)) and not title:
        meta = json.loads(Path(per_image).read_text())
        title = f"model {meta.get('model', Path(per_image).stem)}" if isinstance(meta, dict) else ""
    if isinstance(per_image, (str, Path)):
        per_image = json.loads(Path(per_image).read_text())
        per_image = per_image.get("images", per_image) if isinstance(per_image, dict) else per_image
    df = _records(per_image)
    keys = [f"{prefix}{s}" for s in SCALES]
    _need(df, ["image", *keys], "scale_bpp_images")
    fig, ax = _figure(size, layout="constrained")
    bottom = np.zeros(len(df))
    for s, k in zip(SCALES, keys):
        ax.bar([Path(str(i)).stem for i in df["image"]], df[k], bottom=bottom, label=s)
        bottom += df[k].to_numpy(float)
    ax.set(ylabel="rate [bpp]", title=title or None)
    few = len(df) <= 8
    ax.tick_params(axis="x", rotation=0 if few else 45, labelsize="small" if few else "x-small")
    if not few:
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.legend(fontsize="small", title="scale", title_fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    return fig


def training_curves(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                    keys: Sequence[str] = ("loss", "bpp", "psnr"),
                    size: str | tuple[float, float] = "page") -> Figure:
    """One panel per key (``loss``, ``bpp``, ``psnr``, ``D`` ...) against step; absent keys error."""
    df = _records(records)
    _need(df, ["step", *keys], "training_curves")
    fig, axes = _figure(size, ncols=len(keys))
    for ax, k in zip(axes if len(keys) > 1 else [axes], keys):
        ax.plot(df["step"], df[k])
        ax.set(xlabel="step", ylabel=k)
    return fig


# --------------------------------------------------------------------------- tables
def save_table(df: pd.DataFrame, name: str, folder: str | Path = "figures", digits: int = 2,
               caption: str | None = None) -> list[Path]:
    """Write ``folder/name.tex`` (booktabs) and ``folder/name.md`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {".tex": table_latex(df, digits, caption, f"tab:{name}"), ".md": table_markdown(df, digits)}
    return [write_file(folder / f"{name}{ext}", text) for ext, text in out.items()]


def bd_bars_ci(summary: pd.DataFrame, method: str = "pchip", xlabel: str = "BD-rate [%]",
               band: tuple[float, float] | None = None, band_label: str = "") -> Figure:
    """Mean BD-rate per comparison with its confidence interval as error bars and each replicate
    as a dot; ``summary`` has columns test, anchor, method, mean, low, high and ``seed <k>`` per
    replicate. ``band`` shades a range (e.g. an expected gain) labelled ``band_label``."""
    rows = summary[summary["method"] == method]
    rows = rows[rows["mean"].notna()].reset_index(drop=True)  # an undefined value gets no bar
    if rows.empty:
        raise LicError(f"bd_bars_ci: no defined BD-rate for method {method!r}")
    house_style()
    fig, ax = plt.subplots(figsize=SIZES["column"])
    y = np.arange(len(rows))
    err = np.array([rows["mean"] - rows["low"], rows["high"] - rows["mean"]])
    ax.barh(y, rows["mean"], xerr=np.nan_to_num(err), capsize=3, color="C0", alpha=0.7)
    for i, r in rows.iterrows():
        vals = [r[c] for c in rows.columns if str(c).startswith("seed ")]
        ax.plot(vals, [i] * len(vals), "k.", markersize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    if band is not None:
        ax.axvspan(*band, color="C2", alpha=0.12, label=band_label or None)
        if band_label:
            ax.legend(fontsize="x-small", loc="best")
    ax.set_yticks(y, [f"{t} vs {a}" for t, a in zip(rows["test"], rows["anchor"])])
    ax.invert_yaxis()
    ax.set(xlabel=f"{xlabel} ({method})")
    return fig


# --------------------------------------------------------------------------- reconstructions
Panel = tuple[str, np.ndarray, float, float]  # (label, decoded (H, W, 3) uint8, bpp, PSNR dB)


def detail_box(rgb: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, side) of the ``size``-pixel square of ``rgb`` with the most detail (largest
    summed gradient magnitude), where coding artefacts show first; the whole image if smaller."""
    h, w = rgb.shape[:2]
    side = int(min(size, h, w))
    gray = rgb.astype(np.float64).mean(-1)
    grad = np.zeros_like(gray)
    grad[:, 1:] += np.abs(np.diff(gray, axis=1))
    grad[1:, :] += np.abs(np.diff(gray, axis=0))
    integral = np.pad(grad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
            + integral[:-side, :-side])
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def panel_label(label: str, bpp: float, psnr: float) -> str:
    """``label`` over ``0.213 bpp / 27.31 dB``: how compression papers label a decoded image."""
    return f"{label}\n{bpp:.3f} bpp / {psnr:.2f} dB"


def reconstructions(original: np.ndarray, decoded: Sequence[Panel], title: str = "",
                    zoom: int = 0, panel_in: float = 1.45) -> Figure:
    """The original then each decoded image (top row, the zoomed square outlined) and the same
    square of each, enlarged (bottom row); every decoded panel labelled with its bpp and PSNR.
    ``zoom``: side of the square in pixels (default: a quarter of the shorter side, at least 32)."""
    if not decoded:
        raise LicError("reconstructions: no decoded images to show")
    for label, rgb, _, _ in decoded:
        if rgb.shape != original.shape:
            raise LicError(f"reconstructions: {label} is {rgb.shape}, the original {original.shape}")
    h, w = original.shape[:2]
    top, left, side = detail_box(original, zoom or max(32, min(h, w) // 4))
    n = len(decoded) + 1
    house_style()
    fig, axes = plt.subplots(2, n, figsize=(panel_in * n, panel_in * (h / w + 1) + 0.9),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [h / w, 1]})
    panels = [("original", original, float("nan"), float("nan")), *decoded]
    for col, (label, rgb, bpp, psnr) in enumerate(panels):
        full, crop = axes[0][col], axes[1][col]
        full.imshow(rgb, interpolation="lanczos")
        full.add_patch(plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="red",
                                     linewidth=0.8))
        crop.imshow(rgb[top:top + side, left:left + side], interpolation="nearest")
        name = label if col == 0 else panel_label(label, bpp, psnr)
        full.set_title(name if col else f"{name}\n24 bpp (raw)", fontsize="x-small")
        for ax in (full, crop):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    axes[1][0].set_ylabel(f"zoom {side}x{side} px", fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="small")
    return fig


def estimates_ci(rows: Sequence[Mapping[str, Any]], xlabel: str = "BD-rate [%]", unit: str = "trunk",
                 band: tuple[float, float] | None = None, band_label: str = "") -> Figure:
    """Per row (one comparison): each unit's value as a dot labelled with its name, the mean over
    the units as a diamond with its 95 % t-interval (thick line) and, where given, a second
    interval (thin line below it, e.g. a bootstrap's). A row is a mapping with ``label``, ``values``
    (unit name -> value), ``mean``, ``low``, ``high`` and optionally ``boot_low``, ``boot_high``;
    ``band`` shades a range (e.g. an expected gain) labelled ``band_label``."""
    rows = [r for r in rows if np.isfinite(r["mean"])]
    if not rows:
        raise LicError("estimates_ci: no row with a defined mean")
    house_style()
    fig, ax = plt.subplots(figsize=(SIZES["column"][0], 1.5 + 0.7 * len(rows)))
    seen: set[str] = set()

    def once(label: str) -> str | None:
        if label in seen:
            return None
        seen.add(label)
        return label

    for i, r in enumerate(rows):
        if np.isfinite(r["low"]) and np.isfinite(r["high"]):
            ax.plot([r["low"], r["high"]], [i, i], color="C0", linewidth=3, solid_capstyle="butt",
                    label=once("mean, 95 % t-interval"))
        lo, hi = r.get("boot_low", np.nan), r.get("boot_high", np.nan)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [i + 0.2, i + 0.2], color="C1", linewidth=1.2, label=once("bootstrap 95 %"))
        ax.plot([r["mean"]], [i], "D", color="C0", markersize=5, markeredgecolor="black")
        vals = sorted(((v, str(k)) for k, v in r["values"].items() if np.isfinite(v)))
        for j, (v, name) in enumerate(vals):
            ax.plot([v], [i - 0.25], "k.", markersize=5, label=once(f"per {unit}"))
            ax.annotate(name, (v, i - 0.25), textcoords="offset points", xytext=(0, 4 if j % 2 else -8),
                        ha="center", fontsize=5)
    ax.axvline(0, color="black", linewidth=0.8)
    if band is not None:
        ax.axvspan(*band, color="C2", alpha=0.12, label=band_label or None)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_ylim(len(rows) - 0.55, -0.6)
    ax.set(xlabel=xlabel)
    ax.legend(fontsize="xx-small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return fig
