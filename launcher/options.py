"""Command-line value types: every flag validated before anything is created.

Each type function raises ``argparse.ArgumentTypeError`` with a message that
names the accepted range; argparse prefixes the flag name, and
:func:`launcher.cli.main` prints the result as one line and exits 2.
"""

from __future__ import annotations

import argparse
import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'1G' -> 1073741824.  Suffixes K, M, G, T are powers of 1024."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (a number of bytes with an optional K, M, G or T suffix)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def int_range(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {v}")
        return v
    conv.__name__ = "integer"
    return conv


def float_range(lo: float, hi: float | None = None, lo_open: bool = False):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v != v or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            left = f"> {lo}" if lo_open else f">= {lo}"
            rng = f"{left} and <= {hi}" if hi is not None else left
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    conv.__name__ = "number"
    return conv


def size_range(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        v = parse_size(text)
        if v < lo or (hi is not None and v > hi):
            rng = (f"{format_size(lo)}..{format_size(hi)}" if hi is not None
                   else f">= {format_size(lo)}")
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    conv.__name__ = "size"
    return conv
