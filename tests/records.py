"""RUN records made by hand, with only what the tables read, for tests of
the tables' words and layout without starting a process."""

from __future__ import annotations

import copy

from shmalloc.layout import CALLER_NAMES

GIB = 1 << 30


def _lock(workers_acq: int, reporter_acq: int) -> dict:
    def caller(acq: int) -> dict:
        return {"acquisitions": acq, "contentions": acq // 10, "waittime_total_us": acq / 100,
                "holdtime_total_us": acq / 10, "holdtime_max_us": 5.0}
    by = {name: caller(0) for name in CALLER_NAMES}
    by["alloc"], by["free"] = caller(workers_acq // 2), caller(workers_acq // 2)
    by["reporter"] = caller(reporter_acq)
    return {"name": "zone0->lock", "waittime_total_us": workers_acq / 100, "by_caller": by}


BASE = {
    "config": {"strategy": "none", "callback_mode": None, "memory": GIB, "workload": "phased",
               "workers": 2, "zones": 1, "pcp_batch": 63, "pcp_high": 378, "seed": 1,
               "duration": 6.0, "report_order": 9},
    "outcome": "ok", "abort_reason": None, "part": "give-back", "round": 1, "position": 1,
    "throughput": {"pages_per_sec": 1e7, "ops_per_sec": 1e6, "elapsed_s": 6.0,
                   "steady": {"kind": "steady", "pages_per_sec": 1e7, "ops_per_sec": 1e6}},
    "latency_ns": {"alloc": {"p50": 100, "p99": 500}, "free": {"p99": 400}},
    "locks": [_lock(1000, 0)],
    "memory": {"reported_bytes": 0, "discarded_bytes": 0, "host_resident_bytes_end": GIB // 4,
               "footprint_gib_s": 2.5, "half_returned_s": None, "freed_at_s": 2.4,
               "returned_share_end": 0.0, "free_unreportable_bytes_end": 0},
    "refaults": 0,
    "reporting": {"re_reports": 0, "installs": 0, "cycles": 0, "scans": 0},
    "safety": {"use_after_discard": 0, "double_allocations": 0, "invariant_errors": []},
    "cost": {"total_pct_of_worker_time": 0.0},
}


def run(label: str, strategy: str | None = None, **parts) -> dict:
    """A record labelled ``label`` (its design ``strategy``, else the
    label's); ``parts``: sections whose keys replace the base's, e.g.
    ``memory={"reported_bytes": ...}``."""
    rec = copy.deepcopy(BASE)
    rec["label"] = label
    rec["config"]["strategy"] = strategy or label.split("/")[0]
    for section, values in parts.items():
        if isinstance(values, dict) and isinstance(rec.get(section), dict):
            rec[section].update(values)
        else:
            rec[section] = values
    return rec
