"""Replay a recorded page-allocator stream (:mod:`shmalloc.tracefile`)
through the guest's allocator: the ``trace:FILE`` workload.

Planning (once, in the launcher, :func:`plan`):

* :func:`pair_events` walks the events in time order with a table indexed by
  trace pfn and gives every ``mm_page_free`` the allocation it frees
  (``match``).  A free of a page no recorded allocation covers was allocated
  before the recording started: skipped and counted.  A free of part of an
  allocated block (``split_page``, a split THP) is a *piece*: the guest
  block is freed with its last piece, and held until then.  An allocation
  of a pfn that is still allocated in the table means its free was never
  seen (it happened in a context ``--pid-tree`` did not record, or was lost):
  the replay frees the old block first, an *implicit free*.
  ``mm_page_free_batched`` repeats a free already seen (kmem.h: it fires
  after ``free_pages_prepare`` fired ``mm_page_free``) and allocations the
  kernel failed (pfn -1) are not replayed.
* The events are split among the workers by their original CPU (CPU mod
  workers); each worker replays its part in timestamp order.

Replaying (in each worker, :func:`replay_events`, compiled): an allocation
allocates a block of the recorded order, writes its canaries and publishes
``slot[i] = (guest pfn << 16 | agent) + 1`` with an atomic compare-and-swap:
the shared table that maps a trace allocation (so, a trace pfn at that
moment) to a guest block.  A free looks up the slot of its allocation and
*claims* it (compare-and-swap to FREED), checks the canaries against the
agent that wrote them, and frees the block with
:func:`~shmalloc.page_alloc.free_pages_from`, as itself, naming the holder:
a block allocated on one CPU and freed on another goes into the freeing
worker's pcp list, as the kernel frees it.  The claim makes the free happen
exactly once, whoever tries.

A free whose allocation another worker has not replayed yet waits for it: a
free's timestamp is later than its allocation's (trace clock ``mono``, one
clock for every CPU), and a worker only waits for an earlier event of
another, so no two workers ever wait for each other.  The wait is bounded by
``wait_ticks``: then the freeing worker marks the slot ABANDONED, skips the
free, and the allocating worker frees the block right after allocating it
(a *late free*); both are counted.  Stop flag, operation budget and pacing
are checked between events.

Pacing: with ``speed > 0`` event ``i`` is due ``ts[i] / speed`` after the
common start; a worker ahead of time spins when the event is due within
:data:`SPIN_NS`, and otherwise returns to Python to sleep.
"""

from __future__ import annotations

import mmap
import time
from dataclasses import dataclass

import numpy as np

from ._libc import atomic_add, atomic_cas, atomic_xchg, ticks
from .config import inline, jit
from .layout import H_STOP, WC_T_END, wstats_base
from .lock import now_ticks
from .pcp import pcp_service_drain
from .tracefile import OP_ALLOC, OP_FREE_BATCHED, Trace
from .workload import check_and_free_from, should_stop, timed_alloc, write_block

# event kinds (the plan)
K_ALLOC = 0          # allocate; match: a block whose free was never seen (freed first), or -1
K_FREE = 1           # free the block of allocation match (its last piece, for a split block)
K_PIECE = 2          # free part of the block of allocation match: held until its last piece
K_SKIP_BEFORE = 3    # free of a page allocated before the recording started
K_SKIP_OTHER = 4     # free larger than the block it falls in (no such allocation)
K_DUPLICATE = 5      # mm_page_free_batched: the mm_page_free before it is the free
K_FAILED_IN_TRACE = 6  # an allocation the kernel failed (pfn -1)
KIND_NAMES = ("alloc", "free", "piece", "skipped_before", "skipped_other", "duplicate",
              "failed_in_trace")

# slot values
S_EMPTY = 0          # not replayed yet
S_FAILED = -1        # the guest could not satisfy the allocation
S_FREED = -2         # freed (claimed)
S_ABANDONED = -3     # its free gave up waiting: the allocating worker frees it at once

#: replay counters per worker, declared once (the results read them by name)
REPLAY_COUNTERS = (
    "events",            # events of this worker's stream replayed (any kind)
    "allocs",            # allocations the guest satisfied
    "failed",            # allocations the guest could not satisfy
    "frees",             # frees done (own blocks and handed-over ones)
    "cross_frees",       # ... of blocks another worker allocated (handed over)
    "implicit_frees",    # blocks freed before their pfn was allocated again
    "pieces",            # frees of part of a block (the block goes with its last piece)
    "skipped_before",    # frees of pages allocated before the recording started
    "skipped_failed",    # frees of allocations the guest could not satisfy
    "skipped_other",     # frees matching no block, or a block already freed
    "waits",             # frees that waited for another worker's allocation
    "wait_ticks",        # time spent waiting
    "gave_up",           # waits that hit the bound (the free becomes a late free)
    "late_frees",        # blocks freed right after allocation, their free given up
    "sleeps",            # returns to Python to wait for the pace
    "loops",             # passes over the whole stream completed
    "last_ts",           # trace time (ns, over all passes) of the last event replayed
    "sleep_until",       # (internal) ticks the next event is due
    "stage",             # (internal) 3 * pass + 1 stream done, + 2 released, + 3 reset
)
(RC_EVENTS, RC_ALLOCS, RC_FAILED, RC_FREES, RC_CROSS_FREES, RC_IMPLICIT_FREES, RC_PIECES,
 RC_SKIPPED_BEFORE, RC_SKIPPED_FAILED, RC_SKIPPED_OTHER, RC_WAITS, RC_WAIT_TICKS, RC_GAVE_UP,
 RC_LATE_FREES, RC_SLEEPS, RC_LOOPS, RC_LAST_TS, RC_SLEEP_UNTIL, RC_STAGE) = range(19)
INTERNAL_COUNTERS = ("sleep_until", "stage")
NR_RC = 24

SPIN_NS = 2_000_000          # an event due sooner than this is waited for by spinning
AGENT_BITS = 16


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------

@inline
def _covering(table, q, order, max_order):
    """The allocation whose live block covers table index ``q``, or -1:
    the smallest one (a block's head is aligned to its order)."""
    for o in range(max_order):
        h = q & ~((1 << o) - 1)
        j = table[h]
        if j >= 0 and order[j] >= o:
            return j
    return -1


@jit
def pair_events(op, pfn, order, base, table, remaining, kind, match, stats):
    """Pair every free with its allocation (see the module docstring).

    ``table`` (int32, indexed by ``pfn - base``, all -1) and ``remaining``
    (int64 per event: pages of a block not freed yet) are scratch.  Fills
    ``kind`` and ``match``; ``stats``: [0] peak live pages as replayed in
    time order, [1] allocations that superseded a live block, [2] live
    blocks an allocation overlapped without covering them."""
    n = len(op)
    max_order = 0
    for i in range(n):
        max_order = max(max_order, np.int64(order[i]) + 1)
    live = 0
    peak = 0
    for i in range(n):
        match[i] = -1
        if op[i] == OP_FREE_BATCHED:
            kind[i] = K_DUPLICATE
            continue
        p = pfn[i]
        o = np.int64(order[i])
        if op[i] == OP_ALLOC:
            if p < 0:
                kind[i] = K_FAILED_IN_TRACE
                continue
            q = p - base
            kind[i] = K_ALLOC
            j = _covering(table, q, order, max_order)
            if j >= 0:                             # its free was never seen
                match[i] = j
                table[pfn[j] - base] = -1
                live -= 1 << np.int64(order[j])
                stats[1] += 1
            for r in range(q + 1, q + (1 << o)):   # smaller live blocks inside
                if table[r] >= 0:
                    live -= 1 << np.int64(order[table[r]])
                    table[r] = -1
                    stats[2] += 1
            table[q] = i
            remaining[i] = 1 << o
            live += 1 << o
            peak = max(peak, live)
            continue
        q = p - base
        j = _covering(table, q, order, max_order) if p >= 0 else -1
        if j < 0:
            kind[i] = K_SKIP_BEFORE
            continue
        oj = np.int64(order[j])
        h = pfn[j] - base
        if o > oj or (o == oj and h != q):
            kind[i] = K_SKIP_OTHER
            continue
        match[i] = j
        remaining[j] -= 1 << o
        if remaining[j] <= 0:
            kind[i] = K_FREE
            table[h] = -1
            live -= 1 << oj
        else:
            kind[i] = K_PIECE
    stats[0] = peak


@dataclass
class Plan:
    """A trace made ready to replay: per-event arrays and the pairing."""

    trace: Trace
    kind: np.ndarray          # int8, K_*
    match: np.ndarray         # int64
    ts: np.ndarray            # int64 ns since the recording started
    order: np.ndarray         # int8
    cpu: np.ndarray
    peak_live_pages: int
    superseded: int
    overlapped: int
    max_order: int            # largest order + 1

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind, minlength=len(KIND_NAMES))
        return {name: int(c[k]) for k, name in enumerate(KIND_NAMES)}

    @property
    def replayable(self) -> int:
        """Events a replay goes through (every kind but duplicates and the
        kernel's own failed allocations)."""
        c = self.counts()
        return len(self.kind) - c["duplicate"] - c["failed_in_trace"]

    def worker_events(self, workers: int) -> list[np.ndarray]:
        """Each worker's event indices, in time order: CPU mod workers."""
        keep = self.kind < K_DUPLICATE
        w_of = self.cpu.astype(np.int64) % workers
        return [np.flatnonzero(keep & (w_of == w)) for w in range(workers)]


def plan(trace: Trace) -> Plan:
    ev = trace.ev
    n = len(trace)
    kind = np.zeros(n, np.int8)
    match = np.full(n, -1, np.int64)
    stats = np.zeros(3, np.int64)
    valid = ev["pfn"] >= 0
    if n and valid.any():
        base = int(ev["pfn"][valid].min())
        top = int(ev["pfn"][valid].max()) + (1 << int(ev["order"].max())) + 1
        table = np.full(top - base, -1, np.int32)
    else:
        base, table = 0, np.full(1, -1, np.int32)
    pair_events(ev["op"], ev["pfn"], ev["order"], base, table, np.zeros(n, np.int64), kind,
                match, stats)
    max_order = int(ev["order"][ev["op"] != OP_FREE_BATCHED].max()) + 1 if n else 1
    return Plan(trace, kind, match, ev["ts"], ev["order"].astype(np.int8), ev["cpu"],
                int(stats[0]), int(stats[1]), int(stats[2]), max_order)


# ---------------------------------------------------------------------------
# Replaying (compiled)
# ---------------------------------------------------------------------------

@inline
def _slot_value(pfn, agent):
    return ((pfn << AGENT_BITS) | agent) + 1


@inline
def _slot_pfn(v):
    """The guest pfn of a replayed allocation's slot value (> 0)."""
    return (v - 1) >> AGENT_BITS


@inline
def _slot_agent(v):
    """The worker that replayed the allocation of slot value ``v`` (> 0)."""
    return (v - 1) & ((1 << AGENT_BITS) - 1)


@jit
def free_block(frames, zs, mem, agent, holder, pfn, order, ws, ns_per_tick):
    """Check the canaries and free, as ``agent``, a block ``holder`` wrote.
    Compiled once and called (not inlined) from the three places that free,
    so the free path is not compiled three times into the replay loop."""
    check_and_free_from(frames, zs, mem, agent, holder, pfn, order, ws, ns_per_tick)


@inline
def claim_and_free(frames, zs, mem, agent, j, order, slot, rc, wait_ticks, ws, ns_per_tick):
    """Free the guest block of allocation ``j`` as ``agent``: wait (bounded)
    until it was replayed, claim it, check its canaries against the agent
    that wrote them and free it into ``agent``'s lists."""
    v = slot[j]
    if v == S_EMPTY:
        rc[RC_WAITS] += 1
        t0 = ticks()
        while v == S_EMPTY:
            if zs[H_STOP] != 0 or ticks() - t0 > wait_ticks:
                v = atomic_cas(slot, j, S_EMPTY, S_ABANDONED)
                if v == S_EMPTY:               # the allocating worker frees it
                    rc[RC_GAVE_UP] += 1
                    rc[RC_WAIT_TICKS] += ticks() - t0
                    return
                break
            pcp_service_drain(frames, zs, agent)
            v = atomic_add(slot, j, 0)         # a fresh read, never hoisted
        rc[RC_WAIT_TICKS] += ticks() - t0
    if v == S_FAILED:
        rc[RC_SKIPPED_FAILED] += 1
        return
    if v < 0 or atomic_cas(slot, j, v, S_FREED) != v:
        rc[RC_SKIPPED_OTHER] += 1              # freed already (a piece after the last)
        return
    gpfn = _slot_pfn(v)
    holder = _slot_agent(v)
    free_block(frames, zs, mem, agent, holder, gpfn, np.int64(order[j]), ws, ns_per_tick)
    rc[RC_FREES] += 1
    if holder != agent:
        rc[RC_CROSS_FREES] += 1


@jit
def replay_events(frames, zs, mem, agent, idx, start, kind, match, ts, order, slot, rc, speed,
                  t0, ts_offset, ticks_per_ns, wait_ticks, max_ops, ns_per_tick):
    """Replay ``idx[start:]`` (this worker's events) until the end, the stop
    flag or the operation budget; returns the position reached.  With
    ``speed > 0`` it also returns early, setting ``rc[RC_SLEEP_UNTIL]``,
    when the next event is due later than :data:`SPIN_NS` from now; event
    ``i`` is due at ``t0 + (ts_offset + ts[i]) / speed`` (``ts_offset``: the
    trace time of the passes before this one)."""
    ws = wstats_base(zs, agent)
    spin = np.int64(SPIN_NS * ticks_per_ns)
    k = start
    while k < len(idx):
        if should_stop(zs, ws, max_ops):
            return k
        i = idx[k]
        if speed > 0:
            due = t0 + np.int64((ts_offset + ts[i]) * ticks_per_ns / speed)
            now = ticks()
            if due - now > spin:
                rc[RC_SLEEP_UNTIL] = due
                rc[RC_SLEEPS] += 1
                return k
            while ticks() < due:
                pass
        kd = kind[i]
        if (kd == K_ALLOC or kd == K_FREE) and match[i] >= 0:
            # a free, or before an allocation the free of the block its pfn
            # was in, which the kernel did unseen (one call site: inlined once)
            claim_and_free(frames, zs, mem, agent, match[i], order, slot, rc, wait_ticks, ws,
                           ns_per_tick)
            if kd == K_ALLOC:
                rc[RC_IMPLICIT_FREES] += 1
        if kd == K_ALLOC:
            o = np.int64(order[i])
            pfn = timed_alloc(frames, zs, agent, o, ws, ns_per_tick)
            if pfn < 0:
                atomic_xchg(slot, i, S_FAILED)
                rc[RC_FAILED] += 1
            else:
                write_block(frames, zs, mem, agent, pfn, o, ws)
                if atomic_cas(slot, i, S_EMPTY, _slot_value(pfn, agent)) == S_ABANDONED:
                    free_block(frames, zs, mem, agent, agent, pfn, o, ws, ns_per_tick)
                    slot[i] = S_FREED
                    rc[RC_LATE_FREES] += 1
                rc[RC_ALLOCS] += 1
        elif kd == K_FREE:
            pass
        elif kd == K_PIECE:
            rc[RC_PIECES] += 1
        elif kd == K_SKIP_BEFORE:
            rc[RC_SKIPPED_BEFORE] += 1
        else:
            rc[RC_SKIPPED_OTHER] += 1
        rc[RC_EVENTS] += 1
        rc[RC_LAST_TS] = ts_offset + ts[i]
        k += 1
    return k


@jit
def replay_release(frames, zs, mem, agent, idx, kind, order, slot, ns_per_tick):
    """At the end: free every block this worker allocated that is still
    live (the trace never freed it), claiming each as a free would."""
    ws = wstats_base(zs, agent)
    freed = 0
    for k in range(len(idx)):
        i = idx[k]
        if kind[i] != K_ALLOC:
            continue
        v = slot[i]
        if v <= 0 or _slot_agent(v) != agent:
            continue
        if atomic_cas(slot, i, v, S_FREED) != v:
            continue
        free_block(frames, zs, mem, agent, agent, _slot_pfn(v), np.int64(order[i]), ws,
                   ns_per_tick)
        freed += 1
    return freed


@jit
def reset_slots(idx, kind, slot):
    """Before another pass: this worker's allocations are not replayed yet."""
    for k in range(len(idx)):
        if kind[idx[k]] == K_ALLOC:
            slot[idx[k]] = S_EMPTY


@jit
def common_start(common, now):
    """The replay's start in ticks: the first worker to ask sets it."""
    atomic_cas(common, 0, 0, now)
    return common[0]


# ---------------------------------------------------------------------------
# The shared state and the worker's driver
# ---------------------------------------------------------------------------

class Shared:
    """What the workers of one replay share: the plan (read-only, inherited
    over fork) and, in an anonymous shared mapping, the slot table, the
    per-worker counters and the common start.  Created by the launcher
    before it forks the workers; it is no named object, so nothing is left
    behind whatever happens."""

    def __init__(self, pl: Plan, workers: int, speed: float, wait_s: float, loops: int = 1):
        self.plan = pl
        self.workers = workers
        self.speed = float(speed)
        self.wait_s = float(wait_s)
        self.loops = int(loops)              # passes; 0: until the stop flag
        # a pass lasts the recording (the next one starts where it ended)
        self.pass_ns = max(int(pl.trace.duration_s * 1e9), int(pl.ts[-1]) + 1 if len(pl.ts) else 1)
        self.idx = pl.worker_events(workers)
        n = len(pl.kind)
        size = 8 * (n + workers * NR_RC + 8)
        self._mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        whole = np.frombuffer(self._mm, np.int64)
        self.slot = whole[:n]
        self.rc = whole[n: n + workers * NR_RC].reshape(workers, NR_RC)
        self.common = whole[n + workers * NR_RC:]   # [0]: start ticks
        self.ticks_per_sec = 1_000_000_000

    def warm(self, machine) -> None:
        """Compile (or load) the kernels in the launcher, before the fork."""
        self.ticks_per_sec = machine.ticks_per_sec
        a, f, zs, mem = machine.control_agent, machine.frames, machine.zs, machine.mem
        none = np.zeros(0, np.int64)
        rc = np.zeros(NR_RC, np.int64)
        replay_events(f, zs, mem, a, none, 0, self.plan.kind, self.plan.match, self.plan.ts,
                      self.plan.order, self.slot, rc, self.speed, 0, 0, 1.0, 1, -1, 1.0)
        replay_release(f, zs, mem, a, none, self.plan.kind, self.plan.order, self.slot, 1.0)
        reset_slots(none, self.plan.kind, self.slot)
        common_start(np.zeros(1, np.int64), 1)

    def counters(self, worker: int) -> dict[str, int]:
        return {name: int(self.rc[worker, i]) for i, name in enumerate(REPLAY_COUNTERS)
                if name not in INTERNAL_COUNTERS}


def _idle_until(machine, agent: int, due_ticks: int | None, stop_ok=lambda: False) -> None:
    """Sleep (serving pcp drain requests) until ``due_ticks``, the stop flag,
    or ``stop_ok()``."""
    tps = machine.ticks_per_sec
    while machine.zs[H_STOP] == 0 and not stop_ok():
        now = now_ticks()
        if due_ticks is not None and now >= due_ticks:
            return
        pcp_service_drain(machine.frames, machine.zs, agent)
        left = 0.01 if due_ticks is None else (due_ticks - now) / tps
        time.sleep(min(max(left, 0.0), 0.01))


def _barrier(machine, agent: int, shared: Shared, stage: int) -> bool:
    """Mark this worker at ``stage`` and wait until every worker is (or the
    stop flag).  True if everyone got there."""
    shared.rc[agent, RC_STAGE] = stage
    _idle_until(machine, agent, None, lambda: bool(np.all(shared.rc[:, RC_STAGE] >= stage)))
    return bool(np.all(shared.rc[:, RC_STAGE] >= stage))


def replay_worker(machine, agent: int, shared: Shared, max_ops: int, hold_until_stop: bool) -> None:
    """A worker's whole replay: its stream (paced), ``shared.loops`` times
    (0: until the stop flag); between passes and at the end it waits for the
    other workers to finish theirs (they may still free blocks handed to
    them), then frees what it still holds; before the end it holds that
    until the stop flag if asked."""
    pl = shared.plan
    f, zs, mem = machine.frames, machine.zs, machine.mem
    tps = machine.ticks_per_sec
    ns_per_tick = 1e9 / tps
    ticks_per_ns = tps / 1e9
    idx = shared.idx[agent]
    rc = shared.rc[agent]
    t0 = int(common_start(shared.common, now_ticks()))
    wait_ticks = int(shared.wait_s * tps)
    ws = machine.layout.wstats(agent)
    loop = 0
    while True:
        k = 0
        while k < len(idx) and machine.zs[H_STOP] == 0:
            rc[RC_SLEEP_UNTIL] = 0
            k = replay_events(f, zs, mem, agent, idx, k, pl.kind, pl.match, pl.ts, pl.order,
                              shared.slot, rc, shared.speed, t0, loop * shared.pass_ns,
                              ticks_per_ns, wait_ticks, max_ops, ns_per_tick)
            if rc[RC_SLEEP_UNTIL]:
                _idle_until(machine, agent, int(rc[RC_SLEEP_UNTIL]))
            elif max_ops >= 0 and k < len(idx):
                break                                   # the budget is spent
        if k == len(idx):
            rc[RC_LOOPS] += 1
        machine.zs[ws + WC_T_END] = now_ticks()
        loop += 1
        # others may still free blocks we hold: wait for them (or the stop flag)
        if not _barrier(machine, agent, shared, 3 * loop - 2) or k < len(idx):
            break
        if shared.loops and loop >= shared.loops:
            break
        replay_release(f, zs, mem, agent, idx, pl.kind, pl.order, shared.slot, ns_per_tick)
        if not _barrier(machine, agent, shared, 3 * loop - 1):
            break
        reset_slots(idx, pl.kind, shared.slot)
        if not _barrier(machine, agent, shared, 3 * loop):
            break
    if hold_until_stop:
        _idle_until(machine, agent, None)
    replay_release(f, zs, mem, agent, idx, pl.kind, pl.order, shared.slot, ns_per_tick)
