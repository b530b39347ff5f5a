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

from . import compile as kernels
from . import designs, interrupt
from .config import RunConfig
from .run import execute
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
    design = designs.DESIGNS[name]        # flags the design does not take do not apply
    if design.putback is None:
        cfg = replace(cfg, putback=None)
    if not design.walks:
        cfg = replace(cfg, walk_order=None, callback_ns=None)
    if mode:
        cfg = replace(cfg, callback_mode=mode)
    return cfg.resolved()


def run_lineup(base: RunConfig, items: list[str], progress: bool = False,
               repeat: int = 1) -> list[dict]:
    """Run every item, ``repeat`` rounds, the items interleaved within each
    round (so a slow spell of the machine does not fall on one design);
    returns the RUN records, each with ``label``.  Stops at the first
    aborted run (its record is the last one)."""
    runs = []
    total = len(items) * repeat
    kernels.prepare(kernels.groups_for([config_for(base, item) for item in items]))
    for r in range(repeat):
        if r:
            interrupt.enter(f"between rounds ({r} of {repeat} done)")
            interrupt.checkpoint("between-rounds")
        for i, item in enumerate(items, 1):
            if i > 1:
                interrupt.enter(f"between designs ({len(runs)} of {total} runs done)")
                interrupt.checkpoint("between-designs")
            cfg = config_for(base, item)
            label = f"[{r * len(items) + i}/{total}] {item:<17} "
            run = execute(cfg, progress=progress, label=label)
            run["label"] = item
            runs.append(run)
            if progress:
                sys.stderr.write(f"{label}{run['outcome']}\n")
            if run["outcome"] != "ok":
                return runs
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
            "hold_avg_ns": 0.0,
            "hold_max_us": max(_split(lk, "holdtime_max_us", callers, max) for lk in locks),
        }
        acq = out[who]["acquisitions"]
        out[who]["hold_avg_ns"] = 1e6 * out[who]["hold_total_ms"] / acq if acq else 0.0
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
        "lock_hold_avg_ns_workers": round(ls["workers"]["hold_avg_ns"], 1),
        "lock_hold_avg_ns_reporter": round(ls["reporter"]["hold_avg_ns"], 1),
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


def _median(values: list):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def aggregate(runs: list[dict]) -> list[tuple[str, dict, int]]:
    """One row per label, in first-seen order: (label, the median of every
    number of :func:`flat_metrics` over the label's runs, how many runs);
    the row's ``unsafe`` lists what any of them did wrong, ``rate_min`` and
    ``rate_max`` the spread of throughput."""
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)
    rows = []
    for label, group in by_label.items():
        flats = [flat_metrics(r) for r in group]
        row = {}
        for key in flats[0]:
            vals = [f[key] for f in flats]
            numeric = all(isinstance(v, (int, float)) or v is None for v in vals)
            row[key] = _median(vals) if numeric else vals[0]
        rates = [f["pages_per_sec"] for f in flats]
        row["rate_min"], row["rate_max"] = min(rates), max(rates)
        row["unsafe"] = [why for r in group for why in unsafe(r)]
        rows.append((label, row, len(group)))
    return rows


def format_compare(runs: list[dict]) -> list[str]:
    """The side-by-side tables (lines); with several runs of a design, its
    medians (and the throughput's spread)."""
    if not runs:
        return []
    rows = aggregate(runs)
    repeats = max(n for _, _, n in rows)
    base = next((row for label, row, _ in rows if label == "none"), None)
    base_rate = base["pages_per_sec"] if base else None
    first = runs[0]
    putbacks = {r["config"].get("putback") for r in runs} - {None}
    lines = [f"shmalloc compare: {describe(first['config'], strategy=False)}, "
             f"{first['config']['duration']:g} s each"
             + (f", putback {putbacks.pop()} (mainline, isolate)" if len(putbacks) == 1 else "")
             + (f", median of {repeats} runs" if repeats > 1 else ""), ""]
    w = max(len(label) for label, _, _ in rows) + 2
    spread = repeats > 1
    lines.append("what it costs the allocator (zone locks: workers / reporter)")
    lines.append(f"{'design':<{w}}{'M pages/s':>10}" + (f"{'spread':>15}" if spread else "")
                 + f"{'vs none':>9}{'alloc p99':>10}{'acquisitions':>20}{'contentions':>18}"
                 f"{'wait ms':>16}{'avg hold ns':>13}{'max hold us':>18}")
    for label, f, _ in rows:
        rate = f["pages_per_sec"]
        rel = f"{100 * rate / base_rate:.1f}%" if base_rate else "-"
        rng = f"{f['rate_min'] / 1e6:.2f}-{f['rate_max'] / 1e6:.2f}" if spread else ""
        lines.append(
            f"{label:<{w}}{rate / 1e6:>10.3f}" + (f"{rng:>15}" if spread else "")
            + f"{rel:>9}{f['alloc_p99_ns']:>10.0f}"
            f"{f['lock_acquisitions_workers']:>11.0f} / {f['lock_acquisitions_reporter']:<6.0f}"
            f"{f['lock_contentions_workers']:>10.0f} / {f['lock_contentions_reporter']:<5.0f}"
            f"{f['lock_wait_ms_workers']:>8.1f} / {f['lock_wait_ms_reporter']:<5.1f}"
            f"{f['lock_hold_avg_ns_workers']:>8.0f} / {f['lock_hold_avg_ns_reporter']:<5.0f}"
            f"{f['lock_hold_max_us_workers']:>9.1f} / {f['lock_hold_max_us_reporter']:<6.1f}")
    lines += ["", "what it gives back, and at what risk"]
    lines.append(f"{'design':<{w}}{'reported':>12}{'discarded':>12}{'half back':>11}"
                 f"{'footprint':>11}{'host end':>12}{'refaults':>10}{'re-reports':>12}"
                 f"{'use-after-discard':>19}{'invariants':>12}")
    for label, f, _ in rows:
        inv = "ok" if not f["invariant_errors"] else "VIOLATED"
        mark = "   <-- UNSAFE" if f["unsafe"] else ""
        lines.append(
            f"{label:<{w}}{fmt_bytes(f['reported_bytes']):>12}"
            f"{fmt_bytes(f['discarded_bytes']):>12}{_fmt(f['half_returned_s'], '.2f'):>9} s"
            f"{f['footprint_gib_s']:>9.2f}  {fmt_bytes(f['host_resident_bytes_end']):>11}"
            f"{f['refaults']:>10.0f}{f['re_reports']:>12.0f}"
            f"{f['use_after_discard']:>19.0f}{inv:>12}{mark}")
    lines += ["", "footprint: host-resident memory integrated over the run, GiB*s; half back: "
              "seconds from the workers' shrink until the host held half of what they freed"]
    for label, f, _ in rows:
        for why in dict.fromkeys(f["unsafe"]):
            lines.append(f"UNSAFE: {label}: {why}")
    return lines
