"""The buddy allocator of one zone: ``__rmqueue_smallest``, ``expand`` and
``__free_one_page`` from mm/page_alloc.c (5.7), over the shared arrays.

The buddy of the block of order ``o`` at ``pfn`` is ``pfn ^ (1 << o)``: the
two halves of the aligned block of order ``o + 1`` differ in exactly bit
``o``.  Example: the order-2 block at pfn 12 (pages 12..15) has its buddy at
``12 ^ 4 == 8`` (pages 8..11); merged they form the order-3 block at
``12 & 8 == 8``.

All functions here expect the zone lock held (``zone_lock`` in the callers in
:mod:`shmalloc.page_alloc` and :mod:`shmalloc.pcp`).

Where a freed block goes (5.7's ``__free_one_page`` after ``done_merging``):
to the tail of its list if the caller forces it (5.10's ``FPI_TO_TAIL``, here
the ``tail`` argument) or if ``buddy_merge_likely()`` holds, else to the
head.  ``buddy_merge_likely`` returns false for order >= MAX_ORDER - 2 and
otherwise checks whether the buddy of the block one order up is free: then
this block's own buddy is likely to be freed soon and the three would merge,
so the block should not be handed out first.  The helper is Alexander
Duyck's: "[PATCH v14 1/6] mm: Adjust shuffle code to allow for future
coalescing" (19 November 2019; first posted with his series in August 2019,
v17 of 11 February 2020 merged with it in 5.7) moved the test out of
``__free_one_page`` into it; before, ``__free_one_page`` made the same test
inline, after ``done_merging`` (the lines that patch removes).  In 5.7 that
is the only reason a block goes to the tail, including for
``__putback_isolated_page``: reported order-9 and order-10 blocks went back to
the head (Hildenbrand's "mm/page_alloc: place pages to tail in
__putback_isolated_page()", 5.10, says so and fixed it).

Deviations from the kernel: there is one zone type and no fallback between
migratetypes (there are only MOVABLE and ISOLATE), no watermarks on the
allocation path (a zone either has a free block or the allocator tries the
next zone), and no page shuffling (``CONFIG_SHUFFLE_PAGE_ALLOCATOR`` is off
by default and, when on, only randomises orders >= MAX_ORDER - 1, where
``buddy_merge_likely`` is false anyway; so with it off 5.7 behaves as here).
"""

from __future__ import annotations

from .config import inline
from .freehook import free_hook_spin
from .freelist import add_to_free_list, del_page_from_free_list
from .layout import (
    H_MAX_ORDER,
    H_PAGEBLOCK_ORDER,
    H_STRATEGY,
    HOOK_HOSTSCAN,
    PS_ALLOC,
    PS_BUDDY,
    PS_NONE,
    Z_FREE_HEAD,
    free_list_slot,
    get_pageblock_migratetype,
    zone_base,
)
from .reporting import hostscan_install, page_reporting_free_hook


@inline
def expand(frames, zs, zone, pfn, low, high, mt):
    """Split the order-``high`` block at ``pfn`` down to order ``low``,
    putting the upper halves back on the free lists."""
    while high > low:
        high -= 1
        add_to_free_list(frames, zs, zone, pfn + (1 << high), high, mt, False)


@inline
def rmqueue_smallest(frames, zs, zone, order, mt):
    """``__rmqueue_smallest``: take the first block of the smallest
    sufficient order off the lists and split it.  Returns the pfn or -1."""
    zb = zone_base(zone)
    max_order = zs[H_MAX_ORDER]
    cur = order
    pfn = -1
    while cur < max_order:
        pfn = zs[zb + Z_FREE_HEAD + free_list_slot(cur, mt)]
        if pfn >= 0:
            break
        cur += 1
    if pfn >= 0:
        del_page_from_free_list(frames, zs, zone, pfn, cur, mt)
        expand(frames, zs, zone, pfn, order, cur, mt)
        if zs[H_STRATEGY] == HOOK_HOSTSCAN:
            hostscan_install(zs, zone, pfn, order)
    return pfn


@inline
def prep_new_page(frames, pfn, order, agent):
    """Mark a block allocated: the ownership record the checker verifies."""
    frames[pfn]['order'] = order
    frames[pfn]['state'] = PS_ALLOC
    frames[pfn]['owner'] = agent
    frames[pfn]['gen'] += 1


@inline
def page_is_buddy(frames, buddy, order):
    if frames[buddy]['state'] != PS_BUDDY:
        return False
    return frames[buddy]['order'] == order


@inline
def buddy_merge_likely(frames, pfn, order, max_order):
    """5.7's ``buddy_merge_likely``: the free block of ``order`` at ``pfn`` did
    not merge; is the buddy of its parent (order + 1) free?  Then its own
    buddy is probably about to be freed too, so it goes to the tail.  False
    for order >= MAX_ORDER - 2.  The parent's buddy lies in the same
    max-order block, so in the same zone."""
    if order >= max_order - 2:
        return False
    higher = pfn & ~(1 << order)                 # combined_pfn = buddy_pfn & pfn
    return page_is_buddy(frames, higher ^ (1 << (order + 1)), order + 1)


@inline
def free_one_page(frames, zs, agent, zone, pfn, order, mt, tail, notify):
    """``__free_one_page``: merge the block at ``pfn`` with its free buddies,
    then put the result on ``free_area[order][mt]`` (at the tail if ``tail``,
    5.10's FPI_TO_TAIL, or if :func:`buddy_merge_likely`; else at the head),
    and with ``notify`` tell the reporting design
    (``page_reporting_notify_free``; put-backs of reported pages do not) and
    spin ``--free-hook-ns`` (:mod:`.freehook`).
    Returns the final (pfn, order).

    A buddy merges only if it is a free head of the same order whose pageblock
    has the same migratetype: an isolated pageblock never merges with a
    non-isolated one.  Below pageblock order the buddy shares the pageblock.
    """
    max_order = zs[H_MAX_ORDER]
    pb_order = zs[H_PAGEBLOCK_ORDER]
    frames[pfn]['state'] = PS_NONE
    while order < max_order - 1:
        buddy = pfn ^ (1 << order)
        if not page_is_buddy(frames, buddy, order):
            break
        if order >= pb_order and get_pageblock_migratetype(zs, buddy) != mt:
            break
        del_page_from_free_list(frames, zs, zone, buddy, order, mt)
        frames[buddy]['order'] = -1
        frames[pfn]['order'] = -1
        pfn &= buddy
        order += 1
    if not tail:
        tail = buddy_merge_likely(frames, pfn, order, max_order)
    add_to_free_list(frames, zs, zone, pfn, order, mt, tail)
    if notify:
        page_reporting_free_hook(zs, agent, zone, pfn, order)
        free_hook_spin(zs, zone_base(zone))          # --free-hook-ns (0: nothing)
    return pfn, order
