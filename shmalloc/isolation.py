"""Page isolation of free blocks (mm/page_isolation.c in miniature).

``start_isolate_free_block`` and ``undo_isolate_free_block`` are what Michal
Hocko proposed the reporting side use instead of a new page flag: set the
pageblocks of a wholly free range to MIGRATE_ISOLATE and move its free pages
to the ISOLATE free list, where the allocator never looks
(``start_isolate_page_range``); report; then restore the migratetype and
free the range again, merging with its non-isolated buddies
(``undo_isolate_page_range``).

The kernel isolates arbitrary pfn ranges, pageblock by pageblock, and must
drain the per-cpu lists because some pages of a range may sit on them
(``drain_all_pages``) and migrate the pages in use.  Here only whole free
blocks of at least pageblock order are isolated: such a block has no page on
any pcp list and none in use, so there is nothing to drain or migrate, and a
block that is no longer a free block of that order when the lock is taken is
simply refused.  Isolated pages stay out of NR_FREE_PAGES.  All functions
expect the zone lock held.
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
def start_isolate_free_block(frames, zs, zone, pfn, order):
    """Isolate the free block at ``pfn``: refused (False) if it is no longer a
    free block of that order or a pageblock of it is already isolated."""
    if frames[pfn]['state'] != PS_BUDDY or frames[pfn]['order'] != order:
        return False
    step = 1 << zs[H_PAGEBLOCK_ORDER]
    for p in range(pfn, pfn + (1 << order), step):
        if get_pageblock_migratetype(zs, p) == MIGRATE_ISOLATE:
            return False
    del_page_from_free_list(frames, zs, zone, pfn, order, MIGRATE_MOVABLE)
    set_pageblocks_migratetype(zs, pfn, order, MIGRATE_ISOLATE)
    add_to_free_list(frames, zs, zone, pfn, order, MIGRATE_ISOLATE, False)
    return True


@inline
def undo_isolate_free_block(frames, zs, agent, zone, pfn, order):
    """Undo :func:`start_isolate_free_block`: restore the migratetype and
    free the block again, merging with non-isolated buddies."""
    del_page_from_free_list(frames, zs, zone, pfn, order, MIGRATE_ISOLATE)
    set_pageblocks_migratetype(zs, pfn, order, MIGRATE_MOVABLE)
    free_one_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE, False, False)
