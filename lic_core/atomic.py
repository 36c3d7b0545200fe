"""Writing files so that a reader (or a crash) never sees half of one.

Every file this project writes (bitstreams, PNGs, checkpoints, JSON results, manifests, figures)
goes through :func:`write_atomic`: the content is written to a temporary file ``.NAME.PID.XXXX.tmp``
in the same folder, flushed to disk, then renamed onto the target with ``os.replace``. An existing
file stays as it was when anything fails, keeps its permission bits when replaced, and is never a
FIFO, device or socket (those are refused, not replaced). SIGINT and SIGTERM remove the temporary
file; one left by a killed process (its PID gone, or an older unnumbered name over an hour old) is
removed by the next write of the same name.

Commands check their outputs first with :func:`check_output`, as gzip does: ``-`` is stdout, an
existing file is refused unless ``force``, and the input itself is refused always.
"""
from __future__ import annotations

import glob
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from lic_core.errors import OutputError

STDOUT = "-"
STALE_AGE_S = 3600  # an unnumbered temporary file older than this is a leftover


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the path is."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_output(path: str | os.PathLike, force: bool = True, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` if a file can be written there (its missing folders made later), else an
    :class:`OutputError` naming why: a folder, a path under a file, no permission, not a regular
    file (FIFO, device, socket, symbolic link), the same file as one of ``inputs``, or (unless
    ``force``) an existing file. Commands call it before any work, so that nothing is computed or
    written for an output that fails."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and path.is_dir()):
            raise OutputError(f"{path}: is a folder, not a file name")
        for other in inputs:
            try:
                if os.path.samefile(path, other):
                    raise OutputError(f"{path}: is the input file {other}; not overwritten")
            except OSError:
                pass
        kind = _kind(st.st_mode)
        if kind is not None:
            raise OutputError(f"{path}: is {kind}, not a regular file; not replaced")
        if not force:
            raise OutputError(f"{path}: already exists (-f/--force overwrites it)")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: no permission to write in {parent}")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def clear_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writers of ``path`` left behind when killed: those whose
    PID is gone, and unnumbered ones older than an hour. Returns what was removed."""
    path = Path(path)
    gone = []
    for name in glob.glob(glob.escape(str(path.parent / f".{path.name}.")) + "*.tmp"):
        p = Path(name)
        middle = p.name[len(path.name) + 2 : -4]
        pid = middle.split(".")[0]
        try:
            stale = not _alive(int(pid)) if pid.isdigit() and int(pid) < 2**22 else \
                time.time() - p.lstat().st_mtime > STALE_AGE_S
            if stale and stat.S_ISREG(p.lstat().st_mode):
                p.unlink()
                gone.append(p)
        except OSError:
            pass
    return gone


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """In the main thread, SIGTERM (``kill``, a batch system cancelling a job) ends the block with
    ``SystemExit(143)`` instead of ending the process on the spot, so that ``except``/``finally``
    clauses run first (a temporary file removed, worker processes ended)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], force: bool = True) -> Path:
    """Run ``write(file)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it
    onto ``path`` (e.g. ``write=lambda f: torch.save(obj, f)``). A path that cannot be written
    is an :class:`OutputError`; a replaced file keeps its permission bits. Without ``force`` an
    existing file is refused, also one that appeared while ``write`` ran (the temporary file is
    then hard-linked onto the name, which fails if it exists)."""
    path = check_output(path, force=force)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()  # mkstemp makes 0600; a new file follows the umask
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with sigterm_exits():
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            _publish(tmp, path, force)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:  # also SystemExit(143) from SIGTERM
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _publish(tmp: str, path: Path, force: bool) -> None:
    """Move the finished temporary file onto ``path``; without ``force`` never over a file."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(f"{path}: already exists (-f/--force overwrites it); it appeared while this "
                          "file was being made") from None
    except OSError:  # no hard links on this file system: the check and the rename are two steps
        check_output(path, force=False)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_file(path: str | os.PathLike, data: bytes | str, force: bool = True) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically (:func:`write_atomic`, with
    ``force``); ``-`` writes to stdout."""
    raw = data.encode() if isinstance(data, str) else data
    if str(path) == STDOUT:
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return Path(STDOUT)
    return write_atomic(path, lambda f: f.write(raw), force)
