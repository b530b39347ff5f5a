"""A real-guest run as a RUN record of the results file (``"system":
"qemu"``, results format version 3: see :mod:`launcher.results`).

Times are seconds on the host's clock from the workload's start (the
guest's ``S`` line, mapped by :class:`~launcher.vm.channel.ClockMap`), like
a model run's ``t_s`` from its start.  ``memory.timeline`` has one entry per
host sample, with the model's keys where they mean the same:

``host_resident_bytes``  the guest-RAM mapping's Rss (the model's guest memory
                         object's resident bytes)
``free_bytes``           the guest's MemFree, as last sampled
``reported_bytes``       pages the guest kernel marks Reported (kpageflags),
                         as last scanned
``free_unreportable_bytes`` free memory in blocks below the report order
                         (/proc/buddyinfo)
``pcp_bytes``            free pages on the guest's per-cpu lists (not in
                         MemFree, not reportable)

and the host's own: ``qemu_rss_bytes``, ``anon_huge_bytes`` (the guest-RAM
mapping's AnonHugePages), ``host_minflt``, ``host_majflt``, ``qemu_cpu_s``.

``reporting.passes``: each pass of the guest's page_reporting_process, from
its kprobes: ``start_s``, ``end_s``, ``duration_s`` (the guest's clock:
under TCG, emulated), ``reports`` and ``reported_bytes`` (the scatterlist
lengths of each virtballoon_free_page_report call), ``report_s`` (inside
the report calls: the host's discard), ``requested_s`` (the free path's
first __page_reporting_notify since the previous pass) and ``notifies``
(how many since the previous pass).  ``memory.freeing_at_s``: when the
first worker began its free (the model's key).  ``figures``: see
:mod:`.figures`.
"""

from __future__ import annotations

import bisect

from ..experiment.metrics import footprint_gib_s
from .channel import report_bytes
from .figures import guest_figures

PAGE = 4096


def _series(points: list[tuple[float, dict]], t_s: float):
    """The last of time-sorted ``points`` at or before ``t_s``, or None."""
    i = bisect.bisect_right([p[0] for p in points], t_s)
    return points[i - 1][1] if i else None


def _guest_points(run, tag: str, t0: float) -> list[tuple[float, dict]]:
    return sorted(((round(run.clock.to_host(f["_g"]) - t0, 4), f)
                   for f in run.lines[tag] if "_g" in f), key=lambda p: p[0])


def _buddy(fields: dict) -> list[int]:
    return [int(x) for x in fields.get("buddy", "").split(",") if x]


def worker_faults(run, t0: float) -> dict | None:
    """The workers' page faults so far at each guest sample from the last
    one before the workload's start to its end (the G lines' ``minflt``:
    the workers' /proc/PID/stat), the guest's clock on the host's; None from
    a guest program that did not count them."""
    end = run.marks.get("x", float("inf")) - t0
    pts = [(t, int(f["minflt"])) for t, f in _guest_points(run, "G", t0)
           if "minflt" in f and t <= end]
    start = max((i for i, (t, _) in enumerate(pts) if t <= 0), default=0)
    pts = pts[start:]
    if not pts:
        return None
    return {"t_s": [t for t, _ in pts], "faults": [k for _, k in pts]}


def requests(run, t0: float) -> list[float]:
    """The free path's first request (__page_reporting_notify) after each
    pass, and the first of all: the calls that can move IDLE to REQUESTED."""
    return [t for t, f in _guest_points(run, "K", t0) if f.get("ev") == "notify"]


def passes(run, t0: float) -> list[dict]:
    """The guest's reporting passes from its kprobe events; ``requested_s``:
    the first request since the previous pass ended, if there was one (the
    pass may still have been the previous one's reschedule)."""
    out, cur, asked = [], None, None
    for t, f in _guest_points(run, "K", t0):
        ev = f.get("ev")
        if ev == "notify":
            asked = t if asked is None else asked
        elif ev == "pstart":
            cur = {"start_s": t, "requested_s": asked, "reports": 0, "reported_bytes": 0,
                   "report_s": 0.0}
            asked = None
        elif cur is None:
            continue
        elif ev == "rep":
            cur["reports"] += 1
            cur["reported_bytes"] += report_bytes(f)
            cur["_rep"] = t
        elif ev == "repdone" and "_rep" in cur:
            cur["report_s"] += t - cur.pop("_rep")
        elif ev == "pend":
            cur.pop("_rep", None)
            cur.update(end_s=t, duration_s=round(t - cur["start_s"], 6),
                       report_s=round(cur["report_s"], 6), notifies=int(f.get("notifies", 0)))
            out.append(cur)
            cur = None
    return out


def timeline(run, t0: float) -> dict:
    cfg = run.cfg
    g = _guest_points(run, "G", t0)
    p = _guest_points(run, "P", t0)
    tl = {k: [] for k in ("t_s", "host_resident_bytes", "free_bytes", "reported_bytes",
                          "free_unreportable_bytes", "pcp_bytes", "qemu_rss_bytes",
                          "anon_huge_bytes",
                          "host_minflt", "host_majflt", "qemu_cpu_s")}
    end = run.marks.get("x", float("inf")) - t0
    for host_s, s in run.host:
        t = round(host_s - t0, 3)
        if t < 0 or t > end:
            continue
        gs, ps = _series(g, t), _series(p, t)
        buddy = _buddy(gs) if gs else []
        tl["t_s"].append(t)
        tl["host_resident_bytes"].append(s["guest_rss_bytes"])
        tl["free_bytes"].append(int(gs["memfree_kb"]) * 1024 if gs else None)
        tl["reported_bytes"].append(int(ps["reported_pages"]) * PAGE if ps and "reported_pages"
                                    in ps else None)
        tl["free_unreportable_bytes"].append(
            sum(n << o for o, n in enumerate(buddy[:cfg.report_order])) * PAGE if gs else None)
        tl["pcp_bytes"].append(int(gs["pcp"]) * PAGE if gs and "pcp" in gs else None)
        tl["qemu_rss_bytes"].append(s["rss_bytes"])
        tl["anon_huge_bytes"].append(s["anon_huge_bytes"])
        tl["host_minflt"].append(s["minflt"])
        tl["host_majflt"].append(s["majflt"])
        tl["qemu_cpu_s"].append(round(s["cpu_s"], 2))
    return tl


def _events(run, t0: float) -> list[dict]:
    return [{"t_s": t, "worker": int(f["w"]), "event": f["ev"], "bytes": int(f["bytes"])}
            for t, f in _guest_points(run, "E", t0)]


def _scans(run, t0: float) -> list[dict]:
    out = []
    for t, f in _guest_points(run, "P", t0):
        if "reported_pages" not in f:
            continue
        out.append({"t_s": t, "duration_s": int(f["dur_ns"]) / 1e9,
                    "free_bytes": int(f["free_pages"]) * PAGE,
                    "reported_bytes": int(f["reported_pages"]) * PAGE,
                    "reported_blocks": [int(x) for x in f["reported_blocks"].split(",")]})
    return out


def _start_state(run, t0: float, all_passes: list[dict], scans: list[dict]) -> dict:
    before = [p for p in all_passes if p["start_s"] < 0]
    settle = run.lines["W"]
    at_start = next((s for s in scans if s["t_s"] >= -5), None)
    return {"start": run.cfg.start,
            # idle as seen by the kprobes: without them the guest only waited 3 s
            "idle": (run.cfg.start == "idle" and run.hello.get("kprobes") == "1"
                     and not any("settle_timeout" in w for w in settle)),
            "waited_s": round(t0 - run.marks["hello"], 3) if "hello" in run.marks else None,
            "passes_before_start": len(before),
            "last_pass_before_start_s": before[-1]["end_s"] if before else None,
            "free_bytes": at_start["free_bytes"] if at_start else None,
            "reported_bytes": at_start["reported_bytes"] if at_start else None}


def build(run, versions: dict, accel: dict, contents: dict) -> dict:
    cfg = run.cfg
    start = run.lines["S"][0] if run.lines["S"] else None
    t0 = run.clock.to_host(start["_g"]) if start and "_g" in start else run.marks["start"]
    tl = timeline(run, t0)
    events = _events(run, t0)
    all_passes = passes(run, t0)
    scans = _scans(run, t0)
    freed = [e for e in events if e["event"] == "freed"]
    first_freed: dict[int, dict] = {}
    for e in freed:
        first_freed.setdefault(e["worker"], e)
    freed_at = max((e["t_s"] for e in first_freed.values()), default=None)
    released = sum(e["bytes"] for e in first_freed.values())
    freeing = [e["t_s"] for e in events if e["event"] == "freeing"]
    resident = tl["host_resident_bytes"] or [0]
    run_passes = [p for p in all_passes if p["start_s"] >= 0]
    h = run.hello
    memory = {
        "guest_bytes": cfg.memory,
        "host_resident_bytes_start": resident[0],
        "host_resident_bytes_end": resident[-1],
        "host_resident_bytes_min": min(resident),
        "host_resident_bytes_max": max(resident),
        "free_bytes_end": tl["free_bytes"][-1] if tl["free_bytes"] else None,
        "free_unreportable_bytes_end": (tl["free_unreportable_bytes"][-1]
                                        if tl["free_unreportable_bytes"] else None),
        "reported_bytes": sum(p["reported_bytes"] for p in run_passes),
        "footprint_gib_s": round(footprint_gib_s(tl), 4),
        "freed_at_s": freed_at,
        "released_bytes": released,
        "half_returned_s": None,
        "anon_huge_share_at_max": None,
        "timeline": tl,
    }
    if freeing:
        memory["freeing_at_s"] = min(freeing)
    if tl["t_s"]:
        i = max(range(len(resident)), key=resident.__getitem__)
        if resident[i]:
            memory["anon_huge_share_at_max"] = round(tl["anon_huge_bytes"][i] / resident[i], 4)
    x = run.lines["X"][-1] if run.lines["X"] else {}
    canaries = {k: sum(e["bytes"] for e in events if e["event"] == k)
                for k in ("zero_canary", "bad_canary")}
    rec = {
        "system": "qemu",
        "label": "real guest",
        "config": cfg.record(),
        "outcome": "ok",
        "abort_reason": None,
        "stopped_at_s": round(run.marks.get("x", run.marks["end"]) - t0, 3),
        "guest": {
            "kernel_release": h.get("kernel"),
            "report_order_effective": int(h["order"]) if h.get("order", "").isdigit() else None,
            "memtotal_bytes": int(h.get("memtotal_kb", 0)) * 1024,
            "cpus": int(h.get("cpus", 0)),
            "thp_enabled": h.get("thp", "").replace("_", " "),
            "kprobes": h.get("kprobes") == "1",
            "cmdline": run.qemu_argv[run.qemu_argv.index("-append") + 1],
            "modules": contents["modules"],
            "start_state": _start_state(run, t0, all_passes, scans),
            "min_free_bytes": int(h.get("min_free_kb", 0)) * 1024,
            "pcp_high_bytes": max((int(g.get("pcp_high", 0)) * PAGE for g in run.lines["G"]),
                                  default=None),
            "minor_faults": int(x.get("guest_minflt", 0)),
            "worker_faults": worker_faults(run, t0),
            "major_faults": int(x.get("guest_majflt", 0)),
            "clock": run.clock.quality(),
        },
        "qemu": {**versions, "accel": accel["accel"], "accel_chosen_by": accel["chosen_by"],
                 "argv": run.qemu_argv, "exit_status": run.exit_status},
        "memory": memory,
        "reporting": {"passes": run_passes, "passes_count": len(run_passes),
                      "reports": sum(p["reports"] for p in run_passes),
                      "reported_bytes": memory["reported_bytes"]},
        "host_faults": {"minflt": (tl["host_minflt"][-1] - tl["host_minflt"][0]
                                   if tl["host_minflt"] else None),
                        "majflt": (tl["host_majflt"][-1] - tl["host_majflt"][0]
                                   if tl["host_majflt"] else None)},
        "guest_scans": scans,
        "events": events,
        "safety": {"use_after_discard": canaries["zero_canary"],
                   "double_allocations": canaries["bad_canary"]},
        "timing": _timing(run),
    }
    rec["figures"] = guest_figures(rec, run_passes, requests(run, t0))
    memory["half_returned_s"] = rec["figures"]["half_back_s"]
    return rec


def _timing(run) -> dict:
    m = run.marks
    out = {"build_s": m["built"] - m["begin"], "total_s": m["end"] - m["begin"]}
    if "accel" in m:                  # the KVM probe, when it ran; QEMU's and dpkg's versions
        out["accel_s"] = m["accel"] - m["built"]
    if "hello" in m:
        out["boot_s"] = m["hello"] - m.get("accel", m["built"])
    if "start" in m and "hello" in m:
        out["settle_s"] = m["start"] - m["hello"]
    if "x" in m and "start" in m:
        out["measured_s"] = m["x"] - m["start"]
        out["poweroff_s"] = m["end"] - m["x"]
    return {k: round(v, 3) for k, v in out.items()}
