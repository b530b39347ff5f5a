"""``shmalloc compare``: the same workload, seed and flags under several
variants (designs, or any run flags), in interleaved rounds, then tables.

It answers the question Michal Hocko asked of every 2019 proposal ("How does
this compare to it?") with measurements: what a design costs the allocator
(throughput against the baseline with its interval, allocation latency,
zone-lock wait, and where the cost went) and what it gives back (bytes
reported and discarded, how fast freed memory returned to the host, the
memory footprint, refaults, re-reports), and at what risk (use-after-discard;
the allocator's structure checked at the end).  An unsafe row is marked so
nobody can miss it.

The default main job (no --workload, --workers, --duration or --ops) answers
the two halves from two parts, because one run cannot serve both: the cost
from :data:`COST` (paired, interleaved rounds of a short, low-noise
experiment: one worker, so that the two vCPUs do not make the noise; the
study behind the choice is in docs/measuring.md), what it gives back from
:data:`GIVE_BACK` (one run per design long enough for the designs' reporting
cadence: mainline's 2 s delay, hostscan's 5 s scan).  With an experiment of
the user's own, its rounds serve both tables.

How sure it is: rounds (``--repeat N``, ``--budget TIME`` or the main job's
:data:`COST_ROUNDS`), each every variant once in a fresh random order drawn
from ``--order-seed`` (recorded); every kernel is compiled
(:mod:`launcher.experiment.compile`) and the unit costs are measured once,
before the first round.  Ctrl-C or SIGTERM between two runs stops at once
and names the phase ("between rounds", "between designs"); during a run, the
runs so far are reported.  The paired comparison: per variant against the
baseline (the first), round by round, the median ratio and its 95 %
order-statistic interval (:mod:`launcher.comparison.stats`) for throughput
over the steady window, alloc p99 and total zone-lock wait, and a verdict;
where the cost went (:mod:`launcher.comparison.cost`), with the points the
counts leave unexplained; the noise (steal, fixed cost, the baseline's
spread) and what a +-2 % answer would take.  The tables are
:mod:`launcher.comparison.tables`.
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
from . import stats
from .cost import COST_KEYS, SERVICE_CALLERS, WORKER_CALLERS, attributed_cost, pct

#: the default line-up: every design, callback in both modes
DEFAULT_LINEUP = ("none", "mainline", "boundary", "callback/hint", "callback/discard",
                  "isolate", "bitmap", "hostscan")
#: the kernel group of the unit costs prepare() measures (launcher.experiment.compile)
UNIT_COSTS = "unit costs"

#: the default main job's two parts (docs/measuring.md, "How the main job spends
#: its time"): the cost from COST_ROUNDS paired rounds of COST, what each design
#: gives back from one run of GIVE_BACK
COST = dict(workload="thp", workers=1, duration=0.4)
COST_ROUNDS = 12
GIVE_BACK = dict(workload="phased", workers=2, duration=6.0)
#: flags that make an experiment of the user's own (one part, its rounds for
#: both tables) instead of the main job
EXPERIMENT_KEYS = ("workload", "workers", "duration", "ops")
#: the parts of a comparison, as each RUN record's ``part`` names them
PART_COST, PART_GIVE_BACK = "cost", "give-back"

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
               progress: bool = False, lines: bool = False, deadline=None,
               part: str = PART_COST, done: int = 0, total: int | None = None) -> list[dict]:
    """Run ``rounds`` rounds, each every variant once in its round's order;
    returns the RUN records with ``part``, ``label``, ``round`` (from 1),
    ``position`` in the round (from 1) and ``cost``.  Stops at the first
    aborted run (its record is the last one; a run cut short by a signal
    keeps its ``interrupted``), and before a round ``deadline``
    (:class:`launcher.comparison.budget.Deadline`) vetoes.  A signal between
    two runs raises :class:`launcher.experiment.interrupt.Interrupted`
    naming the phase ("between rounds", "between designs").  ``progress``:
    a progress bar during each run (a terminal); ``progress`` or ``lines``:
    a line on stderr as each run ends, numbered from ``done`` + 1 of
    ``total`` (default: these rounds' runs)."""
    runs = []
    total = total or len(variants) * rounds
    for r, order in enumerate(round_orders(len(variants), rounds, order_seed), 1):
        if r > 1:
            if deadline is not None and not deadline.allows():
                break
            interrupt.enter(f"between rounds ({r - 1} of {rounds} done)")
            interrupt.checkpoint("between-rounds")
        if deadline is not None:
            deadline.begin()
        for pos, i in enumerate(order, 1):
            if pos > 1 or done + len(runs) > 0:
                interrupt.enter(f"between designs ({done + len(runs)} of {total} runs done)")
                interrupt.checkpoint("between-designs")
            v = variants[i]
            where = "give-back" if part == PART_GIVE_BACK else f"round {r}"
            tag = f"[{done + len(runs) + 1}/{total}] {where} {v.label:<17} "
            run = execute(v.config, progress=progress, label=tag)
            run["part"], run["label"], run["round"], run["position"] = part, v.label, r, pos
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
        if deadline is not None:
            deadline.end()
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


def passes(run: dict) -> int:
    """A run's reporting passes: its reporter's cycles, or the host's scans
    (hostscan); 0 for none."""
    rep = run.get("reporting") or {}
    return int(rep.get("cycles") or rep.get("scans") or 0)


def paired_series(runs: list[dict], labels: list[str]) -> tuple[list[int], dict]:
    """The rounds in which every label has an ok run, and {(label, round): run}."""
    by = {(r["label"], r.get("round", 1)): r for r in runs if r["outcome"] == "ok"}
    rounds = sorted({r.get("round", 1) for r in runs})
    return [k for k in rounds if all((lb, k) in by for lb in labels)], by


def _paired(by: dict, complete: list[int], base: str, label: str, metric,
            confidence: float) -> tuple:
    """``label`` against ``base`` over the ``complete`` rounds: the median
    per-round ratio of ``metric`` and its interval at ``confidence``
    ([lo, hi] or None)."""
    ratios = stats.paired_ratios([metric(by[(base, k)]) for k in complete],
                                 [metric(by[(label, k)]) for k in complete])
    med, lo, hi = stats.median_ci(ratios, confidence)
    return med, None if lo is None else [lo, hi]


def build_comparison(runs: list[dict], variants: list[Variant], order_seed: int) -> dict:
    """The results file's ``comparison``: per variant against the baseline,
    over the complete rounds, the median per-round ratio and its 95 %
    interval for throughput, alloc p99 and total zone-lock wait, and the
    throughput verdict."""
    labels = [v.label for v in variants]
    complete, by = paired_series(runs, labels)
    base = labels[0]
    conf = stats.family_confidence(len(variants) - 1)
    needs = stats.min_rounds(conf)

    def paired(label, metric):
        return _paired(by, complete, base, label, metric, conf)

    rows = []
    for v in variants[1:]:
        ratio, ci = paired(v.label, steady_rate)
        p99, p99_ci = paired(v.label, lambda r: r["latency_ns"]["alloc"]["p99"])
        wait, wait_ci = paired(v.label, lock_wait_us)
        rows.append({"label": v.label, "strategy": v.strategy, "ratio": _r(ratio),
                     "ci95": _r(ci), "verdict": stats.verdict(ratio, *(ci or (None, None)),
                                                              needs=needs),
                     "p99_ratio": _r(p99), "p99_ci95": _r(p99_ci),
                     "lock_wait_ratio": _r(wait), "lock_wait_ci95": _r(wait_ci),
                     "passes": _median([passes(by[(v.label, k)]) for k in complete])})
    return {"baseline": base, "rounds": len(complete), "order_seed": order_seed,
            "confidence": _r(conf, 6), "min_rounds": needs, "rows": rows}


def unexplained(measured: list | None, attributed: list | None,
                m_mid: float | None, a_mid: float | None) -> dict | None:
    """Where the measured slowdown's interval and the attributed total's do
    not overlap, how many points of worker time the counts leave unexplained
    (``points`` > 0: the medians' difference, ``at_least``: the gap between
    the intervals) or charge beyond what was measured (``points`` < 0: a
    unit cost overstates); None when the intervals overlap or one is
    missing."""
    if not measured or not attributed or m_mid is None or a_mid is None:
        return None
    if measured[0] > attributed[1]:
        return {"points": _r(m_mid - a_mid, 2), "at_least": _r(measured[0] - attributed[1], 2)}
    if attributed[0] > measured[1]:
        return {"points": _r(m_mid - a_mid, 2), "at_least": _r(attributed[0] - measured[1], 2)}
    return None


def _r(x, nd: int = 4):
    if x is None:
        return None
    if isinstance(x, list):
        return [round(float(v), nd) for v in x]
    return round(float(x), nd)


def build_analysis(runs: list[dict], variants: list[Variant], unit: dict,
                   round_s: float | None = None) -> dict:
    """What stands beside the comparison: how it was computed, the rounds'
    orders, the cost table (with what the counts leave unexplained), each
    variant's spread and what a +-2 % answer would take (``round_s``: the
    wall time of a round, measured), the noise and the warnings."""
    labels = [v.label for v in variants]
    complete, by = paired_series(runs, labels)
    base = labels[0]
    conf = stats.family_confidence(len(variants) - 1)
    costs, widths = [], {}
    for v in variants:
        group = [by[(v.label, k)] for k in complete]
        group_costs = [r.get("cost") or {} for r in group]
        total = [c.get("total_pct_of_worker_time") for c in group_costs]
        med, lo, hi = stats.median_ci(total, conf)
        row = {"label": v.label}
        for key in COST_KEYS:
            row[key.replace("_ns", "_pct")] = _r(_median([pct(c, key) for c in group_costs]))
        row["total_pct"] = _r(med)
        row["total_pct_ci95"] = None if lo is None else _r([lo, hi])
        row["design_cpu_s"] = _r(_median([c.get("design_cpu_ns", 0) / 1e9
                                          for c in group_costs]))
        timed = [c for c in group_costs if c.get("refault_source") == "run"]
        row["refault_ns_each"] = _r(_median([c["refault_ns_each"] for c in timed]), 1)
        row["refault_rounds_timed"] = len(timed)
        if v.label != base:             # the paired table's ratio and interval, as a slowdown
            m, ci = _paired(by, complete, base, v.label, steady_rate, conf)
            if ci:
                widths[v.label] = ((ci[1] - ci[0]) / 2, m)
            row["measured_slowdown_pct"] = None if m is None else _r(100 * (1 - m))
            row["measured_slowdown_ci95"] = (None if ci is None
                                             else _r([100 * (1 - ci[1]), 100 * (1 - ci[0])]))
            row["unexplained"] = unexplained(row["measured_slowdown_ci95"],
                                             row["total_pct_ci95"],
                                             row["measured_slowdown_pct"], row["total_pct"])
        costs.append(row)
    base_rates = [steady_rate(by[(base, k)]) for k in complete]
    spreads = {v.label: stats.log_spread(stats.paired_ratios(
        base_rates, [steady_rate(by[(v.label, k)]) for k in complete])) for v in variants[1:]}
    sds = [s for s in spreads.values() if s is not None]
    base_cv = stats.cv(base_rates)
    steal = [r["noise"]["steal_pct"] for r in runs if r.get("noise")]
    fixed = [r["timing"] for r in runs if r.get("timing")]
    analysis = {
        "ci": {"method": f"{stats.METHOD}, of the median per-round ratio",
               "confidence": _r(conf, 6), "family_confidence": stats.CONFIDENCE,
               "comparisons": len(variants) - 1, "min_rounds": stats.min_rounds(conf)},
        "throughput": "pages per second over the steady window (see docs/measuring.md)",
        "round_order": [[r["label"] for r in sorted((x for x in runs if x.get("round") == k),
                                                    key=lambda x: x["position"])]
                        for k in sorted({x.get("round", 1) for x in runs})],
        "baseline_cv": _r(base_cv),
        "ratio_spread": _r(max(sds)) if sds else None,
        "spreads": {k: _r(v) for k, v in spreads.items()},
        "round_s": _r(round_s, 2),
        "sharper": sharper(widths, spreads, round_s, conf),
        "steal_pct": {"median": _r(_median(steal)),
                      "max": _r(max((s for s in steal if s is not None), default=None))},
        "fixed_cost_s": {k: _r(_median([t.get(k) for t in fixed]))
                         for k in ("fixed_s", "create_s", "start_s", "stop_s",
                                   "collect_teardown_s")} if fixed else None,
        "fixed_cost_max_s": _r(max(t["fixed_s"] for t in fixed)) if fixed else None,
        "unit_costs": unit,
        "costs": costs,
    }
    analysis["warnings"] = stats.noise_warnings(steal, base_cv, max(sds) if sds else None, base,
                                                conf, sharper_line=bool(analysis["sharper"]))
    return analysis


def sharper(widths: dict, spreads: dict, round_s: float | None,
            confidence: float = stats.CONFIDENCE) -> dict | None:
    """What narrowing the widest throughput interval to +-2 % would take.
    ``widths``: per variant (half the width of its interval of the ratio,
    the median ratio), so that a width is in the verdict's own terms, a
    share of the baseline's throughput (bitmap's 0.010 [0.007, 0.014] is
    +-0.35 %, not +-37 %).  From the widest variant's spread in these rounds
    (``spreads``, :func:`stats.log_spread`, log terms, so it is scaled by
    the ratio) the rounds the interval at ``confidence`` needs for +-2 %
    and, with ``round_s`` (a round's wall time), how long they take.  None
    without an interval or a spread."""
    known = {k: w for k, w in widths.items() if spreads.get(k) is not None}
    if not known:
        return None
    label = max(known, key=lambda k: known[k][0])
    half, ratio = known[label]
    need = stats.rounds_for_halfwidth(spreads[label] * max(ratio, 1e-6), confidence=confidence)
    return {"label": label, "halfwidth": _r(half), "spread": _r(spreads[label]),
            "target": stats.TARGET_HALFWIDTH, "rounds": need,
            "seconds": None if need is None or round_s is None else round(need * round_s)}


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
        "freed_at_s": m.get("freed_at_s"),
        "returned_share_end": m.get("returned_share_end"),
        "passes": passes(run),
        "free_unreportable_bytes_end": m["free_unreportable_bytes_end"],
        "refaults": run["refaults"],
        "re_reports": rep["re_reports"],
        "installs": rep["installs"],
        "use_after_discard": s["use_after_discard"],
        "double_allocations": s["double_allocations"],
        "invariant_errors": len(s["invariant_errors"]),
        "charged_pct": (run.get("cost") or {}).get("total_pct_of_worker_time"),
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
