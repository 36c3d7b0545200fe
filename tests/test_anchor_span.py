"""Live JPEG / WebP at qualities chosen to span a test curve's PSNR range (BD-rate defined)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import skip_or_fail

from lic_core.analysis import anchors


@pytest.fixture(scope="module")
def rgbs(kodak_dir):
    from lic_core.datasets import resolve
    from lic_core.imageio import read_rgb

    return [anchors.center_crop(read_rgb(p)[0], 96) for p in resolve(kodak_dir, 2)[1]]


@pytest.mark.parametrize("key", ["jpeg", "webp"])
def test_span_matches_the_range(rgbs, key):
    """BD's overlap is intersection over union: the anchor's PSNR range must match the curve's."""
    if anchors.unsupported(key):
        skip_or_fail(f"this Pillow lacks {key} ({anchors.unsupported(key)})")
    qualities = anchors.span_qualities(key, rgbs, (28.0, 34.0), points=5)
    psnr = [anchors.mean_psnr(key, rgbs, q) for q in qualities]
    assert qualities == sorted(qualities) and 2 <= len(qualities) <= 5
    overlap = (min(psnr[-1], 34.0) - max(psnr[0], 28.0)) / (max(psnr[-1], 34.0) - min(psnr[0], 28.0))
    assert overlap > 0.75, (qualities, psnr)


def test_span_stops_at_the_codec_range(rgbs):
    qualities = anchors.span_qualities("jpeg", rgbs, (3.0, 80.0), points=4)
    assert qualities[0] == anchors.CODECS["jpeg"].bounds[0] and qualities[-1] == anchors.CODECS["jpeg"].bounds[1]


def test_psnr_span_of_curves():
    curves = [{"results": {"psnr-rgb": [27.0, 30.5]}}, {"results": {"psnr-rgb": [29.0, float("nan"), 36.1]}}]
    assert anchors.psnr_span(curves) == (27.0, 36.1)


def test_sweep_with_span_makes_bd_defined(kodak_dir):
    from lic_core.analysis.bdrate import bd_delta
    from lic_core.datasets import resolve

    images = resolve(kodak_dir, 1)[1]
    test = {"name": "test", "results": {"bpp": [0.3, 0.6, 1.0, 1.6], "psnr-rgb": [27.0, 29.5, 32.0, 34.5]}}
    ladder = anchors.sweep("jpeg", images, qualities=[90, 95], crop=96, progress=False)
    spanned = anchors.sweep("jpeg", images, crop=96, progress=False, span=anchors.psnr_span([test]), points=5)
    assert "qualities chosen to span PSNR 27.00..34.50 dB" in spanned["description"]
    p = spanned["results"]["psnr-rgb"]
    assert (min(max(p), 34.5) - max(min(p), 27.0)) / (max(max(p), 34.5) - min(min(p), 27.0)) > 0.75
    assert np.isnan(bd_delta(ladder, test).bd_rate)  # the fixed ladder misses the range
    assert np.isfinite(bd_delta(spanned, test, method="pchip").bd_rate)
