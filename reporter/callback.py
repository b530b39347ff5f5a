"""Wei Wang's free page hints, v14 (2018-2019): ``walk_free_mem_block``.

Every ``--delay`` seconds, for each zone and each order from the highest down
to the report order, take the zone lock and call a callback on every free
block of the list (its pfn and size) without taking anything off the list;
drop the lock; send the ranges to the hypervisor.  Nothing is marked, nothing
is isolated: the allocator is not touched at all, which was the point.

``--callback-mode hint`` sends them as hints: the host only records them (as
live migration does, to skip sending free pages).  Safe.

``--callback-mode discard`` asks the host to discard them: unsafe by
construction.  Between the walk and the discard a worker can allocate a
block, write it, and lose what it wrote; its canary reads zero at the next
check (use-after-discard).  ``--hv-latency`` widens the window.

The lock is held for a whole list walk, so ``holdtime-max`` grows with the
length of the longest list, i.e. with guest memory: Linus Torvalds's
objection to walking the free lists under ``zone->lock``.

Deviation: v14 added each range to the virtqueue from the callback, under the
lock; here the callback records into a buffer and the ranges are sent after
the lock is dropped, in reports of ``--capacity`` ranges.
"""

from __future__ import annotations

import numpy as np

from shmalloc import virtqueue
from shmalloc.config import jit
from shmalloc.freelist import free_list_first
from shmalloc.layout import CALLER_REPORTER, MIGRATE_MOVABLE, RS_CYCLES
from shmalloc.lock import zone_lock, zone_unlock

from .process import ReportingDesign, register


@jit
def walk_free_mem_block(frames, zs, agent, zone, order, mt, out_pfn, n):
    """Under the zone lock, record every free block of ``free_area[order][mt]``
    in ``out_pfn[n:]``.  Returns the new count."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    pfn = free_list_first(zs, zone, order, mt)
    while pfn >= 0 and n < len(out_pfn):
        out_pfn[n] = pfn                     # the callback: report_pfn_range()
        n += 1
        pfn = frames[pfn]['next']
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return n


class WalkingDesign(ReportingDesign):
    """What callback and isolate share: a timer, and the free-list walk."""

    def __init__(self, machine, agent, device, opts):
        super().__init__(machine, agent, device, opts)
        most = max(1, machine.nr_pages >> opts.report_order)
        self.walk_pfn = np.zeros(most, np.int64)
        self.walk_order = np.zeros(most, np.int64)

    def wait(self) -> bool:
        return self.sleep(self.opts.delay)          # a timer, no free-path hook

    def collect(self, zone: int) -> int:
        """Walk the zone's lists from the highest order down; returns how
        many (pfn, order) ranges are in ``walk_pfn``/``walk_order``."""
        n = 0
        for order in range(self.m.max_order - 1, self.opts.report_order - 1, -1):
            start = n
            n = walk_free_mem_block(self.frames, self.zs, self.agent, zone, order,
                                    MIGRATE_MOVABLE, self.walk_pfn, n)
            self.walk_order[start:n] = order
        return n


@register("callback")
class Callback(WalkingDesign):
    """Wang v14 (see the module docstring)."""

    @staticmethod
    def message_kind(opts) -> int:
        return virtqueue.KIND_HINT if opts.callback_mode == "hint" else virtqueue.KIND_REPORT

    def process(self) -> bool:
        self.zs[self.stats + RS_CYCLES] += 1
        cap = self.opts.capacity
        for zone in range(self.m.nr_zones):
            n = self.collect(zone)
            for i in range(0, n, cap):               # the lock is not held here
                k = min(cap, n - i)
                self.batch_pfn[:k] = self.walk_pfn[i:i + k]
                self.batch_order[:k] = self.walk_order[i:i + k]
                self.report(k)
                if self.stopping():
                    return False
        return False
