"""Nitesh Narayan Lal's page hinting, v12 (August 2019): a bitmap per zone.

The free path (:func:`shmalloc.reporting.bitmap_notify_free`) sets the bit of
the report-order block it just freed, after merging, and counts set bits;
the 16th set bit wakes the reporter at once, with no delay.  The reporter
*scans* the zone's bitmap: for each set bit it clears the bit and, if the
block is still a free block of at least the report order, *isolates* it
(``__isolate_free_page``); 16 such blocks are *reported*; then *returned* to
the free lists, without setting their bits again.

There is no Reported state: a block freed or merged again gets its bit set
again and is reported again, even if the host already discarded it and
nobody wrote it since.  Those re-reports are counted.

Deviations: the bitmap lives in shared memory beside the zones, one int64
word per 64 blocks, rather than a kmalloc'ed per-zone bitmap; blocks above
the report order are tracked by the bit of their first report-order block;
one zone-lock hold scans until the batch is full (v12 took it per block).
"""

from __future__ import annotations

from shmalloc.buddy import free_one_page
from shmalloc.config import BITMAP_WAKE_BITS, jit
from shmalloc.layout import (
    CALLER_REPORTER,
    H_REPORT_ORDER,
    MIGRATE_MOVABLE,
    PS_BUDDY,
    RS_CYCLES,
    RS_PAGES_NOT_TAKEN,
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
    """From bit ``index`` on, clear set bits and isolate the blocks that are
    still free, until the batch is full.  Returns (blocks taken, next index;
    -1 when the scan reached the end of the zone's bitmap)."""
    zb = zone_base(zone)
    nbits = zs[zb + Z_NR_PAGES] >> zs[H_REPORT_ORDER]
    n = 0
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    while index < nbits and n < len(batch_pfn):
        word = bitmap_word(zs, zone, index)
        if zs[word] == 0:                          # skip empty words whole
            index = (index | 63) + 1
            continue
        bit = 1 << (index & 63)
        if (zs[word] & bit) != 0:
            zs[word] &= ~bit
            zs[zb + Z_BITMAP_COUNT] -= 1
            pfn = zs[zb + Z_START_PFN] + (index << zs[H_REPORT_ORDER])
            order = frames[pfn]['order']
            if (frames[pfn]['state'] == PS_BUDDY and order >= zs[H_REPORT_ORDER]
                    and get_pageblock_migratetype(zs, pfn) == MIGRATE_MOVABLE):
                if isolate_free_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE):
                    batch_pfn[n] = pfn
                    batch_order[n] = order
                    n += 1
                else:
                    zs[report_slot(zs, RS_PAGES_NOT_TAKEN)] += 1 << order
        index += 1
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return n, (index if index < nbits else -1)


@jit
def bitmap_return(frames, zs, agent, zone, batch_pfn, batch_order, n):
    """Return a reported batch to the free lists, no bits set, nothing marked."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    for i in range(n):
        pfn = batch_pfn[i]
        free_one_page(frames, zs, agent, zone, pfn, batch_order[i],
                      get_pageblock_migratetype(zs, pfn), False, False)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)


@register("bitmap")
class Bitmap(ReportingDesign):
    """Nitesh v12 (see the module docstring)."""

    def wait(self) -> bool:
        return self.wait_wake()                    # 16 bits set: at once, no delay

    def zone_bits(self, zone: int) -> int:
        return int(self.zs[zone_base(zone) + Z_BITMAP_COUNT])

    def process(self) -> bool:
        self.zs[self.stats + RS_CYCLES] += 1
        for zone in range(self.m.nr_zones):
            index = 0
            while index >= 0 and self.zone_bits(zone) and not self.stopping():
                n, index = bitmap_scan(self.frames, self.zs, self.agent, zone, self.batch_pfn,
                                       self.batch_order, index)
                if n:
                    self.report(n)                 # the lock is not held here
                    bitmap_return(self.frames, self.zs, self.agent, zone, self.batch_pfn,
                                  self.batch_order, n)
        # bits set while we scanned may have reached the threshold again
        return any(self.zone_bits(z) >= BITMAP_WAKE_BITS for z in range(self.m.nr_zones))

