"""Seeded fuzzing of the decoder with files a hostile sender could make: random byte edits, and
crafted headers whose CRC-32 was recomputed so that the edit reaches the parser and the coder.

Every case must end in a :class:`BitstreamError`, except header edits that change no coded symbol
(a height within the same padding); none may hang, write a partial output file, or grow the
process's peak memory beyond a bound."""
from __future__ import annotations

import json
import random
import resource
import signal
import time
import warnings

import pytest
import torch

from lic_core.coding import bitstream, codec
from lic_core.cli import decompress_main
from lic_core.coding.codec import synthetic_weights
from lic_core.errors import BitstreamError, ReconstructionWarning
from lic_core.models.hpcm import LIMITS, hpcm

from test_codec import forge, image

CASES = 360
MAX_PIXELS = 128 * 256  # the fuzz decodes under a small cap (padded grid): larger crafted sizes must be refused
CASE_TIMEOUT_S = 60  # a hang guard, not a speed claim
PEAK_GROWTH_MB = 1024


@pytest.fixture(scope="module")
def tiny():
    return synthetic_weights(hpcm("tiny"))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    i = rng.randrange(len(out))
    kind = rng.randrange(4)
    if kind == 0:
        out[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        out[i : i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    elif kind == 2:
        del out[i : i + rng.randint(1, 16)]
    else:
        out[i:i] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def _crafted_config(rng: random.Random) -> bytes:
    """The tiny config with one field set to an edge, out-of-range or wrong-typed value."""
    key = rng.choice(sorted(LIMITS))
    lo, hi = LIMITS[key]
    value = rng.choice([lo - 1, lo, hi, hi + 1, 0, -1, 10**9, 1.5, "x", None, [], True])
    d = {"name": "tiny", key: value}
    return json.dumps(d).encode()


def _crafted(rng: random.Random, stream: bytes) -> bytes:
    """A header or stream edit behind a recomputed CRC."""
    hdr = bitstream.read_header(stream)
    parts = bitstream.split_streams(stream, hdr)
    kind = rng.randrange(5)
    if kind == 0:  # another image size (often over the cap, sometimes a plausible one)
        return forge(stream, height=rng.choice([1, 2, 7, 64, 95, 96, 97, 512, 4096, 65535]))
    if kind == 1:
        return forge(stream, config=_crafted_config(rng))
    if kind == 2:  # a stream moved, emptied, cut, grown or swapped
        k, j = rng.sample(bitstream.STREAMS, 2)
        edit = rng.choice([{k: b""}, {k: parts[k][: rng.randrange(len(parts[k]) + 1)]},
                           {k: parts[k] + rng.randbytes(rng.randint(1, 64))}, {k: parts[j], j: parts[k]}])
        return forge(stream, streams=edit)
    if kind == 3:  # bytes edited inside one stream
        k = rng.choice(bitstream.STREAMS)
        return forge(stream, streams={k: _mutate(rng, parts[k]) or b"\0"})
    return forge(stream, version=rng.choice([0, 1, 3, 4, 255]), fingerprint=rng.choice([None, rng.randbytes(8)]))


def _cases(stream: bytes) -> list[bytes]:
    rng = random.Random(15)
    out = []
    while len(out) < CASES:
        data = _mutate(rng, stream) if len(out) % 3 == 0 else _crafted(rng, stream)
        if data != stream:
            out.append(data)
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _alarm(*_):
    raise TimeoutError("decoder hang")


def test_fuzzed_streams_end_in_bitstream_errors(tiny, tmp_path):
    stream = codec.compress(tiny, image(20, 30, seed=20))
    cases = _cases(stream)
    parts, pad = bitstream.split_streams(stream, bitstream.read_header(stream)), tiny.cfg.pad_multiple
    peak0, t0 = _peak_mb(), time.perf_counter()
    outcomes = {"error": 0, "image": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, data in enumerate(cases):
            signal.alarm(CASE_TIMEOUT_S)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = codec.decompress(data, tiny, max_pixels=MAX_PIXELS)
            except BitstreamError:
                outcomes["error"] += 1
            else:  # only a header edit that changes no symbol: a height within the same padding,
                # which format version 3's image CRC reports, or the same file as version 3 (no fingerprint)
                hdr = bitstream.read_header(data, MAX_PIXELS)
                same = (hdr.height, hdr.version, hdr.fingerprint) == (20, 3, None)
                assert same or any(issubclass(w.category, ReconstructionWarning) for w in caught), i
                assert out.shape == (1, 3, hdr.height, hdr.width) and torch.isfinite(out).all(), i
                assert bitstream.split_streams(data, hdr) == parts and hdr.config == tiny.cfg, i
                assert -(-hdr.height // pad) == -(-20 // pad) and hdr.width == 30, i
                outcomes["image"] += 1
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    wall = time.perf_counter() - t0
    print(f"{len(cases)} fuzzed streams: {outcomes}, {wall:.1f} s, peak memory +{_peak_mb() - peak0:.0f} MB")
    assert outcomes["error"] > 0.8 * len(cases)
    assert _peak_mb() - peak0 < PEAK_GROWTH_MB


def test_fuzzed_files_leave_no_output(tmp_path, capsys):
    """The command line on a sample of the same cases: exit 2, one line, no PNG and no temp file."""
    from lic_core.models.hpcm import save_checkpoint

    model = synthetic_weights(hpcm("tiny"))
    save_checkpoint(model, tmp_path / "w.pt")
    stream = codec.compress(model, image(20, 30, seed=20))
    for i, data in enumerate(_cases(stream)[::12]):
        src, dst = tmp_path / f"{i}.hpcm", tmp_path / "out" / f"{i}.png"
        src.write_bytes(data)
        rc = decompress_main([str(src), str(dst), "--max-pixels", str(MAX_PIXELS), "--checkpoint", str(tmp_path / "w.pt")])
        err = capsys.readouterr().err.strip().splitlines()
        if rc:
            assert rc == 2 and len(err) == 1 and "error:" in err[0], err
            assert not dst.exists()
    leftovers = [p.name for p in (tmp_path / "out").glob(".*")] if (tmp_path / "out").exists() else []
    assert not leftovers


def test_oversized_header_is_refused_before_decoding(tiny):
    """A crafted 4096x4096 header on a small file: refused by the pixel cap, at once."""
    stream = codec.compress(tiny, image(20, 30, seed=20))
    big = forge(stream, height=4096, width=4096)
    with pytest.raises(BitstreamError, match="over 4,194,304 pixels"):
        codec.decompress(big, tiny)
    assert bitstream.read_header(big, max_pixels=4096 * 4096).height == 4096  # a flag raises the cap
    with pytest.raises(BitstreamError, match="needs at least .* bytes in stream z"):  # then the size bound
        codec.decompress(big, tiny, max_pixels=4096 * 4096)
