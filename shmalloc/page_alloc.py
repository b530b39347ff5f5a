"""Entry points of the page allocator: ``alloc_pages`` and ``free_pages``.

The compiled paths every process uses.  An agent (a worker, the reporter,
the hypervisor stub, a test) allocates from its preferred zone ``agent %
nr_zones`` and falls back to the others in order, like a zonelist.  Order-0
requests go through the agent's pcp lists unless ``pcp_batch`` is 0.

``free_pages`` validates before it touches anything: a double free, a free of
a block that was never allocated, a wrong order or a foreign owner returns a
negative ``E_*`` code and leaves every list as it was (the Python wrapper in
:mod:`shmalloc.machine` turns the code into an exception).
"""

from __future__ import annotations

from .buddy import free_one_page, prep_new_page, rmqueue_smallest
from .config import inline, jit
from .freelist import add_to_free_list, del_page_from_free_list
from .layout import (
    AG_PREF_ZONE,
    CALLER_ALLOC,
    CALLER_FREE,
    E_BAD_ORDER,
    E_BAD_PFN,
    E_DOUBLE_FREE,
    E_NOMEM,
    E_NOT_ALLOCATED,
    E_NOT_OWNER,
    E_WRONG_ORDER,
    H_MAX_ORDER,
    H_NR_PAGES,
    H_NR_ZONES,
    H_PCP_BATCH,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    PS_ALLOC,
    PS_BUDDY,
    PS_INFLIGHT,
    PS_PCP,
    Z_NR_FREE,
    Z_WMARK_MIN,
    agent_base,
    free_list_slot,
    get_pageblock_migratetype,
    next_zone,
    pfn_to_zone,
    zone_base,
)
from .lock import zone_lock, zone_unlock
from .pcp import pcp_alloc, pcp_free


@inline
def rmqueue(frames, zs, agent, zone, order):
    """Allocate a block of ``order`` from one zone under its lock, or -1."""
    zone_lock(zs, agent, zone, CALLER_ALLOC)
    pfn = rmqueue_smallest(frames, zs, zone, order, MIGRATE_MOVABLE)
    if pfn >= 0:
        prep_new_page(frames, pfn, order, agent)
    zone_unlock(zs, agent, zone, CALLER_ALLOC)
    return pfn


@inline
def alloc_pages(frames, zs, agent, order):
    """Allocate a block of ``2**order`` pages for ``agent``.

    Returns the head pfn, E_NOMEM when no zone has a free block of that
    order, or E_BAD_ORDER."""
    if order < 0 or order >= zs[H_MAX_ORDER]:
        return E_BAD_ORDER
    if order == 0 and zs[H_PCP_BATCH] > 0:
        return pcp_alloc(frames, zs, agent)
    zone = zs[agent_base(zs, agent) + AG_PREF_ZONE]
    for _ in range(zs[H_NR_ZONES]):
        pfn = rmqueue(frames, zs, agent, zone, order)
        if pfn >= 0:
            return pfn
        zone = next_zone(zs, zone)
    return E_NOMEM


@inline
def check_free(frames, agent, pfn, order):
    """0 if ``agent`` may free the order-``order`` block at ``pfn``, else E_*."""
    state = frames[pfn]['state']
    if state == PS_ALLOC:
        if frames[pfn]['order'] != order:
            return E_WRONG_ORDER
        if frames[pfn]['owner'] != agent:
            return E_NOT_OWNER
        return 0
    if state == PS_BUDDY or state == PS_PCP or state == PS_INFLIGHT:
        return E_DOUBLE_FREE
    return E_NOT_ALLOCATED


@inline
def free_pages_from(frames, zs, agent, holder, pfn, order):
    """Free, as ``agent``, the order-``order`` block at ``pfn`` that
    ``holder`` was given: the ownership check is against ``holder``, the
    block goes to ``agent``'s pcp list (order 0) or, under the zone lock
    ``agent`` takes, to the buddy lists, as the kernel frees a page on the
    CPU that frees it, whoever allocated it.  A caller hands a block over by
    naming its holder exactly (a replayed trace, :mod:`shmalloc.replay`, knows
    it from the allocation it replayed); everyone else frees with
    :func:`free_pages`, where the holder is the freer.

    Returns 0, or a negative E_* code without changing anything."""
    if order < 0 or order >= zs[H_MAX_ORDER]:
        return E_BAD_ORDER
    if pfn < 0 or pfn >= zs[H_NR_PAGES] or (pfn & ((1 << order) - 1)) != 0:
        return E_BAD_PFN
    if order == 0 and zs[H_PCP_BATCH] > 0:
        # Only the holder can see its page as allocated-to-itself, and a
        # handed-over page is touched by nobody but the one it was handed to,
        # so this check needs no lock.
        err = check_free(frames, holder, pfn, 0)
        if err == 0:
            pcp_free(frames, zs, agent, pfn)
        return err
    zone = pfn_to_zone(zs, pfn)
    zone_lock(zs, agent, zone, CALLER_FREE)
    err = check_free(frames, holder, pfn, order)
    if err == 0:
        free_one_page(frames, zs, agent, zone, pfn, order, get_pageblock_migratetype(zs, pfn),
                      False, True)
    zone_unlock(zs, agent, zone, CALLER_FREE)
    return err


@inline
def free_pages(frames, zs, agent, pfn, order):
    """Free the order-``order`` block at ``pfn`` held by ``agent``.

    Returns 0, or a negative E_* code without changing anything."""
    return free_pages_from(frames, zs, agent, agent, pfn, order)


@jit
def init_free_lists(frames, zs):
    """``memblock_free_all`` in miniature: every zone starts as free blocks of
    the largest order, in ascending pfn order.  Runs before anyone attaches,
    so it takes no lock."""
    max_block = 1 << (zs[H_MAX_ORDER] - 1)
    nr_pages = zs[H_NR_PAGES]
    for pfn in range(0, nr_pages, max_block):
        add_to_free_list(frames, zs, pfn_to_zone(zs, pfn), pfn, zs[H_MAX_ORDER] - 1,
                         MIGRATE_MOVABLE, True)


@inline
def zone_free_pages(zs, zone):
    """NR_FREE_PAGES of ``zone``: pages on its non-isolated free lists."""
    zb = zone_base(zone)
    total = 0
    for order in range(zs[H_MAX_ORDER]):
        total += zs[zb + Z_NR_FREE + free_list_slot(order, MIGRATE_MOVABLE)] << order
    return total


@inline
def take_free_page(frames, zs, agent, zone, pfn, order, mt):
    """Take the free block at ``pfn`` off its list into ``agent``'s batch:
    PS_INFLIGHT, on no list, owned by ``agent`` (found by the accounting if
    the agent dies).  Zone lock held."""
    del_page_from_free_list(frames, zs, zone, pfn, order, mt)
    frames[pfn]['order'] = order
    frames[pfn]['state'] = PS_INFLIGHT
    frames[pfn]['owner'] = agent


@inline
def isolate_free_page(frames, zs, agent, zone, pfn, order, mt):
    """``__isolate_free_page``: :func:`take_free_page`, unless that would take
    the zone below its min watermark (as if the block were being allocated).
    Zone lock held.  Returns True if taken."""
    if mt != MIGRATE_ISOLATE:
        if zone_free_pages(zs, zone) - (1 << order) < zs[zone_base(zone) + Z_WMARK_MIN]:
            return False
    take_free_page(frames, zs, agent, zone, pfn, order, mt)
    return True


@inline
def putback_isolated_page(frames, zs, agent, zone, pfn, order, mt, to_tail):
    """``__putback_isolated_page``: return a batch block to its free list
    (merging as usual) without notifying reporting.  ``to_tail`` is 5.10's
    FPI_TO_TAIL (``--putback tail``); without it the block goes where
    ``__free_one_page`` puts any block (5.7: the head, for orders >=
    MAX_ORDER - 2).  Zone lock held.  Returns True if the block is still a
    free block of that order (it did not merge), i.e. it may be marked
    Reported."""
    free_one_page(frames, zs, agent, zone, pfn, order, mt, to_tail, False)
    return frames[pfn]['state'] == PS_BUDDY and frames[pfn]['order'] == order
