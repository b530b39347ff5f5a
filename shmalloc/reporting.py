"""The core's side of free page reporting: the free-path hook and the
request state machine (mm/page_reporting.h and the top of
mm/page_reporting.c, Linux 5.7).

A design never reaches into the allocator except through what is here and in
:mod:`shmalloc.freelist` / :mod:`shmalloc.page_alloc` (``isolate_free_page``,
``putback_isolated_page``): the core offers the hook, the zone lock and the
free-list primitives; the design (``reporter/``) supplies its cycle.  The
hooks of the three designs that have one live side by side here, in the
hot path's own words: mainline's request, Duyck's per-zone high-water mark
(with the boundary bookkeeping in :mod:`shmalloc.freelist`), and Nitesh
Narayan Lal's bitmap.

``prdev->state`` lives in shared memory (``RS_STATE``) and moves
IDLE -> REQUESTED -> ACTIVE -> IDLE with atomic exchanges, as in the kernel.
Only the IDLE -> REQUESTED edge wakes the reporter: it posts the run's wake
semaphore (the reporter's ``schedule_delayed_work``).
"""

from __future__ import annotations

import numpy as np

from ._libc import atomic_add, atomic_cas, atomic_or, atomic_xchg, sem_post
from .config import PAGE_REPORTING_HWM, inline, jit
from .layout import (
    AG_SEM_AUX,
    H_CAPACITY,
    H_REPORT_ORDER,
    H_STRATEGY,
    HOOK_BITMAP,
    HOOK_BOUNDARY,
    HOOK_HOSTSCAN,
    HOOK_MAINLINE,
    HOOK_NONE,
    MIGRATE_TYPES,
    REPORTING_ACTIVE,
    REPORTING_IDLE,
    REPORTING_REQUESTED,
    RS_INSTALLS,
    RS_REFCNT,
    RS_REQUESTS,
    RS_STATE,
    Z_BITMAP_COUNT,
    Z_DESIGN_HOOK_CALLS,
    Z_NR_FREE,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    Z_START_PFN,
    ZRF_REQUESTED,
    agent_base,
    bitmap_word,
    free_list_slot,
    report_slot,
    zone_base,
)


@inline
def wake_reporter(zs, agent):
    """Post the run's wake semaphore: the reporter's schedule_delayed_work."""
    atomic_add(zs, report_slot(zs, RS_REQUESTS), 1)
    sem_post(zs[agent_base(zs, agent) + AG_SEM_AUX])


@inline
def page_reporting_request(zs, agent):
    """``__page_reporting_request``: REQUESTED, and wake the reporter if it
    was idle.  Safe from any process at any time."""
    st = report_slot(zs, RS_STATE)
    if zs[st] == REPORTING_REQUESTED:
        return
    if atomic_xchg(zs, st, REPORTING_REQUESTED) == REPORTING_IDLE:
        wake_reporter(zs, agent)


@inline
def boundary_notify_free(zs, agent, zone, order):
    """Duyck v9 ``page_reporting_notify_free``: request the zone once its
    free list of this order holds HWM more blocks than are Reported.  Zone
    lock held (the zone's flags are protected by it)."""
    zb = zone_base(zone)
    if (zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED) != 0:
        return
    nr_free = 0
    for mt in range(MIGRATE_TYPES):
        nr_free += zs[zb + Z_NR_FREE + free_list_slot(order, mt)]
    if nr_free < zs[zb + Z_REPORTED + order] + PAGE_REPORTING_HWM:
        return
    zs[zb + Z_REPORT_FLAGS] |= ZRF_REQUESTED
    if atomic_add(zs, report_slot(zs, RS_REFCNT), 1) == 0:
        wake_reporter(zs, agent)                 # schedule_delayed_work(HZ / 10)


@inline
def bitmap_notify_free(zs, agent, zone, pfn):
    """Nitesh v12 ``__page_reporting_enqueue``: set the bit of the
    report-order block just freed (after merging), counting newly set bits
    in the zone's ``free_pages``; when the zone has at least ``max_pages``
    (``--capacity``, 16) set bits and no pass is queued or running
    (``atomic_cmpxchg(&refcnt, 0, 1)``), wake the reporter at once.  Zone
    lock held.

    With v12's atomics, each a locked instruction: ``bitmap_set_bit``'s
    ``test_and_set_bit`` on every such free and its ``atomic_inc`` of
    ``free_pages`` when the bit was clear; then, once the zone is at the
    threshold, the ``atomic_cmpxchg`` on every free, whether or not a pass
    is already queued (v12 reads only ``free_pages`` first): while the
    reporter works, each free past the threshold pays a failing locked
    cmpxchg on the one ``refcnt`` every cpu shares."""
    zb = zone_base(zone)
    word, bit = frame_bit(zs, zone, pfn)
    if (atomic_or(zs, word, bit) & bit) == 0:          # test_and_set_bit
        atomic_add(zs, zb + Z_BITMAP_COUNT, 1)          # atomic_inc(&zone->free_pages)
    if zs[zb + Z_BITMAP_COUNT] >= zs[H_CAPACITY]:      # atomic_read(&zone->free_pages)
        if atomic_cas(zs, report_slot(zs, RS_REFCNT), 0, 1) == 0:
            wake_reporter(zs, agent)             # schedule_work(&reporting_work)


@inline
def frame_bit(zs, zone, pfn):
    """(word slot, bit) of the report-order frame holding ``pfn`` in the
    zone's frame bitmap (the bitmap and hostscan designs)."""
    index = (pfn - zs[zone_base(zone) + Z_START_PFN]) >> zs[H_REPORT_ORDER]
    return bitmap_word(zs, zone, index), np.int64(1) << (index & 63)


@inline
def host_reclaimed(zs, zone, pfn, order):
    """Every frame of the block is marked host-reclaimed (hostscan)."""
    frame = np.int64(1) << zs[H_REPORT_ORDER]
    for p in range(pfn, pfn + max(np.int64(1) << order, frame), frame):
        word, bit = frame_bit(zs, zone, p)
        if (zs[word] & bit) == 0:
            return False
    return True


@inline
def hostscan_install(zs, zone, pfn, order):
    """The guest allocates a block: every host-reclaimed frame it touches is
    installed again (HyperAlloc's synchronous install request; here the
    allocator clears the mark and counts it, and the worker's first write
    refaults as usual).  Marks are per frame, so a split or merge of a free
    block never changes them; only this allocation path clears one.
    Zone lock held."""
    frame = np.int64(1) << zs[H_REPORT_ORDER]
    first = pfn & ~(frame - 1)
    for p in range(first, pfn + (np.int64(1) << order), frame):
        word, bit = frame_bit(zs, zone, p)
        if (zs[word] & bit) != 0:
            zs[word] &= ~bit
            atomic_add(zs, report_slot(zs, RS_INSTALLS), 1)


@inline
def page_reporting_free_hook(zs, agent, zone, pfn, order):
    """Called from the hot path in ``free_one_page`` after a free (not a
    put-back) merged into a block of ``order``: the installed design's
    hook.  Below the report order it costs two loads and a compare; past it
    each call is counted in the zone (the zone lock is held), so ``shmalloc
    compare`` can charge the calls the hook's measured cost."""
    hook = zs[H_STRATEGY]
    if hook == HOOK_NONE or hook == HOOK_HOSTSCAN or order < zs[H_REPORT_ORDER]:
        return
    zs[zone_base(zone) + Z_DESIGN_HOOK_CALLS] += 1      # counted: compare's hook cost
    if hook == HOOK_MAINLINE:
        page_reporting_request(zs, agent)        # page_reporting_notify_free
    elif hook == HOOK_BOUNDARY:
        boundary_notify_free(zs, agent, zone, order)
    elif hook == HOOK_BITMAP:
        bitmap_notify_free(zs, agent, zone, pfn)


@jit
def page_reporting_begin_pass(zs):
    """A pass starts: ACTIVE, so that requests during it are noticed."""
    atomic_xchg(zs, report_slot(zs, RS_STATE), REPORTING_ACTIVE)


@jit
def page_reporting_end_pass(zs):
    """A pass ends: ACTIVE -> IDLE, unless a request arrived meanwhile (or the
    budget ran out); True then, and the pass runs again after the delay."""
    st = report_slot(zs, RS_STATE)
    return atomic_cas(zs, st, REPORTING_ACTIVE, REPORTING_IDLE) == REPORTING_REQUESTED
