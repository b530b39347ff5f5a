"""A real guest beside the model: the figures both are compared by, the
table, its JSON and the plot (issue 23, ``shmalloc vm compare``).

Both systems are read the same way, from a RUN record's memory timeline, so
a figure means the same on both sides: host-resident guest memory
(``memory.timeline.host_resident_bytes``: the model's guest object's
resident bytes; a real guest's RAM mapping's Rss in QEMU) against ``t_s``,
the moment the workers had freed their memory (``memory.freed_at_s``) and
how much (``memory.released_bytes``).  The figures:

``step_bytes``           memory returned per pass: the median drop of host-
                         resident memory after the free, a *step* being a run
                         of falling samples of at least 16 MiB (one pass can
                         straddle a sample)
``step_interval_s``      the median time between the starts of two steps
``first_step_s``         from the free to the first step: where the free fell
                         in the reporter's cadence (its phase), and whether
                         the reporter was idle (one delay) or mid-chain;
``first_step_from_freeing_s`` the same from the start of the free
``free_s``               how long the workers' free itself took (from
                         ``memory.freeing_at_s``, or a real guest's
                         ``freeing`` event, to the end): the request that
                         wakes an idle reporter comes with the first block of
                         the report order the free makes, early in it
``half_back_s``          from the free until the host holds half of the
                         freed memory less
``half_back_from_freeing_s`` the same from the start of the free (a real
                         guest's free of 1 GiB takes 0.6-1.5 s under TCG, the
                         model's 0.03 s, and the pass that wakes comes one
                         delay after its first request, early in the free)
``return_rate``          returned memory per second: what the host got back
                         after the free, over the time it took to get it
``resident_end_bytes``   host-resident at the end (of the workload: see
                         :func:`until_end`; every figure reads the
                         timeline up to there)
``resident_gain_bytes``  the same less host-resident at the start (a real
                         guest's kernel, initramfs and caches are resident
                         from its boot on; the model's guest holds nothing)
``unreportable_end_bytes`` free memory in blocks below the report order at the
                         end (a real guest's buddyinfo; the model's free lists):
                         free memory no pass can give back
``host_faults``          host faults after the free: QEMU's minor and major
                         faults (``host_minflt``, ``host_majflt``); the
                         model's refaults and first touches
                         (:mod:`shmalloc.hostpage`), each one host fault
``refaulted_bytes``      memory the host backed again after the free: the sum
                         of the rises of host-resident memory after it
``guest_memory_faults``  host faults on guest memory after the free: the
                         model's refaults and first touches (counted, as
                         ``host_faults``); a real guest's ``refaulted_bytes``
                         over its host page (2 MiB when QEMU's guest RAM was
                         mostly transparent huge pages at its largest: each
                         fault backs one whole), as QEMU's counter also counts
                         its own heap's and TCG's faults (about 1,000 in a
                         run that faulted no guest memory back)

Each row of :func:`compare` gives real, model and their difference (model
less real), and flags a difference beyond the tolerance: for a time, the
sampling interval or 15 % of the real figure, whichever is larger; for
memory and counts, 15 %.  A figure only one system has is flagged too.
:func:`ratios` answers the thread's question in both systems: each of
``return_rate``, ``host_faults`` and ``refaulted_bytes`` at report order 9
over the same at order 10.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..experiment.metrics import half_returned_s
from ..output.plots import pyplot
from ..units import byte_unit, fmt_bytes

MIN_STEP_BYTES = 16 << 20     # a drop smaller than this between two samples is noise
TOLERANCE = 0.15              # of the real figure


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    kind: str                 # "time" (seconds), "bytes", "count" or "rate" (bytes/s)


FIGURES = (
    Figure("step_bytes", "memory returned per pass", "bytes"),
    Figure("step_interval_s", "interval between passes", "time"),
    Figure("first_step_s", "first pass after the free", "time"),
    Figure("free_s", "the workers' free took", "time"),
    Figure("first_step_from_freeing_s", "first pass after the free began", "time"),
    Figure("half_back_s", "half of the freed memory back", "time"),
    Figure("half_back_from_freeing_s", "half back, from the start of the free", "time"),
    Figure("return_rate", "returned memory per second", "rate"),
    Figure("resident_end_bytes", "host-resident at the end", "bytes"),
    Figure("resident_gain_bytes", "host-resident at the end, less at the start", "bytes"),
    Figure("unreportable_end_bytes", "free below the report order at the end", "bytes"),
    Figure("host_faults", "host faults after the free", "count"),
    Figure("refaulted_bytes", "memory faulted back after the free", "bytes"),
    Figure("guest_memory_faults", "host faults on guest memory after the free", "count"),
)
#: the figures whose order-9 to order-10 ratio :func:`ratios` gives
RATIO_KEYS = ("return_rate", "host_faults", "refaulted_bytes", "guest_memory_faults")
HUGE_SHARE = 0.5             # QEMU's guest RAM counts as on 2 MiB host pages from this share
HOST_PAGE = {"4k": 4096, "2m": 2 << 20}


def system(run: dict) -> str:
    return run.get("system") or "model"


def steps(timeline: dict, after_s: float, min_bytes: int = MIN_STEP_BYTES) -> list[dict]:
    """Drops of host-resident memory from ``after_s`` on: runs of
    consecutive falling samples whose total is at least ``min_bytes``, each
    at the time of its first fall."""
    t, r = timeline["t_s"], timeline["host_resident_bytes"]
    out, start, total = [], None, 0
    for i in range(1, len(t) + 1):
        drop = r[i - 1] - r[i] if i < len(t) else 0
        if i < len(t) and t[i] > after_s and drop > 0:
            start = t[i] if start is None else start
            total += drop
            continue
        if start is not None and total >= min_bytes:
            out.append({"t_s": round(start, 3), "bytes": total})
        start, total = None, 0
    return out


def host_pages(run: dict) -> str:
    """The host page behind a run's guest memory: the model's
    ``host_pages``; a real guest's from its THP share (QEMU madvises guest RAM
    MADV_HUGEPAGE; the host gives huge pages where it can)."""
    if system(run) != "qemu":
        return run["config"].get("host_pages") or "4k"
    share = run["memory"].get("anon_huge_share_at_max")
    return "2m" if share is not None and share >= HUGE_SHARE else "4k"


def until_end(run: dict) -> dict:
    """The run's timeline up to the workload's end (``config.duration``
    from the workload's start, both systems' ``t_s`` origin).  What comes
    after it is teardown, and the two systems' differ: the guest program
    frees what it still holds (phased's regrow, 0.5-1 s under TCG, which
    leaves blocks below the report order), the model's workers drain their
    per-cpu lists as they exit.  "At the end" is the workload's end on both
    sides."""
    tl = run["memory"]["timeline"]
    end = run["config"].get("duration")
    if not end:
        return tl
    n = sum(1 for t in tl["t_s"] if t <= end + 1e-9)
    return {k: (v[:n] if isinstance(v, list) and len(v) == len(tl["t_s"]) else v)
            for k, v in tl.items()}


def host_fault_series(run: dict, tl: dict | None = None) -> list[int] | None:
    """Host faults so far at each sample (of ``tl``, default the run's whole
    timeline): QEMU's minor and major faults, or the model's refaults and
    first touches; None when the run lacks them."""
    tl = run["memory"]["timeline"] if tl is None else tl
    if system(run) == "qemu":
        pairs = ("host_minflt", "host_majflt")
    else:
        pairs = ("refaults", "first_touches")
    if not all(k in tl for k in pairs):
        return None
    return [a + b for a, b in zip(tl[pairs[0]], tl[pairs[1]])]


def _at(t: list, values: list, t_s: float):
    """The last value at or before ``t_s`` (the first if none)."""
    best = values[0]
    for ts, v in zip(t, values):
        if ts > t_s:
            break
        best = v
    return best


def _median(xs):
    return statistics.median(xs) if xs else None


def figures(run: dict) -> dict:
    """The comparison's figures of one run, either system (see the module
    docstring); a figure the run cannot give is None."""
    mem = run["memory"]
    tl = until_end(run)
    t, r = tl["t_s"], tl["host_resident_bytes"]
    freed_at, freed = mem.get("freed_at_s"), mem.get("released_bytes") or 0
    out = {f.key: None for f in FIGURES}
    out["sample_interval_s"] = _median([b - a for a, b in zip(t, t[1:])])
    out["resident_end_bytes"] = r[-1] if r else None
    out["resident_gain_bytes"] = r[-1] - r[0] if r else None
    unrep = [x for x in tl.get("free_unreportable_bytes", []) if x is not None]
    out["unreportable_end_bytes"] = unrep[-1] if unrep else None
    out["freed_at_s"], out["freed_bytes"] = freed_at, freed
    if freed_at is None or not t:
        return out
    st = steps(tl, freed_at)
    out["steps"] = st
    freeing = [e["t_s"] for e in run.get("events", []) if e.get("event") == "freeing"]
    freeing_at = min(freeing) if freeing else mem.get("freeing_at_s")
    if freeing_at is not None:
        out["free_s"] = round(max(freed_at - freeing_at, 0.0), 4)
        if st:
            out["first_step_from_freeing_s"] = round(st[0]["t_s"] - freeing_at, 3)
    out["step_bytes"] = _median([s["bytes"] for s in st])
    out["step_interval_s"] = _median([round(b["t_s"] - a["t_s"], 6) for a, b in zip(st, st[1:])])
    out["first_step_s"] = round(st[0]["t_s"] - freed_at, 3) if st else None
    out["half_back_s"] = half_returned_s(tl, freed_at, freed)
    if out["half_back_s"] is not None and freeing_at is not None:
        out["half_back_from_freeing_s"] = round(out["half_back_s"] + freed_at - freeing_at, 3)
    at_free = _at(t, r, freed_at)
    after = [(ts, x) for ts, x in zip(t, r) if ts > freed_at]
    if after:
        low = min(x for _, x in after)
        t_low = next(ts for ts, x in after if x == low)
        if at_free > low and t_low > freed_at:
            out["return_rate"] = (at_free - low) / (t_low - freed_at)
    rises = [b - a for (ta, a), (tb, b) in zip(zip(t, r), zip(t[1:], r[1:]))
             if tb > freed_at and b > a]
    out["refaulted_bytes"] = sum(rises)
    faults = host_fault_series(run, tl)
    if faults is not None:
        out["host_faults"] = faults[-1] - _at(t, faults, freed_at)
    if system(run) == "qemu":
        out["guest_memory_faults"] = out["refaulted_bytes"] // HOST_PAGE[host_pages(run)]
    else:
        out["guest_memory_faults"] = out["host_faults"]
    return out


def tolerance(kind: str, real: float, sample_s: float) -> float:
    """How far the model may be from ``real`` before the row is flagged."""
    rel = TOLERANCE * abs(real)
    return max(rel, sample_s) if kind == "time" else rel


def compare(real: dict, model: dict) -> dict:
    """Rows of (real, model, difference, flag), one per figure, for a real
    guest's RUN and the model's RUN of the same workload; with both
    systems' configurations (start state, host pages, report order)."""
    fr, fm = figures(real), figures(model)
    sample_s = max(x for x in (fr["sample_interval_s"], fm["sample_interval_s"], 0.0)
                   if x is not None)
    rows = []
    for f in FIGURES:
        a, b = fr[f.key], fm[f.key]
        row = {"key": f.key, "figure": f.label, "kind": f.kind, "real": a, "model": b,
               "difference": None, "relative": None, "flag": None}
        if a is None and b is None:
            pass
        elif a is None or b is None:
            row["flag"] = f"only the {'model' if a is None else 'real guest'} has it"
        else:
            row["difference"] = b - a
            row["relative"] = (b - a) / a if a else None
            tol = tolerance(f.kind, a, sample_s)
            if abs(b - a) > tol * (1 + 1e-9):              # a sample apart is within it
                row["flag"] = ("beyond the sampling interval and 15 %" if f.kind == "time"
                               else "beyond 15 %")
        rows.append(row)
    return {"sample_interval_s": sample_s, "tolerance": TOLERANCE,
            "real": _about(real, fr), "model": _about(model, fm), "rows": rows,
            "flagged": [row["key"] for row in rows if row["flag"]]}


def _about(run: dict, fig: dict) -> dict:
    """What a side of the comparison was: the flags that decide its figures."""
    c = run["config"]
    keys = ("workload", "memory", "report_order", "capacity", "delay", "putback", "start",
            "host_pages", "hog_share", "hog_hold", "workers", "duration")
    about = {k: c.get(k) for k in keys}
    about["system"] = system(run)
    about["steps"] = fig.get("steps", [])
    about["freed_at_s"], about["freed_bytes"] = fig["freed_at_s"], fig["freed_bytes"]
    return about


def ratios(real9: dict, real10: dict, model9: dict, model10: dict) -> dict:
    """The thread's question in both systems: each of :data:`RATIO_KEYS` at
    report order 9 over the same at order 10, real and model, and the rows
    flagged as :func:`compare` flags (15 %)."""
    figs = {k: figures(run) for k, run in (("r9", real9), ("r10", real10), ("m9", model9),
                                           ("m10", model10))}

    def ratio(a, b):
        return a / b if a is not None and b else None

    rows = []
    for key in RATIO_KEYS:
        label = next(f.label for f in FIGURES if f.key == key)
        a = ratio(figs["r9"][key], figs["r10"][key])
        b = ratio(figs["m9"][key], figs["m10"][key])
        row = {"key": key, "figure": f"{label}, order 9 / order 10", "kind": "ratio",
               "real": a, "model": b, "difference": None, "relative": None, "flag": None}
        if a is not None and b is not None:
            row["difference"] = b - a
            row["relative"] = (b - a) / a if a else None
            if abs(b - a) > TOLERANCE * abs(a):
                row["flag"] = "beyond 15 %"
        elif (a is None) != (b is None):
            row["flag"] = f"only the {'model' if a is None else 'real guest'} has it"
        rows.append(row)
    return {"rows": rows, "flagged": [row["key"] for row in rows if row["flag"]]}


def across_rounds(docs: list[dict]) -> dict:
    """Rows over rounds: ``docs`` are :func:`compare` (or :func:`ratios`)
    documents of the same pair, one per round.  Each row gives both systems'
    values in every round, their medians and ranges, the model's median over
    the real guest's, and a flag where the model's median lies outside the
    real guest's range widened by the tolerance (:func:`tolerance`, at the
    real median): the model then differs from the guest by more than the
    guest differs from itself from one run to the next.  One run of a real
    guest under churn is not a measurement: the same workload, seed and
    kernel faulted back 14 MiB in one run and 104 MiB in the next
    (docs/real-guest.md)."""
    sample_s = max((d.get("sample_interval_s") or 0.0) for d in docs)
    rows = []
    for i, first in enumerate(docs[0]["rows"]):
        kind = first["kind"]
        real = [d["rows"][i]["real"] for d in docs if d["rows"][i]["real"] is not None]
        model = [d["rows"][i]["model"] for d in docs if d["rows"][i]["model"] is not None]
        rm, mm = _median(real), _median(model)
        row = {"key": first["key"], "figure": first["figure"], "kind": kind,
               "real": [d["rows"][i]["real"] for d in docs],
               "model": [d["rows"][i]["model"] for d in docs],
               "real_median": rm, "model_median": mm,
               "real_range": [min(real), max(real)] if real else None,
               "model_range": [min(model), max(model)] if model else None,
               "model_over_real": mm / rm if rm and mm is not None else None, "flag": None}
        if not real and not model:
            pass
        elif not real or not model:
            row["flag"] = f"only the {'model' if not real else 'real guest'} has it"
        else:
            tol = tolerance(kind, rm, sample_s)
            if not min(real) - tol * (1 + 1e-9) <= mm <= max(real) + tol * (1 + 1e-9):
                row["flag"] = "the model's median is outside the real guest's range"
        rows.append(row)
    return {"rounds": len(docs), "sample_interval_s": sample_s, "tolerance": TOLERANCE,
            "rows": rows, "flagged": [row["key"] for row in rows if row["flag"]]}


# ---------------------------------------------------------------------------
# Output: a table, the JSON document, the plot
# ---------------------------------------------------------------------------

def _fmt(v, kind: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    sign = "+" if signed and v > 0 else ("-" if signed and v < 0 else "")
    x = abs(v) if signed else v
    if kind == "time":
        return f"{sign}{x:.2f} s"
    if kind == "bytes":
        return sign + fmt_bytes(x)
    if kind == "rate":
        return sign + fmt_bytes(x) + "/s"
    if kind == "ratio":
        return f"{sign}{x:.2f}"
    return f"{sign}{x:,.0f}"


def format_table(doc: dict, title: str = "") -> list[str]:
    """A ``compare`` or ``ratios`` document as a table: one row per figure,
    real, model, the difference, and why a row is flagged."""
    w = max(len(r["figure"]) for r in doc["rows"]) + 2
    lines = ([title] if title else []) + [
        f"{'figure':<{w}}{'real guest':>14}{'model':>14}{'difference':>22}  note"]
    for r in doc["rows"]:
        diff = _fmt(r["difference"], r["kind"], signed=True)
        if r["relative"] is not None:
            diff += f" ({100 * r['relative']:+.0f} %)"
        lines.append(f"{r['figure']:<{w}}{_fmt(r['real'], r['kind']):>14}"
                     f"{_fmt(r['model'], r['kind']):>14}{diff:>22}  "
                     + (f"DIFFERS: {r['flag']}" if r["flag"] else ""))
    return [line.rstrip() for line in lines]


def _fmt_spread(median, span, kind: str) -> str:
    """``median [lowest, highest]``, the three in one unit."""
    if median is None:
        return "-"
    lo, hi = span
    if kind in ("bytes", "rate"):
        top = max(abs(lo), abs(hi), abs(median))
        size, unit = byte_unit(top)
        unit += "/s" if kind == "rate" else ""
        lo, hi, median = (x / size for x in (lo, hi, median))
        digits = 0 if size == 1 or top / size >= 100 else 1
        return f"{median:.{digits}f} {unit} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{_fmt(median, kind)} [{_fmt(lo, kind).split()[0]}, {_fmt(hi, kind).split()[0]}]"


def format_rounds_table(doc: dict, title: str = "") -> list[str]:
    """An :func:`across_rounds` document as a table: per figure both systems'
    median [lowest, highest] over the rounds, the model's median over the
    real guest's, and why a row is flagged."""
    cells = [(r["figure"], _fmt_spread(r["real_median"], r["real_range"], r["kind"]),
              _fmt_spread(r["model_median"], r["model_range"], r["kind"]),
              "-" if r["model_over_real"] is None else f"{r['model_over_real']:.2f}",
              f"DIFFERS: {r['flag']}" if r["flag"] else "") for r in doc["rows"]]
    w = [max(len(c[i]) for c in cells) + 2 for i in range(3)]
    w[0] = max(w[0], len("figure") + 2)
    n = doc["rounds"]
    head = (f"{'figure':<{w[0]}}{f'real guest, {n} runs':>{max(w[1], 24)}}"
            f"{f'model, {n} runs':>{max(w[2], 24)}}{'model/real':>12}  note")
    lines = ([title] if title else []) + [head]
    for c in cells:
        lines.append(f"{c[0]:<{w[0]}}{c[1]:>{max(w[1], 24)}}{c[2]:>{max(w[2], 24)}}{c[3]:>12}  "
                     + c[4])
    return [line.rstrip() for line in lines]


def document(pairs: dict, ratio_doc: dict | None = None) -> dict:
    """The comparison's JSON: ``pairs`` maps a name ("order 9") to a
    :func:`compare` document; ``ratios`` the order-9/10 ratios if both
    orders ran."""
    doc = {"format": "shmalloc-vm-compare", "version": 1, "pairs": pairs}
    if ratio_doc is not None:
        doc["ratios"] = ratio_doc
    return doc


def plot(pairs: list[tuple[str, dict | list, dict | list]], path: str) -> str:
    """Both timelines of host-resident memory on one figure, a panel per
    (name, real run, model run), time counted from each system's free so
    that passes line up; a list of runs on either side (rounds) draws each,
    in one colour per system; returns ``path``."""
    plt = pyplot()
    fig, axes = plt.subplots(len(pairs), 1, figsize=(9, 3.2 * len(pairs)), squeeze=False)
    for ax, (name, real, model) in zip(axes[:, 0], pairs):
        for runs, style, colour, label in ((real, "-", "C0", "real guest (QEMU)"),
                                           (model, "--", "C1", "model")):
            runs = runs if isinstance(runs, list) else [runs]
            if len(runs) > 1:
                label += f", {len(runs)} runs"
            for k, run in enumerate(runs):
                tl, freed = run["memory"]["timeline"], run["memory"].get("freed_at_s") or 0.0
                ax.plot([t - freed for t in tl["t_s"]],
                        [b / 2**30 for b in tl["host_resident_bytes"]], style, color=colour,
                        alpha=1.0 if len(runs) == 1 else 0.6, label=label if k == 0 else None)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{name}: host-resident guest memory")
        ax.set_xlabel("seconds after the workers freed their memory")
        ax.set_ylabel("GiB")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
