"""Training data: recursive image folders, RGB conversion, the small-image rule, unreadable files,
and a sample stream that is a pure function of (seed, step) whatever the workers or ranks."""
from __future__ import annotations

import warnings
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from lic_core.training.data import (CenterCropFolder, ImageFolder, StepBatchSampler, list_images, load_test_set,
                           train_loader)
from lic_core.errors import ConfigError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    arr = lambda h, w: (rng.random((h, w, 3)) * 255).astype(np.uint8)  # noqa: E731
    Image.fromarray(arr(100, 120)).save(root / "a.png")
    Image.fromarray(arr(90, 140)).save(root / "sub" / "b.JPG", quality=95)
    Image.fromarray(arr(130, 100)).save(root / "sub" / "deeper" / "c.webp")
    Image.fromarray(arr(70, 80)[..., 0]).save(root / "grey.png")  # mode L
    Image.fromarray(arr(80, 90)).convert("P").save(root / "palette.png")
    Image.fromarray(np.dstack([arr(96, 96), np.full((96, 96), 128, np.uint8)])).save(root / "alpha.png")
    Image.fromarray(arr(20, 40)).save(root / "small.png")
    (root / "notes.md").write_text("not an image")
    return root


def test_listing_is_recursive_sorted_and_filtered(folder):
    names = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert names == ["a.png", "alpha.png", "grey.png", "palette.png", "small.png", "sub/b.JPG",
                     "sub/deeper/c.webp"]


def test_crops_are_rgb_and_small_images_upscaled(folder):
    ds = ImageFolder(folder, 64)
    for i in range(len(ds)):
        x = ds[(i, 7)]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    small = ds._load(ds.files.index(folder / "small.png"))
    assert small.shape == (64, 128, 3)  # 40x20 upscaled so that the shorter side is the crop size


def test_decoded_image_cache_changes_no_crop_and_keeps_its_budget(folder):
    plain, cached, tight = ImageFolder(folder, 64), ImageFolder(folder, 64, cache_mb=64), ImageFolder(folder, 64, 0)
    items = [(i % len(plain), s) for s in range(3) for i in range(len(plain))]  # every image, three times
    assert all(torch.equal(plain[it], cached[it]) for it in items)
    assert len(cached._cache) == len(plain) and not tight._cache and not plain._cache
    one = ImageFolder(folder, 64, cache_mb=1)
    one._room = next(iter(cached._cache.values())).nbytes  # room for exactly the first image decoded
    [one[it] for it in items]
    assert len(one._cache) == 1 and one._room == 0


def test_unreadable_file_is_skipped_and_named_once(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = ImageFolder(tmp_path, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xs = [ds[(0, s)] for s in range(3)]
    msgs = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(msgs) == 1 and "a.png" in msgs[0]
    assert all(torch.equal(x, torch.zeros(3, 32, 32)) for x in xs)  # taken from b.png


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="holds no png/jpg/webp"):
        ImageFolder(tmp_path, 32)
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolder(tmp_path / "nope", 32)


def test_stream_is_a_function_of_seed_and_step(folder):
    a = list(islice(train_loader(folder, 32, 3, seed=5), 5))
    later = list(islice(train_loader(folder, 32, 3, seed=5, start_step=3), 2))
    assert all(torch.equal(x, y) for x, y in zip(a[3:], later))
    workers = list(islice(train_loader(folder, 32, 3, seed=5, workers=2), 5))
    assert all(torch.equal(x, y) for x, y in zip(a, workers))
    other = next(train_loader(folder, 32, 3, seed=6))
    assert not torch.equal(a[0], other)


def test_epochs_cover_every_image_and_ranks_split_the_global_batch(folder):
    n = len(list_images(folder))
    s = StepBatchSampler(n, batch=n, seed=1)
    assert sorted(i for i, _ in s.batch_at(0)) == list(range(n))
    assert [i for i, _ in s.batch_at(0)] != [i for i, _ in s.batch_at(1)]  # reshuffled per epoch
    one = StepBatchSampler(n, batch=4, seed=1)
    two = [StepBatchSampler(n, batch=2, seed=1, rank=r, world=2) for r in (0, 1)]
    for t in range(4):
        assert one.batch_at(t) == two[0].batch_at(t) + two[1].batch_at(t)


def test_center_crops(folder):
    xs = load_test_set(folder, 64, limit=3)
    assert len(xs) == 3 and all(x.shape == (1, 3, 64, 64) for x in xs)
    im = np.asarray(Image.open(folder / "a.png"))
    assert torch.equal(xs[0][0], torch.from_numpy(im[18:82, 28:92].copy()).permute(2, 0, 1).float() / 255)
    assert len(load_test_set(folder, 64)) == len(CenterCropFolder(folder, 64))
