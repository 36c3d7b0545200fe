"""Image reading (RGB conversion with notes, refusals naming the file) and atomic writes."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lic_core import imageio
from lic_core.errors import ImageError, OutputError
from lic_core.imageio import load_image, save_png, write_bytes_atomic

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)


def png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def pixels(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_rgb_png_is_exact(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    x, notes = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 6, 9) and x.dtype == torch.float32 and notes == []
    assert np.array_equal(pixels(x), RGB)


@pytest.mark.parametrize(
    "mode,word",
    [("L", "grayscale"), ("LA", "alpha"), ("RGBA", "alpha"), ("P", "palette"), ("1", "1-bit"), ("CMYK", "CMYK")],
)
def test_conversions_have_notes(tmp_path, mode, word):
    img = Image.fromarray(RGB).convert(mode)
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    img.save(path)
    x, notes = load_image(path)
    assert x.shape == (1, 3, 6, 9) and any(word in n for n in notes), notes
    if mode in ("L", "LA", "1"):
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    if mode == "P":
        assert np.array_equal(pixels(x), np.array(img.convert("RGB")))


def test_palette_with_transparency(tmp_path):
    img = Image.fromarray(RGB).convert("P")
    img.info["transparency"] = 0
    img.save(tmp_path / "t.png", transparency=0)
    _, notes = load_image(tmp_path / "t.png")
    assert any("alpha" in n for n in notes)


def test_16bit_gray_and_rgb(tmp_path):
    g16 = RNG.integers(0, 65536, (6, 9), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    x, notes = load_image(tmp_path / "g16.png")
    assert any("16-bit" in n for n in notes) and any("grayscale" in n for n in notes)
    assert np.array_equal(pixels(x)[..., 0], (g16 >> 8).astype(np.uint8))
    c16 = RNG.integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    png16(tmp_path / "c16.png", c16)
    x, notes = load_image(tmp_path / "c16.png")
    assert notes == ["16-bit image reduced to 8 bits per channel"]
    assert np.array_equal(pixels(x), (c16 >> 8).astype(np.uint8))


def test_animation_and_exif_orientation(tmp_path):
    frames = [Image.fromarray(RGB).convert("P"), Image.fromarray(255 - RGB).convert("P")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    _, notes = load_image(tmp_path / "a.gif")
    assert any("2 frames" in n for n in notes)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(RGB).save(tmp_path / "r.jpg", exif=exif, quality=95)
    x, notes = load_image(tmp_path / "r.jpg")
    assert x.shape == (1, 3, 9, 6) and "EXIF orientation applied" in notes


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_non_images_are_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.png"):
        load_image(path)


def test_truncated_image_and_missing_file(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_save_png_round_trip(tmp_path):
    x = torch.from_numpy(RGB).permute(2, 0, 1)[None].float() / 255
    save_png(x, tmp_path / "sub" / "o.png")
    assert torch.equal(load_image(tmp_path / "sub" / "o.png")[0], x)
    with pytest.raises(ValueError):
        save_png(torch.rand(2, 3, 4, 4), tmp_path / "b.png")


def test_failed_write_leaves_existing_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "fsync", broken_fsync)
    with pytest.raises(OutputError, match="out.bin: cannot write .No space left on device"):
        write_bytes_atomic(path, b"new" * 1000)
    with pytest.raises(OutputError):
        save_png(torch.rand(1, 3, 4, 4), path)
    assert path.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]  # no temporary file left behind
    monkeypatch.undo()
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.bin"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from lic_core.atomic import write_file

    old = os.umask(umask)
    try:
        path = write_file(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
