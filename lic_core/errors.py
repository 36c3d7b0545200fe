"""Errors the library raises on bad input; each message names what is wrong.

Commands report them through :func:`command`: one line on stderr and a non-zero exit code; the
text behind an error (a torch or YAML message) only with ``--verbose`` or ``LIC_VERBOSE=1``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Sequence

EXIT_ERROR = 2
INTERNAL = "unexpected"  # the last-resort message's start: a case no check handled (a bug to fix)


class LicError(Exception):
    """Base class of every error ``lic_core`` raises on purpose; ``detail`` is the text behind it
    (a library's message), shown by commands only when asked for."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class BitstreamError(LicError):
    """Bytes that are not a valid ``lic_core`` bitstream (truncated, corrupted or foreign)."""


class ReconstructionWarning(UserWarning):
    """A decoded image that differs from the encoder's own reconstruction although every symbol
    decoded right: the synthesis transform rounded differently here (another CPU or kind of device)."""


class CheckpointError(LicError):
    """A checkpoint that does not match the model (missing, unexpected or mis-shaped tensor)."""


class ConfigError(LicError):
    """A configuration value that is unknown or out of range; the message names the key."""


class ImageError(LicError):
    """A file that is not an image this tool can read."""


class DatasetError(LicError):
    """A dataset folder that is missing, incomplete or holds unexpected images, or a failed download."""


class OutputError(LicError):
    """A path that cannot be written (a folder, a path under a file, no permission), or an output
    refused as gzip would: an existing file without ``--force``, the input itself, a non-regular file."""


class UsageError(LicError):
    """A command line that does not parse (argparse's message, as one line)."""


def printable(text: str) -> str:
    """``text`` with every non-printable character (terminal escape codes, control characters)
    written as a Python escape, so that bytes from a file never reach the terminal raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def one_line(text: str) -> str:
    return printable(" ".join(str(text).split()))


def _argparse_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    raise UsageError(f"{message} (see {self.prog} --help)")


@contextmanager
def one_line_usage() -> Iterator[None]:
    """While a command runs, argparse's errors raise :class:`UsageError` instead of printing the
    usage block and exiting, so that a bad flag is one line like any other error."""
    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = saved  # type: ignore[method-assign]


def allocation_failure(e: BaseException) -> bool:
    """Whether ``e`` is memory exhaustion (Python's MemoryError or a torch allocator failure)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("alloc" in text or "out of memory" in text))


def verbose() -> bool:
    return os.environ.get("LIC_VERBOSE", "") not in ("", "0")


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: a :class:`LicError`, an ``OSError``, a bad
    command line, memory exhaustion or too deep recursion becomes one line ``PROG: error: ...`` on
    stderr and exit code 2 (anything else too, as ``unexpected ...``: a bug); Ctrl-C exits 130.
    ``--verbose`` anywhere in argv (or ``LIC_VERBOSE=1``) adds the text behind the error."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            saved = os.environ.get("LIC_VERBOSE")
            if "--verbose" in args:
                args.remove("--verbose")
                os.environ["LIC_VERBOSE"] = "1"  # for this call only (restored below)
            try:
                return _run(main, args)
            finally:
                if saved is None:
                    os.environ.pop("LIC_VERBOSE", None)
                else:
                    os.environ["LIC_VERBOSE"] = saved

        def _run(main: Callable[..., int], args: list[str]) -> int:
            try:
                with one_line_usage():
                    return main(args)
            except OSError as e:  # a file the command reads or writes: its path and the reason
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            except LicError as e:
                hint = " (--verbose for details)" if e.detail and not verbose() else ""
                print(f"{prog}: error: {one_line(e)}{hint}", file=sys.stderr)
                if e.detail and verbose():
                    print(printable(e.detail), file=sys.stderr)
            except RecursionError:
                print(f"{prog}: error: input nested too deeply", file=sys.stderr)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except Exception as e:  # noqa: BLE001 - the last resort: still one line
                if allocation_failure(e):
                    print(f"{prog}: error: out of memory ({one_line(e)[:200]})", file=sys.stderr)
                else:
                    print(f"{prog}: error: {INTERNAL} {type(e).__name__}: {one_line(e)[:300]}"
                          f"{'' if verbose() else ' (--verbose for the traceback)'}", file=sys.stderr)
                if verbose():
                    traceback.print_exc()
            return EXIT_ERROR

        return run

    return wrap
