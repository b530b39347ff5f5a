"""The core's side of free page reporting: the free-path hook and the
request state machine (mm/page_reporting.h and the top of
mm/page_reporting.c, Linux 5.7).

A design never reaches into the allocator except through what is here and in
:mod:`shmalloc.freelist` / :mod:`shmalloc.page_alloc` (``isolate_free_page``,
``putback_isolated_page``): the core offers the hook, the zone lock and the
free-list primitives; the design (``reporter/``) supplies its cycle.

``prdev->state`` lives in shared memory (``RS_STATE``) and moves
IDLE -> REQUESTED -> ACTIVE -> IDLE with atomic exchanges, as in the kernel.
Only the IDLE -> REQUESTED edge wakes the reporter: it posts the run's wake
semaphore (the reporter's ``schedule_delayed_work``).
"""

from __future__ import annotations

from ._libc import atomic_add, atomic_cas, atomic_xchg, sem_post
from .config import inline, jit
from .layout import (AG_SEM_AUX, H_REPORT_ORDER, REPORTING_ACTIVE, REPORTING_IDLE,
                     REPORTING_REQUESTED,
                     RS_REQUESTS, RS_STATE, agent_base, report_slot)


@inline
def page_reporting_request(zs, agent):
    """``__page_reporting_request``: REQUESTED, and wake the reporter if it
    was idle.  Safe from any process at any time."""
    st = report_slot(zs, RS_STATE)
    if zs[st] == REPORTING_REQUESTED:
        return
    if atomic_xchg(zs, st, REPORTING_REQUESTED) == REPORTING_IDLE:
        atomic_add(zs, report_slot(zs, RS_REQUESTS), 1)
        sem_post(zs[agent_base(zs, agent) + AG_SEM_AUX])


@inline
def page_reporting_notify_free(zs, agent, order):
    """Called from the hot path in ``free_one_page``: a block of at least the
    report order was freed.  Costs a compare below the report order and one
    load while a request is pending; the exchange runs once per idle period."""
    if order < zs[H_REPORT_ORDER]:
        return
    page_reporting_request(zs, agent)


@jit
def page_reporting_begin_pass(zs):
    """A pass starts: ACTIVE, so that requests during it are noticed."""
    atomic_xchg(zs, report_slot(zs, RS_STATE), REPORTING_ACTIVE)


@jit
def page_reporting_end_pass(zs):
    """A pass ends: ACTIVE -> IDLE, unless a request arrived meanwhile (or the
    budget ran out); True then, and the pass runs again after the delay."""
    st = report_slot(zs, RS_STATE)
    return atomic_cas(zs, st, REPORTING_ACTIVE, REPORTING_IDLE) == REPORTING_REQUESTED
