"""Several processes hammer one zone through the real zone lock.

Processes start together (each binds its agent, then waits for the go flag),
run rounds of random operations, and report what they hold.  A process keeps
going, up to a bound, until the zone lock has seen a contention: whether two
processes overlap inside a critical section depends on the scheduler (two
processes sharing one cpu rarely do), so the test waits for the event rather
than hoping a fixed amount of work contains it.
Afterwards: the invariants hold with every holder's own record, the zone
lock is free, lock_stat's acquisitions equal the sum of the processes' own
counts, and without pcp lists the lock was contended.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from kernels import hammer
from procs import Children

from shmalloc import invariants, lockstat, snapshot
from shmalloc.layout import (
    AG_PID,
    H_GO,
    LS_CONTENTIONS,
    NR_CALLERS,
    ROLE_WORKER,
    WC_LOCK_ACQUISITIONS,
    Layout,
)
from shmalloc.pcp import pcp_service_drain

#: operations per round; tests/test_nojit.py runs the hammer as plain Python
#: with fewer (the rounds go on until the lock was contended all the same)
NOPS = int(os.environ.get("SHMALLOC_HAMMER_OPS", "20000"))
MAX_ROUNDS = 500


def _contentions(machine) -> int:
    return sum(int(machine.zs[Layout.lockstat(0, c) + LS_CONTENTIONS])
               for c in range(NR_CALLERS))


def _worker(machine, agent, seed):
    machine.bind(agent, ROLE_WORKER)
    while machine.zs[H_GO] == 0:         # start barrier: the parent sets it
        time.sleep(0.0005)
    held_pfn = np.zeros(512, np.int64)
    held_order = np.zeros(512, np.int64)
    n = allocs = frees = errors = 0
    for rnd in range(MAX_ROUNDS):
        n, a, f, e = hammer(machine.frames, machine.zs, agent, NOPS, seed * 1000 + rnd, 4,
                            held_pfn, held_order, n)
        allocs, frees, errors = allocs + a, frees + f, errors + e
        if rnd >= 2 and _contentions(machine) > 0:
            break
    held = [(int(held_pfn[i]), int(held_order[i])) for i in range(n)]
    return agent, held, allocs, frees, errors


def _go_when_bound(machine, agents, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not all(machine.zs[machine.layout.agent(a) + AG_PID] for a in agents):
        assert time.monotonic() < deadline, "workers never bound their agents"
        time.sleep(0.001)
    machine.zs[H_GO] = 1


@pytest.mark.nojit
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nproc", [2, 4])
@pytest.mark.parametrize("pcp", [False, True], ids=["pcp-off", "pcp-on"])
def test_processes_hammer_one_zone(make_machine, nproc, pcp):
    m = make_machine(memory=64 << 20, zones=1, workers=nproc,
                     pcp_batch=63 if pcp else 0, pcp_high=378)
    empty = np.zeros(1, np.int64)
    hammer(m.frames, m.zs, m.control_agent, 0, 0, 4, empty, empty, 0)   # compile before fork
    with Children() as kids:
        for agent in range(nproc):
            kids.start(_worker, m, agent, 1000 + agent)
        _go_when_bound(m, range(nproc))
        results = kids.results(timeout=90)

    held = {agent: blocks for agent, blocks, _, _, errors in results}
    assert all(r[4] == 0 for r in results), "free_pages() failed in a worker"
    assert sum(r[2] for r in results) > 0
    assert invariants.check(m, held=held) == []
    assert m.semaphore_values() == [1]

    lock = lockstat.lock_records(m.zs, 1, m.ticks_per_sec)[0]
    own = sum(int(m.zs[m.layout.wstats(a) + WC_LOCK_ACQUISITIONS])
              for a in range(m.layout.nr_agents))
    assert lock["acquisitions"] == own
    assert lock["by_caller"]["alloc"]["acquisitions"] > 0
    if not pcp:
        assert lock["contentions"] > 0

    # give everything back through the allocator, then nothing is lost
    for agent, blocks in held.items():
        for pfn, order in blocks:
            m.free(pfn, order, agent=agent)
        m.drain_pcp(agent)
    assert invariants.check(m, held={}) == []
    top = m.max_order - 1
    areas = snapshot.free_areas(m)
    assert list(areas) == [(0, top, 0)]
    assert sorted(areas[(0, top, 0)]) == list(range(0, m.nr_pages, 1 << top))


def _idle_serving_drains(machine, agent, stop_idx):
    machine.bind(agent, ROLE_WORKER)
    pfns = [machine.alloc(0) for _ in range(10)]
    for p in pfns:
        machine.free(p, 0)              # 10 pages now sit on our pcp list
    machine.zs[stop_idx] = 1            # tell the parent the list is filled
    while machine.zs[stop_idx] != 2:
        pcp_service_drain(machine.frames, machine.zs, agent)
        time.sleep(0.0005)
    return machine.pcp_count(agent, 0)


@pytest.mark.nojit
@pytest.mark.timeout(60)
def test_drain_request_from_outside(make_machine):
    m = make_machine(memory=16 << 20, workers=1, pcp_batch=8, pcp_high=64)
    flag = m.layout.wstats(m.control_agent) + 1      # a spare slot as a mailbox
    with Children() as kids:
        kids.start(_idle_serving_drains, m, 0, flag)
        deadline = time.monotonic() + 30
        while m.zs[flag] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert m.pcp_count(0, 0) > 0
        assert m.request_drain(0, timeout=30)
        assert m.pcp_count(0, 0) == 0
        m.zs[flag] = 2
        assert kids.results(timeout=30) == [0]
    assert invariants.check(m) == []
