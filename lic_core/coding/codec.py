"""HPCM bitstreams: image -> bytes -> image with CompressAI's rANS coder.

The encoder and the decoder both run :meth:`HPCM.context_model`, the loop ``forward`` runs, with a
``code_step`` that writes or reads each step's symbols. The decoder therefore recomputes exactly
what the eval-mode forward computed: the decoded image is its reconstruction, clamped to [0, 1]
and quantized to 8 bits.

The file format (header, CRC, stream layout) is :mod:`lic_core.coding.bitstream`.
y is written as three rANS streams, one per scale of the schedule (s1, s2, s3), so the actual
bytes of each scale are known.

Across machines the model is not bit-exact: another CPU's vector unit or a GPU computes a scale a
little differently, which can pick another coding table for a symbol (the rest of the stream then
decodes to other symbols), and rounds the synthesis transform differently (pixels one 8-bit level
apart). Format version 3 therefore stores a CRC-32 of the symbols and of the encoder's 8-bit image:
the decoder refuses symbols that differ (:class:`BitstreamError`) and warns when only the image
does (:class:`ReconstructionWarning`). Measured by benchmarks/cross_cpu.py and gpu_check.py.

Version 4, written by default, also stores the :func:`fingerprint` of the weights: the decoder
refuses a model with other weights before decoding. A model is never built from a header: the
caller gives the model (a checkpoint, or a shipped model found by the fingerprint,
:func:`lic_core.workbench.store.shipped_by_fingerprint`) and its config must equal the header's.

Version 5 is written by an exact model (:class:`lic_core.models.exact.ExactHPCM`, what
:func:`lic_core.models.exact.derive` makes of a float model): its entropy-parameter path computes
the same scales and means on every machine, so a file decodes to its symbols on any CPU or GPU; the
synthesis stays float (pixels may still differ by a level: warned). Only an exact model decodes a
version-5 file, and only a float one the earlier versions.
"""
from __future__ import annotations

import copy
import hashlib
import math
import warnings
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lic_core.coding.bitstream import (EXACT, FINGERPRINT_BYTES, INDEX_RULES, MAX_PIXELS, MAX_SIDE, NAMED, VERSION,
                                       WRITABLE, Header, check_pixels, check_precision, config_json, pack, read_header,
                                       split_streams)
from lic_core.coding.entropy import SCALE_BOUND, GGTables
from lic_core.errors import BitstreamError, LicError, ReconstructionWarning, allocation_failure
from lic_core.models.exact import ExactHPCM
from lic_core.models.hpcm import HPCM

DTYPES = {32: torch.float32, 64: torch.float64}  # a file's coding precision (bits) -> the model's dtype
Progress = Callable[[int], None]


@dataclass
class Encoded:
    """A bitstream and how its bytes split; ``estimated_bits`` are -log2 likelihoods of the same
    symbols (what training optimizes), per stream."""

    data: bytes
    stream_bytes: dict[str, int]
    header_bytes: int
    height: int
    width: int
    estimated_bits: dict[str, float] = field(default_factory=dict)
    image: Tensor | None = None  # the encoder's own 8-bit reconstruction (what a decoder here returns)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, over the original (unpadded) pixels."""
        return 8 * len(self.data) / (self.height * self.width)


# -- padding ------------------------------------------------------------------------------------
def pad_image(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to multiples of ``multiple`` by replicating the edge pixels.

    Replicate, not reflect: reflection needs the pad to be smaller than the side (a 1x1 or
    17-row image padded to 256 cannot be reflected), and flat extensions cost few bits."""
    h, w = x.shape[2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def to_8bit(x_hat: Tensor) -> Tensor:
    """Clamp to [0, 1] and quantize to 8-bit levels (values k/255)."""
    return (x_hat.clamp(0, 1) * 255).round() / 255


def crc_of(t: Tensor, crc: int = 0, dtype: torch.dtype = torch.int32) -> int:
    """CRC-32 of ``t``'s values as ``dtype`` in C order, continuing ``crc``: format version 3's
    checks (symbols as int32, the 8-bit image as uint8 levels)."""
    return zlib.crc32(t.detach().to("cpu", dtype).contiguous().numpy().tobytes(), crc)


def _image_crc(x8: Tensor) -> int:
    return crc_of(x8 * 255, dtype=torch.uint8)  # exact: x8 holds k/255


# -- the weights' fingerprint ---------------------------------------------------------------------
def fingerprint_of(state_dict: dict[str, Tensor]) -> bytes:
    """The first 8 bytes of the SHA-256 of a canonical state_dict: for each key in sorted order, its
    UTF-8 name, shape, and values in C order as little-endian float64 (floating tensors) or int64
    (others). Float16, float32 and float64 copies of the same values have the same fingerprint, so a
    model keeps it when loaded from a float16 checkpoint or run in float64."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(key, str) or not isinstance(t, Tensor):
            raise LicError(f"state_dict entry {key!r} is not a named tensor")
        h.update(key.encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
        t = t.detach().to("cpu", torch.float64 if t.is_floating_point() else torch.int64).contiguous()
        h.update(t.numpy().astype("<f8" if t.is_floating_point() else "<i8", copy=False).tobytes())
    return h.digest()[:FINGERPRINT_BYTES]


_FINGERPRINTS: "weakref.WeakKeyDictionary[HPCM, tuple[tuple, bytes]]" = weakref.WeakKeyDictionary()


def fingerprint(model: HPCM) -> bytes:
    """:func:`fingerprint_of` the model's state_dict, cached until a tensor changes."""
    sd = model.state_dict()
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sd.values())
    cached = _FINGERPRINTS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, fingerprint_of(sd))
        _FINGERPRINTS[model] = cached
    return cached[1]


@contextmanager
def _bounded(what: str) -> Iterator[None]:
    """Memory exhaustion and numeric failures of the model become one-line :class:`LicError`s."""
    try:
        yield
    except LicError:
        raise
    except (MemoryError, RuntimeError) as e:
        if not allocation_failure(e):
            raise
        raise LicError(f"{what}: out of memory ({' '.join(str(e).split())[:160]})", detail=str(e)) from None
    except (ValueError, OverflowError) as e:
        raise LicError(f"{what}: these weights give latents that cannot be coded ({e})") from None


# -- coding -------------------------------------------------------------------------------------
@contextmanager
def _eval(model: HPCM) -> Iterator[None]:
    """Eval mode without autograd, and cuDNN restricted to deterministic algorithms: PyTorch
    documents that (transposed) convolutions on CUDA may otherwise pick nondeterministic ones,
    and an H200 decoded images unlike the encoder's on the same GPU (benchmarks/results/
    gpu_nvidia_h200_v3.md; whether this setting cures that is not yet measured)."""
    was, deterministic = model.training, torch.backends.cudnn.deterministic
    model.eval()
    torch.backends.cudnn.deterministic = True
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)
        torch.backends.cudnn.deterministic = deterministic


def z_tables(model: HPCM) -> GGTables:
    """One table per z channel from the learned ``scales_hyper`` (bounded like the likelihood)."""
    return GGTables(model.scales_hyper.detach().clamp_min(SCALE_BOUND).flatten())


def _channel_index(shape: torch.Size) -> Tensor:
    return torch.arange(shape[1]).view(1, -1, 1, 1).expand(shape)


RANGE_SLACK = 1e-3  # values this far outside [0, 1] pass (rounding); the model sees them as they are


def _check_image(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected an image tensor (1, 3, H, W), got {shape}")
    if not (1 <= x.shape[2] <= MAX_SIDE and 1 <= x.shape[3] <= MAX_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {x.shape[2]}x{x.shape[3]}")
    if not x.is_floating_point():
        raise ValueError(f"image tensor is {x.dtype}: expected floats in [0, 1] (divide 8-bit values by 255)")
    if not torch.isfinite(x).all():
        raise ValueError("image has NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(f"image values span {lo:g}..{hi:g}: expected [0, 1] (divide 8-bit values by 255)")
    return x.float()


def _kind(model: HPCM) -> str:
    return "exact" if isinstance(model, ExactHPCM) else "float"


def default_version(model: HPCM) -> int:
    """The format version ``model`` writes by default: 5 for an exact model, else 4."""
    return EXACT if isinstance(model, ExactHPCM) else VERSION


def encode(model: HPCM, x: Tensor, progress: Progress | None = None, version: int | None = None,
           max_pixels: int | None = None) -> Encoded:
    """Compress ``x`` (1, 3, H, W) in [0, 1], any H, W >= 1, with ``model`` (run in eval mode).
    ``progress(k)`` is called after each coding step k; ``version`` is 5 for an exact model (the
    default for one: the same symbols on every machine), for a float model 4 (its default: the
    checks and the weights' fingerprint) or 3 (the checks only); all store the decoder's checks,
    which costs one synthesis pass here. ``max_pixels`` refuses a larger padded grid."""
    version = default_version(model) if version is None else version
    if version not in WRITABLE:
        raise ValueError(f"this build writes format versions {list(WRITABLE)}, not {version} (older ones are read only)")
    if (version >= EXACT) != isinstance(model, ExactHPCM):
        raise ValueError(f"format version {version} is written by {'an exact' if version >= EXACT else 'a float'} model, "
                         f"this one is {_kind(model)} "
                         "(lic_core.models.exact.derive makes the exact model of a float one)")
    precision = {v: k for k, v in DTYPES.items()}.get(model.means_hyper.dtype)
    if precision is None:
        raise ValueError(f"a model codes in float32 or float64, not {model.means_hyper.dtype}")
    check_precision(version, precision)  # before the work, not after it
    x = _check_image(x).to(model.means_hyper.dtype)  # a float64 model codes in float64
    height, width = x.shape[2:]
    p = model.cfg.pad_multiple
    if max_pixels is not None:
        check_pixels((-(-height // p) * p, -(-width // p) * p), max_pixels, (height, width))
    with _eval(model), _bounded("encode"):
        y, z = model.analysis(pad_image(x, model.cfg.pad_multiple))
        z_q = torch.round(z - model.means_hyper)
        crc = [crc_of(z_q)]
        z_idx = _channel_index(z_q.shape)
        ztab = z_tables(model)
        streams = {"z": ztab.encode(z_q, z_idx)}
        bits = {"z": _bits(model, z_q, ztab.scales[z_idx.numpy()])}
        params = model.hyper_synthesis(z_q + model.means_hyper)
        ytab = GGTables.for_y()
        encoders = [ytab.encoder() for _ in range(3)]
        scale_bits = [0.0, 0.0, 0.0]

        def code_step(k: int, scales: Tensor, means: Tensor, mask: Tensor) -> Tensor:
            q = torch.round(y - means)  # what forward's eval quantizer computes
            s, sym = model.scale_of_step[k], q[:, mask]
            encoders[s].add(sym, ytab.indexes(scales[:, mask], INDEX_RULES[version]))
            crc[0] = crc_of(sym, crc[0])
            scale_bits[s] += _bits(model, sym, scales[:, mask])
            if progress:
                progress(k)
            return q + means

        y_hat = model.context_model(params, code_step)["y_hat"]
        # the checks compare the decoder with this encoder's own image: one synthesis pass more
        x8 = to_8bit(model.synthesis(y_hat)[:, :, :height, :width])
        checks = (crc[0], _image_crc(x8))
        for s, enc in enumerate(encoders):
            streams[f"s{s + 1}"] = enc.flush()
            bits[f"s{s + 1}"] = scale_bits[s]
    data, header_bytes = pack(model.cfg, height, width, streams, version, checks, precision,
                              fingerprint(model) if version >= NAMED else None)
    sizes = {k: len(v) for k, v in streams.items()}
    return Encoded(data, sizes, header_bytes, height, width, bits, x8)


def _bits(model: HPCM, symbols: Tensor, scales: Tensor | np.ndarray) -> float:
    """The estimated bits of ``symbols``, in the model's float precision: an exact model's float64
    symbols and scales are estimated as its float model's would be (float64 costs twice as much)."""
    dtype = model.means_hyper.dtype
    lik = model.gg.likelihood(symbols.to(dtype), torch.as_tensor(scales, device=symbols.device).to(dtype))
    return float(-torch.log2(lik.double()).sum())


def compress(model: HPCM, x: Tensor) -> bytes:
    """``encode(model, x).data``."""
    return encode(model, x).data


def decompress(data: bytes, model: HPCM, progress: Progress | None = None,
               max_pixels: int = MAX_PIXELS) -> Tensor:
    """Decode a bitstream to (1, 3, H, W) with 8-bit values k/255 with ``model``, which must have
    the header's config (the seed aside) and, from format version 4, the header's weights
    fingerprint (:class:`BitstreamError` naming the fingerprint the file needs). Images whose padded
    grid is over ``max_pixels`` are refused, and so are stream lengths too short for the image,
    before the context model runs. Every stream must be used exactly: its bytes must be the
    encoding of the symbols decoded from it. From format version 3 the symbols must also match the
    encoder's (else :class:`BitstreamError`: another device or other weights), and an image that
    differs from the encoder's although they do raises a :class:`ReconstructionWarning`."""
    if not isinstance(model, HPCM):
        raise TypeError(f"decompress needs the model (weights) the file was coded with, got {type(model).__name__}")
    header = read_header(data, max_pixels)
    model = check_model(model, header)
    if model.means_hyper.dtype != DTYPES[header.precision]:  # decode in the file's precision
        model = copy.deepcopy(model).to(DTYPES[header.precision])
    try:
        return _decode(data, header, model, progress)
    except BitstreamError as e:  # a file that does not name its weights cannot tell them apart from damage
        if header.fingerprint is not None or "weights" in str(e):  # named, or the cause already given
            raise
        raise BitstreamError(f"{e}; or these are not the weights it was coded with (format version "
                             f"{header.version} files do not name theirs)") from None


def _decode(data: bytes, header: Header, model: HPCM, progress: Progress | None) -> Tensor:
    """:func:`decompress` after its checks of the header and the model."""
    streams = split_streams(bytes(data), header)
    hp, wp = header.padded
    with _eval(model), _bounded("decode"):
        z_shape = torch.Size((1, model.cfg.N, hp // 64, wp // 64))
        ztab, ytab = z_tables(model), GGTables.for_y()
        masks = model.step_masks(hp // 16, wp // 16)
        counts = {"z": z_shape.numel()} | {
            f"s{i + 1}": int(masks[[k for k, s in enumerate(model.scale_of_step) if s == i]].sum()) for i in range(3)}
        check_stream_sizes(header, counts, {"z": ztab, "s1": ytab, "s2": ytab, "s3": ytab})
        dev = model.means_hyper.device  # the coder runs on the CPU; the model anywhere
        zdec = ztab.decoder(streams["z"], counts["z"])
        z_sym = zdec.next(_channel_index(z_shape))
        crc = [crc_of(z_sym)]
        z_q = z_sym.to(dev, model.means_hyper.dtype)
        zdec.finish("z")
        params = model.hyper_synthesis(z_q + model.means_hyper)
        decoders = [ytab.decoder(streams[f"s{i + 1}"], counts[f"s{i + 1}"]) for i in range(3)]

        def code_step(k: int, scales: Tensor, means: Tensor, mask: Tensor) -> Tensor:
            q = torch.zeros_like(means)
            idx = ytab.indexes(scales[:, mask], header.index_rule)
            sym = decoders[model.scale_of_step[k]].next(idx)
            crc[0] = crc_of(sym, crc[0])
            q[:, mask] = sym.to(q.device, q.dtype)
            if progress:
                progress(k)
            return q + means

        y_hat = model.context_model(params, code_step)["y_hat"]
        if header.checks and crc[0] != header.checks[0]:
            raise BitstreamError("decoded symbols differ from the encoder's (symbols CRC-32): this model computes "
                                 "other scales than the encoder's did (other weights, or another kind of device: "
                                 "decode on the device type that encoded), or the streams were edited")
        for i, dec in enumerate(decoders):
            dec.finish(f"s{i + 1}")
        x_hat = model.synthesis(y_hat)
    if not torch.isfinite(x_hat).all():
        raise BitstreamError("decoding gave non-finite values: the streams do not match this model")
    x8 = to_8bit(x_hat[:, :, : header.height, : header.width])
    if header.checks and _image_crc(x8) != header.checks[1]:
        warnings.warn(ReconstructionWarning(
            "decoded image differs from the encoder's (image CRC-32) although every symbol matched: the "
            "synthesis transform rounds differently here (another kind of device: expect about 1 level in 255) "
            "or the header's image size was edited"))
    return x8


def check_stream_sizes(header: Header, counts: dict[str, int], tables: dict[str, GGTables]) -> None:
    """Refuse a header whose image needs more bytes than its streams hold: every symbol costs at
    least its table's cheapest code, and an rANS stream ends with its 64-bit state."""
    for k, n in counts.items():
        floor = n * tables[k].min_bits() - 64
        if 8 * header.stream_bytes[k] < floor:
            raise BitstreamError(f"image size {header.width}x{header.height} needs at least {floor / 8:,.0f} "
                                 f"bytes in stream {k}, the file holds {header.stream_bytes[k]:,}")


def check_model(model: HPCM, header: Header) -> HPCM:
    """``model`` if it can decode the file of ``header``: exact for version 5 and float before,
    the same config (the init seed aside) and, from version 4, the same weights fingerprint; else
    a one-line :class:`BitstreamError`."""
    if (header.version >= EXACT) != isinstance(model, ExactHPCM):
        need = "an exact model (lic_core.models.exact.derive)" if header.version >= EXACT else "a float model"
        raise BitstreamError(f"format version {header.version} files decode with {need}; the given model is "
                             f"{_kind(model)}")
    if replace(model.cfg, seed=0) != replace(header.config, seed=0):
        raise BitstreamError(
            f"bitstream was written by HPCM config {config_json(header.config).decode()}, "
            f"the given model is {config_json(model.cfg).decode()}"
        )
    if header.fingerprint is not None and fingerprint(model) != header.fingerprint:
        raise BitstreamError(f"this file needs the weights with fingerprint {header.fingerprint.hex()}; "
                             f"the given model's are {fingerprint(model).hex()}")
    return model


def reconstruct(model: HPCM, x: Tensor) -> Tensor:
    """The eval-mode forward reconstruction the decoder must reproduce: pad, forward, clamp,
    8-bit quantize, crop."""
    x = _check_image(x).to(model.means_hyper.dtype)  # a float64 model codes in float64
    with _eval(model):
        x_hat = model(pad_image(x, model.cfg.pad_multiple))["x_hat"]
    return to_8bit(x_hat[:, :, : x.shape[2], : x.shape[3]])


def synthetic_weights(model: HPCM, factor: float = 0.8) -> HPCM:
    """Deterministic weights by the conformance rule (reference/hpcm/CONFORMANCE.md section 2)
    applied to our tensor names, for codec tests and benchmarks without a trained checkpoint:
    the seeded default init codes nearly every y symbol as 0, these give non-trivial symbols
    (factor 0.8: about a quarter non-zero) and a few escapes."""
    with torch.no_grad():
        for key, p in model.named_parameters():
            r = torch.randn(p.shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
            if key.endswith("scales_hyper"):
                p.copy_(0.5 + 0.5 * r.abs())
            elif key.endswith("means_hyper"):
                p.copy_(0.1 * r)
            elif key.startswith("quant."):
                p.copy_(1 + 0.1 * r)
            elif p.dim() >= 2:
                p.copy_(r * (factor / math.sqrt(p.numel() / p.shape[0])))
            else:
                p.copy_(0.01 * r)
    return model.eval()
