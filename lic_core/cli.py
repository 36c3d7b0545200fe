"""``python -m lic_core info | compress | decompress``: model facts and real bitstream files.

``compress`` codes with a shipped trained model (``--quality``, checkpoints/tiny) or a given
``--checkpoint``; untrained (seeded-init) weights only with ``--untrained``. ``decompress`` finds
the weights a version-4 file names by their fingerprint among the shipped models, or takes
``--checkpoint``; it never builds a model from a header alone. ``compress --exact`` writes format
version 5 (the same symbols on every CPU; on GPUs by design, not yet measured) with the model's
exact version: the shipped models' come with them, another checkpoint's from ``--exact-spec``
(lic_core.models.exact).
Outputs are handled like gzip's:
an existing file is refused without ``-f``, the input never overwritten, ``-`` is stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from lic_core.analysis.metrics import psnr
from lic_core.atomic import STDOUT, check_output, write_file
from lic_core.cliargs import bounded_int
from lic_core.coding import bitstream, codec
from lic_core.errors import BitstreamError, ImageError, LicError, OutputError, ReconstructionWarning, command, printable
from lic_core.imageio import load_image, png_bytes
from lic_core.models import exact
from lic_core.models.hpcm import CONFIGS, HPCM, build, count_parameters, hpcm, kmacs_per_pixel
from lic_core.models.loading import load_checkpoint
from lic_core.workbench import store

N_STEPS = 11
MAX_PIXELS_FLAG = 1 << 26  # the largest --max-pixels (8192x8192): decoding memory grows with it
MAX_FILE_BYTES = 1 << 28  # a bitstream file larger than this is refused before it is read
MAX_INFO_PIXELS = 1 << 22  # info --size runs one forward pass at that size


def _bar(desc: str) -> tqdm:
    return tqdm(total=N_STEPS, desc=desc, unit="step", leave=False, file=sys.stderr)


def exact_of(model: HPCM, path: str | Path | None, spec: str | None) -> exact.ExactHPCM:
    """The exact version of ``model``: from the calibration ``spec`` file (JSON, what
    :func:`lic_core.models.exact.calibrate_spec` returns), else from the store's record of ``path``."""
    if spec is not None:
        if not Path(spec).is_file():
            raise LicError(f"{spec}: no such exact-model spec file")
        try:
            grids = json.loads(Path(spec).read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise LicError(f"{spec}: not an exact-model spec ({type(e).__name__})") from None
        if not isinstance(grids, dict) or not all(isinstance(v, int) for v in grids.values()):
            raise LicError(f"{spec}: not an exact-model spec (layer name -> integer)")
        return exact.derive(model, grids).eval()
    if path is None or Path(path).name not in store.exact_records(Path(path).parent):
        raise LicError(f"the exact model of {path or 'these weights'} needs --exact-spec "
                       "(lic_core.models.exact.calibrate_spec writes one)")
    return store.exact_model(model, Path(path))


def _shipped(quality: int | None) -> tuple[HPCM, str, Path]:
    """The shipped model of ``quality`` (default: the middle level), SHA-256 checked, its label and file."""
    levels = store.qualities()
    if not levels:
        raise LicError(f"no shipped models in {store.SHIPPED}: give --checkpoint (or --untrained for tests)")
    q = store.default_quality() if quality is None else quality
    if q not in levels:
        raise LicError(f"--quality {q}: the shipped models have qualities 1..{len(levels)}")
    path = store.checked_file(levels[q])
    lmbda = store.read_index(store.SHIPPED)[path.name].get("lmbda")
    return load_checkpoint(path).eval(), f"shipped quality {q} (λ {lmbda}, {path.name})", path


def _model(name: str | None, checkpoint: str | None, untrained: bool = False,
           quality: int | None = None) -> tuple[HPCM, str, Path | None]:
    """The coding model, how it was chosen and its file: a checkpoint (ours or the authors'), the
    seeded init of a config (``untrained``), or a shipped model by quality."""
    if sum((checkpoint is not None, untrained, quality is not None)) > 1:
        raise LicError("give one of --checkpoint, --quality and --untrained")
    if untrained:
        return hpcm(name or "tiny").eval(), "untrained seeded init", None
    if checkpoint is not None:
        model = load_checkpoint(checkpoint).eval()
        if name is not None and model.cfg.name != name:
            raise LicError(f"--model {name} but {checkpoint} holds an HPCM {printable(model.cfg.name)!r}")
        return model, str(checkpoint), Path(checkpoint)
    model, label, path = _shipped(quality)
    if name is not None and model.cfg.name != name:
        raise LicError(f"--model {name}: the shipped models are HPCM-{model.cfg.name}; "
                       "give --checkpoint (or --untrained for tests and benchmarks)")
    return model, label, path


def _output(path: str, force: bool, inputs: list[str | None]) -> str:
    """``path`` after gzip's checks (``-``: stdout, which must not be a terminal for binary data);
    never one of ``inputs`` or a file of the shipped model store, whatever ``force``."""
    if path == STDOUT:
        if sys.stdout.isatty():
            raise OutputError("refusing to write binary data to a terminal (redirect it, or give a file name)")
        return path
    if Path(path).resolve().parent == store.SHIPPED.resolve():
        raise OutputError(f"{path}: is in the shipped model store {store.SHIPPED}; not overwritten")
    check_output(path, force=force, inputs=[i for i in inputs if i and i != STDOUT])
    return path


def _say(to_stdout: bool):
    """``print`` for the report lines: stderr when the data itself goes to stdout."""
    return (lambda *a: print(*a, file=sys.stderr)) if to_stdout else print


def _read_input(path: str, limit: int = MAX_FILE_BYTES, kind: str = "bitstream") -> bytes:
    """The bytes of a regular file, or of stdin for ``-``, at most ``limit``."""
    error, what = (ImageError, "an image this tool reads") if kind == "image" else (BitstreamError, "a bitstream this tool decodes")
    too_big = f"{'stdin' if path == STDOUT else path}: over {limit:,} bytes, not {what}"
    if path == STDOUT:
        if sys.stdin is None or sys.stdin.isatty():
            raise error(f"stdin is a terminal: pipe the {kind} in, or give a file name")
        data = sys.stdin.buffer.read(limit + 1)
    else:
        p = Path(path)
        if not p.is_file():
            raise error(f"{path}: no such {kind} file" if not p.exists() else f"{path}: not a regular file")
        if p.stat().st_size > limit:
            raise error(too_big)
        data = p.read_bytes()
    if len(data) > limit:
        raise error(too_big)
    return data


def _info(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core info",
                                 description="the shipped models (no MODEL), or a config's parameters and kMACs/pixel")
    ap.add_argument("model", nargs="?", choices=sorted(CONFIGS))
    ap.add_argument("--checkpoint", help="count this checkpoint's model instead")
    ap.add_argument("--size", type=bounded_int(1, bitstream.MAX_SIDE), nargs=2, metavar=("H", "W"),
                    help="image size for the MAC count: multiples of the model's pad multiple, "
                         f"at most {MAX_INFO_PIXELS:,} pixels")
    a = ap.parse_args(argv)
    if a.model is None and a.checkpoint is None:
        return _list_shipped(a.size is not None)
    model = load_checkpoint(a.checkpoint).eval() if a.checkpoint else hpcm(a.model).eval()
    p = model.cfg.pad_multiple
    h, w = a.size or (p, p)
    if h % p or w % p or h * w > MAX_INFO_PIXELS:
        raise LicError(f"--size {h} {w}: both sides must be multiples of {p} (HPCM-{printable(model.cfg.name)}'s pad "
                       f"multiple), at most {MAX_INFO_PIXELS:,} pixels")
    print(f"model        HPCM-{printable(model.cfg.name)}")
    print(f"config       {bitstream.config_json(model.cfg).decode()}")
    print(f"parameters   {count_parameters(model):,}")
    if a.checkpoint:
        print(f"fingerprint  {codec.fingerprint(model).hex()}")
    print(f"kMACs/pixel  {kmacs_per_pixel(model, h, w):.2f}  (eval forward at {h}x{w})")
    print(f"pad multiple {p}")
    return 0


def _list_shipped(size_given: bool) -> int:
    if size_given:
        raise LicError("--size needs a MODEL or --checkpoint")
    rows = store.shipped_table()
    if not rows:
        raise LicError(f"no shipped models in {store.SHIPPED}")
    default = store.default_quality()
    print(f"shipped models ({store.SHIPPED}; compress --quality Q, default {default}); Kodak: mean of the 24 "
          "images, real bitstreams")
    print(f"{'quality':>7}  {'lambda':>7}  {'Kodak bpp':>9}  {'PSNR dB':>7}  {'fingerprint':16}  file")
    for r in rows:
        bpp = f"{r['bpp']:.4f}" if r["bpp"] is not None else "-"
        ps = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
        print(f"{r['quality']:>7}  {r['lmbda']:>7g}  {bpp:>9}  {ps:>7}  {r['fingerprint']:16}  {r['file'].name}")
    print("python -m lic_core info tiny|base|large: a config's parameters and kMACs/pixel")
    return 0


def _compress(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core compress", description="image -> HPCM bitstream")
    ap.add_argument("input", help="image file (PNG, JPEG, ... as Pillow reads), or - for stdin")
    ap.add_argument("output", help="bitstream file to write, or - for stdout")
    ap.add_argument("-q", "--quality", type=bounded_int(1, 64),
                    help="shipped model by quality level, 1 (lowest λ) up (default: the middle; see `info`)")
    ap.add_argument("--checkpoint", help="our checkpoint or the authors' .pth.tar instead of a shipped model")
    ap.add_argument("--untrained", action="store_true",
                    help="the config's seeded init (poor images: for tests and benchmarks only)")
    ap.add_argument("--model", choices=sorted(CONFIGS), help="config of --untrained (default tiny); else a check")
    ap.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--verify", action="store_true", help="decode the file again: PSNR and decode time")
    ap.add_argument("--max-pixels", type=bounded_int(1, MAX_PIXELS_FLAG), default=bitstream.MAX_PIXELS,
                    help=f"refuse images whose padded grid is larger (default {bitstream.MAX_PIXELS:,})")
    ap.add_argument("--float64", action="store_true",
                    help="code in float64: with the shipped tiny models such files decoded identically on other "
                         "CPUs where float32 files did not (benchmarks/cross_cpu.py); about 2.5-3x the time")
    ap.add_argument("--exact", action="store_true",
                    help="format version 5 for archiving: the same symbols on every CPU, by design on GPUs too "
                         "(exact entropy path; docs/CODEC.md gives its cost)")
    ap.add_argument("--exact-spec", metavar="JSON",
                    help="calibration of --checkpoint's exact model (lic_core.models.exact.calibrate_spec); implies --exact")
    a = ap.parse_args(argv)
    _output(a.output, a.force, [a.input, a.checkpoint, a.exact_spec])
    image = _read_input(a.input, MAX_FILE_BYTES, "image") if a.input == STDOUT else a.input
    x, notes = load_image(image, max_pixels=a.max_pixels, max_side=bitstream.MAX_SIDE)
    say = _say(a.output == STDOUT)
    for note in notes:
        say(f"note: {note}")
    model, label, path = _model(a.model, a.checkpoint, a.untrained, a.quality)
    if a.exact or a.exact_spec:
        model = exact_of(model, path, a.exact_spec)
    if a.float64:
        model = model.double()
    h, w = x.shape[2:]
    with _bar("encode") as bar:
        t0 = time.perf_counter()
        enc = codec.encode(model, x, progress=lambda k: bar.update(), max_pixels=a.max_pixels)
        t_enc = time.perf_counter() - t0
    write_file(a.output, enc.data, force=a.force)
    if a.untrained:
        print("warning: coded with untrained weights (--untrained): for tests and benchmarks, not for images",
              file=sys.stderr)
    est = sum(enc.estimated_bits.values())
    streams = ", ".join(f"{k} {v}" for k, v in enc.stream_bytes.items())
    say(f"{'stdin' if a.input == STDOUT else a.input} ({w}x{h}) -> {'stdout' if a.output == STDOUT else a.output}: {len(enc.data):,} bytes, {enc.bpp:.4f} bpp  [HPCM-{model.cfg.name}"
        f"{', float64' if a.float64 else ''}{', exact' if a.exact or a.exact_spec else ''}, {label}, "
        f"weights {codec.fingerprint(model).hex()}]")
    say(f"streams (bytes): header {enc.header_bytes}, {streams}; estimate {est / 8:,.0f} bytes")
    say(f"encode {t_enc:.2f} s")
    if a.verify:
        t0 = time.perf_counter()
        x_hat = codec.decompress(enc.data, model, max_pixels=a.max_pixels)
        say(f"decode {time.perf_counter() - t0:.2f} s, PSNR {psnr(x_hat, x):.3f} dB")
    return 0


def decoder_model(header: bitstream.Header, checkpoint: str | None = None, untrained: bool = False,
                  exact_spec: str | None = None) -> HPCM:
    """The model that decodes a file of ``header``, from trusted weights only: ``checkpoint``, else
    the shipped model the header's fingerprint names, else (``untrained``) the seeded init of a
    built-in config equal to the header's; for a format-5 file its exact version (``exact_spec``,
    else the store's record). Config and fingerprint are then checked against the header
    (:func:`lic_core.coding.codec.check_model`); a header alone never builds a model."""
    if checkpoint is not None and untrained:
        raise LicError("give --checkpoint or --untrained, not both")
    wants_exact = header.version >= bitstream.EXACT
    if exact_spec is not None and not wants_exact:
        raise LicError(f"--exact-spec: this is a format version {header.version} file, not an exact one (5)")
    if wants_exact and checkpoint is None and not untrained and header.fingerprint is not None:
        path = store.exact_by_fingerprint(header.fingerprint)
        if path is None:
            raise BitstreamError(f"this file needs the exact model with fingerprint {header.fingerprint.hex()}, which is "
                                 f"not among the shipped models' ({store.SHIPPED}): give --checkpoint and --exact-spec")
        return codec.check_model(store.exact_model(load_checkpoint(path).eval(), path), header)
    if checkpoint is not None:
        model = load_checkpoint(checkpoint).eval()
    elif untrained:
        model = _untrained_of(header)
        if model is None:
            raise BitstreamError(f"--untrained decodes files of the built-in configs ({', '.join(CONFIGS)}); "
                                 f"this one has {bitstream.config_json(header.config).decode()}")
    elif header.fingerprint is None:
        raise BitstreamError(f"format version {header.version} files do not name their weights: give --checkpoint "
                             "(or --untrained for a file coded with untrained weights)")
    else:
        path = store.shipped_by_fingerprint(header.fingerprint)
        if path is None:
            seeded = _untrained_of(header)
            hint = (" (it was coded with untrained weights: --untrained)"
                    if seeded is not None and codec.fingerprint(seeded) == header.fingerprint else "")
            raise BitstreamError(f"this file needs the weights with fingerprint {header.fingerprint.hex()}, which are "
                                 f"not among the shipped models ({store.SHIPPED}): give --checkpoint{hint}")
        model = load_checkpoint(path).eval()
    if wants_exact:
        model = exact_of(model, checkpoint, exact_spec)
    return codec.check_model(model, header)


def _untrained_of(header: bitstream.Header) -> HPCM | None:
    """The seeded init of the built-in config the header names (its seed), or None for another config."""
    named = CONFIGS.get(header.config.name)
    if named is None or replace(named, seed=0) != replace(header.config, seed=0):
        return None
    return build(replace(named, seed=header.config.seed)).eval()


def _decompress(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core decompress", description="HPCM bitstream -> PNG")
    ap.add_argument("input", help="bitstream file, or - for stdin")
    ap.add_argument("output", help="PNG file to write, or - for stdout")
    ap.add_argument("--checkpoint", help="weights (default: the shipped model the file's fingerprint names)")
    ap.add_argument("--untrained", action="store_true",
                    help="a file coded with --untrained: the seeded init of its built-in config")
    ap.add_argument("--exact-spec", metavar="JSON", help="a format-5 file's exact-model calibration for --checkpoint")
    ap.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--reference", help="original image: print the PSNR against it")
    ap.add_argument("--max-pixels", type=bounded_int(1, MAX_PIXELS_FLAG), default=bitstream.MAX_PIXELS,
                    help=f"refuse images whose padded grid is larger (default {bitstream.MAX_PIXELS:,}: "
                         "decoding costs memory and time)")
    a = ap.parse_args(argv)
    _output(a.output, a.force, [a.input, a.reference, a.checkpoint, a.exact_spec])
    say = _say(a.output == STDOUT)
    data = _read_input(a.input)
    header = bitstream.read_header(data, a.max_pixels)
    ref = load_image(a.reference, max_pixels=a.max_pixels)[0] if a.reference else None
    if ref is not None and tuple(ref.shape[2:]) != (header.height, header.width):
        raise LicError(f"{a.reference} is {ref.shape[3]}x{ref.shape[2]}, the bitstream's image "
                       f"{header.width}x{header.height}")
    model = decoder_model(header, a.checkpoint, a.untrained, a.exact_spec)
    with _bar("decode") as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReconstructionWarning)
        t0 = time.perf_counter()
        x_hat = codec.decompress(data, model, progress=lambda k: bar.update(), max_pixels=a.max_pixels)
        t_dec = time.perf_counter() - t0
    for w in caught:  # one line each, e.g. an image that differs from the encoder's by rounding
        print(f"warning: {printable(w.message)}", file=sys.stderr)
    write_file(a.output, png_bytes(x_hat), force=a.force)
    if a.output != STDOUT and Path(a.output).suffix.lower() not in ("", ".png"):
        print(f"note: {a.output} holds PNG data, whatever its extension says", file=sys.stderr)
    bpp = 8 * len(data) / (header.height * header.width)
    say(f"{a.input} -> {a.output} ({header.width}x{header.height}, HPCM-{printable(header.config.name)}, "
        f"{bpp:.4f} bpp, weights {codec.fingerprint(model).hex()})")
    say(f"decode {t_dec:.2f} s")
    if ref is not None:
        say(f"PSNR {psnr(x_hat, ref):.3f} dB")
    return 0


@command("info")
def info_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core info [MODEL] [--checkpoint CKPT] [--size H W]``."""
    return _info(argv)


@command("compress")
def compress_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core compress IN OUT [--quality Q | --checkpoint CKPT | --untrained] [-f]``."""
    return _compress(argv)


@command("decompress")
def decompress_main(argv: list[str] | None = None) -> int:
    """``python -m lic_core decompress IN OUT.png [--checkpoint CKPT] [--reference IMG] [-f]``."""
    return _decompress(argv)
