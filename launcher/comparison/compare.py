"""``shmalloc compare``: the same workload, seed and flags under several
variants (designs, or any run flags), in interleaved rounds, then tables.

It answers the question Michal Hocko asked of every 2019 proposal ("How does
this compare to it?") with measurements: what a design costs the allocator
(throughput against the baseline, allocation latency, zone-lock acquisitions,
contentions, wait and hold time split between the workers and the reporter)
and what it gives back (bytes reported and discarded, how fast freed memory
returned to the host, the memory footprint, refaults, re-reports), and
whether it is safe (use-after-discard, invariants).  An unsafe row is marked
so nobody can miss it.

How sure it is: ``--repeat N`` runs N rounds, each round every variant once
in a fresh random order drawn from ``--order-seed`` (recorded); every kernel
is compiled (:mod:`launcher.experiment.compile`) and the unit costs are measured once,
before the first round.  Ctrl-C or SIGTERM between two runs stops at once
and names the phase ("between rounds", "between designs"); during a run, the
runs so far are reported.
With N >= 2 the first table pairs every variant with the baseline (the first
variant) round by round: the median ratio and its 95 % order-statistic interval
(:mod:`launcher.comparison.stats`) for throughput over the steady window, alloc p99 and
total zone-lock wait, and a verdict; then where the cost went
(:mod:`launcher.comparison.cost`), then the noise (steal, fixed cost, the baseline's
spread) and its warnings.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace

import numpy as np

from shmalloc.bench import unit_costs

from ..experiment import compile as kernels
from ..experiment import designs, interrupt
from ..experiment.config import RunConfig
from ..experiment.run import execute
from ..output.report import run_label
from ..output.summary import describe, replay_notes
from ..units import fmt_bytes
from . import stats
from .cost import COST_KEYS, SERVICE_CALLERS, WORKER_CALLERS, attributed_cost, pct

#: the default line-up: every design, callback in both modes
DEFAULT_LINEUP = ("none", "mainline", "boundary", "callback/hint", "callback/discard",
                  "isolate", "bitmap", "hostscan")
#: the kernel group of the unit costs prepare() measures (launcher.experiment.compile)
UNIT_COSTS = "unit costs"

#: the built-in default experiment (``shmalloc compare`` with no flags)
DEFAULTS = dict(workload="phased", duration=10.0)

@dataclass(frozen=True)
class Variant:
    """One column of a comparison: a label and the run it stands for."""

    label: str
    config: RunConfig
    flags: str | None = None          # --variant's FLAGS as given; None for --strategies

    @property
    def strategy(self) -> str:
        c = self.config
        return f"callback/{c.callback_mode}" if c.strategy == "callback" else c.strategy


def parse_lineup(text: str) -> list[str]:
    """'none,mainline,callback/discard' -> items, validated.  An item may
    repeat (``none,none``: an A/A check); :func:`label_items` numbers them."""
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
    return items


def label_items(items: list[str]) -> list[str]:
    """Labels of line-up items: the second ``none`` is ``none#2``, the third
    ``none#3``."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        seen[item] = seen.get(item, 0) + 1
        out.append(item if seen[item] == 1 else f"{item}#{seen[item]}")
    return out


def parse_variant(text: str) -> tuple[str, str]:
    """``LABEL=FLAGS`` -> (label, flags); ValueError names what is wrong."""
    label, sep, flags = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected LABEL='FLAGS' (an = is missing)")
    label = label.strip()
    if not label:
        raise ValueError(f"{text!r}: the label before = is empty")
    try:
        shlex.split(flags)
    except ValueError as e:
        raise ValueError(f"{label}: cannot split its flags: {e}") from None
    return label, flags


def check_labels(variants: list[Variant]) -> None:
    labels = [v.label for v in variants]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"the label {label!r} is given twice")


def config_for(base: RunConfig, item: str) -> RunConfig:
    """An item's run: ``base`` (unresolved: a design's own delay and
    capacity apply unless the command line set them) under its design."""
    name, _, mode = item.partition("/")
    cfg = replace(base, strategy=name)
    design = designs.DESIGNS[name]        # flags the design does not take do not apply
    if design.putback is None:
        cfg = replace(cfg, putback=None)
    if not design.walks:
        cfg = replace(cfg, walk_order=None, callback_ns=None, free_page_vq=None)
    if not design.records_host:
        cfg = replace(cfg, start=None)
    if mode:
        cfg = replace(cfg, callback_mode=mode)
    return cfg.resolved()


def round_orders(n_variants: int, rounds: int, order_seed: int) -> list[list[int]]:
    """The order of the variants in each round: a fresh permutation per
    round from a numpy Generator seeded with ``order_seed``."""
    rng = np.random.default_rng(order_seed)
    return [[int(i) for i in rng.permutation(n_variants)] for _ in range(rounds)]


def prepare(variants: list[Variant], command: str = "shmalloc compare", stream=None,
            progress: bool = True) -> tuple[bool, dict]:
    """Before round 1: compile (or load) every kernel any variant's
    processes call and the unit-cost kernels (:mod:`launcher.experiment.compile`, which
    says so on ``stream`` when it compiles), so no run pays for it, then
    measure the unit costs the attributed cost charges (about 0.1 s).
    Returns (numba cache was warm, unit costs)."""

    groups = kernels.groups_for([v.config for v in variants]) + [UNIT_COSTS]
    warm = kernels.prepare(groups, command=command, stream=stream, progress=progress)
    interrupt.enter("while measuring unit costs")
    interrupt.checkpoint("unit-costs")
    tty = progress and stream is not None and stream.isatty()
    if tty:
        stream.write(f"{command}: measuring unit costs...\r")
        stream.flush()
        interrupt.partial_line(True)
    host_pages = sorted({v.config.host_pages for v in variants})
    with interrupt.deferred():      # its machines are created and removed inside
        unit = unit_costs(host_pages=host_pages)
    if tty:
        stream.write("\r\033[K")
        interrupt.partial_line(False)
    return warm, unit


def run_rounds(variants: list[Variant], rounds: int, order_seed: int, unit: dict,
               progress: bool = False, lines: bool = False) -> list[dict]:
    """Run ``rounds`` rounds, each every variant once in its round's order;
    returns the RUN records with ``label``, ``round`` (from 1), ``position``
    in the round (from 1) and ``cost``.  Stops at the first aborted run (its
    record is the last one; a run cut short by a signal keeps its
    ``interrupted``).  A signal between two runs raises
    :class:`launcher.experiment.interrupt.Interrupted` naming the phase ("between
    rounds", "between designs").  ``progress``: a progress bar during each
    run (a terminal); ``progress`` or ``lines``: a line on stderr as each
    run ends."""
    runs = []
    total = len(variants) * rounds
    for r, order in enumerate(round_orders(len(variants), rounds, order_seed), 1):
        if r > 1:
            interrupt.enter(f"between rounds ({r - 1} of {rounds} done)")
            interrupt.checkpoint("between-rounds")
        for pos, i in enumerate(order, 1):
            if pos > 1:
                interrupt.enter(f"between designs ({len(runs)} of {total} runs done)")
                interrupt.checkpoint("between-designs")
            v = variants[i]
            tag = f"[{len(runs) + 1}/{total}] round {r} {v.label:<17} "
            run = execute(v.config, progress=progress, label=tag)
            run["label"], run["round"], run["position"] = v.label, r, pos
            if v.flags is not None:
                run["variant_flags"] = v.flags
            run["cost"] = attributed_cost(run, unit)
            runs.append(run)
            if progress or lines:        # after a progress bar, the bar's line ends it
                prefix = "" if progress else "shmalloc compare: "
                sys.stderr.write(f"{prefix}{tag}{run['outcome']}\n")
                sys.stderr.flush()
            if run["outcome"] != "ok":
                return runs
    return runs


# ---------------------------------------------------------------------------
# The paired comparison
# ---------------------------------------------------------------------------

def steady_rate(run: dict) -> float:
    """Pages per second over the steady window (the whole run in records
    written before the window existed)."""
    t = run["throughput"]
    return (t.get("steady") or t)["pages_per_sec"]


def lock_wait_us(run: dict) -> float:
    return sum(lk["waittime_total_us"] for lk in run["locks"])


def _series(runs: list[dict], labels: list[str]) -> tuple[list[int], dict]:
    """The rounds in which every label has an ok run, and {(label, round): run}."""
    by = {(r["label"], r.get("round", 1)): r for r in runs if r["outcome"] == "ok"}
    rounds = sorted({r.get("round", 1) for r in runs})
    return [k for k in rounds if all((lb, k) in by for lb in labels)], by


def _paired(by: dict, complete: list[int], base: str, label: str, metric,
            order_seed: int) -> tuple:
    """``label`` against ``base`` over the ``complete`` rounds: the median
    per-round ratio of ``metric`` and its 95 % interval ([lo, hi] or None)."""
    ratios = stats.paired_ratios([metric(by[(base, k)]) for k in complete],
                                 [metric(by[(label, k)]) for k in complete])
    med, lo, hi = stats.median_ci(ratios)
    return med, None if lo is None else [lo, hi]


def build_comparison(runs: list[dict], variants: list[Variant], order_seed: int) -> dict:
    """The results file's ``comparison``: per variant against the baseline,
    over the complete rounds, the median per-round ratio and its 95 %
    interval for throughput, alloc p99 and total zone-lock wait, and the
    throughput verdict."""
    labels = [v.label for v in variants]
    complete, by = _series(runs, labels)
    base = labels[0]

    def paired(label, metric):
        return _paired(by, complete, base, label, metric, order_seed)

    rows = []
    for v in variants[1:]:
        ratio, ci = paired(v.label, steady_rate)
        p99, p99_ci = paired(v.label, lambda r: r["latency_ns"]["alloc"]["p99"])
        wait, wait_ci = paired(v.label, lock_wait_us)
        rows.append({"label": v.label, "strategy": v.strategy, "ratio": _r(ratio),
                     "ci95": _r(ci), "verdict": stats.verdict(ratio, *(ci or (None, None))),
                     "p99_ratio": _r(p99), "p99_ci95": _r(p99_ci),
                     "lock_wait_ratio": _r(wait), "lock_wait_ci95": _r(wait_ci)})
    return {"baseline": base, "rounds": len(complete), "order_seed": order_seed, "rows": rows}


def _r(x, nd: int = 4):
    if x is None:
        return None
    if isinstance(x, list):
        return [round(float(v), nd) for v in x]
    return round(float(x), nd)


def build_analysis(runs: list[dict], variants: list[Variant], order_seed: int,
                   unit: dict) -> dict:
    """What stands beside the comparison: how it was computed, the rounds'
    orders, the cost table, the noise and the warnings."""
    labels = [v.label for v in variants]
    complete, by = _series(runs, labels)
    base = labels[0]
    costs = []
    for v in variants:
        group = [by[(v.label, k)] for k in complete]
        total = [(r.get("cost") or {}).get("total_pct_of_worker_time") for r in group]
        med, lo, hi = stats.median_ci(total)
        row = {"label": v.label}
        for key in COST_KEYS:
            row[key.replace("_ns", "_pct")] = _r(_median([pct(r.get("cost"), key)
                                                          for r in group]))
        row["total_pct"] = _r(med)
        row["total_pct_ci95"] = None if lo is None else _r([lo, hi])
        row["design_cpu_s"] = _r(_median([(r.get("cost") or {}).get("design_cpu_ns", 0) / 1e9
                                          for r in group]))
        if v.label != base:             # the paired table's ratio and interval, as a slowdown
            m, ci = _paired(by, complete, base, v.label, steady_rate, order_seed)
            row["measured_slowdown_pct"] = None if m is None else _r(100 * (1 - m))
            row["measured_slowdown_ci95"] = (None if ci is None
                                             else _r([100 * (1 - ci[1]), 100 * (1 - ci[0])]))
        costs.append(row)
    base_rates = [steady_rate(by[(base, k)]) for k in complete]
    sds = [stats.log_spread(stats.paired_ratios(base_rates, [steady_rate(by[(v.label, k)])
                                                         for k in complete]))
           for v in variants[1:]]
    sds = [s for s in sds if s is not None]
    base_cv = stats.cv(base_rates)
    steal = [r["noise"]["steal_pct"] for r in runs if r.get("noise")]
    fixed = [r["timing"] for r in runs if r.get("timing")]
    analysis = {
        "ci": {"method": f"{stats.METHOD}, of the median per-round ratio",
               "confidence": stats.CONFIDENCE, "min_rounds": stats.MIN_ROUNDS},
        "throughput": "pages per second over the steady window (see docs/measuring.md)",
        "round_order": [[r["label"] for r in sorted((x for x in runs if x.get("round") == k),
                                                    key=lambda x: x["position"])]
                        for k in sorted({x.get("round", 1) for x in runs})],
        "baseline_cv": _r(base_cv),
        "ratio_spread": _r(max(sds)) if sds else None,
        "steal_pct": {"median": _r(_median(steal)),
                      "max": _r(max((s for s in steal if s is not None), default=None))},
        "fixed_cost_s": {k: _r(_median([t.get(k) for t in fixed]))
                         for k in ("fixed_s", "create_s", "start_s", "stop_s",
                                   "collect_teardown_s")} if fixed else None,
        "fixed_cost_max_s": _r(max(t["fixed_s"] for t in fixed)) if fixed else None,
        "unit_costs": unit,
        "costs": costs,
    }
    analysis["warnings"] = stats.noise_warnings(steal, base_cv, max(sds) if sds else None, base)
    return analysis


def format_comparison(comparison: dict, analysis: dict | None = None) -> list[str]:
    """The paired table (lines): every variant against the baseline."""
    rows = comparison["rows"]
    n = comparison["rounds"]
    lines = [f"paired against {comparison['baseline']}: median of {n} per-round ratios, "
             f"rounds in random order (order seed {comparison['order_seed']}), 95 % "
             "order-statistic interval"]
    if not rows:
        return lines + ["  (only the baseline: nothing to pair)"]
    w = max(8, max(len(r["label"]) for r in rows) + 2)
    lines.append(f"{'variant':<{w}}{'throughput':<24}{'verdict':<34}{'alloc p99':<24}"
                 "zone-lock wait")
    for r in rows:
        lines.append(f"{r['label']:<{w}}{stats.fmt_ci(r['ratio'], r['ci95']):<24}"
                     f"{r['verdict']:<34}{stats.fmt_ci(r['p99_ratio'], r['p99_ci95']):<24}"
                     f"{stats.fmt_ci(r['lock_wait_ratio'], r['lock_wait_ci95'])}")
    lines.append("throughput: pages/s over the steady window; a ratio below 1 is slower. "
                 "alloc p99 and zone-lock wait: above 1 is more; '-': the baseline had none")
    return lines


def format_costs(analysis: dict) -> list[str]:
    """"Where the cost went" (lines): each part as a share of worker time."""
    costs = analysis.get("costs") or []
    if not costs:
        return []
    w = max(8, max(len(c["label"]) for c in costs) + 2)
    mw = 24 if any(c.get("measured_slowdown_ci95") for c in costs) else 10
    lines = ["where the cost went, % of worker time (median over rounds; design CPU apart)",
             f"{'variant':<{w}}{'measured':>{mw}}{'lock wait behind':>18}{'refaults':>10}"
             f"{'hooks':>9}{'attributed total [95 % CI]':>30}{'design CPU s':>14}",
             f"{'':<{w}}{'slowdown':>{mw}}{'reporter/host':>18}"]

    def cell(v, width, nd=2):
        return f"{'-' if v is None else format(v, f'.{nd}f'):>{width}}"

    def with_ci(v, ci, nd):
        if v is None:
            return "-"
        return f"{v:.{nd}f}" + (f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else "")

    for c in costs:
        total = with_ci(c["total_pct"], c.get("total_pct_ci95"), 2)
        slow = with_ci(c.get("measured_slowdown_pct"), c.get("measured_slowdown_ci95"), 1)
        lines.append(f"{c['label']:<{w}}{slow:>{mw}}"
                     f"{cell(c['lock_wait_behind_reporter_pct'], 18)}"
                     f"{cell(c['refault_pct'], 10)}{cell(c['hook_pct'], 9)}{total:>30}"
                     f"{cell(c['design_cpu_s'], 14, 3)}")
    u = analysis["unit_costs"]
    hooks = ", ".join(f"{k} {v:.1f}" for k, v in u["free_path_hooks"].items())
    lines.append(f"charged: a refault {refault_charges(u['refault'])}, a hook call "
                 f"ns: {hooks} (measured before round 1); --free-hook-ns as spun")
    return lines


def refault_charges(refault: dict) -> str:
    """'3114 ns', or per host page size '3114 ns (4k), 98000 ns (2m)'."""
    if "cost_ns_per_page" in refault:             # results from before --host-pages
        return f"{refault['cost_ns_per_page']:.0f} ns"
    return ", ".join(f"{rf['cost_ns']:.0f} ns ({hp} host pages)" for hp, rf in refault.items())


def format_noise(analysis: dict, baseline: str) -> list[str]:
    lines = []
    f = analysis.get("fixed_cost_s")
    if f:
        lines.append(f"fixed cost per run (beyond --duration): median {f['fixed_s']:.2f} s, max "
                     f"{analysis['fixed_cost_max_s']:.2f} s (create {f['create_s']:.2f}, fork and "
                     f"bind {f['start_s']:.2f}, stop {f['stop_s']:.2f}, check and tear down "
                     f"{f['collect_teardown_s']:.2f})")
    st = analysis["steal_pct"]
    cv = analysis.get("baseline_cv")
    lines.append("noise: steal " + ("unknown" if st["median"] is None else
                                    f"{st['median']:.2f} % median, {st['max']:.2f} % max")
                 + (f"; {baseline}'s throughput CV across rounds {100 * cv:.1f} %"
                    if cv is not None else ""))
    return lines + list(analysis.get("warnings") or [])


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


def flat_metrics(run: dict) -> dict:
    """The headline numbers of a run as one flat row (the sweep CSV)."""
    ls = lock_split(run)
    m, rep, s = run["memory"], run["reporting"], run["safety"]
    return {
        "design": run_label(run),
        "outcome": run["outcome"],
        "pages_per_sec": run["throughput"]["pages_per_sec"],
        "steady_pages_per_sec": steady_rate(run),
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


def aggregate(runs: list[dict], labels: list[str] | None = None) -> list[tuple[str, dict, int]]:
    """One row per label, in the order of ``labels`` (else first seen):
    (label, the median of every number of :func:`flat_metrics` over the
    label's runs, how many runs); the row's ``unsafe`` lists what any of them
    did wrong, ``rate_min`` and ``rate_max`` the spread of throughput (over
    the steady window)."""
    by_label: dict[str, list[dict]] = {label: [] for label in labels or []}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)
    rows = []
    for label, group in by_label.items():
        flats = [flat_metrics(r) for r in group] if group else []
        row = {}
        for key in (flats[0] if flats else ()):
            vals = [f[key] for f in flats]
            numeric = all(isinstance(v, (int, float)) or v is None for v in vals)
            row[key] = _median(vals) if numeric else vals[0]
        if not group:
            continue
        rates = [f["steady_pages_per_sec"] for f in flats]
        row["rate_min"], row["rate_max"] = min(rates), max(rates)
        row["unsafe"] = [why for r in group for why in unsafe(r)]
        rows.append((label, row, len(group)))
    return rows


def format_compare(runs: list[dict], labels: list[str] | None = None) -> list[str]:
    """The side-by-side tables (lines); with several runs of a variant, its
    medians (and the throughput's spread).  The baseline is the first of
    ``labels``, else ``none`` if it ran, else the first run's."""
    if not runs:
        return []
    rows = aggregate(runs, labels)
    repeats = max(n for _, _, n in rows)
    seen = [label for label, _, _ in rows]
    base_label = labels[0] if labels else ("none" if "none" in seen else seen[0])
    base = next((row for label, row, _ in rows if label == base_label), None)
    base_rate = base["steady_pages_per_sec"] if base else None
    first = runs[0]
    putbacks = {r["config"].get("putback") for r in runs} - {None}
    starts = {r["config"].get("start") for r in runs} - {None}
    hosts = sorted({r["config"].get("host_pages") or "4k" for r in runs})
    host = f"host pages {hosts[0]}" if len(hosts) == 1 else "host pages per variant"
    lines = [f"shmalloc compare: {describe(first['config'], strategy=False, host_pages=False)}, "
             f"{first['config']['duration']:g} s each, {host}"
             + (f", putback {putbacks.pop()} (mainline, isolate)" if len(putbacks) == 1 else "")
             + (f", start {starts.pop()} (mainline, boundary, hostscan)" if len(starts) == 1
                else "")
             + (f", median of {repeats} runs" if repeats > 1 else ""), ""]
    w = max(len(label) for label, _, _ in rows) + 2
    spread = repeats > 1
    lines.append("what it costs the allocator (zone locks: workers / reporter)")
    vs = f"vs {base_label}"
    vw = max(9, len(vs) + 2)
    lines.append(f"{'variant':<{w}}{'M pages/s':>10}" + (f"{'spread':>15}" if spread else "")
                 + f"{vs:>{vw}}{'alloc p99':>10}{'acquisitions':>20}{'contentions':>18}"
                 f"{'wait ms':>16}{'avg hold ns':>13}{'max hold us':>18}")
    for label, f, _ in rows:
        rate = f["steady_pages_per_sec"]
        rel = f"{100 * rate / base_rate:.1f}%" if base_rate else "-"
        rng = f"{f['rate_min'] / 1e6:.2f}-{f['rate_max'] / 1e6:.2f}" if spread else ""
        lines.append(
            f"{label:<{w}}{rate / 1e6:>10.3f}" + (f"{rng:>15}" if spread else "")
            + f"{rel:>{vw}}{f['alloc_p99_ns']:>10.0f}"
            f"{f['lock_acquisitions_workers']:>11.0f} / {f['lock_acquisitions_reporter']:<6.0f}"
            f"{f['lock_contentions_workers']:>10.0f} / {f['lock_contentions_reporter']:<5.0f}"
            f"{f['lock_wait_ms_workers']:>8.1f} / {f['lock_wait_ms_reporter']:<5.1f}"
            f"{f['lock_hold_avg_ns_workers']:>8.0f} / {f['lock_hold_avg_ns_reporter']:<5.0f}"
            f"{f['lock_hold_max_us_workers']:>9.1f} / {f['lock_hold_max_us_reporter']:<6.1f}")
    lines += ["", "what it gives back, and at what risk"]
    lines.append(f"{'variant':<{w}}{'reported':>12}{'discarded':>12}{'half back':>11}"
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
    lines += ["", "M pages/s: over the steady window (from when every worker had written its "
              "working set once, to the stop); footprint: host-resident memory integrated over "
              "the run, GiB*s; half back: seconds from the workers' shrink until the host held "
              "half of what they freed"]
    if spread:
        lines.append(f"{vs}: the ratio of the medians, without an interval (the paired "
                     "table of compare --repeat gives one)")
    for label, f, _ in rows:
        for why in dict.fromkeys(f["unsafe"]):
            lines.append(f"UNSAFE: {label}: {why}")
    lines += [f"NOTE: {n}" for n in dict.fromkeys(f"{run_label(r)}: {n}" for r in runs
                                                  for n in replay_notes(r))]
    return lines
