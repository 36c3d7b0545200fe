"""Image folders for training (random crops and flips) and testing (center crops).

Determinism: the crop and flip of a training sample are a pure function of ``(seed, k)``, ``k`` the
sample's position in the run's stream of samples, and the image order of each epoch is a permutation
seeded by ``(seed, epoch)``. Nothing depends on the global RNG or on DataLoader workers, so a run that
resumes at step ``t`` draws exactly the batches an uninterrupted run draws from step ``t`` on.

Images smaller than the crop (either side) are upscaled, keeping the aspect ratio, with bicubic
resampling until the shorter side equals the crop size; then cropped as usual. Files that cannot be
read are skipped: each is named once in a warning and the sample is taken from the next readable
file of the folder.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from lic_core.errors import ConfigError, ImageError
from lic_core.imageio import read_rgb

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_warned: set[str] = set()


def _mix(seed: int, k: int) -> int:
    """Generator seed for stream position ``k`` of run seed ``seed``: a hash, because torch's CPU
    generator keeps only the low 32 bits of a seed."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest(), "little") >> 1


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted; png, jpg, jpeg, webp in any case)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _warn_once(path: Path, err: Exception) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)


def readable(path: Path) -> np.ndarray | None:
    """:func:`lic_core.imageio.read_rgb`'s pixels, or None (named once in a warning) when unreadable."""
    try:
        return read_rgb(path)[0]
    except ImageError as err:
        _warn_once(path, err)
        return None


def fit_short_side(rgb: np.ndarray, size: int) -> np.ndarray:
    """Upscale (bicubic, aspect kept) so that both sides are at least ``size``; else unchanged."""
    h, w = rgb.shape[:2]
    if min(w, h) >= size:
        return rgb
    s = size / min(w, h)
    im = Image.fromarray(rgb).resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    return np.asarray(im)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] of an (H, W, 3) uint8 array."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class _Folder(Dataset):
    """Shared part: the file list, with unreadable files replaced by the next readable one.

    Decoded images are kept in memory up to ``cache_mb`` megabytes (first come; 0: none): a
    training step draws a crop from each of ``batch`` photos, and decoding a 1 Mpx JPEG took about
    as long as a tiny-HPCM training step of 8 crops takes per image."""

    def __init__(self, root: str | Path, patch: int, cache_mb: int = 0):
        self.root, self.patch = Path(root), int(patch)
        self.files = list_images(self.root)
        if not self.files:
            raise ConfigError(f"data folder {self.root} holds no png/jpg/webp image")
        self._cache: dict[int, np.ndarray] = {}
        self._room = int(cache_mb) << 20

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 pixels of image ``index`` (or the next readable one), both sides >= patch."""
        for j in range(len(self.files)):
            k = (index + j) % len(self.files)
            if k in self._cache:
                return self._cache[k]
            rgb = readable(self.files[k])
            if rgb is not None:
                arr = fit_short_side(rgb, self.patch)
                if arr.nbytes <= self._room:
                    self._cache[k], self._room = arr, self._room - arr.nbytes
                return arr
        raise ConfigError(f"data folder {self.root}: no readable image")


class ImageFolder(_Folder):
    """Training crops: item ``(index, sample_seed)`` -> (3, patch, patch) random crop, random flips.

    The sample seed drives a private ``torch.Generator``: crop offset, horizontal and vertical flip.
    """

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        im = self._load(index)
        g = torch.Generator().manual_seed(int(seed))
        h, w = im.shape[:2]
        top = int(torch.randint(h - self.patch + 1, (1,), generator=g))
        left = int(torch.randint(w - self.patch + 1, (1,), generator=g))
        hflip, vflip = torch.rand(2, generator=g).lt(0.5).tolist()
        x = to_tensor(im[top : top + self.patch, left : left + self.patch])
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        return x


class CenterCropFolder(_Folder):
    """Test images: the central (patch, patch) crop of each image, in file order."""

    def __getitem__(self, index: int) -> torch.Tensor:
        im = self._load(index)
        h, w = im.shape[:2]
        left, top = (w - self.patch) // 2, (h - self.patch) // 2
        return to_tensor(im[top : top + self.patch, left : left + self.patch])


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches from ``start_step`` on; batch ``t`` of rank ``r`` (of ``world``) holds samples
    ``k = (t*world + r)*batch + j``: image ``perm_{k // n}[k % n]`` with sample seed ``_mix(seed, k)``.
    """

    def __init__(self, n: int, batch: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = n, batch, seed
        self.start_step, self.rank, self.world = start_step, rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(_mix(self.seed, -1 - epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}  # keep one epoch
        return self._perms[epoch]

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        first = (step * self.world + self.rank) * self.batch
        return [(self._perm(k // self.n)[k % self.n], _mix(self.seed, k))
                for k in range(first, first + self.batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 1 << 62


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed (nothing here draws from
    them, but user transforms might)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def train_loader(root: str | Path, patch: int, batch: int, seed: int, start_step: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 0, pin: bool = False,
                 cache_mb: int = 0) -> Iterator[torch.Tensor]:
    """Endless iterator of (batch, 3, patch, patch) training batches starting at ``start_step``;
    decoded photos kept in memory up to ``cache_mb`` (per worker process)."""
    ds = ImageFolder(root, patch, cache_mb)
    sampler = StepBatchSampler(len(ds), batch, seed, start_step, rank, world)
    g = torch.Generator().manual_seed(seed)
    return iter(DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                           worker_init_fn=_seed_worker, generator=g,
                           persistent_workers=workers > 0))


def load_test_set(root: str | Path, patch: int, limit: int = 0) -> list[torch.Tensor]:
    """Center crops (1, 3, patch, patch) of the test folder (first ``limit`` files when > 0)."""
    ds = CenterCropFolder(root, patch)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    return [ds[i].unsqueeze(0) for i in range(n)]
