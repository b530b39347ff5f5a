"""hostscan: the host reclaims free frames through the shared allocator
state; the guest installs them on allocation."""

from __future__ import annotations

import pytest
from runs import all_freed, host_gave_back, run_until

from hypervisor_stub.hostscan import HostScanner
from hypervisor_stub.stub import Hypervisor, StubOptions
from shmalloc import invariants
from shmalloc.layout import HOOK_HOSTSCAN, ROLE_HYPERVISOR, RS_INSTALLS
from shmalloc.reporting import frame_bit


def marked_frames(m) -> set[int]:
    out = set()
    for z in range(m.nr_zones):
        start, end = m.zone_range(z)
        for p in range(start, end, 512):
            word, bit = frame_bit(m.zs, z, p)
            if m.zs[word] & bit:
                out.add(p)
    return out


@pytest.fixture
def m(make_machine):
    mach = make_machine(memory=64 << 20, zones=2, pcp_batch=0, strategy=HOOK_HOSTSCAN)
    acting = mach.agent
    mach.bind(mach.hypervisor_agent, ROLE_HYPERVISOR)
    mach.agent = acting
    return mach


def scanner(m) -> HostScanner:
    return HostScanner(Hypervisor(m, StubOptions(discard="punch")), m.hypervisor_agent, 4, 1.0)


@pytest.mark.nojit
def test_scan_marks_every_free_frame_and_discards_it(m):
    held = m.alloc(3)                              # one frame is not wholly free
    m.mem[:: 512] = 1                              # the guest touched everything
    scanner(m).scan()
    frames = marked_frames(m)
    assert len(frames) == m.nr_pages // 512 - 1
    assert (held // 512) * 512 not in frames
    assert all(m.resident_pages(p, 512) == 0 for p in frames)
    assert m.resident_pages((held // 512) * 512, 512) > 0
    assert invariants.check(m, held={m.control_agent: [(held, 3)]}) == []
    scanner(m).scan()                              # nothing new to reclaim
    assert len(marked_frames(m)) == len(frames)


@pytest.mark.nojit
def test_allocation_installs_and_split_merge_keep_marks(m):
    scanner(m).scan()
    before = marked_frames(m)
    installs = m.layout.off_report + RS_INSTALLS
    p = m.alloc(0)                                 # splits a marked order-10 block
    frame = p - p % 512
    assert m.zs[installs] == 1
    assert marked_frames(m) == before - {frame}    # only the frame allocated from
    q = m.alloc(9)                                 # the other half: still marked
    assert m.zs[installs] == 2 and q not in marked_frames(m)
    m.free(p, 0)
    m.free(q, 9)                                   # merges: installed frames stay unmarked,
    assert marked_frames(m) == before - {frame, q}  # the rest stay marked
    assert invariants.check(m) == []
    big = m.alloc(10)                              # a whole marked block: two installs
    assert m.zs[installs] == 2 + sum(f in before - {frame, q} for f in (big, big + 512))
    m.free(big, 10)
    assert invariants.check(m) == []


@pytest.mark.nojit
def test_a_marked_frame_holding_an_allocation_is_a_violation(m):
    scanner(m).scan()
    p = m.alloc(0)
    word, bit = frame_bit(m.zs, 0, p)
    m.zs[word] |= bit                              # as if the install had been skipped
    v = invariants.check(m, held={m.control_agent: [(p, 0)]})
    assert any("marked host-reclaimed but holds allocated pages" in x for x in v)
    m.zs[word] &= ~bit


@pytest.mark.timeout(300)
def test_hostscan_gives_a_hog_memory_back():
    """The hog frees; the run lasts until the host has scanned and holds less
    than a quarter of what it held."""
    run = run_until(lambda r: all_freed(r) and host_gave_back(r, 0.25), strategy="hostscan",
                    workload="hog", memory=256 << 20, hog_hold=0.5, scan_interval=0.5)
    assert run["safety"]["use_after_discard"] == 0
    assert run["safety"]["invariant_errors"] == []
    mem = run["memory"]
    assert mem["host_resident_bytes_end"] < mem["host_resident_bytes_max"] / 4
    assert run["reporting"]["scans"] > 0 and run["reporting"]["reports"] == 0
    assert run["locks"][0]["by_caller"]["host"]["acquisitions"] > 0
