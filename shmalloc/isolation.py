"""Page isolation of free blocks (mm/page_isolation.c, Linux 5.7, in
miniature).

``start_isolate_page_range`` walks a pageblock-aligned range one pageblock
at a time; for each, ``set_migratetype_isolate`` takes the zone lock, refuses
a pageblock that is already isolated (or has pages it cannot move), sets it
MIGRATE_ISOLATE, moves the pageblock's free pages to the ISOLATE free lists
(``move_freepages_block``), drops the lock, and then, only if the isolation
succeeded (``if (!ret) drain_all_pages(zone)``), drains the pcp lists: pages
of the range may sit on another CPU's pcp list, where an allocation would
still find them.  Every CPU with pcp pages in the zone drains its lists, and
its next allocations refill them through ``rmqueue_bulk`` under the zone
lock.

``undo_isolate_page_range`` walks the range again and, for each pageblock
still isolated, calls ``unset_migratetype_isolate``, which takes the zone
lock once per pageblock.  If the pageblock starts with a free block of at
least pageblock order whose buddy is not isolated, it takes the block off
the ISOLATE list (``__isolate_free_page``), restores the pageblock's
migratetype and puts the block back with ``__putback_isolated_page``, so it
merges with that buddy and lands where ``__free_one_page`` puts it (5.7: the
head, unless ``buddy_merge_likely``; the tail since 5.10); otherwise
(``move_freepages_block``) it moves every free block headed in the pageblock
to the MOVABLE list without merging (``move_to_free_list``: ``list_move``,
the head, in 5.7; the tail since 5.10) and restores the migratetype.

Here the ranges are whole free blocks of at least pageblock order (what
Michal Hocko proposed to isolate around a report).  :func:`set_migratetype_isolate`
is one pageblock's hold: on the block's first pageblock it checks that the
block is still a free block of that order, sets the pageblock ISOLATE and
moves the whole block to the ISOLATE list (``move_freepages_block`` finds
the block's head there); on its later pageblocks only the migratetype
changes (their pages are the same free block's tail pages).  The caller
drains after each pageblock isolated (:mod:`reporter.isolate`).
:func:`unset_migratetype_isolate` is one pageblock's hold of the undo; the
caller undoes a block's pageblocks from the last to the first (see
:mod:`reporter.isolate` for why), so the putback comes in the hold of the
block's head, when no other pageblock of the block is isolated any more.  A
pageblock that holds allocated pages is never asked for, so
``has_unmovable_pages`` and migration do not arise.  Isolated pages stay out
of NR_FREE_PAGES.  All functions here expect the zone lock held.
"""

from __future__ import annotations

from .buddy import free_one_page
from .config import inline
from .freelist import add_to_free_list, del_page_from_free_list
from .layout import (
    H_MAX_ORDER,
    H_PAGEBLOCK_ORDER,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    PS_BUDDY,
    get_pageblock_migratetype,
    pageblock_slot,
)


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
def unset_migratetype_isolate(frames, zs, agent, zone, pageblock, to_tail):
    """5.7's ``unset_migratetype_isolate`` on ``pageblock`` (a pfn): nothing
    if it is not isolated; a free block of at least pageblock order headed
    here whose buddy is not isolated (or of the highest order, which has no
    buddy to merge with) goes back through ``__putback_isolated_page``,
    merging; else every free block headed in the pageblock moves to the
    MOVABLE list (``move_freepages_block``).  ``to_tail``: 5.10's placement."""
    if get_pageblock_migratetype(zs, pageblock) != MIGRATE_ISOLATE:
        return
    pb_order = zs[H_PAGEBLOCK_ORDER]
    order = int(frames[pageblock]['order'])    # int8 in the record
    if frames[pageblock]['state'] == PS_BUDDY and order >= pb_order:
        # the buddy of a highest-order block lies beyond the block pairs the
        # machine covers: never isolated, never a merge
        if (order >= zs[H_MAX_ORDER] - 1
                or get_pageblock_migratetype(zs, pageblock ^ (1 << order)) != MIGRATE_ISOLATE):
            del_page_from_free_list(frames, zs, zone, pageblock, order, MIGRATE_ISOLATE)
            zs[pageblock_slot(zs, pageblock)] = MIGRATE_MOVABLE
            free_one_page(frames, zs, agent, zone, pageblock, order, MIGRATE_MOVABLE, to_tail,
                          False)
            return
    pfn = pageblock
    end = pageblock + (1 << pb_order)
    while pfn < end:                       # move_freepages: page by page, free heads moved
        if frames[pfn]['state'] == PS_BUDDY:
            order = int(frames[pfn]['order'])
            del_page_from_free_list(frames, zs, zone, pfn, order, MIGRATE_ISOLATE)
            add_to_free_list(frames, zs, zone, pfn, order, MIGRATE_MOVABLE, to_tail)
            pfn += 1 << order
        else:
            pfn += 1
    zs[pageblock_slot(zs, pageblock)] = MIGRATE_MOVABLE
