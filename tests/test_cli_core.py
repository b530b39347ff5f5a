"""``shmalloc bench`` and ``shmalloc cleanup`` from the command line, and bad
input to the Python API."""

from __future__ import annotations

import json

import pytest
from cli import shmalloc
from conftest import ipc_objects

from shmalloc.machine import AllocatorError, ConfigError, Machine, MachineConfig


@pytest.mark.timeout(300)
def test_bench_json():
    res = shmalloc("bench", "--json", "--reps", "1", "--iters", "1", "--init-memory", "64M")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    out = json.loads(res.stdout)
    for case in ("order0_zone", "order9_zone", "order0_pcp"):
        assert out["cases"][case]["ns_per_pair"] > 0
        assert out["cases"][case]["ns_per_pair_no_stats"] > 0
    assert out["python_reference"]["order0_zone"]["ns_per_pair"] > 0
    assert 16 <= out["metadata_bytes_per_page"] < 17
    assert out["init_16gib_s"] > 0
    assert set(out["reported_order9"]) == {"none", "mainline", "boundary", "boundary_active"}
    assert all(v > 0 for v in out["reported_order9"].values())


@pytest.mark.timeout(120)
def test_cleanup_command_leaves_live_runs(make_machine):
    m = make_machine()
    res = shmalloc("cleanup")
    assert res.returncode == 0, res.stderr
    assert m.run_id in res.stdout.splitlines()[-1]
    Machine.attach(m.run_id).close()             # still there


BAD_CONFIGS = [
    (dict(memory=5 << 20), "--memory", "multiple of"),
    (dict(memory=0), "--memory"),
    (dict(memory=12 << 20, zones=2), "--memory", "2 x 4096 KiB"),
    (dict(zones=0), "--zones"),
    (dict(zones=65), "--zones"),
    (dict(workers=0), "--workers"),
    (dict(max_order=9), "--max-order"),
    (dict(max_order=17), "--max-order"),
    (dict(pcp_batch=63, pcp_high=10), "--pcp-high"),
    (dict(pcp_batch=-1), "--pcp-batch"),
    (dict(lock_spin=-1), "--lock-spin"),
    (dict(report_order=11), "--report-order"),
    (dict(capacity=0), "--capacity"),
]


@pytest.mark.parametrize("kw", BAD_CONFIGS,
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k[0].items()))
def test_bad_config_raises_before_creating_anything(kw):
    before = ipc_objects()
    args = dict(memory=16 << 20)
    args.update(kw[0])
    with pytest.raises(ConfigError) as exc:
        Machine.create(MachineConfig(**args))
    assert exc.value.flag == kw[1]
    for fragment in kw[2:]:
        assert fragment in str(exc.value)
    assert ipc_objects() == before


def test_python_api_errors(make_machine):
    m = make_machine(pcp_batch=0)
    with pytest.raises(AllocatorError, match="order out of range"):
        m.alloc(11)
    with pytest.raises(AllocatorError, match="pfn is outside the machine"):
        m.free(m.nr_pages + 1, 0)
    with pytest.raises(ValueError, match="agent 99 out of range"):
        m.alloc(0, agent=99)
    p = m.alloc(2)
    with pytest.raises(AllocatorError, match="allocated with a different order"):
        m.free(p, 1)
    m.free(p, 2)
    with pytest.raises(AllocatorError, match="double free"):
        m.free(p, 2)
    with pytest.raises(AllocatorError, match="never allocated"):
        m.free(p + 1, 0)
    while m.try_alloc(10) is not None:
        pass
    with pytest.raises(AllocatorError, match="out of memory"):
        m.alloc(10)
