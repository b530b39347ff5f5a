"""Host-driven reclaim through the shared allocator state (``--strategy
hostscan``), after HyperAlloc (Wrenger et al., EuroSys'25).

Every 2019 design has the guest tell the host what is free.  HyperAlloc turns
this around: the hypervisor reads the guest's page-frame allocator state
directly, takes free 2 MiB frames itself and marks them evicted; when the
guest allocates from such a frame it first asks for it back, synchronously
(an *install*).  The stub here already maps the metadata, so it does the
same with no reporter process and no message per report:

scan    every ``--scan-interval`` seconds (HyperAlloc's timer, 5 s), per zone
        and per order from the largest down to the report order, walk the
        free list once: take the zone lock, skip blocks whose frames are all
        marked, take up to ``--capacity`` unmarked blocks off the list, and
        rotate the list so that the next hold resumes where this one
        stopped;
discard drop the lock and punch out of guest memory the frames of each block
        that are not marked yet (a block a merge put together from a
        reclaimed half and a half the guest wrote since is only partly
        marked: the marked half is not punched, nor counted, again);
mark    retake the lock, mark the frames just discarded host-reclaimed and
        put the blocks back at the tail of their lists; next batch.

How the allocator avoids a block that is being discarded: it never sees it.
During the discard the block is off the free lists (PS_INFLIGHT, owned by the
hypervisor agent, found by the accounting if the stub dies); it returns,
marked, only after the discard has ended.  So the guest neither waits for nor
skips anything, and cannot be handed memory while it is being punched out.

The guest side is in the core (:func:`shmalloc.reporting.hostscan_install`):
an allocation that touches a marked frame clears the mark and counts an
install; marks are per frame (a bit per report-order block, HyperAlloc's
granularity), so splitting or merging a free block cannot lose or misplace
one.

The walk skips marked blocks rather than stopping at the first one: marked
blocks do not stay in a run at the tail (``expand`` puts the still-marked
upper half of a split block at the head of a lower list, and a merge on
put-back can leave a partly marked block anywhere), and HyperAlloc's host
scans the allocator's frame state linearly, skipping evicted frames, rather
than trusting an order in the lists.  Keeping marked remainders at the tail
instead would have put a hostscan test into ``expand``, on the allocation
path.  The walk's budget is one lap per list and scan: it visits at most as
many blocks as the list held when the scan reached it (the rotation makes
each hold start after the last one's stop, and the blocks it put back,
marked, sit behind at the tail); blocks freed during the scan wait for the
next one.
"""

from __future__ import annotations

import time

import numpy as np

from shmalloc.buddy import free_one_page
from shmalloc.config import jit
from shmalloc.freelist import free_list_first, rotate_free_list_to_front
from shmalloc.layout import (
    CALLER_HOST,
    H_BITMAP_WORDS,
    H_OFF_STRAT,
    H_REPORT_ORDER,
    H_STOP,
    MIGRATE_MOVABLE,
    RS_HV_DISCARD_TICKS,
    RS_HV_ERRORS,
    RS_HV_PAGES_DISCARDED,
    RS_HV_RANGES,
    RS_SCANS,
    STOP_HYPERVISOR,
    Z_NR_FREE,
    Z_START_PFN,
    ZONE_STRIDE,
    ZONES_OFF,
    free_list_slot,
    get_pageblock_migratetype,
    zone_base,
)
from shmalloc.lock import now_ticks, zone_lock, zone_unlock
from shmalloc.page_alloc import take_free_page
from shmalloc.reporting import frame_bit, host_reclaimed

POLL_S = 0.05


@jit
def host_scan_take(frames, zs, agent, zone, order, batch_pfn, batch_order, budget):
    """One zone-lock hold on ``free_area[order]``: from the head, visit at
    most ``budget`` blocks, skip the marked ones, take up to a batch of
    unmarked ones off the list; rotate the list so the next hold resumes at
    the first block not visited.  Returns (blocks taken, blocks visited)."""
    n = 0
    visited = 0
    zone_lock(zs, agent, zone, CALLER_HOST)
    pfn = free_list_first(zs, zone, order, MIGRATE_MOVABLE)
    while pfn >= 0 and n < len(batch_pfn) and visited < budget:
        nxt = frames[pfn]['next']
        visited += 1
        if not host_reclaimed(zs, zone, pfn, order):
            take_free_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE)
            batch_pfn[n] = pfn
            batch_order[n] = order
            n += 1
        pfn = nxt
    # the old next is valid only while we hold the lock: resume there next time
    rotate_free_list_to_front(frames, zs, zone, order, MIGRATE_MOVABLE, pfn)
    zone_unlock(zs, agent, zone, CALLER_HOST)
    return n, visited


@jit
def host_scan_mark(frames, zs, agent, zone, batch_pfn, batch_order, n, mark_pfn, nmarks):
    """Mark the ``nmarks`` frames of ``mark_pfn`` host-reclaimed (those the
    discard punched out) and put the batch back at the tails."""
    zone_lock(zs, agent, zone, CALLER_HOST)
    for j in range(nmarks):
        word, bit = frame_bit(zs, zone, mark_pfn[j])
        zs[word] |= bit
    for i in range(n):
        pfn = batch_pfn[i]
        free_one_page(frames, zs, agent, zone, pfn, batch_order[i],
                      get_pageblock_migratetype(zs, pfn), True, False)
    zone_unlock(zs, agent, zone, CALLER_HOST)


def unreclaimed_runs(zs, zone: int, pfn: int, order: int) -> list[tuple[int, int]]:
    """The runs ``(first pfn, frames)`` of the block's report-order frames
    not marked host-reclaimed.  Read without the zone lock, as plain Python
    (the stub compiles nothing): the block is in the batch, off the free
    lists, so no allocation can install its frames, and only this scanner
    marks them."""
    shift = int(zs[H_REPORT_ORDER])
    words = int(zs[H_BITMAP_WORDS])
    base = int(zs[H_OFF_STRAT]) + zone * words
    start = int(zs[ZONES_OFF + zone * ZONE_STRIDE + Z_START_PFN])
    runs: list[tuple[int, int]] = []
    for p in range(pfn, pfn + (1 << order), 1 << shift):
        index = (p - start) >> shift
        if (int(zs[base + (index >> 6)]) >> (index & 63)) & 1:
            continue
        if runs and runs[-1][0] + (runs[-1][1] << shift) == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


class HostScanner:
    """The stub's scanning loop (see the module docstring)."""

    def __init__(self, hypervisor, agent: int, capacity: int, interval: float):
        self.hv = hypervisor
        self.m = hypervisor.m
        self.agent = agent
        self.interval = interval
        self.batch_pfn = np.zeros(capacity, np.int64)
        self.batch_order = np.zeros(capacity, np.int64)
        frames = 1 << max(0, self.m.max_order - 1 - int(self.m.zs[H_REPORT_ORDER]))
        self.mark_pfn = np.zeros(capacity * frames, np.int64)

    def stopping(self) -> bool:
        return self.m.zs[H_STOP] >= STOP_HYPERVISOR

    def scan(self) -> None:
        zs, st = self.m.zs, self.hv.stats
        zs[st + RS_SCANS] += 1
        for zone in range(self.m.nr_zones):
            for order in range(self.m.max_order - 1, int(zs[H_REPORT_ORDER]) - 1, -1):
                self.scan_list(zone, order)

    def scan_list(self, zone: int, order: int) -> None:
        """One lap of ``free_area[order]``: batch by batch, each taken off
        the list, discarded with the lock dropped, and put back marked."""
        zs, st = self.m.zs, self.hv.stats
        budget = int(zs[zone_base(zone) + Z_NR_FREE + free_list_slot(order, MIGRATE_MOVABLE)])
        while budget > 0 and not self.stopping():
            n, visited = host_scan_take(self.m.frames, zs, self.agent, zone, order,
                                        self.batch_pfn, self.batch_order, budget)
            budget -= visited
            if n == 0:
                break
            t0 = now_ticks()                       # the zone lock is not held here
            nmarks = 0
            shift = int(zs[H_REPORT_ORDER])
            for i in range(n):
                for first, count in unreclaimed_runs(zs, zone, int(self.batch_pfn[i]), order):
                    if self.hv.discard_pages(first, count << shift):
                        zs[st + RS_HV_ERRORS] += 1
                        continue
                    zs[st + RS_HV_PAGES_DISCARDED] += count << shift
                    for k in range(count):
                        self.mark_pfn[nmarks] = first + (k << shift)
                        nmarks += 1
            zs[st + RS_HV_DISCARD_TICKS] += now_ticks() - t0
            zs[st + RS_HV_RANGES] += n
            host_scan_mark(self.m.frames, zs, self.agent, zone, self.batch_pfn,
                           self.batch_order, n, self.mark_pfn, nmarks)

    def serve(self) -> None:
        next_scan = time.monotonic() + self.interval
        while not self.stopping():
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + self.interval
            time.sleep(POLL_S)
