"""HPCM bitstreams: image -> bytes -> image with CompressAI's rANS coder.

The encoder and the decoder both run :meth:`HPCM.context_model`, the loop ``forward`` runs, with a
``code_step`` that writes or reads each step's symbols. The decoder therefore recomputes exactly
what the eval-mode forward computed: the decoded image is its reconstruction, clamped to [0, 1]
and quantized to 8 bits.

File layout (big-endian)::

    magic "HPCM\\x89"  | version u8 (1: y tables picked next-up, 2: nearest) | config length u16 | config (compact JSON) |
    height u32 | width u32 | stream lengths 4 x u32 (z, s1, s2, s3) | CRC-32 u32 | streams

The CRC covers every other byte of the file, so corruption is reported before any decoding.
y is written as three rANS streams, one per scale of the schedule (s1, s2, s3), so the actual
bytes of each scale are known.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .entropy import SCALE_BOUND, GGTables
from .errors import BitstreamError, ConfigError
from .models.hpcm import CONFIGS, HPCM, HPCMConfig, build, count_parameters

MAGIC = b"HPCM\x89"
# Format version -> how a y scale picks its coding table (entropy.scale_indexes). Version 1 is the
# spec's CompressAI rule; version 2 (written by default) the nearest table in log scale.
INDEX_RULES = {1: "next-up", 2: "nearest"}
VERSION = 2
STREAMS = ("z", "s1", "s2", "s3")
_FIXED = struct.Struct(">II4II")  # height, width, 4 stream lengths, CRC-32
_PREFIX = struct.Struct(f">{len(MAGIC)}sBH")  # magic, version, config length
MAX_SIDE = 1 << 16  # pixels per side this format accepts
# Decoders refuse larger images unless asked (``max_pixels``): a 4096x4096 header on a 27 kB file
# took 19-35 s and 2.5 GB to decode. 2**22 pixels is 2048x2048 (a 3840x2160 frame needs the flag).
MAX_PIXELS = 1 << 22
MAX_MODEL_PARAMETERS = 200_000_000  # a header-built model beyond this is refused (HPCM-Large: ~90M)
MAX_CONFIG_INT = 4096  # any integer of a header's model config (guards memory on decode)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Header:
    """What :func:`read_header` finds at the start of a bitstream."""

    config: HPCMConfig
    height: int
    width: int
    stream_bytes: dict[str, int]
    header_bytes: int
    index_rule: str = INDEX_RULES[VERSION]


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

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, over the original (unpadded) pixels."""
        return 8 * len(self.data) / (self.height * self.width)


# -- format -------------------------------------------------------------------------------------
def config_json(cfg: HPCMConfig) -> bytes:
    """Compact JSON of ``cfg``: its name plus the fields that differ from that named config."""
    ref = asdict(CONFIGS[cfg.name]) if cfg.name in CONFIGS else {}
    d = {k: v for k, v in asdict(cfg).items() if k == "name" or ref.get(k) != v}
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def parse_config(raw: bytes) -> HPCMConfig:
    """Inverse of :func:`config_json`; anything invalid is a :class:`BitstreamError`."""
    try:
        d = json.loads(raw.decode())
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("not an object with a 'name'")
        for v in d.values():
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) > MAX_CONFIG_INT:
                    raise ValueError(f"value {x} out of range")
        if d["name"] in CONFIGS:
            return HPCMConfig.from_dict({**asdict(CONFIGS[d["name"]]), **d})
        missing = sorted({f.name for f in fields(HPCMConfig)} - set(d))
        if missing:  # a config without a known name is written in full
            raise ValueError(f"config {d['name']!r} is not a known one and lacks {missing[0]!r}")
        return HPCMConfig.from_dict(d)
    except (ValueError, TypeError, ConfigError) as e:  # JSON and unicode errors are ValueErrors
        raise BitstreamError(f"bad model config in header: {e}") from None


def pack(cfg: HPCMConfig, height: int, width: int, streams: dict[str, bytes],
         version: int = VERSION) -> tuple[bytes, int]:
    """The file bytes and the header size."""
    raw = config_json(cfg)
    lengths = [len(streams[k]) for k in STREAMS]
    body = b"".join(streams[k] for k in STREAMS)
    prefix = _PREFIX.pack(MAGIC, version, len(raw)) + raw + _FIXED.pack(height, width, *lengths, 0)[:-4]
    crc = zlib.crc32(body, zlib.crc32(prefix))
    return prefix + struct.pack(">I", crc) + body, len(prefix) + 4


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Parse and check a bitstream's header (magic, version, CRC, lengths, config, size; at most
    ``max_pixels`` pixels).

    Every defect raises :class:`BitstreamError` saying what is wrong."""
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise BitstreamError(f"truncated: {len(data)} bytes is shorter than the {_PREFIX.size}-byte header start")
    magic, version, n_cfg = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not an HPCM bitstream (starts with {magic!r}, expected {MAGIC!r})")
    if version not in INDEX_RULES:
        raise BitstreamError(f"unsupported format version {version} (this build reads versions "
                             f"{', '.join(map(str, INDEX_RULES))})")
    size = _PREFIX.size + n_cfg + _FIXED.size
    if len(data) < size:
        raise BitstreamError(f"truncated: {len(data)} bytes, the header alone needs {size}")
    height, width, *lengths, crc = _FIXED.unpack_from(data, _PREFIX.size + n_cfg)
    total = size + sum(lengths)
    if len(data) != total:
        what = "truncated" if len(data) < total else f"{len(data) - total} trailing bytes"
        raise BitstreamError(f"{what}: header announces {total} bytes, got {len(data)}")
    if zlib.crc32(data[size:], zlib.crc32(data[: size - 4])) != crc:
        raise BitstreamError("CRC-32 mismatch: the bitstream is corrupted")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise BitstreamError(f"image size {height}x{width} out of range 1..{MAX_SIDE}")
    if height * width > max_pixels:
        raise BitstreamError(f"image size {width}x{height} is over {max_pixels:,} pixels "
                             f"(raise max_pixels, --max-pixels, to decode it)")
    cfg = parse_config(data[_PREFIX.size : _PREFIX.size + n_cfg])
    return Header(cfg, height, width, dict(zip(STREAMS, lengths)), size, INDEX_RULES[version])


def split_streams(data: bytes, header: Header) -> dict[str, bytes]:
    out, at = {}, header.header_bytes
    for k in STREAMS:
        out[k] = data[at : at + header.stream_bytes[k]]
        at += header.stream_bytes[k]
    return out


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


# -- coding -------------------------------------------------------------------------------------
@contextmanager
def _eval(model: HPCM) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def z_tables(model: HPCM) -> GGTables:
    """One table per z channel from the learned ``scales_hyper`` (bounded like the likelihood)."""
    return GGTables(model.scales_hyper.detach().clamp_min(SCALE_BOUND).flatten())


def _channel_index(shape: torch.Size) -> Tensor:
    return torch.arange(shape[1]).view(1, -1, 1, 1).expand(shape)


def _check_image(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected an image tensor (1, 3, H, W), got {shape}")
    if not (1 <= x.shape[2] <= MAX_SIDE and 1 <= x.shape[3] <= MAX_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {x.shape[2]}x{x.shape[3]}")
    if not torch.isfinite(x).all():
        raise ValueError("image has NaN or inf values")
    return x.float()


def encode(model: HPCM, x: Tensor, progress: Progress | None = None, version: int = VERSION) -> Encoded:
    """Compress ``x`` (1, 3, H, W) in [0, 1], any H, W >= 1, with ``model`` (run in eval mode).
    ``progress(k)`` is called after each coding step k; ``version`` 1 picks y tables by the spec's
    next-up rule, 2 (default) by the nearest scale (see :data:`INDEX_RULES`)."""
    if version not in INDEX_RULES:
        raise ValueError(f"format version must be one of {sorted(INDEX_RULES)}, got {version}")
    x = _check_image(x)
    height, width = x.shape[2:]
    with _eval(model):
        y, z = model.analysis(pad_image(x, model.cfg.pad_multiple))
        z_q = torch.round(z - model.means_hyper)
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
            scale_bits[s] += _bits(model, sym, scales[:, mask])
            if progress:
                progress(k)
            return q + means

        model.context_model(params, code_step)
    for s, enc in enumerate(encoders):
        streams[f"s{s + 1}"] = enc.flush()
        bits[f"s{s + 1}"] = scale_bits[s]
    data, header_bytes = pack(model.cfg, height, width, streams, version)
    sizes = {k: len(v) for k, v in streams.items()}
    return Encoded(data, sizes, header_bytes, height, width, bits)


def _bits(model: HPCM, symbols: Tensor, scales: Tensor | np.ndarray) -> float:
    lik = model.gg.likelihood(symbols, torch.as_tensor(scales, dtype=symbols.dtype, device=symbols.device))
    return float(-torch.log2(lik.double()).sum())


def compress(model: HPCM, x: Tensor) -> bytes:
    """``encode(model, x).data``."""
    return encode(model, x).data


def decompress(data: bytes, model: HPCM | None = None, progress: Progress | None = None,
               max_pixels: int = MAX_PIXELS) -> Tensor:
    """Decode a bitstream to (1, 3, H, W) with 8-bit values k/255.

    ``model`` None builds the header's config with its seeded default init; a given model must
    have the header's config (the seed aside). Images over ``max_pixels`` are refused. Every
    stream must be used exactly: its bytes must be the encoding of the symbols decoded from it."""
    header = read_header(data, max_pixels)
    model = model_for(header) if model is None else _check_model(model, header)
    streams = split_streams(bytes(data), header)
    p = model.cfg.pad_multiple
    hp, wp = -(-header.height // p) * p, -(-header.width // p) * p
    with _eval(model):
        z_shape = torch.Size((1, model.cfg.N, hp // 64, wp // 64))
        ztab, ytab = z_tables(model), GGTables.for_y()
        masks = model.step_masks(hp // 16, wp // 16)
        counts = {"z": z_shape.numel()} | {
            f"s{i + 1}": int(masks[[k for k, s in enumerate(model.scale_of_step) if s == i]].sum()) for i in range(3)}
        check_stream_sizes(header, counts, {"z": ztab, "s1": ytab, "s2": ytab, "s3": ytab})
        dev = model.means_hyper.device  # the coder runs on the CPU; the model anywhere
        zdec = ztab.decoder(streams["z"], counts["z"])
        z_q = zdec.next(_channel_index(z_shape)).float().to(dev)
        zdec.finish("z")
        params = model.hyper_synthesis(z_q + model.means_hyper)
        decoders = [ytab.decoder(streams[f"s{i + 1}"], counts[f"s{i + 1}"]) for i in range(3)]

        def code_step(k: int, scales: Tensor, means: Tensor, mask: Tensor) -> Tensor:
            q = torch.zeros_like(means)
            idx = ytab.indexes(scales[:, mask], header.index_rule)
            q[:, mask] = decoders[model.scale_of_step[k]].next(idx).float().to(q.device)
            if progress:
                progress(k)
            return q + means

        y_hat = model.context_model(params, code_step)["y_hat"]
        for i, dec in enumerate(decoders):
            dec.finish(f"s{i + 1}")
        x_hat = model.synthesis(y_hat)
    if not torch.isfinite(x_hat).all():
        raise BitstreamError("decoding gave non-finite values: the streams do not match this model")
    return to_8bit(x_hat[:, :, : header.height, : header.width])


def model_for(header: Header) -> HPCM:
    """The header's model with its seeded default init; sized first on the meta device, so that a
    crafted config cannot make it allocate gigabytes."""
    with torch.device("meta"):
        n = count_parameters(HPCM(header.config))
    if n > MAX_MODEL_PARAMETERS:
        raise BitstreamError(f"header's model config has {n:,} parameters, over {MAX_MODEL_PARAMETERS:,}")
    return build(header.config)


def check_stream_sizes(header: Header, counts: dict[str, int], tables: dict[str, GGTables]) -> None:
    """Refuse a header whose image needs more bytes than its streams hold: every symbol costs at
    least its table's cheapest code, and an rANS stream ends with its 64-bit state."""
    for k, n in counts.items():
        floor = n * tables[k].min_bits() - 64
        if 8 * header.stream_bytes[k] < floor:
            raise BitstreamError(f"image size {header.width}x{header.height} needs at least {floor / 8:,.0f} "
                                 f"bytes in stream {k}, the file holds {header.stream_bytes[k]:,}")


def _check_model(model: HPCM, header: Header) -> HPCM:
    if replace(model.cfg, seed=0) != replace(header.config, seed=0):
        raise BitstreamError(
            f"bitstream was written by HPCM config {config_json(header.config).decode()}, "
            f"the given model is {config_json(model.cfg).decode()}"
        )
    return model


def reconstruct(model: HPCM, x: Tensor) -> Tensor:
    """The eval-mode forward reconstruction the decoder must reproduce: pad, forward, clamp,
    8-bit quantize, crop."""
    x = _check_image(x)
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
