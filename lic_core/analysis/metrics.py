"""Image quality as papers report it: PSNR and MS-SSIM on 8-bit RGB.

MS-SSIM is Wang, Simoncelli & Bovik, "Multiscale structural similarity for image quality
assessment", 2003, computed by ``pytorch_msssim`` (5 scales, 11-tap Gaussian window, sigma 1.5).
That package refuses images whose smaller side is <= 160 px (4 downsamplings x 10 px of window).
Small-image fallback, documented and reported by :func:`ms_ssim_setting`: keep the 5 scales and
weights and shrink the (odd) window to the largest size the package accepts,
``win <= 1 + (side - 1) // 16``, i.e. 7 px for 128 px crops, 3 px for 64 px crops; images of 32 px
or less have no 5-scale MS-SSIM at all and get single-scale SSIM with a 3..11 px window.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

from lic_core.errors import ImageError

DEFAULT_WIN = 11


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) float in [0,1] -> float tensor of 8-bit levels 0..255 (clamped, rounded)."""
    return (x.detach().float().clamp(0, 1) * 255).round()


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise ImageError(f"quality metrics need two (B,C,H,W) tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return to_uint8(a), to_uint8(b)


def psnr(a: torch.Tensor, b: torch.Tensor, eight_bit: bool = True) -> float:
    """PSNR in dB of a reconstruction ``a`` against ``b`` (MSE over all pixels, channels and the
    batch). ``eight_bit``: both quantized to 8 bits, as papers report it; False: ``a`` clamped to
    [0, 1] and compared in float, as training logs it (the model's output is not yet 8-bit)."""
    if not eight_bit:
        mse = float(torch.mean((a.detach().float().clamp(0, 1) - b.float()) ** 2))
        return 10 * math.log10(1 / mse) if mse > 0 else math.inf
    a, b = _pair(a, b)
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ms_ssim_setting(height: int, width: int) -> tuple[str, int, str]:
    """(kind, window, note): ``("ms-ssim", 11, "")`` at the default settings, otherwise the
    fallback of the module docstring with a note saying which one was used."""
    side = min(height, width)
    if side < 3:
        raise ImageError(f"{width}x{height}: (MS-)SSIM needs both sides of at least 3 pixels")
    if side > (DEFAULT_WIN - 1) * 16:
        return "ms-ssim", DEFAULT_WIN, ""
    win = 1 + (side - 1) // 16
    win -= 1 - win % 2  # odd
    if win >= 3:
        return "ms-ssim", win, (f"MS-SSIM with a {win}px window (5 scales) because the smaller "
                                f"side {side}px is under pytorch_msssim's 161px minimum")
    win = max(3, min(DEFAULT_WIN, side - (1 - side % 2)))
    return "ssim", win, (f"single-scale SSIM with a {win}px window: the smaller side {side}px is "
                         "too small for 5-scale MS-SSIM")


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM of two [0,1] images on 8-bit levels (data range 255), mean over the batch."""
    a, b = _pair(a, b)
    kind, win, _ = ms_ssim_setting(*a.shape[-2:])
    fn = _ms_ssim if kind == "ms-ssim" else _ssim
    return float(fn(a, b, data_range=255.0, win_size=win).item())


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 array -> (1,3,H,W) float tensor in [0,1]."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an (H,W,3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    return torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255
