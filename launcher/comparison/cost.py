"""Attributed cost: the worker time a design takes away, from counted events.

Throughput on a 2-core VM is noisy; counts are not.  For every run compare
charges what the design made the workers do, each count times a cost:

(a) ``lock_wait_behind_reporter_ns``: the workers' zone-lock wait (alloc and
    free paths) at acquisitions whose holder, when the worker's first
    ``sem_trywait`` failed, was the reporter or the host scanner
    (``Z_WAIT_BEHIND``, :mod:`shmalloc.lock`).  Measured, not estimated.
(b) ``refault_ns``: refaults (first writes to host pages the host discarded,
    counted by the workers, :func:`shmalloc.hostpage.host_fault`) times the
    cost of one on the run's host pages (``--host-pages``: a 2 MiB refault
    zeroes 2 MiB), measured on this machine by
    :func:`shmalloc.bench.measure_refault` at the start of the compare.
(c) ``hook_ns``: the design's free-path hook calls past its order check
    (``Z_DESIGN_HOOK_CALLS``) times the cost of one call
    (:func:`shmalloc.bench.measure_hooks`), plus the time ``--free-hook-ns``
    spun, as measured by the spin itself (:mod:`shmalloc.freehook`).
(d) ``design_cpu_ns``: the CPU time of the design's own processes (reporter
    and hypervisor stub, from their getrusage at exit), shown apart: on two
    cores it competes with the workers, but not inside their operations.

All of it is counted over the steady window, the one throughput is measured
over (``run["attribution"]``, snapshotted when the window opens and closes;
over the whole run when no window opened).  ``total_pct_of_worker_time`` is
(a) + (b) + (c) over the workers' CPU time in the same window
(``/proc/<pid>/schedstat``, summed over workers; their wall time if that is
missing).  CPU
time, not wall time: on a loaded machine a worker is off its cpu part of the
time, every variant alike, and a cost measured while it ran (a hook spin, a
refault) is a share of the time it ran; against wall time the same cost
would look smaller the busier the machine.  What is not charged: a design's bookkeeping inside the
list primitives (Duyck's boundary, measured below the bench's resolution,
see docs/measuring.md), cache misses its reporter causes, and the wait of a worker
queued behind another worker that waited for the reporter (charged to the
reporter only when the reporter was the holder first seen).
"""

from __future__ import annotations

from shmalloc.bench import HOOK_KINDS, refault_cost_ns

WORKER_CALLERS = ("alloc", "free")
SERVICE_CALLERS = ("reporter", "host")
DESIGN_ROLES = ("reporter", "hypervisor")
COST_KEYS = ("lock_wait_behind_reporter_ns", "refault_ns", "hook_ns")


def attributed_cost(run: dict, unit: dict) -> dict | None:
    """``run["cost"]``: (a)-(d) and the total as a share of worker time;
    None for a run without the counters (an older results file)."""
    a = run.get("attribution")
    if a is None:
        return None
    behind = a["wait_behind_ns"]
    lock = sum(behind[w][h] for w in WORKER_CALLERS for h in SERVICE_CALLERS)
    refault = a["refaults"] * refault_cost_ns(unit["refault"],
                                              run["config"].get("host_pages") or "4k")
    per_call = unit["free_path_hooks"].get(run["config"]["strategy"], 0.0)
    if run["config"]["strategy"] not in HOOK_KINDS:
        per_call = 0.0
    hook = a["design_hook_calls"] * per_call + a["free_hook_ns"]
    cpu = sum(p["cpu_s"] for p in run["noise"]["processes"] if p["role"] in DESIGN_ROLES)
    worker_ns = a.get("worker_cpu_ns") or a["worker_ns"]
    cost = {"lock_wait_behind_reporter_ns": round(lock), "refault_ns": round(refault),
            "hook_ns": round(hook), "design_cpu_ns": round(cpu * 1e9),
            "worker_ns": worker_ns}
    cost["total_pct_of_worker_time"] = (round(100 * (lock + refault + hook) / worker_ns, 4)
                                        if worker_ns else None)
    return cost


def pct(cost: dict, key: str) -> float | None:
    """One part of a run's cost as a share of its worker time, percent."""
    if not cost or not cost.get("worker_ns"):
        return None
    return 100 * cost[key] / cost["worker_ns"]
