"""Compiled loops the concurrency tests run in their processes."""

from __future__ import annotations

import numpy as np

from shmalloc.config import jit
from shmalloc.layout import CALLER_REPORTER, MIGRATE_MOVABLE
from shmalloc.lock import zone_lock, zone_unlock
from shmalloc.page_alloc import (
    alloc_pages,
    free_pages,
    isolate_free_page,
    putback_isolated_page,
)


@jit
def hammer(frames, zs, agent, nops, seed, max_order, held_pfn, held_order, n):
    """Random allocs and frees for ``nops`` operations: 70 % order 0, the rest
    up to ``max_order``; ``n`` blocks are held in ``held_*`` on entry.
    Returns (blocks held now, allocs, frees, errors).  Not a benchmark: a
    stress test (mimalloc's test-stress in miniature)."""
    np.random.seed(seed)
    allocs = 0
    frees = 0
    errors = 0
    cap = len(held_pfn)
    for _ in range(nops):
        if n < cap and (n == 0 or np.random.random() < 0.5):
            order = 0
            if np.random.random() >= 0.7:
                order = np.random.randint(1, max_order + 1)
            pfn = alloc_pages(frames, zs, agent, order)
            if pfn >= 0:
                held_pfn[n] = pfn
                held_order[n] = order
                n += 1
                allocs += 1
        else:
            j = np.random.randint(0, n)
            if free_pages(frames, zs, agent, held_pfn[j], held_order[j]) != 0:
                errors += 1
            n -= 1
            held_pfn[j] = held_pfn[n]
            held_order[j] = held_order[n]
            frees += 1
    return n, allocs, frees, errors


@jit
def lock_as(zs, agent, zone, caller):
    """Take ``zone``'s lock as ``agent`` in caller class ``caller``."""
    zone_lock(zs, agent, zone, caller)


@jit
def unlock_as(zs, agent, zone, caller):
    zone_unlock(zs, agent, zone, caller)


@jit
def isolate_and_put_back(frames, zs, agent, zone, pfn, order):
    """A reporting pass's round trip for one free block: take it off the
    free list, put it back (no notify).  Returns True if it was taken."""
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    taken = isolate_free_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE)
    if taken:
        putback_isolated_page(frames, zs, agent, zone, pfn, order, MIGRATE_MOVABLE, False)
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return taken
