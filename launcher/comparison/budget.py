"""``shmalloc compare --budget TIME``: how many paired rounds a time buys,
fixed before the first one.

Why up front.  The tempting rule, run rounds and look at the interval after
each one, stopping at the first that excludes 1, reports differences that
are not there: every look is another chance for noise to cross the line, and
the rule stops exactly when it has.  With a test at the 5 % level repeated
after every new observation, the chance of a false difference grows with
the number of looks, to about 19 % at 10 looks and 25 % at 20 (Armitage,
McPherson & Rowe, "Repeated significance tests on accumulating data",
J. R. Stat. Soc. A 132 (1969) 235-244).  ``tests/test_budget.py`` shows it
on synthetic A/A data: the same ratios, read after every round and stopped
at the first difference, give several times the 5 % that one look at the
end gives.  So :func:`plan` decides the number of rounds from the budget,
the line-up and the run length before round 1, and nothing a round measures
changes it.

What may cut the plan short is the clock, never a result: :class:`Deadline`
does not start a round that the longest round so far would carry past the
budget (a machine slower than the plan assumed).  Whether to stop then
depends on elapsed time alone, which the compared figures do not steer (every
run lasts ``--duration`` whatever its throughput), so the level holds; the
comparison is read once, after the last round.

Pure: :func:`plan` takes numbers, :class:`Deadline` a clock, so both are
tested without processes.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field

from .stats import family_confidence, min_rounds

#: what a run costs beyond its --duration, for the plan: creating the
#: machine, forking and binding, stopping, the invariant check and the
#: tear-down, and the launcher's own gap between runs.  Measured at 0.15-0.2 s
#: a run on the 2-core VM (see the README's fixed cost); the plan assumes
#: more so that it ends inside the budget, and the deadline covers the rest.
RUN_OVERHEAD_S = 0.25


class BudgetError(ValueError):
    """A budget that buys fewer rounds than an interval needs."""


@dataclass(frozen=True)
class Plan:
    """Rounds chosen from a budget: ``rounds`` of ``round_s`` seconds each
    (estimated), ``budget_s`` in all."""

    rounds: int
    round_s: float
    budget_s: float

    def describe(self) -> str:
        return (f"{self.rounds} rounds of about {self.round_s:.1f} s in the "
                f"{_fmt_s(self.budget_s)} budget, fixed before the first")


def round_seconds(n_variants: int, duration_s: float,
                  overhead_s: float = RUN_OVERHEAD_S) -> float:
    """The estimated wall time of one round: every variant once."""
    return n_variants * (duration_s + overhead_s)


def plan(budget_s: float, n_variants: int, duration_s: float,
         overhead_s: float = RUN_OVERHEAD_S) -> Plan:
    """The rounds ``budget_s`` buys: as many whole rounds as fit.
    :class:`BudgetError` when that is fewer than an interval needs at the
    comparison's level (:func:`launcher.comparison.stats.min_rounds` of the
    family confidence: 6 for one variant against the baseline, 9 for seven),
    naming the budget that would do."""
    round_s = round_seconds(n_variants, duration_s, overhead_s)
    rounds = math.floor(budget_s / round_s + 1e-9)
    need = min_rounds(family_confidence(n_variants - 1))
    if rounds < need:
        raise BudgetError(
            f"--budget {_fmt_s(budget_s)} buys {rounds} round{'s' if rounds != 1 else ''} "
            f"of {n_variants} variants x {duration_s:g} s (about {round_s:.1f} s a round); "
            f"an interval for each needs {need}: give at least "
            f"{_fmt_s(math.ceil(need * round_s))}")
    return Plan(rounds, round_s, budget_s)


@dataclass
class Deadline:
    """The clock's veto: ``allows()`` before each round after the first says
    whether the longest round so far still fits in what is left of the
    budget.  ``clock`` is ``time.monotonic`` unless a test gives another."""

    budget_s: float
    clock: object = time.monotonic
    start: float = field(default=None)
    rounds: list = field(default_factory=list)      # wall time of each finished round

    def __post_init__(self):
        if self.start is None:
            self.start = self.clock()
        self._round_start = self.start

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allows(self) -> bool:
        """Whether a next round fits: the first always does; later ones
        when the longest so far ends inside the budget."""
        if not self.rounds:
            return True
        return self.elapsed() + max(self.rounds) <= self.budget_s

    def begin(self) -> None:
        self._round_start = self.clock()

    def end(self) -> None:
        self.rounds.append(self.clock() - self._round_start)


def run_planned(p: Plan, run_round, deadline: Deadline) -> int:
    """Run up to ``p.rounds`` rounds, ``run_round(r)`` for r = 1, 2, ...,
    stopping early only when the deadline vetoes; returns the rounds run.
    ``run_round`` returns False to stop (an aborted run), anything else to go
    on; its results are not read here."""
    done = 0
    for r in range(1, p.rounds + 1):
        if not deadline.allows():
            break
        deadline.begin()
        go_on = run_round(r)
        deadline.end()
        done = r
        if go_on is False:
            break
    return done


def command_with_rounds(argv: list[str], rounds: int, prog: str = "shmalloc") -> str:
    """The command line ``argv`` (a compare's, without the program) with its
    ``--repeat``/``--budget`` replaced by ``--repeat rounds`` and without
    ``--json PATH``/``--force`` (the file exists now), quoted for a shell:
    the command the +-2 % line prints."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--repeat", "--budget", "--json"):
            skip = True
            continue
        if arg == "--force" or arg.startswith(("--repeat=", "--budget=", "--json=")):
            continue
        out.append(arg)
    return shlex.join([prog, *out, "--repeat", str(rounds)])


def fmt_duration(seconds: float) -> str:
    """A duration for people: '45 s', '1 min 30 s', '2 h 5 min'."""
    seconds = round(seconds)
    if seconds >= 3600:
        h, rest = divmod(seconds, 3600)
        return f"{h} h" + (f" {round(rest / 60)} min" if round(rest / 60) else "")
    return _fmt_s(seconds)


def _fmt_s(seconds: float) -> str:
    """120 -> '2 min', 90 -> '1 min 30 s', 45 -> '45 s'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    return f"{m} min" + (f" {s} s" if s else "")
