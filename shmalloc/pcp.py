"""Per-agent page caches: the ``per_cpu_pages`` lists of mm/page_alloc.c.

Order-0 pages are allocated from and freed to a private list per (agent,
zone) without the zone lock.  An empty list is refilled with ``pcp_batch``
pages under one lock acquisition (``rmqueue_bulk``); a list that reaches
``pcp_high`` gives ``pcp_batch`` pages back (``free_pcppages_bulk``), the
oldest first, from the tail.  Kernel defaults: batch 63, high 378.

``drain_all_pages`` in the kernel schedules work on every CPU and waits; here
another process posts a drain request in the agent's slot (``AG_DRAIN_REQ``)
and the agent drains its own lists the next time it enters the allocator or
polls (:func:`pcp_service_drain`), then publishes ``AG_DRAIN_DONE``.  A dead
agent's lists are drained directly by whoever notices (:func:`drain_pages`
with the dead agent as target); no one else ever touches a live agent's
lists.

A pcp page is not free in the buddy sense (it is no PS_BUDDY head and is not
counted in NR_FREE_PAGES), just as in the kernel.
"""

from __future__ import annotations

from .buddy import free_one_page, prep_new_page, rmqueue_smallest
from .config import inline, jit
from .dlist import list_add, list_del
from .layout import (
    AG_DRAIN_DONE,
    AG_DRAIN_REQ,
    AG_PREF_ZONE,
    CALLER_ALLOC,
    CALLER_FREE,
    E_NOMEM,
    H_NR_ZONES,
    H_PCP_BATCH,
    H_PCP_HIGH,
    MIGRATE_MOVABLE,
    PCP_COUNT,
    PCP_HEAD,
    PCP_TAIL,
    PS_PCP,
    agent_base,
    get_pageblock_migratetype,
    next_zone,
    pcp_base,
    pfn_to_zone,
)
from .lock import zone_lock, zone_unlock


@inline
def rmqueue_bulk(frames, zs, agent, zone, count):
    """Move up to ``count`` order-0 pages from the buddy lists to the tail of
    ``agent``'s pcp list for ``zone`` under one zone-lock hold."""
    pb = pcp_base(zs, agent, zone)
    zone_lock(zs, agent, zone, CALLER_ALLOC)
    got = 0
    for _ in range(count):
        pfn = rmqueue_smallest(frames, zs, zone, 0, MIGRATE_MOVABLE)
        if pfn < 0:
            break
        frames[pfn]['order'] = 0
        frames[pfn]['state'] = PS_PCP
        frames[pfn]['owner'] = agent
        list_add(frames, zs, pb + PCP_HEAD, pb + PCP_TAIL, pfn, True)
        got += 1
    zone_unlock(zs, agent, zone, CALLER_ALLOC)
    zs[pb + PCP_COUNT] += got
    return got


@inline
def free_pcppages_bulk(frames, zs, agent, target, zone, count):
    """Give up to ``count`` pages from the tail of ``target``'s pcp list for
    ``zone`` back to the buddy lists; ``agent`` takes the zone lock."""
    pb = pcp_base(zs, target, zone)
    zone_lock(zs, agent, zone, CALLER_FREE)
    freed = 0
    while freed < count:
        pfn = zs[pb + PCP_TAIL]               # the oldest, cache-cold page
        if pfn < 0:
            break
        list_del(frames, zs, pb + PCP_HEAD, pb + PCP_TAIL, pfn)
        free_one_page(frames, zs, agent, zone, pfn, 0, get_pageblock_migratetype(zs, pfn),
                      False, True)
        freed += 1
    zone_unlock(zs, agent, zone, CALLER_FREE)
    zs[pb + PCP_COUNT] -= freed
    return freed


@jit
def drain_pages(frames, zs, agent, target):
    """Empty every pcp list of ``target`` (``drain_pages`` for one CPU)."""
    total = 0
    for zone in range(zs[H_NR_ZONES]):
        n = zs[pcp_base(zs, target, zone) + PCP_COUNT]
        if n > 0:
            total += free_pcppages_bulk(frames, zs, agent, target, zone, n)
    return total


@inline
def pcp_service_drain(frames, zs, agent):
    """Serve a pending drain request posted by another process, if any."""
    ab = agent_base(zs, agent)
    req = zs[ab + AG_DRAIN_REQ]
    if req != zs[ab + AG_DRAIN_DONE]:
        drain_pages(frames, zs, agent, agent)
        zs[ab + AG_DRAIN_DONE] = req


@inline
def pcp_alloc(frames, zs, agent):
    """``rmqueue_pcplist`` over the zonelist: an order-0 page or E_NOMEM."""
    pcp_service_drain(frames, zs, agent)
    zone = zs[agent_base(zs, agent) + AG_PREF_ZONE]
    for _ in range(zs[H_NR_ZONES]):
        pb = pcp_base(zs, agent, zone)
        if zs[pb + PCP_COUNT] == 0:
            rmqueue_bulk(frames, zs, agent, zone, zs[H_PCP_BATCH])
            if zs[pb + PCP_COUNT] == 0:
                zone = next_zone(zs, zone)
                continue
        pfn = zs[pb + PCP_HEAD]
        list_del(frames, zs, pb + PCP_HEAD, pb + PCP_TAIL, pfn)
        zs[pb + PCP_COUNT] -= 1
        prep_new_page(frames, pfn, 0, agent)
        return pfn
    return E_NOMEM


@inline
def pcp_free(frames, zs, agent, pfn):
    """``free_unref_page``: push a validated order-0 page on the agent's pcp
    list; past ``pcp_high`` give a batch back to the buddy lists."""
    pcp_service_drain(frames, zs, agent)
    zone = pfn_to_zone(zs, pfn)
    pb = pcp_base(zs, agent, zone)
    frames[pfn]['state'] = PS_PCP
    frames[pfn]['owner'] = agent
    list_add(frames, zs, pb + PCP_HEAD, pb + PCP_TAIL, pfn, False)
    zs[pb + PCP_COUNT] += 1
    if zs[pb + PCP_COUNT] >= zs[H_PCP_HIGH]:
        free_pcppages_bulk(frames, zs, agent, agent, zone, zs[H_PCP_BATCH])
