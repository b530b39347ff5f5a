"""The tables ``shmalloc compare`` (and ``shmalloc report`` of a compare's
results file) prints, as lines, and the figures of ``--format mmtests``.

Every figure is explained where it stands: each table is followed by a
legend of its columns.  Two rules hold throughout, because a kernel
developer who reads one contradiction stops trusting the rest:

- throughput is compared with the baseline only in the paired table, as a
  ratio with its 95 % interval and a verdict; no other table prints a
  throughput, a percentage of the baseline or a ranking (one run ranks
  nothing on this machine);
- a column is named for what it checks: the invariant check is the
  *allocator structure*, which a design can keep consistent while the host
  discards memory in use (use-after-discard), so it never reads "ok" beside
  "UNSAFE".
"""

from __future__ import annotations

from ..output.mmtests import Figure, format_mmtests
from ..output.report import run_label
from ..output.summary import describe, half_back, replay_notes, structure
from ..units import fmt_bytes
from . import stats
from .budget import command_with_rounds, fmt_duration
from .compare import aggregate, lock_wait_us, paired_series, steady_rate

#: legend lines are wrapped at this width
WIDTH = 100


def wrap(text: str, width: int = WIDTH, indent: str = "  ") -> list[str]:
    """``text`` as lines of at most ``width`` characters, the later ones
    indented."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def legend(*items: str) -> list[str]:
    return [line for item in items for line in wrap(item)]


def _with_ci(ratio: float | None, ci) -> str:
    """'0.952 [0.930, 0.975]'; '-' without an interval: a ratio is never
    printed without one."""
    if ratio is None or not ci or ci[0] is None:
        return "-"
    return stats.fmt_ci(ratio, ci)


# ---------------------------------------------------------------------------
# The paired table: what it costs the allocator
# ---------------------------------------------------------------------------

def level(comparison: dict) -> str:
    """How sure each interval is, in words: '95 %', or with m comparisons
    '99.3 % each, so that all 7 hold together with at least 95 %'."""
    conf = comparison.get("confidence") or stats.CONFIDENCE
    m = len(comparison["rows"])
    if m <= 1:
        return f"{100 * conf:.3g} %"
    return (f"{100 * conf:.3g} % each, so that all {m} hold together with at least "
            f"{100 * stats.CONFIDENCE:.0f} % (Bonferroni)")


def format_comparison(comparison: dict, title: str | None = None) -> list[str]:
    """The paired table (lines): every variant against the baseline, its
    throughput ratio with the interval and the verdict, alloc p99 and
    zone-lock wait likewise, and its reporting passes per run."""
    rows = comparison["rows"]
    n, base = comparison["rounds"], comparison["baseline"]
    needs = comparison.get("min_rounds") or stats.MIN_ROUNDS
    lines = [title or f"paired against {base}: {n} rounds", ""]
    if not rows:
        return lines + [f"  (only {base}: nothing to pair)"]
    if n < needs:
        return lines + wrap(
            f"no interval: {n} complete round{'s' if n != 1 else ''}; an interval of a median "
            f"at {level(comparison)} needs {needs} rounds, so no design's throughput is "
            f"compared with {base}'s here. --repeat {needs} or more (or --budget TIME) gives "
            "every difference its interval and verdict.")
    w = max(9, max(len(r["label"]) for r in rows) + 2)
    lines.append(f"{'variant':<{w}}{'throughput [interval]':<24}{'verdict':<33}"
                 f"{'alloc p99 [interval]':<24}{'zone-lock wait [int.]':<24}passes")
    for r in rows:
        lines.append(f"{r['label']:<{w}}{_with_ci(r['ratio'], r['ci95']):<24}"
                     f"{r['verdict']:<33}{_with_ci(r['p99_ratio'], r['p99_ci95']):<24}"
                     f"{_with_ci(r['lock_wait_ratio'], r['lock_wait_ci95']):<24}"
                     f"{_passes(r.get('passes'))}")
    lines.append("")
    lines += legend(
        f"throughput: the median over the {n} rounds of the design's pages/s (over the steady "
        f"window) divided by {base}'s in the same round; below 1 is slower. interval: the "
        f"order-statistic interval of that median at {level(comparison)}, whatever the "
        "noise's shape. verdict: slower or faster only when the interval excludes 1, else "
        "indistinguishable.",
        f"alloc p99, zone-lock wait: the same ratio for the 99th percentile of an allocation's "
        f"latency and the workers' total wait for the zone lock; above 1 is more; '-': {base} "
        "had none to divide by.",
        "passes: the design's reporting passes per run (hostscan: its host scans), median.")
    idle = [r["label"] for r in rows if r.get("passes") == 0 and r.get("strategy") != "none"]
    if idle:
        lines += legend(
            f"0 passes ({', '.join(idle)}): the run ended before the design's first pass "
            "(mainline, callback and isolate report 2 s after a request, hostscan scans every "
            "5 s), so these rounds measure its free-path hook and processes, not its reporting; "
            "its passes are counted in the give-back runs.")
    return lines


def _passes(v) -> str:
    return "-" if v is None else f"{v:g}"


# ---------------------------------------------------------------------------
# Where the cost went
# ---------------------------------------------------------------------------

def _unexplained(u: dict | None) -> str:
    if not u:
        return "-"
    if u["points"] >= 0:
        return f"{u['points']:.1f} (>= {u['at_least']:.1f})"
    return f"over by {-u['points']:.1f} (>= {u['at_least']:.1f})"


def format_costs(analysis: dict) -> list[str]:
    """"Where the cost went" (lines): each part as a share of worker CPU
    time, the attributed total against the measured slowdown, and the points
    the counts leave unexplained."""
    costs = analysis.get("costs") or []
    if not costs:
        return []
    w = max(9, max(len(c["label"]) for c in costs) + 2)

    def cell(v, width, nd=2):
        return f"{'-' if v is None else format(v, f'.{nd}f'):>{width}}"

    def with_ci(v, ci, nd):
        if v is None or not ci:
            return "-"
        return f"{v:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"

    lines = ["where the cost went: % of the workers' CPU time, median over rounds",
             f"{'variant':<{w}}{'measured':>22}{'lock wait behind':>18}{'refaults':>10}"
             f"{'hooks':>8}{'attributed':>24}{'unexplained':>20}{'design':>9}",
             f"{'':<{w}}{'slowdown [interval]':>22}{'reporter/host':>18}{'':>10}{'':>8}"
             f"{'total [interval]':>24}{'points':>20}{'CPU s':>9}"]
    for c in costs:
        slow = with_ci(c.get("measured_slowdown_pct"), c.get("measured_slowdown_ci95"), 1)
        if c is costs[0]:
            slow = "(baseline)"
        lines.append(f"{c['label']:<{w}}{slow:>22}"
                     f"{cell(c['lock_wait_behind_reporter_pct'], 18)}"
                     f"{cell(c['refault_pct'], 10)}{cell(c['hook_pct'], 8)}"
                     f"{with_ci(c['total_pct'], c.get('total_pct_ci95'), 2):>24}"
                     f"{'' if c is costs[0] else _unexplained(c.get('unexplained')):>20}"
                     f"{cell(c['design_cpu_s'], 9, 3)}")
    u = analysis["unit_costs"]
    timed = [f"{c['label']} {c['refault_ns_each']:,.0f}" for c in costs
             if c.get("refault_ns_each") is not None]
    bench = refault_charges(u["refault"])
    hooks = ", ".join(f"{k} {v:.1f}" for k, v in u["free_path_hooks"].items())
    lines.append("")
    lines += legend(
        "measured slowdown: 1 - the throughput ratio above, in %, with its interval. attributed "
        "total: what counted events took of the workers' CPU time, with its interval over "
        "rounds at the same level: their wait for the zone lock while the reporter (or the "
        "host scan) held it, refaults, the design's free-path hook calls. Not counted: cache "
        "lines the reporter disturbs, the design's bookkeeping inside the list primitives "
        "(docs/measuring.md).",
        "unexplained points: where the two intervals do not overlap, the slowdown the counts "
        "do not account for, median against median (>= the gap between the intervals); "
        "over by: the counts charge more than was measured, so a unit cost overstates; '-': "
        "the intervals agree.",
        "a refault is charged what one cost in its own run: the workers time a sample of their "
        "first writes, and a refault costs the mean refaulting write less the mean resident "
        "one (median ns" + (f": {', '.join(timed)}" if timed else "") + f"; where a run timed "
        f"fewer than 32 refaults, the {bench} measured before round 1 stands in).",
        f"a hook call is charged what one cost before round 1 (ns: {hooks}); a calibration "
        "spin (--free-hook-ns, a busy-wait on every free) as long as it spun by its own clock.",
        "design CPU s: the reporter's and the hypervisor stub's CPU time, apart: on two vCPUs "
        "it competes with the workers, but not inside their operations.")
    return lines


def refault_charges(refault: dict) -> str:
    """'3,114 ns', or per host page size '3,114 ns (4k host pages), 303,025
    ns (2m host pages)': the bench's refault before round 1."""
    if "cost_ns_per_page" in refault:             # results from before --host-pages
        return f"{refault['cost_ns_per_page']:,.0f} ns"
    return ", ".join(f"{rf['cost_ns']:,.0f} ns ({hp} host pages)" for hp, rf in refault.items())


# ---------------------------------------------------------------------------
# Noise, and what a sharper answer costs
# ---------------------------------------------------------------------------

def format_sharper(analysis: dict, argv: list[str] | None, baseline: str = "none") -> list[str]:
    """One line: the rounds, and their time, that would narrow the widest
    throughput interval to +-2 % of the baseline's throughput at the spread
    these rounds showed, and the command that runs them."""
    s = analysis.get("sharper")
    if not s:
        return []
    target = f"+-{100 * s['target']:.0f} %"
    now = f"{s['label']}'s, +-{100 * s['halfwidth']:.1f} % of {baseline}'s throughput"
    if s["halfwidth"] <= s["target"]:
        return wrap(f"{target}: every throughput interval is within it (the widest: {now}).")
    if s["rounds"] is None:
        return wrap(f"{target}: the widest throughput interval ({now}) would need more than "
                    f"100,000 rounds at the spread these rounds showed (robust sd of the log "
                    f"ratios {s['spread']:.3f}).")
    took = "" if s["seconds"] is None else f", about {fmt_duration(s['seconds'])} of rounds"
    cmd = command_with_rounds(argv or ["compare"], s["rounds"])
    return wrap(f"{target}: the widest throughput interval ({now}) would narrow to {target} "
                f"in about {s['rounds']:,} rounds{took}, at the spread these rounds showed "
                f"(robust sd of the log ratios {s['spread']:.3f}): {cmd}")


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
    return lines + [x for w in analysis.get("warnings") or [] for x in wrap(w)]


# ---------------------------------------------------------------------------
# One run per design (or medians over rounds): locks, what it gives back, risk
# ---------------------------------------------------------------------------

def format_tables(runs: list[dict], labels: list[str] | None = None,
                  title: str | None = None) -> list[str]:
    """The side-by-side tables of a set of runs (with several runs of a
    variant, its medians): the zone locks split between workers and
    reporter, what each design gave back, and at what risk.  No throughput,
    no percentage of the baseline: those are the paired table's, with their
    intervals."""
    if not runs:
        return []
    rows = aggregate(runs, labels)
    repeats = max(n for _, _, n in rows)
    w = max(9, max(len(label) for label, _, _ in rows) + 2)
    median = " (median over rounds)" if repeats > 1 else ""
    lines = [title or runs_heading(runs, repeats)]
    lines += ["", f"zone locks, workers / reporter{median}",
              f"{'variant':<{w}}{'acquisitions':>14}{'':8}{'contentions':>11}{'':7}"
              f"{'wait ms':>11}{'':7}{'avg hold ns':>11}{'':7}{'max hold us':>12}"]
    for label, f, _ in rows:
        lines.append(
            f"{label:<{w}}"
            f"{f['lock_acquisitions_workers']:>12.0f} / {f['lock_acquisitions_reporter']:<7.0f}"
            f"{f['lock_contentions_workers']:>9.0f} / {f['lock_contentions_reporter']:<6.0f}"
            f"{f['lock_wait_ms_workers']:>9.1f} / {f['lock_wait_ms_reporter']:<6.1f}"
            f"{f['lock_hold_avg_ns_workers']:>7.0f} / {f['lock_hold_avg_ns_reporter']:<6.0f}"
            f"{f['lock_hold_max_us_workers']:>10.1f} / {f['lock_hold_max_us_reporter']:<7.1f}")
    lines += legend("reporter: the design's reporter, or hostscan's host scan; avg and max "
                    "hold: how long one acquisition kept the lock.")
    guest = fmt_bytes(runs[0]["config"]["memory"])
    sizes = sorted({r["config"].get("host_pages") or "4k" for r in runs})
    host = {"4k": "4 KiB", "2m": "2 MiB"}.get(sizes[0], sizes[0]) if len(sizes) == 1 else \
        "of each run's size"
    lines += ["", f"what it gives back{median}",
              f"{'variant':<{w}}{'reported':>14}{'discarded':>12}{'   half back':<32}"
              f"{'footprint':>10}{'host end':>12}{'passes':>8}",
              f"{'':<{w}}{'(cumulative)':>14}{'':>12}{'':<32}{'GiB*s':>10}"]
    for label, f, _ in rows:
        lines.append(f"{label:<{w}}{fmt_bytes(f['reported_bytes']):>14}"
                     f"{fmt_bytes(f['discarded_bytes']):>12}   {_half_back(f):<29}"
                     f"{f['footprint_gib_s']:>10.2f}{fmt_bytes(f['host_resident_bytes_end']):>12}"
                     f"{f['passes']:>8.0f}")
    lines += legend(
        "reported (cumulative): what the guest told the host over the run; a block reported "
        "again counts again, so a design that does not remember what it reported (callback, "
        f"isolate, bitmap) can report more than the guest's {guest}. discarded: what the host "
        "punched out of guest memory, backed or not (a range no worker wrote gives nothing "
        "back; callback/hint's host only records).",
        "half back: seconds from the workers' shrink until the host held half of what they "
        "freed less. never (N % back by the end): not before the run ended, N % being what "
        "the host had got back by then (none and callback/hint give nothing back; hostscan "
        "waits for its next scan, every 5 s; what bitmap returns is refaulted at once). '-': "
        "the workload never shrank (only hog and phased do).",
        "footprint: host-resident guest memory integrated over the run. host end: host-"
        "resident guest memory at the end. passes: reporting passes (hostscan: host scans).")
    lines += ["", f"at what risk{median}",
              f"{'variant':<{w}}{'use-after-discard':>19}{'allocator structure':>22}"
              f"{'refaults':>10}{'re-reports':>12}{'charged':>10}"]
    for label, f, _ in rows:
        mark = "   <-- UNSAFE" if f["unsafe"] else ""
        charged = "-" if f.get("charged_pct") is None else f"{f['charged_pct']:.2f} %"
        lines.append(f"{label:<{w}}{f['use_after_discard']:>19.0f}"
                     f"{structure(int(f['invariant_errors'])):>22}{f['refaults']:>10.0f}"
                     f"{f['re_reports']:>12.0f}{charged:>10}{mark}")
    lines += legend(
        "use-after-discard: pages the host discarded while a worker owned them (the worker's "
        "canary came back zeroed): data lost. allocator structure: the invariant check of "
        "free lists, counts and owners at the end; consistent says nothing of what the host "
        "did to a page, use-after-discard does.",
        f"refaults: first writes to host pages ({host}) the host had discarded, each a host "
        "fault that zeroes one. re-reports: blocks reported "
        "again whose memory the host no longer held. charged: what the design's counted "
        "events took of the workers' CPU time in this run (as in 'where the cost went'; one "
        "run, no interval).")
    for label, f, _ in rows:
        for why in dict.fromkeys(f["unsafe"]):
            lines.append(f"UNSAFE: {label}: {why}")
    lines += [f"NOTE: {n}" for n in dict.fromkeys(f"{run_label(r)}: {n}" for r in runs
                                                  for n in replay_notes(r))]
    return lines


def runs_heading(runs: list[dict], repeats: int) -> str:
    """The line naming what a set of runs of one configuration shares."""
    first = runs[0]["config"]
    putbacks = {r["config"].get("putback") for r in runs} - {None}
    return (f"shmalloc compare: {describe(first, strategy=False)}, {first['duration']:g} s each"
            + (f", putback {putbacks.pop()} (mainline, isolate)" if len(putbacks) == 1 else "")
            + (f", median of {repeats} runs" if repeats > 1 else ""))


def _half_back(f: dict) -> str:
    return half_back({"half_returned_s": f.get("half_returned_s"),
                      "freed_at_s": f.get("freed_at_s"),
                      "returned_share_end": f.get("returned_share_end")})


# ---------------------------------------------------------------------------
# --format mmtests
# ---------------------------------------------------------------------------

def _excludes_1(ci) -> bool:
    return bool(ci) and not ci[0] <= 1 <= ci[1]


def mmtests_figures(runs: list[dict], labels: list[str], comparison: dict) -> list[Figure]:
    """The paired rounds' figures for :func:`launcher.output.mmtests.format_mmtests`:
    throughput (M pages/s over the steady window), alloc p99 (ns) and the
    workers' zone-lock wait (ms), one value per complete round, each variant
    marked significant where compare's interval of its ratio excludes 1."""
    complete, by = paired_series(runs, labels)
    rows = {r["label"]: r for r in comparison["rows"]}

    def values(metric):
        return {lb: [metric(by[(lb, k)]) for k in complete] for lb in labels}

    def significant(key):
        return {lb: _excludes_1(rows[lb][key]) for lb in labels[1:] if lb in rows}

    return [Figure("Mpages/s", True, values(lambda r: steady_rate(r) / 1e6),
                   significant("ci95")),
            Figure("alloc-p99-ns", False, values(lambda r: r["latency_ns"]["alloc"]["p99"]),
                   significant("p99_ci95")),
            Figure("lockwait-ms", False, values(lambda r: lock_wait_us(r) / 1e3),
                   significant("lock_wait_ci95"))]


def format_mmtests_comparison(runs: list[dict], labels: list[str], comparison: dict,
                              title: str) -> list[str]:
    """``--format mmtests``: a title, the table, and what its marks mean."""
    n = comparison["rounds"]
    return ([title, ""] + format_mmtests(mmtests_figures(runs, labels, comparison), labels)
            + [""] + legend(
                f"{n} paired rounds; each row's statistic over the rounds, the percentage "
                f"against {labels[0]} (positive is better); *...* on Amean and Hmean: the "
                "order-statistic interval of the variant's median per-round ratio to the "
                f"baseline, at {level(comparison)}, excludes 1 (shmalloc compare's verdict), "
                "not a t-test."))
