"""The exact entropy-parameter path (lic_core.models.exact): its sums are the same bits in any
summation order and thread count, it stays close to the float model, its bound check refuses
weights that could overflow 2^53, and format version 5 round-trips, refuses the wrong kind of model
and decodes to the same symbols in a process capped at another instruction set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import skip_or_fail
from lic_core.coding import bitstream, codec
from lic_core.coding.codec import synthetic_weights
from lic_core.coding.entropy import exact_y_edges, scale_indexes, y_scale_table
from lic_core.errors import BitstreamError, LicError, ReconstructionWarning
from lic_core.models import exact
from lic_core.models.hpcm import hpcm
from lic_core.paths import REPO

CAPPED = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth content plus noise, 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")
    return ((base + 0.1 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1) * 255).round() / 255


@pytest.fixture(scope="module")
def tiny():
    return synthetic_weights(hpcm("tiny"), 0.8)


@pytest.fixture(scope="module")
def spec(tiny):
    return exact.calibrate_spec(tiny, [image(128, 128, seed=1)])


@pytest.fixture(scope="module")
def exact_tiny(tiny, spec):
    return exact.derive(tiny, spec)


def entropy_params(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(x)
    return out["scales_hat"], out["means_hat"]


# -- (a) exact in any summation order -------------------------------------------------------------
def integer_conv(seed: int, cin: int = 48, cout: int = 40) -> tuple[exact.ExactConv, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(cout, generator=g))
    return exact.ExactConv(conv).quantize(conv, frac=20), torch.randn(1, cin, 12, 10, generator=g) * 30


def test_a_convolution_is_the_same_bits_in_any_summation_order():
    """Input channels permuted, or split into two partial sums added in the other order: the same
    bits (a float32 convolution of the same values generally is not)."""
    layer, x = integer_conv(0)
    ref = layer(x)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(1))
    permuted = exact.ExactConv(nn.Conv2d(48, 40, 3, padding=1))
    permuted.load_state_dict(layer.state_dict())
    permuted.weight.copy_(layer.weight[:, perm])
    assert torch.equal(permuted(x[:, perm]), ref)
    w, b, scale_in, limit, scale_out = layer.integers(x.device)
    a = torch.round(x.double() * scale_in).clamp(-limit, limit)
    lo = F.conv2d(a[:, :17], w[:, :17], None, padding=1)
    hi = F.conv2d(a[:, 17:], w[:, 17:], b, padding=1)
    assert torch.equal((hi + lo) * scale_out, ref) and torch.equal((lo + hi) * scale_out, ref)


def test_the_entropy_parameters_are_the_same_bits_in_1_and_2_threads(exact_tiny):
    x = image(128, 128, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = entropy_params(exact_tiny, x)
        torch.set_num_threads(2)
        two = entropy_params(exact_tiny, x)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert one[0].dtype == torch.float64


def reference_conv(layer: exact.ExactConv, x: torch.Tensor) -> torch.Tensor:
    """A layer's defining formula: the library's convolution of the integers, then the output scale."""
    w, b, scale_in, limit, scale_out = layer.integers(x.device)
    a = torch.round(x.double() * scale_in).clamp(-limit, limit)
    if layer.transposed:
        return F.conv_transpose2d(a, w, b, layer.stride, layer.padding) * scale_out
    return F.conv2d(a, w, b, layer.stride, layer.padding, 1, layer.groups) * scale_out


def reference_attention(attn: exact.ExactWindowAttention, psi: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The attention's defining formulas, step by step: each projection scaled, then put on its grid."""
    fq, fk, fv = attn.fracs.tolist()
    qk_max, v_max = (1 << exact.QK_BITS) - 1, (1 << exact.V_BITS) - 1
    q = attn._windows(reference_conv(attn.q, psi) * 2.0 ** fq).round().clamp(-qk_max, qk_max)
    k = attn._windows(reference_conv(attn.k, ctx) * 2.0 ** fk).round().clamp(-qk_max, qk_max)
    v = attn._windows(reference_conv(attn.v, ctx) * 2.0 ** fv).round().clamp(-v_max, v_max)
    logits = (q @ k.transpose(-1, -2) * 2.0 ** (exact.LOGIT_BITS - fq - fk)).round()
    lut = torch.tensor([*exact.exp_table(), 0], dtype=torch.float64)
    e = lut[(logits.amax(-1, keepdim=True) - logits).clamp(max=lut.numel() - 1).long()]
    att = (e @ v) / e.sum(-1, keepdim=True) * 2.0 ** -fv
    return attn._merge(att, psi.shape) + reference_conv(attn.out, psi)


def test_each_kind_of_layer_computes_its_defining_formula_bit_for_bit():
    """The fast forms (weights pre-scaled; 1x1 as one GEMM over the positions, in either input
    layout; depthwise as shifted products) give the bits of the integer convolution then scaled."""
    g = torch.Generator().manual_seed(2)
    for like in (nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ConvTranspose2d(16, 8, 2, stride=2),
                 nn.Conv2d(24, 40, 1), nn.Conv2d(12, 12, 3, padding=1)):
        with torch.no_grad():
            like.weight.copy_(torch.randn(like.weight.shape, generator=g))
            like.bias.copy_(torch.randn(like.bias.shape, generator=g))
        layer = exact.ExactConv(like).quantize(like, frac=16)
        for n in (1, 2):
            x = torch.randn(n, like.in_channels, 8, 6, generator=g)
            for x in (x, x.contiguous(memory_format=torch.channels_last)):
                assert torch.equal(layer(x), reference_conv(layer, x))


def test_the_fast_path_writes_the_files_of_the_defining_formulas(monkeypatch, tiny, spec, exact_tiny):
    """The whole model with the reference layers swapped in: the same entropy parameters and the
    same file, bit for bit; also where q and out (k and v) have different grids, so that they
    cannot share a GEMM."""
    x = image(128, 128, seed=9)
    unpaired = exact.derive(tiny, {k: v - 1 if k.endswith((".q", ".k")) else v for k, v in spec.items()})
    fast = [(entropy_params(m, x), codec.encode(m, x).data) for m in (exact_tiny, unpaired)]
    monkeypatch.setattr(exact.ExactConv, "forward", reference_conv)
    monkeypatch.setattr(exact.ExactWindowAttention, "forward", reference_attention)
    for m, (params, data) in zip((exact_tiny, unpaired), fast):
        assert all(torch.equal(a, b) for a, b in zip(params, entropy_params(m, x)))
        assert codec.encode(m, x).data == data


def test_the_exp_table_and_the_table_edges_are_computed_in_software():
    lut = exact.exp_table()
    assert lut[0] == 1 << exact.EXP_BITS and all(a >= b for a, b in zip(lut, lut[1:])) and lut[-1] >= 1
    edges = torch.tensor(exact_y_edges(), dtype=torch.float64)
    table = torch.tensor(y_scale_table())
    mid = torch.sqrt(table[:-1] * table[1:])
    assert ((edges - mid).abs() <= 4e-15 * mid).all()
    s = torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 70
    assert torch.equal(scale_indexes(s, y_scale_table(), "exact"), scale_indexes(s, y_scale_table(), "nearest"))


# -- (b) close to the float path ----------------------------------------------------------------------
TOLERANCE = 1e-3  # |exact - float| over the largest |value|, scales and means


def check_close(model, exact_model, x: torch.Tensor) -> None:
    for f, e in zip(entropy_params(model, x), entropy_params(exact_model, x)):
        assert float((f.double() - e).abs().max()) <= TOLERANCE * float(f.abs().max())


def test_the_exact_path_stays_close_to_the_float_path(tiny, exact_tiny):
    check_close(tiny, exact_tiny, image(128, 256, seed=4))


def test_a_shipped_model_stays_close_to_its_float_path():
    from lic_core.workbench import store

    levels = store.qualities() if store.is_store(store.SHIPPED) else {}
    if not levels:
        skip_or_fail(f"no shipped models in {store.SHIPPED}")
    from lic_core.models.loading import load_checkpoint

    path = levels[min(levels)]
    model = load_checkpoint(path)
    check_close(model, store.exact_model(model, path), image(128, 128, seed=5))


def test_derive_is_deterministic_and_needs_every_grid(tiny, spec, exact_tiny):
    assert codec.fingerprint(exact.derive(tiny, spec)) == codec.fingerprint(exact_tiny)
    assert codec.fingerprint(exact_tiny) != codec.fingerprint(tiny)
    with pytest.raises(LicError, match="lacks the grid of layer"):
        exact.derive(tiny, {k: v for k, v in spec.items() if k != "transitions.1"})
    with pytest.raises(LicError, match="already exact"):
        exact.derive(exact_tiny, spec)


# -- (c) the 2^53 bound ----------------------------------------------------------------------------------
def test_weights_that_could_overflow_are_refused():
    conv = nn.Conv2d(8, 4, 1)
    with torch.no_grad():
        conv.bias.fill_(1e30)  # on the accumulator grid: far beyond 2^53
    with pytest.raises(LicError, match=r"could reach .* >= 2\^53"):
        exact.ExactConv(conv).quantize(conv, frac=20, name="adaptors.0")
    layer = exact.ExactConv(nn.Conv2d(8, 4, 1))
    layer.quantize(nn.Conv2d(8, 4, 1), frac=20)
    layer.bits.fill_(50)  # inputs too wide for these weights
    with pytest.raises(LicError, match="adaptors.0: integer sums could reach"):
        layer.check("adaptors.0")


# -- format version 5 ------------------------------------------------------------------------------------
def test_version_5_round_trips_and_refuses_the_other_kind_of_model(tiny, exact_tiny):
    x = image(80, 100, seed=6)
    enc = codec.encode(exact_tiny, x)
    hdr = bitstream.read_header(enc.data)
    assert (hdr.version, hdr.index_rule, hdr.fingerprint) == (5, "exact", codec.fingerprint(exact_tiny))
    assert torch.equal(codec.decompress(enc.data, exact_tiny), codec.reconstruct(exact_tiny, x))
    with pytest.raises(BitstreamError, match="format version 5 files decode with an exact model"):
        codec.decompress(enc.data, tiny)
    with pytest.raises(BitstreamError, match="format version 4 files decode with a float model"):
        codec.decompress(codec.encode(tiny, x).data, exact_tiny)
    with pytest.raises(ValueError, match="format version 5 is written by an exact model"):
        codec.encode(tiny, x, version=5)
    with pytest.raises(ValueError, match="format version 4 is written by a float model"):
        codec.encode(exact_tiny, x, version=4)


def test_a_float64_synthesis_decodes_the_same_symbols(exact_tiny):
    x = image(64, 64, seed=7)
    data = codec.encode(exact_tiny, x).data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReconstructionWarning)  # pixels may round differently
        assert codec.decompress(data, exact_tiny.double()).shape == x.shape  # no BitstreamError


DECODER = textwrap.dedent("""
    import json, sys, warnings, torch
    from lic_core.coding import codec
    from lic_core.errors import BitstreamError, ReconstructionWarning
    from lic_core.models import exact
    from lic_core.models.hpcm import hpcm
    model = hpcm("tiny")
    model.load_state_dict(torch.load(sys.argv[2]))  # torch.randn differs by instruction set: weights travel
    model = exact.derive(model.eval(), json.load(open(sys.argv[3])))
    outcomes = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ReconstructionWarning)
                codec.decompress(open(sys.argv[1], "rb").read(), model)
            outcomes[threads] = "warned" if caught else "identical"
        except BitstreamError as e:
            outcomes[threads] = f"refused: {e}"
    print(json.dumps({"outcomes": outcomes, "capability": torch.backends.cpu.get_cpu_capability()}))
""")


def test_version_5_decodes_the_same_symbols_under_another_instruction_set(tmp_path, tiny, exact_tiny, spec):
    """Encoded here (this CPU's widest kernels), decoded in a process capped at SSE4 (PyTorch's
    default kernels, oneDNN SSE4.1, MKL SSE4.2) with 1 or 2 threads, which derives the exact model
    from the float weights and the spec itself: no symbol differs."""
    x = image(128, 128, seed=8)
    (tmp_path / "a.hpcm").write_bytes(codec.encode(exact_tiny, x).data)
    torch.save(tiny.state_dict(), tmp_path / "float.pt")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, **CAPPED, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", DECODER, *(str(tmp_path / f) for f in ("a.hpcm", "float.pt", "spec.json"))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"encoded with {torch.backends.cpu.get_cpu_capability()}, decoded with {got['capability']} "
          f"in 1 and 2 threads: {got['outcomes']}")
    assert got["capability"] == "DEFAULT"
    assert all(o in ("identical", "warned") for o in got["outcomes"].values()), got["outcomes"]


def test_cli_compress_exact_and_decompress_by_fingerprint(tmp_path, capsys, tiny, spec):
    """``compress --exact`` with a shipped model writes format 5; ``decompress`` finds the exact
    model by the file's fingerprint. Any checkpoint with ``--exact-spec``."""
    from lic_core.cli import compress_main, decompress_main
    from lic_core.imageio import png_bytes
    from lic_core.models.hpcm import save_checkpoint
    from lic_core.workbench import store

    (tmp_path / "in.png").write_bytes(png_bytes(image(40, 70, seed=9)))
    if store.is_store(store.SHIPPED) and store.exact_records():
        assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "a.hpcm"), "--exact", "-q", "1"]) == 0
        assert bitstream.read_header((tmp_path / "a.hpcm").read_bytes()).version == 5
        assert decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / "a.png")]) == 0
    save_checkpoint(tiny, tmp_path / "t.pt")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    ckpt = ["--checkpoint", str(tmp_path / "t.pt")]
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "b.hpcm"), *ckpt, "--exact"]) == 2
    assert "needs --exact-spec" in capsys.readouterr().err
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "b.hpcm"), *ckpt,
                          "--exact-spec", str(tmp_path / "spec.json")]) == 0
    assert decompress_main([str(tmp_path / "b.hpcm"), str(tmp_path / "b.png"), *ckpt]) == 2
    assert "needs --exact-spec" in capsys.readouterr().err
    assert decompress_main([str(tmp_path / "b.hpcm"), str(tmp_path / "b.png"), *ckpt,
                            "--exact-spec", str(tmp_path / "spec.json")]) == 0
