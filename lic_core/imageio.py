"""Reading images as RGB tensors and writing outputs that are never left half-written."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from lic_core.atomic import write_file as write_bytes_atomic
from lic_core.errors import ImageError

# Pillow modes converted to RGB, and the note that says so.
_MODE_NOTES = {
    "1": "1-bit image converted to RGB",
    "L": "grayscale image converted to RGB (gray copied to R, G, B)",
    "LA": "grayscale+alpha image converted to RGB (alpha dropped)",
    "P": "palette image converted to RGB",
    "PA": "palette+alpha image converted to RGB (alpha dropped)",
    "RGBA": "RGBA image converted to RGB (alpha dropped)",
    "RGBa": "RGBA image converted to RGB (alpha dropped)",
    "CMYK": "CMYK image converted to RGB",
    "YCbCr": "YCbCr image converted to RGB",
    "LAB": "Lab image converted to RGB",
    "HSV": "HSV image converted to RGB",
}
_ORIENTATION = 0x0112  # EXIF tag
_SIXTEEN = "16-bit image reduced to 8 bits per channel"


def read_rgb(path: str | os.PathLike | bytes, max_pixels: int | None = None,
             max_side: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The one image reader of the project (training, evaluation, anchors, explorer, command line):
    (H, W, 3) uint8 RGB and the notes on what was converted. ``path`` may also be the encoded image
    itself (bytes, e.g. read from stdin), named ``stdin`` in messages.

    EXIF orientation is applied; grayscale, alpha, palette, CMYK and 16-bit images are converted to
    RGB with a note each; anything Pillow cannot read raises :class:`ImageError` naming the file, and
    so does an image of over ``max_pixels`` pixels or with a side over ``max_side`` (both checked
    before its pixels are decoded)."""
    if isinstance(path, (bytes, bytearray)):
        path, source = "stdin", io.BytesIO(path)
    else:
        path = source = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file" if not path.exists() else f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():  # our own size limit below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} is over {max_pixels:,} pixels")
            if max_side is not None and max(w, h) > max_side:
                raise ImageError(f"{path}: {w}x{h}: each side must be at most {max_side:,} pixels")
            notes = _frame_notes(img)
            sixteen = _is_16bit(img)
            img.load()
            if img.getexif().get(_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
                notes.append("EXIF orientation applied")
            rgb, more = _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image this tool can read") from None
    except Image.DecompressionBombError:  # Pillow's own limit, checked before ours could be
        raise ImageError(f"{path}: declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
                         + (f", over the limit of {max_pixels:,}" if max_pixels is not None else "")) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data
        raise ImageError(f"{path}: unreadable image data ({e})") from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory decoding the image") from None
    notes += more
    if sixteen and _SIXTEEN not in notes:
        notes.append(_SIXTEEN)
    return np.ascontiguousarray(rgb), notes


def load_image(path: str | os.PathLike | bytes, max_pixels: int | None = None,
               max_side: int | None = None) -> tuple[Tensor, list[str]]:
    """:func:`read_rgb` as (1, 3, H, W) float32 in [0, 1] (8-bit levels k/255), and its notes."""
    rgb, notes = read_rgb(path, max_pixels, max_side)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255, notes


def _frame_notes(img: Image.Image) -> list[str]:
    n = getattr(img, "n_frames", 1)
    return [f"{n} frames: the first one is used"] if n > 1 else []


def _is_16bit(img: Image.Image) -> bool:
    """16 bits per channel; Pillow opens 16-bit RGB PNGs as 8-bit RGB, visible only in the tile's
    raw mode."""
    raw = [t[3] for t in getattr(img, "tile", []) if len(t) > 3 and isinstance(t[3], str)]
    return img.mode.startswith("I;16") or any(";16" in r for r in raw)


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """uint8 (H, W, 3) and the conversion notes."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img), []
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img)
        if mode == "F" or a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            raise ValueError(f"{mode} image with values outside 0..65535 is not supported")
        wide = mode.startswith("I;16") or a.max(initial=0) > 255
        gray = (a.astype(np.uint32) >> (8 if wide else 0)).astype(np.uint8)  # high byte, as Pillow does for RGB
        note = [_SIXTEEN] if wide else []
        return np.repeat(gray[..., None], 3, axis=2), note + [_MODE_NOTES["L"]]
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "PA"
    note = _MODE_NOTES.get(mode, f"{mode} image converted to RGB")
    return np.array(img.convert("RGB")), [note]


def save_png(x: Tensor, path: str | os.PathLike) -> Path:
    """Write (1, 3, H, W) or (3, H, W) values in [0, 1] as an 8-bit RGB PNG, atomically."""
    return write_bytes_atomic(path, png_bytes(x))


def png_bytes(x: Tensor) -> bytes:
    """(1, 3, H, W) or (3, H, W) values in [0, 1] as the bytes of an 8-bit RGB PNG."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"save_png takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(x.shape)}")
    arr = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


