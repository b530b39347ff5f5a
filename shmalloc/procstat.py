"""What the machine's processes cost the host, and how noisy the host was.

Each process of a run (workers, reporter, hypervisor stub) writes its own
figures into its agent's counter slots when it exits
(:func:`record_rusage`): CPU time and context switches from
``getrusage(RUSAGE_SELF)``, which only the process itself can take at its
very end, and CPU migrations from ``se.nr_migrations`` in
``/proc/self/sched`` (present when the kernel has CONFIG_SCHED_DEBUG; -1
when it does not).  The launcher reads the steal time of the whole machine
from ``/proc/stat`` around the run (:func:`cpu_jiffies`, :func:`steal_pct`):
time the hypervisor gave our vCPUs to someone else, which no design caused;
and each live child's time on a cpu and waiting for one, in ns, from
``/proc/<pid>/schedstat`` (:func:`schedstat`).
"""

from __future__ import annotations

import resource

from .layout import WC_CPU_SYS_US, WC_CPU_USER_US, WC_NIVCSW, WC_NR_MIGRATIONS, WC_NVCSW

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice
_STEAL = 7
_SUMMED = 8          # guest time is already counted in user


def nr_migrations(pid: str | int = "self") -> int:
    """``se.nr_migrations`` of a process, or -1 if the kernel does not show it."""
    try:
        with open(f"/proc/{pid}/sched") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    return int(line.split(":")[1])
    except (OSError, ValueError):
        pass
    return -1


def schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a cpu, ns runnable but waiting for one) of a live process from
    ``/proc/<pid>/schedstat``; None if unreadable."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run, delay = f.read().split()[:2]
        return int(run), int(delay)
    except (OSError, ValueError):
        return None


def record_rusage(zs, ws: int) -> None:
    """Write this process's CPU time, context switches and migrations into
    the counter slots at ``ws`` (its agent's ``wstats`` base)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    zs[ws + WC_CPU_USER_US] = int(ru.ru_utime * 1e6)
    zs[ws + WC_CPU_SYS_US] = int(ru.ru_stime * 1e6)
    zs[ws + WC_NVCSW] = ru.ru_nvcsw
    zs[ws + WC_NIVCSW] = ru.ru_nivcsw
    zs[ws + WC_NR_MIGRATIONS] = nr_migrations()


def cpu_jiffies() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (jiffies), [] if unreadable."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return []
    if not first or first[0] != "cpu":
        return []
    return [int(x) for x in first[1:]]


def steal_pct(before: list[int], after: list[int]) -> float | None:
    """Share of all CPU time between two :func:`cpu_jiffies` readings that
    the hypervisor stole, in percent; None if unknown."""
    if len(before) <= _STEAL or len(after) <= _STEAL:
        return None
    total = sum(after[:_SUMMED]) - sum(before[:_SUMMED])
    if total <= 0:
        return None
    return 100.0 * (after[_STEAL] - before[_STEAL]) / total
