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


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Run ``write(file)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it
    onto ``path`` (e.g. ``write=lambda f: torch.save(obj, f)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a new file follows the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return write_atomic(path, lambda f: f.write(raw))
