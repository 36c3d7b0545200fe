"""Evaluation datasets as a small registry of folders, checked for image count and sizes.

Folders live under :func:`lic_core.paths.datasets_root` (``$LIC_DATASETS``): ``kodak/``,
``clic-pro-valid/``, ``tecnick/``. They are read in place. Only Kodak can be downloaded, and only
when asked (:func:`download_kodak`, ``python -m lic_core.datasets download kodak``), from its
canonical page (r0k.us, "Kodak Lossless True Color Image Suite"), each file verified against the
sha256 of its decoded 8-bit RGB pixels (PNG bytes may differ between copies; pixels may not).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lic_core.atomic import write_file
from lic_core.training.data import list_images
from lic_core.errors import DatasetError, command
from lic_core.paths import datasets_root

KODAK_URL = "http://r0k.us/graphics/kodak/kodak/"

# sha256 of the decoded RGB pixels (row-major, interleaved) and WxH of each Kodak image.
KODAK_PIXELS: dict[str, tuple[str, str]] = {
    "kodim01.png": ("a00210743353594464ac67e680a41710f484444ca5f9dfddeb570de25c428273", "768x512"),
    "kodim02.png": ("ae5a495df4ec40e0941265440ccf98973915b4190ab803e37a23ca93dd43a07e", "768x512"),
    "kodim03.png": ("234e61f585503f2a44400f5561131e8a512ef2c15328cd83d5cdbf10e2616cf2", "768x512"),
    "kodim04.png": ("e88e788fca00e6c723bb66ff45edb8cb56091ee284dcb73e3909834f2c96eeb6", "512x768"),
    "kodim05.png": ("ed3d1ee770909d3b27903b52ce19ee59a9bf24621a7bf1fb57b90677da880cb6", "768x512"),
    "kodim06.png": ("7f45158999fa297d1cfbd292b3e2f3f5b27770701c3473155c211c3f512cc97f", "768x512"),
    "kodim07.png": ("4e3664bf6fe865b49f15f7b554efa7dbecaf73ae0e8699f2e307bf07849f1264", "768x512"),
    "kodim08.png": ("889c3740e4ed54ca53d11ae735a44d15fa24fe312b3bd1609a80618a4092c208", "768x512"),
    "kodim09.png": ("f8453140e63a42301a6dbebb849a3cc40d34e4e59580eb1f372f7f5460df0dbe", "512x768"),
    "kodim10.png": ("fabe11b5c4f028394e093a5b5907e5fabc8072da0d5334fb3a38547a7e1be842", "512x768"),
    "kodim11.png": ("ab4dd9bf8431e717d33892b3ba03c63bfea3c7fa72c2610010de7df3c194c075", "768x512"),
    "kodim12.png": ("f412db2168e599949aac26bd3264f111b23a684f30a21cfd320e9e95bc69bbae", "768x512"),
    "kodim13.png": ("875703d56fb9396f478b5d7d3b18e2b77c17147a685c6dc2567e1c574aaf01e3", "768x512"),
    "kodim14.png": ("2bd5029ee75ac1697542e5b05624e8afe186e3250abd7513d6a806b52084c2f0", "768x512"),
    "kodim15.png": ("b5353e7511277009922ecbdebfc6418fec53aa1b2a08d44fc957a7540825697b", "768x512"),
    "kodim16.png": ("ed21745fd32fce95cc2c6af7fc52b1b15e590c7a14ab18ab34bd65ecaf955ac7", "768x512"),
    "kodim17.png": ("566bc866664e9b06dc86e2654051b454844efe17322dbf7e24156d8243f1943e", "512x768"),
    "kodim18.png": ("3475af71066f3ca8206eb12cfc989ebe9c6e44820a96604e88ae018606e1f7bd", "512x768"),
    "kodim19.png": ("7956408ef24222d37ac53f579bd24d5b2c3557b16c657e8b71c1b6ae9f18de1b", "512x768"),
    "kodim20.png": ("666ce8f2db5566a123bb081e70618f6f4c4253df960f3b41bb9dcc3dd134f3cf", "768x512"),
    "kodim21.png": ("2d6902daf7c4486b7c8c04d834091841a2b38c8f0c81cd7a963a6510b34a2a6a", "768x512"),
    "kodim22.png": ("f430842120c108b67725ada96b8b7b2a914f6a0915eacd5595064c6c1a5d70a0", "768x512"),
    "kodim23.png": ("81992a83592267e69125666f3e3e04c1819529b4c4c1e55fde0a6a741bac4219", "768x512"),
    "kodim24.png": ("e3e3ccc3e795b82a3da66934409dfe98ce0f5aadc6d7767543c506453599bb98", "768x512"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A test set: its folder (under the datasets root), image count and allowed sizes (WxH)."""

    name: str
    count: int
    sizes: frozenset[str] | None  # None: any size (CLIC images vary)
    source: str


REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("kodak", 24, frozenset({"768x512", "512x768"}),
                "Kodak Lossless True Color Image Suite (r0k.us/graphics/kodak)"),
    DatasetSpec("clic-pro-valid", 41, None,
                "CLIC 2020 professional validation set (compression.cc)"),
    DatasetSpec("tecnick", 100, frozenset({"1200x1200"}),
                "Tecnick TESTIMAGES SAMPLING 8-bit RGB 1200x1200 (testimages.org)"),
)}


def folder(name: str) -> Path:
    """The folder of a registered dataset (it need not exist)."""
    if name not in REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(REGISTRY)}")
    return datasets_root() / name


def _size(path: Path) -> str:
    try:
        with Image.open(path) as im:
            return f"{im.width}x{im.height}"
    except OSError as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def check(name: str, root: str | Path | None = None) -> list[Path]:
    """The images of dataset ``name`` (in ``root`` or its registry folder), after checking that the
    folder exists and holds exactly the expected number of images of the expected sizes."""
    default = folder(name)  # raises for an unknown name
    root, spec = Path(root) if root is not None else default, REGISTRY[name]
    if not root.is_dir():
        hint = " (python -m lic_core.datasets download kodak)" if name == "kodak" else ""
        raise DatasetError(f"dataset {name!r}: folder {root} does not exist{hint}; "
                           f"set LIC_DATASETS to the folder holding {name}/")
    images = list_images(root)
    if len(images) != spec.count:
        raise DatasetError(f"dataset {name!r}: folder {root} holds {len(images)} images, "
                           f"expected {spec.count}")
    if spec.sizes is not None:
        bad = [f"{p.name} is {s}" for p in images if (s := _size(p)) not in spec.sizes]
        if bad:
            raise DatasetError(f"dataset {name!r}: folder {root}: {', '.join(bad[:5])}; expected "
                               f"{' or '.join(sorted(spec.sizes))}")
    return images


def resolve(dataset: str | Path, limit: int = 0) -> tuple[str, list[Path]]:
    """(name, images) of a registered dataset name (checked) or of any image folder."""
    if str(dataset) in REGISTRY:
        name, images = str(dataset), check(str(dataset))
    else:
        root = Path(dataset)
        if not root.is_dir():
            raise DatasetError(f"{root} is neither a registered dataset ({', '.join(REGISTRY)}) "
                               "nor a folder")
        name, images = root.name, list_images(root)
        if not images:
            raise DatasetError(f"folder {root} holds no images (png, jpg, jpeg, webp)")
    return name, images[:limit] if limit > 0 else images


def pixel_sha256(data: bytes | Path) -> tuple[str, str]:
    """(sha256 of the decoded 8-bit RGB pixels, WxH) of an image file or its bytes."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"not a decodable image ({e})") from None
    return hashlib.sha256(rgb.tobytes()).hexdigest(), f"{rgb.shape[1]}x{rgb.shape[0]}"


MAX_DOWNLOAD_BYTES = 64 << 20  # one image file; a larger answer is refused


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host or a file: URL, else a one-line DatasetError."""
    parts = urllib.parse.urlsplit(url)
    if not url.isprintable() or not ((parts.scheme in ("http", "https") and parts.netloc)
                                     or (parts.scheme == "file" and parts.path)):
        raise DatasetError(f"--url {url[:100]!r}: not an http(s) or file URL")
    return url


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(check_url(url), timeout=timeout) as r:
            data = r.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DatasetError(f"download of {url} failed: {' '.join(str(e).split())[:200]}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise DatasetError(f"download of {url}: over {MAX_DOWNLOAD_BYTES:,} bytes, not an image of the set")
    return data


def download_kodak(dest: str | Path | None = None, base_url: str = KODAK_URL,
                   timeout: float = 60.0, progress: bool = True) -> list[Path]:
    """Download the 24 Kodak PNGs into ``dest`` (default: the registry folder) and verify each.

    Files already present with the right pixels are kept (not fetched again). A file whose
    pixels do not match is never written: a :class:`DatasetError` names it, the URL and both
    hashes, and files verified before it stay in place. Writes are atomic (temp file + rename).
    """
    check_url(base_url)
    dest = Path(dest) if dest is not None else folder("kodak")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (sha, size) in tqdm(KODAK_PIXELS.items(), desc="kodak", unit="img", disable=not progress):
        path = dest / name
        if not (path.exists() and _verified(path, sha, size)):
            url = base_url.rstrip("/") + "/" + name
            data = _fetch(url, timeout)
            try:
                got = pixel_sha256(data)
            except DatasetError as e:
                raise DatasetError(f"{url}: {e}; {path} not written") from None
            if got != (sha, size):
                raise DatasetError(f"{url}: pixel sha256 {got[0]} ({got[1]}) does not match the "
                                   f"expected {sha} ({size}); {path} not written")
            write_file(path, data)
        out.append(path)
    return out


def _verified(path: Path, sha: str, size: str) -> bool:
    try:
        return pixel_sha256(path) == (sha, size)
    except DatasetError:
        return False




@command("datasets")
def main(argv: list[str] | None = None) -> int:
    """``python -m lic_core.datasets {list,check NAME,download kodak [--dest DIR]}``."""
    p = argparse.ArgumentParser(prog="python -m lic_core.datasets")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    sub.add_parser("check").add_argument("name", choices=sorted(REGISTRY))
    d = sub.add_parser("download")
    d.add_argument("name", choices=["kodak"])
    d.add_argument("--dest", type=Path)
    d.add_argument("--url", default=KODAK_URL)
    args = p.parse_args(argv)  # errors: one line and exit 2 through @command
    if args.cmd == "list":
        for s in REGISTRY.values():
            print(f"{s.name:<15} {s.count:>4} images  {folder(s.name)}  {s.source}")
    elif args.cmd == "check":
        print(f"{args.name}: {len(check(args.name))} images OK in {folder(args.name)}")
    else:
        paths = download_kodak(args.dest, args.url)
        print(f"kodak: {len(paths)} images verified in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
