"""Sizes and durations, read and written: the command line's value types
(every flag validated before anything is created) and the formats the
tables print.  At the bottom of the launcher with :mod:`launcher.errors`.

Each type function raises ``argparse.ArgumentTypeError`` with a message that
names the accepted range; argparse prefixes the flag name, and
:func:`launcher.cli.main.main` prints the result as one line and exits 2.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal, InvalidOperation

PAGE_SIZE = 4096
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"^\s*([0-9.eE+-]+)\s*(ms|s|m|h|)\s*$")
_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "": Decimal(1), "m": Decimal(60),
            "h": Decimal(3600)}


def parse_size(text: str) -> int:
    """'1G' -> 1073741824.  Suffixes K, M, G, T are powers of 1024; a
    fraction ('1.5G') is accepted when it comes to whole 4 KiB pages."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (a number of bytes with an optional K, M, G or T suffix)")
    value = Decimal(m.group(1)) * _UNITS[m.group(2).lower()]
    if value != value.to_integral_value() or ("." in m.group(1) and value % PAGE_SIZE):
        raise argparse.ArgumentTypeError(
            f"{text.strip()} is {value.normalize():f} bytes, not a whole number of 4 KiB pages "
            "(a size with a fraction must come to whole pages)")
    return int(value)


def parse_duration(text: str) -> float:
    """'5' or '5s' -> 5.0, '500ms' -> 0.5, '2m' -> 120.0, '1h' -> 3600.0."""
    m = _DURATION_RE.match(str(text))
    try:
        if not m:
            raise InvalidOperation
        value = Decimal(m.group(1)) * _SECONDS[m.group(2)]
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (seconds, or a number with a unit: 500ms, 5s, 2m, "
            "1h)") from None
    return float(value)


def format_size(n: int) -> str:
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def byte_unit(n: float) -> tuple[int, str]:
    """The binary unit ``n`` bytes print in: (its size in bytes, its name)."""
    exp = 0
    while abs(n) >= 1024 ** (exp + 1) and exp < len(BYTE_UNITS) - 1:
        exp += 1
    return 1024 ** exp, BYTE_UNITS[exp]


def fmt_bytes(n: float) -> str:
    size, unit = byte_unit(n)
    return f"{n:.0f} {unit}" if unit == "B" else f"{n / size:.2f} {unit}"


def fmt_rate(n: float, unit: str) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3f} M {unit}"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K {unit}"
    return f"{n:.0f} {unit}"


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


def _ranged(parse, name: str, unit: str, lo: float, hi: float | None, lo_open: bool):
    """A flag type: ``parse(text)``, then the range check."""
    def conv(text: str) -> float:
        v = parse(text)
        if v != v or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            left = f"> {lo:g}{unit}" if lo_open else f">= {lo:g}{unit}"
            rng = f"{left} and <= {hi:g}{unit}" if hi is not None else left
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    conv.__name__ = name
    return conv


def _parse_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def float_range(lo: float, hi: float | None = None, lo_open: bool = False):
    return _ranged(_parse_number, "number", "", lo, hi, lo_open)


def duration_range(lo: float, hi: float | None = None, lo_open: bool = False):
    """A duration flag: plain seconds or a number with ms, s, m or h."""
    return _ranged(parse_duration, "duration", " s", lo, hi, lo_open)


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
