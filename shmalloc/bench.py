"""``shmalloc bench``: what one allocator operation costs, in one process.

Cases (each the median of ``reps`` repetitions of ``iters`` rounds):

``order0_zone``  a 1 GiB zone, pcp lists off: allocate 32,768 order-0 pages
                 one by one, then free them in allocation order; every
                 operation takes the zone lock.  ns per alloc+free pair.
``order9_zone``  the same with 64 order-9 blocks.
``order0_pcp``   order0_zone with the pcp lists on (batch 63, high 378).

each with lock statistics on and off; the pure-Python reference allocator on
order0_zone; the metadata bytes per page; the time to create and initialise
a 16 GiB guest; and what the reporting designs' bookkeeping costs the
allocator (``reported_order9``: allocating and freeing 64 order-9 blocks
carved out of free blocks that a reporting pass left Reported, with no
reporting design, with mainline's flag, with Duyck's counters, and with his
boundaries active as during a reporting cycle).  ``../shared/bench/buddy_ref.c`` (a C buddy
allocator with a POSIX semaphore per operation, the same case shapes) is the
physical-limit anchor to hold these figures against.

This is the engine's micro-benchmark; contention lives in ``shmalloc run``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .config import PAGE_SIZE, jit
from .layout import (
    FRAME_DTYPE,
    H_LOCK_STATS,
    HOOK_BOUNDARY,
    HOOK_MAINLINE,
    HOOK_NONE,
    MIGRATE_MOVABLE,
    PG_REPORTED,
    PS_BUDDY,
    Z_BOUNDARY,
    Z_FREE_HEAD,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
    free_list_slot,
)
from .machine import Machine, MachineConfig
from .page_alloc import alloc_pages, free_pages
from .reference import ReferenceAllocator

GIB = 1 << 30
CASES = {
    "order0_zone": dict(order=0, batch=32768, pcp=False),
    "order9_zone": dict(order=9, batch=64, pcp=False),
    "order0_pcp": dict(order=0, batch=32768, pcp=True),
}


@jit
def _rounds(frames, zs, agent, order, batch, iters, held):
    """The benchmark loop: ``iters`` x {alloc ``batch`` blocks; free them in
    allocation order}.  Returns the number of failed operations (must be 0)."""
    bad = 0
    for _ in range(iters):
        for i in range(batch):
            held[i] = alloc_pages(frames, zs, agent, order)
        for i in range(batch):
            if held[i] < 0 or free_pages(frames, zs, agent, held[i], order) != 0:
                bad += 1
    return bad


def _timed_rounds(m: Machine, order: int, batch: int, iters: int, held: np.ndarray) -> float:
    """Seconds for :func:`_rounds` as the machine's control agent (which
    ``Machine.create`` binds); a failed operation makes the figure void."""
    t0 = time.perf_counter()
    bad = _rounds(m.frames, m.zs, m.control_agent, order, batch, iters, held)
    elapsed = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"bench: {bad} failed operations")
    return elapsed


def _time_engine(order: int, batch: int, pcp: bool, stats: bool, reps: int, iters: int) -> float:
    cfg = MachineConfig(memory=GIB, zones=1, workers=1,
                        pcp_batch=63 if pcp else 0, pcp_high=378, lock_stats=stats)
    with Machine.create(cfg) as m:
        held = np.empty(batch, np.int64)
        _timed_rounds(m, order, batch, 1, held)                     # warm up, compile
        samples = [_timed_rounds(m, order, batch, iters, held) * 1e9 / (iters * batch)
                   for _ in range(reps)]
        assert int(m.zs[H_LOCK_STATS]) == int(stats)
        return statistics.median(samples)


HOOK_VARIANTS = {"none": HOOK_NONE, "mainline": HOOK_MAINLINE, "boundary": HOOK_BOUNDARY,
                 "boundary_active": HOOK_BOUNDARY}


def _mark_reported(m: Machine, variant: str) -> None:
    """Leave every free block of order >= 9 as a reporting pass would: flagged
    Reported, counted (boundary), and for ``boundary_active`` with each list's
    boundary on its first block and the zone's reporting active."""
    f, zs, zb = m.frames, m.zs, m.layout.zone(0)
    heads = np.flatnonzero((f["state"] == PS_BUDDY) & (f["order"] >= 9))
    # the same pass over the frames for every variant, so each timed round
    # starts with the same caches; "none" only marks nothing
    f["flags"][heads] |= 0 if variant == "none" else PG_REPORTED
    if variant.startswith("boundary"):
        for o in range(9, m.max_order):
            zs[zb + Z_REPORTED + o] = int((f["order"][heads] == o).sum())
            slot = free_list_slot(o, MIGRATE_MOVABLE)
            zs[zb + Z_BOUNDARY + slot] = zs[zb + Z_FREE_HEAD + slot] if variant.endswith(
                "active") else -1
        zs[zb + Z_REPORT_FLAGS] = ZRF_ACTIVE if variant.endswith("active") else 0


def _time_hooks(reps: int, rounds: int = 100) -> dict:
    """ns per order-9 alloc+free pair when the blocks come out of Reported
    free blocks, per design bookkeeping (see the module docstring)."""
    out = {}
    for variant, hook in HOOK_VARIANTS.items():
        cfg = MachineConfig(memory=GIB, zones=1, workers=1, pcp_batch=0, strategy=hook)
        with Machine.create(cfg) as m:
            held = np.empty(64, np.int64)
            _timed_rounds(m, 9, 64, 1, held)                        # warm up
            samples = []
            for _ in range(reps):
                total = 0.0
                for _ in range(rounds):
                    _mark_reported(m, variant)
                    total += _timed_rounds(m, 9, 64, 1, held)
                samples.append(total * 1e9 / (rounds * 64))
            out[variant] = round(statistics.median(samples), 2)
    return out


def _time_reference(order: int, batch: int, reps: int) -> float:
    samples = []
    for _ in range(reps):
        ref = ReferenceAllocator(GIB // PAGE_SIZE, 1, 11, 1, 0, 0)
        t0 = time.perf_counter()
        held = [ref.alloc(0, order) for _ in range(batch)]
        for pfn in held:
            ref.free(0, pfn, order)
        samples.append((time.perf_counter() - t0) * 1e9 / batch)
    return statistics.median(samples)


def _time_init(memory: int) -> float:
    cfg = MachineConfig(memory=memory, zones=1, workers=2)
    t0 = time.perf_counter()
    m = Machine.create(cfg)
    elapsed = time.perf_counter() - t0
    m.destroy()
    return elapsed


def run_bench(reps: int = 5, iters: int = 20, init_memory: int = 16 * GIB) -> dict:
    """Run every case; returns the ``shmalloc bench --json`` object."""
    cases = {}
    for name, c in CASES.items():
        cases[name] = {
            "ns_per_pair": round(_time_engine(c["order"], c["batch"], c["pcp"], True, reps,
                                              iters), 2),
            "ns_per_pair_no_stats": round(_time_engine(c["order"], c["batch"], c["pcp"], False,
                                                       reps, iters), 2),
        }
    ref = _time_reference(0, CASES["order0_zone"]["batch"], reps)
    with Machine.create(MachineConfig(memory=GIB, workers=2)) as m:
        meta_bytes = (m.zs.nbytes + m.frames.nbytes) / m.nr_pages
    return {
        "cases": cases,
        "python_reference": {"order0_zone": {
            "ns_per_pair": round(ref, 1),
            "engine_speedup": round(ref / cases["order0_zone"]["ns_per_pair"], 1),
            "engine_speedup_no_stats": round(ref / cases["order0_zone"]["ns_per_pair_no_stats"], 1),
        }},
        "metadata_bytes_per_page": round(meta_bytes, 3),
        "frame_bytes": FRAME_DTYPE.itemsize,
        "init_16gib_s": round(_time_init(init_memory), 3),
        "reported_order9": _time_hooks(reps),
        "reps": reps,
        "iters": iters,
    }


def format_bench(res: dict) -> list[str]:
    lines = [f"shmalloc bench (median of {res['reps']} repetitions x {res['iters']} rounds; "
             "ns per alloc+free pair)",
             "",
             f"{'case':<14} {'lock_stat on':>14} {'lock_stat off':>14}"]
    for name, c in res["cases"].items():
        lines.append(f"{name:<14} {c['ns_per_pair']:>14.1f} {c['ns_per_pair_no_stats']:>14.1f}")
    ref = res["python_reference"]["order0_zone"]
    lines += [
        "",
        f"pure-Python reference, order0_zone: {ref['ns_per_pair']:.0f} ns per pair "
        f"(engine {ref['engine_speedup']:.0f}x faster with lock_stat, "
        f"{ref['engine_speedup_no_stats']:.0f}x without)",
        f"metadata: {res['metadata_bytes_per_page']:.2f} bytes per page "
        f"({res['frame_bytes']}-byte frame record + zone state)",
        f"create and initialise a 16 GiB guest: {res['init_16gib_s']:.3f} s",
        "",
        "order-9 alloc+free out of Reported free blocks, ns per pair (lock_stat on):",
        "  " + "   ".join(f"{k} {v:.1f}" for k, v in res["reported_order9"].items()),
    ]
    return lines
