"""The figures a real guest and the model are compared by, computed from
a run's memory timeline alone, so the same functions read either system's
results (``memory.timeline``: ``t_s`` and ``host_resident_bytes``, sampled
every 100 ms or finer).

* :func:`steps`: the drops of host-resident memory after the free, each a
  pass of the reporter as the host sees it;
* :func:`summarize`: per step returned, seconds between steps, the first
  step after the free, half back, resident at the end, what became resident
  again after the free (the refaulted bytes, when what the workers touch
  was discarded), faults after the free (when the timeline has
  ``host_minflt``: QEMU's faults, those of its own code and TCG's translation
  cache included), and with the guest's pass events (a real guest's
  kprobes) the return and duration per pass.
"""

from __future__ import annotations

import statistics

from ..experiment.metrics import half_returned_s

MIN_STEP_BYTES = 16 << 20     # a drop smaller than this between two samples is noise


def steps(timeline: dict, after_s: float, min_bytes: int = MIN_STEP_BYTES) -> list[dict]:
    """Drops of host-resident memory from ``after_s`` on: runs of
    consecutive falling samples whose total is at least ``min_bytes``
    (one pass can straddle a sample), each at the time of its first fall."""
    t, r = timeline["t_s"], timeline["host_resident_bytes"]
    out, run_start, run_bytes = [], None, 0
    for i in range(1, len(t)):
        drop = r[i - 1] - r[i]
        if t[i] > after_s and drop > 0:
            if run_start is None:
                run_start = t[i]
            run_bytes += drop
            continue
        if run_start is not None and run_bytes >= min_bytes:
            out.append({"t_s": round(run_start, 3), "bytes": run_bytes})
        run_start, run_bytes = None, 0
    if run_start is not None and run_bytes >= min_bytes:
        out.append({"t_s": round(run_start, 3), "bytes": run_bytes})
    return out


def _at(timeline: dict, key: str, t_s: float):
    """The last sample of ``key`` at or before ``t_s`` (the first if none)."""
    t, v = timeline["t_s"], timeline[key]
    best = v[0] if v else None
    for ts, x in zip(t, v):
        if ts > t_s:
            break
        best = x
    return best


def _first_after(timeline: dict, key: str, t_s: float):
    for ts, x in zip(timeline["t_s"], timeline[key]):
        if ts >= t_s:
            return x
    return timeline[key][-1] if timeline[key] else None


def _median(xs):
    return round(statistics.median(xs), 4) if xs else None


def summarize(timeline: dict, freed_at: float | None, freed_bytes: int,
              passes: list[dict] | None = None, freeing_at: float | None = None) -> dict:
    """The comparison's figures for one run (see the module docstring).
    ``freed_at``: when the workers had freed ``freed_bytes``; ``freeing_at``:
    when they began (a pass from then on belongs to the free)."""
    t = timeline["t_s"]
    out: dict = {"sample_interval_s": _median([b - a for a, b in zip(t, t[1:])]),
                 "resident_end_bytes": timeline["host_resident_bytes"][-1] if t else None,
                 "freed_at_s": freed_at, "freed_bytes": freed_bytes}
    if freed_at is None or not t:
        return out
    st = steps(timeline, freed_at)
    out["steps"] = st
    out["step_bytes_median"] = _median([s["bytes"] for s in st])
    out["step_interval_s_median"] = _median([b["t_s"] - a["t_s"] for a, b in zip(st, st[1:])])
    out["first_step_after_free_s"] = round(st[0]["t_s"] - freed_at, 3) if st else None
    out["half_back_s"] = half_returned_s(timeline, freed_at, freed_bytes)
    r = timeline["host_resident_bytes"]
    out["resident_growth_after_free_bytes"] = sum(
        max(0, b - a) for ta, a, b in zip(t, r, r[1:]) if ta >= freed_at)
    if "host_minflt" in timeline:
        out["host_minflt_after_free"] = (timeline["host_minflt"][-1]
                                         - _at(timeline, "host_minflt", freed_at))
        out["host_majflt_after_free"] = (timeline["host_majflt"][-1]
                                         - _at(timeline, "host_majflt", freed_at))
    if passes is not None:
        since = freed_at if freeing_at is None else freeing_at
        after = [p for p in passes if p["start_s"] >= since]
        for p in after:
            before = _at(timeline, "host_resident_bytes", p["start_s"])
            later = _first_after(timeline, "host_resident_bytes", p["end_s"])
            p["host_returned_bytes"] = before - later
        returning = [p for p in after if p["reported_bytes"]]
        out["passes_after_free"] = len(after)
        out["pass_returned_bytes_median"] = _median([p["host_returned_bytes"]
                                                     for p in returning])
        out["pass_reported_bytes_median"] = _median([p["reported_bytes"] for p in returning])
        out["pass_interval_s_median"] = _median([b["start_s"] - a["start_s"]
                                                 for a, b in zip(after, after[1:])])
        out["pass_duration_s_median"] = _median([p["duration_s"] for p in after])
        out["pass_duration_s_max"] = max((p["duration_s"] for p in after), default=None)
        out["first_pass_after_free_s"] = (round(after[0]["start_s"] - freed_at, 3)
                                          if after else None)
    return out
