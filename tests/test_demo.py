"""The demo's summary: where its numbers come from, the caveat beside the BD table, and undefined
BD values explained whole, in one plain sentence."""
from __future__ import annotations

import json
from pathlib import Path

from lic_core.paths import REPO
from lic_core.workbench import demo

OVERLAP = ("BD-rate (psnr-rgb axis): Insufficient curve overlap: '6.25'. Minimum overlap: '75.00'. You can "
           "silence this warning by setting `min_overlap=0`; BD-psnr-rgb (rate axis): Curves do not overlap. "
           "BD cannot be calculated.")


def test_plain_reason_is_one_whole_sentence():
    text = demo.plain_reason("JPEG", OVERLAP)
    assert text == ("JPEG: BD-rate is undefined because the curves share only 6 % of their PSNR range "
                    "(75 % needed); BD-PSNR is undefined because the curves share no part of their "
                    "bit-rate range.")
    long = "curve 'x': " + "needs at least 2 points, has 1 " * 10
    assert demo.plain_reason("x", long).endswith("has 1.") and "\n" not in demo.plain_reason("x", long)


def _evaluation(out: Path) -> None:
    ckpts = [str(REPO / "checkpoints" / "tiny" / f"base-l{k}-s0.pt") for k in ("0.0035", "0.025")]
    (out / "evaluation").mkdir(parents=True)
    for curve in demo.CURVES:
        res = {"checkpoint": ckpts, "bpp": [0.2, 0.5], "psnr-rgb": [27.0, 29.0], "ms-ssim-rgb": [0.9, 0.95],
               "encoding_time": [0.1, 0.1], "decoding_time": [0.1, 0.1]}
        (out / "evaluation" / f"{curve}.json").write_text(json.dumps({"name": curve, "results": res}))
    bd = {"BD-rate cubic (%)": {"balanced": -1.0, "JPEG": float("nan"), "VTM": float("nan")}}
    (out / "evaluation" / "metrics.json").write_text(json.dumps({
        "anchor": "standard", "data": "kodak, 2 images (full size)", "bd": bd,
        "bd_warnings": {"balanced": "", "JPEG": OVERLAP, "VTM": OVERLAP}}))
    (out / "figures").mkdir()
    (out / "figures" / "reconstructions_kodim01.png").write_bytes(b"")


def test_summary_says_where_numbers_come_from(tmp_path):
    _evaluation(tmp_path)
    text = demo.summary(tmp_path, 60.0)
    assert "real bitstreams on kodak, 2 images (full size)" in text
    lines = text.splitlines()
    table = next(i for i, ln in enumerate(lines) if ln.startswith("BD vs standard"))
    assert "a demonstration, not a result" in lines[table + 5]  # right under the BD table (header + 3 rows)
    assert "VTM: published R-D points" in text
    assert "JPEG: BD-rate is undefined because" in text and "reconstructions_kodim01.png" in text


def test_bundled_photos_are_named_what_they_are(tmp_path):
    """Without ../shared the demo reads scikit-image's photos: figures and summaries name them so."""
    from lic_core.workbench import workbook

    train, test = workbook.bundled_photos(tmp_path)
    assert (train.name, test.name) == ("scikit-image-train", "scikit-image-test")
    assert len(list(train.iterdir())) == len(workbook.BUNDLED_TRAIN)
    assert workbook.data_note(test, limit=1) == "scikit-image-test, 1 image (full size)"
