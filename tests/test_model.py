"""Model-based tests: the compiled engine against the pure-Python reference.

Random operation sequences (hypothesis) run on both; after every step the
return codes, every free list (in order), every pcp list and every allocated
block must be identical, and the invariant checker must find nothing.
Marked ``nojit``: tests/test_nojit.py runs them again as plain Python.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmalloc import invariants, snapshot
from shmalloc.layout import (
    E_BAD_ORDER,
    E_BAD_PFN,
    E_DOUBLE_FREE,
    E_NOT_ALLOCATED,
    E_NOT_OWNER,
    E_WRONG_ORDER,
    MIGRATE_TYPES,
)
from shmalloc.machine import Machine, MachineConfig
from shmalloc.page_alloc import alloc_pages, free_pages
from shmalloc.reference import ReferenceAllocator

pytestmark = pytest.mark.nojit

EXAMPLES = int(os.environ.get("SHMALLOC_MODEL_EXAMPLES", "40"))
WORKERS = 2
AGENTS = WORKERS + 3

op = st.tuples(
    st.sampled_from(["alloc", "alloc", "alloc", "free", "free", "free", "free_other",
                     "double_free", "wrong_order", "random_free", "drain"]),
    st.integers(0, AGENTS - 1),     # agent
    st.integers(0, 10),             # order (clamped to max_order - 1)
    st.integers(0, 1 << 30),        # a random choice
)


def reference_state(ref: ReferenceAllocator):
    areas = {}
    for z in range(ref.nr_zones):
        for o in range(ref.max_order):
            for mt in range(MIGRATE_TYPES):
                if ref.free_area[z][o][mt]:
                    areas[(z, o, mt)] = list(ref.free_area[z][o][mt])
    pcps = {k: list(v) for k, v in ref.pcp.items() if v}
    return areas, pcps, ref.allocated()


def engine_state(m: Machine):
    return snapshot.free_areas(m), snapshot.pcp_lists(m), snapshot.allocated_blocks(m)


def run_sequence(cfg: MachineConfig, ops) -> None:
    m = Machine.create(cfg)
    try:
        ref = ReferenceAllocator(cfg.nr_pages, cfg.zones, cfg.max_order, AGENTS,
                                 cfg.pcp_batch, cfg.pcp_high)
        held: list[tuple[int, int, int]] = []       # (pfn, order, agent)
        freed: list[tuple[int, int, int]] = []
        for step, (kind, agent, order, choice) in enumerate(ops):
            order = min(order, cfg.max_order - 1)
            if kind == "alloc":
                got = alloc_pages(m.frames, m.zs, agent, order)
                want = ref.alloc(agent, order)
                assert got == want, f"step {step}: alloc({agent}, {order}) {got} != {want}"
                if got >= 0:
                    held.append((int(got), order, agent))
                continue
            if kind == "drain":
                m.drain_pcp(agent)
                ref.drain(agent)
            else:
                if kind in ("free", "free_other", "wrong_order") and held:
                    pfn, o, owner = held[choice % len(held)]
                    who = owner
                    if kind == "free_other":
                        who = (owner + 1 + choice % (AGENTS - 1)) % AGENTS
                    if kind == "wrong_order":
                        o = (o + 1 + choice % (cfg.max_order - 1)) % cfg.max_order
                elif kind == "double_free" and freed:
                    pfn, o, who = freed[choice % len(freed)]
                else:
                    pfn, o, who = choice % (cfg.nr_pages + 8) - 4, order, agent
                got = free_pages(m.frames, m.zs, who, pfn, o)
                want = ref.free(who, pfn, o)
                assert got == want, f"step {step}: free({who}, {pfn}, {o}) {got} != {want}"
                if got == 0:
                    entry = next(h for h in held if h[0] == pfn)
                    held.remove(entry)
                    freed.append(entry)
            assert engine_state(m) == reference_state(ref), f"step {step}: {kind} diverged"
        assert engine_state(m) == reference_state(ref)
        holders = {}
        for pfn, o, a in held:
            holders.setdefault(a, []).append((pfn, o))
        assert invariants.check(m, held=holders) == []
    finally:
        m.destroy()


SETTINGS = dict(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(**SETTINGS)
@given(ops=st.lists(op, min_size=1, max_size=120))
def test_one_zone_no_pcp(ops):
    run_sequence(MachineConfig(memory=16 << 20, zones=1, workers=WORKERS, pcp_batch=0), ops)


@settings(**SETTINGS)
@given(ops=st.lists(op, min_size=1, max_size=120))
def test_two_zones_pcp(ops):
    run_sequence(MachineConfig(memory=16 << 20, zones=2, workers=WORKERS, pcp_batch=3,
                               pcp_high=7), ops)


@settings(**SETTINGS)
@given(ops=st.lists(op, min_size=1, max_size=80))
def test_four_zones_small_max_order_pcp(ops):
    run_sequence(MachineConfig(memory=8 << 20, zones=4, workers=WORKERS, max_order=10,
                               pcp_batch=2, pcp_high=2), ops)


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
    before = engine_state(m)
    assert free_pages(m.frames, m.zs, a, p, 2) == E_WRONG_ORDER
    assert free_pages(m.frames, m.zs, 0, p, 3) == E_NOT_OWNER
    assert free_pages(m.frames, m.zs, a, p + 1, 0) == E_NOT_ALLOCATED
    assert free_pages(m.frames, m.zs, a, p + 2, 3) == E_BAD_PFN
    assert free_pages(m.frames, m.zs, a, m.nr_pages, 0) == E_BAD_PFN
    assert free_pages(m.frames, m.zs, a, p, 11) == E_BAD_ORDER
    assert engine_state(m) == before
    m.free(p, 3)
    q = m.alloc(3)              # the same block again: its buddy is free, so a
    assert q == p               # double free must not merge it twice
    m.free(q, 3)
    assert free_pages(m.frames, m.zs, a, q, 3) in (E_NOT_ALLOCATED, E_DOUBLE_FREE)
    assert invariants.check(m) == []
