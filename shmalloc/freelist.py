"""Free-list primitives: the one place a page enters or leaves ``free_area``.

Models the helpers of mm/page_alloc.c (5.7): ``add_to_free_list``,
``add_to_free_list_tail``, ``del_page_from_free_list`` and, for page
reporting, ``list_rotate_to_front``.  Every allocation, split (``expand``),
merge (``__free_one_page``), isolation and reporting batch removes pages with
:func:`del_page_from_free_list` and inserts them with :func:`add_to_free_list`;
what must change when a page leaves a list (``PageBuddy``, ``PageReported``)
changes here and nowhere else, so no caller can forget it.

Lists (:mod:`shmalloc.dlist`) have head and tail pfns per ``(order,
migratetype)`` in the zone struct, and ``nr_free`` is
kept per list (the kernel's ``free_area[order].nr_free`` is the sum over
migratetypes).  All functions here expect the zone lock held.
"""

from __future__ import annotations

from .config import inline
from .dlist import list_add, list_add_before, list_del, list_rotate_to_front
from .layout import (
    H_REPORT_ORDER,
    H_STRATEGY,
    HOOK_BOUNDARY,
    PG_REPORTED,
    PS_BUDDY,
    PS_NONE,
    Z_BOUNDARY,
    Z_FREE_HEAD,
    Z_FREE_TAIL,
    Z_NR_FREE,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
    free_list_slot,
    zone_base,
)


@inline
def boundary_active(zs, zb, order):
    """Duyck's boundaries are in use on this zone's lists of this order."""
    if zs[H_STRATEGY] != HOOK_BOUNDARY or order < zs[H_REPORT_ORDER]:
        return False
    return (zs[zb + Z_REPORT_FLAGS] & ZRF_ACTIVE) != 0


@inline
def add_to_free_list(frames, zs, zone, pfn, order, mt, tail):
    """Put the free block at ``pfn`` on ``free_area[order][mt]``, at the tail
    if ``tail`` (reported and put-back pages go last), else at the head.

    With the boundary design active, a tail insertion lands in front of the
    Reported run instead (v9's ``get_unreported_tail``), so reported and
    unreported blocks never interleave."""
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    frames[pfn]['order'] = order
    frames[pfn]['state'] = PS_BUDDY
    frames[pfn]['owner'] = -1
    before = -1
    if tail and boundary_active(zs, zb, order):
        before = zs[zb + Z_BOUNDARY + slot]
    if before >= 0:
        list_add_before(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn,
                        before)
    else:
        list_add(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn, tail)
    zs[zb + Z_NR_FREE + slot] += 1


@inline
def clear_page_reported(frames, zs, zb, pfn, order, slot):
    """A Reported block leaves its list.  The boundary design also keeps its
    per-order count and, while active, pulls the boundary past the block
    (v9's ``clear_page_reported``): the allocator's share of the work."""
    if zs[H_STRATEGY] == HOOK_BOUNDARY:
        if (zs[zb + Z_REPORT_FLAGS] & ZRF_ACTIVE) != 0 and zs[zb + Z_BOUNDARY + slot] == pfn:
            zs[zb + Z_BOUNDARY + slot] = frames[pfn]['next']
        zs[zb + Z_REPORTED + order] -= 1
    frames[pfn]['flags'] &= 0xFF ^ PG_REPORTED


@inline
def del_page_from_free_list(frames, zs, zone, pfn, order, mt):
    """Take the free block at ``pfn`` off ``free_area[order][mt]``.

    Clears PageBuddy and PageReported: a block that leaves the free lists, to
    be allocated, split, merged or isolated, is no longer what the hypervisor
    was told about.  The caller decides the page's next state.
    """
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    if (frames[pfn]['flags'] & PG_REPORTED) != 0:
        clear_page_reported(frames, zs, zb, pfn, order, slot)
    list_del(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn)
    frames[pfn]['state'] = PS_NONE
    zs[zb + Z_NR_FREE + slot] -= 1


@inline
def rotate_free_list_to_front(frames, zs, zone, order, mt, pfn):
    """``list_rotate_to_front`` on ``free_area[order][mt]``: page reporting
    resumes a walk there after the zone lock was dropped."""
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    list_rotate_to_front(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn)


@inline
def free_list_first(zs, zone, order, mt):
    return zs[zone_base(zone) + Z_FREE_HEAD + free_list_slot(order, mt)]


@inline
def free_list_count(zs, zone, order, mt):
    return zs[zone_base(zone) + Z_NR_FREE + free_list_slot(order, mt)]
