"""``--budget``: rounds planned up front, a clock that only cuts short, and
what that buys: on synthetic A/A data (fixed seeds, no process, a fake
clock) the rate of false differences stays within the 5 % a 95 % interval
promises, and the run ends inside its budget.  The same data read after
every round and stopped at the first difference (peeking) exceed it, which
is why the plan is fixed."""

from __future__ import annotations

import numpy as np
import pytest

from launcher.comparison import budget, stats


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def aa_ratios(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n per-round ratios of two identical variants: their logs symmetric
    around 0 (the median ratio is 1), of three shapes this machine shows."""
    if kind == "lognormal":
        logs = rng.normal(0, 0.05, n)
    elif kind == "bimodal":                 # two machine speeds, as with 2 workers
        logs = rng.choice([-0.2, 0.2], n) + rng.normal(0, 0.02, n)
    else:                                   # heavy tails: a starved run now and then
        logs = 0.03 * rng.standard_t(2, n)
    return np.exp(logs)


def simulate(kind: str, seed: int, peek: bool = False) -> tuple[bool, float, float, list]:
    """One A/A comparison under a random budget: (a difference was
    reported, seconds used, the budget, each round's length).  Rounds last
    their planned length, 20 % less to 10 % more."""
    rng = np.random.default_rng(seed)
    budget_s = float(rng.uniform(60, 300))
    p = budget.plan(budget_s, n_variants=2, duration_s=4.75)     # none, none#2: 10 s a round
    clock = FakeClock()
    deadline = budget.Deadline(budget_s, clock=clock)
    ratios = aa_ratios(kind, p.rounds, rng)
    seen: list[float] = []
    lengths: list[float] = []
    found = False

    def run_round(r: int):
        nonlocal found
        lengths.append(p.round_s * rng.uniform(0.8, 1.1))
        clock.t += lengths[-1]
        seen.append(float(ratios[r - 1]))
        if peek:                            # the rule --budget must not follow
            _, lo, hi = stats.median_ci(seen)
            if lo is not None and not lo <= 1 <= hi:
                found = True
                return False
        return True

    budget.run_planned(p, run_round, deadline)
    if not peek:                            # one look, at the end
        _, lo, hi = stats.median_ci(seen)
        found = lo is not None and not lo <= 1 <= hi
    return found, deadline.elapsed(), budget_s, lengths


def overrun_allowed(lengths: list) -> float:
    """What the deadline promises: no overrun, unless the last round took
    longer than every round before it, and then by no more than that."""
    return max(0.0, lengths[-1] - max(lengths[:-1], default=0.0))


@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "heavy"])
def test_aa_false_differences_within_the_level_and_on_time(kind):
    n = 2000
    outcomes = [simulate(kind, seed) for seed in range(n)]
    rate = sum(o[0] for o in outcomes) / n
    # the interval's exact level is 95.1-99.2 % for the 6-30 rounds these
    # budgets buy, so about 3 % is expected; 5 % is 4 standard errors above
    assert rate <= 1 - stats.CONFIDENCE, rate
    assert all(used <= b + overrun_allowed(lengths) for _, used, b, lengths in outcomes)
    assert sum(used > b for _, used, b, _ in outcomes) <= n // 100
    # and the budget is spent, not left idle (rounds ran 5 % short on average)
    assert all(used > 0.75 * b for _, used, b, _ in outcomes)


def test_peeking_would_exceed_the_level():
    """The guard above can fail: stopping at the first interval that
    excludes 1, on the very same ratios, reports more than the level allows
    (and more than twice what one look at the end reports)."""
    n = 2000
    once = sum(simulate("lognormal", seed)[0] for seed in range(n)) / n
    peeking = sum(simulate("lognormal", seed, peek=True)[0] for seed in range(n)) / n
    assert peeking > 1 - stats.CONFIDENCE and peeking > 2 * once, (once, peeking)


def test_plan_buys_whole_rounds_and_refuses_too_few():
    p = budget.plan(600, n_variants=8, duration_s=1.0)
    assert p.round_s == pytest.approx(8 * (1.0 + budget.RUN_OVERHEAD_S))
    assert p.rounds == 60 and "60 rounds of about 10.0 s in the 10 min budget" in p.describe()
    with pytest.raises(budget.BudgetError) as e:
        budget.plan(30, n_variants=8, duration_s=1.0)
    assert str(e.value) == ("--budget 30 s buys 3 rounds of 8 variants x 1 s (about 10.0 s a "
                            "round); an interval for each needs 9: give at least 1 min 30 s")
    # one variant against the baseline: 6 rounds will do
    assert budget.plan(30, n_variants=2, duration_s=1.0).rounds == 12


def test_the_deadline_only_cuts_short_and_never_overruns():
    clock = FakeClock()
    p = budget.plan(100, n_variants=2, duration_s=4.75)          # 10 rounds of 10 s
    deadline = budget.Deadline(100, clock=clock)
    lengths = iter([10, 10, 14, 10, 10, 10, 10, 10, 10, 10])    # the machine slows once

    def run_round(r):
        clock.t += next(lengths)

    done = budget.run_planned(p, run_round, deadline)
    # 10 + 10 + 14 + 10 x 5 = 84; then 84 + the longest (14) = 98 still fits,
    # 94 + 14 = 108 does not: 9 of the 10 planned rounds, 94 s
    assert done == 9 and deadline.elapsed() == 94 <= 100
    # an aborted run stops at once
    clock2 = FakeClock()
    d2 = budget.Deadline(100, clock=clock2)
    assert budget.run_planned(p, lambda r: False, d2) == 1


def test_the_command_that_narrows_it():
    argv = ["compare", "--strategies", "none,mainline", "--repeat", "9", "--duration", "1s",
            "--json", "c.json", "--force"]
    assert budget.command_with_rounds(argv, 120) == (
        "shmalloc compare --strategies none,mainline --duration 1s --repeat 120")
    assert budget.command_with_rounds(["compare", "--budget=10m", "--variant", "a=--x 'y z'"],
                                      7) == ("shmalloc compare --variant 'a=--x '\"'\"'y z'\"'\"'' "
                                             "--repeat 7")
    assert [budget.fmt_duration(s) for s in (45, 90, 600, 7500)] == [
        "45 s", "1 min 30 s", "10 min", "2 h 5 min"]
