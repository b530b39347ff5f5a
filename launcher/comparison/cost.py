"""Attributed cost: the worker time a design takes away, from counted events.

Throughput on a 2-core VM is noisy; counts are not.  For every run compare
charges what the design made the workers do, each count times a cost:

(a) ``lock_wait_behind_reporter_ns``: the workers' zone-lock wait (alloc and
    free paths) at acquisitions whose holder, when the worker's first
    ``sem_trywait`` failed, was the reporter or the host scanner
    (``Z_WAIT_BEHIND``, :mod:`shmalloc.lock`).  Measured, not estimated.
(b) ``refault_ns``: refaults (first writes to host pages the host discarded,
    counted by the workers, :func:`shmalloc.hostpage.host_fault`; a 2 MiB
    refault zeroes 2 MiB) times the cost of one *in this run*: the
    workers time a sample of their first writes on the TSC
    (:func:`shmalloc.workload.write_block_timed`, one block in 64, one in 8
    right after a block that refaulted), and a refault costs the mean time of
    a refaulting write less the mean time of a write to a resident page, both
    under the run's own conditions (the host discarding beside the worker,
    the other worker, the reporter).  Why not one figure for every run: the
    bench's (:func:`shmalloc.bench.measure_refault`, measured once before
    round 1 in a quiet process) was 2.6 us here while bitmap's runs timed 2.5
    to 3.2 us, and a 1-worker page_fault1 comparison charged bitmap 105.8 %
    of its workers' time with it, more than there was.  With fewer than
    :data:`MIN_REFAULT_SAMPLES` refaults timed in the window (a design that
    refaults rarely, a short run) the bench's figure for the run's host pages
    stands in, and the record says which (``refault_source``).
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
#: refaults (and resident writes) a run must have timed for its own figure
MIN_REFAULT_SAMPLES = 32


def refault_cost(attribution: dict, unit: dict,
                 host_pages: str = "4k") -> tuple[float, str, int]:
    """(ns a refault costs, "run" or "bench", refaults timed): the run's own
    figure (:mod:`launcher.experiment.measure`'s ``refault_sample``) when it
    timed enough of both kinds of write, else the bench's for the run's host
    pages (``--host-pages``)."""
    s = attribution.get("refault_sample") or {}
    n = s.get("refaults", 0)
    if n >= MIN_REFAULT_SAMPLES and s.get("resident", 0) >= MIN_REFAULT_SAMPLES:
        return max(s["refault_ns"] - s["resident_ns"], 0.0), "run", n
    return refault_cost_ns(unit["refault"], host_pages), "bench", n


def attributed_cost(run: dict, unit: dict) -> dict | None:
    """``run["cost"]``: (a)-(d) and the total as a share of worker time;
    None for a run without the counters (an older results file)."""
    a = run.get("attribution")
    if a is None:
        return None
    behind = a["wait_behind_ns"]
    lock = sum(behind[w][h] for w in WORKER_CALLERS for h in SERVICE_CALLERS)
    per_refault, source, timed = refault_cost(a, unit, run["config"].get("host_pages") or "4k")
    refault = a["refaults"] * per_refault
    per_call = unit["free_path_hooks"].get(run["config"]["strategy"], 0.0)
    if run["config"]["strategy"] not in HOOK_KINDS:
        per_call = 0.0
    hook = a["design_hook_calls"] * per_call + a["free_hook_ns"]
    cpu = sum(p["cpu_s"] for p in run["noise"]["processes"] if p["role"] in DESIGN_ROLES)
    worker_ns = a.get("worker_cpu_ns") or a["worker_ns"]
    cost = {"lock_wait_behind_reporter_ns": round(lock), "refault_ns": round(refault),
            "refault_ns_each": round(per_refault, 1), "refault_source": source,
            "refaults_timed": timed,
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
