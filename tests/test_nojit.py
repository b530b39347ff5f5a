"""The compiled kernels also run as plain Python (``NUMBA_DISABLE_JIT=1``).

A fresh interpreter with the JIT off runs every test marked ``nojit`` in
:data:`FILES`: the model tests of every design (the allocator, the free-path
hooks and every kernel a reporter or the hypervisor stub calls, against the
reference), the invariant checker, the isolation, reporter and hostscan
kernels step by step, the workload kernels and their canaries, and the
concurrency hammer with processes.  The same tests, with smaller sizes
where Python is slow (:data:`SIZES`: fewer random examples and operations
per hammer round; the same kernels and the same checks).

The session records itself (tests/conftest.py): the JIT must have been off
there (``shmalloc.config.JIT_DISABLED``, numba's flag, and a kernel that is a
plain function), every test the same selection collects with the JIT on
must have run and passed, and each part of the ground below must be among
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli import ROOT

from launcher.experiment.designs import DESIGNS

FILES = ["tests/test_model.py", "tests/test_invariants.py", "tests/test_workload.py",
         "tests/test_mainline.py", "tests/test_boundary.py", "tests/test_designs.py",
         "tests/test_fidelity.py", "tests/test_hostscan.py", "tests/test_concurrency.py"]

#: the sizes Python can afford: random examples per model test (40 with the
#: JIT) and hammer operations per round (20,000)
SIZES = {"SHMALLOC_MODEL_EXAMPLES": "16", "SHMALLOC_HAMMER_OPS": "1000"}

#: what the run must cover, as test-id prefixes
GROUND = {
    "the model, every design": [f"tests/test_model.py::test_model_{n}" for n in DESIGNS],
    "the invariant checker": ["tests/test_invariants.py::"],
    "isolation": ["tests/test_designs.py::test_isolate_hides_isolated_pageblocks_and_undo_merges",
                  "tests/test_fidelity.py::test_isolate_takes_the_lock_and_drains_once_per_",
                  "tests/test_invariants.py::test_isolated_buddies_may_stand_apart"],
    "reporters": ["tests/test_mainline.py::", "tests/test_boundary.py::",
                  "tests/test_designs.py::test_design_reports_only_free_blocks_of_report_order",
                  "tests/test_fidelity.py::test_bitmap_wakes_once_at_the_threshold",
                  "tests/test_fidelity.py::test_bitmap_free_hook_takes_v12s_locked_instructions",
                  "tests/test_fidelity.py::test_callback_walks_down_to_walk_order"],
    "hostscan": ["tests/test_hostscan.py::test_scan_marks_every_free_frame_and_discards_it",
                 "tests/test_fidelity.py::test_hostscan_takes_unmarked_blocks"],
    "workloads and canaries": ["tests/test_workload.py::",
                               "tests/test_designs.py::test_callback_discard_race_is_detected"],
    "the concurrency hammer": ["tests/test_concurrency.py::test_processes_hammer_one_zone"],
}


def session(tmp_path, name: str, env: dict, *args: str) -> dict:
    """Run pytest on the ``nojit`` tests of FILES; returns its session record."""
    record = tmp_path / f"{name}.json"
    env = dict({k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"},
               SHMALLOC_SESSION_REPORT=str(record), **env)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "nojit",
                          "-p", "no:cacheprovider", "-n", "0", *args, *FILES],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    assert record.exists(), res.stdout[-3000:] + res.stderr[-2000:]
    out = json.loads(record.read_text())
    out["tail"] = "\n".join(res.stdout.splitlines()[-25:]) + res.stderr[-2000:]
    return out


@pytest.mark.timeout(600)
def test_kernels_pass_without_jit(tmp_path):
    want = session(tmp_path, "collect", {}, "--collect-only")
    assert want["jit_disabled"] is False and want["kernel_type"] != "function"

    run = session(tmp_path, "nojit", dict(SIZES, NUMBA_DISABLE_JIT="1"))
    assert run["jit_disabled"] is True and run["numba_disable_jit"] is True, run["tail"]
    assert run["kernel_type"] == "function", run["tail"]      # a kernel is plain Python
    assert run["exitstatus"] == 0, run["tail"]
    outcomes = run["outcomes"]
    assert run["selected"] == want["selected"], "the no-JIT run selected other tests"
    assert set(outcomes) == set(want["selected"]), \
        f"{len(outcomes)} of {len(want['selected'])} tests ran\n{run['tail']}"
    failed = {t: o for t, o in outcomes.items() if o != "passed"}
    assert not failed, f"{failed}\n{run['tail']}"
    for part, prefixes in GROUND.items():
        for prefix in prefixes:
            assert any(t.startswith(prefix) for t in outcomes), f"{part}: nothing ran {prefix}"
