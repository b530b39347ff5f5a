"""``shmalloc trace info``: what a trace file holds, in lines (events,
duration and rate, orders and migratetypes, the peak live memory a replay
needs, the pids, and whether events were lost while it was recorded)."""

from __future__ import annotations

import shlex
import time
from types import SimpleNamespace

import numpy as np

from shmalloc import tracefile
from shmalloc.tracefile import OP_ALLOC, OP_FREE, OP_FREE_BATCHED, OP_NAMES

from ..experiment.replay import load_plan, needed_memory
from ..units import fmt_bytes, format_size


def format_info(path: str) -> list[str]:
    """``trace info``: what a trace holds (lines)."""
    pl = load_plan(path)
    tr = pl.trace
    h, ev = tr.header, tr.ev
    n = len(tr)
    dur = tr.duration_s
    ops = np.bincount(ev["op"], minlength=3)
    c = pl.counts()
    interrupted = f", interrupted by {h['interrupted']}" if h.get("interrupted") else ""
    lines = [f"shmalloc trace info: {path}",
             f"  command      {shlex.join(h.get('command') or ['?'])} (exit status "
             f"{h.get('exit_status')}{interrupted})",
             f"  recorded     {h.get('start_wall', '?')} on Linux {h.get('kernel', '?')} "
             f"({h.get('machine', '?')}), {h.get('cpus', '?')} CPUs, "
             f"{h.get('page_size', 4096) >> 10} KiB pages, clock {h.get('clock', '?')}, "
             + ("only CMD's process tree (--pid-tree)" if h.get("pid_tree") else "machine-wide"),
             f"  events       {n} in {dur:.2f} s: {n / dur if dur > 0 else 0:,.0f} events/s ("
             + ", ".join(f"{ops[i]} {OP_NAMES[i]}" for i in range(3)) + ")",
             "  per CPU      " + ", ".join(f"cpu{cpu} {cnt}" for cpu, cnt in
                                          enumerate(np.bincount(ev["cpu"])) if cnt)]
    if tr.lossy:
        per = ", ".join(f"cpu{cpu} {sum(v.values())}" for cpu, v in
                        (h.get("lost_by_cpu") or {}).items() if sum(v.values()))
        lines.append(f"  lossy        YES: {tr.lost_events} events lost while recording"
                     + (f" ({per})" if per else "")
                     + f"; {h.get('missed_pages', 0)} ring-buffer pages flagged")
    else:
        lines.append("  lossy        no: no events lost (per-CPU overrun and dropped counters 0)")
    least, default = needed_memory(SimpleNamespace(trace=path, zones=1, max_order=11,
                                                   workers=2, pcp_high=378))
    lines += [f"  peak live    {fmt_bytes(pl.peak_live_pages * 4096)} (allocated in the "
              f"recording and not yet freed, in time order); a replay needs --memory "
              f"{format_size(least)} or more (default for 2 workers: {format_size(default)})",
              f"  pairing      {c['free']} frees of recorded allocations, {c['piece']} pieces of "
              f"split blocks, {c['skipped_before']} frees of pages allocated before the "
              f"recording, {c['skipped_other']} unmatched; {pl.superseded} allocations of a "
              "pfn whose free was not seen"]
    t = time.perf_counter()                  # again, now that the decoder is loaded
    tracefile.load(path)
    decode_s = time.perf_counter() - t
    lines.append(f"  decoding     {n} events in {decode_s:.4f} s: "
                 f"{n / max(decode_s, 1e-9) / 1e6:.1f} M events/s")
    pids, cnt = np.unique(ev["pid"], return_counts=True)
    top = np.argsort(-cnt, kind="stable")[:8]
    lines.append(f"  pids         {len(pids)}: " + ", ".join(f"{pids[i]} ({cnt[i]})" for i in top)
                 + (", ..." if len(pids) > len(top) else ""))
    max_o = int(ev["order"][ev["op"] != OP_FREE_BATCHED].max()) + 1 if n else 1
    lines += ["", "orders       " + "".join(f"{o:>8}" for o in range(max_o))]
    for op, name in ((OP_ALLOC, "alloc"), (OP_FREE, "free")):
        hist = np.bincount(ev["order"][ev["op"] == op], minlength=max_o)[:max_o]
        lines.append(f"  {name:<11}" + "".join(f"{v:>8}" for v in hist))
    names = h.get("migratetypes") or []
    mts = ev["mt"][ev["op"] == OP_ALLOC]
    lines += ["", "migratetypes of the allocations"]
    for mt, cnt_mt in enumerate(np.bincount(mts[mts >= 0].astype(np.int64))):
        if cnt_mt:
            name = names[mt] if mt < len(names) else f"type {mt}"
            lines.append(f"  {name:<12}{cnt_mt:>10}")
    return lines
