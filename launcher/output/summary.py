"""The text summary of a run, from its RUN record (so saved results print
the same way).  Functions return lines; the caller prints."""

from __future__ import annotations

import shlex

from shmalloc import lockstat

from ..experiment.designs import DESIGNS
from ..units import fmt_bytes, fmt_rate


def describe(c: dict, strategy: bool = True, host_pages: bool = True) -> str:
    """One line naming an experiment's configuration."""
    pcp = f"pcp {c['pcp_batch']}/{c['pcp_high']}" if c["pcp_batch"] else "pcp off"
    design = f", strategy {c['strategy']}" if strategy else ""
    putback = ""
    if strategy and c.get("start"):                   # designs that record what the host has
        putback = f", start {c['start']}"
    if strategy and c.get("putback"):                 # mainline, isolate: 5.7 or 5.10
        putback += f", putback {c['putback']}"
    host = f", host pages {c.get('host_pages') or '4k'}" if host_pages else ""
    return (f"{c['workload']}{design}, {c['workers']} worker"
            f"{'s' if c['workers'] != 1 else ''}, {fmt_bytes(c['memory'])} guest{host}, "
            f"{c['zones']} zone{'s' if c['zones'] != 1 else ''}, {pcp}, seed {c['seed']}"
            f"{putback}")


def half_back(mem: dict, later: bool = False) -> str:
    """How long after the workers' shrink the host held half of what they
    freed less: '0.10 s' ('0.10 s later'), 'never (55 % back by the end)'
    when it did not happen before the run ended, '-' without a shrink."""
    half = mem.get("half_returned_s")
    if half is not None:
        return f"{half:.2f} s" + (" later" if later else "")
    if mem.get("freed_at_s") is None:
        return "-"
    share = mem.get("returned_share_end")
    return "never" if share is None else f"never ({100 * share:.0f} % back by the end)"


def structure(errors: int) -> str:
    """The invariant check's verdict, named for what it checks: the
    allocator's structure, not whether a design was safe."""
    return "consistent" if not errors else f"{errors} violations"


def discard_time(rep: dict) -> str:
    """The host's own time to discard, per discard (one fallocate or
    madvise per range): ', 0.30 ms of the host's time per discard'."""
    done = rep["hv_ranges"] - rep["hv_errors"]
    if not rep["hv_pages_discarded"] or done <= 0:
        return ""
    return f", {1e3 * rep['hv_discard_s'] / done:.2f} ms of the host's time per discard"


def headline(run: dict) -> str:
    return describe(run["config"])


def format_run(run: dict, lock_table: bool = True) -> list[str]:
    t, lat, mem, safety = run["throughput"], run["latency_ns"], run["memory"], run["safety"]
    lines = [f"shmalloc run: {headline(run)}", ""]
    if run["outcome"] != "ok":
        lines += [f"ABORTED: {run['abort_reason']}", ""]
    lines += [f"throughput over {t['elapsed_s']:.2f} s",
              f"  {'total':<10} {fmt_rate(t['pages_per_sec'], 'pages/s'):>18} "
              f"{fmt_rate(t['ops_per_sec'], 'ops/s'):>16}"]
    for w in t["per_worker"]:
        lines.append(f"  {'worker ' + str(w['worker']):<10} "
                     f"{fmt_rate(w['pages_per_sec'], 'pages/s'):>18} "
                     f"{fmt_rate(w['ops_per_sec'], 'ops/s'):>16}")
    steady = t.get("steady")
    if steady and steady["kind"] == "steady":
        lines.append(f"  {'steady':<10} {fmt_rate(steady['pages_per_sec'], 'pages/s'):>18} "
                     f"{fmt_rate(steady['ops_per_sec'], 'ops/s'):>16}   from "
                     f"{steady['start_s']:.2f} s, over {steady['elapsed_s']:.2f} s (every worker "
                     "had written its working set once)")
    lines += ["", f"latency (ns)  {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>10} {'calls':>12}"]
    for op in ("alloc", "free"):
        p = lat[op]
        lines.append(f"  {op:<11} {p['p50']:>8} {p['p99']:>8} {p['p99_9']:>8} {p['max']:>10} "
                     f"{p['count']:>12}")
    if lock_table:
        lines += [""] + lockstat.format_lock_stat(run["locks"])
        lines += lockstat.format_contention(run["locks"])
    rep, strategy = run.get("reporting"), run["config"]["strategy"]
    design = DESIGNS.get(strategy)
    if rep and design is not None and design.reporter:
        lines += ["", f"reporting ({strategy})",
                  f"  passes {rep['cycles']}, requests {rep['requests']}, reports "
                  f"{rep['reports']}, ranges {rep['ranges_reported']} "
                  f"({fmt_bytes(rep['pages_reported'] * 4096)})",
                  f"  waiting for the hypervisor {rep['ack_wait_s']:.3f} s, re-reports "
                  f"{rep['re_reports']}, pages not taken {rep['pages_not_taken']}, "
                  f"budget exhausted {rep['budget_exhausted']}, errors {rep['report_errors']}"]
        if strategy == "mainline":
            lines.append(f"  Reported blocks stepped over under the zone lock "
                         f"{rep.get('reported_skipped', 0)}")
        if strategy == "callback":
            lines.append(f"  walk: {rep.get('blocks_walked', 0)} free blocks visited under the "
                         f"zone lock from order {run['config'].get('walk_order', 0)} up, "
                         f"{rep.get('callback_ns', 0)} ns each (the kick); each report is one "
                         f"block sent as the walk reached it, {rep.get('vq_full', 0)} not sent "
                         "(the free page virtqueue full)")
        if strategy == "isolate":
            lines.append(f"  drain_all_pages {rep.get('pcp_drains', 0)}, pcp drains asked of "
                         f"workers {rep.get('drain_requests', 0)}")
        lines += ["hypervisor stub",
                  f"  reports {rep['hv_requests']}, ranges {rep['hv_ranges']}, discarded "
                  f"{fmt_bytes(rep['hv_pages_discarded'] * 4096)}{discard_time(rep)}, "
                  f"failed discards {rep['hv_errors']} (acknowledged all the same, as QEMU)"]
    if rep and design is not None and design.host_scan:
        lines += ["", "host scan (hostscan)",
                  f"  scans {rep['scans']}, blocks reclaimed {rep['hv_ranges']}, discarded "
                  f"{fmt_bytes(rep['hv_pages_discarded'] * 4096)}{discard_time(rep)}, "
                  f"errors {rep['hv_errors']}",
                  f"  installs (guest allocations of reclaimed 2 MiB frames) {rep['installs']}"]
    order = run['config'].get('report_order', 9)
    lines += ["", "memory (guest: the allocator's pages; host: the memory tmpfs holds behind them)",
              f"  guest                {fmt_bytes(mem['guest_bytes'])}",
              f"  free at end          {fmt_bytes(mem['free_bytes_end'])} of it on the guest's "
              "free lists: what the workers gave back and what they never touched; in blocks "
              f"below order {order}, too small to report: "
              f"{fmt_bytes(mem.get('free_unreportable_bytes_end', 0))}",
              f"  host-resident        {fmt_bytes(mem['host_resident_bytes_end'])} at the end "
              f"(start {fmt_bytes(mem['host_resident_bytes_start'])}, "
              f"min {fmt_bytes(mem['host_resident_bytes_min'])}, "
              f"max {fmt_bytes(mem['host_resident_bytes_max'])}): guest pages the host holds "
              "memory for, written by a worker and not discarded since, in use or free (a "
              "freed page stays resident until it is reported and discarded); a page never "
              "touched is free but was never resident",
              f"  footprint            {mem.get('footprint_gib_s', 0):.3f} GiB*s (host-resident "
              "memory integrated over the run)"]
    if mem.get("half_returned_s") is not None or mem.get("freed_at_s") is not None:
        lines.append(f"  workers freed        {fmt_bytes(mem.get('released_bytes', 0))} at "
                     f"{mem['freed_at_s']:.2f} s; half of it back on the host: "
                     + half_back(mem, later=True))
    lines += replay_lines(run)
    lines += ["", "safety",
              f"  use-after-discard    {safety['use_after_discard']}",
              f"  double allocations   {safety['double_allocations']}",
              f"  refaults             {run['refaults']}"]
    errs = safety["invariant_errors"]
    lines.append(f"  allocator structure  {structure(len(errs))} (free lists, counts and owners "
                 "checked at the end; what the host did to a page is use-after-discard's)")
    lines += [f"    {e}" for e in errs[:20]]
    if run.get("page_accounting"):
        lines += ["", "where every page was"]
        lines += [f"  {row['where']:<40} {row['pages']:>10}" for row in run["page_accounting"]]
    return lines


#: a replay that skips more than this share of its events says so
SKIP_NOTE_SHARE = 0.05


def replay_lines(run: dict) -> list[str]:
    """The summary's trace section, and its notes."""
    t = run.get("trace")
    if not t:
        return []
    k = t["kinds"]
    speed = "as fast as possible" if not t["speed"] else f"at {t['speed']:g}x the recorded pace"
    cmd = shlex.join(t["command"]) if t.get("command") else "?"
    pace = f"{t['pace']:.2f}x the recorded pace" if t.get("pace") is not None else "-"
    lines = ["", f"trace replay: {t['file']} ({cmd}; {t['recorded_s']:.2f} s recorded"
             f"{', --pid-tree' if t.get('pid_tree') else ''})",
             f"  events       {t['replayed']} replayed ({t['events']} per pass, {t['passes']} "
             f"whole pass{'es' if t['passes'] != 1 else ''}), {speed}: {pace}"
             + (" (stopped before the end)" if t["loops"] and not t["complete"] else ""),
             f"  not replayed {k['duplicate']} mm_page_free_batched (each repeats a free), "
             f"{k['failed_in_trace']} allocations the kernel failed",
             f"  allocations  {t['allocs']} satisfied, {t['failed']} failed (the guest could "
             "not satisfy them)",
             f"  frees        {t['frees']}: {t['cross_frees']} on another worker than the "
             f"allocation's, {t['implicit_frees']} implicit (pfn allocated again), "
             f"{t['late_frees']} late; {t['pieces']} pieces of split blocks",
             f"  skipped      {t['skipped']} ({100 * t['skipped_share']:.1f} %): "
             f"{t['skipped_before']} frees of pages allocated before the recording, "
             f"{t['skipped_failed']} of failed allocations, {t['skipped_other']} other",
             f"  waits        {t['waits']} frees waited {t['wait_s']:.3f} s for another "
             f"worker's allocation; {t['gave_up']} gave up"]
    lines += [f"  NOTE: {n}" for n in replay_notes(run)]
    return lines


def replay_notes(run: dict) -> list[str]:
    """What a reader of a replay's results must not miss."""
    t = run.get("trace")
    if not t:
        return []
    out = []
    if t["skipped_share"] > SKIP_NOTE_SHARE:
        out.append(f"{t['file']}: {100 * t['skipped_share']:.1f} % of the events were skipped "
                   "(more than 5 %): the replay differs from the recording")
    if t["lossy"]:
        out.append(f"{t['file']} is lossy: {t['lost_events']} events were lost while it was "
                   "recorded")
    return out
