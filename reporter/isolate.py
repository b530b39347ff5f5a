"""Michal Hocko's alternative (September 2019): no new page flag and no hook
in the allocator; take the ranges a free-list walk finds and isolate them
with the existing page isolation machinery while the hypervisor works.  The
proposal, in the thread (``../shared/seed-thread.txt``, lines 63-66)::

    What prevents to use the callback to get a list of pfn ranges to work on
    and then use something like start_isolate_page_range on the collected
    pfn ranges to make sure nobody steals pages from under your feet, do
    your thing and drop the isolated state afterwards.

and (lines 68-73) not a generic ``has_unmovable_pages`` but the subset that
steps over free (``PageBuddy``) blocks.  It answers David Hildenbrand's
objection to Wang's walk just above it (lines 58-61): "While a page is
getting processed by the hypervisor (e.g. MADV_DONTNEED), it must not get
reused."

Every ``--delay`` seconds, per zone: *collect* the free blocks of at least
the report order with the callback walk (:mod:`reporter.callback`; here the
callback only records the range); for each range *isolate* it
(``start_isolate_page_range``, mm/page_isolation.c 5.7: per pageblock,
``set_migratetype_isolate`` takes the zone lock once and, when it succeeded,
``drain_all_pages(zone)`` asks every worker holding pcp pages of the zone to
drain them and waits); once ``--capacity`` ranges are isolated *report*
them and wait; then *undo* each range (``undo_isolate_page_range``: per
pageblock, ``unset_migratetype_isolate`` takes the zone lock once, restores
MOVABLE and, in the hold of the block's head, puts the block back with
``__putback_isolated_page``, merging with non-isolated buddies).  Isolated
pages sit on the ISOLATE free list, where allocations never look, and a free
into an isolated pageblock would land there too.

Where the undo puts a block is ``--putback``: ``head`` (default) as in 5.7,
where ``unset_migratetype_isolate`` hands blocks of pageblock order and up
to ``__putback_isolated_page`` without a placement flag (and 2019's kernels
freed them through ``__free_pages``: the head too, for orders >= MAX_ORDER -
2); ``tail`` as since 5.10 (Hildenbrand's FPI_TO_TAIL patch names "page
isolation, when undoing the isolation" as one of its two users).

The drain is ``drain_all_pages``: a request in each worker's slot
(``AG_DRAIN_REQ``, :mod:`shmalloc.pcp`), served the next time the worker
enters its pcp path or polls while idle; the reporter waits for each, as
``flush_work`` does, but only while the run goes on: a worker that stops or
dies stops the run (the launcher's watchdog), and the wait ends with it.
Counted in ``reporting``: ``pcp_drains`` (drain_all_pages calls) and
``drain_requests`` (workers asked).

Deviations, each for a reason:

* the walk visits only orders >= the report order (>= pageblock order),
  whatever ``--walk-order`` says for callback: a smaller free block cannot be
  isolated without isolating its whole pageblock, whose other pages are in
  use, and Hocko's proposal isolated only what is reported;
* isolation works on whole free blocks, not on arbitrary pfn ranges, so
  ``has_unmovable_pages`` never fails and nothing is migrated;
* ``drain_all_pages`` asks only workers with pcp pages in the zone
  (5.7's ``cpus_with_pcps``), and a drain waits for a worker's next pass
  through its pcp path (an idle worker polls every 10 ms) rather than for a
  per-CPU work item;
* the undo takes the block's pageblocks from the last to the first, where
  ``undo_isolate_page_range`` goes from the first: the same holds doing the
  same work, but in 5.7's order the first hold puts the whole block on the
  MOVABLE list while its later pageblocks are still isolated, and an
  allocation between two holds can split it and leave a free piece of an
  isolated pageblock on the MOVABLE list.  The kernel's lists do not mind
  (``list_del`` does not ask which list); this model's lists are kept per
  migratetype, with their counts, and the invariant checker holds every
  free block to the list its pageblock names.  Backwards, the block stays
  on the ISOLATE list until its head's hold, as isolation put it there
  (forwards, head first);
* nothing remembers what was reported: every pass reports every free block
  again (counted as re-reports once their memory is gone from the host).
"""

from __future__ import annotations

import time

import numpy as np

from shmalloc.config import jit
from shmalloc.isolation import set_migratetype_isolate, unset_migratetype_isolate
from shmalloc.layout import (
    AG_DRAIN_DONE,
    AG_DRAIN_REQ,
    AG_PID,
    AG_ROLE,
    CALLER_REPORTER,
    H_PAGEBLOCK_ORDER,
    MIGRATE_ISOLATE,
    PCP_COUNT,
    ROLE_WORKER,
    RS_CYCLES,
    RS_DRAIN_REQUESTS,
    RS_PAGES_NOT_TAKEN,
    RS_PCP_DRAINS,
    get_pageblock_migratetype,
)
from shmalloc.lock import zone_lock, zone_unlock

from .callback import WalkingDesign
from .process import register

DRAIN_POLL_S = 50e-6


@jit
def isolate_pageblock(frames, zs, agent, zone, pfn, order, pageblock):
    """``set_migratetype_isolate`` on one pageblock of the free block at
    ``pfn``: one zone-lock hold."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    ok = set_migratetype_isolate(frames, zs, zone, pfn, order, pageblock)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return ok


@jit
def undo_isolate_page_range(frames, zs, agent, zone, pfn, order, to_tail):
    """``undo_isolate_page_range`` on the isolated free block at ``pfn``:
    ``unset_migratetype_isolate`` on each pageblock still isolated, one
    zone-lock hold each, from the last pageblock back to the block's head
    (see the module docstring)."""
    step = np.int64(1) << zs[H_PAGEBLOCK_ORDER]
    pageblock = pfn + (np.int64(1) << order) - step
    while pageblock >= pfn:
        # 5.7 checks is_migrate_isolate_page before taking the lock, and again inside
        if get_pageblock_migratetype(zs, pageblock) == MIGRATE_ISOLATE:
            zone_lock(zs, agent, zone, CALLER_REPORTER)
            unset_migratetype_isolate(frames, zs, agent, zone, pageblock, to_tail)
            zone_unlock(zs, agent, zone, CALLER_REPORTER)
            # the lock is dropped between pageblocks: workers allocate and free here
        pageblock -= step


@register("isolate")
class Isolate(WalkingDesign):
    """Hocko's isolate-report-undo (see the module docstring)."""

    walk_reported_only = True

    def process(self) -> bool:
        self.zs[self.stats + RS_CYCLES] += 1
        for zone in range(self.m.nr_zones):
            n = self.collect(zone)
            k = 0
            for i in range(n):
                if self.stopping():
                    break                            # the leftover is still undone below
                pfn, order = int(self.walk_pfn[i]), int(self.walk_order[i])
                if not self.start_isolate_page_range(zone, pfn, order):
                    self.zs[self.stats + RS_PAGES_NOT_TAKEN] += 1 << order
                    continue
                self.batch_pfn[k], self.batch_order[k] = pfn, order
                k += 1
                if k == self.opts.capacity:
                    self.report_and_undo(zone, k)
                    k = 0
            if k:
                self.report_and_undo(zone, k)
        return False

    def start_isolate_page_range(self, zone: int, pfn: int, order: int) -> bool:
        """Pageblock by pageblock: one hold each, then ``drain_all_pages``.
        Only the first pageblock can refuse (the block changed since the
        walk); the others are the same free block's."""
        step = 1 << int(self.zs[H_PAGEBLOCK_ORDER])
        for pageblock in range(pfn, pfn + (1 << order), step):
            if not isolate_pageblock(self.frames, self.zs, self.agent, zone, pfn, order,
                                     pageblock):
                return False
            self.drain_all_pages(zone)               # the zone lock is not held here
        return True

    def drain_all_pages(self, zone: int) -> None:
        """``drain_all_pages(zone)``: ask every worker with pcp pages in the
        zone to drain its lists, and wait until each has (or the run stops)."""
        zs, lay = self.zs, self.m.layout
        waiting = []
        for agent in range(self.m.nr_workers):
            base = lay.agent(agent)
            if zs[base + AG_ROLE] != ROLE_WORKER or zs[base + AG_PID] == 0:
                continue
            if zs[lay.pcp(agent, zone) + PCP_COUNT] == 0:
                continue                             # 5.7: only cpus_with_pcps
            zs[base + AG_DRAIN_REQ] += 1
            waiting.append((agent, base, int(zs[base + AG_DRAIN_REQ])))
        zs[self.stats + RS_PCP_DRAINS] += 1
        zs[self.stats + RS_DRAIN_REQUESTS] += len(waiting)
        while waiting and not self.stopping():
            waiting = [(a, base, want) for a, base, want in waiting
                       if int(zs[base + AG_DRAIN_DONE]) < want
                       and zs[lay.pcp(a, zone) + PCP_COUNT] != 0 and zs[base + AG_PID] != 0]
            if waiting:
                time.sleep(DRAIN_POLL_S)

    def report_and_undo(self, zone: int, k: int) -> None:
        self.report(k)                               # the lock is not held here
        for i in range(k):
            undo_isolate_page_range(self.frames, self.zs, self.agent, zone,
                                    int(self.batch_pfn[i]), int(self.batch_order[i]),
                                    self.to_tail)
