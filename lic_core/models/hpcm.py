"""HPCM: Li, Zhang, Li, Liu, "Learned Image Compression with Hierarchical Progressive Context
Modeling", ICCV 2025 (arXiv 2507.19125).

One class for every size: ``hpcm("base")`` (68.5 M parameters), ``hpcm("large")`` (89.7 M) and
``hpcm("tiny")`` (CPU experiments) differ only by :class:`HPCMConfig`. The 11 coding steps are the
data in :mod:`lic_core.models.schedule`; :meth:`HPCM.context_model` is the single loop over them
that training, evaluation, the encoder and the decoder all run.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from lic_core.coding.entropy import GeneralizedGaussian, round_ste, uniform_noise
from lic_core.errors import CheckpointError, ConfigError
from lic_core.atomic import write_atomic
from lic_core.models.blocks import Conv1x1, PConvRB, SpatialPrior, WindowCrossAttention, down, transform, up
from lic_core.models.schedule import N_ADAPTORS, N_QUANT, SCALE_OF_STEP, STEPS, Geometry, geometry

CodeStep = Callable[[int, Tensor, Tensor, Tensor], Tensor]
# Accepted ranges of HPCMConfig's integer fields: wide enough for any published size, narrow enough
# that a config from an untrusted source (a bitstream header, a checkpoint) cannot ask for an
# absurd model. PConvRB splits a quarter of its channels, so widths and N need at least 4.
LIMITS: dict[str, tuple[int, int]] = {
    "M": (8, 1024), "N": (4, 1024), "widths": (4, 1024), "depths": (0, 16), "hyper_blocks": (0, 16),
    "prior_s12": (0, 16), "prior_s3": (0, 16), "heads": (1, 256), "windows": (1, 64), "seed": (0, 2**63 - 1),
}
LENGTHS = {"widths": 3, "depths": 3, "hyper_blocks": 4, "prior_s12": 2, "prior_s3": 2, "windows": 3}


@dataclass(frozen=True)
class HPCMConfig:
    """Sizes of one HPCM. ``widths``/``depths``: g_a stages (g_s mirrors them); ``hyper_blocks``:
    PConvRB counts of h_a (at M, at N) and h_s (at N, at 2M); ``prior_s12``/``prior_s3``: DWConvRB
    counts of branch_1 / branch_2; ``windows``: attention window at s1, s2, s3.
    ``aligned_s2_gather``: spatially aligned s1->s2 hyper gathering instead of the authors' scan."""

    name: str = "base"
    M: int = 320
    N: int = 256
    widths: tuple[int, int, int] = (96, 192, 384)
    depths: tuple[int, int, int] = (2, 2, 4)
    hyper_blocks: tuple[int, int, int, int] = (1, 3, 3, 1)
    prior_s12: tuple[int, int] = (2, 1)
    prior_s3: tuple[int, int] = (3, 2)
    heads: int = 32
    windows: tuple[int, int, int] = (4, 8, 8)
    aligned_s2_gather: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (lo, hi) in LIMITS.items():  # before any arithmetic on the values
            value = getattr(self, name)
            items = value if name in LENGTHS else (value,)
            if name in LENGTHS and (not isinstance(value, tuple) or len(value) != LENGTHS[name]):
                raise ConfigError(f"{name}={value!r}: must be {LENGTHS[name]} integers")
            if not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in items):
                raise ConfigError(f"{name}={value!r}: must be {'integers' if name in LENGTHS else 'an integer'} "
                                  f"from {lo} to {hi}")
        if self.M % 8:
            raise ConfigError(f"M={self.M}: must be a positive multiple of 8 (channel groups)")
        if (2 * self.M) % self.heads:
            raise ConfigError(f"heads={self.heads}: must divide 2*M={2 * self.M}")
        if any(w <= 0 for w in self.windows) or len(self.windows) != 3:
            raise ConfigError(f"windows={self.windows}: three positive sizes (s1, s2, s3)")

    @property
    def pad_multiple(self) -> int:
        """Image sides must be multiples of this: y is image/16, s1 is y/4, s2 is y/2, and each
        grid must hold whole attention windows and whole 4x4 schedule tiles."""
        w1, w2, w3 = self.windows
        return 16 * math.lcm(4 * w1, 2 * w2, w3, 4)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HPCMConfig":
        """Inverse of ``dataclasses.asdict`` (lists back to tuples); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown HPCM config key {bad[0]!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


CONFIGS: dict[str, HPCMConfig] = {
    "base": HPCMConfig("base"),
    "large": HPCMConfig("large", depths=(2, 2, 8), prior_s12=(2, 2), prior_s3=(4, 3)),
    "tiny": HPCMConfig(
        "tiny", M=64, N=64, widths=(32, 48, 64), depths=(1, 1, 1), hyper_blocks=(1, 1, 1, 1),
        prior_s12=(1, 1), prior_s3=(1, 1), heads=8, windows=(2, 4, 8),
    ),
}


class HPCM(nn.Module):
    """Hierarchical progressive context model (HPCM, ICCV 2025): transforms g_a/g_s with PConvRB,
    hyperprior h_a/h_s with a learned per-channel z prior, and the 11-step multi-scale context
    model with progressive window cross-attention between steps."""

    def __init__(self, cfg: HPCMConfig):
        super().__init__()
        self.cfg = cfg
        m, n, c = cfg.M, cfg.N, 3 * cfg.M
        a1, a2, s1, s2 = cfg.hyper_blocks
        self.g_a = transform([3, *cfg.widths, m], list(cfg.depths))
        self.g_s = transform([3, *cfg.widths, m], list(cfg.depths), synthesis=True)
        self.h_a = nn.Sequential(
            *[PConvRB(m) for _ in range(a1)], down(m, n), *[PConvRB(n) for _ in range(a2)], down(n, n)
        )
        self.h_s = nn.Sequential(
            up(n, n), *[PConvRB(n) for _ in range(s1)], up(n, 2 * m), *[PConvRB(2 * m) for _ in range(s2)]
        )
        self.means_hyper = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, n, 1, 1))
        self.adaptors = nn.ModuleList(Conv1x1(c, c) for _ in range(N_ADAPTORS))
        self.quant = nn.ParameterList(nn.Parameter(torch.ones(1, c, 1, 1)) for _ in range(N_QUANT))
        self.priors = nn.ModuleList(
            [SpatialPrior(c, 2 * m, *cfg.prior_s12), SpatialPrior(c, 2 * m, *cfg.prior_s3)]
        )
        self.attns = nn.ModuleList(WindowCrossAttention(2 * m, cfg.heads, w) for w in cfg.windows)
        self.transitions = nn.ModuleList(Conv1x1(2 * m, 2 * m) for _ in range(2))
        self.gg = GeneralizedGaussian()
        # oneDNN runs these convs ~25-35% faster on CPU in channels-last (train and eval measured
        # side by side); load_state_dict copies into this layout. Public outputs are made
        # standard-contiguous again (small tensors) so callers can .view() them.
        self.to(memory_format=torch.channels_last)

    scale_of_step: tuple[int, ...] = SCALE_OF_STEP

    # -- transforms -----------------------------------------------------------------------------
    def analysis(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``y = g_a(x)``, ``z = h_a(y)``; x sides must be multiples of ``cfg.pad_multiple``."""
        p = self.cfg.pad_multiple
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"HPCM input must be (B, 3, H, W) with H, W multiples of {p}, got {tuple(x.shape)}")
        y = self.g_a(x.contiguous(memory_format=torch.channels_last))
        return y.contiguous(), self.h_a(y).contiguous()

    def hyper_synthesis(self, z_hat: Tensor) -> Tensor:
        """Hyper parameters (B, 2M, h, w): scales then means."""
        return self.h_s(z_hat).contiguous()

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """``x_hat = g_s(y_hat)``, not clamped."""
        return self.g_s(y_hat).contiguous()

    # -- schedule geometry ----------------------------------------------------------------------
    def _geometry(self, h: int, w: int, device: torch.device) -> Geometry:
        if h % 4 or w % 4:
            raise ValueError(f"latent grid {h}x{w}: sides must be multiples of 4")
        return geometry(self.cfg.M, h, w, self.cfg.aligned_s2_gather, torch.device(device))

    def step_masks(self, h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
        """BoolTensor (11, M, h, w): the y positions coded at each step (a partition)."""
        return self._geometry(h, w, torch.device(device)).masks.clone()

    def scale_masks(self, h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
        """BoolTensor (3, M, h, w): the y positions coded in s1, s2 and s3 (a partition)."""
        return self._geometry(h, w, torch.device(device)).scale_masks.clone()

    # -- progressive context model --------------------------------------------------------------
    def context_model(self, params: Tensor, code_step: CodeStep) -> dict[str, Tensor]:
        """Run the 11 steps of HPCM's hierarchical progressive context model.

        At step k the step's prior gives ``psi`` on its scale's grid; ``code_step(k, scales, means,
        mask)`` gets them placed on the y grid (B, M, h, w) with the step's BoolTensor ``mask``
        (M, h, w) and returns y_hat valid at ``mask``. Then ``context = Attn(psi, context)``.
        Returns the merged ``y_hat``, ``scales_hat`` (raw, before the 0.12 bound), ``means_hat``.
        """
        b, _, h, w = params.shape
        m = self.cfg.M
        geo = self._geometry(h, w, params.device)
        flat = params.flatten(2)
        ctx = _take(flat, geo.pos[0], twice=True).view(b, 2 * m, h // 4, w // 4)
        y_grid = params.new_zeros(b, m, h // 4, w // 4)
        # without autograd (eval, coding) the merges write in place: no new full-grid tensor per step
        inplace = not torch.is_grad_enabled()
        zeros = params.new_zeros(b, m, h, w)
        y_hat, scales_hat, means_hat = (zeros, zeros.clone(), zeros.clone()) if inplace else (zeros,) * 3
        scale = 0
        for k, st in enumerate(STEPS):
            if st.scale != scale:
                ctx, y_grid = self._upscale(ctx, y_grid, flat, geo, scale)
                scale = st.scale
            if st.adaptor is None:
                psi = ctx
            else:
                feats = self.adaptors[st.adaptor](torch.cat((ctx, y_grid), dim=1))
                psi = self.priors[st.prior](feats, self.quant[st.quant])
                if k + 1 < len(STEPS):  # the last step's context would be unused
                    ctx = self.attns[scale](psi, ctx)
            scales, means = (self._to_y(t, geo, scale) for t in psi.chunk(2, 1))
            mask = geo.masks[k]
            yk = code_step(k, scales, means, mask)
            y_hat, scales_hat, means_hat = (_merge(mask, new, old, inplace) for new, old in
                                            ((yk, y_hat), (scales, scales_hat), (means, means_hat)))
            y_grid = _merge(geo.grid_masks[k], self._from_y(yk, geo, scale), y_grid, inplace)
        return {"y_hat": y_hat, "scales_hat": scales_hat, "means_hat": means_hat}

    def _upscale(self, ctx: Tensor, y_grid: Tensor, flat: Tensor, geo: Geometry, scale: int) -> tuple[Tensor, Tensor]:
        """Scale transition: coded context and y_hat placed on the next grid, hyper parameters at
        the other positions, then the transition's 1x1 conv."""
        b, m = y_grid.shape[:2]
        hw = geo.h * geo.w // (4 if scale == 0 else 1)
        shape = (geo.h // 2, geo.w // 2) if scale == 0 else (geo.h, geo.w)
        hyper = _take(flat, geo.hyper2, twice=True) if scale == 0 else flat
        dst = geo.up[scale]
        ctx = hyper.scatter(2, _expand(dst, b, twice=True), ctx.flatten(2)).view(b, 2 * m, *shape)
        y_new = y_grid.new_zeros(b, m, hw).scatter(2, _expand(dst, b), y_grid.flatten(2))
        return self.transitions[scale](ctx), y_new.view(b, m, *shape)

    @staticmethod
    def _to_y(t: Tensor, geo: Geometry, scale: int) -> Tensor:
        if scale == 2:
            return t.contiguous()
        b, m = t.shape[:2]
        out = t.new_zeros(b, m, geo.h * geo.w).scatter(2, _expand(geo.pos[scale], b), t.flatten(2))
        return out.view(b, m, geo.h, geo.w)

    @staticmethod
    def _from_y(t: Tensor, geo: Geometry, scale: int) -> Tensor:
        if scale == 2:
            return t
        b, m = t.shape[:2]
        div = 4 if scale == 0 else 2
        return _take(t.flatten(2), geo.pos[scale]).view(b, m, geo.h // div, geo.w // div)

    # -- training / evaluation forward ----------------------------------------------------------
    def _quantizer(self, y: Tensor) -> CodeStep:
        rnd = round_ste if self.training else torch.round

        def code_step(k: int, scales: Tensor, means: Tensor, mask: Tensor) -> Tensor:
            return rnd(y - means) + means

        return code_step

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training (``self.training``): y_hat/z_hat by straight-through rounding of the residuals,
        rates on residual + U(-1/2, 1/2). Evaluation: hard rounding (torch.round, half to even)."""
        y, z = self.analysis(x)
        z_res = z - self.means_hyper
        z_q = torch.round(z_res)
        if self.training:
            z_hat = round_ste(z_res) + self.means_hyper
            z_lik = self.gg.likelihood(uniform_noise(z_res), self.scales_hyper)
        else:
            z_hat = z_q + self.means_hyper
            z_lik = self.gg.likelihood(z_q, self.scales_hyper)
        params = self.hyper_synthesis(z_hat)
        ctx = self.context_model(params, self._quantizer(y))
        y_res = y - ctx["means_hat"]
        y_q = torch.round(y_res)
        y_lik = self.gg.likelihood(uniform_noise(y_res) if self.training else y_q, ctx["scales_hat"])
        h, w = y.shape[2:]
        return {
            "x_hat": self.synthesis(ctx["y_hat"]),
            "likelihoods": {"y": y_lik, "z": z_lik},
            "scale_masks": self.scale_masks(h, w, y.device),
            "y": y, "z": z, "z_q": z_q, "z_hat": z_hat, "y_q": y_q, **ctx,
        }


def _merge(mask: Tensor, new: Tensor, old: Tensor, inplace: bool) -> Tensor:
    """``new`` where ``mask`` holds, else ``old``; with ``inplace`` written into ``old``."""
    return torch.where(mask, new, old, out=old) if inplace else torch.where(mask, new, old)


def _expand(idx: Tensor, b: int, twice: bool = False) -> Tensor:
    if twice:  # scales and means halves share each channel's index map
        idx = torch.cat((idx, idx))
    return idx.unsqueeze(0).expand(b, -1, -1)


def _take(flat: Tensor, idx: Tensor, twice: bool = False) -> Tensor:
    return flat.gather(2, _expand(idx, flat.shape[0], twice))


# -- construction -------------------------------------------------------------------------------
def hpcm(name: str = "base", **overrides: Any) -> HPCM:
    """Build a configured HPCM with PyTorch's default init drawn from ``cfg.seed`` (deterministic,
    without touching the global RNG state)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown HPCM model {name!r} (known: {', '.join(CONFIGS)})")
    cfg = replace(CONFIGS[name], **overrides) if overrides else CONFIGS[name]
    return build(cfg)


def build(cfg: HPCMConfig) -> HPCM:
    """HPCM for ``cfg`` with the seeded default init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return HPCM(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kmacs_per_pixel(model: HPCM, height: int | None = None, width: int | None = None) -> float:
    """Thousands of multiply-accumulates per input pixel of one eval forward, counted with forward
    hooks on every conv / transposed conv / linear layer plus the attention matmuls."""
    p = model.cfg.pad_multiple
    height, width = height or p, width or p
    total = 0

    def conv_hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):
            total += inp[0].numel() * mod.out_channels // mod.groups * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Conv2d):
            total += out.numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)
        else:
            total += out.numel() * mod.in_features

    def attn_hook(mod: WindowCrossAttention, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += mod.attention_macs(out.shape)

    hooks = [
        mod.register_forward_hook(attn_hook if isinstance(mod, WindowCrossAttention) else conv_hook)
        for mod in model.modules()
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, WindowCrossAttention))
    ]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)))
    finally:
        model.train(was)
        for hk in hooks:
            hk.remove()
    return total / (height * width) / 1e3


# -- checkpoints --------------------------------------------------------------------------------
def load_strict(model: nn.Module, sd: Mapping[str, Tensor], what: str = "checkpoint") -> None:
    """``model.load_state_dict`` that raises :class:`CheckpointError` naming the first missing,
    unexpected or mis-shaped tensor."""
    own = model.state_dict()
    for key in own:
        if key not in sd:
            raise CheckpointError(f"{what}: missing tensor {key!r}")
    for key, val in sd.items():
        if key not in own:
            raise CheckpointError(f"{what}: unexpected tensor {key!r}")
        if not isinstance(val, Tensor) or tuple(val.shape) != tuple(own[key].shape):
            shape = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
            raise CheckpointError(f"{what}: tensor {key!r} has shape {shape}, expected {tuple(own[key].shape)}")
        if val.is_floating_point() and not torch.isfinite(val).all():
            raise CheckpointError(f"{what}: tensor {key!r} has NaN or inf values")
    model.load_state_dict(sd, strict=True)


def save_checkpoint(model: HPCM, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``{"config", "state_dict", **extra}`` atomically (temp file, fsync, ``os.replace``);
    the file loads with ``torch.load(weights_only=True)``."""
    return torch_save_atomic({"config": asdict(model.cfg), "state_dict": model.state_dict(), **extra}, path)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file (``lic_core.atomic.write_atomic``)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with every failure turned into CheckpointError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as e:  # unpickling errors have many types
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__})",
                              detail=f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, not a dict")
    return obj


def from_checkpoint(obj: dict[str, Any], path: str) -> HPCM:
    """The HPCM in eval mode of one of our checkpoints (``save_checkpoint``) read as ``obj``;
    :func:`lic_core.models.loading.load_checkpoint` also takes the authors'."""
    if not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path}: 'state_dict' missing or not a dict")
    try:
        model = build(HPCMConfig.from_dict(obj["config"]))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config ({e})") from None
    load_strict(model, obj["state_dict"], str(path))
    return model.eval()
