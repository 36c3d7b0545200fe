"""Real-bitstream evaluation: the tiny model on three Kodak crops (CI), CompressAI JSON, per-image
records from actual bytes, resuming, and checkpoints as R-D points."""
from __future__ import annotations

import json

import pytest

from lic_core.analysis import evaluation
from lic_core.errors import LicError

CROP = 64  # tiny pads to 128: the codec's padding path is exercised too


@pytest.fixture(scope="module")
def tiny_run(kodak_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    data = evaluation.evaluate(["tiny"], kodak_dir, out, limit=3, crop=CROP, progress=False)
    return out, data


def test_tiny_on_three_kodak_crops(tiny_run):
    out, data = tiny_run
    assert json.loads((out / "tiny.json").read_text()) == data
    assert data["name"] == "tiny" and "3 images, center crops 64px" in data["description"]
    r = data["results"]
    for k in ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time", "bpp_est",
              "bpp_z", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_est_z", "bpp_est_s3"):
        assert len(r[k]) == 1, k
    assert r["checkpoint"] == ["tiny"] and r["num_images"] == [3]
    assert "3px window" in data["description"]  # MS-SSIM small-image fallback is reported


def test_per_image_records_are_real_bytes(tiny_run):
    out, data = tiny_run
    per = json.loads((out / "tiny.images.json").read_text())
    assert per["crop"] == CROP and per["fingerprint"] == "default-init:tiny"
    imgs = per["images"]
    assert [r["image"] for r in imgs] == ["kodim01.png", "kodim02.png", "kodim03.png"]
    for rec in imgs:
        px = rec["height"] * rec["width"]
        assert (rec["height"], rec["width"]) == (CROP, CROP)
        assert rec["bpp"] == rec["bytes"] * 8 / px
        streams = sum(rec[f"bpp_{s}"] for s in evaluation.SCALES)
        assert 0 < streams and streams + rec["bpp_header"] <= rec["bpp"] + 1e-12
        est = sum(rec[f"bpp_est_{s}"] for s in evaluation.SCALES)
        assert est == pytest.approx(rec["bpp_est"], rel=1e-5)
        # The decoder reruns the forward's progressive loop: same reconstruction up to 8-bit rounding.
        assert rec["psnr-rgb"] == pytest.approx(rec["psnr_forward"], abs=0.05)
        assert 0 < rec["ms-ssim-rgb"] <= 1
    mean_bpp = sum(r["bpp"] for r in imgs) / 3
    assert data["results"]["bpp"][0] == pytest.approx(mean_bpp)


def test_resume_codes_only_missing_images(kodak_dir, tmp_path, monkeypatch):
    calls = []
    real = evaluation.code_image

    def counting(model, x):
        calls.append(tuple(x.shape))
        if len(calls) == 2 and fail["on"]:
            raise KeyboardInterrupt  # the job dies while coding the second image
        return real(model, x)

    fail = {"on": True}
    monkeypatch.setattr(evaluation, "code_image", counting)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(["tiny"], kodak_dir, tmp_path, limit=2, crop=CROP, progress=False)
    saved = json.loads((tmp_path / "tiny.images.json").read_text())
    assert [r["image"] for r in saved["images"]] == ["kodim01.png"]
    fail["on"] = False
    data = evaluation.evaluate(["tiny"], kodak_dir, tmp_path, limit=2, crop=CROP, progress=False)
    assert len(calls) == 3 and data["results"]["num_images"] == [2]  # kodim01 not redone
    first = json.loads((tmp_path / "tiny.images.json").read_text())["images"][0]
    assert first == saved["images"][0]
    evaluation.evaluate(["tiny"], kodak_dir, tmp_path, limit=2, crop=CROP, progress=False)
    assert len(calls) == 3  # everything done: nothing coded
    with pytest.raises(LicError, match=r"was made with crop=64 \(now 32\)"):
        evaluation.evaluate(["tiny"], kodak_dir, tmp_path, limit=2, crop=32, progress=False)


def _sharpened(gain: float):
    """The seeded tiny model with g_a's last layer scaled by ``gain``: y then spans several
    quantization bins, so the s1..s3 streams carry real content (an untrained y is ~0)."""
    import torch

    from lic_core.models.hpcm import hpcm

    model = hpcm("tiny")
    last = [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(gain)
        last.bias.mul_(gain)
    return model


def test_checkpoints_are_points_and_cli(kodak_dir, tmp_path, capsys):
    from lic_core.models.hpcm import save_checkpoint

    a = save_checkpoint(_sharpened(2.0), tmp_path / "ck" / "lam1.pt")
    b = save_checkpoint(_sharpened(4.0), tmp_path / "ck" / "lam2.pt")
    out = tmp_path / "out"
    rc = evaluation.main(["--checkpoint", str(a), str(b), "--dataset", str(kodak_dir), "--limit", "2",
                        "--crop", "128", "--out", str(out), "--name", "curve"])
    assert rc == 0 and "bpp" in capsys.readouterr().out
    r = json.loads((out / "curve.json").read_text())["results"]
    assert r["checkpoint"] == [str(a), str(b)] and len(r["bpp"]) == 2
    assert r["bpp"][0] < r["bpp"][1]  # a wider y costs more bits
    for i in range(2):  # actual rANS bytes track the forward's estimate: the codec's bound (test_codec)
        for s in ("s2", "s3"):  # of 1.5 % plus 12 bytes of stream state per image, averaged over 2 images
            got, est = r[f"bpp_{s}"][i], r[f"bpp_est_{s}"][i]
            assert 0.9 * est <= got <= 1.015 * est + 12 * 8 / 128**2, (s, got, est)
    assert {p.name for p in out.iterdir()} == {"curve.json", "lam1.images.json", "lam2.images.json"}
    assert json.loads((out / "lam1.images.json").read_text())["fingerprint"].startswith("sha256:")


def test_bad_inputs(kodak_dir, tmp_path, capsys):
    assert evaluation.main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", str(kodak_dir),
                          "--out", str(tmp_path)]) == 2
    assert "neither a checkpoint file nor a model config" in capsys.readouterr().err
    with pytest.raises(LicError, match="distinct names"):
        evaluation.model_names(["a/x.pt", "a/x.pt"])
    assert evaluation.model_names(["r1/best.pt", "r2/best.pt"]) == ["r1-best", "r2-best"]
    with pytest.raises(LicError, match="crop 900 is larger"):
        evaluation.evaluate(["tiny"], kodak_dir, tmp_path, limit=1, crop=900, progress=False)


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "bad\x1bname"])
def test_cli_name_is_one_file_name(tmp_path, capsys, name):
    assert evaluation.main(["--model", "tiny", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"),
                            "--name", name]) == 2
    assert "--name" in capsys.readouterr().err and not (tmp_path / "o").exists()
