"""Paired statistics for ``shmalloc compare``: how sure is a difference?

compare runs N rounds; each round runs every variant once, in a fresh random
order (randomized multiple interleaved trials, Abedi & Brecht 2017), so a
slow spell of the machine falls on every variant alike.  Against the
baseline (the first variant) each other variant gets, per round, the ratio
of its figure to the baseline's figure *of the same round*; over rounds, the
median ratio and its 95 % confidence interval by bootstrap
(``scipy.stats.bootstrap``).

Method: the *percentile* bootstrap of the median, 9999 resamples, seeded.
BCa was tried and rejected: on lognormal, bimodal and skewed ratios at
n = 5, 10 and 20 its coverage was no better (0.905-0.965 against
0.905-0.945 for the percentile method, nominal 0.95), and with tied values,
which the log-bucketed p99 latencies and a zero lock wait produce all the
time, its jackknife acceleration divides by zero and it returns no interval
at all.  The basic bootstrap covered 0.75-0.83 (and 0.0 on bimodal data).

A verdict reads the interval: ``slower by X % [lo, hi]`` when it lies below
1, ``faster by X % [lo, hi]`` above 1, ``indistinguishable`` when it holds 1.

Every function here takes plain numbers and returns numbers or lines, so the
statistics are tested on synthetic data with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 9999
METHOD = "percentile"
#: compare warns above these
STEAL_WARN_PCT = 2.0
CV_WARN = 0.10
#: the resolution the warning asks for: +-2 %
TARGET_HALFWIDTH = 0.02
_Z95 = 1.959964
#: asymptotic standard error of a median of normal data, in standard deviations x sqrt(n)
_MEDIAN_SE = math.sqrt(math.pi / 2)


def median_ci(values, seed: int) -> tuple[float | None, float | None, float | None]:
    """(median, lo, hi): the median of ``values`` and its 95 % percentile
    bootstrap interval; lo and hi are None with fewer than two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(x) == 0:
        return None, None, None
    med = float(np.median(x))
    if len(x) < 2:
        return med, None, None
    if np.all(x == x[0]):
        return med, med, med
    # imported here, not at the top, for start-up: scipy.stats takes over a
    # second to import, and only a run of two rounds or more gets this far
    from scipy.stats import bootstrap
    res = bootstrap((x,), np.median, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                    method=METHOD, rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return med, float(lo), float(hi)


def paired_ratios(baseline: list, variant: list) -> list[float | None]:
    """Per-round ratio variant / baseline; None where a round lacks one of
    them or the baseline is 0 (a ratio to nothing)."""
    out = []
    for b, v in zip(baseline, variant):
        out.append(None if b is None or v is None or b == 0 else v / b)
    return out


def verdict(ratio: float | None, lo: float | None, hi: float | None,
            higher_is_better: bool = True) -> str:
    """``slower by X % [lo, hi]``, ``faster by ...`` or ``indistinguishable``
    for a throughput ratio (``higher_is_better=False``: a latency or a wait,
    where a ratio above 1 is worse)."""
    if ratio is None:
        return "no data"
    if lo is None or hi is None:
        return "no interval (one round)"
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


def rounds_for_halfwidth(sd: float, halfwidth: float = TARGET_HALFWIDTH) -> int:
    """Rounds after which the 95 % interval of a median ratio is about
    +-``halfwidth``, for per-round relative spread ``sd`` (normal theory:
    the median's standard error is sqrt(pi/2) sd / sqrt(n))."""
    if sd <= 0:
        return 2
    return max(2, math.ceil((_Z95 * _MEDIAN_SE * sd / halfwidth) ** 2))


def noise_warnings(steal_pcts: list, baseline_cv: float | None, ratio_sd: float | None,
                   baseline: str) -> list[str]:
    """compare's warnings: steal above 2 % in any run, the baseline's
    throughput varying more than 10 % across rounds; the latter names the
    rounds that would resolve +-2 % at the spread seen (the paired ratios'
    :func:`log_spread` when there are pairs, else the baseline's CV times
    sqrt(2), the spread of a ratio of two independent runs)."""
    lines = []
    steals = [s for s in steal_pcts if s is not None]
    high = [s for s in steals if s > STEAL_WARN_PCT]
    if high:
        lines.append(f"WARNING: steal time above {STEAL_WARN_PCT:g} % in {len(high)} of "
                     f"{len(steals)} runs (up to {max(high):.1f} %): the hypervisor took "
                     "cpu time from this guest; its figures are less comparable")
    if baseline_cv is not None and baseline_cv > CV_WARN:
        sd = ratio_sd if ratio_sd is not None else math.sqrt(2) * baseline_cv
        n = rounds_for_halfwidth(sd)
        lines.append(f"WARNING: {baseline}'s throughput varies by {100 * baseline_cv:.1f} % "
                     f"(CV) across rounds, above {100 * CV_WARN:.0f} %; at the spread seen "
                     f"(robust sd of log ratios {sd:.3f}) about {n} rounds would resolve "
                     f"+-{100 * TARGET_HALFWIDTH:.0f} %")
    return lines


def fmt_ci(ratio: float | None, ci) -> str:
    """'0.952 [0.930, 0.975]', '0.952' without an interval, '-' without data."""
    if ratio is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{ratio:.3f}"
    return f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
