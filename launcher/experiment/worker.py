"""A worker process: binds its agent, waits for the start, runs its workload.

Forked by the launcher after the kernels were compiled, so it starts at once.
It ignores SIGINT (the launcher decides what Ctrl-C means for the run) and
dies with the launcher (PR_SET_PDEATHSIG).  The workload itself is compiled
(:mod:`shmalloc.workload`); this module only sequences its phases, and at the
end gives every page back: what it holds through ``free_pages``, its pcp lists
through ``drain_pages``.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass

import numpy as np

from shmalloc._libc import die_with_parent
from shmalloc.config import PAGE_SIZE
from shmalloc.layout import (
    H_GO,
    H_STOP,
    ROLE_WORKER,
    STOP_ABORT,
    WC_MINOR_FAULTS,
    WC_PAGES_FREED,
    WC_RELEASED_PAGES,
    WC_T_END,
    WC_T_FREED,
    WC_T_FREEING,
    WC_T_START,
)
from shmalloc.lock import now_ticks
from shmalloc.pcp import drain_pages, pcp_service_drain
from shmalloc.procstat import record_rusage
from shmalloc.replay import replay_worker
from shmalloc.workload import (
    PHASED_REGROW_AT,
    PHASED_SHRINK_AT,
    THP_ORDER,
    free_blocks,
    hog_alloc,
    run_chunks,
    run_random,
    run_random_user,
    user_pages,
)

POLL_S = 0.01


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker needs, decided by the launcher."""

    workload: str
    working_set: int          # bytes per worker (page_fault1, thp, random)
    hog_pages: int            # pages per worker (hog)
    hog_hold_s: float
    max_ops: int              # < 0: until the stop flag
    seed: int
    max_order: int
    duration_s: float = 0.0   # the run's length (phased schedules its phases on it)
    cpu: int | None = None    # the cpu this worker is pinned to, if any
    replay: object = None     # trace:FILE: the replay's shared state (shmalloc.replay.Shared)
    blocks: str = "buddy"     # random, phased: buddy blocks, or user mappings of order-0 pages
    page_rate: float = 0.0    # --blocks user: page faults per second at most (0: no limit)
    page_schedule: tuple = () # --blocks user: ((seconds, faults made by then), ...) instead

    def capacity(self) -> int:
        """Blocks the worker can hold at most (its private held arrays)."""
        if self.workload == "thp":
            return max(1, self.working_set // (PAGE_SIZE << THP_ORDER))
        if self.workload == "hog":
            return max(1, self.hog_pages)
        if self.blocks == "user":         # pages: the last mapping may pass the target
            return max(1, self.working_set // PAGE_SIZE) + (1 << min(9, self.max_order - 1))
        return max(1, self.working_set // PAGE_SIZE)


class UserBlocks:
    """--blocks user: a worker's user mappings (blocks of slots of order-0
    pages, :func:`shmalloc.workload.run_random_user`)."""

    def __init__(self, plan: WorkerPlan):
        blocks, slots = max(1, plan.working_set // PAGE_SIZE), plan.capacity()
        self.head = np.zeros(blocks, np.int64)
        self.order = np.zeros(blocks, np.int64)
        self.long = np.zeros(blocks, np.int64)
        self.pfn = np.zeros(slots, np.int64)
        self.next = np.zeros(slots, np.int64)
        self.free_slots = np.zeros(slots, np.int64)
        self.sched_t = np.zeros(0, np.int64)
        self.sched_k = np.zeros(0, np.int64)
        self.t_run0 = 0

    def schedule(self, plan: WorkerPlan, t_run0: int, ticks_per_sec: int) -> None:
        """vm compare's schedule of page faults (``plan.page_schedule``, a
        real guest's): its points in ticks from ``t_run0``, the run's start
        (every phase of phased counts from there)."""
        pts = plan.page_schedule
        self.sched_t = np.array([int(t * ticks_per_sec) for t, _ in pts], np.int64)
        self.sched_k = np.array([int(k) for _, k in pts], np.int64)
        self.t_run0 = t_run0

    def run(self, machine, agent, target, plan, seed, ns_per_tick, held_pfn, held_order,
            deadline) -> int:
        """``random`` until ``deadline`` (0: none); the pages still held end
        up in ``held_*`` (order 0); returns how many."""
        pace = int(machine.ticks_per_sec / plan.page_rate) if plan.page_rate else 0
        n = run_random_user(machine.frames, machine.zs, machine.mem, agent, target,
                            plan.max_order, plan.max_ops, seed, ns_per_tick, self.head,
                            self.order, self.long, self.pfn, self.next, self.free_slots, deadline,
                            pace, self.sched_t, self.sched_k, self.t_run0)
        return user_pages(self.head, n, self.pfn, self.next, held_pfn, held_order)


def run_plan(machine, agent: int, plan: WorkerPlan, held_pfn, held_order, held_long) -> int:
    """Run the workload until stop or budget; returns blocks still held."""
    frames, zs, mem = machine.frames, machine.zs, machine.mem
    ns_per_tick = 1e9 / machine.ticks_per_sec
    if plan.replay is not None:       # trace:FILE: replay, hold until stop if timed, free
        replay_worker(machine, agent, plan.replay, plan.max_ops, plan.duration_s > 0)
        return 0
    if plan.workload in ("page_fault1", "thp"):
        order = 0 if plan.workload == "page_fault1" else THP_ORDER
        return run_chunks(frames, zs, mem, agent, order, len(held_pfn), plan.max_ops,
                          ns_per_tick, held_pfn, held_order)
    target = plan.working_set // PAGE_SIZE
    user = UserBlocks(plan) if plan.blocks == "user" else None
    if user is not None and plan.page_schedule:
        user.schedule(plan, now_ticks(), machine.ticks_per_sec)

    def random(seed, deadline):
        if user is not None:
            return user.run(machine, agent, target, plan, seed, ns_per_tick, held_pfn,
                            held_order, deadline)
        return run_random(frames, zs, mem, agent, target, plan.max_order, plan.max_ops, seed,
                          ns_per_tick, held_pfn, held_order, held_long, deadline)

    if plan.workload == "random":
        return random(plan.seed, 0)
    if plan.workload == "phased":
        t0, tps = now_ticks(), machine.ticks_per_sec
        n = random(plan.seed, t0 + int(PHASED_SHRINK_AT * plan.duration_s * tps))
        _release(machine, agent, held_pfn, held_order, n)
        _idle(machine, agent, (PHASED_REGROW_AT - PHASED_SHRINK_AT) * plan.duration_s)
        return random(plan.seed + 1, 0)
    # hog: allocate, hold, free everything, idle until the stop flag; with an
    # operation budget (--ops) the run ends when every worker has, so the
    # hog ends once it has freed what it allocated
    n = hog_alloc(frames, zs, mem, agent, plan.hog_pages, plan.max_ops, ns_per_tick,
                  held_pfn, held_order)
    _idle(machine, agent, plan.hog_hold_s)
    _release(machine, agent, held_pfn, held_order, n)
    if plan.max_ops < 0:
        _idle(machine, agent, None)
    return 0


def _release(machine, agent: int, held_pfn, held_order, n: int) -> None:
    """The shrink of hog and phased: free everything, note when and how much."""
    ws = machine.layout.wstats(agent)
    before = int(machine.zs[ws + WC_PAGES_FREED])
    machine.zs[ws + WC_T_FREEING] = now_ticks()
    free_blocks(machine.frames, machine.zs, machine.mem, agent, held_pfn, held_order, n,
                1e9 / machine.ticks_per_sec)
    machine.zs[ws + WC_T_FREED] = now_ticks()
    machine.zs[ws + WC_RELEASED_PAGES] = int(machine.zs[ws + WC_PAGES_FREED]) - before


def _idle(machine, agent: int, seconds: float | None) -> None:
    """Sleep until the stop flag (or ``seconds``), serving pcp drain requests."""
    end = None if seconds is None else time.monotonic() + seconds
    while machine.zs[H_STOP] == 0 and (end is None or time.monotonic() < end):
        pcp_service_drain(machine.frames, machine.zs, agent)
        time.sleep(POLL_S)


def worker_main(machine, agent: int, plan: WorkerPlan) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if plan.cpu is not None:
        # one worker per cpu, as will-it-scale pins its tasks: two workers
        # time-sharing a cpu would halve the contention they can make
        os.sched_setaffinity(0, {plan.cpu})
    machine.bind(agent, ROLE_WORKER)
    cap = plan.capacity()
    held_pfn = np.zeros(cap, np.int64)
    held_order = np.zeros(cap, np.int64)
    held_long = np.zeros(cap, np.int64)
    while machine.zs[H_GO] == 0 and machine.zs[H_STOP] == 0:      # start barrier
        time.sleep(0.0005)
    ws = machine.layout.wstats(agent)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    machine.zs[ws + WC_T_START] = now_ticks()
    n = run_plan(machine, agent, plan, held_pfn, held_order, held_long)
    if not machine.zs[ws + WC_T_END]:         # a replay notes when its stream ended
        machine.zs[ws + WC_T_END] = now_ticks()
    if machine.zs[H_STOP] == STOP_ABORT:
        record_rusage(machine.zs, ws)
        return                     # the run is aborted: leave everything where it is
    # exit: give everything back (exit_mmap), then empty our pcp lists
    free_blocks(machine.frames, machine.zs, machine.mem, agent, held_pfn, held_order, n,
                1e9 / machine.ticks_per_sec)
    drain_pages(machine.frames, machine.zs, agent, agent)
    machine.zs[ws + WC_MINOR_FAULTS] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    record_rusage(machine.zs, ws)
