"""Free page reporting as merged in Linux 5.7 (mm/page_reporting.c).

The cycle has four phases, as the kernel's header comment says: *fill*,
*report*, *drain* and *idle*.

fill    under the zone lock, walk ``free_area[order][mt]`` for order >= the
        report order and every migratetype but ISOLATE, skip PageReported
        blocks, pull unreported ones off the list (``__isolate_free_page``)
        into the batch until it holds ``capacity`` ranges;
report  rotate the list so the walk resumes at the first unprocessed block
        (``list_rotate_to_front``), drop the lock, hand the batch to the
        hypervisor and wait for its acknowledgement;
drain   retake the lock, put each block back on its list
        (``__putback_isolated_page``: no notification, no new request) and
        mark it Reported if it did not merge; restart the walk at the head;
idle    when no full batch can be gathered, report the leftover, and go
        idle unless a request arrived meanwhile.

Each list gets a budget of ``ceil(nr_free / (capacity * 16))`` reports per
pass (the kernel's "report an idle system's free memory in about 30
seconds"); a list left with its budget spent sets the state back to
REQUESTED, and the pass runs again after the delay.  A zone is skipped unless
its free memory exceeds the low watermark plus ``capacity`` blocks of the
report order.

Where the model deviates from the kernel, and why:

* the wake-up is a semaphore posted by the free path on the IDLE ->
  REQUESTED edge, the delay a sleep in the reporter process: there is no
  workqueue in user space;
* the lock is a POSIX semaphore, not ``spin_lock_irq``: a holder can be
  preempted, which shows in the hold times;
* the hypervisor answers over a message queue, so a report costs a round
  trip between processes (``--hv-latency`` adds more).

Where the drain puts a block back is ``--putback``: ``head`` (the default) is
5.7, where ``__putback_isolated_page`` called ``__free_one_page`` with no
placement flag and ``buddy_merge_likely()`` is false for order >= MAX_ORDER -
2, so reported order-9 and order-10 blocks went to the head of their lists
(mm/page_alloc.c, 5.7).  Allocations then take host-discarded memory first
(refaults), splits clear PageReported (re-reports), and every later walk of
the list skips the just-reported blocks under the lock.  ``tail`` is 5.10 and
later (Hildenbrand, "mm/page_alloc: place pages to tail in
__putback_isolated_page()", FPI_TO_TAIL).  On acknowledgement 5.7's
``virtballoon_free_page_report`` returns 0 whatever the host's discard did,
so the blocks are marked Reported; only a report that never reached the host
(the stub went away) counts as failed here.
"""

from __future__ import annotations

import math

from shmalloc.config import inline, jit
from shmalloc.freelist import free_list_count, free_list_first, rotate_free_list_to_front
from shmalloc.layout import (
    CALLER_REPORTER,
    MIGRATE_ISOLATE,
    MIGRATE_TYPES,
    PG_REPORTED,
    REPORTING_REQUESTED,
    RS_BUDGET_EXHAUSTED,
    RS_CYCLES,
    RS_PAGES_NOT_TAKEN,
    RS_REPORTED_SKIPPED,
    RS_STATE,
    Z_WMARK_LOW,
    get_pageblock_migratetype,
    pfn_to_zone,
    report_slot,
    zone_base,
)
from shmalloc.lock import zone_lock, zone_unlock
from shmalloc.page_alloc import isolate_free_page, putback_isolated_page, zone_free_pages
from shmalloc.reporting import (
    page_reporting_begin_pass,
    page_reporting_end_pass,
    page_reporting_request,
)

from .process import ReportingDesign, register

STEP_DONE = 0      # the list is walked to its end (the batch may hold leftovers)
STEP_FULL = 1      # the batch is full: report it, then call again to drain
STEP_STOP = 2      # budget spent, a block could not be taken, or a report failed


@inline
def page_reporting_drain(frames, zs, agent, batch_pfn, batch_order, n, reported, to_tail):
    """Put the batch back (at the tail with ``to_tail``, 5.10's FPI_TO_TAIL);
    mark Reported what did not merge.  Zone lock held."""
    for i in range(n):
        pfn = batch_pfn[i]
        order = batch_order[i]
        mt = get_pageblock_migratetype(zs, pfn)
        if putback_isolated_page(frames, zs, agent, pfn_to_zone(zs, pfn), pfn, order, mt,
                                 to_tail):
            if reported:
                frames[pfn]['flags'] |= PG_REPORTED


@jit
def reporting_cycle_step(frames, zs, agent, zone, order, mt, batch_pfn, batch_order, nbatch,
                         drain_n, reported, budget, to_tail):
    """One stretch of ``page_reporting_cycle`` under one zone-lock hold: drain
    the ``drain_n`` blocks of the last report (if any), then fill the batch
    from the head of the list.  Returns (status, entries in the batch)."""
    capacity = len(batch_pfn)
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    if drain_n > 0:
        page_reporting_drain(frames, zs, agent, batch_pfn, batch_order, drain_n, reported,
                             to_tail)
        nbatch = 0
    status = STEP_DONE
    # the old next is not valid: we dropped the lock to report, so start over
    pfn = free_list_first(zs, zone, order, mt)
    if drain_n > 0 and not reported:
        status = STEP_STOP                  # the report failed: leave this list
        pfn = -1
    skipped = 0
    while pfn >= 0:
        nxt = frames[pfn]['next']
        if (frames[pfn]['flags'] & PG_REPORTED) != 0:
            skipped += 1
            pfn = nxt                       # skip what the host already has
            continue
        if budget < 0:
            # budget spent: stay REQUESTED so the pass runs again after the delay
            zs[report_slot(zs, RS_STATE)] = REPORTING_REQUESTED
            zs[report_slot(zs, RS_BUDGET_EXHAUSTED)] += 1
            status = STEP_STOP
            break
        if nbatch == capacity:
            status = STEP_FULL              # report, then come back to drain
            break
        if not isolate_free_page(frames, zs, agent, zone, pfn, order, mt):
            zs[report_slot(zs, RS_PAGES_NOT_TAKEN)] += 1 << order
            status = STEP_STOP              # the zone is at its min watermark
            break
        batch_pfn[nbatch] = pfn
        batch_order[nbatch] = order
        nbatch += 1
        pfn = nxt
    # make the first unprocessed block the head before the lock is dropped
    rotate_free_list_to_front(frames, zs, zone, order, mt, pfn)
    zs[report_slot(zs, RS_REPORTED_SKIPPED)] += skipped    # one store, not one per block
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return status, nbatch


@jit
def drain_batch(frames, zs, agent, zone, batch_pfn, batch_order, n, reported, to_tail):
    """Put a reported leftover batch back (its own lock hold)."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    page_reporting_drain(frames, zs, agent, batch_pfn, batch_order, n, reported, to_tail)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)


@register("mainline")
class Mainline(ReportingDesign):
    """mm/page_reporting.c, phase by phase (see the module docstring)."""

    def start(self) -> None:
        """``page_reporting_register``: request an initial flush of the
        zones; with ``--start reported`` it has run already (the machine's
        free blocks are Reported), and the reporter starts idle."""
        if not self.opts.start_reported:
            page_reporting_request(self.zs, self.agent)

    def process(self) -> bool:
        """``page_reporting_process``: one pass; True if requested again."""
        page_reporting_begin_pass(self.zs)
        self.zs[self.stats + RS_CYCLES] += 1
        for zone in range(self.m.nr_zones):
            if self.process_zone(zone) or self.stopping():
                break
        return page_reporting_end_pass(self.zs)

    def process_zone(self, zone: int) -> int:
        """``page_reporting_process_zone``: every list of the zone, then the
        leftover.  Returns an error from the hypervisor, or 0."""
        zs, opts = self.zs, self.opts
        watermark = int(zs[zone_base(zone) + Z_WMARK_LOW]) + (opts.capacity << opts.report_order)
        if zone_free_pages(zs, zone) <= watermark:
            return 0
        nbatch, err = 0, 0
        for order in range(opts.report_order, self.m.max_order):
            for mt in range(MIGRATE_TYPES):
                if mt == MIGRATE_ISOLATE:
                    continue
                nbatch, err = self.cycle(zone, order, mt, nbatch)
                if err or self.stopping():
                    break
            if err or self.stopping():
                break
        if nbatch:                              # report the leftover before going idle
            err = self.report(nbatch)
            drain_batch(self.frames, zs, self.agent, zone, self.batch_pfn, self.batch_order,
                        nbatch, not err, self.to_tail)
        return err

    def cycle(self, zone: int, order: int, mt: int, nbatch: int) -> tuple[int, int]:
        """``page_reporting_cycle`` on one list: fill, report, drain, ..."""
        if free_list_first(self.zs, zone, order, mt) < 0:
            return nbatch, 0                    # early check, without the lock
        area_nr_free = sum(int(free_list_count(self.zs, zone, order, t))
                           for t in range(MIGRATE_TYPES))
        budget = math.ceil(area_nr_free / (self.opts.capacity * 16))
        status, nbatch = reporting_cycle_step(self.frames, self.zs, self.agent, zone, order, mt,
                                              self.batch_pfn, self.batch_order, nbatch, 0, True,
                                              budget, self.to_tail)
        err = 0
        while status == STEP_FULL:
            err = self.report(nbatch)           # the zone lock is not held here
            budget -= 1
            status, nbatch = reporting_cycle_step(self.frames, self.zs, self.agent, zone, order,
                                                  mt, self.batch_pfn, self.batch_order, nbatch,
                                                  nbatch, err == 0, budget, self.to_tail)
            if self.stopping():
                break
        return nbatch, err
