"""The counters compare attributes cost from: --free-hook-ns spins on every
free to the buddy lists and nowhere else, and a contended zone-lock wait is
charged to the holder's caller class."""

from __future__ import annotations

import time

import pytest
from kernels import isolate_and_put_back, lock_as, unlock_as
from procs import CTX

from launcher.experiment.proc import process_state
from shmalloc.freehook import GAP_NS
from shmalloc.layout import (
    CALLER_ALLOC,
    CALLER_NAMES,
    CALLER_REPORTER,
    H_FREE_HOOK_TICKS,
    H_TICKS_PER_SEC,
    NR_CALLERS,
    Z_FREE_HOOK_CALLS,
    Z_FREE_HOOK_TICKS,
    Z_WAIT_BEHIND,
    ZONES_OFF,
)

HOOK_NS = 2000
# the first test compiles the test kernels (a minute or more on a loaded machine)
pytestmark = pytest.mark.timeout(300)


def _hook(m):
    return int(m.zs[ZONES_OFF + Z_FREE_HOOK_CALLS]), int(m.zs[ZONES_OFF + Z_FREE_HOOK_TICKS])


def test_free_hook_spins_once_per_free_to_the_buddy_lists(make_machine):
    m = make_machine(workers=1, pcp_batch=0, free_hook_ns=HOOK_NS)
    tps = int(m.zs[H_TICKS_PER_SEC])
    target = int(m.zs[H_FREE_HOOK_TICKS])
    assert target == round(HOOK_NS * tps / 1e9) > 0
    pfns = [m.alloc(0) for _ in range(50)] + [m.alloc(3) for _ in range(10)]
    assert _hook(m) == (0, 0)                                  # allocations never spin
    for pfn in pfns[:50]:
        m.free(pfn, 0)
    for pfn in pfns[50:]:
        m.free(pfn, 3)
    calls, spun = _hook(m)
    assert calls == 60
    # each spin counts at least its target and overshoots by less than one gap
    assert calls * target <= spun < calls * (target + tps * GAP_NS // 10**9)
    # a reporting pass's put-back is not a free: no spin
    head = m.nr_pages - (1 << (m.max_order - 1))
    assert isolate_and_put_back(m.frames, m.zs, m.reporter_agent, 0, head, m.max_order - 1)
    assert _hook(m)[0] == 60


def test_free_hook_spins_on_pcp_bulk_frees_only(make_machine):
    m = make_machine(workers=1, pcp_batch=4, pcp_high=8, free_hook_ns=HOOK_NS)
    pfns = [m.alloc(0) for _ in range(32)]
    for pfn in pfns:
        m.free(pfn, 0)
    left = m.pcp_count(m.control_agent, 0)
    # a free to the pcp list does not reach the buddy lists; a bulk free does,
    # one spin per page (the refills on allocation never spin)
    assert 0 < left < 8
    assert _hook(m)[0] == 32 - left
    m.drain_pcp(m.control_agent)
    assert _hook(m)[0] == 32


def test_no_hook_costs_nothing(make_machine):
    m = make_machine(workers=1, pcp_batch=0)
    m.free(m.alloc(0), 0)
    assert int(m.zs[H_FREE_HOOK_TICKS]) == 0 and _hook(m) == (0, 0)


def _wait_behind(m):
    return {(CALLER_NAMES[w], CALLER_NAMES[h]):
            int(m.zs[ZONES_OFF + Z_WAIT_BEHIND + w * NR_CALLERS + h])
            for w in range(NR_CALLERS) for h in range(NR_CALLERS)}


def _contend(m, agent, trying):
    trying.set()
    lock_as(m.zs, agent, 0, CALLER_ALLOC)      # sleeps until the holder lets go
    unlock_as(m.zs, agent, 0, CALLER_ALLOC)


def test_a_contended_wait_is_charged_to_the_holders_class(make_machine):
    m = make_machine(workers=1)
    lock_as(m.zs, 0, 0, CALLER_ALLOC)                  # uncontended: nothing charged
    unlock_as(m.zs, 0, 0, CALLER_ALLOC)
    assert not any(_wait_behind(m).values())
    lock_as(m.zs, m.reporter_agent, 0, CALLER_REPORTER)   # the "reporter" holds the lock
    trying = CTX.Event()
    child = CTX.Process(target=_contend, args=(m, 0, trying), daemon=True)
    child.start()
    try:
        assert trying.wait(60)
        # the worker is past its trywait spin once it sleeps in sem_wait
        deadline = time.monotonic() + 60
        while process_state(child.pid) != "sleeping":
            assert time.monotonic() < deadline, "the worker never blocked on the lock"
            time.sleep(0.001)
    finally:
        unlock_as(m.zs, m.reporter_agent, 0, CALLER_REPORTER)
        child.join(60)
    assert child.exitcode == 0
    charged = {k: v for k, v in _wait_behind(m).items() if v}
    assert list(charged) == [("alloc", "reporter")]
