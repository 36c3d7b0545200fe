"""House-style figures and tables: files are valid PDF/PNG and figures hold the expected artists."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lic_core.analysis import bdrate, tables, viz
from lic_core.errors import LicError


def _records(n=5, k=3):
    out = []
    for s in range(n):
        z = [0.1 * s * (i + 1) for i in range(k)]
        e = [math.exp(v) for v in z]
        rec = {"step": 10 * s, "loss": 2.0 - 0.1 * s, "D": 1.0 - 0.05 * s, "bpp": 0.5 + 0.01 * s,
               "psnr": 25 + s, "R_z": 0.02, "R_s1": 0.1, "R_s2": 0.15, "R_s3": 0.23 + 0.01 * s}
        names = ["D", "R_z", "R_s1"][:k]
        rec |= {f"z_{n}": v / sum(e) for n, v in zip(names, e)} | {f"a_{n}": v for n, v in zip(names, z)}
        out.append(rec)
    return out


def _valid(paths, tmp_path, name):
    assert [p.name for p in paths] == [f"{name}.pdf", f"{name}.png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-" and paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]  # no temp files left


def test_rd_curves_with_anchors(reference_dir, tmp_path):
    kodak = reference_dir / "kodak"
    mine = {"name": "mine", "results": {"bpp": [0.2, 0.4, 0.8], "psnr-rgb": [30.0, 33.0, 36.0]}}
    one = {"name": "one", "results": {"bpp": [0.3], "psnr-rgb": [31.0]}}  # a single checkpoint
    fig = viz.rd_curves([kodak / "hpcm-base-mse-published.json", mine, one],
                        anchors=[kodak / "vtm.json", kodak / "jpeg.json"])
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["VTM", "JPEG", "HPCM-Base", "mine", "one"]
    assert [len(ln.get_xdata()) for ln in lines] == [8, 19, 6, 3, 1]
    assert [ln.get_linestyle() for ln in lines] == ["--", "--", "-", "-", "-"]
    assert fig.axes[0].get_ylabel() == viz.METRIC_LABELS["psnr-rgb"]
    _valid(viz.save_figure(fig, "rd", tmp_path, size="column"), tmp_path, "rd")


def test_save_figure_sizes(tmp_path):
    fig = viz.training_curves(_records())
    viz.save_figure(fig, "t", tmp_path, size="page", formats=("pdf",))
    assert tuple(fig.get_size_inches()) == pytest.approx(viz.SIZES["page"])
    with pytest.raises(LicError, match="unknown figure size 'poster'"):
        viz.save_figure(viz.training_curves(_records()), "t", tmp_path, size="poster")
    with pytest.raises(LicError, match="figure name"):
        viz.save_figure(viz.training_curves(_records()), "../escape", tmp_path)


def test_bd_bars(reference_dir, tmp_path):
    kodak = reference_dir / "kodak"
    curves = [kodak / "hpcm-base-mse-published.json", kodak / "jpeg.json"]
    df = bdrate.bd_table(kodak / "vtm.json", curves, strict=False)  # extrapolated over < 75 % overlap
    fig = viz.bd_bars(df)
    bars = fig.axes[0].patches
    assert len(bars) == 2 and bars[0].get_width() == pytest.approx(df.iloc[0, 0])
    assert [t.get_text() for t in fig.axes[0].texts] == ["-16.1", "+210.2"]
    _valid(viz.save_figure(fig, "bd", tmp_path), tmp_path, "bd")
    strict = viz.bd_bars(bdrate.bd_table(kodak / "vtm.json", curves))  # both undefined: no bar
    assert len(strict.axes[0].patches) == 0
    assert [t.get_text() for t in strict.axes[0].texts] == ["undefined", "undefined"]


def test_weight_trajectories(tmp_path):
    fig = viz.weight_trajectories(_records(k=3))
    z_ax, a_ax = fig.axes
    assert len(z_ax.get_lines()) == 3 and len(a_ax.get_lines()) == 3
    assert [ln.get_label() for ln in a_ax.get_lines()] == ["D", "R_z", "R_s1"]
    assert list(a_ax.get_lines()[0].get_xdata()) == [0, 10, 20, 30, 40]
    two = pd.DataFrame(_records(k=2)).assign(run="balanced")
    two = pd.concat([two, pd.DataFrame(_records(k=3)).assign(run="hierarchical")], ignore_index=True)
    fig2 = viz.weight_trajectories(two)
    assert [ln.get_label() for ln in fig2.axes[0].get_lines()] == [
        "balanced D", "balanced R_z", "hierarchical D", "hierarchical R_z", "hierarchical R_s1"]
    with pytest.raises(LicError, match="no z_<task>"):
        viz.weight_trajectories([{"step": 0, "loss": 1.0}])
    _valid(viz.save_figure(fig, "w", tmp_path, size="page"), tmp_path, "w")


def test_scale_bpp_training_and_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()) + "\n")
    fig = viz.scale_bpp_training(path)
    ax = fig.axes[0]
    assert len(ax.collections) == 4 and [t.get_text() for t in ax.get_legend().get_texts()] == list(viz.SCALES)
    with pytest.raises(LicError, match="records lack R_s1"):
        viz.scale_bpp_training([{"step": 0, "R_z": 0.1}])
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(LicError, match="bad.jsonl:2"):
        viz.read_jsonl(tmp_path / "bad.jsonl")


def test_scale_bpp_images():
    rows = [{"image": f"kodim0{i}", "bpp_z": 0.01, "bpp_s1": 0.1, "bpp_s2": 0.2, "bpp_s3": 0.3 * i}
            for i in range(1, 4)]
    ax = viz.scale_bpp_images(rows).axes[0]
    assert len(ax.patches) == 12  # 3 images x 4 scales, stacked
    top = max(p.get_y() + p.get_height() for p in ax.patches)
    assert top == pytest.approx(0.31 + 0.9)


def test_training_curves():
    fig = viz.training_curves(_records(), keys=("loss", "psnr", "D"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "psnr", "D"]
    assert all(len(ax.get_lines()) == 1 for ax in fig.axes)
    with pytest.raises(LicError, match="records lack nope"):
        viz.training_curves(_records(), keys=("nope",))


def test_tables(tmp_path):
    df = pd.DataFrame({"BD-rate (%)": [-16.137, 3.5], "note": ["a_b", "x|y"]},
                      index=pd.Index(["HPCM_Base", "JPEG"], name="curve"))
    md = tables.table_markdown(df)
    assert md.splitlines() == ["| curve | BD-rate (%) | note |", "|:---|---:|:---|",
                               "| HPCM_Base | -16.14 | a_b |", "| JPEG | 3.50 | x\\|y |"]
    tex = tables.table_latex(df, caption="c")
    assert all(s in tex for s in ("\\toprule", "\\midrule", "\\bottomrule", "HPCM\\_Base", "(\\%)", "-16.14"))
    paths = viz.save_table(df, "bd", tmp_path)
    assert [p.name for p in paths] == ["bd.tex", "bd.md"] and paths[1].read_text() == md


def test_compare_training_and_scales(tmp_path):
    df = pd.concat([pd.DataFrame(_records()).assign(run=m) for m in ("standard", "balanced")], ignore_index=True)
    fig = viz.compare_training(df, keys=("loss", "psnr"))
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert [ln.get_label() for ln in fig.axes[1].get_lines()] == ["standard", "balanced"]
    fig2 = viz.compare_scales(df)
    assert [ax.get_title() for ax in fig2.axes] == ["z", "s1", "s2", "s3"]
    assert all(len(ax.get_lines()) == 2 for ax in fig2.axes)
    _valid(viz.save_figure(fig2, "scales", tmp_path), tmp_path, "scales")


def test_heatmap_marks_minimum(tmp_path):
    grid = pd.DataFrame([[3.0, 2.0], [1.5, 4.0]], index=[0.001, 0.003], columns=[0.01, 0.025])
    fig = viz.heatmap(grid, label="loss")
    rect = [p for p in fig.axes[0].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(rect) == 1 and rect[0].get_xy() == (0, 1)  # row 0.003, column 0.01
    with pytest.raises(LicError, match="empty"):
        viz.heatmap(pd.DataFrame())


def test_rd_curves_say_what_they_show(reference_dir):
    kodak = reference_dir / "kodak"
    tiny = [{"name": m, "results": {"bpp": [0.2, 0.3, 0.45], "psnr-rgb": [27.0 + d, 28.0 + d, 29.0 + d]}}
            for m, d in (("standard", 0.0), ("balanced", 0.1))]
    data = viz.data_note("Kodak", 2, 128)
    fig = viz.rd_curves(tiny, anchors=[kodak / "vtm.json", kodak / "jpeg.json"], data=data,
                        reference="standard")
    ax = fig.axes[0]
    assert data == "Kodak, 2 images (center crops 128 px)"
    assert "Kodak, 2 images" in ax.get_title() and "BD reference: standard" in ax.get_title()
    mine = [ln for ln in ax.get_lines() if ln.get_label() in ("standard", "balanced")]
    assert mine[0].get_marker() != mine[1].get_marker() and mine[0].get_color() != mine[1].get_color()
    assert len(ax.child_axes) == 1, "the tiny curves get a zoomed inset"
    x0, x1 = ax.child_axes[0].get_xlim()
    assert x0 < 0.2 and 0.45 < x1 < 1.0


def test_scale_bpp_images_title_and_labels():
    recs = [{"image": f"kodim0{i}.png", **{f"bpp_{s}": 0.1 for s in viz.SCALES}} for i in (1, 2)]
    fig = viz.scale_bpp_images(recs, title="shipped λ=0.025; Kodak, 2 images")
    ax = fig.axes[0]
    assert ax.get_title() == "shipped λ=0.025; Kodak, 2 images"
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())


def test_reconstructions_panels():
    rng = np.random.default_rng(0)
    original = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    original[:, :48] = 128  # flat left half: the detail box lies in the right half
    top, left, side = viz.detail_box(original, 16)
    assert side == 16 and left >= 46
    fig = viz.reconstructions(original, [("shipped λ=0.0035", original, 0.213, 27.314),
                                         ("Balanced λ=0.013", original, 0.5, 30.0)], title="kodim01", zoom=16)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[1] == "shipped λ=0.0035\n0.213 bpp / 27.31 dB"
    assert len(fig.axes) == 6 and fig.axes[3].get_images()[0].get_array().shape[:2] == (16, 16)
    with pytest.raises(LicError, match="reconstructions"):
        viz.reconstructions(original, [("x", original[:32], 0.1, 20.0)])
