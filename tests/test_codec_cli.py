"""``python -m lic_core info | compress | decompress``: once through a real subprocess, the rest
in-process."""
from __future__ import annotations

import re
import subprocess
import sys

import torch
from PIL import Image

from lic_core.coding import codec
from lic_core.cli import compress_main, decompress_main, info_main
from lic_core.imageio import load_image
from lic_core.models.hpcm import count_parameters, hpcm, save_checkpoint
from lic_core.models.loading import load_checkpoint
from lic_core.paths import REPO
from lic_core.workbench import store


def test_compress_subprocess_decompress(tmp_path, kodak_dir, capsys):
    with Image.open(kodak_dir / "kodim01.png") as im:
        im.convert("RGB").crop((100, 200, 180, 250)).save(tmp_path / "in.png")
    run = lambda *a: subprocess.run([sys.executable, "-m", "lic_core", *a], cwd=REPO, capture_output=True, text=True)
    enc = run("compress", str(tmp_path / "in.png"), str(tmp_path / "a.hpcm"), "--verify")
    assert enc.returncode == 0, enc.stderr
    assert re.search(r"\d+ bytes, [\d.]+ bpp", enc.stdout) and "encode" in enc.stdout and "PSNR" in enc.stdout
    q = store.default_quality()
    assert f"shipped quality {q}" in enc.stdout and "warning" not in enc.stderr  # trained weights by default
    args = [str(tmp_path / "a.hpcm"), str(tmp_path / "out.png"), "--reference", str(tmp_path / "in.png")]
    assert decompress_main(args) == 0  # the shipped model found by the file's fingerprint
    out = capsys.readouterr().out
    assert "decode" in out and "PSNR" in out
    x, _ = load_image(tmp_path / "in.png")
    out, _ = load_image(tmp_path / "out.png")
    assert torch.equal(out, codec.reconstruct(load_checkpoint(store.qualities()[q]), x))
    assert decompress_main(args) == 2 and "already exists" in capsys.readouterr().err  # like gzip
    assert decompress_main(args + ["-f"]) == 0


def test_info(capsys):
    assert info_main(["tiny"]) == 0
    out = capsys.readouterr().out
    assert f"{count_parameters(hpcm('tiny')):,}" in out and "kMACs/pixel" in out
    assert info_main([]) == 0  # the shipped models: quality, λ, Kodak bpp and PSNR, fingerprint
    out = capsys.readouterr().out
    for row in store.shipped_table():
        assert re.search(rf"\s{row['quality']}\s+{row['lmbda']:g}\s+{row['bpp']:.4f}\s+{row['psnr']:.2f}\s+"
                         rf"{row['fingerprint']}\s+{row['file'].name}", out), out
    for bad in (["tiny", "--size", "100", "128"], ["tiny", "--size", "-128", "128"], ["--size", "128", "128"]):
        assert info_main(bad) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_untrained_weights_only_when_asked(tmp_path, capsys):
    """--untrained codes with the seeded init and says so; decompress --untrained decodes such a
    file; without a flag the file's fingerprint is not a shipped model's: one line naming it."""
    Image.new("RGB", (9, 7), (20, 130, 90)).save(tmp_path / "in.png")
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "u.hpcm"), "--untrained"]) == 0
    assert "untrained" in capsys.readouterr().err
    fp = codec.fingerprint(hpcm("tiny")).hex()
    assert decompress_main([str(tmp_path / "u.hpcm"), str(tmp_path / "u.png")]) == 2
    err = _error_line(capsys)
    assert f"fingerprint {fp}" in err and "--checkpoint" in err and "coded with untrained weights: --untrained" in err
    assert decompress_main([str(tmp_path / "u.hpcm"), str(tmp_path / "u.png"), "--untrained"]) == 0
    x, _ = load_image(tmp_path / "in.png")
    assert torch.equal(load_image(tmp_path / "u.png")[0], codec.reconstruct(hpcm("tiny"), x))
    capsys.readouterr()
    assert decompress_main([str(tmp_path / "u.hpcm"), str(tmp_path / "u.jpg"), "--untrained"]) == 0
    assert "u.jpg holds PNG data" in capsys.readouterr().err and (tmp_path / "u.jpg").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "b.hpcm"), "--model", "base"]) == 2
    assert "--checkpoint" in _error_line(capsys)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("not an image")
    assert compress_main([str(tmp_path / "x.txt"), str(tmp_path / "o.hpcm"), "--untrained"]) == 2
    assert "x.txt" in capsys.readouterr().err and not (tmp_path / "o.hpcm").exists()
    assert decompress_main([str(tmp_path / "x.txt"), str(tmp_path / "o.png")]) == 2
    assert "not an HPCM bitstream" in capsys.readouterr().err
    assert decompress_main([str(tmp_path / "none.hpcm"), str(tmp_path / "o.png")]) == 2
    assert "no such bitstream" in capsys.readouterr().err and not (tmp_path / "o.png").exists()


def test_checkpoint_is_used(tmp_path, capsys):
    from lic_core.models.hpcm import save_checkpoint

    model = hpcm("tiny", seed=5)
    save_checkpoint(model, tmp_path / "t.pt")
    Image.new("RGB", (7, 5), (200, 30, 90)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png"), str(tmp_path / "a.hpcm"), "--checkpoint", str(tmp_path / "t.pt")]
    assert compress_main(args) == 0
    assert decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / "t.pt")]) == 0
    x, _ = load_image(tmp_path / "in.png")
    assert torch.equal(load_image(tmp_path / "o.png")[0], codec.reconstruct(model, x))
    assert compress_main(args + ["--model", "base", "-f"]) == 2
    assert "holds an HPCM 'tiny'" in capsys.readouterr().err


def test_decoding_with_other_weights_or_rounding_is_reported(tmp_path, capsys):
    """Format version 4: other weights are refused by their fingerprint, before decoding. Version 3
    (no fingerprint): a checkpoint that computes other scales is refused in one line; one whose
    synthesis alone rounds differently (as another device's) decodes with a one-line warning."""
    model = hpcm("tiny", seed=5)
    save_checkpoint(model, tmp_path / "t.pt")
    save_checkpoint(hpcm("tiny", seed=6), tmp_path / "other.pt")
    with torch.no_grad():
        model.g_s[-1].bias += 1 / 255
    save_checkpoint(model, tmp_path / "moved.pt")
    Image.new("RGB", (40, 24), (200, 30, 90)).save(tmp_path / "in.png")
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "a4.hpcm"), "--checkpoint", str(tmp_path / "t.pt")]) == 0
    capsys.readouterr()
    for other in ("other.pt", "moved.pt"):
        assert decompress_main([str(tmp_path / "a4.hpcm"), str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / other)]) == 2
        assert f"fingerprint {codec.fingerprint(hpcm('tiny', seed=5)).hex()}" in _error_line(capsys)
    (tmp_path / "a.hpcm").write_bytes(codec.encode(hpcm("tiny", seed=5), load_image(tmp_path / "in.png")[0], version=3).data)
    dec = lambda ckpt: decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / f"{ckpt}.png"),
                                        "--checkpoint", str(tmp_path / f"{ckpt}.pt")])
    last = lambda: capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's lines
    assert dec("other") == 2 and "symbols CRC-32" in last() and not (tmp_path / "other.png").exists()
    assert dec("moved") == 0 and (tmp_path / "moved.png").exists()
    assert last().startswith("warning: decoded image differs from the encoder's")
    assert dec("t") == 0 and "warning" not in capsys.readouterr().err


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_every_cli_error_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from lic_core.models.hpcm import save_checkpoint
    from lic_core.training.engine import main as train_main

    monkeypatch.setenv("LIC_VERBOSE", "0")  # teardown restores the original; --verbose below sets it
    Image.new("RGB", (16, 16), (20, 130, 90)).save(tmp_path / "in.png")
    (tmp_path / "afile").write_text("x")
    args = [str(tmp_path / "in.png")]
    for out, why in ((tmp_path, "is a folder"), (tmp_path / "afile" / "o.hpcm", "is a file, not a folder")):
        assert compress_main(args + [str(out), "--untrained"]) == 2
        assert why in _error_line(capsys)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert compress_main(args + [str(tmp_path / "o.hpcm"), "--checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "not a loadable checkpoint" in _error_line(capsys) and not (tmp_path / "o.hpcm").exists()
    assert compress_main(args + [str(tmp_path / "o.hpcm"), "--checkpoint", str(tmp_path / "bad.pt"), "--verbose"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) > 1  # the torch text, when asked for
    monkeypatch.setenv("LIC_VERBOSE", "0")
    model = hpcm("tiny")
    with torch.no_grad():
        model.g_a[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, tmp_path / "nan.pt")
    assert compress_main(args + [str(tmp_path / "o.hpcm"), "--checkpoint", str(tmp_path / "nan.pt")]) == 2
    assert "NaN or inf" in _error_line(capsys) and not (tmp_path / "o.hpcm").exists()
    (tmp_path / "bad.yaml").write_text("loss: [1, 2\nrun: 3\n")
    assert train_main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "line 2, column 4" in _error_line(capsys)
    assert compress_main(args + [str(tmp_path / "o.hpcm"), "--untrained"]) == 0
    capsys.readouterr()
    Image.new("RGB", (17, 16)).save(tmp_path / "other.png")
    assert decompress_main([str(tmp_path / "o.hpcm"), str(tmp_path / "o.png"), "--untrained", "--reference",
                            str(tmp_path / "other.png")]) == 2
    assert "17x16" in _error_line(capsys) and not (tmp_path / "o.png").exists()


def test_float64_files_from_the_command_line(tmp_path, capsys):
    """``compress --float64`` writes a file coded in float64; ``decompress`` needs no flag for it."""
    Image.new("RGB", (24, 16), (10, 200, 60)).save(tmp_path / "in.png")
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "a.hpcm"), "--quality", "1", "--float64"]) == 0
    assert "float64" in capsys.readouterr().out
    assert decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / "o.png")]) == 0
    x, _ = load_image(tmp_path / "in.png")
    model = load_checkpoint(store.qualities()[1])
    assert torch.equal(load_image(tmp_path / "o.png")[0], codec.reconstruct(model.double(), x).float())


def test_bad_images_specs_and_tensors_are_named(tmp_path, capsys):
    """A side over the format's limit, data that is no image on stdin, a missing or out-of-range
    exact spec: one line each; the API refuses integer images and values outside [0, 1]."""
    import io
    import json

    import pytest

    from lic_core.coding.bitstream import MAX_SIDE
    from lic_core.errors import LicError
    from lic_core.models import exact

    Image.new("RGB", (MAX_SIDE + 1, 1)).save(tmp_path / "wide.png")
    assert compress_main([str(tmp_path / "wide.png"), str(tmp_path / "w.hpcm"), "--untrained"]) == 2
    assert f"each side must be at most {MAX_SIDE:,} pixels" in _error_line(capsys)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b"not an image"))
    try:
        assert compress_main(["-", str(tmp_path / "s.hpcm"), "--untrained"]) == 2
    finally:
        sys.stdin = sys.__stdin__
    assert _error_line(capsys).endswith("stdin: not an image this tool can read")
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "e.hpcm"), "--untrained",
                          "--exact-spec", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such exact-model spec file" in _error_line(capsys)
    model = hpcm("tiny").eval()
    spec = {k: 0 for k in exact.layer_names(model)}
    name = next(iter(spec))
    for bad in (10**6, -10**6, True):
        with pytest.raises(LicError, match=f"layer {name!r} has grid {bad!r}"):
            exact.derive(model, {**spec, name: bad})
    with pytest.raises(LicError, match="names layer 'nowhere'"):
        exact.derive(model, {**spec, "nowhere": 0})
    (tmp_path / "big.json").write_text(json.dumps({**spec, name: 10**6}))
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "e.hpcm"), "--untrained",
                          "--exact-spec", str(tmp_path / "big.json")]) == 2
    assert "has grid 1000000" in _error_line(capsys) and not (tmp_path / "e.hpcm").exists()
    x = torch.rand(1, 3, 16, 16)
    for bad, words in (((x * 255).to(torch.uint8), "torch.uint8"), (x * 255, "expected [0, 1]"), (x - 5, "expected [0, 1]")):
        with pytest.raises(ValueError, match=re.escape(words)):
            codec.compress(model, bad)
