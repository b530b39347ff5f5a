"""Host-driven reclaim through the shared allocator state (``--strategy
hostscan``), after HyperAlloc (Wrenger et al., EuroSys'25).

Every 2019 design has the guest tell the host what is free.  HyperAlloc turns
this around: the hypervisor reads the guest's page-frame allocator state
directly, takes free 2 MiB frames itself and marks them evicted; when the
guest allocates from such a frame it first asks for it back, synchronously
(an *install*).  The stub here already maps the metadata, so it does the
same with no reporter process and no message per report:

scan    every ``--scan-interval`` seconds (HyperAlloc's timer, 5 s), per zone,
        take the zone lock for one batch of at most ``--capacity`` free
        blocks of at least the report order whose frames are not all marked
        yet, largest orders first, and take them off the free lists;
discard drop the lock and punch the blocks out of guest memory;
mark    retake the lock, put the blocks back at the tail of their lists and
        mark their frames host-reclaimed; next batch.

How the allocator avoids a block that is being discarded: it never sees it.
During the discard the block is off the free lists (PS_INFLIGHT, owned by the
hypervisor agent, found by the accounting if the stub dies); it returns,
marked, only after the discard has ended.  So the guest neither waits for nor
skips anything, and cannot be handed memory while it is being punched out.

The guest side is in the core (:func:`shmalloc.reporting.hostscan_install`):
an allocation that touches a marked frame clears the mark and counts an
install; marks are per frame (a bit per report-order block, HyperAlloc's
granularity), so splitting or merging a free block cannot lose or misplace
one.  A list walk stops at the first fully marked block: marked blocks go
back at the tail, so what follows is marked too (or was freed since and
waits for the next scan).
"""

from __future__ import annotations

import time

from shmalloc.buddy import free_one_page
from shmalloc.config import jit
from shmalloc.freelist import free_list_first
from shmalloc.layout import (
    CALLER_HOST,
    H_MAX_ORDER,
    H_REPORT_ORDER,
    H_STOP,
    MIGRATE_MOVABLE,
    RS_HV_DISCARD_TICKS,
    RS_HV_ERRORS,
    RS_HV_PAGES_DISCARDED,
    RS_HV_RANGES,
    RS_SCANS,
    STOP_HYPERVISOR,
    get_pageblock_migratetype,
)
from shmalloc.lock import now_ticks, zone_lock, zone_unlock
from shmalloc.page_alloc import take_free_page
from shmalloc.reporting import frame_bit, host_reclaimed

POLL_S = 0.05


@jit
def host_scan_take(frames, zs, agent, zone, batch_pfn, batch_order):
    """One zone-lock hold: take up to a batch of unmarked free blocks of at
    least the report order off the lists.  Returns how many."""
    n = 0
    zone_lock(zs, agent, zone, CALLER_HOST)
    order = zs[H_MAX_ORDER] - 1
    while order >= zs[H_REPORT_ORDER] and n < len(batch_pfn):
        pfn = free_list_first(zs, zone, order, MIGRATE_MOVABLE)
        while pfn >= 0 and n < len(batch_pfn):
            nxt = frames[pfn]['next']
            if host_reclaimed(zs, zone, pfn, order):
                break                       # the marked run at the tail begins
            take_free_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE)
            batch_pfn[n] = pfn
            batch_order[n] = order
            n += 1
            pfn = nxt
        order -= 1
    zone_unlock(zs, agent, zone, CALLER_HOST)
    return n


@jit
def host_scan_mark(frames, zs, agent, zone, batch_pfn, batch_order, n, discarded):
    """Put a discarded batch back at the tails, its frames marked."""
    zone_lock(zs, agent, zone, CALLER_HOST)
    for i in range(n):
        pfn, order = batch_pfn[i], batch_order[i]
        if discarded[i]:
            frame = 1 << zs[H_REPORT_ORDER]
            for p in range(pfn, pfn + max(1 << order, frame), frame):
                word, bit = frame_bit(zs, zone, p)
                zs[word] |= bit
        free_one_page(frames, zs, agent, zone, pfn, order, get_pageblock_migratetype(zs, pfn),
                      True, False)
    zone_unlock(zs, agent, zone, CALLER_HOST)


class HostScanner:
    """The stub's scanning loop (see the module docstring)."""

    def __init__(self, hypervisor, agent: int, capacity: int, interval: float):
        import numpy as np
        self.hv = hypervisor
        self.m = hypervisor.m
        self.agent = agent
        self.interval = interval
        self.batch_pfn = np.zeros(capacity, np.int64)
        self.batch_order = np.zeros(capacity, np.int64)
        self.discarded = np.zeros(capacity, np.bool_)

    def stopping(self) -> bool:
        return self.m.zs[H_STOP] >= STOP_HYPERVISOR

    def scan(self) -> None:
        zs, st = self.m.zs, self.hv.stats
        zs[st + RS_SCANS] += 1
        for zone in range(self.m.nr_zones):
            while not self.stopping():
                n = host_scan_take(self.m.frames, zs, self.agent, zone, self.batch_pfn,
                                   self.batch_order)
                if n == 0:
                    break
                t0 = now_ticks()                   # the zone lock is not held here
                for i in range(n):
                    order = int(self.batch_order[i])
                    err = self.hv.discard(int(self.batch_pfn[i]), order)
                    self.discarded[i] = err == 0
                    if err:
                        zs[st + RS_HV_ERRORS] += 1
                    else:
                        zs[st + RS_HV_PAGES_DISCARDED] += 1 << order
                zs[st + RS_HV_DISCARD_TICKS] += now_ticks() - t0
                zs[st + RS_HV_RANGES] += n
                host_scan_mark(self.m.frames, zs, self.agent, zone, self.batch_pfn,
                               self.batch_order, n, self.discarded)

    def serve(self) -> None:
        next_scan = time.monotonic() + self.interval
        while not self.stopping():
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + self.interval
            time.sleep(POLL_S)
