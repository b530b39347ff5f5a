"""Runs in the test process that end when the event a test needs has
happened, with ``--duration`` as a generous backstop (never a fixed window
the event has to fit in)."""

from __future__ import annotations

import time

from launcher.experiment.config import RunConfig
from launcher.experiment.run import execute
from shmalloc.layout import REPORT_FIELDS, WC_T_FREED, WORKER_COUNTERS

BACKSTOP_S = 60.0


def elapsed(run) -> float:
    """Seconds since the workers started."""
    return time.monotonic() - run.t_go


def report_count(run, name: str) -> int:
    """A reporting statistic (shmalloc.layout.REPORT_FIELDS) right now."""
    m = run.machine
    return int(m.zs[m.layout.off_report + REPORT_FIELDS.index(name)])


def worker_total(run, name: str) -> int:
    """A worker counter (shmalloc.layout.WORKER_COUNTERS) summed over the workers."""
    m = run.machine
    i = WORKER_COUNTERS.index(name)
    return sum(int(m.zs[m.layout.wstats(c.agent) + i]) for c in run.workers())


def all_freed(run) -> bool:
    """Every worker has done its shrink (hog, phased: freed everything)."""
    m = run.machine
    return all(m.zs[m.layout.wstats(c.agent) + WC_T_FREED] != 0 for c in run.workers())


def host_gave_back(run, share: float = 0.25) -> bool:
    """The host holds less than ``share`` of the most it held in this run."""
    resident = run.timeline["host_resident_bytes"]
    return bool(resident) and resident[-1] < share * max(resident)


def run_until(until, backstop: float = BACKSTOP_S, **flags) -> dict:
    """``shmalloc run`` with ``flags`` (RunConfig fields) in this process,
    ended as at the end of its duration as soon as ``until(run)`` holds;
    fails if it never did within ``backstop`` seconds.  Returns the RUN
    record."""
    cfg = RunConfig(duration=backstop, **flags).resolved()
    seen = []

    def check(run) -> bool:
        if until(run):
            seen.append(elapsed(run))
            return True
        return False

    record = execute(cfg, until=check)
    assert record["outcome"] == "ok", record["abort_reason"]
    assert seen, f"the event never happened within the {backstop:g} s backstop"
    record["event_at_s"] = seen[0]
    return record
