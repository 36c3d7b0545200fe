"""Errors the library raises on bad input; each message names what is wrong.

Commands report them through :func:`command`: one line on stderr and a non-zero exit code; the
text behind an error (a torch or YAML message) only with ``--verbose`` or ``LIC_VERBOSE=1``.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

EXIT_ERROR = 2


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
    """A path that cannot be written (a folder, a path under a file, no permission)."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def verbose() -> bool:
    return os.environ.get("LIC_VERBOSE", "") not in ("", "0")


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: a :class:`LicError` becomes one line
    ``PROG: error: ...`` on stderr and exit code 2. ``--verbose`` anywhere in argv (or
    ``LIC_VERBOSE=1``) adds the text behind the error."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            if "--verbose" in args:
                args.remove("--verbose")
                os.environ["LIC_VERBOSE"] = "1"
            try:
                return main(args)
            except OSError as e:  # a file the command reads or writes: its path and the reason
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return EXIT_ERROR
            except LicError as e:
                hint = " (--verbose for details)" if e.detail and not verbose() else ""
                print(f"{prog}: error: {one_line(e)}{hint}", file=sys.stderr)
                if e.detail and verbose():
                    print(e.detail, file=sys.stderr)
                return EXIT_ERROR

        return run

    return wrap
