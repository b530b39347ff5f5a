"""Nitesh Narayan Lal's page hinting, v12 (August 2019, "[RFC][Patch v12 1/2]
mm: page_reporting: core infrastructure"): a bitmap per zone.

The free path (:func:`shmalloc.reporting.bitmap_notify_free`,
``__page_reporting_enqueue``) sets the bit of the report-order block it just
freed, after merging, and counts newly set bits in the zone's
``free_pages``; once a zone has at least ``max_pages`` set bits (16,
``--capacity``) and no pass is queued or running (``refcnt`` 0 -> 1), it
wakes the reporter at once, with no delay.  It pays v12's locked
instructions: ``test_and_set_bit`` on every free of a report-order block,
``atomic_inc`` when the bit was clear, and at the threshold
``atomic_cmpxchg(&refcnt, 0, 1)`` on every free, also while a pass is queued
and the exchange fails.  The reporter
(``page_reporting_wq``) *scans* only zones whose count is at least
``max_pages`` (``free_pages >= max_pages``); for each set bit
(``scan_zone_bitmap``) it takes the zone lock, and if the block is still a
free block of at least the report order *isolates* it
(``__isolate_free_page``), drops the lock, and clears the bit; 16 isolated
blocks are *reported*, then *returned* to the free lists under one lock hold
(``__return_isolated_page`` -> ``__free_one_page`` without notification, so
no bit is set again and the block lands where ``buddy_merge_likely`` puts
it: the head, for orders >= MAX_ORDER - 2); the scan goes on to the end of
the bitmap and reports the leftover.  When every zone is done, ``refcnt``
goes back to 0: bits set meanwhile wait for the next free that finds the
threshold reached.

There is no Reported state: a block freed or merged again gets its bit set
again and is reported again, even if the host already discarded it and
nobody wrote it since.  Those re-reports are counted.

Deviations, each for a reason: the bitmap lives in shared memory beside the
zones, one int64 word per 64 blocks, rather than a kmalloc'ed per-zone
bitmap; blocks above the report order are tracked by the bit of their first
report-order block (v12 the same: the bit of the freed block's head); the
bit is cleared before the lock is dropped rather than just after with an
atomic ``clear_bit`` and ``atomic_dec``: plain stores, since the free path
sets bits under the same lock here.
"""

from __future__ import annotations

import numpy as np

from shmalloc._libc import atomic_xchg
from shmalloc.buddy import free_one_page
from shmalloc.config import jit
from shmalloc.layout import (
    CALLER_REPORTER,
    H_REPORT_ORDER,
    MIGRATE_MOVABLE,
    PS_BUDDY,
    RS_CYCLES,
    RS_PAGES_NOT_TAKEN,
    RS_REFCNT,
    Z_BITMAP_COUNT,
    Z_NR_PAGES,
    Z_START_PFN,
    bitmap_word,
    get_pageblock_migratetype,
    report_slot,
    zone_base,
)
from shmalloc.lock import zone_lock, zone_unlock
from shmalloc.page_alloc import isolate_free_page

from .process import ReportingDesign, register


@jit
def bitmap_scan(frames, zs, agent, zone, batch_pfn, batch_order, index):
    """``scan_zone_bitmap`` from bit ``index`` on: for each set bit, one
    zone-lock hold that isolates the block if it is still free and clears
    the bit; stop when the batch is full.  Returns (blocks taken, next
    index; -1 when the scan reached the end of the zone's bitmap)."""
    zb = zone_base(zone)
    nbits = zs[zb + Z_NR_PAGES] >> zs[H_REPORT_ORDER]
    n = 0
    while index < nbits and n < len(batch_pfn):
        word = bitmap_word(zs, zone, index)
        if zs[word] == 0:                          # for_each_set_bit skips empty words
            index = (index | 63) + 1
            continue
        bit = np.int64(1) << (index & 63)          # bit 63 too, also as plain Python
        if (zs[word] & bit) != 0:
            pfn = zs[zb + Z_START_PFN] + (index << zs[H_REPORT_ORDER])
            zone_lock(zs, agent, zone, CALLER_REPORTER)
            order = int(frames[pfn]['order'])    # int8 in the record
            if (frames[pfn]['state'] == PS_BUDDY and order >= zs[H_REPORT_ORDER]
                    and get_pageblock_migratetype(zs, pfn) == MIGRATE_MOVABLE):
                if isolate_free_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE):
                    batch_pfn[n] = pfn
                    batch_order[n] = order
                    n += 1
                else:
                    zs[report_slot(zs, RS_PAGES_NOT_TAKEN)] += 1 << order
            zs[word] &= ~bit                       # processed: clear its bit and count
            zs[zb + Z_BITMAP_COUNT] -= 1
            zone_unlock(zs, agent, zone, CALLER_REPORTER)
        index += 1
    return n, (index if index < nbits else -1)


@jit
def bitmap_return(frames, zs, agent, zone, batch_pfn, batch_order, n):
    """``return_isolated_page``: the reported batch back to the free lists
    under one hold, no bits set, nothing marked."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    for i in range(n):
        pfn = batch_pfn[i]
        free_one_page(frames, zs, agent, zone, pfn, batch_order[i],
                      get_pageblock_migratetype(zs, pfn), False, False)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)


@jit
def bitmap_pass_done(zs):
    """``atomic_set(&phconf->refcnt, 0)``: a later free may queue a pass."""
    atomic_xchg(zs, report_slot(zs, RS_REFCNT), 0)


@register("bitmap")
class Bitmap(ReportingDesign):
    """Nitesh v12 (see the module docstring)."""

    def wait(self) -> bool:
        return self.wait_wake()                    # the free path's schedule_work: no delay

    def zone_bits(self, zone: int) -> int:
        return int(self.zs[zone_base(zone) + Z_BITMAP_COUNT])

    def process(self) -> bool:
        """``page_reporting_wq``: every zone at the threshold, then refcnt 0."""
        self.zs[self.stats + RS_CYCLES] += 1
        threshold = self.opts.capacity             # max_pages (the hook reads H_CAPACITY)
        for zone in range(self.m.nr_zones):
            if self.zone_bits(zone) >= threshold and not self.stopping():
                self.scan_zone_bitmap(zone)
        bitmap_pass_done(self.zs)
        return False

    def scan_zone_bitmap(self, zone: int) -> None:
        index = 0
        while index >= 0 and not self.stopping():
            n, index = bitmap_scan(self.frames, self.zs, self.agent, zone, self.batch_pfn,
                                   self.batch_order, index)
            if n:
                self.report(n)                     # the lock is not held here
                bitmap_return(self.frames, self.zs, self.agent, zone, self.batch_pfn,
                              self.batch_order, n)
