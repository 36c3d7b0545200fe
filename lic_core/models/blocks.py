"""Building blocks of HPCM (Li, Zhang, Li, Liu, "Learned Image Compression with Hierarchical
Progressive Context Modeling", ICCV 2025): partial / depthwise convolution residual blocks, the
strided (de)convolutions of the transforms and the window cross-attention of the progressive context.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from compressai.layers import conv1x1
from torch import Tensor, nn

from lic_core.models import autotune


def down(cin: int, cout: int, first: bool = False) -> nn.Conv2d:
    """Strided down-sampling: conv 2x2 stride 2 (the first layer of g_a: conv 4x4 stride 2 pad 1)."""
    if first:
        return nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    return nn.Conv2d(cin, cout, 2, stride=2)


def up(cin: int, cout: int, last: bool = False) -> nn.ConvTranspose2d:
    """Up-sampling: transposed conv 2x2 stride 2 (the last layer of g_s: 4x4 stride 2 pad 1)."""
    if last:
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    return nn.ConvTranspose2d(cin, cout, 2, stride=2)


def gemm_1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution as one matrix product over the positions: the output is a channels-last
    view of the (positions, C) product; a channels-last input is read in place, another layout is
    copied once."""
    b, c, h, w = x.shape
    rows, mat = x.permute(0, 2, 3, 1).reshape(-1, c), weight.view(weight.shape[0], c)
    if bias is not None and bias.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        y = _Linear.apply(rows, mat, bias)
    else:
        y = F.linear(rows, mat, bias)
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


class _Linear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for 2-D ``x`` with the same forward and the same input and
    weight gradients as autograd's, but the bias gradient as a matrix-vector product (ones @ grad)
    instead of ``grad.sum(0)``: in a profiled Base train step on an AMD EPYC with AVX-512 (torch
    2.14) that column sum of each (positions, C) gradient was one of the largest ops besides the
    GEMMs and convolutions, and a GEMV reads the same gradient once at memory speed."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (grad.mm(weight) if need_x else None,  # as addmm's backward computes them
                grad.t().mm(x) if need_w else None,
                grad.new_ones(grad.shape[0]) @ grad if need_b else None)


def conv_1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution as PyTorch's convolution (oneDNN on x86 CPUs, in the input's layout)."""
    return F.conv2d(x, weight, bias)


CONV1X1 = {"gemm": gemm_1x1, "conv": conv_1x1}


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution computed as a GEMM over the positions or as a oneDNN convolution,
    whichever :mod:`lic_core.models.autotune` picks for the call's shape on this machine (same
    parameters and state_dict as ``compressai.layers.conv1x1`` on both paths). The context model's
    convs see few positions and many channels (Base: 960 <-> 1920 channels on the latent grid):
    at the Base and Large train steps' 4x16x16 positions, forward + backward ran at 52-71 GMAC/s
    as oneDNN convolutions and at 63-82 as GEMMs on a 2-core Xeon with AMX, while on an AMD EPYC
    with AVX-512 oneDNN's convolutions were the faster (``benchmarks/bench_model.py --layers``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return CONV1X1[self.path(x)](x, self.weight, self.bias)

    def path(self, x: Tensor) -> str:
        """The path a call on ``x`` takes (under ``torch.compile``: the traced one)."""
        b, c, h, w = x.shape
        shape = (b, c, h, w, self.out_channels, x.is_contiguous(memory_format=torch.channels_last), x.dtype,
                 torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        if torch.compiler.is_compiling():
            return autotune.traced_path("conv1x1", shape)
        path = autotune.choose("conv1x1", self.key(x), x.device, lambda: self.candidates(x))
        return autotune.taken("conv1x1", shape, path)

    def key(self, x: Tensor) -> str:
        """The autotuner's key of a call: input shape and layout, output channels, dtype, grad
        mode (forward only, or forward and backward), autocast and device."""
        b, c, h, w = x.shape
        layout = "cl" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
        grad = "train" if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) else "eval"
        cast = " autocast" if torch.is_autocast_enabled(x.device.type) else ""
        return f"{b}x{c}x{h}x{w}->{self.out_channels} {layout} {str(x.dtype).removeprefix('torch.')} {grad}{cast} {x.device}"

    def candidates(self, x: Tensor) -> dict[str, Callable[[], object]]:
        """Each path run once on detached copies of the input and the parameters: a forward, and
        under autograd a backward too (``torch.autograd.grad``, so no ``.grad`` is touched)."""
        train = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        xs, w, bias = (None if t is None else t.detach().requires_grad_(train and t.requires_grad)
                       for t in (x, self.weight, self.bias))
        leaves = [t for t in (xs, w, bias) if t is not None and t.requires_grad]

        def run(fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> Callable[[], object]:
            def once() -> object:
                y = fn(xs, w, bias)
                return torch.autograd.grad(y, leaves, torch.ones_like(y)) if train else y
            return once

        return {path: run(fn) for path, fn in CONV1X1.items()}


def _residual(x: Tensor, fc2: nn.Module, h: Tensor, inplace: bool = True) -> Tensor:
    """``x + fc2(LeakyReLU(h))``, with ``inplace`` the activation and the sum in place: ``h`` and
    fc2's output are fresh conv outputs that autograd does not keep, and skipping two allocations
    of the widest tensors matters on CPU. Not for :class:`Conv1x1` outputs while autograd records,
    as the GEMM path's are views: an in-place op on a view makes autograd rebuild its base in the backward (a
    zeroed copy, a scatter and a standard-layout clone), which costs more than the allocations."""
    out = fc2(F.leaky_relu(h, SLOPE, inplace=inplace))
    return out.add_(x) if inplace else out + x


SLOPE = 0.01  # LeakyReLU's negative slope (torch's default, as in the authors' blocks)
_GEO = ([0, 0], [1, 1], [1, 1], 1)  # a 1x1 convolution's padding, stride, dilation and groups


@functools.cache
def _onednn_fusion() -> bool:
    """Whether this torch has oneDNN's convolution with a fused activation or sum (the kernels
    torch.compile's CPU inference path calls; not public API, hence the check)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fusable(x: Tensor, *layers: nn.Module) -> bool:
    """Whether ``x + fc2(LeakyReLU(fc1(h)))`` may run as two fused oneDNN convolutions: float32
    on the CPU, no autograd (the fused kernels have no backward), outside autocast (bf16
    transforms) and torch.compile (inductor fuses by itself), no forward hook on ``layers`` (the
    fused calls bypass their forward: MAC counts, probes), and not while deterministic algorithms
    are asked for: the entropy coder keeps the plain calls, whose values every file written so far
    was coded with (the fused kernels agree with them to float32 rounding, not bit for bit)."""
    mod = torch.nn.modules.module
    hooked = (any(m._forward_hooks or m._forward_pre_hooks for m in layers)
              or getattr(mod, "_global_forward_hooks", None) or getattr(mod, "_global_forward_pre_hooks", None))
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and not hooked
            and not autotune.deterministic() and _onednn_fusion())


def _fused_act(fc: nn.Conv2d, h: Tensor) -> Tensor:
    """``LeakyReLU(fc(h))`` as one oneDNN convolution with the activation as a post-op: no pass
    of its own over the block's widest tensor."""
    return torch.ops.mkldnn._convolution_pointwise(h, fc.weight, fc.bias, *_GEO, "leaky_relu", [SLOPE], "")


def _fused_sum(fc: nn.Conv2d, a: Tensor, x: Tensor) -> Tensor:
    """``x + fc(a)`` as one oneDNN convolution with the sum as a post-op."""
    return torch.ops.mkldnn._convolution_pointwise.binary(a, x, fc.weight, fc.bias, *_GEO, "add", 1.0, None, [], None)


class PConvRB(nn.Module):
    """Partial-convolution residual block:
    ``x + fc2(LeakyReLU(fc1(pconv(x))))``, ``pconv`` a 3x3 conv on the first C/4 channels."""

    def __init__(self, ch: int, partial: int = 4, ratio: int = 4):
        super().__init__()
        self.split = ch // partial
        self.pconv = nn.Conv2d(self.split, self.split, 3, padding=1)
        self.fc1 = conv1x1(ch, ch * ratio)
        self.fc2 = conv1x1(ch * ratio, ch)

    def forward(self, x: Tensor) -> Tensor:
        head, tail = x.split([self.split, x.shape[1] - self.split], dim=1)
        h = torch.cat((self.pconv(head), tail), dim=1)
        if _fusable(x, self.fc1, self.fc2):  # eval and coding on the CPU
            return _fused_sum(self.fc2, _fused_act(self.fc1, h), x)
        return _residual(x, self.fc2, self.fc1(h))


class DWConvRB(nn.Module):
    """Depthwise-convolution residual block: ``x + fc2(LeakyReLU(fc1(dw3x3(x))))``."""

    def __init__(self, ch: int, ratio: int = 2):
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 3, padding=1, groups=ch)
        self.fc1 = Conv1x1(ch, ch * ratio)
        self.fc2 = Conv1x1(ch * ratio, ch)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dw(x)
        if _fusable(x, self.fc1, self.fc2) and self.fc1.path(h) == "conv":  # eval on oneDNN's path
            a = _fused_act(self.fc1, h)
            return _fused_sum(self.fc2, a, x) if self.fc2.path(a) == "conv" else self.fc2(a).add_(x)
        return _residual(x, self.fc2, self.fc1(h), inplace=not torch.is_grad_enabled())


def transform(widths: list[int], depths: list[int], synthesis: bool = False) -> nn.Sequential:
    """g_a (or, with ``synthesis``, the mirrored g_s): widths ``[3, c1, c2, c3, M]``, ``depths[i]``
    PConvRB blocks at width ``c_{i+1}``."""
    layers: list[nn.Module] = []
    if not synthesis:
        for i, n in enumerate(depths):
            layers.append(down(widths[i], widths[i + 1], first=i == 0))
            layers += [PConvRB(widths[i + 1]) for _ in range(n)]
        layers.append(down(widths[-2], widths[-1]))
        return nn.Sequential(*layers)
    rw, rd = widths[::-1], depths[::-1]
    for i, n in enumerate(rd):
        layers.append(up(rw[i], rw[i + 1]))
        layers += [PConvRB(rw[i + 1]) for _ in range(n)]
    layers.append(up(rw[-2], rw[-1], last=True))
    return nn.Sequential(*layers)


class SpatialPrior(nn.Module):
    """The step prior ``psi = branch_2(branch_1(x) * q)``: DWConvRB(3M) stacks, ``branch_2`` ending
    in conv1x1(3M -> 2M); ``q`` is the step's learnable vector (1, 3M, 1, 1)."""

    def __init__(self, ch: int, out: int, n1: int, n2: int):
        super().__init__()
        self.branch_1 = nn.Sequential(*[DWConvRB(ch) for _ in range(n1)])
        self.branch_2 = nn.Sequential(*[DWConvRB(ch) for _ in range(n2)], Conv1x1(ch, out))

    def forward(self, x: Tensor, q: Tensor) -> Tensor:
        return self.branch_2(self.branch_1(x) * q)


class WindowCrossAttention(nn.Module):
    """Progressive context cell of HPCM (cross-attention between coding steps): ``softmax(q k^T / sqrt(d)) v`` within
    non-overlapping ``window`` x ``window`` windows, q from the new parameters ``psi``, k and v from
    the previous context, plus ``out(psi)``. No norm, no positional encoding."""

    def __init__(self, ch: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.q, self.k, self.v, self.out = (Conv1x1(ch, ch) for _ in range(4))

    def _windows(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s, d = self.window, c // self.heads
        x = x.view(b, self.heads, d, h // s, s, w // s, s)
        return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * (h // s) * (w // s), self.heads, s * s, d)

    def _merge(self, x: Tensor, shape: torch.Size) -> Tensor:
        """Windows back to (B, C, H, W), channels-last like the 1x1 convs' outputs."""
        b, c, h, w = shape
        s, d = self.window, c // self.heads
        x = x.view(b, h // s, w // s, self.heads, s, s, d)
        return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, c).permute(0, 3, 1, 2)

    def forward(self, psi: Tensor, ctx: Tensor) -> Tensor:
        q, k, v = (self._windows(t) for t in (self.q(psi), self.k(ctx), self.v(ctx)))
        att = F.scaled_dot_product_attention(q, k, v)
        return self._merge(att, psi.shape) + self.out(psi)

    def attention_macs(self, shape: torch.Size) -> int:
        """Multiply-accumulates of the two attention matmuls (not the 1x1 convs) for ``shape``."""
        b, c, h, w = shape
        return 2 * b * h * w * self.window**2 * c
