"""``shmalloc compare``: the same workload, seed and flags under ``none`` and
each design, one after another, then one side-by-side table.

It answers the question Michal Hocko asked of every 2019 proposal ("How does
this compare to it?") with measurements: what a design costs the allocator
(throughput against ``none``, allocation latency, zone-lock acquisitions,
contentions, wait and hold time split between the workers and the reporter)
and what it gives back (bytes reported and discarded, how fast freed memory
returned to the host, the memory footprint, refaults, re-reports), and
whether it is safe (use-after-discard, invariants).  An unsafe row is marked
so nobody can miss it.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from . import designs
from .run import RunConfig, execute
from .summary import describe, fmt_bytes

#: the default line-up: every design, callback in both modes
DEFAULT_LINEUP = ("none", "mainline", "boundary", "callback/hint", "callback/discard",
                  "isolate", "bitmap", "hostscan")
#: the built-in default experiment (``shmalloc compare`` with no flags)
DEFAULTS = dict(workload="phased", duration=10.0)

WORKER_CALLERS = ("alloc", "free")
SERVICE_CALLERS = ("reporter", "host")


def parse_lineup(text: str) -> list[str]:
    """'none,mainline,callback/discard' -> items, validated."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no designs given")
    for item in items:
        name, _, mode = item.partition("/")
        if name not in designs.DESIGNS:
            raise ValueError(f"unknown design {name!r}; choose from {', '.join(designs.names())}")
        if mode and (name != "callback" or mode not in ("hint", "discard")):
            raise ValueError(f"{item!r}: only callback takes a mode (callback/hint, "
                             "callback/discard)")
    if len(set(items)) != len(items):
        raise ValueError("a design is listed twice")
    return items


def config_for(base: RunConfig, item: str) -> RunConfig:
    name, _, mode = item.partition("/")
    cfg = replace(base, strategy=name, delay=None, capacity=None)
    if mode:
        cfg = replace(cfg, callback_mode=mode)
    return cfg.resolved()


def run_lineup(base: RunConfig, items: list[str], progress: bool = False) -> list[dict]:
    """Run every item in turn; returns the RUN records (each with ``label``).
    Stops at the first aborted run (its record is the last one)."""
    runs = []
    for i, item in enumerate(items, 1):
        cfg = config_for(base, item)
        label = f"[{i}/{len(items)}] {item:<17} "
        run = execute(cfg, progress=progress, label=label)
        run["label"] = item
        runs.append(run)
        if progress:
            sys.stderr.write(f"{label}{run['outcome']}\n")
        if run["outcome"] != "ok":
            break
    return runs


def _split(lock: dict, key: str, callers, agg) -> float:
    return agg(lock["by_caller"][c][key] for c in callers)


def lock_split(run: dict) -> dict:
    """Workers' and reporter's share of the zone locks, over all zones."""
    out = {}
    for who, callers in (("workers", WORKER_CALLERS), ("reporter", SERVICE_CALLERS)):
        locks = run["locks"]
        out[who] = {
            "acquisitions": sum(_split(lk, "acquisitions", callers, sum) for lk in locks),
            "contentions": sum(_split(lk, "contentions", callers, sum) for lk in locks),
            "wait_total_ms": sum(_split(lk, "waittime_total_us", callers, sum)
                                 for lk in locks) / 1000,
            "hold_total_ms": sum(_split(lk, "holdtime_total_us", callers, sum)
                                 for lk in locks) / 1000,
            "hold_max_us": max(_split(lk, "holdtime_max_us", callers, max) for lk in locks),
        }
    return out


def run_label(run: dict) -> str:
    """A run's name in tables and plots: its design, with callback's mode."""
    if run.get("label"):
        return run["label"]
    c = run["config"]
    return f"callback/{c['callback_mode']}" if c["strategy"] == "callback" else c["strategy"]


def flat_metrics(run: dict) -> dict:
    """The headline numbers of a run as one flat row (the sweep CSV)."""
    ls = lock_split(run)
    m, rep, s = run["memory"], run["reporting"], run["safety"]
    return {
        "design": run_label(run),
        "outcome": run["outcome"],
        "pages_per_sec": run["throughput"]["pages_per_sec"],
        "ops_per_sec": run["throughput"]["ops_per_sec"],
        "elapsed_s": run["throughput"]["elapsed_s"],
        "alloc_p50_ns": run["latency_ns"]["alloc"]["p50"],
        "alloc_p99_ns": run["latency_ns"]["alloc"]["p99"],
        "free_p99_ns": run["latency_ns"]["free"]["p99"],
        "lock_acquisitions_workers": ls["workers"]["acquisitions"],
        "lock_acquisitions_reporter": ls["reporter"]["acquisitions"],
        "lock_contentions_workers": ls["workers"]["contentions"],
        "lock_contentions_reporter": ls["reporter"]["contentions"],
        "lock_wait_ms_workers": round(ls["workers"]["wait_total_ms"], 3),
        "lock_wait_ms_reporter": round(ls["reporter"]["wait_total_ms"], 3),
        "lock_hold_ms_reporter": round(ls["reporter"]["hold_total_ms"], 3),
        "lock_hold_max_us_workers": ls["workers"]["hold_max_us"],
        "lock_hold_max_us_reporter": ls["reporter"]["hold_max_us"],
        "reported_bytes": m["reported_bytes"],
        "discarded_bytes": m["discarded_bytes"],
        "host_resident_bytes_end": m["host_resident_bytes_end"],
        "footprint_gib_s": m["footprint_gib_s"],
        "half_returned_s": m.get("half_returned_s"),
        "free_unreportable_bytes_end": m["free_unreportable_bytes_end"],
        "refaults": run["refaults"],
        "re_reports": rep["re_reports"],
        "installs": rep["installs"],
        "use_after_discard": s["use_after_discard"],
        "double_allocations": s["double_allocations"],
        "invariant_errors": len(s["invariant_errors"]),
    }


def unsafe(run: dict) -> list[str]:
    """Why a run is unsafe, in words; [] when it is not."""
    why = []
    s = run["safety"]
    if s["use_after_discard"]:
        why.append(f"{s['use_after_discard']} pages discarded while a worker owned them "
                   "(use-after-discard)")
    if s["double_allocations"]:
        why.append(f"{s['double_allocations']} pages given to two owners")
    if s["invariant_errors"]:
        why.append(f"{len(s['invariant_errors'])} invariant violations")
    if run["outcome"] != "ok":
        why.append(f"aborted: {run['abort_reason']}")
    return why


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_compare(runs: list[dict]) -> list[str]:
    """The side-by-side tables (lines)."""
    if not runs:
        return []
    base = next((r for r in runs if r["config"]["strategy"] == "none"), None)
    base_rate = base["throughput"]["pages_per_sec"] if base else None
    first = runs[0]
    lines = [f"shmalloc compare: {describe(first['config'], strategy=False)}, "
             f"{first['config']['duration']:g} s each", ""]
    w = max(len(r["label"]) for r in runs) + 2
    lines.append("what it costs the allocator (zone locks: workers / reporter)")
    lines.append(f"{'design':<{w}}{'M pages/s':>10}{'vs none':>9}{'alloc p99':>10}"
                 f"{'acquisitions':>20}{'contentions':>18}{'wait ms':>16}{'max hold us':>18}")
    for r in runs:
        rate = r["throughput"]["pages_per_sec"]
        rel = f"{100 * rate / base_rate:.1f}%" if base_rate else "-"
        ls = lock_split(r)
        wk, rp = ls["workers"], ls["reporter"]
        lines.append(
            f"{r['label']:<{w}}{rate / 1e6:>10.3f}{rel:>9}{r['latency_ns']['alloc']['p99']:>10}"
            f"{wk['acquisitions']:>11} / {rp['acquisitions']:<6}"
            f"{wk['contentions']:>10} / {rp['contentions']:<5}"
            f"{wk['wait_total_ms']:>8.1f} / {rp['wait_total_ms']:<5.1f}"
            f"{wk['hold_max_us']:>9.1f} / {rp['hold_max_us']:<6.1f}")
    lines += ["", "what it gives back, and at what risk"]
    lines.append(f"{'design':<{w}}{'reported':>12}{'discarded':>12}{'half back':>11}"
                 f"{'footprint':>11}{'host end':>12}{'refaults':>10}{'re-reports':>12}"
                 f"{'use-after-discard':>19}{'invariants':>12}")
    for r in runs:
        m, rep = r["memory"], r["reporting"]
        inv = "ok" if not r["safety"]["invariant_errors"] else "VIOLATED"
        mark = "   <-- UNSAFE" if unsafe(r) else ""
        lines.append(
            f"{r['label']:<{w}}{fmt_bytes(m['reported_bytes']):>12}"
            f"{fmt_bytes(m['discarded_bytes']):>12}{_fmt(m.get('half_returned_s'), '.2f'):>9} s"
            f"{m['footprint_gib_s']:>9.2f}  {fmt_bytes(m['host_resident_bytes_end']):>11}"
            f"{r['refaults']:>10}{rep['re_reports']:>12}"
            f"{r['safety']['use_after_discard']:>19}{inv:>12}{mark}")
    lines += ["", "footprint: host-resident memory integrated over the run, GiB*s; half back: "
              "seconds from the workers' shrink until the host held half of what they freed"]
    for r in runs:
        for why in unsafe(r):
            lines.append(f"UNSAFE: {r['label']}: {why}")
    return lines
