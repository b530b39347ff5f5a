"""Model-based tests: the compiled engine against the pure-Python reference,
for every design.

Hypothesis draws a machine (zones, pcp lists, max order, report order,
capacity, head or tail put-back, and for the designs that record what the
host has whether it starts with its free memory reported) and a sequence of
steps.  Each step is one
agent calling one compiled entry point, in this process: a worker's
``alloc_pages`` or ``free_pages`` (wrong ones too: double frees, wrong
orders, foreign owners, random pfns), a pcp drain or a posted drain request
(served on the agent's next pcp call), or one of the kernels the design's
reporter or the hypervisor stub calls (the functions the design's group in
``launcher.experiment.compile.GROUPS`` lists, with the arguments a pass would
give them): mainline's cycle step (drain, walk, take, rotate), leftover drain,
request and pass edges; boundary's cycle step and zone requests; the callback
walk, sending to the free page virtqueue, and the stub's wait for a kick and
taking from it; isolate's per-pageblock isolation (through the design's
``start_isolate_page_range``) and undo; bitmap's scan, return and pass end;
hostscan's take and mark.  Batches stay out between steps, so workers
allocate and free while a batch is off the lists, as when the reporter has
dropped the zone lock to report.  The reference (shmalloc/reference.py) does
the same step.  After every step, allocations included:

* the return values are identical (pfns, error codes, statuses, batch
  contents, blocks walked);
* the whole state is identical (:func:`engine_state`): every free list in
  order (MOVABLE and ISOLATE), every pcp list in order, every allocated
  block and every block in a batch with its order and owner, the allocation
  generation of every page, PG_REPORTED, the pageblock migratetypes, the pcp
  drain requests posted and served, zone-lock acquisitions per zone and
  caller class and per agent, the reporting statistics the kernels keep
  (mainline's request state, wake-ups and the wake semaphore's value,
  refcnt, installs, pages not taken, Reported blocks stepped over, budgets
  exhausted, pcp drains), Duyck's zone request and active flags, per-order
  Reported counts and every boundary pointer, the frame bits (Nitesh's
  bitmap with its per-zone counts, hostscan's marks), and the free page
  virtqueue (its indexes, whether the host waits, the entries not taken);
* the invariant checker finds nothing, given what each agent holds (blocks
  in a batch allowed while one is out).

At the end every batch goes back and every isolation is undone, with the
same checks.  Marked ``nojit``: tests/test_nojit.py runs them again as plain
Python.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reporting_helpers import design

from hypervisor_stub.hostscan import host_scan_mark, host_scan_take, unreclaimed_runs
from launcher.experiment.designs import DESIGNS
from reporter.bitmap import bitmap_pass_done, bitmap_return, bitmap_scan
from reporter.boundary import boundary_cycle_step, boundary_request_all
from reporter.callback import walk_free_mem_block
from reporter.isolate import isolate_pageblock, undo_isolate_page_range
from reporter.mainline import drain_batch, reporting_cycle_step
from shmalloc import invariants, snapshot
from shmalloc.config import PAGEBLOCK_ORDER
from shmalloc.freepagevq import free_page_vq_take, free_page_vq_wait
from shmalloc.layout import (
    AG_DRAIN_DONE,
    AG_DRAIN_REQ,
    E_BAD_ORDER,
    E_BAD_PFN,
    E_DOUBLE_FREE,
    E_NOT_ALLOCATED,
    E_NOT_OWNER,
    E_WRONG_ORDER,
    H_BITMAP_WORDS,
    LS_ACQUISITIONS,
    MIGRATE_MOVABLE,
    MIGRATE_TYPES,
    NR_CALLERS,
    PG_REPORTED,
    PS_INFLIGHT,
    REPORT_FIELDS,
    VQ_AVAIL,
    VQ_NOTIFY,
    VQ_RING,
    VQ_USED,
    WC_LOCK_ACQUISITIONS,
    Z_BITMAP_COUNT,
    Z_BOUNDARY,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    Z_WMARK_MIN,
    ZRF_ACTIVE,
    ZRF_REQUESTED,
    Layout,
)
from shmalloc.machine import Machine, MachineConfig
from shmalloc.page_alloc import alloc_pages, free_pages
from shmalloc.pcp import drain_pages
from shmalloc.reference import REFERENCE_STATS, ReferenceAllocator
from shmalloc.reporting import (
    page_reporting_begin_pass,
    page_reporting_end_pass,
    page_reporting_request,
)

pytestmark = pytest.mark.nojit

EXAMPLES = int(os.environ.get("SHMALLOC_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("SHMALLOC_MODEL_STEPS", "100"))
WORKERS = 2
AGENTS = WORKERS + 3

WORKER_OPS = ["alloc", "alloc", "alloc", "free", "free", "free", "free_other", "double_free",
              "wrong_order", "random_free", "drain", "post_drain", "burst"]
#: each design's steps: the kernels its reporter (or the stub) calls
DESIGN_OPS = {
    "none": [],
    "mainline": ["ml_step", "ml_step", "ml_drain_step", "ml_drain_step", "ml_leftover",
                 "ml_pass", "ml_request"],
    "boundary": ["bd_step", "bd_step", "bd_step", "bd_request_all"],
    "callback": ["cb_walk", "cb_walk", "cb_host"],
    "isolate": ["iso_start", "iso_start", "iso_undo", "iso_undo", "cb_walk"],
    "bitmap": ["bm_scan", "bm_scan", "bm_return", "bm_return", "bm_done"],
    "hostscan": ["hs_take", "hs_take", "hs_mark", "hs_mark"],
}


def operations(name: str):
    return st.tuples(
        st.sampled_from(WORKER_OPS + DESIGN_OPS[name]),
        st.integers(0, AGENTS - 1),     # agent
        st.one_of(st.integers(0, 3), st.integers(0, 10)),   # order (clamped to the machine's)
        st.integers(0, 1 << 30),        # the step's other choices
    )


@st.composite
def machines(draw, name: str):
    """A small machine for design ``name``, and where put-backs go."""
    max_order = draw(st.sampled_from([10, 11]))
    pcp_batch, pcp_high = draw(st.sampled_from([(0, 0), (3, 7), (2, 2)]))
    # isolate isolates whole pageblocks; the others report from any order
    lowest = PAGEBLOCK_ORDER if name == "isolate" else 2
    cfg = MachineConfig(memory=(8 << 20) if max_order == 10 else (16 << 20),
                        zones=draw(st.sampled_from([1, 2])), workers=WORKERS,
                        max_order=max_order, pcp_batch=pcp_batch, pcp_high=pcp_high or 1,
                        report_order=draw(st.integers(lowest, max_order - 1)),
                        capacity=draw(st.integers(1, 4)), strategy=DESIGNS[name].hook,
                        free_page_vq=draw(st.integers(1, 6)),
                        # --start reported, where the design records what the host has
                        start_reported=DESIGNS[name].records_host and draw(st.booleans()))
    return cfg, draw(st.sampled_from(["head", "tail"]))


# -- the state compared after every step ------------------------------------------------

def reference_state(ref: ReferenceAllocator) -> dict:
    areas = {}
    for z in range(ref.nr_zones):
        for o in range(ref.max_order):
            for mt in range(MIGRATE_TYPES):
                if ref.free_area[z][o][mt]:
                    areas[(z, o, mt)] = list(ref.free_area[z][o][mt])
    return {
        "free_area": areas,
        "pcp": {k: list(v) for k, v in ref.pcp.items() if v},
        "allocated": ref.allocated(),
        "inflight": ref.inflight(),
        "gen": {p: n & 0xFFFF for p, n in ref.gen.items() if n & 0xFFFF},
        "reported": sorted(ref.reported),
        "pageblock_mt": list(ref.pageblock_mt),
        "drain_requests": (list(ref.drain_req), list(ref.drain_done)),
        "locks": {k: v for k, v in ref.locks.items() if v},
        "agent_locks": {k: v for k, v in ref.agent_locks.items() if v},
        "stats": {k: ref.stats[k] for k in REFERENCE_STATS},
        "wake_posts": ref.stats["requests"] + ref.vq_posts,
        "free_page_vq": (len(ref.vq), ref.vq_used, ref.vq_notify, ref.vq[ref.vq_used:]),
        "zone_flags": [(ref.zone_requested[z], ref.zone_active[z]) for z in range(ref.nr_zones)],
        "reported_count": [list(c) for c in ref.reported_count],
        "boundary": {(z, o, mt): ref.boundary.get((z, o, mt), -1) for z in range(ref.nr_zones)
                     for o in range(ref.max_order) for mt in range(MIGRATE_TYPES)},
        "frame_bits": sorted(ref.marked),
        "bitmap_count": list(ref.bitmap_count),
    }


def frame_bits(m: Machine, report_order: int) -> list[int]:
    """The pfns of the report-order frames whose bit is set (bitmap, hostscan)."""
    words = int(m.zs[H_BITMAP_WORDS])
    out = []
    for z in range(m.nr_zones):
        start, end = m.zone_range(z)
        base = m.layout.off_strat + z * words
        bits = np.unpackbits(m.zs[base: base + words].view(np.uint8), bitorder="little")
        out += [start + (int(i) << report_order)
                for i in np.flatnonzero(bits[:(end - start) >> report_order])]
    return out


def free_page_vq(m: Machine) -> tuple:
    """(avail, used, notifications on, the entries not taken) of the ring."""
    zs, vq, size = m.zs, m.layout.off_vq, m.layout.vq_size
    avail, used = int(zs[vq + VQ_AVAIL]), int(zs[vq + VQ_USED])
    words = [int(zs[vq + VQ_RING + i % size]) for i in range(used, avail)]
    return avail, used, bool(zs[vq + VQ_NOTIFY]), [(w >> 8, w & 0xFF) for w in words]


def engine_state(m: Machine, report_order: int) -> dict:
    zs, f, lay = m.zs, m.frames, m.layout
    inflight = np.flatnonzero(f["state"] == PS_INFLIGHT)
    gen = np.flatnonzero(f["gen"])
    locks = {}
    for z in range(m.nr_zones):
        for c in range(NR_CALLERS):
            n = int(zs[Layout.lockstat(z, c) + LS_ACQUISITIONS])
            if n:
                locks[(z, c)] = n
    agent_locks = {a: int(zs[lay.wstats(a) + WC_LOCK_ACQUISITIONS]) for a in range(AGENTS)}
    zones = [lay.zone(z) for z in range(m.nr_zones)]
    return {
        "free_area": snapshot.free_areas(m),
        "pcp": snapshot.pcp_lists(m),
        "allocated": snapshot.allocated_blocks(m),
        "inflight": {int(p): (int(f["order"][p]), int(f["owner"][p])) for p in inflight},
        "gen": {int(p): int(f["gen"][p]) for p in gen},
        "reported": [int(p) for p in np.flatnonzero(f["flags"] & PG_REPORTED)],
        "pageblock_mt": [int(x) for x in zs[lay.off_pageblock:
                                            lay.off_pageblock + lay.nr_pageblocks]],
        "drain_requests": ([int(zs[lay.agent(a) + AG_DRAIN_REQ]) for a in range(AGENTS)],
                           [int(zs[lay.agent(a) + AG_DRAIN_DONE]) for a in range(AGENTS)]),
        "locks": locks,
        "agent_locks": {a: n for a, n in agent_locks.items() if n},
        "stats": {k: int(zs[lay.off_report + REPORT_FIELDS.index(k)]) for k in REFERENCE_STATS},
        "wake_posts": m.wake.value,
        "free_page_vq": free_page_vq(m),
        "zone_flags": [(bool(zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED),
                        bool(zs[zb + Z_REPORT_FLAGS] & ZRF_ACTIVE)) for zb in zones],
        "reported_count": [[int(zs[zb + Z_REPORTED + o]) for o in range(m.max_order)]
                           for zb in zones],
        "boundary": {(z, o, mt): int(zs[zones[z] + Z_BOUNDARY + o * MIGRATE_TYPES + mt])
                     for z in range(m.nr_zones) for o in range(m.max_order)
                     for mt in range(MIGRATE_TYPES)},
        "frame_bits": frame_bits(m, report_order) if int(zs[H_BITMAP_WORDS]) else [],
        "bitmap_count": [int(zs[zb + Z_BITMAP_COUNT]) for zb in zones],
    }


def differences(got: dict, want: dict) -> str:
    """What differs, part by part (and list by list for the free areas)."""
    out = []
    for key in want:
        if got[key] == want[key]:
            continue
        if isinstance(want[key], dict):
            for k in sorted(set(got[key]) | set(want[key]), key=str):
                if got[key].get(k) != want[key].get(k):
                    out.append(f"{key}[{k}]: engine {got[key].get(k)}, "
                               f"reference {want[key].get(k)}")
        else:
            out.append(f"{key}: engine {got[key]}, reference {want[key]}")
    return "; ".join(out[:12])


# -- one machine, one sequence ------------------------------------------------------------

class Model:
    """The engine and the reference side by side, stepped together."""

    def __init__(self, name: str, cfg: MachineConfig, putback: str):
        self.name = name
        self.cfg = cfg
        self.m = m = Machine.create(cfg)
        self.to_tail = putback == "tail"
        wmark = [int(m.zs[m.layout.zone(z) + Z_WMARK_MIN]) for z in range(m.nr_zones)]
        self.ref = ReferenceAllocator(cfg.nr_pages, cfg.zones, cfg.max_order, AGENTS,
                                      cfg.pcp_batch, cfg.pcp_high, hook=cfg.strategy,
                                      report_order=cfg.report_order, capacity=cfg.capacity,
                                      wmark_min=wmark, vq_size=cfg.free_page_vq)
        if cfg.start_reported:
            self.ref.start_reported()
        self.ro = cfg.report_order
        self.ctl = m.control_agent
        # the reporter's agent; hostscan's kernels run in the hypervisor stub
        self.rep = m.hypervisor_agent if name == "hostscan" else m.reporter_agent
        self.bp = np.zeros(cfg.capacity, np.int64)       # the engine's batch
        self.bo = np.zeros(cfg.capacity, np.int64)
        self.batch: list[tuple[int, int]] = []            # the reference's
        self.batch_zone = -1
        self.held: list[tuple[int, int, int]] = []        # (pfn, order, agent)
        self.freed: list[tuple[int, int, int]] = []
        self.isolated: list[tuple[int, int]] = []
        self.scan_index = [0] * cfg.zones
        self.in_pass = False
        most = max(1, cfg.nr_pages >> cfg.report_order)  # callback's walk array
        self.walk_pfn = np.zeros(most, np.int64)
        self.design = None
        if name == "isolate":
            self.design = design(m, "isolate", capacity=cfg.capacity,
                                 report_order=cfg.report_order, putback=putback)
        self.called: set = set()
        self.what = "start"

    def call(self, kernel, *args):
        self.called.add(kernel)
        return kernel(*args)

    # -- helpers --------------------------------------------------------------
    def engine_batch(self, n: int) -> list[tuple[int, int]]:
        return [(int(self.bp[i]), int(self.bo[i])) for i in range(n)]

    def load_batch(self, blocks) -> int:
        for i, (p, o) in enumerate(blocks):
            self.bp[i], self.bo[i] = p, o
        return len(blocks)

    def report_order_of(self, order: int) -> int:
        return self.ro + order % (self.cfg.max_order - self.ro)

    def zone(self, choice: int) -> int:
        return self.batch_zone if self.batch else choice % self.cfg.zones

    def batch_out(self, n: int, zone: int):
        got = self.engine_batch(n)
        self.batch_zone = zone if self.batch else -1
        return got, list(self.batch)

    # -- worker steps ---------------------------------------------------------
    def op_alloc(self, agent, order, choice):
        got = int(alloc_pages(self.m.frames, self.m.zs, agent, order))
        want = self.ref.alloc(agent, order)
        if got >= 0:
            self.held.append((got, order, agent))
        return got, want

    def _free(self, kind, agent, order, choice):
        held, n_agents = self.held, AGENTS
        if kind in ("free", "free_other", "wrong_order") and held:
            pfn, o, who = held[choice % len(held)]
            if kind == "free_other":
                who = (who + 1 + choice % (n_agents - 1)) % n_agents
            if kind == "wrong_order":
                o = (o + 1 + choice % (self.cfg.max_order - 1)) % self.cfg.max_order
        elif kind == "double_free" and self.freed:
            pfn, o, who = self.freed[choice % len(self.freed)]
        else:
            pfn, o, who = choice % (self.cfg.nr_pages + 8) - 4, order, agent
        got = int(free_pages(self.m.frames, self.m.zs, who, pfn, o))
        want = self.ref.free(who, pfn, o)
        if got == 0:
            entry = next(h for h in held if h[0] == pfn)
            held.remove(entry)
            self.freed.append(entry)
        return got, want

    def op_free(self, *a):
        return self._free("free", *a)

    def op_free_other(self, *a):
        return self._free("free_other", *a)

    def op_double_free(self, *a):
        return self._free("double_free", *a)

    def op_wrong_order(self, *a):
        return self._free("wrong_order", *a)

    def op_random_free(self, *a):
        return self._free("random_free", *a)

    def op_burst(self, agent, order, choice):
        """Fragmentation in one step: 4 to 32 allocations of one small order
        by one agent, then every other block freed (each call compared and
        checked as a step of its own)."""
        order %= 5
        start = len(self.held)
        for i in range(4 + choice % 29):
            self.settle(*self.op_alloc(agent, order, choice), sub=f", alloc {i}")
        for i, (pfn, o, a) in enumerate(self.held[start:][(choice >> 5) & 1::2]):
            got = int(free_pages(self.m.frames, self.m.zs, a, pfn, o))
            want = self.ref.free(a, pfn, o)
            if got == 0:
                self.held.remove((pfn, o, a))
                self.freed.append((pfn, o, a))
            self.settle(got, want, sub=f", free {i}")
        return None, None

    def op_drain(self, agent, order, choice):
        got = int(drain_pages(self.m.frames, self.m.zs, self.ctl, agent))
        return got, self.ref.drain(agent, self.ctl)

    def op_post_drain(self, agent, order, choice):
        self.m.zs[self.m.layout.agent(agent) + AG_DRAIN_REQ] += 1
        self.ref.post_drain(agent)
        return None, None

    # -- mainline ---------------------------------------------------------------
    def _cycle_step(self, order, choice, drain: bool):
        m, zone = self.m, self.zone(choice)
        order = self.report_order_of(order)
        budget = (choice >> 3) % 5 - 1
        n = len(self.batch) if drain else 0
        reported = not drain or choice % 4 != 0
        got = self.call(reporting_cycle_step, m.frames, m.zs, self.rep, zone, order,
                        MIGRATE_MOVABLE, self.bp, self.bo, len(self.batch), n, reported, budget,
                        self.to_tail)
        want = self.ref.reporting_cycle_step(self.rep, zone, order, MIGRATE_MOVABLE, self.batch,
                                             n, reported, budget, self.to_tail)
        got = (int(got[0]), int(got[1]))
        return (got, self.batch_out(got[1], zone)[0]), (want, list(self.batch))

    def op_ml_step(self, agent, order, choice):
        return self._cycle_step(order, choice, False)

    def op_ml_drain_step(self, agent, order, choice):
        return self._cycle_step(order, choice, bool(self.batch))

    def op_ml_leftover(self, agent, order, choice):
        if not self.batch:
            return self.op_ml_step(agent, order, choice)
        reported = choice % 4 != 0
        self.call(drain_batch, self.m.frames, self.m.zs, self.rep, self.batch_zone, self.bp,
                  self.bo, len(self.batch), reported, self.to_tail)
        self.ref.drain_batch(self.rep, self.batch_zone, self.batch, reported, self.to_tail)
        self.batch_zone = -1
        return None, None

    def op_ml_pass(self, agent, order, choice):
        if not self.in_pass:
            self.call(page_reporting_begin_pass, self.m.zs)
            self.ref.page_reporting_begin_pass()
            self.in_pass = True
            return None, None
        self.in_pass = False
        return bool(self.call(page_reporting_end_pass, self.m.zs)), \
            self.ref.page_reporting_end_pass()

    def op_ml_request(self, agent, order, choice):
        self.call(page_reporting_request, self.m.zs, self.rep)
        self.ref.page_reporting_request()
        return None, None

    # -- boundary -------------------------------------------------------------------
    def op_bd_request_all(self, agent, order, choice):
        self.call(boundary_request_all, self.m.zs, self.rep)
        self.ref.boundary_request_all(self.rep)
        return None, None

    def op_bd_step(self, agent, order, choice):
        m = self.m
        if self.batch:                                  # drain the batch, fill the next
            zone, n, reported = self.batch_zone, len(self.batch), choice % 4 != 0
        else:                                           # start a requested zone's cycle
            zone, n, reported = choice % self.cfg.zones, -1, True
            if not self.ref.zone_requested[zone]:
                return self.op_bd_request_all(agent, order, choice)
        got = int(self.call(boundary_cycle_step, m.frames, m.zs, self.rep, zone, self.bp,
                            self.bo, n, reported))
        want = self.ref.boundary_cycle_step(self.rep, zone, self.batch, n, reported)
        return (got, self.batch_out(got, zone)[0]), (want, list(self.batch))

    # -- callback, isolate ---------------------------------------------------------------
    def op_cb_walk(self, agent, order, choice):
        m = self.m
        zone, order = choice % self.cfg.zones, order % self.cfg.max_order
        mt = (choice >> 2) % MIGRATE_TYPES
        record = bool((choice >> 4) & 1)
        send = not record and self.name == "callback"    # isolate records, callback sends
        start = (choice >> 5) % (len(self.walk_pfn) + 1)
        n, visited = self.call(walk_free_mem_block, m.frames, m.zs, self.rep, zone, order, mt,
                               self.walk_pfn, start, record, send, 0)
        got = ([int(p) for p in self.walk_pfn[start:n]], int(visited))
        return got, self.ref.walk_free_mem_block(self.rep, zone, order, mt,
                                                 len(self.walk_pfn) - start, record, send)

    def op_cb_host(self, agent, order, choice):
        """The stub's side of the free page virtqueue: notifications on;
        if entries wait, take them all."""
        got = int(self.call(free_page_vq_wait, self.m.zs))
        want = self.ref.free_page_vq_wait()
        if got and choice & 1:
            return (got, free_page_vq_take(self.m.zs)), (want, self.ref.free_page_vq_take())
        return got, want

    def op_iso_start(self, agent, order, choice):
        ref, pbo = self.ref, PAGEBLOCK_ORDER
        free = [(p, o) for z in range(ref.nr_zones) for o in range(pbo, ref.max_order)
                for p in ref.free_area[z][o][MIGRATE_MOVABLE]]
        if free and choice % 4:
            pfn, order = free[(choice >> 2) % len(free)]
        else:                                           # maybe not a free block at all
            order = pbo + order % (ref.max_order - pbo)
            pfn = (choice >> 2) % ref.nr_pages & ~((1 << order) - 1)
        zone = ref.zone_of(pfn)
        self.called.add(isolate_pageblock)              # its only kernel, per pageblock
        got = self.design.start_isolate_page_range(zone, pfn, order)
        want = ref.start_isolate_page_range(self.rep, zone, pfn, order)
        if got:
            self.isolated.append((pfn, order))
        return got, want

    def op_iso_undo(self, agent, order, choice):
        if not self.isolated:
            return self.op_iso_start(agent, order, choice)
        pfn, order = self.isolated[choice % len(self.isolated)]
        zone = self.ref.zone_of(pfn)
        self.call(undo_isolate_page_range, self.m.frames, self.m.zs, self.rep, zone, pfn, order,
                  self.to_tail)
        self.ref.undo_isolate_page_range(self.rep, zone, pfn, order, self.to_tail)
        self.isolated.remove((pfn, order))
        return None, None

    # -- bitmap ---------------------------------------------------------------------------
    def op_bm_scan(self, agent, order, choice):
        if self.batch:
            return self.op_bm_return(agent, order, choice)
        m, zone = self.m, choice % self.cfg.zones
        index = self.scan_index[zone] if choice & 4 else 0
        n, nxt = self.call(bitmap_scan, m.frames, m.zs, self.rep, zone, self.bp, self.bo, index)
        want = self.ref.bitmap_scan(self.rep, zone, self.batch, index)
        self.scan_index[zone] = max(int(nxt), 0)
        return ((int(n), int(nxt)), self.batch_out(int(n), zone)[0]), (want, list(self.batch))

    def op_bm_return(self, agent, order, choice):
        if not self.batch:
            return self.op_bm_scan(agent, order, choice | 4)
        self.call(bitmap_return, self.m.frames, self.m.zs, self.rep, self.batch_zone, self.bp,
                  self.bo, len(self.batch))
        self.ref.bitmap_return(self.rep, self.batch_zone, self.batch)
        self.batch_zone = -1
        if choice & 1:
            return self.op_bm_done(agent, order, choice)
        return None, None

    def op_bm_done(self, agent, order, choice):
        self.call(bitmap_pass_done, self.m.zs)
        self.ref.bitmap_pass_done()
        return None, None

    # -- hostscan -------------------------------------------------------------------------
    def op_hs_take(self, agent, order, choice):
        if self.batch:
            return self.op_hs_mark(agent, order, choice)
        m, zone, order = self.m, choice % self.cfg.zones, self.report_order_of(order)
        budget = (choice >> 3) % (len(self.ref.free_area[zone][order][MIGRATE_MOVABLE]) + 2)
        n, visited = self.call(host_scan_take, m.frames, m.zs, self.rep, zone, order, self.bp,
                               self.bo, budget)
        want = self.ref.host_scan_take(self.rep, zone, order, self.batch, budget)
        got = (int(n), int(visited))
        return (got, self.batch_out(got[0], zone)[0]), (want, list(self.batch))

    def op_hs_mark(self, agent, order, choice):
        if not self.batch:
            return self.op_hs_take(agent, order, choice)
        n = len(self.batch)
        # the frames the stub found unmarked (unreclaimed_runs, as it reads them) and
        # punched out: each one that ``choice`` says succeeded
        unmarked = [p for pfn, o in self.engine_batch(n)
                    for first, count in unreclaimed_runs(self.m.zs, self.batch_zone, pfn, o)
                    for p in range(first, first + (count << self.ro), 1 << self.ro)]
        assert unmarked == [p for pfn, o in self.batch for p in self.ref.frames_of(pfn, o)
                            if p not in self.ref.marked], f"{self.what}: unreclaimed frames"
        marks = [p for i, p in enumerate(unmarked) if (choice >> (i % 60)) & 1]
        mark_pfn = np.array(marks + [0], np.int64)
        self.call(host_scan_mark, self.m.frames, self.m.zs, self.rep, self.batch_zone, self.bp,
                  self.bo, n, mark_pfn, len(marks))
        self.ref.host_scan_mark(self.rep, self.batch_zone, self.batch, marks)
        self.batch_zone = -1
        return None, None

    # -- the checks after every step ---------------------------------------------------------
    def check(self, what: str) -> None:
        got, want = engine_state(self.m, self.ro), reference_state(self.ref)
        assert got == want, f"{what}: state diverged: {differences(got, want)}"
        holders: dict[int, list] = {a: [] for a in range(AGENTS)}
        for pfn, o, a in self.held:
            holders[a].append((pfn, o))
        errors = invariants.check(self.m, held=holders, allow_inflight=bool(self.batch))
        assert errors == [], f"{what}: {errors}"

    def settle(self, got, want, sub: str = "") -> None:
        """The return values agree, then the states, then the checker."""
        assert got == want, f"{self.what}{sub}: engine returned {got}, reference {want}"
        self.check(self.what + sub)

    def step(self, i: int, kind: str, agent: int, order: int, choice: int) -> None:
        order = min(order, self.cfg.max_order - 1)
        self.what = f"step {i}: {kind}(agent {agent}, order {order}, choice {choice})"
        self.settle(*getattr(self, "op_" + kind)(agent, order, choice))

    def wind_down(self) -> None:
        """Every batch back, every isolation undone: a quiescent machine."""
        steps = {"mainline": "ml_leftover", "boundary": "bd_step", "bitmap": "bm_return",
                 "hostscan": "hs_mark"}
        for _ in range(64):
            if not self.batch:
                break
            self.step(-1, steps[self.name], self.ctl, 0, 1)
        while self.isolated:
            self.step(-1, "iso_undo", self.ctl, 0, -1)
        assert not self.batch and not self.isolated
        if self.in_pass:
            self.step(-1, "ml_pass", self.ctl, 0, 0)
        assert invariants.check(self.m, held=None) == []


def run_sequence(name: str, cfg: MachineConfig, putback: str, ops) -> Model:
    model = Model(name, cfg, putback)
    try:
        model.check("start")
        for i, op in enumerate(ops):
            model.step(i, *op)
        model.wind_down()
    finally:
        model.m.destroy()
    return model


SETTINGS = dict(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def model_test(name: str):
    @settings(**SETTINGS)
    @given(machine=machines(name),
           ops=st.lists(operations(name), min_size=STEPS // 4, max_size=STEPS))
    def test(machine, ops):
        run_sequence(name, *machine, ops)
    test.__name__ = f"test_model_{name}"
    test.__doc__ = f"The engine and the reference agree after every step under {name}."
    return test


for _name in DESIGNS:
    globals()[f"test_model_{_name}"] = model_test(_name)


def test_the_model_drives_every_design_kernel():
    """Every compiled entry point a design's processes call
    (its group in launcher.experiment.compile, the layout and free-list helpers it
    reads from Python aside) is called by some step of its model test: a
    design that gains a kernel fails here until the model drives it."""
    from launcher.experiment.compile import GROUPS, Kernel
    assert set(DESIGN_OPS) == set(DESIGNS)
    for name in DESIGNS:
        kinds = sorted(set(DESIGN_OPS[name]))
        ops = [("alloc", 0, 9, 0), ("alloc", 1, 0, 0), ("free", 1, 0, 0)]
        ops += [(k, 0, 1, c) for c in (9, 13, 23, 27) for k in kinds]
        cfg = MachineConfig(memory=16 << 20, zones=1, workers=WORKERS, pcp_batch=0,
                            report_order=PAGEBLOCK_ORDER, capacity=2,
                            strategy=DESIGNS[name].hook)
        model = run_sequence(name, cfg, "head", ops)
        want = {Kernel(k, a).dispatcher() for k, a in GROUPS.get(name, [])
                if k.startswith(("reporter.", "hypervisor_stub.", "shmalloc.reporting.",
                                 "shmalloc.freepagevq."))}
        assert want <= model.called, f"{name}: no step calls {want - model.called}"


def test_isolate_free_page_refuses_at_the_min_watermark(make_machine):
    """``__isolate_free_page`` keeps the zone's free pages at or above its
    min watermark: mainline's walk and bitmap's scan stop there, in the
    engine and in the reference alike."""
    for name, op in (("mainline", "ml_step"), ("bitmap", "bm_scan")):
        cfg = MachineConfig(memory=16 << 20, zones=1, workers=WORKERS, pcp_batch=0,
                            capacity=4, strategy=DESIGNS[name].hook)
        model = Model(name, cfg, "head")
        try:
            m = model.m
            wmark = int(m.zs[m.layout.zone(0) + Z_WMARK_MIN])
            assert 0 < wmark < 512                      # 128 pages on a 16 MiB guest
            for _ in range(3):
                model.step(0, "alloc", 0, 10, 0)        # one order-10 block left
            model.step(1, "alloc", 1, 9, 0)             # ... split: an order-9 block
            model.step(2, "free", 1, 9, 3)              # freed: 1024 free pages, 1 bit set
            free_before = snapshot.free_pages(m)
            assert free_before == 1024
            model.step(3, op, 0, 1, 8)                  # the order-10 list, budget 0
            # the order-10 block (1024 - 1024 < 128) is refused; nothing taken
            assert model.batch == [] and snapshot.free_pages(m) == free_before
            assert model.ref.stats["pages_not_taken"] == 1024
            model.wind_down()
        finally:
            m.destroy()


def test_bitmap_scans_the_last_bit_of_a_word():
    """Bit 63 of a bitmap word: ``1 << 63`` does not fit an int64 when the
    scan runs as plain Python (found by the no-JIT run of the model)."""
    cfg = MachineConfig(memory=8 << 20, zones=1, workers=WORKERS, max_order=10, pcp_batch=0,
                        report_order=2, capacity=4, strategy=DESIGNS["bitmap"].hook)
    model = Model("bitmap", cfg, "head")
    try:
        for i in range(64):
            model.step(i, "alloc", 0, 2, 0)             # pfns 0, 4, ..., 252
        model.step(64, "free", 0, 2, 63)                # 252 alone: the frame of bit 63
        assert model.ref.marked == {252}
        model.step(65, "bm_scan", 0, 0, 0)
        assert model.batch == [(252, 2)]
        model.wind_down()
    finally:
        model.m.destroy()


def test_exhaustion_and_full_merge(make_machine):
    """Allocate every page one by one, free them all: back to max-order blocks."""
    m = make_machine(memory=8 << 20, zones=2, pcp_batch=0)
    pfns = [m.alloc(0) for _ in range(m.nr_pages)]
    assert sorted(pfns) == list(range(m.nr_pages))
    assert m.try_alloc(0) is None
    for p in pfns:
        m.free(p, 0)
    assert invariants.check(m) == []
    top = m.max_order - 1
    assert snapshot.free_areas(m) == {(z, top, 0): [z * 1024] for z in range(2)}


def test_error_codes_leave_lists_untouched(make_machine):
    m = make_machine(pcp_batch=0)
    a = m.control_agent
    p = m.alloc(3)
    before = engine_state(m, 9)
    assert free_pages(m.frames, m.zs, a, p, 2) == E_WRONG_ORDER
    assert free_pages(m.frames, m.zs, 0, p, 3) == E_NOT_OWNER
    assert free_pages(m.frames, m.zs, a, p + 1, 0) == E_NOT_ALLOCATED
    assert free_pages(m.frames, m.zs, a, p + 2, 3) == E_BAD_PFN
    assert free_pages(m.frames, m.zs, a, m.nr_pages, 0) == E_BAD_PFN
    assert free_pages(m.frames, m.zs, a, p, 11) == E_BAD_ORDER
    after = engine_state(m, 9)
    for key in ("locks", "agent_locks"):     # the failed frees took the zone lock
        before.pop(key), after.pop(key)
    assert after == before
    m.free(p, 3)
    q = m.alloc(3)              # the same block again: its buddy is free, so a
    assert q == p               # double free must not merge it twice
    m.free(q, 3)
    assert free_pages(m.frames, m.zs, a, q, 3) in (E_NOT_ALLOCATED, E_DOUBLE_FREE)
    assert invariants.check(m) == []
