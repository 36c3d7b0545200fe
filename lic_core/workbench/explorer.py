"""The λ explorer (notebook 06): pick a λ and an image, see two training modes side by side.

On top, the reconstruction figure of notebook 05 for the chosen λ and image
(:func:`lic_core.analysis.viz.reconstructions`: the original, each mode's decoded image labelled with
its bpp and PSNR, and the same zoomed square of each). Then, for each mode, the image decoded from
its real bitstream at its own pixels, its readout (bpp from the file size, PSNR and MS-SSIM of
exactly those pixels), the error map
``|x - x_hat|`` (mean over RGB, 8-bit levels) and where the bits went: estimated bits per latent
position from the eval-mode likelihoods, summed over channels, one panel per scale (s1, s2, s3;
HPCM's hierarchical schedule), with bpp from the file size, PSNR and MS-SSIM as readouts.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lic_core.coding import codec

from lic_core.analysis import metrics
from lic_core.analysis.anchors import center_crop
from lic_core.imageio import read_rgb
from lic_core.errors import LicError
from lic_core.models.hpcm import HPCM
from lic_core.models.loading import load_checkpoint

SCALE_NAMES = ("s1", "s2", "s3")


@dataclass
class View:
    """One (mode, λ, image) result."""

    x_hat: np.ndarray  # (H, W, 3) uint8, decoded from the bitstream
    error: np.ndarray  # (H, W) mean absolute error in 8-bit levels
    bit_maps: dict[str, np.ndarray]  # scale -> (h, w) estimated bits per latent position
    bpp: float
    psnr: float
    ms_ssim: float
    stream_bytes: dict[str, int]


def bit_maps(model: HPCM, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Estimated bits per y-grid position of each scale (eval forward on the padded image)."""
    model.eval()
    with torch.no_grad():
        out = model(codec.pad_image(x, model.cfg.pad_multiple))
    bits = -torch.log2(out["likelihoods"]["y"][0])
    masks = out["scale_masks"]
    return {s: (bits * masks[i]).sum(0).numpy() for i, s in enumerate(SCALE_NAMES)}


def compute_view(model: HPCM, rgb: np.ndarray, maps: bool = True) -> View:
    """Encode, decode and measure one image (H, W, 3 uint8) with ``model``; ``maps``: also the
    per-scale bit maps (one more forward pass)."""
    x = metrics.image_tensor(rgb)
    with torch.no_grad():
        enc = codec.encode(model, x)
        x_hat = codec.decompress(enc.data, model)
    out8 = metrics.to_uint8(x_hat)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    err = np.abs(out8.astype(np.float32) - rgb.astype(np.float32)).mean(-1)
    return View(out8, err, bit_maps(model, x) if maps else {}, enc.bpp, metrics.psnr(x_hat, x), metrics.ms_ssim(x_hat, x),
                dict(enc.stream_bytes))


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def maps_png(view: View, err_max: float, bits_max: float) -> bytes:
    """Error map and per-scale bit maps of one view as one PNG (shared color limits)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(8, 2.2), layout="constrained")
    axes[0].imshow(view.error, cmap="magma", vmin=0, vmax=err_max)
    axes[0].set_title("|x - x̂| (8-bit)", fontsize=8)
    for ax, s in zip(axes[1:], SCALE_NAMES):
        im = ax.imshow(view.bit_maps[s], cmap="viridis", vmin=0, vmax=bits_max)
        ax.set_title(f"bits {s}", fontsize=8)
    fig.colorbar(im, ax=axes[1:], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def figure_png(original: np.ndarray, panels: Sequence[tuple[str, np.ndarray, float, float]],
               title: str) -> bytes:
    """The reconstruction figure (:func:`lic_core.analysis.viz.reconstructions`) as PNG bytes."""
    import matplotlib.pyplot as plt

    from lic_core.analysis.viz import reconstructions

    fig = reconstructions(original, panels, title=title, panel_in=2.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def readout(mode: str, lmbda: float, v: View) -> str:
    streams = ", ".join(f"{k} {n} B" for k, n in v.stream_bytes.items())
    return (f"<b>{mode}</b> λ={lmbda:g}: <b>bpp {v.bpp:.4f}</b> · <b>PSNR {v.psnr:.2f} dB</b> · "
            f"MS-SSIM {v.ms_ssim:.4f}<br><small>{streams}</small>")


class LambdaExplorer:
    """Widgets comparing modes (e.g. standard vs balanced) over λ on a few images.

    ``runs`` maps mode -> {λ: checkpoint}; the λ slider offers the λ values every mode has.
    """

    def __init__(self, runs: Mapping[str, Mapping[float, str | Path]], images: Sequence[str | Path],
                 crop: int = 256):
        if not runs:
            raise LicError("the explorer needs at least one mode with checkpoints")
        common = set.intersection(*(set(map(float, r)) for r in runs.values()))
        if not common:
            raise LicError("no λ is shared by all modes: " + "; ".join(
                f"{m}: {sorted(r)}" for m, r in runs.items()))
        if not images:
            raise LicError("the explorer needs at least one image")
        self.runs = {m: {float(k): Path(v) for k, v in r.items()} for m, r in runs.items()}
        self.lambdas = sorted(common)
        self.images = [Path(p) for p in images]
        self.crop = crop
        self._model = lru_cache(maxsize=16)(load_checkpoint)
        self._view = lru_cache(maxsize=64)(self._compute)

    def original(self, image: int = 0) -> np.ndarray:
        """The (cropped) image ``image`` as shown and coded, (H, W, 3) uint8."""
        return center_crop(read_rgb(self.images[int(image)])[0], self.crop)

    def _compute(self, mode: str, lmbda: float, image: int) -> View:
        return compute_view(self._model(self.runs[mode][lmbda]), self.original(image))

    def view(self, mode: str, lmbda: float, image: int = 0) -> View:
        return self._view(mode, float(lmbda), int(image))

    def widget(self):
        """The interactive panel (ipywidgets)."""
        import ipywidgets as w

        lam = w.SelectionSlider(options=[(f"{v:g}", v) for v in self.lambdas], value=self.lambdas[0],
                                description="λ", continuous_update=False,
                                layout=w.Layout(width="420px"))
        img = w.Dropdown(options=[(p.name, i) for i, p in enumerate(self.images)], value=0,
                         description="image")
        modes = list(self.runs)
        figure = w.Image(format="png", layout=w.Layout(width="640px", max_width="100%"))
        recon = {m: w.Image(format="png", layout=w.Layout(width="300px")) for m in modes}
        maps = {m: w.Image(format="png", layout=w.Layout(width="620px")) for m in modes}
        text = {m: w.HTML() for m in modes}

        def redraw(_=None) -> None:
            views = {m: self.view(m, lam.value, img.value) for m in modes}
            err_max = max(float(v.error.max()) for v in views.values()) or 1.0
            bits_max = max(float(b.max()) for v in views.values() for b in v.bit_maps.values()) or 1.0
            name = self.images[img.value].name
            figure.value = figure_png(self.original(img.value), [
                (f"{m} λ={lam.value:g}", v.x_hat, v.bpp, v.psnr) for m, v in views.items()],
                f"{name}" + (f", center crop {self.crop} px" if self.crop else "") + f", λ={lam.value:g}")
            for m, v in views.items():
                recon[m].value = png_bytes(v.x_hat)
                maps[m].value = maps_png(v, err_max, bits_max)
                text[m].value = readout(m, lam.value, v)

        lam.observe(redraw, names="value")
        img.observe(redraw, names="value")
        redraw()
        rows = [w.VBox([text[m], w.HBox([recon[m], maps[m]])]) for m in modes]
        return w.VBox([w.HBox([lam, img]), figure, *rows])
