"""Argument types for the command lines: numbers checked against their range when parsed, so that a
bad flag (``--crop -5``, ``--max-pixels 2**40``) is a one-line usage error, never ignored."""
from __future__ import annotations

import argparse
from typing import Callable

MAX_DIGITS = 20  # longer integers are refused before Python converts them


def bounded_int(lo: int, hi: int, multiple: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``lo`` to ``hi`` (a multiple of ``multiple``)."""

    def parse(text: str) -> int:
        t = text.strip()
        if not t.lstrip("+-").isdigit() or len(t) > MAX_DIGITS or not t.isascii():
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer")
        v = int(t)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range {lo}..{hi:,}")
        if v % multiple:
            raise argparse.ArgumentTypeError(f"{v} is not a multiple of {multiple}")
        return v

    parse.__name__ = "integer"
    return parse


def bounded_float(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``lo`` to ``hi``."""

    def parse(text: str) -> float:
        try:
            v = float(text[:64])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        if not lo <= v <= hi:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range {lo}..{hi}")
        return v

    parse.__name__ = "number"
    return parse
