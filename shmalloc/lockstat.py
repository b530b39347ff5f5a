"""Zone-lock statistics: read them, print them as /proc/lock_stat does.

The counters are declared once in :data:`shmalloc.layout.LOCKSTAT_FIELDS` and
kept per (zone, caller class) in the zone struct; this module turns them into
records (counts, and times in microseconds), the ``/proc/lock_stat`` table
(Documentation/locking/lockstat.rst, format version 0.4: a 40-column class
name and twelve 14-column values, times in microseconds with two decimals)
and a ``perf lock contention`` style summary.  Formatters return lines; the
caller prints.
"""

from __future__ import annotations

from .layout import (
    CALLER_NAMES,
    LOCKSTAT_FIELDS,
    LS_ACQUISITIONS,
    LS_CONTENTIONS,
    LS_INF,
    LS_MIN_FIELDS,
    LS_TIME_FIELDS,
    NR_CALLERS,
    NR_LS_FIELDS,
    Layout,
)

#: The /proc/lock_stat columns in order: (header, record key, kind).
COLUMNS = (
    ("con-bounces", "con_bounces", "count"),
    ("contentions", "contentions", "count"),
    ("waittime-min", "waittime_min_us", "time"),
    ("waittime-max", "waittime_max_us", "time"),
    ("waittime-total", "waittime_total_us", "time"),
    ("waittime-avg", "waittime_avg_us", "time"),
    ("acq-bounces", "acq_bounces", "count"),
    ("acquisitions", "acquisitions", "count"),
    ("holdtime-min", "holdtime_min_us", "time"),
    ("holdtime-max", "holdtime_max_us", "time"),
    ("holdtime-total", "holdtime_total_us", "time"),
    ("holdtime-avg", "holdtime_avg_us", "time"),
)
# raw field -> record key
_KEY = {"con_bounces": "con_bounces", "contentions": "contentions",
        "wait_min": "waittime_min_us", "wait_max": "waittime_max_us",
        "wait_total": "waittime_total_us", "acq_bounces": "acq_bounces",
        "acquisitions": "acquisitions", "hold_min": "holdtime_min_us",
        "hold_max": "holdtime_max_us", "hold_total": "holdtime_total_us"}


def _record(raw: list[int], ticks_per_sec: int) -> dict:
    """A record from raw counters of one (lock, caller) or their combination."""
    us = 1e6 / ticks_per_sec
    rec = {}
    for i, name in enumerate(LOCKSTAT_FIELDS):
        v = raw[i]
        if i in LS_MIN_FIELDS and v == LS_INF:
            v = 0
        rec[_KEY[name]] = round(v * us, 3) if i in LS_TIME_FIELDS else int(v)
    con, acq = raw[LS_CONTENTIONS], raw[LS_ACQUISITIONS]
    rec["waittime_avg_us"] = round(rec["waittime_total_us"] / con, 3) if con else 0.0
    rec["holdtime_avg_us"] = round(rec["holdtime_total_us"] / acq, 3) if acq else 0.0
    return rec


def _combine(raws: list[list[int]]) -> list[int]:
    out = [0] * NR_LS_FIELDS
    for i in range(NR_LS_FIELDS):
        vals = [r[i] for r in raws]
        if i in LS_MIN_FIELDS:
            out[i] = min(vals)
        elif LOCKSTAT_FIELDS[i].endswith("_max"):
            out[i] = max(vals)
        else:
            out[i] = sum(vals)
    return out


def raw_counters(zs, zone: int, caller: int) -> list[int]:
    base = Layout.lockstat(zone, caller)
    return [int(v) for v in zs[base: base + NR_LS_FIELDS]]


def lock_records(zs, nr_zones: int, ticks_per_sec: int) -> list[dict]:
    """One record per zone lock: ``name``, the lock_stat values (totals over
    callers) and ``by_caller``: {caller name: values}."""
    out = []
    for z in range(nr_zones):
        raws = [raw_counters(zs, z, c) for c in range(NR_CALLERS)]
        rec = {"name": f"zone{z}->lock"}
        rec.update(_record(_combine(raws), ticks_per_sec))
        rec["by_caller"] = {CALLER_NAMES[c]: _record(raws[c], ticks_per_sec)
                            for c in range(NR_CALLERS)}
        out.append(rec)
    return out


def reset(zs, nr_zones: int) -> None:
    """Zero every zone's lock statistics (``echo 0 > /proc/lock_stat``)."""
    for z in range(nr_zones):
        for c in range(NR_CALLERS):
            base = Layout.lockstat(z, c)
            for i in range(NR_LS_FIELDS):
                zs[base + i] = LS_INF if i in LS_MIN_FIELDS else 0


def _cells(rec: dict) -> str:
    parts = []
    for _, key, kind in COLUMNS:
        v = rec[key]
        parts.append(f" {v:14.2f}" if kind == "time" else f" {v:14d}")
    return "".join(parts)


def format_lock_stat(records: list[dict], by_caller: bool = True) -> list[str]:
    """The /proc/lock_stat table; per-caller rows follow each lock's row."""
    width = 40 + 15 * len(COLUMNS) + 1
    lines = ["lock_stat version 0.4", "-" * width,
             f"{'class name':>40} " + " ".join(f"{h:>14}" for h, _, _ in COLUMNS),
             "-" * width]
    for rec in records:
        lines.append("")
        lines.append(f"{rec['name'] + ':':>41}" + _cells(rec))
        if by_caller:
            callers = [(c, r) for c, r in rec["by_caller"].items() if r["acquisitions"]]
            if callers:
                lines.append(f"{'-' * len(rec['name']):>41}")
            for c, r in callers:
                lines.append(f"{c + ':':>41}" + _cells(r))
    lines.append("")
    return lines


def _fmt_time(us: float) -> str:
    ns = us * 1000
    if ns < 1000:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} us"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def format_contention(records: list[dict]) -> list[str]:
    """``perf lock contention`` style: one row per (lock, caller) that waited,
    the longest total wait first."""
    rows = []
    for rec in records:
        for caller, r in rec["by_caller"].items():
            if r["contentions"]:
                rows.append((r["waittime_total_us"], r["contentions"], r["waittime_max_us"],
                             r["waittime_avg_us"], f"{rec['name']} ({caller})"))
    lines = [f"{'contended':>10} {'total wait':>12} {'max wait':>12} {'avg wait':>12}"
             "   lock (caller)"]
    if not rows:
        lines.append(f"{0:>10} {'-':>12} {'-':>12} {'-':>12}   (no contention)")
    for total, con, mx, avg, name in sorted(rows, reverse=True):
        lines.append(f"{con:>10} {_fmt_time(total):>12} {_fmt_time(mx):>12} "
                     f"{_fmt_time(avg):>12}   {name}")
    return lines
