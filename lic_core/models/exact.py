"""Exact entropy parameters for HPCM (Li, Zhang, Li, Liu, ICCV 2025): the path that decides which
symbol a bitstream decodes to, computed so that every CPU (any instruction set, any thread count)
and every GPU gets the same bits.

That path is ``z_hat -> h_s -> params -> context model (adaptors, step priors, window attention,
transitions) -> scales and means``: a scale picks the coding table (a table picked differently
decodes the rest of the stream to other symbols), ``y_hat = symbol + mean`` feeds the next steps.
Float convolutions sum in an order that depends on the machine (vector width, blocking, threads),
so their results differ in the last bits. Here each reduction is made exact instead:

* an activation entering a convolution is put on a grid ``2^-F`` (``round(x * 2^F)``, clamped to
  ``+-(2^A - 1)``), weights are integers with a power-of-two scale ``2^-G_c`` per output channel and
  biases integers on the accumulator grid ``2^-(F + G_c)``. The convolution of these integer-valued
  float64 tensors is exact in any summation order when every partial sum stays below ``2^53``,
  which ``(2^A - 1) * sum_k |W_ck| + |B_c| < 2^53`` guarantees: checked when a layer is built.
  Weights and biases are carried pre-multiplied by the output scale ``2^-(F + G_c)`` (a power of two:
  the same sums, already scaled); 1x1 convolutions run as one GEMM over the positions, depthwise
  ones as shifted products, the others as the library's convolution.
* the softmax of the window attention uses integer logits on the grid ``2^-LOGIT_BITS``, minus the
  row maximum, and ``exp`` from a table of integers computed with Python's ``decimal`` (software
  arithmetic: the same table everywhere); ``sum_j e_j v_j / sum_j e_j`` are exact integer sums
  and one correctly rounded division.
* everything between reductions is elementwise IEEE-754 arithmetic on float64 (residual sums,
  LeakyReLU, the step vector ``q``, ``symbol + mean``), which is correctly rounded and therefore
  the same on every machine. No transcendental function runs on the path.

The grids ``F`` are chosen per layer from activation ranges measured on a few images
(:func:`calibrate`), with :data:`MARGIN_BITS` of headroom, and recorded in a small spec so that the
same float checkpoint plus spec gives the same :class:`ExactHPCM` on every machine (:func:`derive`
uses only exact arithmetic). g_a and g_s stay float: the synthesis may round a pixel differently on
another machine, never a symbol. Bitstream format version 5 (:mod:`lic_core.coding.codec`).
"""
from __future__ import annotations

import copy
import decimal
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lic_core.errors import LicError
from lic_core.models.blocks import WindowCrossAttention
from lic_core.models.hpcm import HPCM, HPCMConfig

WEIGHT_BITS = 16  # integer weights: sign plus 15 bits of each output channel's largest
ACT_BITS = 30  # an activation's integer magnitude at most (fewer where a layer's weights need it)
QK_BITS = 22  # attention queries and keys (d products of two of them: below 2^53 for d < 256)
V_BITS = 24  # attention values
LOGIT_BITS = 10  # attention logits on the grid 2^-10
EXP_BITS = 20  # exp table entries: round(2^20 * exp(-t 2^-LOGIT_BITS)), 0 from about t = 14.6
MARGIN_BITS = 2  # headroom over the largest calibration activation (4x) before the clamp
EXACT_LIMIT = 1 << 53  # float64 integers are exact below this
SCOPES = ("h_s", "adaptors", "priors", "attns", "transitions")  # HPCM's entropy-parameter path


def _pow2(e: int) -> float:
    return math.ldexp(1.0, e)


def _ceil_log2(v: float) -> int:
    """Smallest e with ``v <= 2^e`` (v > 0), from frexp: exact."""
    m, e = math.frexp(v)
    return e - 1 if m == 0.5 else e


@contextmanager
def _no_cudnn(device: torch.device) -> Iterator[None]:
    """cuDNN may pick FFT or Winograd convolutions, which round; its absence leaves im2col + GEMM."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


class ExactConv(nn.Module):
    """A convolution (plain, depthwise or transposed) of integer-valued float64 tensors that is
    exact in any summation order: input ``round(x 2^F)`` clamped to ``+-(2^A - 1)``, integer
    weights ``W`` with scale ``2^-G_c`` per output channel, integer bias on ``2^-(F + G_c)``; the
    output is the exact accumulator times ``2^-(F + G_c)`` (no rounding). State (all integers, so
    the weights fingerprint covers them): ``weight``, ``bias``, ``shift`` (G_c), ``frac`` (F),
    ``bits`` (A)."""

    def __init__(self, like: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__()
        self.transposed = isinstance(like, nn.ConvTranspose2d)
        self.stride, self.padding, self.groups = like.stride, like.padding, like.groups
        cout = like.out_channels
        self.register_buffer("weight", torch.zeros(like.weight.shape, dtype=torch.int64))
        self.register_buffer("bias", torch.zeros(cout, dtype=torch.int64))
        self.register_buffer("shift", torch.zeros(cout, dtype=torch.int64))
        self.register_buffer("frac", torch.zeros((), dtype=torch.int64))
        self.register_buffer("bits", torch.zeros((), dtype=torch.int64))
        self._cache: tuple | None = None

    @property
    def depthwise(self) -> bool:
        return not self.transposed and self.groups > 1 and self.groups == self.weight.shape[0] \
            and self.weight.shape[1] == 1

    @property
    def pointwise(self) -> bool:
        return not self.transposed and self.groups == 1 and tuple(self.weight.shape[2:]) == (1, 1) \
            and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0)

    def out_dim(self) -> int:
        return 1 if self.transposed else 0

    def quantize(self, like: nn.Conv2d | nn.ConvTranspose2d, frac: int, name: str = "conv") -> "ExactConv":
        """Fill the integer state from ``like``'s float weights for input grid ``2^-frac``; raise
        :class:`LicError` if a partial sum could reach 2^53."""
        w = like.weight.detach().to("cpu", torch.float64)
        b = like.bias.detach().to("cpu", torch.float64) if like.bias is not None else torch.zeros(w.shape[self.out_dim()])
        od = self.out_dim()
        per_out = w.transpose(0, od).reshape(w.shape[od], -1)
        shift = [WEIGHT_BITS - 1 - _ceil_log2(m) if m > 0 else 0 for m in per_out.abs().amax(1).tolist()]
        scale = torch.tensor([_pow2(s) for s in shift], dtype=torch.float64)
        wi = torch.round(per_out * scale[:, None])
        wi = wi.reshape(w.transpose(0, od).shape).transpose(0, od)
        bi = torch.round(b * torch.tensor([_pow2(s + frac) for s in shift], dtype=torch.float64))
        self.weight.copy_(wi.to(torch.int64))
        self.bias.copy_(bi.to(torch.int64))
        self.shift.copy_(torch.tensor(shift))
        self.frac.fill_(int(frac))
        # the widest inputs that keep the weights' sums under 2^51, leaving room for the bias
        self.bits.fill_(min(ACT_BITS, _ceil_log2(EXACT_LIMIT / 4 / max(max(self.weight_sums()), 1)) - 1))
        self.check(name)
        return self

    def weight_sums(self) -> list[int]:
        """Per output channel, the most ``sum |W|`` one output value accumulates (exact integers)."""
        w = self.weight.abs()
        if self.transposed and tuple(self.stride) == tuple(w.shape[2:]):
            return w.amax(dim=(2, 3)).sum(0).tolist()  # stride == kernel: one tap per input channel
        od = self.out_dim()
        return w.transpose(0, od).reshape(w.shape[od], -1).sum(1).tolist()

    def check(self, name: str = "conv") -> None:
        """Raise :class:`LicError` unless ``(2^A - 1) sum|W_c| + |B_c| < 2^53`` for every channel."""
        limit = (1 << int(self.bits)) - 1
        worst = max(limit * s + abs(bv) for s, bv in zip(self.weight_sums(), self.bias.tolist()))
        if worst >= EXACT_LIMIT or int(self.bits) < 1:
            raise LicError(f"{name}: integer sums could reach {worst:.3g} >= 2^53 with {int(self.bits)}-bit inputs "
                           f"(weights or bias too large for exact arithmetic)")

    def state_key(self) -> tuple:
        """Changes whenever the integer state does (a cached :class:`Plan` is rebuilt)."""
        return (self.weight.data_ptr(),) + tuple(t._version for t in (self.weight, self.bias, self.shift, self.frac,
                                                                      self.bits))

    def integers(self, device: torch.device) -> tuple[Tensor, Tensor, float, int, Tensor]:
        """The layer in its defining form: integer weights and bias as float64, the input scale
        ``2^F``, the clamp ``2^A - 1`` and the output scale ``2^-(F + G_c)`` (1, C, 1, 1); the
        output is ``conv(clamp(round(x 2^F)), weights, bias) * scale``."""
        frac, bits = int(self.frac), int(self.bits)
        out = torch.tensor([_pow2(-(frac + s)) for s in self.shift.tolist()], dtype=torch.float64)
        return (self.weight.to(device, torch.float64), self.bias.to(device, torch.float64), _pow2(frac),
                (1 << bits) - 1, out.view(1, -1, 1, 1).to(device))

    def plan(self, device: torch.device, post: float = 1.0) -> Plan:
        """:class:`Plan` of this layer (its output times the power of two ``post``), cached."""
        key = (device, post, self.state_key())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, Plan.of(self, device, post))
        return self._cache[1]

    def quantized(self, x: Tensor, plan: Plan) -> Tensor:
        """``clamp(round(x 2^F), +-(2^A - 1))`` as float64, in x's layout."""
        a = x.to(torch.float64).mul(plan.scale_in)  # a new tensor: rounded and clamped in place
        return a.round_().clamp_(-plan.limit, plan.limit)

    def forward(self, x: Tensor) -> Tensor:
        plan = self.plan(x.device)
        if self.pointwise:
            return _pointwise(x, plan)
        if self.depthwise:
            return _depthwise(x, plan, self.padding)
        a = self.quantized(x, plan)
        with _no_cudnn(x.device):
            if self.transposed:
                return F.conv_transpose2d(a, plan.weight, plan.bias, self.stride, self.padding)
            return F.conv2d(a, plan.weight, plan.bias, self.stride, self.padding, 1, self.groups)


@dataclass(frozen=True)
class Plan:
    """A layer's float64 operands on one device. The weights and bias are the integers times
    their output scale ``2^-(F + G_c)`` (and a power of two ``post``): a power-of-two scale moves
    no bit of a float64 whose exponent stays in range, so every partial sum is the integer one
    times that scale, exact like it, and the sums come out already scaled (no pass over the output)."""

    weight: Tensor  # conv layout; (C_out, C_in) for a 1x1 convolution, (kh, kw, C) for a depthwise one
    bias: Tensor
    scale_in: float
    limit: int

    @classmethod
    def of(cls, conv: ExactConv, device: torch.device, post: float = 1.0) -> "Plan":
        w, b, scale_in, limit, scale_out = conv.integers(device)
        scale = scale_out.view(-1) * post
        od = conv.out_dim()
        shape = [1] * w.dim()
        shape[od] = -1
        weight = w * scale.view(shape)
        if conv.pointwise:
            weight = weight.reshape(weight.shape[0], -1).contiguous()
        elif conv.depthwise:
            weight = weight[:, 0].permute(1, 2, 0).contiguous()
        return cls(weight, b * scale, scale_in, limit)

    @classmethod
    def stacked(cls, plans: list["Plan"]) -> "Plan":
        """One GEMM for 1x1 convolutions of the same input grid: their outputs side by side."""
        return cls(torch.cat([p.weight for p in plans]), torch.cat([p.bias for p in plans]),
                   plans[0].scale_in, plans[0].limit)


def _matrix(a: Tensor) -> Tensor:
    """``a`` (N, C, H, W) as a (positions, C) matrix: a view for a channels-last tensor or one
    standard-layout image (the GEMM reads the transposed matrix in place), else a copy."""
    n, c, h, w = a.shape
    if n == 1 and a.is_contiguous():
        return a.view(c, h * w).t()
    return a.permute(0, 2, 3, 1).reshape(-1, c)


def _pointwise(x: Tensor, plan: Plan) -> Tensor:
    """A 1x1 convolution as one float64 GEMM over the positions (exact for these operands in any
    summation order, like the convolution call it replaces), the input quantized in its own
    layout (a transposing pass costs several plain ones); the output is a channels-last view."""
    n, _, h, w = x.shape
    a = x.to(torch.float64).mul(plan.scale_in).round_().clamp_(-plan.limit, plan.limit)
    out = torch.addmm(plan.bias, _matrix(a), plan.weight.t())
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def _depthwise(x: Tensor, plan: Plan, padding: tuple[int, int]) -> Tensor:
    """Depthwise convolution as a sum of shifted products (``addcmul_``) on (N, H, W, C) tensors:
    exact for these operands like the library's, and several times faster than its float64
    grouped convolution on a CPU. The input is quantized straight into the padded buffer; the
    output is a channels-last view."""
    n, c, h, wd = x.shape
    (ph, pw), (kh, kw) = padding, plan.weight.shape[:2]
    p = torch.zeros(n, h + 2 * ph, wd + 2 * pw, c, dtype=torch.float64, device=x.device)
    torch.mul(x.to(torch.float64).permute(0, 2, 3, 1), plan.scale_in, out=p[:, ph:ph + h, pw:pw + wd])
    p.round_().clamp_(-plan.limit, plan.limit)  # the zero border stays zero
    h, wd = p.shape[1] - kh + 1, p.shape[2] - kw + 1
    out = plan.bias.expand(n, h, wd, c).clone()
    for i in range(kh):
        for j in range(kw):
            out.addcmul_(p[:, i:i + h, j:j + wd], plan.weight[i, j])
    return out.permute(0, 3, 1, 2)


@lru_cache(maxsize=4)
def exp_table(logit_bits: int = LOGIT_BITS, exp_bits: int = EXP_BITS) -> tuple[int, ...]:
    """``round(2^exp_bits * exp(-t 2^-logit_bits))`` for t = 0, 1, ... while nonzero: Python's
    ``decimal`` with 50 digits (software arithmetic, the same on every machine)."""
    ctx = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)
    step = ctx.exp(ctx.divide(decimal.Decimal(-1), decimal.Decimal(1 << logit_bits)))
    v, out = decimal.Decimal(1 << exp_bits), []
    while True:
        e = int(v.to_integral_value(rounding=decimal.ROUND_HALF_EVEN, context=ctx))
        if e == 0:
            return tuple(out)
        out.append(e)
        v = ctx.multiply(v, step)


class ExactWindowAttention(WindowCrossAttention):
    """HPCM's window cross-attention ``softmax(q k^T / sqrt(d)) v + out(psi)`` in exact arithmetic:
    q, k, v, out are :class:`ExactConv` (1/sqrt(d) folded into q's weights), q and k are put on
    grids with :data:`QK_BITS`-bit integers, v with :data:`V_BITS`, the integer logits on
    ``2^-LOGIT_BITS`` minus their row maximum index the :func:`exp_table`."""

    def __init__(self, like: WindowCrossAttention):
        nn.Module.__init__(self)
        self.heads, self.window = like.heads, like.window
        self.q, self.k, self.v, self.out = (ExactConv(getattr(like, n)) for n in ("q", "k", "v", "out"))
        self.register_buffer("fracs", torch.zeros(3, dtype=torch.int64))  # grids of q, k, v
        self.register_buffer("lut", torch.tensor(exp_table(), dtype=torch.int64))
        self._cache: tuple | None = None

    def quantize(self, like: WindowCrossAttention, fracs: Mapping[str, int], name: str = "attn") -> "ExactWindowAttention":
        d = like.q.weight.shape[0] // like.heads
        q = copy.deepcopy(like.q).to(torch.float64)
        with torch.no_grad():  # 1/sqrt(d): one correctly rounded multiply per weight
            inv = 1.0 / math.sqrt(d)
            q.weight.mul_(inv)
            q.bias.mul_(inv)
        for n, src in (("q", q), ("k", like.k), ("v", like.v), ("out", like.out)):
            getattr(self, n).quantize(src, fracs[n], f"{name}.{n}")
        self.fracs.copy_(torch.tensor([fracs["q_logit"], fracs["k_logit"], fracs["v_value"]]))
        self.lut.copy_(torch.tensor(exp_table(), dtype=torch.int64))
        self.check(name)
        return self

    def check(self, name: str = "attn") -> None:
        d = self.q.weight.shape[0] // self.heads
        n = self.window ** 2
        worst_logit = d * ((1 << QK_BITS) - 1) ** 2
        worst_value = n * int(self.lut[0]) * ((1 << V_BITS) - 1)
        if max(worst_logit, worst_value) >= EXACT_LIMIT:
            raise LicError(f"{name}: attention sums could reach 2^53 (head dim {d}, window {self.window})")

    # Windows and heads, defined here rather than inherited: format 5 fixes which values meet in
    # which sum, so the float attention's layout may change without touching these files.
    def _windows(self, x: Tensor) -> Tensor:
        """(B, C, H, W) as (B * windows, heads, s * s, d)."""
        b, c, h, w = x.shape
        s, d = self.window, c // self.heads
        x = x.view(b, self.heads, d, h // s, s, w // s, s)
        return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * (h // s) * (w // s), self.heads, s * s, d)

    def _merge(self, x: Tensor, shape: torch.Size) -> Tensor:
        """:meth:`_windows`'s inverse: (B, C, H, W), channels-last."""
        b, c, h, w = shape
        s, d = self.window, c // self.heads
        x = x.view(b, h // s, w // s, self.heads, s, s, d)
        return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, c).permute(0, 3, 1, 2)

    def _plans(self, device: torch.device) -> "_AttentionPlan":
        key = (device, self.fracs._version, self.lut._version) + tuple(
            c.state_key() for c in (self.q, self.k, self.v, self.out))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _AttentionPlan.of(self, device))
        return self._cache[1]

    def forward(self, psi: Tensor, ctx: Tensor) -> Tensor:
        plan = self._plans(psi.device)
        qk_max, v_max = (1 << QK_BITS) - 1, (1 << V_BITS) - 1
        q, out = _project(psi, plan.psi)
        k, v = _project(ctx, plan.ctx)
        q = self._windows(q).round_().clamp_(-qk_max, qk_max)
        k = self._windows(k).round_().clamp_(-qk_max, qk_max)
        v = self._windows(v).round_().clamp_(-v_max, v_max)
        logits = torch.matmul(q, k.transpose(-1, -2)).mul_(plan.logit_scale).round_()
        gap = (logits.amax(-1, keepdim=True) - logits).clamp_(max=plan.lut.numel() - 1)
        e = plan.lut.index_select(0, gap.int().view(-1)).view(gap.shape)  # int32 indices: far faster than int64
        # RN(a / (s 2^fv)) == RN(a / s) 2^-fv: the value grid's scale rides on the row sums
        att = torch.matmul(e, v).div_(e.sum(-1, keepdim=True).mul_(plan.sum_scale))
        return self._merge(att, psi.shape) + out


@dataclass(frozen=True)
class _AttentionPlan:
    """An attention layer's operands on one device. q, k and v come out of their GEMMs already on
    their grids' scale (``2^fq`` etc. folded into the weights like the output scales: exact), so
    only rounding and clamping remain; the two 1x1 convolutions of one input (q and out of psi,
    k and v of the context) run as one GEMM where their input grids agree."""

    psi: tuple[tuple[Plan, ...], tuple[int, ...]]  # the plans and the output widths of q, out
    ctx: tuple[tuple[Plan, ...], tuple[int, ...]]  # of k, v
    logit_scale: float
    sum_scale: float
    lut: Tensor

    @classmethod
    def of(cls, attn: ExactWindowAttention, device: torch.device) -> "_AttentionPlan":
        fq, fk, fv = attn.fracs.tolist()
        lut = torch.cat((attn.lut, attn.lut.new_zeros(1)))  # gaps past the table: exp is 0
        psi = _paired([Plan.of(attn.q, device, _pow2(fq)), Plan.of(attn.out, device)])
        ctx = _paired([Plan.of(attn.k, device, _pow2(fk)), Plan.of(attn.v, device, _pow2(fv))])
        return cls(psi, ctx, _pow2(LOGIT_BITS - fq - fk), _pow2(fv), lut.to(device, torch.float64))


def _paired(plans: list[Plan]) -> tuple[tuple[Plan, ...], tuple[int, ...]]:
    widths = tuple(p.weight.shape[0] for p in plans)
    if all(p.scale_in == plans[0].scale_in and p.limit == plans[0].limit for p in plans):
        return (Plan.stacked(plans),), widths
    return tuple(plans), widths


def _project(x: Tensor, paired: tuple[tuple[Plan, ...], tuple[int, ...]]) -> list[Tensor]:
    """The outputs of the 1x1 convolutions of ``x`` that :func:`_paired` grouped."""
    plans, widths = paired
    if len(plans) == 1:
        return list(_pointwise(x, plans[0]).split(widths, dim=1))
    return [_pointwise(x, p) for p in plans]


# -- the exact model --------------------------------------------------------------------------------
def _float_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of the path's float layers: its attention modules and its convolutions
    outside them, in module order."""
    for scope in SCOPES:
        for name, mod in getattr(model, scope).named_modules(prefix=scope):
            if isinstance(mod, WindowCrossAttention) or (
                    isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) and not name.startswith("attns.")):
                yield name, mod


def _set(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


class ExactHPCM(HPCM):
    """An HPCM whose entropy-parameter path (h_s, adaptors, step priors, attention, transitions)
    runs in exact arithmetic (:class:`ExactConv`, :class:`ExactWindowAttention`); g_a, h_a, g_s and
    the learned z prior stay float. :meth:`HPCM.context_model` is the same loop: only its layers
    differ. Build one with :func:`derive` (a float model and a calibration spec) or
    :func:`calibrate`; its state_dict (integers for the exact layers) is what the weights
    fingerprint of a format-5 file covers."""

    def __init__(self, cfg: HPCMConfig):
        super().__init__(cfg)
        for name, mod in list(_float_layers(self)):
            _set(self, name, ExactWindowAttention(mod) if isinstance(mod, WindowCrossAttention) else ExactConv(mod))

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """g_s in the float model's precision (y_hat comes from the float64 context model)."""
        return super().synthesis(y_hat.to(self.means_hyper.dtype))


def layer_names(model: HPCM) -> list[str]:
    """The spec's keys: one input grid per exact convolution, three more per attention (its q
    and k logits and its values)."""
    names = []
    for name, mod in _float_layers(model):
        if isinstance(mod, WindowCrossAttention):
            names += [f"{name}.{n}" for n in ("q", "k", "v", "out", "q_logit", "k_logit", "v_value")]
        elif not name.startswith("attns."):
            names.append(name)
    return names


def derive(model: HPCM, spec: Mapping[str, int]) -> ExactHPCM:
    """The :class:`ExactHPCM` of float ``model`` with the input grids ``spec`` (layer name ->
    fraction bits F, :func:`calibrate`'s). Deterministic: only exact and correctly rounded
    arithmetic on the float weights, so every machine derives the same integers."""
    if isinstance(model, ExactHPCM):
        raise LicError("derive takes a float model; this one is already exact")
    missing = sorted(set(layer_names(model)) - set(spec))
    if missing:
        raise LicError(f"exact-model spec lacks the grid of layer {missing[0]!r} ({len(missing)} missing)")
    unknown = sorted(set(spec) - set(layer_names(model)))
    if unknown:
        raise LicError(f"exact-model spec names layer {unknown[0]!r}, which this model lacks ({len(unknown)} unknown)")
    widths = _input_bits(model)
    for k, f in spec.items():  # what calibrate_spec can give for float32 activations (2^-149 to 2^128)
        lo, hi = widths[k] - MARGIN_BITS - 128, widths[k] - MARGIN_BITS + 149
        if isinstance(f, bool) or not isinstance(f, int) or not lo <= f <= hi:
            raise LicError(f"exact-model spec: layer {k!r} has grid {f!r}, not an integer in {lo}..{hi}")
    with torch.random.fork_rng(devices=[]):
        exact = ExactHPCM(model.cfg)
    own = exact.state_dict()
    src = model.state_dict()
    float_keys = {k: v for k, v in src.items() if k in own and own[k].is_floating_point()
                  and not any(k.startswith(n + ".") for n, _ in _float_layers(model))}
    exact.load_state_dict({**own, **float_keys}, strict=True)
    for name, mod in _float_layers(model):
        target = exact.get_submodule(name)
        if isinstance(mod, WindowCrossAttention):
            target.quantize(mod, {n: int(spec[f"{name}.{n}"]) for n in
                                  ("q", "k", "v", "out", "q_logit", "k_logit", "v_value")}, name)
        elif not name.startswith("attns."):
            target.quantize(mod, int(spec[name]), name)
    return exact.to(model.means_hyper.device, model.means_hyper.dtype).train(model.training)


def _frac_for(maxabs: float, bits: int) -> int:
    """Fraction bits that put ``maxabs`` times 2^MARGIN_BITS within ``bits``-bit integers."""
    if not maxabs > 0 or not math.isfinite(maxabs):
        return bits - MARGIN_BITS
    return bits - MARGIN_BITS - _ceil_log2(maxabs)


def calibrate_spec(model: HPCM, images: Iterable[Tensor]) -> dict[str, int]:
    """Input grids for :func:`derive`: the largest absolute input of each exact layer over an
    eval forward of ``images`` (each (1, 3, H, W), padded to the pad multiple), with
    :data:`MARGIN_BITS` of headroom within the layer's integer width."""
    peaks: dict[str, float] = {}
    hooks = []

    def record(key: str, t: Tensor) -> None:
        peaks[key] = max(peaks.get(key, 0.0), float(t.detach().abs().max()))

    for name, mod in _float_layers(model):
        if isinstance(mod, WindowCrossAttention):
            d = mod.q.weight.shape[0] // mod.heads
            for n in ("q", "k", "v", "out"):
                hooks.append(getattr(mod, n).register_forward_pre_hook(
                    lambda m, inp, key=f"{name}.{n}": record(key, inp[0])))
            for n, key, div in (("q", "q_logit", math.sqrt(d)), ("k", "k_logit", 1.0), ("v", "v_value", 1.0)):
                hooks.append(getattr(mod, n).register_forward_hook(
                    lambda m, inp, out, key=f"{name}.{key}", div=div: record(key, out / div)))
        elif not name.startswith("attns."):
            hooks.append(mod.register_forward_pre_hook(lambda m, inp, key=name: record(key, inp[0])))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = model.cfg.pad_multiple
            for x in images:  # padded like the codec pads: replicated edges
                x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p), mode="replicate")
                model(x.to(model.means_hyper.device, model.means_hyper.dtype))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    widths = _input_bits(model)
    return {k: _frac_for(peaks.get(k, 0.0), widths[k]) for k in layer_names(model)}


def _input_bits(model: HPCM) -> dict[str, int]:
    """Each spec key's integer width: a convolution's from its weights' bound (grid-independent),
    attention logits QK_BITS, values V_BITS."""
    out = {}
    for name, mod in _float_layers(model):
        if isinstance(mod, WindowCrossAttention):
            for n in ("q", "k", "v", "out"):
                out[f"{name}.{n}"] = ExactConv(getattr(mod, n)).quantize(getattr(mod, n), 0, name).bits.item()
            out |= {f"{name}.q_logit": QK_BITS, f"{name}.k_logit": QK_BITS, f"{name}.v_value": V_BITS}
        elif not name.startswith("attns."):
            out[name] = ExactConv(mod).quantize(mod, 0, name).bits.item()
    return out


def calibrate(model: HPCM, images: Iterable[Tensor]) -> ExactHPCM:
    """:func:`derive` with :func:`calibrate_spec` of ``images``: the exact model of any checkpoint."""
    return derive(model, calibrate_spec(model, images))
