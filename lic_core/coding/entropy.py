"""Generalized-Gaussian entropy model of HPCM and its rANS coding tables.

Li, Zhang, Li, Liu, "Learned Image Compression with Hierarchical Progressive Context Modeling",
ICCV 2025 (arXiv 2507.19125): latents are coded with a generalized Gaussian of shape beta = 1.5,

    L(r, s) = F((r + 1/2) / s) - F((r - 1/2) / s),   F(u) = (1 + sign(u) P(1/beta, |u|^beta)) / 2,

P the regularized lower incomplete gamma function. Coding uses CompressAI's quantized CDFs
(``pmf_to_quantized_cdf``) and its rANS coder (``compressai.ans``); nothing here is a coder.
"""
from __future__ import annotations

import decimal
import math
from functools import lru_cache

import numpy as np
import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.ops import LowerBound, quantize_ste
from torch import Tensor, nn

from lic_core.errors import BitstreamError

BETA = 1.5
SCALE_BOUND = 0.12
LIKELIHOOD_BOUND = 1e-9
TAIL_MASS = 1e-6
PRECISION = 16  # bits of the quantized CDFs, what compressai.ans takes
Y_SCALES = (0.12, 64.0, 60)  # log-spaced y table: first, last, count
MAX_SYMBOL = 2**26  # compressai's escape coding loops forever from 2**27 (a 32-bit shift): refused

# |u| below this is clamped inside P: d/dx P(a, x) is infinite at x = 0, and the clamp keeps
# the gradient finite (zero) there while changing F by < 1e-13.
_TINY = 1e-20


def round_ste(x: Tensor) -> Tensor:
    """Round with a straight-through gradient (HPCM training: y_hat, z_hat)."""
    return quantize_ste(x)


def uniform_noise(x: Tensor) -> Tensor:
    """``x + U(-1/2, 1/2)``: the training proxy of rounding used for the rate."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


noise = uniform_noise  # the name INTERFACES.md uses


def gg_cdf(u: Tensor, beta: float | Tensor = BETA) -> Tensor:
    """Standard generalized-normal CDF ``(1 + sign(u) P(1/beta, |u|^beta)) / 2``; sign(0) = 0."""
    beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device)
    p = torch.special.gammainc(1.0 / beta, u.abs().clamp_min(_TINY) ** beta)
    return 0.5 + 0.5 * torch.sign(u) * p


class GeneralizedGaussian(nn.Module):
    """Likelihood of integer residuals under a zero-mean generalized Gaussian (HPCM Eq. of the
    entropy model): ``max(F((v+.5)/s') - F((v-.5)/s'), 1e-9)`` with ``s' = max(s, 0.12)``.

    Both bounds are CompressAI ``LowerBound`` ops (straight-through where the bound is active),
    as in ``GaussianConditional``. Module names match the authors' ``entropy_estimation``.
    """

    def __init__(
        self,
        beta: float = BETA,
        scale_bound: float = SCALE_BOUND,
        likelihood_bound: float = LIKELIHOOD_BOUND,
    ) -> None:
        super().__init__()
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)

    def likelihood(self, values: Tensor, scales: Tensor) -> Tensor:
        """Float32 difference of the two CDF values, as the authors compute it (CONFORMANCE 8)."""
        scales = self.scale_lower_bound(scales)
        upper = gg_cdf((values + 0.5) / scales, self.beta)
        lower = gg_cdf((values - 0.5) / scales, self.beta)
        return self.likelihood_lower_bound(upper - lower)

    def forward(self, values: Tensor, scales: Tensor) -> Tensor:
        return self.likelihood(values, scales)


def y_scale_table() -> np.ndarray:
    """The 60 scales of the y tables: ``exp(linspace(log 0.12, log 64, 60))`` (float64)."""
    lo, hi, n = Y_SCALES
    return np.exp(np.linspace(math.log(lo), math.log(hi), n))


def scale_indexes(scales: Tensor, table: np.ndarray, rule: str = "next-up") -> Tensor:
    """Table index of each scale.

    ``next-up``: how many table entries, all but the last, it exceeds (CompressAI's
    ``GaussianConditional.build_indexes`` rule, the spec's): a scale codes with the next entry up,
    up to 11 % wider than itself on the 60-entry y table. ``nearest``: the entry nearest in log
    scale (edges at the geometric midpoints). At small scales, where most symbols are 0, the wider
    table is expensive: measured on a trained tiny HPCM, next-up costs +2.95 % / +4.46 % over the
    forward estimate on kodim01 / kodim23, nearest +0.09 % / +0.08 %. ``exact``: nearest on the y
    table, against the float64 just below each exact geometric midpoint (:func:`exact_y_edges`), so
    that the index of a float64 scale is the same on every machine (format version 5).
    """
    table = np.asarray(table, dtype=np.float64)
    if rule == "exact":
        if len(table) != Y_SCALES[2]:
            raise ValueError(f"the exact rule indexes the {Y_SCALES[2]}-entry y table, not {len(table)} entries")
        edges = torch.tensor(exact_y_edges(), dtype=torch.float64, device=scales.device)
        return torch.bucketize(scales.to(torch.float64), edges, right=False).to(torch.int32)
    if rule == "next-up":
        edges = table[:-1]
    elif rule == "nearest":
        edges = np.sqrt(table[:-1] * table[1:])
    else:
        raise ValueError(f"unknown table-index rule {rule!r} (next-up | nearest | exact)")
    edges = torch.as_tensor(edges, dtype=scales.dtype, device=scales.device)
    return torch.bucketize(scales, edges, right=False).to(torch.int32)


@lru_cache(maxsize=1)
def exact_y_edges() -> tuple[float, ...]:
    """For each pair of neighbouring y table entries, the largest float64 below their geometric
    midpoint ``exp(log lo + (i + 1/2) step)``, computed with Python's ``decimal`` (software
    arithmetic, identical everywhere). A float64 scale ``s`` exceeds the midpoint exactly when it
    exceeds this edge, since no float64 lies between the two."""
    lo, hi, n = Y_SCALES
    ctx = decimal.Context(prec=60)
    log_lo, log_hi = ctx.ln(decimal.Decimal(lo)), ctx.ln(decimal.Decimal(hi))
    step = ctx.divide(ctx.subtract(log_hi, log_lo), decimal.Decimal(n - 1))
    edges = []
    for i in range(n - 1):
        mid = ctx.exp(ctx.add(log_lo, ctx.multiply(decimal.Decimal(i) + decimal.Decimal("0.5"), step)))
        f = float(mid)  # correctly rounded; step down if above
        edges.append(math.nextafter(f, -math.inf) if decimal.Decimal(f) >= mid else f)
    return tuple(edges)


@lru_cache(maxsize=1)
def _tail_quantile(beta: float = BETA, tail: float = TAIL_MASS) -> float:
    """q with P(|U| > q) = tail for a standard generalized normal."""
    from scipy.stats import gennorm

    return float(gennorm.ppf(1.0 - tail / 2.0, beta))


def _quantized_cdf(scale: float, beta: float) -> tuple[list[int], int]:
    """16-bit CDF over ``-L..L`` plus the tail mass as escape symbol; returns (cdf, L)."""
    half = int(math.ceil(scale * _tail_quantile(beta)))
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    pmf = gg_cdf((r + 0.5) / scale, beta) - gg_cdf((r - 0.5) / scale, beta)
    tail = max(0.0, 1.0 - float(pmf.sum()))
    return pmf_to_quantized_cdf(pmf.tolist() + [tail], PRECISION), half


class GGTables:
    """Quantized CDFs for a list of scales, and coding of integer symbols with them.

    ``encode(symbols, indexes) -> bytes`` and ``decode(data, indexes) -> symbols`` run CompressAI's
    rANS coder; symbols outside a table's ``-L..L`` go through its escape (bypass) coding.
    """

    def __init__(self, scales: np.ndarray | Tensor, beta: float = BETA) -> None:
        scales = np.asarray(torch.as_tensor(scales, dtype=torch.float64).flatten().tolist())
        if scales.size == 0 or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise ValueError("coding-table scales must be finite and positive")
        self.scales = scales
        built = [_quantized_cdf(float(s), beta) for s in scales]
        self.cdfs = [cdf for cdf, _ in built]
        self.cdf_lengths = [len(cdf) for cdf in self.cdfs]
        self.offsets = [-half for _, half in built]

    @classmethod
    def for_y(cls) -> "GGTables":
        """The 60 log-spaced y tables (cached: every codec call shares one build)."""
        return _y_tables()

    def __len__(self) -> int:
        return len(self.cdfs)

    def indexes(self, scales: Tensor, rule: str = "nearest") -> Tensor:
        """Index of the table to code each value with (see :func:`scale_indexes`)."""
        return scale_indexes(scales, self.scales, rule)

    def encode(self, symbols: Tensor, indexes: Tensor) -> bytes:
        """rANS-code integer ``symbols`` (any shape), each with the table ``indexes`` names."""
        enc = self.encoder()
        enc.add(symbols, indexes)
        return enc.flush()

    def decode(self, data: bytes, indexes: Tensor) -> Tensor:
        """Inverse of :meth:`encode`; returns int32 symbols of ``indexes``' shape. The stream must be
        used exactly (:meth:`StreamDecoder.finish`)."""
        dec = self.decoder(data, indexes.numel())
        out = dec.next(indexes)
        dec.finish()
        return out

    def encoder(self) -> "StreamEncoder":
        """An rANS stream filled in several calls (one per coding step), flushed once."""
        return StreamEncoder(self)

    def decoder(self, data: bytes, count: int) -> "StreamDecoder":
        """Reads ``count`` symbols of a :class:`StreamEncoder` stream back, call by call with the
        same indexes."""
        return StreamDecoder(self, data, count)

    def _args(self) -> tuple[list, list, list]:
        return self.cdfs, self.cdf_lengths, self.offsets

    def min_bits(self) -> float:
        """The fewest bits any symbol costs: -log2 of the largest quantized probability."""
        top = max(max(b - a for a, b in zip(cdf, cdf[1:])) for cdf in self.cdfs)
        return -math.log2(top / (1 << PRECISION))


class StreamEncoder:
    """compressai's ``BufferedRansEncoder`` over :class:`GGTables`."""

    def __init__(self, tables: GGTables) -> None:
        self.tables, self.count = tables, 0
        self._enc = BufferedRansEncoder()

    def add(self, symbols: Tensor, indexes: Tensor) -> None:
        if symbols.is_floating_point() and not torch.isfinite(symbols).all():
            raise ValueError("non-finite symbols (the model produced NaN or inf latents)")
        symbols, indexes = symbols.reshape(-1).long(), indexes.reshape(-1).long()
        if symbols.numel() != indexes.numel():
            raise ValueError(f"{symbols.numel()} symbols but {indexes.numel()} indexes")
        if symbols.numel() == 0:
            return
        if symbols.abs().max() > MAX_SYMBOL:
            raise ValueError(f"symbol {int(symbols.abs().max())} is beyond +-{MAX_SYMBOL}")
        if indexes.min() < 0 or indexes.max() >= len(self.tables):
            raise ValueError("table index out of range")
        self._enc.encode_with_indexes(symbols.tolist(), indexes.tolist(), *self.tables._args())
        self.count += symbols.numel()

    def flush(self) -> bytes:
        if self.count == 0:
            return b""
        # compressai's flush writes into a buffer of one 32-bit word per symbol, too small for
        # fewer than ~6 symbols: pad with free trailing symbols (0 in the narrowest table). The
        # decoder stops after the real symbols and never reads the padding.
        pad = max(0, _MIN_SYMBOLS - self.count)
        self._enc.encode_with_indexes([0] * pad, [0] * pad, *self.tables._args())
        return self._enc.flush()


class StreamDecoder:
    """compressai's ``RansDecoder`` (``set_stream`` / ``decode_stream``) over :class:`GGTables`.

    :meth:`finish` checks that the stream was used exactly: compressai's decoder cannot say where
    it stopped, so the decoded symbols are encoded again and must give back the same bytes."""

    def __init__(self, tables: GGTables, data: bytes, count: int) -> None:
        self.tables, self.left, self.data = tables, count, bytes(data)
        self._calls: list[tuple[Tensor, Tensor]] = []
        self._dec: RansDecoder | None = None
        if data:
            if len(data) < 8 or len(data) % 4:
                raise BitstreamError(f"rANS stream of {len(data)} bytes is not a 64-bit state plus 32-bit words")
            # compressai's decoder does not bounds-check its reads. Past the real stream a wrong
            # (yet CRC-passing) stream reads zeros, which decode as the first symbol of a table
            # for at most 16 bits each: one zero word per symbol keeps every read in the buffer.
            self._dec = RansDecoder()
            self._dec.set_stream(bytes(data) + bytes(4 * count + _READ_SLACK))

    def next(self, indexes: Tensor) -> Tensor:
        """Decode one symbol per index (int32, ``indexes``' shape)."""
        idx = indexes.reshape(-1).to(torch.int32)
        if idx.numel() == 0:
            return torch.zeros(indexes.shape, dtype=torch.int32)
        if idx.numel() > self.left:
            raise ValueError(f"{idx.numel()} symbols asked, {self.left} left in this stream")
        if self._dec is None:
            raise BitstreamError(f"rANS stream is empty but {idx.numel()} symbols are expected")
        self.left -= idx.numel()
        if idx.min() < 0 or idx.max() >= len(self.tables):
            raise BitstreamError("table index out of range")
        out = torch.tensor(self._dec.decode_stream(idx.tolist(), *self.tables._args()), dtype=torch.int32)
        self._calls.append((out, idx))
        return out.reshape(indexes.shape)

    def finish(self, name: str = "rANS") -> None:
        """Raise :class:`BitstreamError` unless every symbol was read and the stream is exactly
        their encoding (no trailing or altered bytes)."""
        if self.left:
            raise BitstreamError(f"{name} stream: {self.left} symbols were not read")
        enc = self.tables.encoder()
        try:
            for symbols, idx in self._calls:
                enc.add(symbols, idx)
        except ValueError as e:  # a symbol no encoder writes (beyond MAX_SYMBOL)
            raise BitstreamError(f"{name} stream: decodes to symbols no encoder writes ({e})") from None
        if enc.flush() != self.data:
            raise BitstreamError(f"{name} stream: its {len(self.data)} bytes are not the encoding of the "
                                 f"symbols they decode to (altered or trailing bytes)")


_READ_SLACK = 64
_MIN_SYMBOLS = 8


@lru_cache(maxsize=1)
def _y_tables() -> GGTables:
    return GGTables(y_scale_table())
