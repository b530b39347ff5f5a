"""The host's page size (--host-pages, shmalloc.hostpage): guest memory on
2 MiB transparent huge pages really is on huge pages, a 2 MiB discard really
gives the host its memory back, refaults and first touches are counted per
host page, the invariant checker holds the model's record against the host,
and a guest on a huge tmpfs is named, attached, cleaned up and never left
mounted like any other object."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from procs import killed_creator_run_id

from hypervisor_stub.stub import Hypervisor, StubOptions, punch_hole
from launcher.comparison.cost import attributed_cost
from launcher.experiment.config import RunConfig, default_host_pages
from shmalloc import hostpage, invariants, shm
from shmalloc.bench import measure_refault, refault_cost_ns
from shmalloc.config import PAGE_SIZE
from shmalloc.layout import HP_DISCARDED, HP_NEVER, HP_RESIDENT, WC_REFAULTS
from shmalloc.machine import ConfigError, Machine, MachineConfig
from shmalloc.workload import free_blocks, hog_alloc

HUGE = 2 << 20
PROBLEM = shm.huge_tmpfs_problem()
needs_huge = pytest.mark.skipif(PROBLEM is not None, reason=f"--host-pages 2m: {PROBLEM}")
ORDER = {"4k": 0, "2m": 9}


def machine(host_pages: str, memory: int = 16 << 20) -> Machine:
    return Machine.create(MachineConfig(memory=memory, workers=1, pcp_batch=0,
                                        host_page_order=ORDER[host_pages]))


def write_pages(m: Machine, n: int) -> tuple[np.ndarray, int]:
    """Allocate and write ``n`` order-0 pages as a worker does; returns
    them and the refaults the writes counted."""
    ws = m.layout.wstats(m.control_agent)
    before = int(m.zs[ws + WC_REFAULTS])
    pfn, order = np.zeros(n, np.int64), np.zeros(n, np.int64)
    got = hog_alloc(m.frames, m.zs, m.mem, m.control_agent, n, -1, 1.0, pfn, order)
    assert got == n
    return pfn, int(m.zs[ws + WC_REFAULTS]) - before


def free_pages(m: Machine, pfn: np.ndarray) -> None:
    free_blocks(m.frames, m.zs, m.mem, m.control_agent, pfn, np.zeros(len(pfn), np.int64),
                len(pfn), 1.0)


@needs_huge
def test_a_huge_guest_is_on_huge_pages_and_a_2m_punch_frees_them():
    m = machine("2m")
    try:
        pfn, _ = write_pages(m, m.nr_pages)                # every page, as a worker writes
        assert m.host_resident_bytes() == 16 << 20
        # the host maps this process's view of the guest with 2 MiB pages
        assert hostpage.shmem_pmd_mapped_bytes() >= 16 << 20
        free_pages(m, pfn)
        hv = Hypervisor(m, StubOptions())
        assert hv.discard(1024, 9) == 0                    # one 2 MiB host page
        assert m.host_resident_bytes() == 14 << 20         # all of it back to the host
        assert m.resident_pages(1024, 512) == 0
        assert hostpage.shmem_pmd_mapped_bytes() >= 14 << 20
        states = hostpage.host_page_states(m)
        assert list(states) == [HP_RESIDENT, HP_RESIDENT, HP_DISCARDED] + [HP_RESIDENT] * 5
        assert invariants.check(m) == []
    finally:
        m.destroy()


@pytest.mark.parametrize("host_pages", ["4k", pytest.param("2m", marks=needs_huge)])
def test_refaults_and_first_touches_are_counted_per_host_page(host_pages):
    """Write 4 MiB, discard it, write it again: 1024 refaults of 4 KiB, or
    2 of 2 MiB; the first writes were as many first touches."""
    m = machine(host_pages)
    try:
        pfn, refaults = write_pages(m, 1024)
        assert refaults == 0
        per = 1 << ORDER[host_pages]
        assert hostpage.first_touches(m) == 1024 // per
        free_pages(m, pfn)
        Hypervisor(m, StubOptions()).discard(0, 10)        # the 4 MiB block they merged into
        assert m.host_resident_bytes() == 0
        again, refaults = write_pages(m, 1024)
        assert sorted(again) == sorted(pfn)
        assert refaults == 1024 // per
        assert hostpage.first_touches(m) == 1024 // per    # not first any more
        assert m.host_resident_bytes() == 4 << 20
        free_pages(m, again)
        assert invariants.check(m) == []
    finally:
        m.destroy()


@needs_huge
def test_a_discard_of_memory_never_touched_is_no_refault():
    m = machine("2m")
    try:
        Hypervisor(m, StubOptions()).discard(0, 10)
        assert list(hostpage.host_page_states(m)[:2]) == [HP_NEVER, HP_NEVER]
        pfn, refaults = write_pages(m, 1024)
        assert refaults == 0 and hostpage.first_touches(m) == 2
        free_pages(m, pfn)
    finally:
        m.destroy()


@needs_huge
def test_the_checker_holds_the_model_against_the_host():
    """A host page the model says is discarded, or never touched, must not
    be resident: a discard that was marked but not done, or a write that
    bypassed the count, is a violation."""
    m = machine("2m")
    try:
        pfn, _ = write_pages(m, 512)                       # host page 0
        free_pages(m, pfn)
        hostpage.host_pages_discarded(m, 0, 512)        # marked, never punched
        errors = invariants.check(m)
        assert len(errors) == 1 and "host page 0 (pfn 0) is discarded" in errors[0]
        assert "512 of its pages are resident" in errors[0]
        punch_hole(m.guest_fd, 0, HUGE)
        assert invariants.check(m) == []
        m.mem[512 * 512] = 1                               # host page 1, behind the count's back
        errors = invariants.check(m)
        assert len(errors) == 1 and "host page 1 (pfn 512) is never touched" in errors[0]
    finally:
        m.destroy()


@needs_huge
def test_a_failed_discard_leaves_the_host_page_resident(monkeypatch):
    import hypervisor_stub.stub as stub
    m = machine("2m")
    try:
        pfn, _ = write_pages(m, 512)
        free_pages(m, pfn)
        monkeypatch.setattr(stub, "punch_hole", lambda fd, offset, length: -5)   # EIO
        assert Hypervisor(m, StubOptions()).discard(0, 9) == -5
        assert hostpage.host_page_states(m)[0] == HP_RESIDENT
        assert invariants.check(m) == []
    finally:
        m.destroy()


def test_host_pages_bad_combinations_are_refused_before_anything_exists():
    with pytest.raises(ConfigError, match="--host-pages: must be 4k or 2m"):
        MachineConfig(host_page_order=3).validate()
    with pytest.raises(ConfigError, match="--report-order: must be >= 9 with --host-pages 2m"):
        MachineConfig(host_page_order=9, report_order=8).validate()
    with pytest.raises(ConfigError, match="--host-pages: must be 4k or 2m, got '1g'"):
        RunConfig(host_pages="1g").resolved()


def test_without_root_2m_is_refused_and_the_default_is_4k(monkeypatch):
    monkeypatch.setattr(shm, "has_cap_sys_admin", lambda: False)
    with pytest.raises(ConfigError, match=r"--host-pages: 2m: mounting a tmpfs with "
                       r"huge=always needs root \(CAP_SYS_ADMIN\)"):
        RunConfig(host_pages="2m").resolved()
    assert default_host_pages() == "4k"
    assert RunConfig().resolved().host_pages == "4k"


def test_4k_is_refused_where_dev_shm_gives_huge_pages(monkeypatch):
    monkeypatch.setattr(shm, "shm_gets_huge_pages", lambda: "/dev/shm is mounted with huge=always")
    with pytest.raises(ConfigError, match=r"--host-pages: 4k: /dev/shm is mounted with "
                       "huge=always, so guest memory there would not be on 4 KiB pages"):
        RunConfig(host_pages="4k").resolved()


@needs_huge
@pytest.mark.timeout(60)
def test_attach_a_huge_guest_from_an_unrelated_process():
    m = machine("2m")
    try:
        code = textwrap.dedent(f"""
            from shmalloc.machine import Machine
            m = Machine.attach({m.run_id!r})
            m.mem[0] = 77
            print(m.host_page_order, m.nr_pages)
            m.close()
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=50)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["9", str(m.nr_pages)]
        assert m.mem[0] == 77 and m.host_resident_bytes() == HUGE
    finally:
        m.destroy()
    assert not os.path.exists(shm.huge_mount_point(shm.object_name(m.run_id, "guest")))


@needs_huge
@pytest.mark.timeout(120)
def test_cleanup_unmounts_a_dead_runs_huge_guest():
    run_id = killed_creator_run_id("memory=16 << 20, host_page_order=9", touch=True)
    guest = shm.object_name(run_id, "guest")
    mnt = shm.huge_mount_point(guest)
    assert shm.mounted_at(mnt)                          # left behind, mounted
    assert guest in shm.list_runs()[run_id].shm
    removed, _ = shm.cleanup()
    assert guest in removed
    assert not shm.mounted_at(mnt) and not os.path.exists(mnt)
    assert run_id not in shm.list_runs()


@needs_huge
def test_a_failed_create_leaves_no_mount_and_no_directory(monkeypatch):
    def no_mmap(*a, **k):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(shm.mmap, "mmap", no_mmap)
    name = shm.object_name(shm.new_run_id(), "guest")
    with pytest.raises(shm.IPCError, match="cannot create .* on a huge tmpfs"):
        shm.SharedObject.create_huge(name, 16 << 20)
    mnt = shm.huge_mount_point(name)
    assert not shm.mounted_at(mnt) and not os.path.exists(mnt)


@needs_huge
@pytest.mark.timeout(120)
def test_bench_measures_a_refault_on_each_host_page_size():
    small = measure_refault("4k", reps=1, host_page_count=64)
    huge = measure_refault("2m", reps=1, host_page_count=2)   # checks it got huge pages
    assert small["host_page_bytes"] == PAGE_SIZE and huge["host_page_bytes"] == HUGE
    assert huge["pages"] == 1024 and huge["host_page_count"] == 2
    for rf in (small, huge):                      # a refault costs a host page's worth
        pages = rf["host_page_bytes"] // PAGE_SIZE
        # the two per-page figures are rounded to 0.1 ns (up to 0.1 between them,
        # per page) and the cost to 0.1 ns
        assert rf["cost_ns"] == pytest.approx(
            max(rf["refault_ns_per_page"] - rf["resident_ns_per_page"], 0) * pages,
            abs=0.1 * pages + 0.05)
    unit = {"refault": {"4k": small, "2m": huge}}
    assert refault_cost_ns(unit["refault"], "2m") == huge["cost_ns"]
    assert refault_cost_ns({"cost_ns_per_page": 3000.0}) == 3000.0     # an older file


def test_the_attributed_cost_charges_the_runs_own_host_page():
    unit = {"refault": {"4k": {"cost_ns": 3000.0}, "2m": {"cost_ns": 90000.0}},
            "free_path_hooks": {}}
    run = {"config": {"strategy": "none", "host_pages": "2m"},
           "attribution": {"wait_behind_ns": {w: {h: 0 for h in ("reporter", "host")}
                                              for w in ("alloc", "free")},
                           "refaults": 10, "design_hook_calls": 0, "free_hook_ns": 0,
                           "worker_ns": 10**9},
           "noise": {"processes": []}}
    assert attributed_cost(run, unit)["refault_ns"] == 900_000
    run["config"]["host_pages"] = "4k"
    assert attributed_cost(run, unit)["refault_ns"] == 30_000
    del run["config"]["host_pages"]                   # a run from before --host-pages: 4k
    assert attributed_cost(run, unit)["refault_ns"] == 30_000
