"""Duyck's free page reporting, v9/v10 (September 2019): Reported pages kept
behind a boundary pointer at the tail of each free list.

Phases, as in the patch's ``page_reporting_cycle``: *fill* (under the zone
lock, for each order from the highest down to the report order, take the
unreported block just in front of the boundary, or else the head of the
list, until the batch is full), *report* (lock dropped), *drain* (put each
block back at the tail, in front of the Reported run, and move the boundary
onto it: it is now the first Reported block), and again while the zone is
still requested; *idle* once a fill comes up short.

What it asks of the allocator (the intrusion Michal Hocko objected to), all
in :mod:`shmalloc.freelist` and :mod:`shmalloc.reporting`:

* ``del_page_from_free_list`` of a Reported block decrements the zone's
  per-order Reported count and, while reporting is active, pulls the
  boundary past the block;
* a tail insertion while reporting is active lands in front of the boundary;
* the free path requests reporting of a zone once ``nr_free[order] >=
  reported[order] + 32``; the work starts 0.1 s later (``HZ / 10``).

Deviations: the request is a semaphore post on the 0 -> 1 edge of the
request count (the kernel's ``atomic_fetch_inc`` + ``schedule_delayed_work``);
blocks are taken without a watermark check, as v9 did; the boundary is a pfn
in the zone struct (-1 for "the end of the list") rather than a
``list_head *`` array shared by all zones; a failed report puts blocks back
unmarked (v9's report callback could not fail).
"""

from __future__ import annotations

from shmalloc._libc import atomic_add
from shmalloc.buddy import free_one_page
from shmalloc.config import inline, jit
from shmalloc.layout import (
    CALLER_REPORTER,
    H_MAX_ORDER,
    H_NR_ZONES,
    H_REPORT_ORDER,
    MIGRATE_ISOLATE,
    MIGRATE_TYPES,
    PG_REPORTED,
    PS_BUDDY,
    RS_CYCLES,
    RS_REFCNT,
    Z_BOUNDARY,
    Z_FREE_HEAD,
    Z_FREE_TAIL,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
    ZRF_REQUESTED,
    free_list_slot,
    get_pageblock_migratetype,
    report_slot,
    zone_base,
)
from shmalloc.lock import zone_lock, zone_unlock
from shmalloc.page_alloc import take_free_page
from shmalloc.reporting import wake_reporter

from .process import ReportingDesign, register


@inline
def get_unreported_page(frames, zs, agent, zone, order, mt):
    """The unreported block in front of the boundary, or the head of the
    list; -1 if every block is Reported (then the boundary covers the list)."""
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    boundary = zs[zb + Z_BOUNDARY + slot]
    pfn = zs[zb + Z_FREE_TAIL + slot] if boundary < 0 else frames[boundary]['prev']
    if pfn < 0:
        return -1
    if (frames[pfn]['flags'] & PG_REPORTED) != 0:
        pfn = zs[zb + Z_FREE_HEAD + slot]
        if (frames[pfn]['flags'] & PG_REPORTED) != 0:
            zs[zb + Z_BOUNDARY + slot] = pfn
            return -1
    take_free_page(frames, zs, agent, zone, pfn, order, mt)
    return pfn


@inline
def put_reported_page(frames, zs, agent, zone, pfn, order, reported):
    """Back at the tail, in front of the Reported run; if it did not merge,
    it becomes the run's first block."""
    mt = get_pageblock_migratetype(zs, pfn)
    free_one_page(frames, zs, agent, zone, pfn, order, mt, True, False)
    if reported and frames[pfn]['state'] == PS_BUDDY and frames[pfn]['order'] == order:
        zb = zone_base(zone)
        zs[zb + Z_REPORTED + order] += 1
        zs[zb + Z_BOUNDARY + free_list_slot(order, mt)] = pfn
        frames[pfn]['flags'] |= PG_REPORTED


@inline
def page_reporting_fill(frames, zs, agent, zone, batch_pfn, batch_order):
    """Fill the batch from the highest order down.  A batch that comes up
    short ends the zone's request.  Zone lock held."""
    count = 0
    capacity = len(batch_pfn)
    order = zs[H_MAX_ORDER] - 1
    while order >= zs[H_REPORT_ORDER]:
        for mt in range(MIGRATE_TYPES):
            if mt == MIGRATE_ISOLATE:
                continue
            while True:
                pfn = get_unreported_page(frames, zs, agent, zone, order, mt)
                if pfn < 0:
                    break
                batch_pfn[count] = pfn
                batch_order[count] = order
                count += 1
                if count == capacity:
                    return count
        order -= 1
    zb = zone_base(zone)
    zs[zb + Z_REPORT_FLAGS] &= ~ZRF_REQUESTED
    atomic_add(zs, report_slot(zs, RS_REFCNT), -1)
    return count


@jit
def boundary_cycle_step(frames, zs, agent, zone, batch_pfn, batch_order, n, reported):
    """One zone-lock hold of ``page_reporting_cycle``.  With ``n == -1`` it
    starts the cycle (reset the boundaries, mark reporting active); else it
    drains the ``n`` blocks just reported.  Then, while the zone is still
    requested, it fills the next batch.  Returns its size; 0 means the cycle
    is over and the boundaries are off."""
    zb = zone_base(zone)
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    if n < 0:
        for order in range(zs[H_REPORT_ORDER], zs[H_MAX_ORDER]):
            for mt in range(MIGRATE_TYPES):
                zs[zb + Z_BOUNDARY + free_list_slot(order, mt)] = -1
        zs[zb + Z_REPORT_FLAGS] |= ZRF_ACTIVE
    for i in range(n):
        put_reported_page(frames, zs, agent, zone, batch_pfn[i], batch_order[i], reported)
    count = 0
    if n < 0 or (zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED) != 0:
        count = page_reporting_fill(frames, zs, agent, zone, batch_pfn, batch_order)
    if count == 0:
        zs[zb + Z_REPORT_FLAGS] &= ~ZRF_ACTIVE
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return count


@jit
def boundary_request_all(zs, agent):
    """``page_reporting_startup``: request every zone (an initial flush)."""
    for zone in range(zs[H_NR_ZONES]):
        zb = zone_base(zone)
        zone_lock(zs, agent, zone, CALLER_REPORTER)
        if (zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED) == 0:
            zs[zb + Z_REPORT_FLAGS] |= ZRF_REQUESTED
            if atomic_add(zs, report_slot(zs, RS_REFCNT), 1) == 0:
                wake_reporter(zs, agent)
        zone_unlock(zs, agent, zone, CALLER_REPORTER)


@register("boundary")
class Boundary(ReportingDesign):
    """Duyck v9 (see the module docstring)."""

    def start(self) -> None:
        """``page_reporting_startup``: request every zone; with ``--start
        reported`` that flush has run already (the free blocks are Reported
        and counted), and no zone is requested."""
        if not self.opts.start_reported:
            boundary_request_all(self.zs, self.agent)

    def zone_requested(self, zone: int) -> bool:
        return bool(self.zs[zone_base(zone) + Z_REPORT_FLAGS] & ZRF_REQUESTED)

    def process(self) -> bool:
        """``page_reporting_process``: cycle through requested zones until no
        zone asks any more."""
        self.zs[self.stats + RS_CYCLES] += 1
        while self.zs[self.stats + RS_REFCNT] > 0 and not self.stopping():
            requested = [z for z in range(self.m.nr_zones) if self.zone_requested(z)]
            if not requested:
                break
            for zone in requested:
                self.cycle(zone)
                if self.stopping():
                    break
        return False

    def cycle(self, zone: int) -> None:
        """``page_reporting_cycle`` on one zone: fill, report, drain, ..."""
        args = (self.frames, self.zs, self.agent, zone, self.batch_pfn, self.batch_order)
        n = boundary_cycle_step(*args, -1, True)
        while n:
            err = self.report(n)                  # the zone lock is not held here
            n = boundary_cycle_step(*args, n, err == 0)
