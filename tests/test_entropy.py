"""Generalized-Gaussian likelihood (against the authors' conformance vectors) and rANS tables."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy.stats import gennorm

from lic_core.coding.entropy import (
    MAX_SYMBOL,
    GeneralizedGaussian,
    GGTables,
    gg_cdf,
    round_ste,
    scale_indexes,
    uniform_noise,
    y_scale_table,
)


@pytest.fixture(scope="module")
def base(reference_dir):
    return dict(np.load(reference_dir / "hpcm" / "conformance_base.npz"))


def scales_hyper() -> torch.Tensor:
    """CONFORMANCE.md section 2 weight rule for the key ``scales_hyper``."""
    gen = torch.Generator().manual_seed(zlib.crc32(b"scales_hyper"))
    return 0.5 + 0.5 * torch.randn((1, 256, 1, 1), generator=gen).abs()


def bits(lik) -> float:
    return float(-np.log2(np.asarray(lik, dtype=np.float64)).sum())


def test_y_likelihoods_match_reference(base):
    lik = GeneralizedGaussian().likelihood(torch.from_numpy(base["y_q"]), torch.from_numpy(base["scales_hat"]))
    assert lik.dtype == torch.float32
    assert (lik - torch.from_numpy(base["y_likelihoods"])).abs().max() <= 1e-5
    assert bits(lik) == pytest.approx(bits(base["y_likelihoods"]), rel=1e-4)
    assert bits(lik) == pytest.approx(515_750.435, rel=1e-4)  # CONFORMANCE.md section 5
    per_step = [bits(lik[0][torch.from_numpy(m)]) for m in base["step_masks"]]
    np.testing.assert_allclose(per_step, base["bits_per_step"], rtol=1e-4)


def test_z_likelihoods_match_reference(base):
    sh = scales_hyper()
    assert float(sh.double().sum()) == pytest.approx(218.2913296, rel=1e-6)
    lik = GeneralizedGaussian().likelihood(torch.from_numpy(base["z_q"]), sh)
    assert (lik - torch.from_numpy(base["z_likelihoods"])).abs().max() <= 1e-5
    assert bits(lik) == pytest.approx(9_710.503, rel=1e-4)


def test_cdf_is_scipy_gennorm():
    u = torch.linspace(-6, 6, 241, dtype=torch.float64)
    np.testing.assert_allclose(gg_cdf(u).numpy(), gennorm.cdf(u.numpy(), 1.5), atol=1e-12)
    assert gg_cdf(torch.zeros(1)).item() == 0.5


def test_bounds_and_gradients():
    gg = GeneralizedGaussian()
    values = torch.tensor([-0.5, 0.5, 0.0, 40.0, 2.0], requires_grad=True)
    scales = torch.tensor([1.0, 1.0, 0.05, 0.2, -1.0], requires_grad=True)
    lik = gg.likelihood(values, scales)
    assert lik[3].item() == pytest.approx(1e-9)  # floored
    assert lik[4] == gg.likelihood(torch.tensor(2.0), torch.tensor(0.12))  # scale floored at 0.12
    (-lik.log2().sum()).backward()
    assert torch.isfinite(values.grad).all() and torch.isfinite(scales.grad).all()
    assert values.grad[0] != 0 and scales.grad[0] != 0  # u = 0 exactly at one end: still a gradient
    # the CompressAI LowerBound lets a gradient through that pushes the scale up
    assert scales.grad[4] < 0


def test_gradient_matches_finite_difference():
    gg = GeneralizedGaussian().double()
    v = torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7, 1.3, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gg.likelihood(a, b), (v, s))


def test_quantize_helpers():
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0]  # half to even, like torch.round
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    n = uniform_noise(torch.zeros(10_000))
    assert n.abs().max() <= 0.5 and n.std() > 0.25


def test_scale_index_rule():
    table = y_scale_table()
    assert len(table) == 60 and table[0] == pytest.approx(0.12) and table[-1] == pytest.approx(64)
    s = torch.tensor([-1.0, 0.12, 0.1201, float(table[5]), float(table[5]) * 1.001, 64.0, 1e4])
    assert scale_indexes(s, table).tolist() == [0, 0, 1, 5, 6, 59, 59]


def test_tables_cover_tail_quantile():
    tables = GGTables.for_y()
    q = gennorm.ppf(1 - 1e-6 / 2, 1.5)
    for s, offset, length, cdf in zip(tables.scales, tables.offsets, tables.cdf_lengths, tables.cdfs):
        half = math.ceil(s * q)
        assert offset == -half and length == 2 * half + 3  # CDF of -L..L and the escape symbol
        assert cdf[0] == 0 and cdf[-1] == 1 << 16 and all(b > a for a, b in zip(cdf, cdf[1:]))


@pytest.mark.parametrize("n", [1, 2, 7, 5000])
def test_rans_round_trip(n):
    gen = torch.Generator().manual_seed(n)
    tables = GGTables.for_y()
    idx = torch.randint(0, 60, (n,), generator=gen)
    sym = (torch.randn(n, generator=gen) * torch.from_numpy(tables.scales)[idx]).round().long()
    sym[: max(1, n // 50)] = torch.randint(-MAX_SYMBOL, MAX_SYMBOL, (max(1, n // 50),), generator=gen)
    data = tables.encode(sym, idx)
    assert torch.equal(tables.decode(data, idx), sym.int())


def test_rans_rate_close_to_entropy():
    """Symbols drawn from the model cost about their information content."""
    gen = torch.Generator().manual_seed(0)
    tables = GGTables(np.array([0.5, 2.0, 9.0]))
    idx = torch.randint(0, 3, (30_000,), generator=gen)
    scale = torch.from_numpy(tables.scales)[idx]
    sym = torch.from_numpy(gennorm.rvs(1.5, size=30_000, random_state=0)) * scale
    sym = sym.round()
    info = bits(GeneralizedGaussian().double().likelihood(sym, scale))
    nbytes = len(tables.encode(sym.long(), idx))
    assert 8 * nbytes == pytest.approx(info, rel=0.01)


def test_per_channel_tables_from_scales_hyper():
    tables = GGTables(scales_hyper())
    assert len(tables) == 256
    z = torch.randint(-3, 4, (1, 256, 4, 8))
    idx = torch.arange(256).view(1, 256, 1, 1).expand_as(z)
    assert torch.equal(tables.decode(tables.encode(z, idx), idx), z.int())


def test_bad_tables_and_symbols():
    with pytest.raises(ValueError):
        GGTables(np.array([1.0, 0.0]))
    tables = GGTables.for_y()
    with pytest.raises(ValueError, match="beyond"):
        tables.encode(torch.tensor([MAX_SYMBOL + 1]), torch.tensor([0]))
    assert tables.encode(torch.zeros(0), torch.zeros(0)) == b""


def test_nearest_index_rule_picks_the_closest_table_in_log_scale():
    table = y_scale_table()
    mid = np.sqrt(table[4] * table[5])
    s = torch.tensor([0.05, 0.12, table[4] * 1.01, mid * 0.999, mid * 1.001, table[5], 100.0], dtype=torch.float64)
    assert scale_indexes(s, table, "nearest").tolist() == [0, 0, 4, 4, 5, 5, 59]
    assert scale_indexes(s, table, "next-up").tolist() == [0, 0, 5, 5, 5, 5, 59]
    with pytest.raises(ValueError, match="unknown table-index rule"):
        scale_indexes(s, table, "floor")
