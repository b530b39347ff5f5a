"""What a run measures beyond its counters' totals: the steady window, the
counts cost is attributed from, the noise, and where the wall time went.

:class:`launcher.experiment.run.Run` takes the readings (a :func:`snapshot` when the
steady window opens and when the stop flag is set, ``/proc/stat`` at the
start and the stop, each child's ``/proc/<pid>/schedstat`` at the stop, the
time of each phase); the functions here turn them into the RUN record's
``throughput.steady``, ``attribution``, ``noise`` and ``timing``.

The steady window opens once every worker has begun and written its
working set once.  Before that the workers mostly take the guest's
first-touch page faults (tmpfs allocating and zeroing each page), which
every variant pays alike: on this 2-vCPU VM they took the first 0.1-0.3 s of
a 1-worker page_fault1 run and 0.4-0.6 s with 2 workers on a loaded machine,
a third of a 1 s run or more.  will-it-scale discards its first five
one-second samples instead; a fixed warm-up that long would leave nothing of
a 1 s run, and one short enough for 1 s runs would not cover the faults when
the machine is slow, so the window opens on the event itself.  It closes
when the launcher sets the stop flag.
"""

from __future__ import annotations

import os
import resource

from shmalloc import procstat
from shmalloc.layout import (
    CALLER_NAMES,
    NR_CALLERS,
    REFAULT_SAMPLE_COUNTERS,
    RUSAGE_COUNTERS,
    WC_OPS,
    WC_PAGES_ALLOCATED,
    WC_REFAULTS,
    WC_T_START,
    WORKER_COUNTERS,
    Z_DESIGN_HOOK_CALLS,
    Z_FREE_HOOK_CALLS,
    Z_FREE_HOOK_TICKS,
    Z_WAIT_BEHIND,
)
from shmalloc.lock import now_ticks


def zone_attribution(m) -> dict:
    """The zones' attribution counters, summed over zones, in ticks: wait by
    [waiter][holder] class, --free-hook-ns spins and their ticks, design
    hook calls (see :mod:`shmalloc.lock`, :mod:`shmalloc.freehook`)."""
    behind = [[0] * NR_CALLERS for _ in range(NR_CALLERS)]
    out = {"free_hook_ticks": 0, "free_hook_calls": 0, "design_hook_calls": 0}
    for z in range(m.nr_zones):
        zb = m.layout.zone(z)
        for w in range(NR_CALLERS):
            for h in range(NR_CALLERS):
                behind[w][h] += int(m.zs[zb + Z_WAIT_BEHIND + w * NR_CALLERS + h])
        out["free_hook_ticks"] += int(m.zs[zb + Z_FREE_HOOK_TICKS])
        out["free_hook_calls"] += int(m.zs[zb + Z_FREE_HOOK_CALLS])
        out["design_hook_calls"] += int(m.zs[zb + Z_DESIGN_HOOK_CALLS])
    out["wait_behind_ticks"] = behind
    return out


def snapshot(m, workers: list) -> dict:
    """The counters the steady window is measured between, read now:
    per worker pages, ops, refaults and on-cpu time (/proc/<pid>/schedstat,
    ns), and the zones' attribution counters.  ``workers``: (agent, pid)."""
    bases = [m.layout.wstats(agent) for agent, _ in workers]
    snap = {"ticks": int(now_ticks())}
    for key, slot in (("pages", WC_PAGES_ALLOCATED), ("ops", WC_OPS), ("refaults", WC_REFAULTS)):
        snap[key] = [int(m.zs[b + slot]) for b in bases]
    snap["refault_sample"] = refault_sample(m, [agent for agent, _ in workers])
    sched = [procstat.schedstat(pid) for _, pid in workers]
    snap["cpu_ns"] = None if None in sched else [x[0] for x in sched]
    snap["zones"] = zone_attribution(m)
    return snap


def refault_sample(m, agents: list) -> dict:
    """The workers' refault-cost sample counters
    (:func:`shmalloc.workload.write_block_timed`), summed over ``agents``."""
    return {k: sum(int(m.zs[m.layout.wstats(a) + WORKER_COUNTERS.index(k)]) for a in agents)
            for k in REFAULT_SAMPLE_COUNTERS}


def refault_timing(sample: dict, tps: int) -> dict:
    """Sample counters -> the record's ``refault_sample``: how many first
    writes were timed, refaulting and resident, their mean in ns, and the
    writes left out as preempted."""
    out = {"refaults": sample["sample_refaults"], "resident": sample["sample_resident"],
           "dropped": sample["sample_dropped"]}
    for key, ticks, n in (("refault_ns", "sample_refault_ticks", "sample_refaults"),
                          ("resident_ns", "sample_resident_ticks", "sample_resident")):
        out[key] = round(sample[ticks] * 1e9 / tps / sample[n], 1) if sample[n] else None
    return out


def window_opens(m, workers: list, warm_pages: int) -> dict | None:
    """A snapshot if the steady window opens now (every worker has begun
    and allocated ``warm_pages`` pages), else None."""
    if any(int(m.zs[m.layout.wstats(agent) + WC_T_START]) == 0 for agent, _ in workers):
        return None
    snap = snapshot(m, workers)
    return snap if all(p >= warm_pages for p in snap["pages"]) else None


def _opened(t0, t1) -> bool:
    return t0 is not None and t1 is not None and t1["ticks"] > t0["ticks"]


def steady_window(t0: dict | None, t1: dict | None, elapsed: float, total: dict, tps: int,
                  starts: list) -> dict:
    """Throughput between the window's ends; the whole run's figures, said
    so, when the window never opened (an --ops run, a hog, an aborted run, a
    run too short to warm up)."""
    if not _opened(t0, t1):
        return {"kind": "whole run", "start_s": 0.0, "elapsed_s": round(elapsed, 4),
                "pages": total["pages_allocated"], "ops": total["ops"],
                "pages_per_sec": round(total["pages_allocated"] / elapsed, 1),
                "ops_per_sec": round(total["ops"] / elapsed, 1)}
    span = (t1["ticks"] - t0["ticks"]) / tps
    pages = sum(t1["pages"]) - sum(t0["pages"])
    ops = sum(t1["ops"]) - sum(t0["ops"])
    first = min(starts) if starts else t0["ticks"]
    return {"kind": "steady", "start_s": round((t0["ticks"] - first) / tps, 4),
            "elapsed_s": round(span, 4), "pages": pages, "ops": ops,
            "pages_per_sec": round(pages / span, 1), "ops_per_sec": round(ops / span, 1)}


def attribution(m, t0: dict | None, t1: dict | None, per_worker: list[dict],
                total: dict) -> dict:
    """The counts compare attributes cost from (:mod:`launcher.comparison.cost`), over
    the steady window when it opened, else over the whole run; ``whole_run``
    keeps the latter in either case."""
    tps = m.ticks_per_sec
    whole = zone_attribution(m)
    whole.update(refaults=total["refaults"], frees=total["frees"],
                 refault_sample=refault_timing({k: total[k] for k in REFAULT_SAMPLE_COUNTERS},
                                               tps),
                 worker_ns=round(sum((w["t_end"] - w["t_start"]) * 1e9 / tps
                                     for w in per_worker if w["t_end"] > w["t_start"])),
                 worker_cpu_ns=round(sum((w["cpu_user_us"] + w["cpu_sys_us"]) * 1e3
                                         for w in per_worker)))
    if not _opened(t0, t1):
        out = {"window": "whole run", **whole}
    else:
        z0, z1 = t0["zones"], t1["zones"]
        out = {"window": "steady",
               "wait_behind_ticks": [[b - a for a, b in zip(r0, r1)]
                                     for r0, r1 in zip(z0["wait_behind_ticks"],
                                                       z1["wait_behind_ticks"])],
               **{k: z1[k] - z0[k] for k in ("free_hook_ticks", "free_hook_calls",
                                             "design_hook_calls")},
               "refaults": sum(t1["refaults"]) - sum(t0["refaults"]),
               "refault_sample": refault_timing({k: t1["refault_sample"][k]
                                                 - t0["refault_sample"][k]
                                                 for k in REFAULT_SAMPLE_COUNTERS}, tps),
               "worker_ns": round((t1["ticks"] - t0["ticks"]) * 1e9 / tps * len(per_worker)),
               "worker_cpu_ns": (sum(t1["cpu_ns"]) - sum(t0["cpu_ns"])
                                 if t0["cpu_ns"] and t1["cpu_ns"] else 0)}
    out["whole_run"] = whole
    for rec in (out, whole):                    # ticks -> ns, by caller name
        ticks = rec.pop("wait_behind_ticks")
        rec["wait_behind_ns"] = {w: {h: round(ticks[wi][hi] * 1e9 / tps)
                                     for hi, h in enumerate(CALLER_NAMES)}
                                 for wi, w in enumerate(CALLER_NAMES)}
        rec["free_hook_ns"] = round(rec.pop("free_hook_ticks") * 1e9 / tps)
    return out


def _process(name: str, role: str, pid: int, vals: dict, sched) -> dict:
    """One process's noise figures; ``sched``: its (on-cpu, run-queue wait)
    ns from /proc/<pid>/schedstat at the stop, if read."""
    return {"name": name, "role": role, "pid": pid,
            "run_delay_s": None if sched is None else round(sched[1] / 1e9, 4),
            "cpu_s": round((vals["cpu_user_us"] + vals["cpu_sys_us"]) / 1e6, 4),
            "cpu_user_s": round(vals["cpu_user_us"] / 1e6, 4),
            "cpu_sys_s": round(vals["cpu_sys_us"] / 1e6, 4),
            "voluntary_switches": vals["nvcsw"], "involuntary_switches": vals["nivcsw"],
            "migrations": None if vals["nr_migrations"] < 0 else vals["nr_migrations"]}


def noise(m, children: list, jiffies: list, sched_at_stop: dict, rusage0) -> dict:
    """Steal time over the run and what every process cost (its own
    getrusage at exit, :mod:`shmalloc.procstat`; the launcher's over the
    run): the figures that say how far a run can be trusted.  ``children``:
    (name, role, agent, pid)."""
    steal = procstat.steal_pct(jiffies[0], jiffies[1]) if len(jiffies) == 2 else None
    procs = []
    for name, role, agent, pid in children:
        ws = m.layout.wstats(agent)
        vals = {k: int(m.zs[ws + WORKER_COUNTERS.index(k)]) for k in RUSAGE_COUNTERS}
        procs.append(_process(name, role, pid, vals, sched_at_stop.get(pid)))
    if rusage0 is not None:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        procs.append(_process("launcher", "launcher", os.getpid(), {
            "cpu_user_us": int((r1.ru_utime - rusage0.ru_utime) * 1e6),
            "cpu_sys_us": int((r1.ru_stime - rusage0.ru_stime) * 1e6),
            "nvcsw": r1.ru_nvcsw - rusage0.ru_nvcsw, "nivcsw": r1.ru_nivcsw - rusage0.ru_nivcsw,
            "nr_migrations": -1}, None))
    return {"steal_pct": None if steal is None else round(steal, 3), "processes": procs}


def timing(marks: dict, t_go: float, t_stop: float, end: float) -> dict:
    """Where the wall time of a run went, seconds.  ``fixed_s`` is what a
    run costs beyond its --duration: creating the machine and the queues,
    forking and binding the children, stopping them, checking and collecting,
    tearing down.  Compiling the kernels comes first and is ``compile_s``,
    apart (:mod:`launcher.experiment.compile`; compare, sweep and run do it before
    their first run, so within a run it is only a check that they are
    loaded)."""
    compiled = marks.get("compiled", end)
    created = marks.get("created", end)
    out = {"compile_s": compiled - marks["begin"], "create_s": created - compiled}
    if t_go:
        out["start_s"] = t_go - created
        out["measured_s"] = (t_stop or end) - t_go
        out["stop_s"] = marks.get("stopped", end) - (t_stop or end)
        out["collect_teardown_s"] = end - marks.get("stopped", end)
    out["total_s"] = end - marks["begin"]
    out["fixed_s"] = out["total_s"] - out["compile_s"] - out.get("measured_s", 0.0)
    return {k: round(v, 4) for k, v in out.items()}
