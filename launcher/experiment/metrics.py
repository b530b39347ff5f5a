"""The numbers a run is summarised by, computed from what it sampled:
latency percentiles from the log-bucketed histograms, the memory footprint,
how fast freed memory came back, fragmentation's share of free memory."""

from __future__ import annotations

import math
import os

import numpy as np

from shmalloc import snapshot
from shmalloc.layout import MIGRATE_MOVABLE
from shmalloc.machine import Machine

GIB = 1 << 30


def percentiles(hist: np.ndarray, exact_max: int) -> dict:
    """p50/p99/p99.9 of a log-bucketed histogram (each reported as the upper
    edge of its bucket, so a true value is at most that), and the exact max."""
    count = int(hist.sum())
    out = {"count": count}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p99_9", 0.999)):
        if count == 0:
            out[name] = 0
            continue
        rank = math.ceil(q * count)
        idx = int(np.searchsorted(np.cumsum(hist), rank))
        out[name] = min(bucket_upper(idx), exact_max) if exact_max else bucket_upper(idx)
    out["max"] = int(exact_max)
    # the histogram itself, [bucket upper edge in ns, calls] for non-empty buckets
    out["histogram"] = [[bucket_upper(int(i)), int(hist[i])] for i in np.flatnonzero(hist)]
    return out


def launcher_rss_bytes() -> int:
    """This process's resident set (the soak test watches it stay flat)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def free_below_order(machine: Machine, order: int) -> int:
    """Free pages in blocks below ``order``: what no design reporting at that
    order can give back (fragmentation's cost)."""
    return sum(snapshot.nr_free(machine, z, o, MIGRATE_MOVABLE) << o
               for z in range(machine.nr_zones) for o in range(min(order, machine.max_order)))


def footprint_gib_s(timeline: dict) -> float:
    """Host-resident memory integrated over the run (trapezoids), GiB x s:
    the measure the HyperAlloc paper compares designs by."""
    t, r = timeline["t_s"], timeline["host_resident_bytes"]
    area = sum((t[i + 1] - t[i]) * (r[i + 1] + r[i]) / 2 for i in range(len(t) - 1))
    return area / GIB


def _resident_at_shrink(timeline: dict, freed_at: float | None,
                        freed_bytes: int) -> float | None:
    """Host-resident memory at the last sample before the workers' shrink;
    None without a shrink (or a sample before it)."""
    if freed_at is None or freed_bytes <= 0:
        return None
    before = [x for x, ts in zip(timeline["host_resident_bytes"], timeline["t_s"])
              if ts <= freed_at]
    return before[-1] if before else None


def half_returned_s(timeline: dict, freed_at: float | None, freed_bytes: int) -> float | None:
    """Seconds from the moment the workers had freed their memory until the
    host held half of it less than then; None if that never happened."""
    at_shrink = _resident_at_shrink(timeline, freed_at, freed_bytes)
    if at_shrink is None:
        return None
    target = at_shrink - freed_bytes / 2
    for x, ts in zip(timeline["host_resident_bytes"], timeline["t_s"]):
        if ts > freed_at and x <= target:
            return round(ts - freed_at, 3)
    return None


def returned_share(timeline: dict, freed_at: float | None, freed_bytes: int) -> float | None:
    """The share of what the workers freed that the host no longer held at
    the end of the run (host-resident memory when they had freed it, less at
    the end, over what they freed; 0 when it grew), so that a "never" of
    :func:`half_returned_s` says how far it got; None without a shrink."""
    at_shrink = _resident_at_shrink(timeline, freed_at, freed_bytes)
    if at_shrink is None:
        return None
    end = timeline["host_resident_bytes"][-1]
    return round(max(0.0, min(1.0, (at_shrink - end) / freed_bytes)), 4)


def bucket_upper(idx: int) -> int:
    """Largest value in histogram bucket ``idx`` (see workload.hist_index)."""
    if idx < 4:
        return idx
    msb, sub = idx >> 2, idx & 3
    return ((5 + sub) << (msb - 2)) - 1
