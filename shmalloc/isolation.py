"""Page isolation of free blocks (mm/page_isolation.c, Linux 5.7, in
miniature).

``start_isolate_page_range`` walks a pageblock-aligned range one pageblock
at a time; for each, ``set_migratetype_isolate`` takes the zone lock, refuses
a pageblock that is already isolated (or has pages it cannot move), sets it
MIGRATE_ISOLATE, moves the pageblock's free pages to the ISOLATE free lists
(``move_freepages_block``), drops the lock, and then calls
``drain_all_pages(zone)`` unconditionally: pages of the range may sit on
another CPU's pcp list, where an allocation would still find them.  Every
CPU with pcp pages in the zone drains its lists, and its next allocations
refill them through ``rmqueue_bulk`` under the zone lock.
``undo_isolate_page_range`` restores each pageblock
(``unset_migratetype_isolate``); a free block of at least pageblock order is
taken off the ISOLATE list and put back with ``__putback_isolated_page``, so
it merges with non-isolated buddies and lands where that puts it (5.7: the
head for orders >= MAX_ORDER - 2; the tail since 5.10).

Here the ranges are whole free blocks of at least pageblock order (what
Michal Hocko proposed to isolate around a report).  :func:`set_migratetype_isolate`
is one pageblock's hold: on the block's first pageblock it checks that the
block is still a free block of that order, sets the pageblock ISOLATE and
moves the whole block to the ISOLATE list (``move_freepages_block`` finds
the block's head there); on its later pageblocks only the migratetype
changes (their pages are the same free block's tail pages).  The caller
drains after each pageblock (:mod:`reporter.isolate`).  A pageblock that
holds allocated pages is never asked for, so ``has_unmovable_pages`` and
migration do not arise.  Isolated pages stay out of NR_FREE_PAGES.  All
functions here expect the zone lock held.
"""

from __future__ import annotations

from .buddy import free_one_page
from .config import inline
from .freelist import add_to_free_list, del_page_from_free_list
from .layout import (
    H_PAGEBLOCK_ORDER,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    PS_BUDDY,
    get_pageblock_migratetype,
    pageblock_slot,
)


@inline
def set_pageblocks_migratetype(zs, pfn, order, mt):
    """``set_pageblock_migratetype`` on every pageblock of the block."""
    step = 1 << zs[H_PAGEBLOCK_ORDER]
    for p in range(pfn, pfn + (1 << order), step):
        zs[pageblock_slot(zs, p)] = mt


@inline
def set_migratetype_isolate(frames, zs, zone, pfn, order, pageblock):
    """Isolate ``pageblock`` (a pfn) of the free block at ``pfn``: False if
    it is isolated already or, on the block's first pageblock, if the block
    is no longer a free block of that order (then nothing changed)."""
    if get_pageblock_migratetype(zs, pageblock) == MIGRATE_ISOLATE:
        return False
    if pageblock == pfn:
        if frames[pfn]['state'] != PS_BUDDY or frames[pfn]['order'] != order:
            return False
        del_page_from_free_list(frames, zs, zone, pfn, order, MIGRATE_MOVABLE)
        zs[pageblock_slot(zs, pageblock)] = MIGRATE_ISOLATE
        add_to_free_list(frames, zs, zone, pfn, order, MIGRATE_ISOLATE, False)
    else:
        zs[pageblock_slot(zs, pageblock)] = MIGRATE_ISOLATE
    return True


@inline
def undo_isolate_free_block(frames, zs, agent, zone, pfn, order, to_tail):
    """``undo_isolate_page_range`` on an isolated free block: restore the
    migratetype and put the block back (``__putback_isolated_page``, at the
    tail with ``to_tail``), merging with non-isolated buddies."""
    del_page_from_free_list(frames, zs, zone, pfn, order, MIGRATE_ISOLATE)
    set_pageblocks_migratetype(zs, pfn, order, MIGRATE_MOVABLE)
    free_one_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE, to_tail, False)
