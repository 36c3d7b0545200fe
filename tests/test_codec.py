"""Real bitstreams: round trips (decoded == eval forward reconstruction, exactly), file bytes vs
estimated bits, the header, and bad input (truncated, corrupted, foreign bytes)."""
from __future__ import annotations

import random
import struct
import warnings
import zlib
from dataclasses import replace

import pytest
import torch

from lic_core.coding import bitstream, codec
from lic_core.coding.codec import synthetic_weights
from lic_core.errors import BitstreamError, ReconstructionWarning
from lic_core.imageio import load_image
from lic_core.models.hpcm import CONFIGS, hpcm
from lic_core.paths import REPO

OLD_FILES = REPO / "tests" / "data" / "bitstreams"  # written by the last build that wrote versions 1 and 2


@pytest.fixture(scope="module")
def tiny():
    return synthetic_weights(hpcm("tiny"))


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth content plus noise, 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")
    x = (base + 0.1 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)
    return (x * 255).round() / 255


def check_round_trip(model, x: torch.Tensor) -> codec.Encoded:
    enc = codec.encode(model, x)
    out = codec.decompress(enc.data, model)
    assert out.shape == x.shape
    assert torch.equal(out, codec.reconstruct(model, x))  # bit-exact, not approximately
    assert torch.equal(out, (out * 255).round() / 255)
    hdr = bitstream.read_header(enc.data)
    assert (hdr.height, hdr.width, hdr.config) == (x.shape[2], x.shape[3], model.cfg)
    assert hdr.stream_bytes == enc.stream_bytes and hdr.header_bytes == enc.header_bytes
    assert len(enc.data) == enc.header_bytes + sum(enc.stream_bytes.values())
    assert enc.bpp == 8 * len(enc.data) / (x.shape[2] * x.shape[3])  # original pixels
    for k, nbytes in enc.stream_bytes.items():  # actual bytes vs -log2 likelihoods
        # Below the estimate is fine: symbols at the 1e-9 likelihood floor are counted as 29.9
        # bits there but cost less through the coder's escape (CONFORMANCE.md section 7).
        est = enc.estimated_bits[k] / 8
        assert 0.9 * est <= nbytes <= 1.015 * est + 12, (k, nbytes, est)
    return enc


@pytest.mark.parametrize("h,w", [(1, 1), (17, 300), (255, 257)])
def test_round_trip_sizes(tiny, h, w):
    enc = check_round_trip(tiny, image(h, w, seed=h))
    assert all(enc.stream_bytes[k] > 40 for k in ("s1", "s2", "s3"))  # real symbols were coded


def test_estimated_bits_are_forward_rates(tiny):
    """The encoder's per-stream estimate equals forward's likelihoods split by scale_masks."""
    x = image(40, 60, seed=3)
    enc = codec.encode(tiny, x)
    with torch.no_grad():
        out = tiny(codec.pad_image(x, tiny.cfg.pad_multiple))
    y_bits = -torch.log2(out["likelihoods"]["y"].double())
    for s in range(3):
        ref = float(y_bits[0][out["scale_masks"][s]].sum())
        assert enc.estimated_bits[f"s{s + 1}"] == pytest.approx(ref, rel=1e-6)
    z_ref = float(-torch.log2(out["likelihoods"]["z"].double()).sum())
    assert enc.estimated_bits["z"] == pytest.approx(z_ref, rel=1e-6)


def test_kodak_image_round_trip(tiny, kodak_dir):
    x, notes = load_image(kodak_dir / "kodim23.png")
    assert notes == [] and x.shape == (1, 3, 512, 768)
    enc = check_round_trip(tiny, x)
    est = sum(enc.estimated_bits.values()) / 8
    assert abs(sum(enc.stream_bytes.values()) - est) <= 0.01 * est + 32


def test_a_header_never_builds_a_model():
    """decompress needs the model: the header's config alone builds nothing."""
    data = codec.compress(hpcm("tiny"), image(9, 11, seed=9))
    with pytest.raises(TypeError, match="needs the model"):
        codec.decompress(data, None)
    assert not hasattr(codec, "model_for")


def test_version_4_names_its_weights(tiny):
    """The header's fingerprint is that of the coding weights, the same in float16/32/64; other
    weights are refused before any decoding, naming the fingerprint the file needs."""
    x = image(12, 13, seed=4)
    data = codec.compress(tiny, x)
    hdr = bitstream.read_header(data)
    assert hdr.version == 4 and hdr.fingerprint == codec.fingerprint(tiny)
    assert len(hdr.fingerprint) == bitstream.FINGERPRINT_BYTES
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny.state_dict().items()}
    assert codec.fingerprint_of(half) != hdr.fingerprint  # rounded values are other weights
    assert codec.fingerprint(copy_double(tiny)) == hdr.fingerprint
    other = synthetic_weights(hpcm("tiny"), factor=0.79)
    with pytest.raises(BitstreamError, match=f"needs the weights with fingerprint {hdr.fingerprint.hex()}"):
        codec.decompress(data, other)
    with torch.no_grad():  # the cache follows in-place edits
        model = synthetic_weights(hpcm("tiny"))
        before = codec.fingerprint(model)
        model.g_s[-1].bias += 1
    assert codec.fingerprint(model) != before


def copy_double(model):
    import copy

    return copy.deepcopy(model).double()


def test_encode_restores_training_mode(tiny):
    model = hpcm("tiny").train()
    codec.encode(model, image(5, 5))
    assert model.training


def test_config_json_is_compact_and_round_trips():
    assert bitstream.config_json(CONFIGS["tiny"]) == b'{"name":"tiny"}'
    custom = replace(CONFIGS["tiny"], M=32, aligned_s2_gather=True)
    raw = bitstream.config_json(custom)
    assert len(raw) < 80 and bitstream.parse_config(raw) == custom


def test_model_config_mismatch(tiny):
    data = codec.compress(tiny, image(3, 3))
    with pytest.raises(BitstreamError, match="config"):
        codec.decompress(data, hpcm("tiny", M=32, N=32))


def test_bad_images(tiny):
    for bad in (torch.rand(3, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(2, 3, 8, 8), torch.zeros(1, 3, 0, 4)):
        with pytest.raises(ValueError):
            codec.encode(tiny, bad)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(tiny, torch.full((1, 3, 4, 4), float("nan")))


# -- bad input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stream(tiny) -> bytes:
    return codec.compress(tiny, image(20, 30, seed=20))


def forge(stream: bytes, version: int | None = None, config: bytes | None = None, height: int | None = None,
          streams: dict[str, bytes] | None = None, width: int | None = None,
          checks: tuple[int, int] | None = None, precision: int | None = None,
          fingerprint: bytes | None = None) -> bytes:
    """Rebuild a bitstream with edited fields and a valid CRC, so the edit gets past the CRC."""
    hdr = bitstream.read_header(stream)
    version = hdr.version if version is None else version
    streams = {**bitstream.split_streams(stream, hdr), **(streams or {})}
    raw = bitstream.config_json(hdr.config) if config is None else config
    body = b"".join(streams[k] for k in bitstream.STREAMS)
    prefix = bitstream._PREFIX.pack(bitstream.MAGIC, version, len(raw)) + raw + struct.pack(
        ">II4I", hdr.height if height is None else height, hdr.width if width is None else width,
        *(len(streams[k]) for k in bitstream.STREAMS)
    ) + (struct.pack(">IIB", *(hdr.checks if checks is None else checks), hdr.precision if precision is None else precision)
         if version >= bitstream.CHECKED else b"") + (
        (fingerprint or hdr.fingerprint or bytes(8)) if version >= bitstream.NAMED else b"")
    return prefix + struct.pack(">I", zlib.crc32(body, zlib.crc32(prefix))) + body


def test_every_truncation_is_reported(tiny, stream):
    for n in range(len(stream)):
        with pytest.raises(BitstreamError, match="truncated|not an HPCM"):
            codec.decompress(stream[:n], tiny)
    with pytest.raises(BitstreamError, match="trailing"):
        bitstream.read_header(stream + b"\0")


def test_random_mutations_are_reported(tiny, stream):
    rng = random.Random(0)
    for trial in range(400):
        data = bytearray(stream)
        kind = trial % 4
        if kind == 0:  # flip one bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # overwrite a run of bytes
            i = rng.randrange(len(data))
            data[i : i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        elif kind == 2:  # delete a run
            i = rng.randrange(len(data))
            del data[i : i + rng.randint(1, 16)]
        else:  # insert bytes
            i = rng.randrange(len(data))
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        if bytes(data) == stream:
            continue
        with pytest.raises(BitstreamError):
            codec.decompress(bytes(data), tiny)


def test_foreign_bytes(tiny):
    rng = random.Random(1)
    for data in [b"", b"\x89PNG\r\n\x1a\n" + rng.randbytes(100), b"HPCM", b"HPCM\x89", rng.randbytes(5000)]:
        with pytest.raises(BitstreamError):
            codec.decompress(data, tiny)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"version": 7}, "version 7"),
        ({"config": b'{"name":"tinx"}'}, "config"),
        ({"config": b'["name","tiny"]'}, "config"),
        ({"config": b'{"name":"tiny"'}, "config"),
        ({"config": b'{"name":"tiny","M":99999999}'}, "config"),
        ({"config": b'{"name":"tiny","bogus":1}'}, "config"),
        ({"config": b'{"name":"tiny","M":12}'}, "config"),
        ({"config": b"\xff\xfe"}, "config"),
        ({"height": 0}, "size"),
        ({"height": 1 << 20}, "size"),
        ({"precision": 16}, "precision 16 bits"),
        ({"config": b'{"name":"tiny","aligned_s2_gather":{}}'}, "aligned_s2_gather"),
        ({"config": b'{"name":"tiny","windows":[[2],4,8]}'}, "nested"),
        ({"config": b"[" * 20000 + b"]" * 20000}, "nested too deeply"),
        ({"config": b'{"name":"ti\\u001b[31mny"}'}, "control characters"),
        ({"config": b'{"name":"tiny","windows":[64,64,64]}', "height": 1, "width": 1}, "pads to 4096x4096"),
    ],
)
def test_header_fields_checked_behind_a_valid_crc(stream, fields, match):
    assert bitstream.read_header(forge(stream)).height == 20  # forge alone changes nothing
    with pytest.raises(BitstreamError, match=match):
        bitstream.read_header(forge(stream, **fields))


def test_corrupted_streams_behind_a_valid_crc_never_crash(tiny, stream):
    """Stream edits that a forged CRC hides reach compressai's decoder. Each must end in a
    BitstreamError (a stream must be exactly the encoding of what it decodes to), never a crash,
    a hang or an image."""
    hdr = bitstream.read_header(stream)
    parts = bitstream.split_streams(stream, hdr)
    rng = random.Random(2)
    edits = []
    for k in bitstream.STREAMS:
        s = bytearray(parts[k])
        i = rng.randrange(len(s) - 4)
        s[i : i + 4] = b"\xff\xff\xff\xff"
        edits += [{k: bytes(s)}, {k: parts[k][: len(parts[k]) // 8 * 4]}, {k: b""}, {k: parts[k][:5]}]
    for edit in edits:
        with pytest.raises(BitstreamError):
            codec.decompress(forge(stream, streams=edit), tiny)


@pytest.mark.slow
def test_base_round_trip_256():
    check_round_trip(synthetic_weights(hpcm("base")), image(256, 256, seed=256))


@pytest.mark.parametrize("version", sorted(v for v in bitstream.WRITABLE if v < bitstream.EXACT))
def test_written_format_versions_round_trip(version):
    """Version 4 (checks and the weights' fingerprint) is written by default, 3 (checks) on request;
    versions 1 and 2 are no longer written; version 5 by exact models only (tests/test_exact.py)."""
    model = hpcm("tiny").eval()
    x = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(version))
    enc = codec.encode(model, x, version=version)
    assert enc.data[len(bitstream.MAGIC)] == version
    assert bitstream.read_header(enc.data).index_rule == bitstream.INDEX_RULES[version]
    assert torch.equal(codec.decompress(enc.data, model), codec.reconstruct(model, x))
    for old in (1, 2, 9):
        with pytest.raises(ValueError, match="writes format versions"):
            codec.encode(model, x, version=old)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_committed_old_files_still_decode(version):
    """Files of versions 1 (the spec's next-up table rule), 2 and 3 (nearest) written by the last
    build that wrote them decode to the model's forward reconstruction; the rule comes from the header."""
    model = synthetic_weights(hpcm("tiny"))
    x = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(7))
    data = (OLD_FILES / f"tiny-synthetic-40x70-v{version}.hpcm").read_bytes()
    hdr = bitstream.read_header(data)
    assert (hdr.version, hdr.index_rule, hdr.fingerprint) == (version, bitstream.INDEX_RULES[version], None)
    assert torch.equal(codec.decompress(data, model), codec.reconstruct(model, (x * 255).round() / 255))
    with pytest.raises(BitstreamError, match="other weights|not the weights it was coded with"):
        codec.decompress(data, synthetic_weights(hpcm("tiny"), factor=0.5))  # such a file cannot tell them from damage


@pytest.fixture(scope="module")
def stream3(tiny) -> bytes:
    return codec.encode(tiny, image(20, 30, seed=20), version=3).data


def test_symbols_that_differ_from_the_encoders_are_refused(tiny, stream3):
    """Format version 3 (no fingerprint): other weights of the same config (as when a GPU computes
    a scale a little differently) give other symbols; the decoder names the cause instead of
    returning garbage."""
    stream = stream3
    hdr = bitstream.read_header(stream)
    assert hdr.checks is not None and hdr.fingerprint is None
    other = synthetic_weights(hpcm("tiny"), factor=0.79)
    with pytest.raises(BitstreamError, match="symbols CRC-32.*other weights, or another kind of device"):
        codec.decompress(stream, other)
    sym, img = hdr.checks
    with pytest.raises(BitstreamError, match="symbols CRC-32"):  # a forged check behind a valid file CRC
        codec.decompress(forge(stream, checks=(sym ^ 1, img)), tiny)


def test_an_image_that_differs_only_by_rounding_is_decoded_with_a_warning(tiny, stream3):
    """Symbols exact, synthesis different (another device rounds g_s differently; here one bias of
    the last layer moved by a level): the image is returned and the difference is reported."""
    stream = stream3
    x_ref = codec.decompress(stream, tiny)
    moved = synthetic_weights(hpcm("tiny"))
    bias = [p for n, p in moved.g_s.named_parameters() if n.endswith("bias")][-1]
    with torch.no_grad():
        bias += 1 / 255
    with pytest.warns(ReconstructionWarning, match="although every symbol matched"):
        x = codec.decompress(stream, moved)
    assert 0 < (x - x_ref).abs().max() * 255 <= 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the encoder's own model decodes without a warning
        codec.decompress(stream, tiny)
    sym, img = bitstream.read_header(stream).checks
    with pytest.warns(ReconstructionWarning):
        codec.decompress(forge(stream, checks=(sym, img ^ 1)), tiny)



def test_coding_runs_cudnn_deterministic_and_restores_the_setting(tiny, stream):
    """cuDNN may pick nondeterministic (transposed) convolutions on CUDA; the encoder and the
    decoder ask for deterministic ones while they run and leave the caller's setting as it was."""
    seen: list[bool] = []
    before = torch.backends.cudnn.deterministic
    codec.encode(tiny, image(20, 30), progress=lambda k: seen.append(torch.backends.cudnn.deterministic))
    codec.decompress(stream, tiny, progress=lambda k: seen.append(torch.backends.cudnn.deterministic))
    assert seen and all(seen) and torch.backends.cudnn.deterministic == before


def test_a_float64_model_codes_in_float64_and_the_file_says_so(tiny):
    """A model moved to float64 codes in float64 (the files benchmarks/cross_cpu.py found to decode
    identically across instruction sets); the header records it, and a float32 model decodes such
    a file through a float64 copy of itself (and the other way round), leaving the given model as
    it was."""
    model = synthetic_weights(hpcm("tiny")).double()
    x = image(33, 47, seed=64)
    data = codec.compress(model, x)
    assert bitstream.read_header(data).precision == 64 and bitstream.read_header(codec.compress(tiny, x)).precision == 32
    ref = codec.reconstruct(model, x)
    for decoder in (model, tiny):  # the same weights in float64 and in float32
        assert torch.equal(codec.decompress(data, decoder).float(), ref.float())
    assert tiny.means_hyper.dtype == torch.float32
    assert torch.equal(codec.decompress(codec.compress(tiny, x), model).float(), codec.reconstruct(tiny, x))
    with pytest.raises(ValueError, match="writes format versions"):
        codec.encode(model, x, version=2)
    with pytest.raises(ValueError, match="float32 or float64"):
        codec.encode(synthetic_weights(hpcm("tiny")).half(), x)
