"""Writing files so that a reader (or a crash) never sees half of one.

Every file this project writes (bitstreams, PNGs, checkpoints, JSON results, manifests, figures)
goes through :func:`write_atomic`: the content is written to a temporary file in the same folder,
flushed to disk, then renamed onto the target with ``os.replace``. An existing file stays as it was
when anything fails.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from lic_core.errors import OutputError


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def check_output(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there (its missing folders made later), else an
    :class:`OutputError` naming why: a folder, a path under a file, or no permission. Commands
    call it before any work, so that nothing is computed or written for an output that fails."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: no permission to write in {parent}")
    return path


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Run ``write(file)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it
    onto ``path`` (e.g. ``write=lambda f: torch.save(obj, f)``). A path that cannot be written
    is an :class:`OutputError`."""
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a new file follows the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return write_atomic(path, lambda f: f.write(raw))
