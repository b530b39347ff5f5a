"""Michal Hocko's alternative (September 2019): no new page flag and no hook
in the allocator; take the ranges a free-list walk finds and isolate them
with the existing page isolation machinery while the hypervisor works.

Every ``--delay`` seconds, per zone: *collect* the free blocks of at least
the report order with the callback walk (:mod:`reporter.callback`); for each
range *isolate* it (``start_isolate_page_range``, one zone-lock hold per
range: refused if a pageblock is already isolated or the range is no longer
wholly free); once ``--capacity`` ranges are isolated *report* them and wait;
then *undo* (``undo_isolate_page_range``: restore MOVABLE and free the range
again, merging with non-isolated buddies).  Isolated pages sit on the ISOLATE
free list, where allocations never look, and a free into an isolated
pageblock would land there too.

Deviations: isolation works on whole free blocks of at least pageblock order
(the report order must be >= 9), not on arbitrary pfn ranges, so there are no
pcp pages to drain and nothing to migrate (see :mod:`shmalloc.isolation`);
one lock hold isolates a whole block rather than one pageblock at a time.
Nothing remembers what was reported: every pass reports every free block
again (counted as re-reports once their memory is gone from the host).
"""

from __future__ import annotations

from shmalloc.config import jit
from shmalloc.isolation import start_isolate_free_block, undo_isolate_free_block
from shmalloc.layout import CALLER_REPORTER, RS_CYCLES, RS_PAGES_NOT_TAKEN
from shmalloc.lock import zone_lock, zone_unlock

from .callback import WalkingDesign
from .process import register


@jit
def isolate_range(frames, zs, agent, zone, pfn, order):
    """``start_isolate_page_range`` on one free block, under the zone lock."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    ok = start_isolate_free_block(frames, zs, zone, pfn, order)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return ok


@jit
def undo_isolate_batch(frames, zs, agent, zone, batch_pfn, batch_order, n):
    """``undo_isolate_page_range`` on a reported batch, one lock hold."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    for i in range(n):
        undo_isolate_free_block(frames, zs, agent, zone, batch_pfn[i], batch_order[i])
    zone_unlock(zs, agent, zone, CALLER_REPORTER)


@register("isolate")
class Isolate(WalkingDesign):
    """Hocko's isolate-report-undo (see the module docstring)."""

    def process(self) -> bool:
        self.zs[self.stats + RS_CYCLES] += 1
        for zone in range(self.m.nr_zones):
            n = self.collect(zone)
            k = 0
            for i in range(n):
                if self.stopping():
                    break                            # the leftover is still undone below
                pfn, order = int(self.walk_pfn[i]), int(self.walk_order[i])
                if not isolate_range(self.frames, self.zs, self.agent, zone, pfn, order):
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

    def report_and_undo(self, zone: int, k: int) -> None:
        self.report(k)                               # the lock is not held here
        undo_isolate_batch(self.frames, self.zs, self.agent, zone, self.batch_pfn,
                           self.batch_order, k)
