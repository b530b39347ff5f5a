"""Paired statistics for ``shmalloc compare``: how sure is a difference?

compare runs N rounds; each round runs every variant once, in a fresh random
order (randomized multiple interleaved trials, Abedi & Brecht 2017), so a
slow spell of the machine falls on every variant alike.  Against the
baseline (the first variant) each other variant gets, per round, the ratio
of its figure to the baseline's figure *of the same round*; over rounds, the
median ratio and its 95 % confidence interval.

Method: the distribution-free interval of a median from order statistics
(the sign test inverted; Conover, *Practical Nonparametric Statistics*,
3rd ed., section 3.2).  Of n values sorted, ``[x(k), x(n+1-k)]`` holds the
true median unless at least n+1-k of the n values fall on one side of it,
which has probability ``2 P(Binomial(n, 1/2) <= k-1)`` whatever the
distribution (continuous; ties only make it more conservative).  k is the
largest with that below 5 %, so the coverage is at least 95 %, exactly:
96.9 % at 6 rounds, 97.9 % at 10, 95.9 % at 20 (:func:`coverage`).  Fewer
than :data:`MIN_ROUNDS` (6) values have no 95 % interval at all (5 values
cover 93.8 % at most): compare says so instead of printing one.  No
resampling, so no seed.

Why not the bootstrap used before (the percentile bootstrap of the median,
9999 resamples): it is too narrow with few rounds.  On A/A data (lognormal
ratios around 1, fixed seeds, 400 comparisons each) its interval excluded 1
in 13.8 % of comparisons at 4 rounds, 7.0 % at 5, 9.3 % at 8 and 8.3 % at
20, against the 5 % a 95 % interval promises; in a line-up of seven designs
that is one false verdict in most runs.  The order-statistic interval keeps
its promise at every n (``tests/test_stats.py`` checks the A/A rate on
lognormal, bimodal and heavy-tailed ratios); the price is a somewhat wider
interval, which :func:`expected_halfwidth` and the +-2 % line account for.

Many designs against one baseline: each interval at 95 % would call one of
seven designs that do not differ at all slower or faster by chance in about
one run in four (measured: the main job's first runs called callback/discard
"slower by 1.8 %" and callback/hint "faster by 3.8 %" in rounds too short for
either to report anything).  compare therefore puts each of its m intervals
at 1 - 5 %/m (:func:`family_confidence`, Bonferroni), so that all of them
hold together with at least 95 %; the price is width, and rounds: 9 before
there is any interval with seven designs, 12 for ``[x(2), x(11)]``.

A verdict reads the interval: ``slower by X % [lo, hi]`` when it lies below
1, ``faster by X % [lo, hi]`` above 1, ``indistinguishable`` when it holds 1.

Every function here takes plain numbers and returns numbers or lines, so the
statistics are tested on synthetic data with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
METHOD = "order-statistic (sign-test) interval of the median"
#: fewer values than this have no 95 % interval of their median
MIN_ROUNDS = 6
#: compare warns above these
STEAL_WARN_PCT = 2.0
CV_WARN = 0.10
#: the resolution the warning asks for: +-2 %
TARGET_HALFWIDTH = 0.02


def family_confidence(comparisons: int, confidence: float = CONFIDENCE) -> float:
    """The level of each of ``comparisons`` intervals such that all of them
    hold their true values together with probability ``confidence`` at
    least (Bonferroni): 1 - (1 - confidence) / comparisons.  Seven designs
    against none: 99.29 % each, so that a design is called slower or faster
    by chance in at most one comparison in twenty, not in one in four."""
    return 1 - (1 - confidence) / max(comparisons, 1)


def min_rounds(confidence: float = CONFIDENCE) -> int:
    """The fewest values that have an interval of their median at
    ``confidence``: [min, max] covers 1 - 2^(1-n).  6 at 95 %, 9 at 99.29 %."""
    n = 1
    while coverage(n, 1) < confidence:
        n += 1
    return n


def coverage(n: int, k: int) -> float:
    """P(x(k) <= median <= x(n+1-k)) for n values of any continuous
    distribution: 1 - 2 P(Binomial(n, 1/2) <= k-1), exactly."""
    tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
    return 1 - 2 * tail


def _order_ks(ns: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """:func:`order_k` of every n in ``ns`` at once, 0 where there is none:
    the smallest j with P(Binomial(n, 1/2) <= j) >= (1 - confidence) / 2 is
    the largest k with P(B <= k - 1) below it (the tail is a multiple of
    2^-n, never exactly 2.5 %)."""
    # imported here, not at the top, for start-up: scipy.stats takes over a
    # second to import, and only a comparison of six rounds or more needs it
    from scipy.stats import binom
    return binom.ppf((1 - confidence) / 2, ns, 0.5).astype(np.int64)


def order_k(n: int, confidence: float = CONFIDENCE) -> int | None:
    """The k of the interval ``[x(k), x(n+1-k)]`` (1-based): the largest
    whose :func:`coverage` is at least ``confidence``; None when even
    [min, max] covers less (n < 6 at 95 %)."""
    if n < 1:
        return None
    k = int(_order_ks(np.array([n]), confidence)[0])
    return k or None


def median_ci(values, confidence: float = CONFIDENCE
              ) -> tuple[float | None, float | None, float | None]:
    """(median, lo, hi): the median of ``values`` and its order-statistic
    interval at ``confidence`` (95 %); lo and hi are None with fewer values
    than :func:`min_rounds` (6 at 95 %)."""
    x = np.sort(np.asarray([v for v in values if v is not None and math.isfinite(v)], float))
    if len(x) == 0:
        return None, None, None
    med = float(np.median(x))
    k = order_k(len(x), confidence)
    if k is None:
        return med, None, None
    return med, float(x[k - 1]), float(x[len(x) - k])


def paired_ratios(baseline: list, variant: list) -> list[float | None]:
    """Per-round ratio variant / baseline; None where a round lacks one of
    them or the baseline is 0 (a ratio to nothing)."""
    out = []
    for b, v in zip(baseline, variant):
        out.append(None if b is None or v is None or b == 0 else v / b)
    return out


def verdict(ratio: float | None, lo: float | None, hi: float | None,
            higher_is_better: bool = True, needs: int = MIN_ROUNDS) -> str:
    """``slower by X % [lo, hi]``, ``faster by ...`` or ``indistinguishable``
    for a throughput ratio (``higher_is_better=False``: a latency or a wait,
    where a ratio above 1 is worse); without an interval, the rounds one
    ``needs``."""
    if ratio is None:
        return "no data"
    if lo is None or hi is None:
        return f"no interval (fewer than {needs} rounds)"
    if lo <= 1 <= hi:
        return "indistinguishable"
    below = hi < 1
    worse = below if higher_is_better else not below
    word = "slower" if higher_is_better else "higher"
    if not worse:
        word = "faster" if higher_is_better else "lower"
    if below:
        return f"{word} by {100 * (1 - ratio):.1f} % [{100 * (1 - hi):.1f}, {100 * (1 - lo):.1f}]"
    return f"{word} by {100 * (ratio - 1):.1f} % [{100 * (lo - 1):.1f}, {100 * (hi - 1):.1f}]"


def cv(values) -> float | None:
    """Coefficient of variation (sample sd / mean), None below two values."""
    x = np.asarray([v for v in values if v is not None], float)
    if len(x) < 2 or x.mean() == 0:
        return None
    return float(x.std(ddof=1) / x.mean())


def log_spread(ratios) -> float | None:
    """The relative spread of paired ratios: a robust sd of their logs,
    1.4826 x their median absolute deviation (the sd itself for normal
    data).  Robust like the median it serves: one round in which the machine
    starved a run would otherwise inflate it several times."""
    x = np.asarray([r for r in ratios if r is not None and r > 0], float)
    if len(x) < 2:
        return None
    logs = np.log(x)
    return float(1.4826 * np.median(np.abs(logs - np.median(logs))))


def _halfwidths(sd: float, ns: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """:func:`expected_halfwidth` of every n in ``ns``, inf where none."""
    # imported here for start-up, as binom above
    from scipy.stats import norm
    ks = _order_ks(ns, confidence)
    with np.errstate(divide="ignore"):
        hw = -sd * norm.ppf((ks - 0.375) / (ns + 0.25))
    return np.where(ks > 0, hw, np.inf)


def expected_halfwidth(sd: float, rounds: int, confidence: float = CONFIDENCE) -> float | None:
    """The half-width, as a fraction (0.02 is +-2 %), that the interval at
    ``confidence`` of the median of ``rounds`` per-round ratios is expected
    to have when their logs spread with standard deviation ``sd``: half the
    distance between the expected order statistics x(k) and x(n+1-k) of
    normal data (Blom's approximation, ``(i - 3/8) / (n + 1/4)``).  None
    below :func:`min_rounds`.  It is not monotonic in n: k steps by whole
    values, so at 95 % 9 rounds (k = 2, coverage 96.1 %) are narrower than
    10 or 11."""
    hw = float(_halfwidths(sd, np.array([rounds]), confidence)[0])
    return None if math.isinf(hw) else hw


def rounds_for_halfwidth(sd: float, halfwidth: float = TARGET_HALFWIDTH,
                         limit: int = 100_000, confidence: float = CONFIDENCE) -> int | None:
    """The fewest rounds whose expected interval at ``confidence``
    (:func:`expected_halfwidth`) is +-``halfwidth`` or narrower at per-round
    spread ``sd``; None when that takes more than ``limit``."""
    ns = np.arange(min_rounds(confidence), limit + 1)
    ok = np.nonzero(_halfwidths(sd, ns, confidence) <= halfwidth)[0]
    return int(ns[ok[0]]) if len(ok) else None


def noise_warnings(steal_pcts: list, baseline_cv: float | None, ratio_sd: float | None,
                   baseline: str, confidence: float = CONFIDENCE,
                   sharper_line: bool = False) -> list[str]:
    """compare's warnings: steal above 2 % in any run, the baseline's
    throughput varying more than 10 % across rounds.  The latter names the
    rounds that would resolve +-2 % at the spread seen (the paired ratios'
    :func:`log_spread` when there are pairs, else the baseline's CV times
    sqrt(2), the spread of a ratio of two independent runs), unless compare
    prints its +-2 % line (``sharper_line``), which says it already."""
    lines = []
    steals = [s for s in steal_pcts if s is not None]
    high = [s for s in steals if s > STEAL_WARN_PCT]
    if high:
        lines.append(f"WARNING: steal time above {STEAL_WARN_PCT:g} % in {len(high)} of "
                     f"{len(steals)} runs (up to {max(high):.1f} %): the hypervisor took "
                     "cpu time from this guest; its figures are less comparable")
    if baseline_cv is not None and baseline_cv > CV_WARN:
        head = (f"WARNING: {baseline}'s throughput varies by {100 * baseline_cv:.1f} % "
                f"(CV) across rounds, above {100 * CV_WARN:.0f} %")
        if sharper_line:
            lines.append(f"{head}: the intervals are the wider for it (the +-2 % line says "
                         "what a narrower one takes)")
            return lines
        sd = ratio_sd if ratio_sd is not None else math.sqrt(2) * baseline_cv
        n = rounds_for_halfwidth(sd, confidence=confidence)
        lines.append(f"{head}; at the spread seen (robust sd of log ratios {sd:.3f}) "
                     + (f"about {n} rounds would resolve" if n else
                        "more than 100,000 rounds would be needed to resolve")
                     + f" +-{100 * TARGET_HALFWIDTH:.0f} %")
    return lines


def fmt_ci(ratio: float | None, ci) -> str:
    """'0.952 [0.930, 0.975]', '0.952' without an interval, '-' without data."""
    if ratio is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{ratio:.3f}"
    return f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
