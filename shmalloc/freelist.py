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
from .dlist import list_add, list_del, list_rotate_to_front
from .layout import (PG_REPORTED, PS_BUDDY, PS_NONE, Z_FREE_HEAD, Z_FREE_TAIL, Z_NR_FREE,
                     free_list_slot, zone_base)


@inline
def add_to_free_list(frames, zs, zone, pfn, order, mt, tail):
    """Put the free block at ``pfn`` on ``free_area[order][mt]``, at the tail
    if ``tail`` (reported and put-back pages go last), else at the head."""
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    frames[pfn]['order'] = order
    frames[pfn]['state'] = PS_BUDDY
    frames[pfn]['owner'] = -1
    list_add(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn, tail)
    zs[zb + Z_NR_FREE + slot] += 1


@inline
def del_page_from_free_list(frames, zs, zone, pfn, order, mt):
    """Take the free block at ``pfn`` off ``free_area[order][mt]``.

    Clears PageBuddy and PageReported: a block that leaves the free lists, to
    be allocated, split, merged or isolated, is no longer what the hypervisor
    was told about.  The caller decides the page's next state.
    """
    zb = zone_base(zone)
    slot = free_list_slot(order, mt)
    list_del(frames, zs, zb + Z_FREE_HEAD + slot, zb + Z_FREE_TAIL + slot, pfn)
    frames[pfn]['state'] = PS_NONE
    frames[pfn]['flags'] &= 0xFF ^ PG_REPORTED
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
