"""``shmalloc bench``: what one allocator operation costs, in one process.

Cases (each the median of ``reps`` repetitions of ``iters`` rounds):

``order0_zone``  a 1 GiB zone, pcp lists off: allocate 32,768 order-0 pages
                 one by one, then free them in allocation order; every
                 operation takes the zone lock.  ns per alloc+free pair.
``order9_zone``  the same with 64 order-9 blocks.
``order0_pcp``   order0_zone with the pcp lists on (batch 63, high 378).

each with lock statistics on and off; the pure-Python reference allocator on
order0_zone; the metadata bytes per page; the time to create and initialise
a guest (``init_s``, seconds in full precision, for ``init_memory_bytes``:
16 GiB unless ``--init-memory`` says otherwise); and what the reporting
designs' bookkeeping costs the allocator (``reported_order9``: allocating
and freeing 64 order-9 blocks carved out of free blocks that a reporting
pass left Reported, with no reporting design, with mainline's flag, with
Duyck's counters, and with his boundaries active as during a reporting
cycle).  The unit costs
``shmalloc compare`` charges counted events with (:func:`unit_costs`):
``refault``, ns per refault (per host page, 4 KiB or 2 MiB) for a worker's
first writes (read, then write, as :func:`shmalloc.workload.write_block`
does) to pages the host punched out of guest memory, against the same
writes to resident pages, and
``free_path_hooks``, ns per call of a design's free-path hook past its order
check (mainline and boundary in their requested state, in which a reporting
delay leaves them most of a run; bitmap setting a bit, which it does for
every block it sees, in a zone at its threshold with a pass queued, so that
the call also takes v12's failing ``atomic_cmpxchg``: its cost on every
free while the reporter works, and one locked instruction more than a free
below the threshold pays), over the same call with no design.  And, for
``scripts/calibrate``'s prediction, ``free_hook``: what ``--free-hook-ns N``
costs a free all told (the spin and what surrounds it), against the spin's
own measured time.
``../shared/bench/buddy_ref.c`` (a C buddy allocator with a POSIX semaphore
per operation, the same case shapes) is the physical-limit anchor to hold
these figures against.

Each figure comes with its counts (``counts`` and ``counts_no_stats`` of a
case, ``reported_order9_counts`` of a variant): the alloc+free pairs it is
the mean of and the operations that failed; a failed operation makes the
figure void (``None``) and ``shmalloc bench`` exit with status 1.

This is the engine's micro-benchmark; contention lives in ``shmalloc run``.
"""

from __future__ import annotations

import mmap
import statistics
import time

import numpy as np

from . import shm
from ._libc import ticks
from .config import PAGE_SIZE, WORDS_PER_PAGE, jit
from .hostpage import HOST_PAGES, shmem_pmd_mapped_bytes
from .layout import (
    FRAME_DTYPE,
    H_BITMAP_WORDS,
    H_CAPACITY,
    H_LOCK_STATS,
    H_OFF_STRAT,
    HOOK_BITMAP,
    HOOK_BOUNDARY,
    HOOK_MAINLINE,
    HOOK_NONE,
    MIGRATE_MOVABLE,
    PG_REPORTED,
    PS_BUDDY,
    RS_REFCNT,
    Z_BITMAP_COUNT,
    Z_BOUNDARY,
    Z_FREE_HEAD,
    Z_FREE_HOOK_CALLS,
    Z_FREE_HOOK_TICKS,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
    free_list_slot,
    report_slot,
    zone_base,
)
from .machine import Machine, MachineConfig
from .page_alloc import alloc_pages, free_pages
from .reference import ReferenceAllocator
from .reporting import page_reporting_free_hook

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


class Tally:
    """What a figure is the mean of: the alloc+free pairs timed, and the
    operations that failed, warm-up included (any makes the figure void)."""

    def __init__(self):
        self.pairs = 0
        self.failed = 0

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "failed_ops": self.failed}


def _timed_rounds(m: Machine, order: int, batch: int, iters: int, held: np.ndarray,
                  tally: Tally, warmup: bool = False) -> float:
    """Seconds for :func:`_rounds` as the machine's control agent (which
    ``Machine.create`` binds); the pairs (unless ``warmup``) and the failed
    operations go into ``tally``."""
    t0 = time.perf_counter()
    bad = _rounds(m.frames, m.zs, m.control_agent, order, batch, iters, held)
    elapsed = time.perf_counter() - t0
    tally.pairs += 0 if warmup else iters * batch
    tally.failed += bad
    return elapsed


def _figure(samples: list[float], tally: Tally) -> float | None:
    """The median, or None (void) if an operation failed."""
    return None if tally.failed else round(statistics.median(samples), 2)


def _time_engine(order: int, batch: int, pcp: bool, stats: bool, reps: int, iters: int,
                 tally: Tally) -> float | None:
    cfg = MachineConfig(memory=GIB, zones=1, workers=1,
                        pcp_batch=63 if pcp else 0, pcp_high=378, lock_stats=stats)
    with Machine.create(cfg) as m:
        held = np.empty(batch, np.int64)
        _timed_rounds(m, order, batch, 1, held, tally, warmup=True)   # warm up, compile
        samples = [_timed_rounds(m, order, batch, iters, held, tally) * 1e9 / (iters * batch)
                   for _ in range(reps)]
        assert int(m.zs[H_LOCK_STATS]) == int(stats)
        return _figure(samples, tally)


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


def _time_hooks(reps: int, rounds: int = 100) -> tuple[dict, dict]:
    """ns per order-9 alloc+free pair when the blocks come out of Reported
    free blocks, per design bookkeeping (see the module docstring), and each
    figure's :class:`Tally`."""
    out, counts = {}, {}
    for variant, hook in HOOK_VARIANTS.items():
        cfg = MachineConfig(memory=GIB, zones=1, workers=1, pcp_batch=0, strategy=hook)
        tally = Tally()
        with Machine.create(cfg) as m:
            held = np.empty(64, np.int64)
            _timed_rounds(m, 9, 64, 1, held, tally, warmup=True)    # warm up
            samples = []
            for _ in range(reps):
                total = 0.0
                for _ in range(rounds):
                    _mark_reported(m, variant)
                    total += _timed_rounds(m, 9, 64, 1, held, tally)
                samples.append(total * 1e9 / (rounds * 64))
            out[variant] = _figure(samples, tally)
        counts[variant] = tally.as_dict()
    return out, counts


# ---------------------------------------------------------------------------
# Unit costs: a refault, a free-path hook call
# ---------------------------------------------------------------------------

@jit
def _touch_pages(mem, first, npages, value):
    """A worker's first touch of each page: read the first word, then write
    it (:func:`shmalloc.workload.write_block`)."""
    for page in range(first, first + npages):
        word = page * WORDS_PER_PAGE
        if mem[word] == value:
            value += 1
        mem[word] = value + page
    return value


def _cpu_ns_per_page(mem, pages: int, value: int) -> float:
    """:func:`_touch_pages` over ``pages`` pages, in this thread's CPU time
    (the page faults included, time spent preempted not: a loaded machine
    must not make a refault look dearer than it is), ns per page."""
    t0 = time.thread_time_ns()
    _touch_pages(mem, 0, pages, value)
    return (time.thread_time_ns() - t0) / pages


def measure_refault(host_pages: str = "4k", reps: int = 5, host_page_count: int | None = None
                    ) -> dict:
    """What a refault costs on host pages of ``host_pages`` (4k, 2m): ns to
    first-touch, page by page as a worker writes, guest memory whose host
    pages were discarded (``madvise(MADV_REMOVE)``, as the stub's
    ``--discard remove``; a punched hole is the same tmpfs hole), less the
    same touch of it resident, per host page: with 2 MiB host pages one
    fault zeroes a whole host page and the other 511 writes are ordinary
    ones.  The median of ``reps`` rounds over ``host_page_count`` host pages
    (4096 of 4 KiB, 32 of 2 MiB) of a fresh guest, CPU time.  With 2 MiB
    host pages the guest must really be on huge pages: what this process
    maps PMD-sized after the touch is checked."""
    order = HOST_PAGES[host_pages]
    n = host_page_count or (4096 if order == 0 else 32)
    pages = n << order
    memory = -(-pages * PAGE_SIZE // (4 << 20)) * (4 << 20)
    with Machine.create(MachineConfig(memory=memory, workers=1, host_page_order=order)) as m:
        _touch_pages(m.mem, 0, 1, 0)                  # compile, and fault in one page
        refault, resident = [], []
        for r in range(reps):
            m.guest_mmap.madvise(mmap.MADV_REMOVE, 0, pages * PAGE_SIZE)
            if m.resident_pages(0, pages) != 0:
                raise RuntimeError("bench refault: MADV_REMOVE left pages resident")
            refault.append(_cpu_ns_per_page(m.mem, pages, r))
            resident.append(_cpu_ns_per_page(m.mem, pages, r))
            if m.resident_pages(0, pages) != pages:
                raise RuntimeError("bench refault: touched pages are not resident")
            if order and shmem_pmd_mapped_bytes() < pages * PAGE_SIZE:
                raise RuntimeError("bench refault: the host did not back the guest with "
                                   "huge pages (ShmemPmdMapped)")
    r_ns, w_ns = statistics.median(refault), statistics.median(resident)
    return {"host_pages": host_pages, "host_page_bytes": PAGE_SIZE << order,
            "refault_ns_per_page": round(r_ns, 1), "resident_ns_per_page": round(w_ns, 1),
            "cost_ns": round(max(r_ns - w_ns, 0.0) * (1 << order), 1),
            "host_page_count": n, "pages": pages, "reps": reps}


def refault_cost_ns(refault: dict, host_pages: str = "4k") -> float:
    """The cost of one refault on ``host_pages`` from a :func:`unit_costs`
    ``refault`` entry: keyed by host page size, or (results written before
    ``--host-pages``) one 4 KiB figure, ``cost_ns_per_page``."""
    if "cost_ns_per_page" in refault:
        return refault["cost_ns_per_page"]
    return refault[host_pages]["cost_ns"]


@jit
def _time_hook(zs, agent, pfns, order, passes, clear_bitmap):
    """Ticks for ``passes`` x {call the free-path hook once per pfn}; with
    ``clear_bitmap`` the zone's bitmap is cleared, untimed, before each pass,
    and its count left at the threshold with a pass queued (``refcnt`` 1):
    every call sets a bit and counts it, and then takes the failing
    ``atomic_cmpxchg`` that v12 pays on each free while the reporter works."""
    total = 0
    for _ in range(passes):
        if clear_bitmap:
            for w in range(zs[H_BITMAP_WORDS]):
                zs[zs[H_OFF_STRAT] + w] = 0
            zs[zone_base(0) + Z_BITMAP_COUNT] = zs[H_CAPACITY]
            zs[report_slot(zs, RS_REFCNT)] = 1
        t0 = ticks()
        for i in range(len(pfns)):
            page_reporting_free_hook(zs, agent, 0, pfns[i], order)
        total += ticks() - t0
    return total


#: the free-path hooks a design installs, by the name compare knows it under
HOOK_KINDS = {"mainline": HOOK_MAINLINE, "boundary": HOOK_BOUNDARY, "bitmap": HOOK_BITMAP}


def measure_hooks(reps: int = 5, passes: int = 200) -> dict:
    """ns per free-path hook call past the order check, per design, over the
    same call with no design (clamped at 0)."""
    def per_call(hook: int) -> float:
        cfg = MachineConfig(memory=64 << 20, workers=1, strategy=hook)
        with Machine.create(cfg) as m:
            pfns = np.arange(0, m.nr_pages, 1 << 9, dtype=np.int64)
            clear = hook == HOOK_BITMAP
            _time_hook(m.zs, m.control_agent, pfns, 9, 1, clear)      # compile, settle state
            samples = [_time_hook(m.zs, m.control_agent, pfns, 9, passes, clear)
                       * 1e9 / m.ticks_per_sec / (passes * len(pfns)) for _ in range(reps)]
            return statistics.median(samples)
    base = per_call(HOOK_NONE)
    return {name: round(max(per_call(hook) - base, 0.0), 2) for name, hook in HOOK_KINDS.items()}


def measure_free_hook(ns_values=(50, 100, 200, 400), reps: int = 3, iters: int = 5) -> dict:
    """What ``--free-hook-ns N`` costs a free, all told: CPU ns per order-0
    alloc+free pair through the zone lock (pcp lists off, one free per pair)
    with the spin, less the same without it; and the spin's own measured
    time per call.  The difference is the spin plus what surrounds it (the
    TSC reads, the loop's exit, the two counters), which the spin cannot
    time itself.  The median of ``reps`` machines per value."""
    def pair_ns(n: int) -> tuple[float, float]:
        cfg = MachineConfig(memory=GIB, zones=1, workers=1, pcp_batch=0, free_hook_ns=n)
        with Machine.create(cfg) as m:
            held = np.empty(CASES["order0_zone"]["batch"], np.int64)
            tally = Tally()
            _timed_rounds(m, 0, len(held), 1, held, tally, warmup=True)
            zb = m.layout.zone(0)
            c0, t0 = int(m.zs[zb + Z_FREE_HOOK_CALLS]), int(m.zs[zb + Z_FREE_HOOK_TICKS])
            cpu0 = time.thread_time_ns()
            _timed_rounds(m, 0, len(held), iters, held, tally)
            cpu = (time.thread_time_ns() - cpu0) / (iters * len(held))
            calls = int(m.zs[zb + Z_FREE_HOOK_CALLS]) - c0
            spun = (int(m.zs[zb + Z_FREE_HOOK_TICKS]) - t0) * 1e9 / m.ticks_per_sec
            if tally.failed:                       # a failed operation voids the figure
                return None, None
            return cpu, spun / calls if calls else 0.0

    samples = {n: [pair_ns(n) for _ in range(reps)] for n in (0, *ns_values)}

    def med(n: int, i: int) -> float | None:
        vals = [x[i] for x in samples[n]]
        return None if None in vals else statistics.median(vals)

    base = med(0, 0)
    return {str(n): {"ns_per_free": (None if base is None or med(n, 0) is None
                                     else round(med(n, 0) - base, 1)),
                     "spin_ns": None if med(n, 1) is None else round(med(n, 1), 1)}
            for n in ns_values}


def unit_costs(reps: int = 5, host_pages=("4k",)) -> dict:
    """What ``shmalloc compare`` charges a refault (on each of the host page
    sizes ``host_pages``: ``refault`` maps each to :func:`measure_refault`'s
    figures) and a hook call, measured here and now (about 0.1 s, 0.3 s more
    with 2m)."""
    return {"refault": {hp: measure_refault(hp, reps=reps) for hp in host_pages},
            "free_path_hooks": measure_hooks(reps=reps)}


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


def init_figures(memory: int) -> dict:
    """``init_s``: seconds to create and initialise a guest of ``memory``
    bytes (``init_memory_bytes``), unrounded: a 64 MiB guest takes well
    under a millisecond."""
    return {"init_s": _time_init(memory), "init_memory_bytes": memory}


def _size(nbytes: int) -> str:
    """64 MiB, 16 GiB (the guest sizes ``--init-memory`` takes)."""
    if nbytes % GIB == 0:
        return f"{nbytes // GIB} GiB"
    return f"{nbytes / (1 << 20):g} MiB"


def run_bench(reps: int = 5, iters: int = 20, init_memory: int = 16 * GIB) -> dict:
    """Run every case; returns the ``shmalloc bench --json`` object."""
    cases = {}
    for name, c in CASES.items():
        on, off = Tally(), Tally()
        cases[name] = {
            "ns_per_pair": _time_engine(c["order"], c["batch"], c["pcp"], True, reps, iters, on),
            "ns_per_pair_no_stats": _time_engine(c["order"], c["batch"], c["pcp"], False, reps,
                                                 iters, off),
            "counts": on.as_dict(),
            "counts_no_stats": off.as_dict(),
        }
    hooks, hook_counts = _time_hooks(reps)
    ref = _time_reference(0, CASES["order0_zone"]["batch"], reps)
    with Machine.create(MachineConfig(memory=GIB, workers=2)) as m:
        meta_bytes = (m.zs.nbytes + m.frames.nbytes) / m.nr_pages
    return {
        "cases": cases,
        "python_reference": {"order0_zone": {
            "ns_per_pair": round(ref, 1),
            "engine_speedup": _ratio(ref, cases["order0_zone"]["ns_per_pair"]),
            "engine_speedup_no_stats": _ratio(ref, cases["order0_zone"]["ns_per_pair_no_stats"]),
        }},
        "metadata_bytes_per_page": round(meta_bytes, 3),
        "frame_bytes": FRAME_DTYPE.itemsize,
        **init_figures(init_memory),
        "reported_order9": hooks,
        "reported_order9_counts": hook_counts,
        "refault": {hp: measure_refault(hp, reps=reps) for hp in bench_host_pages()},
        "free_path_hooks": measure_hooks(reps=reps),
        "free_hook": measure_free_hook(),
        "reps": reps,
        "iters": iters,
    }


def _ratio(a: float, b: float | None) -> float | None:
    return None if b is None else round(a / b, 1)


def failures(res: dict) -> dict[str, int]:
    """Failed operations per figure of a :func:`run_bench` result ({} when
    every figure stands)."""
    counts = {}
    for name, c in res["cases"].items():
        counts[name] = c["counts"]["failed_ops"]
        counts[f"{name} (lock_stat off)"] = c["counts_no_stats"]["failed_ops"]
    for variant, c in res["reported_order9_counts"].items():
        counts[f"reported_order9 {variant}"] = c["failed_ops"]
    return {k: n for k, n in counts.items() if n}


def _f(v: float | None, spec: str) -> str:
    return "void" if v is None else format(v, spec)


def format_bench(res: dict) -> list[str]:
    lines = [f"shmalloc bench (median of {res['reps']} repetitions x {res['iters']} rounds; "
             "ns per alloc+free pair)",
             "",
             f"{'case':<14} {'lock_stat on':>14} {'lock_stat off':>14}"]
    for name, c in res["cases"].items():
        lines.append(f"{name:<14} {_f(c['ns_per_pair'], '.1f'):>14} "
                     f"{_f(c['ns_per_pair_no_stats'], '.1f'):>14}")
    ref = res["python_reference"]["order0_zone"]
    lines += [
        "",
        f"pure-Python reference, order0_zone: {ref['ns_per_pair']:.0f} ns per pair "
        f"(engine {_f(ref['engine_speedup'], '.0f')}x faster with lock_stat, "
        f"{_f(ref['engine_speedup_no_stats'], '.0f')}x without)",
        f"metadata: {res['metadata_bytes_per_page']:.2f} bytes per page "
        f"({res['frame_bytes']}-byte frame record + zone state)",
        f"create and initialise a {_size(res['init_memory_bytes'])} guest: "
        f"{res['init_s']:.3g} s",
        "",
        "order-9 alloc+free out of Reported free blocks, ns per pair (lock_stat on):",
        "  " + "   ".join(f"{k} {_f(v, '.1f')}" for k, v in res["reported_order9"].items()),
    ]
    rf = res.get("refault")
    if rf:
        lines.append("")
        lines += refault_lines(rf)
    if res.get("free_path_hooks"):
        lines += ["free-path hook past its order check, ns per call over no design:",
                  "  " + "   ".join(f"{k} {v:.2f}" for k, v in res["free_path_hooks"].items())]
    if res.get("free_hook"):
        lines += ["--free-hook-ns N: ns added to a free (the spin as it timed itself):",
                  "  " + "   ".join(f"{n}: {_f(v['ns_per_free'], '.0f')} "
                                    f"({_f(v['spin_ns'], '.0f')})"
                                    for n, v in res["free_hook"].items())]
    for figure, n in failures(res).items():
        lines.append(f"void: {figure}: {n} operations failed")
    return lines


def bench_host_pages() -> list[str]:
    """The host page sizes ``shmalloc bench`` measures a refault on: both,
    where this process may mount a huge tmpfs (else 4k alone)."""
    return ["4k"] if shm.huge_tmpfs_problem() else ["4k", "2m"]


def refault_lines(refault: dict) -> list[str]:
    """The refault unit cost, a line per host page size measured."""
    if "cost_ns_per_page" in refault:             # before --host-pages: 4 KiB
        refault = {"4k": dict(refault, cost_ns=refault["cost_ns_per_page"])}
    lines = []
    for hp, rf in refault.items():
        if hp == "4k":
            lines.append(f"refault on 4 KiB host pages: first write to a discarded page "
                         f"{rf['refault_ns_per_page']:.0f} ns, to a resident one "
                         f"{rf['resident_ns_per_page']:.1f} ns: {rf['cost_ns']:.0f} ns per "
                         "refault")
        else:
            size, pages = rf["host_page_bytes"] >> 20, rf["host_page_bytes"] // PAGE_SIZE
            lines.append(f"refault on {size} MiB host pages: first writes to the {pages} pages "
                         f"of a discarded host page {rf['refault_ns_per_page']:.0f} ns each, of a "
                         "resident one "
                         f"{rf['resident_ns_per_page']:.1f} ns: {rf['cost_ns']:.0f} ns per "
                         "refault (one host fault, zeroing the host page)")
    return lines
