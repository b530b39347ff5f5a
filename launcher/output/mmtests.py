"""``shmalloc compare --format mmtests``: a comparison in the layout of
mmtests' ``compare-kernels.sh`` (Mel Gorman's mmtests, whose reports are
printed by ``bin/compare-mmtests.pl``), the form mm developers already read
and paste into a patch's cover letter.

The layout, as compare-mmtests.pl prints it:

- a header line: each variant's label right-aligned over its column;
- per figure the rows Min, Amean, Hmean, Stddev, CoeffVar and Max: the
  statistic left-aligned (``%-8s``), a space, the figure's name, then one
  column per variant: the value (``%12.2f``) and its difference against the
  baseline (the first column) in percent, `` ( -2.42%)`` (``%7.2f``; the
  baseline's own is 0.00);
- the percentage is signed so that positive is better, as mmtests does:
  ``(new - base) / base`` for a figure where more is better (throughput) on
  Min, Amean, Hmean and Max, ``(base - new) / base`` where less is better
  (latency, lock wait) and on every Stddev and CoeffVar row;
- Stddev is the sample standard deviation (n - 1), CoeffVar 100 x Stddev /
  Amean, Hmean the harmonic mean (undefined, ``-``, when a value is not
  positive);
- a significant difference is printed between asterisks instead of
  parentheses, `` * -23.82%*``, on the mean rows (Amean and Hmean).

Where shmalloc departs from it: mmtests decides significance with a t-test
on the two variants' samples; here a difference is marked significant only
when compare's own 95 % interval of the variant's per-round ratio to the
baseline (paired rounds, :mod:`launcher.comparison.stats`) excludes 1, so the stars say
exactly what compare's verdict says.  A percentage against a baseline of 0
has no value and prints as ``-``.

Pure: :func:`format_mmtests` takes numbers and returns lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STATS = ("Min", "Amean", "Hmean", "Stddev", "CoeffVar", "Max")
#: the rows that carry a significance mark
MEAN_ROWS = ("Amean", "Hmean")
VALUE_WIDTH = 12
PCT_WIDTH = 7
COLUMN_WIDTH = VALUE_WIDTH + PCT_WIDTH + 4          # "%12.2f" + " (" + "%7.2f" + "%)"


@dataclass
class Figure:
    """One figure of the comparison: its name, whether more is better, each
    variant's values (one per round), and which variants differ from the
    baseline by their interval."""

    name: str
    higher_is_better: bool
    values: dict[str, list[float]]
    significant: dict[str, bool] = field(default_factory=dict)


def summary(values: list[float]) -> dict[str, float | None]:
    """Min, Amean, Hmean, Stddev, CoeffVar and Max of ``values``, as
    mmtests computes them (None where undefined)."""
    x = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not x:
        return dict.fromkeys(STATS)
    n = len(x)
    mean = sum(x) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1)) if n > 1 else None
    return {
        "Min": min(x),
        "Amean": mean,
        "Hmean": n / sum(1 / v for v in x) if all(v > 0 for v in x) else None,
        "Stddev": sd,
        "CoeffVar": 100 * sd / mean if sd is not None and mean else None,
        "Max": max(x),
    }


def percent(new: float | None, base: float | None, more_is_better: bool) -> float | None:
    """The difference against the baseline in percent, positive when
    better; None when either is missing or the baseline is 0."""
    if new is None or base is None:
        return None
    if new == base:
        return 0.0
    if base == 0:
        return None
    return 100 * (new - base) / base if more_is_better else 100 * (base - new) / base


def _cell(value: float | None, pct: float | None, significant: bool) -> str:
    v = f"{value:{VALUE_WIDTH}.2f}" if value is not None else f"{'-':>{VALUE_WIDTH}}"
    p = f"{pct:{PCT_WIDTH}.2f}%" if pct is not None else f"{'-':>{PCT_WIDTH}} "
    return f"{v} *{p}*" if significant else f"{v} ({p})"


def format_mmtests(figures: list[Figure], labels: list[str]) -> list[str]:
    """The table's lines: a header, then the six rows of every figure; the
    first of ``labels`` is the baseline."""
    stat_w = max(len(s) for s in STATS)
    name_w = max(len(f.name) for f in figures) if figures else 0
    lead = stat_w + 1 + name_w
    lines = [" " * lead + "".join(f"{label:>{COLUMN_WIDTH}}" for label in labels)]
    for fig in figures:
        sums = {label: summary(fig.values.get(label, [])) for label in labels}
        base = sums[labels[0]]
        for stat in STATS:
            better = fig.higher_is_better and stat not in ("Stddev", "CoeffVar")
            row = f"{stat:<{stat_w}} {fig.name:<{name_w}}"
            for label in labels:
                value = sums[label][stat]
                sig = (label != labels[0] and stat in MEAN_ROWS
                       and bool(fig.significant.get(label)))
                row += _cell(value, percent(value, base[stat], better), sig)
            lines.append(row)
    return lines
