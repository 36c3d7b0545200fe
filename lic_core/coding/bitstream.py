"""The HPCM bitstream file format: header, CRC and stream layout (no coding: :mod:`lic_core.coding.codec`).

File layout (big-endian)::

    magic "HPCM\\x89"  | version u8 (1: y tables picked next-up, 2-5: nearest) | config length u16 |
    config (compact JSON) | height u32 | width u32 | stream lengths 4 x u32 (z, s1, s2, s3) |
    [from version 3: symbols CRC-32 u32 | image CRC-32 u32 | coding precision u8 (32 or 64)] |
    [from version 4: weights fingerprint 8 bytes] | CRC-32 u32 | streams

Version 5 has version 4's layout; its symbols were coded with an exact entropy-parameter path
(:mod:`lic_core.models.exact`): the scales and means, and so the symbols, are the same bits on
every CPU and, by design, on every GPU (GPU <-> CPU not yet measured); the nearest table is picked
against edges computed exactly. Its fingerprint is the exact model's (integer weights and grids),
which only an exact model has.

The last CRC covers every other byte of the file, so corruption is reported before any decoding. It
is not a signature: a crafted file passes it, so every header field is range-checked here (the model
config by :class:`~lic_core.models.hpcm.HPCMConfig`, the image size, padded to the config's
multiple, against ``max_pixels``). The header's config never builds a model: the decoder's model
comes from trusted weights, and its config must equal the header's.

Version 4 names the weights: the first 8 bytes of the SHA-256 of their canonical state_dict
(:func:`lic_core.coding.codec.fingerprint`), by which ``decompress`` finds a shipped model and
refuses other weights before decoding anything. Versions 1 and 2 are read, no longer written.

Version 3 adds what the decoder checks its result against: a CRC-32 of every coded symbol (z, then
y in coding order, as int32) and one of the encoder's own 8-bit reconstruction, and the precision
the model ran in (the decoder must use the same). A learned codec is not bit-exact across devices: a
scale computed a little differently picks another coding table and the symbols go wrong, and the
synthesis transform rounds differently (see :mod:`lic_core.coding.codec`).
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict, dataclass, fields

from lic_core.errors import BitstreamError, ConfigError
from lic_core.models.hpcm import CONFIGS, HPCMConfig

MAGIC = b"HPCM\x89"
# Format version -> how a y scale picks its coding table (entropy.scale_indexes). Version 1 is the
# spec's CompressAI rule; versions 2 and 3 the nearest table in log scale (3, written by default,
# also carries the decoder's checks).
INDEX_RULES = {1: "next-up", 2: "nearest", 3: "nearest", 4: "nearest", 5: "exact"}
VERSION = 4  # what a float model writes by default; an exact model writes EXACT
WRITABLE = (3, 4, 5)  # versions this build writes (it reads every version of INDEX_RULES)
CHECKED = 3  # first version that carries the decoder's checks
NAMED = 4  # first version that carries the weights' fingerprint
EXACT = 5  # first version coded with the exact entropy-parameter path
FINGERPRINT_BYTES = 8
STREAMS = ("z", "s1", "s2", "s3")
_SIZES = struct.Struct(">II4I")  # height, width, 4 stream lengths
_CHECKS = struct.Struct(">IIB")  # CRC-32 of the symbols, of the encoder's 8-bit image; precision bits
PRECISIONS = (32, 64)  # float32, float64
_CRC = struct.Struct(">I")
_PREFIX = struct.Struct(f">{len(MAGIC)}sBH")  # magic, version, config length
MAX_SIDE = 1 << 16  # pixels per side this format accepts
# Decoders refuse larger images unless asked (``max_pixels``): a 4096x4096 header on a 27 kB file
# took 19-35 s and 2.5 GB to decode. 2**22 pixels is 2048x2048 (a 3840x2160 frame needs the flag).
MAX_PIXELS = 1 << 22
MAX_CONFIG_INT = 4096  # any integer of a header's model config
MAX_NAME = 64  # characters of a header config's name


@dataclass(frozen=True)
class Header:
    """What :func:`read_header` finds at the start of a bitstream."""

    config: HPCMConfig
    height: int
    width: int
    stream_bytes: dict[str, int]
    header_bytes: int
    index_rule: str = INDEX_RULES[VERSION]
    checks: tuple[int, int] | None = None  # version 3: CRC-32 of the symbols, of the image
    precision: int = 32  # bits of the floats the model coded in (version 3; earlier: 32)
    fingerprint: bytes | None = None  # version 4: the weights' fingerprint
    version: int = VERSION

    @property
    def padded(self) -> tuple[int, int]:
        """The coded grid: height and width padded to the config's multiple."""
        p = self.config.pad_multiple
        return -(-self.height // p) * p, -(-self.width // p) * p


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
        if len(d["name"]) > MAX_NAME or not d["name"].isprintable():
            raise ValueError(f"name of over {MAX_NAME} characters or with control characters")
        if not isinstance(d.get("aligned_s2_gather", False), bool):
            raise ValueError("aligned_s2_gather is not true or false")
        for v in d.values():
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, (dict, list)):
                    raise ValueError("nested value")
                if isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) > MAX_CONFIG_INT:
                    raise ValueError(f"value {x} out of range")
        if d["name"] in CONFIGS:
            return HPCMConfig.from_dict({**asdict(CONFIGS[d["name"]]), **d})
        missing = sorted({f.name for f in fields(HPCMConfig)} - set(d))
        if missing:  # a config without a known name is written in full
            raise ValueError(f"config {d['name']!r} is not a known one and lacks {missing[0]!r}")
        return HPCMConfig.from_dict(d)
    except RecursionError:
        raise BitstreamError("bad model config in header: JSON nested too deeply") from None
    except (ValueError, TypeError, ConfigError) as e:  # JSON and unicode errors are ValueErrors
        raise BitstreamError(f"bad model config in header: {e}") from None


def check_precision(version: int, precision: int) -> None:
    """Raise ValueError unless format ``version`` can record ``precision``-bit coding."""
    if precision not in PRECISIONS or (precision != 32 and version < CHECKED):
        raise ValueError(f"format version {version} cannot record {precision}-bit coding")


def pack(cfg: HPCMConfig, height: int, width: int, streams: dict[str, bytes], version: int = VERSION,
         checks: tuple[int, int] | None = None, precision: int = 32,
         fingerprint: bytes | None = None) -> tuple[bytes, int]:
    """The file bytes and the header size of a version in :data:`WRITABLE`: ``checks`` (symbols and
    image CRC-32) and ``precision``, and from version 4 the weights' ``fingerprint``."""
    if version not in WRITABLE:
        raise ValueError(f"this build writes format versions {', '.join(map(str, WRITABLE))}, not {version} "
                         "(older versions are read only)")
    if checks is None:
        raise ValueError(f"format version {version} needs checks")
    if (fingerprint is not None) != (version >= NAMED) or (fingerprint is not None and len(fingerprint) != FINGERPRINT_BYTES):
        raise ValueError(f"format version {version} {'needs' if version >= NAMED else 'has no'} "
                         f"a {FINGERPRINT_BYTES}-byte weights fingerprint")
    check_precision(version, precision)
    raw = config_json(cfg)
    lengths = [len(streams[k]) for k in STREAMS]
    body = b"".join(streams[k] for k in STREAMS)
    prefix = (_PREFIX.pack(MAGIC, version, len(raw)) + raw + _SIZES.pack(height, width, *lengths)
              + _CHECKS.pack(*checks, precision) + (fingerprint or b""))
    crc = zlib.crc32(body, zlib.crc32(prefix))
    return prefix + _CRC.pack(crc) + body, len(prefix) + _CRC.size


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Parse and check a bitstream's header (magic, version, CRC, lengths, config, size: at most
    ``max_pixels`` pixels in the padded grid the decoder allocates).

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
    at = _PREFIX.size + n_cfg
    size = (at + _SIZES.size + (_CHECKS.size if version >= CHECKED else 0)
            + (FINGERPRINT_BYTES if version >= NAMED else 0) + _CRC.size)
    if len(data) < size:
        raise BitstreamError(f"truncated: {len(data)} bytes, the header alone needs {size}")
    height, width, *lengths = _SIZES.unpack_from(data, at)
    *checks, precision = _CHECKS.unpack_from(data, at + _SIZES.size) if version >= CHECKED else (32,)
    fingerprint = data[size - _CRC.size - FINGERPRINT_BYTES : size - _CRC.size] if version >= NAMED else None
    (crc,) = _CRC.unpack_from(data, size - _CRC.size)
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
    if precision not in PRECISIONS:
        raise BitstreamError(f"coding precision {precision} bits is not one of {PRECISIONS}")
    cfg = parse_config(data[_PREFIX.size : _PREFIX.size + n_cfg])
    header = Header(cfg, height, width, dict(zip(STREAMS, lengths)), size, INDEX_RULES[version],
                    tuple(checks) or None, precision, fingerprint, version)
    check_pixels(header.padded, max_pixels, (height, width))
    return header


def check_pixels(padded: tuple[int, int], max_pixels: int, size: tuple[int, int] | None = None) -> None:
    """Refuse a padded coding grid of over ``max_pixels`` pixels (what the coder allocates),
    naming the image ``size`` it pads."""
    hp, wp = padded
    if hp * wp > max_pixels:
        h, w = size or padded
        raise BitstreamError(f"image size {w}x{h} pads to {wp}x{hp} = {wp * hp:,} pixels, over {max_pixels:,} "
                             f"(raise max_pixels, --max-pixels, to code it)")


def split_streams(data: bytes, header: Header) -> dict[str, bytes]:
    out, at = {}, header.header_bytes
    for k in STREAMS:
        out[k] = data[at : at + header.stream_bytes[k]]
        at += header.stream_bytes[k]
    return out
