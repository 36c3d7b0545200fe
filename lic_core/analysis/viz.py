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
def rd_curves(curves: Sequence[Source], anchors: Sequence[Source] = (), metric: str = "psnr-rgb",
              size: str | tuple[float, float] = "column", title: str | None = None) -> Figure:
    """Rate-distortion curves: ``curves`` solid with markers, ``anchors`` dashed, grey shades."""
    from lic_core.analysis.bdrate import load_curve

    fig, ax = _figure(size)
    grey = sns.color_palette("Greys", len(anchors) + 2)[2:]
    for src, color in zip(anchors, grey):
        c = load_curve(src, metric, min_points=1, monotonic=False)
        ax.plot(c.bpp, c.quality, "--", marker=".", color=color, label=c.name)
    for src in curves:
        c = load_curve(src, metric, min_points=1, monotonic=False)
        ax.plot(c.bpp, c.quality, "-o", label=c.name)
    ax.set(xlabel=METRIC_LABELS["bpp"], ylabel=METRIC_LABELS[metric], title=title)
    ax.legend(fontsize="small")
    return fig


def bd_bars(values: Mapping[str, float] | pd.Series | pd.DataFrame, column: str | None = None,
            size: str | tuple[float, float] = "column", xlabel: str = "BD-rate [%]") -> Figure:
    """Horizontal bars of BD-rate per curve (a ``bdrate.bd_table`` DataFrame, a Series or dict)."""
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
    return fig


def weight_trajectories(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                        size: str | tuple[float, float] = "page") -> Figure:
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
    return fig


def compare_training(records: Iterable[Mapping] | pd.DataFrame | str | Path,
                     keys: Sequence[str] = ("loss", "bpp", "psnr"), smooth: int = 5,
                     size: str | tuple[float, float] = "page") -> Figure:
    """One panel per key against step, one line per run (rolling mean over ``smooth`` records)."""
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
                     prefix: str = "bpp_", size: str | tuple[float, float] = "page") -> Figure:
    """Stacked bars of per-scale bpp (``bpp_z, bpp_s1, bpp_s2, bpp_s3``) for every image."""
    if isinstance(per_image, (str, Path)):
        per_image = json.loads(Path(per_image).read_text())
        per_image = per_image.get("images", per_image) if isinstance(per_image, dict) else per_image
    df = _records(per_image)
    keys = [f"{prefix}{s}" for s in SCALES]
    _need(df, ["image", *keys], "scale_bpp_images")
    fig, ax = _figure(size)
    bottom = np.zeros(len(df))
    for s, k in zip(SCALES, keys):
        ax.bar([Path(str(i)).stem for i in df["image"]], df[k], bottom=bottom, label=s)
        bottom += df[k].to_numpy(float)
    ax.set(ylabel="rate [bpp]")
    ax.tick_params(axis="x", rotation=90, labelsize="x-small")
    ax.legend(fontsize="small", ncols=4)
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
