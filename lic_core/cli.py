"""``python -m lic_core info | compress | decompress``: model facts and real bitstream files."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from lic_core.coding import bitstream, codec
from lic_core.atomic import check_output
from lic_core.errors import LicError, ReconstructionWarning, command
from lic_core.analysis.metrics import psnr
from lic_core.imageio import load_image, save_png, write_bytes_atomic
from lic_core.models.hpcm import CONFIGS, HPCM, count_parameters, hpcm, kmacs_per_pixel
from lic_core.models.loading import load_checkpoint

N_STEPS = 11


def _model(name: str | None, checkpoint: str | None) -> HPCM:
    """A checkpoint (ours or the authors', told apart by its keys) or a config's seeded init."""
    if checkpoint is None:
        return hpcm(name or "base").eval()
    model = load_checkpoint(checkpoint).eval()
    if name is not None and model.cfg.name != name:
        raise LicError(f"--model {name} but {checkpoint} holds an HPCM {model.cfg.name!r}")
    return model


def _bar(desc: str) -> tqdm:
    return tqdm(total=N_STEPS, desc=desc, unit="step", leave=False, file=sys.stderr)


def _info(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core info", description="HPCM parameters and kMACs/pixel")
    ap.add_argument("model", nargs="?", choices=sorted(CONFIGS), default="base")
    ap.add_argument("--checkpoint", help="count this checkpoint's model instead")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size for the MAC count")
    a = ap.parse_args(argv)
    model = _model(None if a.checkpoint else a.model, a.checkpoint)
    h, w = a.size or (model.cfg.pad_multiple,) * 2
    print(f"model        HPCM-{model.cfg.name}")
    print(f"config       {bitstream.config_json(model.cfg).decode()}")
    print(f"parameters   {count_parameters(model):,}")
    print(f"kMACs/pixel  {kmacs_per_pixel(model, h, w):.2f}  (eval forward at {h}x{w})")
    print(f"pad multiple {model.cfg.pad_multiple}")
    return 0


def _compress(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core compress", description="image -> HPCM bitstream")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model", choices=sorted(CONFIGS), help="config (default base, or the checkpoint's)")
    ap.add_argument("--checkpoint", help="our checkpoint or the authors' .pth.tar")
    ap.add_argument("--verify", action="store_true", help="decode the file again: PSNR and decode time")
    ap.add_argument("--float64", action="store_true",
                    help="code in float64: with the shipped tiny models such files decoded identically on other "
                         "CPUs where float32 files did not (benchmarks/cross_cpu.py); about 2.5-3x the time")
    a = ap.parse_args(argv)
    check_output(a.output)
    x, notes = load_image(a.input)
    for note in notes:
        print(f"note: {note}")
    model = _model(a.model, a.checkpoint)
    if a.float64:
        model = model.double()
    h, w = x.shape[2:]
    with _bar("encode") as bar:
        t0 = time.perf_counter()
        enc = codec.encode(model, x, progress=lambda k: bar.update())
        t_enc = time.perf_counter() - t0
    write_bytes_atomic(a.output, enc.data)
    est = sum(enc.estimated_bits.values())
    streams = ", ".join(f"{k} {v}" for k, v in enc.stream_bytes.items())
    print(f"{a.input} ({w}x{h}) -> {a.output}: {len(enc.data):,} bytes, {enc.bpp:.4f} bpp  [HPCM-{model.cfg.name}"
          f"{', float64' if a.float64 else ''}]")
    print(f"streams (bytes): header {enc.header_bytes}, {streams}; estimate {est / 8:,.0f} bytes")
    print(f"encode {t_enc:.2f} s")
    if a.verify:
        t0 = time.perf_counter()
        x_hat = codec.decompress(enc.data, model)
        print(f"decode {time.perf_counter() - t0:.2f} s, PSNR {psnr(x_hat, x):.3f} dB")
    return 0


def _decompress(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core decompress", description="HPCM bitstream -> PNG")
    ap.add_argument("input")
    ap.add_argument("output", help="PNG file to write")
    ap.add_argument("--checkpoint", help="weights; default: the header's config with its seeded init")
    ap.add_argument("--reference", help="original image: print the PSNR against it")
    ap.add_argument("--max-pixels", type=int, default=bitstream.MAX_PIXELS,
                    help=f"refuse larger images (default {bitstream.MAX_PIXELS:,}: decoding costs memory and time)")
    a = ap.parse_args(argv)
    check_output(a.output)
    path = Path(a.input)
    if not path.is_file():
        raise LicError(f"{path}: no such bitstream file")
    data = path.read_bytes()
    header = bitstream.read_header(data, a.max_pixels)
    ref = load_image(a.reference)[0] if a.reference else None
    if ref is not None and tuple(ref.shape[2:]) != (header.height, header.width):
        raise LicError(f"{a.reference} is {ref.shape[3]}x{ref.shape[2]}, the bitstream's image "
                       f"{header.width}x{header.height}")
    model = load_checkpoint(a.checkpoint).eval() if a.checkpoint else codec.model_for(header)
    with _bar("decode") as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReconstructionWarning)
        t0 = time.perf_counter()
        x_hat = codec.decompress(data, model, progress=lambda k: bar.update(), max_pixels=a.max_pixels)
        t_dec = time.perf_counter() - t0
    for w in caught:  # one line each, e.g. an image that differs from the encoder's by rounding
        print(f"warning: {w.message}", file=sys.stderr)
    save_png(x_hat, a.output)
    bpp = 8 * len(data) / (header.height * header.width)
    print(f"{a.input} -> {a.output} ({header.width}x{header.height}, HPCM-{header.config.name}, {bpp:.4f} bpp)")
    print(f"decode {t_dec:.2f} s")
    if ref is not None:
        print(f"PSNR {psnr(x_hat, ref):.3f} dB")
    return 0


@command("info")
def info_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core info [MODEL] [--checkpoint CKPT]``."""
    return _info(argv)


@command("compress")
def compress_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core compress IN OUT [--model NAME] [--checkpoint CKPT] [--verify]``."""
    return _compress(argv)


@command("decompress")
def decompress_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core decompress IN OUT.png [--checkpoint CKPT] [--reference IMG]``."""
    return _decompress(argv)
