"""The /proc/lock_stat formatter against a hand-computed example."""

from __future__ import annotations

from shmalloc import lockstat
from shmalloc.layout import CALLER_ALLOC, CALLER_FREE, LOCKSTAT_FIELDS, Layout

NS = 1_000_000_000          # ticks per second: one tick is a nanosecond here


def _set(zs, zone, caller, **values):
    base = Layout.lockstat(zone, caller)
    for name, v in values.items():
        zs[base + LOCKSTAT_FIELDS.index(name)] = v


def test_hand_computed_table(make_machine):
    m = make_machine()
    lockstat.reset(m.zs, 1)
    _set(m.zs, 0, CALLER_ALLOC, con_bounces=2, contentions=3, wait_min=500, wait_max=10_200,
         wait_total=12_000, acq_bounces=7, acquisitions=100, hold_min=100, hold_max=5_000,
         hold_total=30_000)
    _set(m.zs, 0, CALLER_FREE, con_bounces=1, contentions=1, wait_min=300, wait_max=300,
         wait_total=300, acq_bounces=3, acquisitions=50, hold_min=80, hold_max=9_000,
         hold_total=20_000)
    recs = lockstat.lock_records(m.zs, 1, NS)
    rec = recs[0]
    # totals: sums, min of mins, max of maxes; averages in microseconds
    assert rec["contentions"] == 4 and rec["acquisitions"] == 150
    assert rec["waittime_min_us"] == 0.3 and rec["waittime_max_us"] == 10.2
    assert rec["waittime_total_us"] == 12.3 and rec["waittime_avg_us"] == 3.075
    assert rec["holdtime_min_us"] == 0.08 and rec["holdtime_max_us"] == 9.0
    assert rec["holdtime_total_us"] == 50.0 and rec["holdtime_avg_us"] == 0.333
    assert rec["by_caller"]["reporter"]["holdtime_min_us"] == 0     # never acquired

    lines = lockstat.format_lock_stat(recs)
    assert lines[0] == "lock_stat version 0.4"
    assert lines[2].split() == ["class", "name", "con-bounces", "contentions", "waittime-min",
                                "waittime-max", "waittime-total", "waittime-avg", "acq-bounces",
                                "acquisitions", "holdtime-min", "holdtime-max",
                                "holdtime-total", "holdtime-avg"]
    row = " ".join(["%40s:" % "zone0->lock"] + ["%14s" % v for v in (
        3, 4, "0.30", "10.20", "12.30", "3.08", 10, 150, "0.08", "9.00", "50.00", "0.33")])
    assert lines[5] == row
    assert lines[6] == "%41s" % "-----------"
    assert lines[7] == " ".join(["%40s:" % "alloc"] + ["%14s" % v for v in (
        2, 3, "0.50", "10.20", "12.00", "4.00", 7, 100, "0.10", "5.00", "30.00", "0.30")])
    assert lines[8].startswith("%40s:" % "free")
    assert len(lines) == 10          # no row for callers that never took the lock

    summary = lockstat.format_contention(recs)
    assert summary[1].split() == ["3", "12.00", "us", "10.20", "us", "4.00", "us",
                                  "zone0->lock", "(alloc)"]
    assert summary[2].split()[:1] == ["1"]
