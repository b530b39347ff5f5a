"""Doubly linked lists of pages through ``frames.next``/``frames.prev``
(include/linux/list.h in miniature).

A list is two ``zs`` slots, its first and last pfn (-1 when empty); the
free_area lists and the pcp lists are both built on these.  The callers keep
the page state and the counts.
"""

from __future__ import annotations

from .config import inline


@inline
def list_add(frames, zs, head_idx, tail_idx, pfn, tail):
    """``list_add`` (at the head) or ``list_add_tail`` when ``tail``."""
    if tail:
        last = zs[tail_idx]
        frames[pfn]['prev'] = last
        frames[pfn]['next'] = -1
        if last >= 0:
            frames[last]['next'] = pfn
        else:
            zs[head_idx] = pfn
        zs[tail_idx] = pfn
    else:
        first = zs[head_idx]
        frames[pfn]['next'] = first
        frames[pfn]['prev'] = -1
        if first >= 0:
            frames[first]['prev'] = pfn
        else:
            zs[tail_idx] = pfn
        zs[head_idx] = pfn


@inline
def list_del(frames, zs, head_idx, tail_idx, pfn):
    """``list_del``: unlink ``pfn`` from the list."""
    nxt = frames[pfn]['next']
    prv = frames[pfn]['prev']
    if prv >= 0:
        frames[prv]['next'] = nxt
    else:
        zs[head_idx] = nxt
    if nxt >= 0:
        frames[nxt]['prev'] = prv
    else:
        zs[tail_idx] = prv
    frames[pfn]['next'] = -1
    frames[pfn]['prev'] = -1


@inline
def list_rotate_to_front(frames, zs, head_idx, tail_idx, pfn):
    """Make ``pfn`` the first entry, moving the entries before it, in order,
    to the tail.  No page enters or leaves the list."""
    first = zs[head_idx]
    if pfn < 0 or pfn == first:
        return
    last = zs[tail_idx]
    before = frames[pfn]['prev']
    frames[last]['next'] = first       # splice [first .. before] after last
    frames[first]['prev'] = last
    frames[before]['next'] = -1
    frames[pfn]['prev'] = -1
    zs[head_idx] = pfn
    zs[tail_idx] = before


@inline
def list_add_before(frames, zs, head_idx, tail_idx, pfn, before):
    """Insert ``pfn`` just before the entry ``before`` (``list_add_tail``
    on an entry in the middle of a list)."""
    prv = frames[before]['prev']
    frames[pfn]['next'] = before
    frames[pfn]['prev'] = prv
    frames[before]['prev'] = pfn
    if prv >= 0:
        frames[prv]['next'] = pfn
    else:
        zs[head_idx] = pfn
