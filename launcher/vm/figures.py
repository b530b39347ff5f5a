"""A real guest's figures: those of any run's timeline
(:func:`launcher.comparison.realguest.figures`: steps, half back, resident
at the end, faults and memory faulted back after the free), and those only
a real guest's kprobes give (:func:`pass_figures`): per pass, what the guest
reported and what the host got back, how far apart passes started, how long
each took on the guest's clock, and when the free path's request came."""

from __future__ import annotations

import statistics

from ..comparison.realguest import figures as timeline_figures


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


def pass_figures(timeline: dict, passes: list[dict], requests: list[float],
                 freed_at: float | None, freeing_at: float | None) -> dict:
    """The passes from the start of the free on (each gets
    ``host_returned_bytes``: host-resident memory at its start less the first
    sample after its end), and the free path's first request in that time."""
    if freed_at is None or not timeline["t_s"]:
        return {}
    since = freed_at if freeing_at is None else freeing_at
    after = [p for p in passes if p["start_s"] >= since]
    for p in after:
        p["host_returned_bytes"] = (_at(timeline, "host_resident_bytes", p["start_s"])
                                    - _first_after(timeline, "host_resident_bytes", p["end_s"]))
    returning = [p for p in after if p["reported_bytes"]]
    out = {"passes_after_free": len(after),
           "pass_returned_bytes_median": _median([p["host_returned_bytes"] for p in returning]),
           "pass_reported_bytes_median": _median([p["reported_bytes"] for p in returning]),
           "pass_interval_s_median": _median([b["start_s"] - a["start_s"]
                                              for a, b in zip(after, after[1:])]),
           "pass_duration_s_median": _median([p["duration_s"] for p in after]),
           "pass_duration_s_max": max((p["duration_s"] for p in after), default=None),
           "first_pass_after_free_s": (round(after[0]["start_s"] - freed_at, 3)
                                       if after else None)}
    asked = [t for t in requests if t >= since]
    out["first_request_after_free_s"] = round(asked[0] - freed_at, 4) if asked else None
    later = [p for p in after if asked and p["start_s"] >= asked[0]]
    out["first_pass_after_request_s"] = (round(later[0]["start_s"] - asked[0], 4)
                                         if later else None)
    return out


def guest_figures(run: dict, passes: list[dict], requests: list[float]) -> dict:
    """Every figure of a real guest's RUN record (``run`` without its
    ``figures`` yet)."""
    mem = run["memory"]
    freeing = [e["t_s"] for e in run.get("events", []) if e.get("event") == "freeing"]
    out = timeline_figures(run)
    out.update(pass_figures(mem["timeline"], passes, requests, mem.get("freed_at_s"),
                            min(freeing) if freeing else None))
    return out
